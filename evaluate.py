"""Evaluate checkpoints: metrics into `<checkpoint>.results.json`, or predictions for the Cityscapes test server.

    python evaluate.py runs/C_seed42/checkpoints/epoch_0160                 # one checkpoint on val
    accelerate launch evaluate.py runs/C_seed42/checkpoints/epoch_0160      # the same over all GPUs
    python evaluate.py --all runs/ --jobs 4                                 # every checkpoint lacking valid results
    python evaluate.py CKPT --split test --save-predictions preds/          # test-server PNGs + colour overlays
    python evaluate.py --consensus runs/C_seed42/checkpoints/epoch_0160 --veto runs/B_seed42/checkpoints/epoch_0160
    python evaluate.py --consensus-pairs C:B,D:B --all runs/               # every seed's final epoch (docs/report.md)

A checkpoint is a folder holding model.safetensors, config.json and meta.json (train.py writes them); the
model is rebuilt from its config.json. Full-resolution single-scale inference, BF16 autocast on CUDA;
metrics as defined in `metrics/segmentation.py`, in the checkpoint config's metrics profile unless
--metrics-profile says otherwise; the per-image statistics go to `<checkpoint>.per_image.npz`. Batch mode is
resumable: a checkpoint whose results file is valid, for the same split, the same save of the checkpoint and
the profile asked for, with its per-image file beside it, is skipped; a corrupt one is redone. A
checkpoint that cannot be evaluated (corrupt weights, a config that does not match them) is reported at the
end and makes the exit code 1, while the others are still evaluated.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import multiprocessing as mp
import os
import signal
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import ExitStack, closing, nullcontext
from pathlib import Path

from metrics.keys import FRACTION_KEYS, PROFILES, SHORT_LABELS
from utils.fileio import (RenamedFlag, UserError, atomic_write_bytes, parse_args_first, remove_temp_files, run_main,
                          user_message)
from utils.threads import set_torch_threads, threads_per_job

UNLABELLED_SPLITS = ("test",)  # Cityscapes ships placeholder labels for test: predictions only, no metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", type=Path, help="a checkpoint folder (RUN/checkpoints/epoch_XXXX)")
    parser.add_argument("--all", type=Path, metavar="RUNS_DIR",
                        help="evaluate every RUNS_DIR/**/checkpoints/epoch_XXXX that has no valid results file")
    parser.add_argument("--data-root", default=None,
                        help="Cityscapes root (default: the checkpoint config's data_root, else $CITYSCAPES_DATASET)")
    parser.add_argument("--hf-dataset", default=None,
                        help="the HF dataset (default: the checkpoint config's hf_dataset), e.g. after moving it")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default: the config's val_split; test: predictions only)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="--all: checkpoints evaluated at once, spread round-robin over the visible GPUs")
    parser.add_argument("--workers", action=RenamedFlag, new="--jobs", dest="jobs", type=int)
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: config's)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader worker processes per evaluation (default: the config's num_workers)")
    parser.add_argument("--loader-workers", action=RenamedFlag, new="--num-workers", dest="num_workers", type=int)
    parser.add_argument("--save-predictions", type=Path, metavar="DIR", default=None,
                        help="write DIR/labelIds/<city>/<name>_labelIds.png (the test server's format) and "
                             "DIR/overlay/<city>/<name>_overlay.jpg (one checkpoint only)")
    parser.add_argument("--metrics-profile", choices=PROFILES, default=None,
                        help="estimators of Boundary F1 and Trimap IoU (docs/metrics.md; default: the checkpoint "
                             "config's metrics_profile)")
    parser.add_argument("--force", action="store_true", help="--all: re-evaluate checkpoints with valid results too")
    consensus = parser.add_argument_group("consensus filter (metrics.consensus.cc_veto; docs/report.md)")
    consensus.add_argument("--consensus", type=Path, metavar="PRIMARY_CKPT",
                           help="evaluate PRIMARY_CKPT vetoed by --veto: primary, veto and fused maps")
    consensus.add_argument("--veto", type=Path, metavar="VETO_CKPT", help="the veto checkpoint of --consensus")
    consensus.add_argument("--consensus-pairs", metavar="C:B,D:B", default=None,
                           help="with --all: primary variant C vetoed by B, seed by seed, at the final epoch")
    consensus.add_argument("--max-drop-size", type=int, default=None, metavar="N",
                           help="drop only unsupported components of at most N pixels (default: any size)")
    consensus.add_argument("--protect", default=None, metavar="NAMES",
                           help="comma-separated class names never dropped (default: fence, pole, traffic light, "
                                "traffic sign, those of them the class table has)")
    consensus.add_argument("--reassign", choices=("veto", "ignore"), default="veto",
                           help="dropped pixels take the veto's labels or the ignore index")
    args = parser.parse_args(argv)
    if args.consensus is not None or args.consensus_pairs is not None:
        if (args.consensus is None) == (args.consensus_pairs is None) or args.checkpoint is not None:
            parser.error("give --consensus PRIMARY_CKPT --veto VETO_CKPT or --consensus-pairs C:B --all RUNS_DIR")
        if (args.consensus is None) != (args.veto is None) or (args.consensus_pairs is None) != (args.all is None):
            parser.error("--consensus needs --veto VETO_CKPT, --consensus-pairs needs --all RUNS_DIR")
        if args.split in UNLABELLED_SPLITS or args.save_predictions is not None:
            parser.error("the consensus evaluation needs labels and writes no predictions")
        if args.max_drop_size is not None and args.max_drop_size < 1:
            parser.error(f"--max-drop-size must be positive, got {args.max_drop_size}")
        if args.consensus_pairs is not None:
            args.pairs = [tuple(p.split(":")) for p in args.consensus_pairs.split(",")]
            if any(len(p) != 2 or not all(p) for p in args.pairs):
                parser.error(f"--consensus-pairs {args.consensus_pairs!r}: use PRIMARY:VETO[,PRIMARY:VETO...]")
        return args
    if args.veto is not None:
        parser.error("--veto goes with --consensus PRIMARY_CKPT")
    if (args.checkpoint is None) == (args.all is None):
        parser.error("give one checkpoint folder or --all RUNS_DIR (exactly one)")
    if args.all is not None and args.save_predictions is not None:
        parser.error("--save-predictions works on one checkpoint, not with --all")
    if args.split in UNLABELLED_SPLITS and args.save_predictions is None:
        parser.error(f"split {args.split!r} has no real labels, so no metrics: add --save-predictions DIR")
    for name in ("jobs", "batch_size", "num_workers"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "num_workers" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


if __name__ == "__main__":
    parse_args_first(parse_args)  # --help and rejected flags answer here, before torch & co. load (~5 s)

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from data_utils.cityscapes import IMAGE_DIR, IMAGE_SUFFIX, LABEL_DIR, resolve_data_root
from data_utils.classes import ClassTable
from data_utils.dataset import read_image
from engine.checkpoint import CHECKPOINT_NAME, WEIGHTS_NAME, load_weights_into, read_meta
from engine.config import load_config
from engine.consensus import consensus_record, evaluate_consensus, protect_indices
from engine.evaluation import evaluate_model
from engine.results import metrics_table, read_results, results_path, write_results
from engine.results_format import consensus_path
from metrics.per_image import PER_IMAGE_SUFFIX
from engine.setup import build_dataloader, build_model_from_config, class_table
from metrics.per_image import per_image_path, read_per_image
from utils.dirlock import folder_lock


# ------------------------------------------------------------------------------------------ one checkpoint
def load_checkpoint(ckpt: Path):
    """(config, meta, model with the checkpoint's weights); a UserError naming the folder if anything is off."""
    if not ckpt.is_dir():
        raise UserError(f"{ckpt}: not a checkpoint folder; pass RUN/checkpoints/epoch_XXXX")
    for name in (WEIGHTS_NAME, "config.json", "meta.json"):
        if not (ckpt / name).is_file():
            raise UserError(f"{ckpt}: lacks {name}; the checkpoint is incomplete, delete it or re-save it")
    meta = read_meta(ckpt)
    if meta is None:
        raise UserError(f"{ckpt / 'meta.json'}: unreadable or without an epoch; the checkpoint is corrupt")
    cfg = load_config(ckpt / "config.json")
    try:
        model = build_model_from_config(cfg)
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. a backbone name this timm does not know
        raise UserError(f"{ckpt / 'config.json'}: cannot build the model ({e})") from None
    load_weights_into(model, ckpt / WEIGHTS_NAME)  # strict, and a truncated file or wrong shapes -> UserError
    return cfg, meta, model


class PredictionWriter:
    """PredictionSink writing test-server PNGs (the dataset's label values: Cityscapes' label ids, else class
    indices) and colour overlays in the classes' palette, encoded on a thread pool."""

    def __init__(self, out_dir: Path, classes: ClassTable, threads: int = 4):
        self.out_dir, self.pool, self.threads = out_dir, ThreadPoolExecutor(threads), threads
        self.classes = classes
        self.pending, self.written = [], 0

    def __call__(self, names: list[str], images: torch.Tensor, pred_train_ids: torch.Tensor) -> None:
        for name, image, pred in zip(names, images, pred_train_ids):
            while len(self.pending) >= 4 * self.threads:  # back-pressure: a fast GPU must not fill the RAM
                self._finish_oldest()
            self.pending.append(self.pool.submit(self._write, name, image.numpy(), pred.numpy()))

    def _finish_oldest(self) -> None:
        self.pending.pop(0).result()  # re-raises a failed write
        self.written += 1

    def _write(self, name: str, image_chw: np.ndarray, pred: np.ndarray) -> None:
        city = name.rsplit("_", 2)[0]  # <city>_<sequence>_<frame>
        self._save(Image.fromarray(self.classes.to_label_ids(pred)),  # (H, W) uint8 -> mode L
                   self.out_dir / "labelIds" / city / f"{name}_labelIds.png", "PNG")
        blend = 0.5 * image_chw.transpose(1, 2, 0) + 0.5 * self.classes.colorize(pred)  # uint8 (PredictionSink)
        self._save(Image.fromarray(blend.astype(np.uint8)),
                   self.out_dir / "overlay" / city / f"{name}_overlay.jpg", "JPEG")

    @staticmethod
    def _save(image: Image.Image, path: Path, fmt: str) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        atomic_write_bytes(path, buffer.getvalue())

    def close(self) -> int:
        """Wait for the pending writes; returns the number of images written."""
        while self.pending:
            self._finish_oldest()
        self.pool.shutdown()
        return self.written


class ImageOnlyDataset(torch.utils.data.Dataset):
    """The images of a split without a gtFine folder (a test split shipped without labels): image + name."""

    def __init__(self, root: Path, split: str):
        image_dir = root / IMAGE_DIR / split
        self.paths = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not self.paths:
            raise UserError(f"{image_dir}: no <city>/*{IMAGE_SUFFIX} images; check --data-root and --split")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        image = torch.from_numpy(np.ascontiguousarray(read_image(str(path)).transpose(2, 0, 1)))
        return {"image": image, "name": path.name[: -len(IMAGE_SUFFIX)]}


def collate_images(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]), "name": [it["name"] for it in items]}


