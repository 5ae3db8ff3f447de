"""evaluate.py --all: which checkpoints under a runs folder need evaluating, and a pool of processes that
evaluates them (`engine.checkpoint_eval.evaluate_checkpoint`), one failure never stopping the others.

    todo = [c for c in find_checkpoints(runs) if pending_reason(c, split=None) is not None]
    for ckpt, record, error in evaluate_all(todo, EvalOptions(), jobs=4):   # as each one finishes
        ...

A checkpoint is pending when its results file is missing, corrupt, for another split or metrics profile, lacks
its per-image file (or has one over other images than the results, or than the frames its split holds now), or
predates the checkpoint's last save. With
jobs > 1 the checkpoints are evaluated in spawned processes spread round-robin over the visible GPUs (or sharing
the CPU); closing the generator (Ctrl-C in the caller) stops them at once (`stop_workers`).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from data_utils.cityscapes import list_frames, resolve_data_root
from engine.checkpoint import CHECKPOINT_NAME, read_meta
from engine.checkpoint_eval import EvalOptions, evaluate_checkpoint
from engine.results import read_results
from engine.results_format import inference_path
from metrics.per_image import PER_IMAGE_SUFFIX, names_digest, read_per_image, stale_value
from utils import UserError, user_message
from utils.console import plural
from utils.fileio import remove_temp_files, write_error_line
from utils.signals import ignore_stop_signals, stop_signals_deferred
from utils.threads import set_torch_threads, threads_per_job

Outcome = tuple[Path, dict | None, str | None]  # (checkpoint, results record, None) or (checkpoint, None, error)


def find_checkpoints(runs_dir: Path) -> list[Path]:
    """Every RUNS_DIR/**/checkpoints/epoch_XXXX folder (complete or not: broken ones are reported), sorted."""
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: not a directory; pass the folder holding the training runs")
    return sorted(p for p in runs_dir.rglob("epoch_*")
                  if p.is_dir() and p.parent.name == "checkpoints" and CHECKPOINT_NAME.match(p.name))


def pending_reason(ckpt: Path, split: str | None, metrics_profile: str | None = None,
                   inference_tag: str = "whole", data_root: str | None = None,
                   hf_dataset: str | None = None) -> str | None:
    """Why `ckpt` must be (re)evaluated on `split` (None: its config's val_split), or None when its results file
    (of inference mode `inference_tag`) is valid and current, in `metrics_profile` (None: any), with a readable
    per-image file beside it over the images of the results (`images_digest`) that gives their values and, for a
    Cityscapes-layout folder (the config's or `data_root`; an HF dataset is not listed), over the frames the split
    holds now."""
    path = inference_path(ckpt, inference_tag)
    per_image = inference_path(ckpt, inference_tag, PER_IMAGE_SUFFIX)
    if not path.exists():
        return "new"
    try:
        record = read_results(path)
    except UserError:
        return "corrupt results file, redoing"
    if record["split"] != (split or (record.get("config") or {}).get("val_split", record["split"])):
        return f"results are for split {record['split']!r}"
    if metrics_profile is not None and record["metrics_profile"] != metrics_profile:
        return f"results are for metrics profile {record['metrics_profile']!r}"
    if not per_image.exists():
        return "no per-image statistics beside the results"
    try:
        stats = read_per_image(per_image)
    except UserError:
        return "corrupt per-image statistics, redoing"
    names = set(stats["names"].tolist())
    if len(names) != record["num_images"]:  # aggregate.py would refuse it and send the user back here
        return (f"per-image statistics cover {len(names)} of the {plural(record['num_images'], 'image')} of the "
                "results, redoing")
    if record.get("images_digest", names_digest(names)) != names_digest(names):  # older files lack the digest
        return "per-image statistics are over other images than the results, redoing"
    stale = stale_value(stats, record, record["metrics_profile"])  # aggregate.py would refuse it too
    if stale is not None:
        return f"per-image statistics give {stale[0]} {stale[1]:.6f}, the results {stale[2]:.6f}, redoing"
    frames = split_frame_names(record, data_root, hf_dataset)
    if frames is not None and frames != names:
        return (f"per-image statistics over {plural(len(names), 'image')}, the split {record['split']!r} holds "
                f"{plural(len(frames), 'frame')} now ({len(names & frames)} in both), redoing")
    meta = read_meta(ckpt) or {}
    if record.get("checkpoint_saved_at") != meta.get("saved_at"):
        return "checkpoint saved again since its evaluation"
    return None


def split_frame_names(record: dict, data_root: str | None = None, hf_dataset: str | None = None) -> set[str] | None:
    """The frame names of the results' split as its Cityscapes-layout folder lists them now (`data_root`, else
    the config's; a scan of the folders, no file read), or None for an HF dataset or a folder that cannot be
    listed (its evaluation will say why)."""
    config = record.get("config") or {}
    if hf_dataset or config.get("hf_dataset"):
        return None
    try:
        root = resolve_data_root(data_root or config.get("data_root"))
        return {frame["name"] for frame in list_frames(root, record["split"])}
    except UserError:
        return None


_WORKER = {}  # per worker process: the Accelerator on its device, and whether to show per-image bars
STOP_SIGNAL = signal.SIGUSR1  # parent -> pool worker: stop evaluating (see stop_workers)


def _init_worker(devices: list[str], counter, threads: int) -> None:
    """Pin this worker process to the next device (round-robin) before CUDA is initialised."""
    with counter.get_lock():
        device = devices[counter.value % len(devices)]
        counter.value += 1
    if device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    ignore_stop_signals()  # Ctrl-C and SIGTERM reach the whole process group: the parent stops us (stop_workers)
    signal.signal(STOP_SIGNAL, _stop_in_worker)
    sys.unraisablehook = _stop_again
    torch.set_num_threads(threads)
    import datasets
    from accelerate import Accelerator

    datasets.disable_progress_bars()  # one overall bar in the parent; workers stay quiet
    _WORKER.update(accelerator=Accelerator(cpu=device == "cpu"), show_progress=False)


def _stop_in_worker(signum, frame) -> None:
    """Stop the running evaluation (its writes are atomic: finally/except blocks remove temp files) and
    refuse the ones still queued, so the worker reaches the pool's end-of-work message and exits cleanly."""
    _WORKER["stopping"] = True
    if _WORKER.get("busy"):
        raise KeyboardInterrupt


def _stop_again(unraisable) -> None:
    """The stop landed where Python cannot raise (a weakref or __del__ callback during garbage collection) and
    would be printed as "Exception ignored" with a traceback instead of stopping the evaluation: send it again a
    moment later from another thread, when the callback is over and it lands in the evaluation's own code."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and _WORKER.get("busy"):
        threading.Timer(0.01, os.kill, (os.getpid(), STOP_SIGNAL)).start()
        return
    sys.__unraisablehook__(unraisable)


def _evaluate_in_worker(ckpt: Path, options: EvalOptions) -> Outcome:
    """(checkpoint, record, None) or (checkpoint, None, one-line error); never raises (the batch goes on)."""
    if _WORKER.get("stopping"):
        return ckpt, None, "not evaluated: interrupted"
    _WORKER["busy"] = True
    try:
        return ckpt, evaluate_checkpoint(ckpt, options, _WORKER["accelerator"], _WORKER["show_progress"]), None
    except KeyboardInterrupt:
        if not _WORKER.get("stopping"):  # Ctrl-C or SIGTERM in this process (jobs == 1): the batch stops
            raise
        return ckpt, None, "not evaluated: interrupted"
    except UserError as e:
        return ckpt, None, user_message(e)  # one line, also when a DataLoader worker raised it
    except Exception as e:  # a broken checkpoint must not stop the other evaluations
        line = write_error_line(e) if isinstance(e, OSError) else None  # a full disk: the file, the free space
        if line is None:
            last = traceback.extract_tb(e.__traceback__)[-1]
            line = f"{type(e).__name__}: {e} (at {Path(last.filename).name}:{last.lineno})"
        return ckpt, None, line
    finally:
        _WORKER["busy"] = False


def evaluate_all(checkpoints: list[Path], options: EvalOptions, jobs: int = 1) -> Iterator[Outcome]:
    """Yield an Outcome per checkpoint as it finishes: in this process for jobs == 1, else in a pool of `jobs`
    spawned processes spread round-robin over the visible GPUs (or sharing the CPU)."""
    if jobs == 1:
        from accelerate import Accelerator
        set_torch_threads(jobs=1)
        _WORKER.update(accelerator=Accelerator(), show_progress=True)
        for ckpt in checkpoints:
            yield _evaluate_in_worker(ckpt, options)
        return
    spawn = mp.get_context("spawn")  # CUDA cannot be forked
    devices = [str(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    threads = threads_per_job(jobs)  # this process's cores shared by the jobs (utils.threads)
    with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_init_worker,
                             initargs=(devices, spawn.Value("i", 0), threads)) as pool:
        futures = {}
        try:
            with stop_signals_deferred():  # the workers start here (submit); a stop while they import waits for them
                futures.update((pool.submit(_evaluate_in_worker, ckpt, options), ckpt) for ckpt in checkpoints)
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # Ctrl-C, or the caller closing us: stop now, not after the queued checkpoints
            stop_workers(pool)
            for future, ckpt in futures.items():
                if not future.done():
                    remove_temp_files(inference_path(ckpt, options.inference.tag))  # a worker killed mid-write
            raise


def stop_workers(pool: ProcessPoolExecutor, grace_s: float = 5.0) -> None:
    """Cancel the queued evaluations and stop the running ones now: STOP_SIGNAL interrupts each worker's
    evaluation (`_stop_in_worker`), so it exits cleanly within a moment; one still alive after `grace_s`
    seconds is killed (SIGKILL: the workers ignore SIGTERM; the caller then removes what it may have left
    half-written)."""
    processes = list((pool._processes or {}).values())  # no public handle before Python 3.14's terminate_workers
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, STOP_SIGNAL)
    for process in processes:
        process.join(timeout=grace_s)
        if process.is_alive():
            process.kill()
            process.join()
