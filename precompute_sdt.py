"""Precompute the signed distance maps (SDT) of one split into a cache folder, one file per frame.

    python precompute_sdt.py --data-root /data/cityscapes --split train --out /data/sdt/train --jobs 8
    python precompute_sdt.py --data-root /data/cityscapes --split train --out /data/sdt/train --verify
    python precompute_sdt.py --hf-dataset data/demo-hf --reduce-labels --split train --out data/demo-hf-sdt

Each frame's label (a Cityscapes labelIds PNG, or an HF dataset row: the same flags as train.py) is mapped to
train ids and turned into an int8 (C, H, W) map, C = the dataset's class count, by
`data_utils.sdt.compute_sdt` (definition in data_utils/sdt.py); the file `<out>/<city>/<name>.sdt` is written to
a temp file, fsync'ed and renamed, so a crash never leaves a file that reads as valid. The header records a
fingerprint of the labels (`data_utils.sdt_cache.label_fingerprint`), so training refuses a cache made from
other labels. Rerunning skips files that pass every check (header, shape, clip, length, CRC32, the label
fingerprint: each label is decoded) and redoes missing, partial, corrupt, stale or version-1 ones; temp files
left by a killed run are deleted first (a second precompute on the same --out folder stops at once, naming the
first one's PID: `utils.dirlock`).
`--verify` writes nothing: it recomputes every map and compares it with the cache, and lists the frames that
differ or whose file is bad. `--compress` stores zlib-compressed row deltas (lossless, ~75x smaller on real
Cityscapes frames, ~17x on the synthetic demo, but decoded into memory instead of memory-mapped).

Exit status: `utils.run_main`'s. 0: done (--verify: every file matches); 3 (EXIT_PARTIAL_FAILURE): --verify
found frames that differ or a bad file (listed), the others match; 2: bad input, one `error:` line naming the
file and the fix; 130: interrupted.
"""
from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack, contextmanager
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from data_utils.paths import check_data_paths
from engine.config import add_data_source_flags
from utils import (EXIT_PARTIAL_FAILURE, RenamedFlag, UserError, free_space, human_bytes, make_output_dir,
                   parse_args_first, run_main)
from utils.cli import ArgumentParser
from utils.fileio import DISK_FULL, NOT_WRITABLE
from utils.threads import set_torch_threads, usable_cpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="train", help="split to process (train, val, ...)")
    parser.add_argument("--out", required=True, help="cache folder (one <city>/<name>.sdt per frame)")
    parser.add_argument("--jobs", type=int, default=usable_cpus(),
                        help="parallel processes, one frame each at a time (default: all usable CPUs)")
    parser.add_argument("--workers", action=RenamedFlag, new="--jobs", dest="jobs", type=int)
    parser.add_argument("--compress", action="store_true",
                        help="zlib-compress the files written now (lossless, ~75x smaller on Cityscapes, decoded "
                             "into memory when read); with --overwrite, re-encode all")
    parser.add_argument("--verify", action="store_true",
                        help="write nothing; recompute every map and compare it with the cache")
    parser.add_argument("--overwrite", action="store_true", help="recompute every file, even valid ones")
    add_data_source_flags(parser)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return args


if __name__ == "__main__":
    # --help, rejected flags and missing files answer before torch & co. load
    parse_args_first(parse_args, lambda args: check_data_paths(args.data_root, args.hf_dataset, args.classes))

import numpy as np
from rich.console import Console

from data_utils.sdt import compute_sdt
from data_utils.sdt_cache import inspect_sdt_file, sdt_cache_path, verify_sdt_file, write_sdt_file
from data_utils.source import DataSource
from utils.bars import Bars
from utils.console import plural, progress_columns
from utils.conventions import SDT_CLIP
from utils.dirlock import folder_lock
from utils.signals import sigterm_as_ctrl_c, stoppable_pool

MAX_PROBLEM_LINES = 20  # --verify prints at most this many problem lines (all are counted)
_FRAMES = None  # the split's frame source (PathFrames / HFFrames), set in every worker by _set_frames


def _set_frames(frames) -> None:
    """Every worker (and this process for one job): the frames, and one compute thread (utils.threads)."""
    global _FRAMES
    _FRAMES = frames
    set_torch_threads(threads=1)


def precompute_one(task: tuple[int, str, bool, bool]) -> tuple[str, int, int]:
    """Worker: make one cache file unless a valid one exists. Returns (status, file bytes, raw int8 bytes)."""
    index, out_path, compress, overwrite = task
    num_classes = _FRAMES.classes.num_classes
    labels = _FRAMES.read_label(index)  # also for a file that exists: its label fingerprint must match
    if not overwrite and os.path.exists(out_path):
        try:
            info = inspect_sdt_file(out_path, (num_classes, *labels.shape), expected_clip=SDT_CLIP, labels=labels)
            return "skipped", os.path.getsize(out_path), int(np.prod(info.shape))
        except UserError:
            pass  # partial, corrupt, an older format or made from other labels: redo it
    sdt = compute_sdt(labels, num_classes=num_classes, clip=SDT_CLIP)
    try:
        size = write_sdt_file(out_path, sdt, labels=labels, clip=SDT_CLIP, compress=compress)
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            raise UserError(f"{out_path}: cannot write the SDT file ({e.strerror or e}); pass a writable "
                            "--out") from None
        if e.errno not in DISK_FULL:
            raise  # not the disk refusing the write: a bug or a broken disk, with its traceback
        raise UserError(f"{out_path}: cannot write the SDT file ({e.strerror or e}); {free_space(out_path)} "
                        f"free: free disk space (a raw file takes {sdt.nbytes / 2**20:.0f} MiB, --compress saves "
                        "~75x) and rerun: finished files are kept") from None
    return "written", size, sdt.nbytes