def build_eval_loader(cfg, split: str):
    """The split's loader in dataset order; a split without labels gets an image-only loader."""
    root = None if cfg.hf_dataset else resolve_data_root(cfg.data_root)
    if root is not None and split in UNLABELLED_SPLITS and not (root / LABEL_DIR / split).is_dir():
        return torch.utils.data.DataLoader(ImageOnlyDataset(root, split), batch_size=cfg.batch_size,
                                           num_workers=cfg.num_workers, collate_fn=collate_images)
    return build_dataloader(cfg, split, train=False)


def with_loader_flags(cfg, args):
    """`cfg` with the data and loader flags of the command line (--data-root, --hf-dataset, --batch-size,
    --num-workers) where given."""
    return dataclasses.replace(cfg, data_root=args.data_root or cfg.data_root,
                               hf_dataset=args.hf_dataset or cfg.hf_dataset,
                               batch_size=args.batch_size or cfg.batch_size,
                               num_workers=cfg.num_workers if args.num_workers is None else args.num_workers)


def evaluate_checkpoint(ckpt: Path, args, accelerator, show_progress: bool = True) -> dict:
    """Evaluate one checkpoint; returns the results record (or {"num_images"} for an unlabelled split)."""
    cfg, meta, model = load_checkpoint(ckpt)
    split = args.split or cfg.val_split
    loader = build_eval_loader(with_loader_flags(cfg, args), split)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = accelerator.prepare_data_loader(loader)
    writer = PredictionWriter(args.save_predictions, class_table(cfg)) if args.save_predictions else None
    start = time.perf_counter()
    try:
        metrics = evaluate_model(model, loader, accelerator, with_metrics=split not in UNLABELLED_SPLITS,
                                 on_predictions=writer, description=f"{ckpt.parent.parent.name}/{ckpt.name}",
                                 show_progress=show_progress,
                                 metrics_profile=args.metrics_profile or cfg.metrics_profile)
    finally:
        written = writer.close() if writer else 0
        accelerator.free_memory()  # drop the prepared model and loader before the next checkpoint
    seconds = time.perf_counter() - start
    if split in UNLABELLED_SPLITS:
        return {"num_images": metrics["num_images"], "predictions": written}
    record = {"checkpoint": str(ckpt), "seconds": seconds, **{k: v for k, v in metrics.items() if k != "per_image"}}
    if accelerator.is_main_process:
        record = write_results(results_path(ckpt), metrics, cfg=cfg, epoch=meta["epoch"], checkpoint=ckpt,
                               split=split, seconds=seconds)
    return record


# ------------------------------------------------------------------------------------------- consensus
def evaluate_consensus_pair(primary_ckpt: Path, veto_ckpt: Path, args, accelerator) -> dict:
    """Evaluate `primary_ckpt` vetoed by `veto_ckpt` (engine.consensus) on the primary's split; writes
    `consensus_path(primary, veto run)` and its per-image file; returns the record."""
    cfg, meta, primary = load_checkpoint(primary_ckpt)
    veto_cfg, _, veto = load_checkpoint(veto_ckpt)
    classes = class_table(cfg)
    if tuple(class_table(veto_cfg).names) != tuple(classes.names):
        raise UserError(f"{veto_ckpt}: its class table differs from that of {primary_ckpt}; "
                        "veto with a model of the same classes")
    split = args.split or cfg.val_split
    if args.split is None and veto_cfg.val_split != cfg.val_split:
        raise UserError(f"{veto_ckpt}: validates on split {veto_cfg.val_split!r}, {primary_ckpt} on "
                        f"{cfg.val_split!r}; pass --split to evaluate both on one")
    protect = protect_indices(classes, None if args.protect is None else args.protect.split(","), str(primary_ckpt))
    protect_names = [classes.names[i] for i in protect]
    loader = build_eval_loader(with_loader_flags(cfg, args), split)
    primary = accelerator.prepare_model(primary, evaluation_mode=True)
    veto = accelerator.prepare_model(veto, evaluation_mode=True)
    loader = accelerator.prepare_data_loader(loader)
    veto_run = veto_ckpt.parent.parent.name
    start = time.perf_counter()
    try:
        results = evaluate_consensus(primary, veto, loader, accelerator, protect, args.max_drop_size, args.reassign,
                                     metrics_profile=args.metrics_profile or cfg.metrics_profile,
                                     description=f"{primary_ckpt.parent.parent.name} vetoed by {veto_run}")
    finally:
        accelerator.free_memory()
    seconds = time.perf_counter() - start
    extra = {"consensus": consensus_record(primary_ckpt, veto_ckpt, results, protect_names, args.max_drop_size,
                                           args.reassign, veto_variant=veto_cfg.loss_label, veto_seed=veto_cfg.seed)}
    record = {"checkpoint": str(primary_ckpt), "seconds": seconds, **extra,
              **{k: v for k, v in results["fused"].items() if k != "per_image"}}
    if accelerator.is_main_process:
        record = write_results(consensus_path(primary_ckpt, veto_run), results["fused"], cfg=cfg, epoch=meta["epoch"],
                               checkpoint=primary_ckpt, split=split, seconds=seconds,
                               per_image_file=consensus_path(primary_ckpt, veto_run, PER_IMAGE_SUFFIX), extra=extra)
    return record