def verify_one(task: tuple[int, str]) -> str | None:
    """Worker: recompute one map and compare it with the cache. Returns a problem line or None."""
    index, out_path = task
    return verify_sdt_file(out_path, _FRAMES.read_label(index), num_classes=_FRAMES.classes.num_classes,
                           clip=SDT_CLIP)


def remove_stale_temp_files(out: Path) -> int:
    """Delete temp files (".<name>.sdt.*.tmp") that a killed run left behind; returns how many."""
    stale = list(out.glob(".*.sdt.*.tmp")) + list(out.glob("*/.*.sdt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


@contextmanager
def run_with_progress(fn, tasks: list, jobs: int, description: str, frames):
    """Within: an iterator over fn(task) for every task (in completion order) under a rich progress bar, in
    `jobs` worker processes (this process for one job), which see `frames`. Leaving the block stops the workers
    at once; a bare generator would leave that, after a Ctrl-C in the caller's loop, to the garbage collector,
    which comes after multiprocessing's exit handler has started waiting for the workers."""
    with ExitStack() as stack:
        if jobs > 1 and len(tasks) > 1:
            # fork (as torch's DataLoader does) so workers skip re-importing torch and datasets; the workers only
            # run numpy/edt/zlib code. The pool is made before rich starts its refresh thread; its workers leave
            # Ctrl-C and SIGTERM to this process, which stops them when the block ends (utils.signals).
            method = "fork" if "fork" in get_all_start_methods() else "spawn"
            imap = stack.enter_context(stoppable_pool(get_context(method), min(jobs, len(tasks)),
                                                      initializer=_set_frames, initargs=(frames,)))
            results = imap(fn, tasks)
        else:
            _set_frames(frames)
            results = map(fn, tasks)
        bar = stack.enter_context(Bars(*progress_columns(), console=Console(stderr=True)))
        task_id = bar.add_task(description, total=len(tasks))
        yield (bar.advance(task_id) or result for result in results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    start = time.perf_counter()

    # 1) The frames of the split (in dataset order) and where each map goes.
    source = DataSource(data_root=args.data_root, hf_dataset=args.hf_dataset, image_column=args.image_column,
                        label_column=args.label_column, reduce_labels=args.reduce_labels, classes_file=args.classes)
    frames = source.frames(args.split, source.classes(args.split))
    out = Path(args.out).expanduser().resolve()
    indices = range(len(frames))
    out_paths = [str(sdt_cache_path(out, name)) for name in frames.names]

    # 2a) --verify: recompute and compare, write nothing.
    if args.verify:
        tasks = list(zip(indices, out_paths))
        with run_with_progress(verify_one, tasks, args.jobs, f"verify {args.split}", frames) as results:
            problems = [p for p in results if p]
        for line in sorted(problems)[:MAX_PROBLEM_LINES]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if len(problems) > MAX_PROBLEM_LINES:
            console.print(f"... and {len(problems) - MAX_PROBLEM_LINES} more")
        console.print(f"verified {plural(len(tasks), 'frame')} of '{args.split}' in {out}: {len(problems)} with "
                      f"problems ({time.perf_counter() - start:.1f} s)", soft_wrap=True)
        return EXIT_PARTIAL_FAILURE if problems else 0

    # 2b) Write missing or invalid files, skip valid ones: one precompute per cache folder (out/.lock), so the
    # stale temp files removed here are never another live run's.
    make_output_dir(out, "--out")  # a read-only or blocked --out: one line, before any work
    with folder_lock(out, "precompute_sdt.py", "wait for it to finish or stop it"):
        stale = remove_stale_temp_files(out)
        tasks = [(i, op, args.compress, args.overwrite) for i, op in zip(indices, out_paths)]
        counts, written_bytes, cache_bytes, raw_bytes = {"written": 0, "skipped": 0}, 0, 0, 0
        with run_with_progress(precompute_one, tasks, args.jobs, f"SDT {args.split}", frames) as results:
            for status, size, raw in results:
                counts[status] += 1
                cache_bytes += size
                raw_bytes += raw
                written_bytes += size if status == "written" else 0

    # 3) Summary: time and bytes.
    seconds = time.perf_counter() - start
    console.print(f"{args.split}: {counts['written']} written, {counts['skipped']} already valid, "
                  f"{plural(stale, 'stale temp file')} removed; {seconds:.1f} s with "
                  f"{plural(args.jobs, 'process', 'processes')}",
                  soft_wrap=True)
    console.print(f"wrote {human_bytes(written_bytes)}; {out} holds {human_bytes(cache_bytes)} for "
                  f"{plural(len(tasks), 'frame')} (raw int8: {human_bytes(raw_bytes)}, "
                  f"{raw_bytes / max(cache_bytes, 1):.1f}x smaller)",
                  soft_wrap=True)
    return 0


if __name__ == "__main__":
    with sigterm_as_ctrl_c():  # `timeout`, SLURM, `docker stop`: stop as on Ctrl-C, one line, exit code 130
        run_main(main)