def consensus_pairings(runs_dir: Path, pairs: list[tuple[str, str]]) -> list[tuple[Path, Path]]:
    """(primary, veto) final-epoch checkpoints for each pair of variants and each seed both have, from the
    checkpoints' config.json (variant label = `loss_label`, seed); a variant without runs is a UserError."""
    finals: dict[tuple[str, int], Path] = {}
    for ckpt in find_checkpoints(runs_dir):
        if not (ckpt / "config.json").is_file():
            continue
        cfg = load_config(ckpt / "config.json")
        key = (cfg.loss_label, cfg.seed)
        if key in finals and finals[key].parent != ckpt.parent:
            raise UserError(f"{runs_dir}: two runs of variant {key[0]!r} seed {key[1]} "
                            f"({finals[key].parent.parent.name}, {ckpt.parent.parent.name}); pass a folder holding "
                            "one run per variant and seed")
        finals[key] = ckpt  # find_checkpoints is sorted: the run's last epoch comes last
    variants = sorted({v for v, _ in finals})
    out = []
    for primary, veto in pairs:
        for name in (primary, veto):
            if name not in variants:
                raise UserError(f"{runs_dir}: no runs of variant {name!r} (--consensus-pairs); it has "
                                f"{', '.join(variants) or 'no checkpoints'}")
        seeds = sorted({s for v, s in finals if v == primary} & {s for v, s in finals if v == veto})
        if not seeds:
            raise UserError(f"{runs_dir}: variants {primary!r} and {veto!r} share no seed; train both with one seed")
        out += [(finals[primary, s], finals[veto, s]) for s in seeds]
    return out


def consensus_table(records: list[dict]) -> Table:
    """One row per consensus evaluation: primary, veto, and fused vs primary mIoU and fragments per image."""
    table = Table(title="consensus: primary vetoed by veto")
    for column in ("primary", "veto", "mIoU primary", "mIoU fused", "fragments/img primary", "fragments/img fused"):
        table.add_column(column, justify="right", overflow="fold")
    for r in records:
        c = r["consensus"]
        table.add_row(*(f"{Path(c[k]).parent.parent.name}/{Path(c[k]).name}" for k in ("primary", "veto")),
                      _pct(c["primary_metrics"]["miou"]), _pct(r["miou"]),
                      f"{c['primary_metrics']['fragments_per_image']:.1f}", f"{r['fragments_per_image']:.1f}")
    return table


def run_consensus(args, console: Console) -> int:
    """--consensus / --consensus-pairs: evaluate each pairing (one process), print the table."""
    from accelerate import Accelerator
    accelerator = Accelerator()
    pairings = ([(args.consensus, args.veto)] if args.consensus is not None
                else consensus_pairings(args.all, args.pairs))
    records = []
    with ExitStack() as stack:
        for folder in sorted({p.parent for p, _ in pairings}):
            stack.enter_context(folder_lock(folder, "evaluate.py", "wait for it to finish or stop it"))
        for primary, veto in pairings:
            records.append(evaluate_consensus_pair(primary, veto, args, accelerator))
    if accelerator.is_main_process:
        console.print(consensus_table(records))
        for primary, veto in pairings:
            console.print(f"wrote {consensus_path(primary, veto.parent.parent.name)}", soft_wrap=True)
    return 0


# ------------------------------------------------------------------------------------------- batch mode
def find_checkpoints(runs_dir: Path) -> list[Path]:
    """Every RUNS_DIR/**/checkpoints/epoch_XXXX folder (complete or not: broken ones are reported), sorted."""
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: not a directory; pass the folder holding the training runs")
    return sorted(p for p in runs_dir.rglob("epoch_*")
                  if p.is_dir() and p.parent.name == "checkpoints" and CHECKPOINT_NAME.match(p.name))


def pending_reason(ckpt: Path, split: str | None, metrics_profile: str | None = None) -> str | None:
    """Why `ckpt` must be (re)evaluated on `split` (None: its config's val_split), or None when its results file
    is valid and current, in `metrics_profile` (None: any), with a readable per-image file beside it."""
    path = results_path(ckpt)
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
    if not per_image_path(ckpt).exists():
        return "no per-image statistics beside the results"
    try:
        read_per_image(per_image_path(ckpt))
    except UserError:
        return "corrupt per-image statistics, redoing"
    meta = read_meta(ckpt) or {}
    if record.get("checkpoint_saved_at") != meta.get("saved_at"):
        return "checkpoint saved again since its evaluation"
    return None


_WORKER = {}  # per worker process: the Accelerator on its device, and whether to show per-image bars


def _init_worker(devices: list[str], counter, threads: int) -> None:
    """Pin this worker process to the next device (round-robin) before CUDA is initialised."""
    with counter.get_lock():
        device = devices[counter.value % len(devices)]
        counter.value += 1
    if device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    signal.signal(STOP_SIGNAL, _stop_in_worker)
    torch.set_num_threads(threads)
    import datasets
    from accelerate import Accelerator

    datasets.disable_progress_bars()  # one overall bar in the parent; workers stay quiet
    _WORKER.update(accelerator=Accelerator(cpu=device == "cpu"), show_progress=False)


STOP_SIGNAL = signal.SIGUSR1  # parent -> pool worker: stop evaluating (see stop_workers)


def _stop_in_worker(signum, frame) -> None:
    """Stop the running evaluation (its writes are atomic: finally/except blocks remove temp files) and
    refuse the ones still queued, so the worker reaches the pool's end-of-work message and exits cleanly."""
    _WORKER["stopping"] = True
    if _WORKER.get("busy"):
        raise KeyboardInterrupt


def _evaluate_in_worker(ckpt: Path, args) -> tuple[Path, dict | None, str | None]:
    """(checkpoint, record, None) or (checkpoint, None, one-line error); never raises (the batch goes on)."""
    if _WORKER.get("stopping"):
        return ckpt, None, "not evaluated: interrupted"
    _WORKER["busy"] = True
    try:
        return ckpt, evaluate_checkpoint(ckpt, args, _WORKER["accelerator"], _WORKER["show_progress"]), None
    except KeyboardInterrupt:
        return ckpt, None, "not evaluated: interrupted"
    except UserError as e:
        return ckpt, None, user_message(e)  # one line, also when a DataLoader worker raised it
    except Exception as e:  # a broken checkpoint must not stop the other evaluations
        last = traceback.extract_tb(e.__traceback__)[-1]
        return ckpt, None, f"{type(e).__name__}: {e} (at {Path(last.filename).name}:{last.lineno})"
    finally:
        _WORKER["busy"] = False


def evaluate_all(checkpoints: list[Path], args):
    """Yield _evaluate_in_worker's tuples as checkpoints finish: in this process for --jobs 1, else in a
    pool of spawned processes spread round-robin over the visible GPUs (or sharing the CPU)."""
    if args.jobs == 1:
        from accelerate import Accelerator
        set_torch_threads(jobs=1)
        _WORKER.update(accelerator=Accelerator(), show_progress=True)
        for ckpt in checkpoints:
            yield _evaluate_in_worker(ckpt, args)
        return
    spawn = mp.get_context("spawn")  # CUDA cannot be forked
    devices = [str(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    threads = threads_per_job(args.jobs)  # this process's cores shared by the jobs (utils.threads)
    with ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=_init_worker,
                             initargs=(devices, spawn.Value("i", 0), threads)) as pool:
        futures = {pool.submit(_evaluate_in_worker, ckpt, args): ckpt for ckpt in checkpoints}
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # Ctrl-C, or the caller closing us: stop now, not after the queued checkpoints
            stop_workers(pool)
            for future, ckpt in futures.items():
                if not future.done():
                    remove_temp_files(results_path(ckpt))  # a worker killed while writing its results
            raise


def stop_workers(pool: ProcessPoolExecutor, grace_s: float = 5.0) -> None:
    """Cancel the queued evaluations and stop the running ones now: STOP_SIGNAL interrupts each worker's
    evaluation (`_stop_in_worker`), so it exits cleanly within a moment; one still alive after `grace_s`
    seconds is terminated (the caller then removes what it may have left half-written)."""
    processes = list((pool._processes or {}).values())  # no public handle before Python 3.14's terminate_workers
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, STOP_SIGNAL)
    for process in processes:
        process.join(timeout=grace_s)
        if process.is_alive():
            process.terminate()
            process.join()


def run_batch(args, console: Console) -> int:
    """--all: evaluate what is pending, print a table, list the failures; exit code 1 if any failed."""
    checkpoints = find_checkpoints(args.all)
    todo = [c for c in checkpoints if args.force or pending_reason(c, args.split, args.metrics_profile) is not None]
    console.print(f"{len(checkpoints)} checkpoints under {args.all}: {len(checkpoints) - len(todo)} already "
                  f"evaluated on {args.split or 'their val split'}, {len(todo)} to evaluate with {args.jobs} "
                  "job(s)",
                  soft_wrap=True)
    done, failures = [], []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with ExitStack() as stack:
        # One evaluator per run: each RUN/checkpoints folder it writes results into is locked until it ends.
        for folder in sorted({ckpt.parent for ckpt in todo}):
            stack.enter_context(folder_lock(folder, "evaluate.py", "wait for it to finish or stop it"))
        bar = stack.enter_context(Progress(*columns, console=console))
        results = stack.enter_context(closing(evaluate_all(todo, args)))  # closed on Ctrl-C: workers stop
        task = bar.add_task("checkpoints", total=len(todo))
        for ckpt, record, error in results:
            if error is None:
                done.append(record)
            else:
                failures.append((ckpt, error))
                bar.console.print(f"[red]failed[/red] {ckpt}: {error}", soft_wrap=True)
            bar.advance(task)
    if done:
        console.print(batch_table(sorted(done, key=lambda r: r["checkpoint"]), args.all))
    if failures:
        console.print(f"[red]{len(failures)} checkpoint(s) could not be evaluated:[/red]")
        for ckpt, error in failures:
            console.print(f"  {ckpt}: {error}", soft_wrap=True)
        return 1
    return 0


# --------------------------------------------------------------------------------------------- reports
def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"  # NaN: nothing to average


def checkpoint_table(record: dict) -> Table:
    """One checkpoint's results record (write_results) as `engine.results.metrics_table`."""
    ckpt = Path(record["checkpoint"])
    flat = {**record, **{f"iou/{name}": value for name, value in record["iou"].items()}}
    return metrics_table({"%": flat}, f"{ckpt.parent.parent.name}/{ckpt.name} on {record['split']}",
                         caption=f"{record['num_images']} images, {record['seconds']:.1f} s, metrics profile "
                                 f"{record.get('metrics_profile', 'default')}")


def batch_table(records: list[dict], runs_dir: Path) -> Table:
    """One row per checkpoint: its run (folder below `runs_dir`, wrapped, never cut, in a narrow terminal),
    epoch and metrics."""
    table = Table(title=f"evaluated checkpoints under {runs_dir} (%)")
    table.add_column("run", overflow="fold")
    for column in ("variant", "seed", "epoch", *(SHORT_LABELS[k] for k in FRACTION_KEYS), "s"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in records:
        run = os.path.relpath(Path(r["checkpoint"]).parent.parent, runs_dir)  # RUN/checkpoints/epoch_XXXX
        table.add_row(run, r["variant"], str(r["seed"]), str(r["epoch"]), *(_pct(r[k]) for k in FRACTION_KEYS),
                      f"{r['seconds']:.1f}")
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    import datasets
    datasets.disable_progress_bars()  # listing a split is instant; our own bars show the work
    if args.consensus is not None or args.consensus_pairs is not None:
        return run_consensus(args, console)
    if args.all is not None:
        return run_batch(args, console)

    from accelerate import Accelerator
    accelerator = Accelerator()  # 1 process, or N under `accelerate launch`
    writes_results = accelerator.is_main_process and args.checkpoint.is_dir() and args.split not in UNLABELLED_SPLITS
    with folder_lock(args.checkpoint.parent, "evaluate.py", "wait for it to finish or stop it") \
            if writes_results else nullcontext():  # the folder --all locks too
        record = evaluate_checkpoint(args.checkpoint, args, accelerator)
    if accelerator.is_main_process:
        if args.split in UNLABELLED_SPLITS:
            console.print(f"wrote {record['predictions']} predictions to {args.save_predictions} (labelIds/ for "
                          "the test server, overlay/ to look at)")
        else:
            console.print(checkpoint_table(record))
            console.print(f"wrote {results_path(args.checkpoint)} and {per_image_path(args.checkpoint).name} "
                          f"(metrics profile {record['metrics_profile']})")
            if args.save_predictions:
                console.print(f"wrote predictions to {args.save_predictions}")
    return 0


if __name__ == "__main__":
    run_main(main)
