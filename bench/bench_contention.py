"""The metrics under CPU contention: the same calls with and without busy processes on this process's cores.

Times `segmentation_image_stats` (the default profile, what the evaluation computes per image) on real
1024x2048 label maps with the threads `utils.threads` gives this process (one per usable core, OpenMP threads
that sleep rather than spin while they wait), first quiet, then with --busy processes spinning on the same cores
(`while True: pass`, pinned like this process), and prints the slowdown (goal <= 3x with 2 busy processes on 2
cores). Passes alternate quiet / busy so that a change in the rest of the machine's load hits both.

    taskset -c 0,1 python bench/bench_contention.py            # 2 cores, 2 busy processes
    python bench/bench_contention.py --busy 4 --threads 1
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from utils import run_main  # noqa: E402  (first: sets OpenMP's wait policy before torch loads)
from utils.threads import set_torch_threads, usable_cpus  # noqa: E402

import torch  # noqa: E402

from bench.bench_metrics import DEFAULT_ROOT, NUM_CLASSES, load_pairs  # noqa: E402
from metrics.segmentation import segmentation_image_stats  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402

BUSY_LOOP = "while True: pass"


def seconds_per_image(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    start = time.perf_counter()
    for pred, target in pairs:
        segmentation_image_stats(pred, target, NUM_CLASSES)
    return (time.perf_counter() - start) / len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="cityscapes_fullres root")
    parser.add_argument("--images", type=int, default=3, help="val maps per pass")
    parser.add_argument("--passes", type=int, default=3, help="quiet/busy pass pairs (median of each reported)")
    parser.add_argument("--busy", type=int, default=2, help="busy processes on this process's cores")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: utils.threads' rule)")
    args = parser.parse_args(argv)
    threads = set_torch_threads(threads=args.threads)
    pairs = [(torch.as_tensor(p)[None], torch.as_tensor(t)[None]) for p, t in load_pairs(args.data, args.images)]
    print(f"{len(pairs)} real maps {tuple(pairs[0][1].shape[1:])}, {threads} torch thread(s) on {usable_cpus()} usable "
          f"core(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f}, "
          f"{args.busy} busy process(es)")
    seconds_per_image(pairs[:1])  # warm-up
    quiet, busy = [], []
    for _ in range(args.passes):
        quiet.append(seconds_per_image(pairs))
        spinners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy)]
        try:
            time.sleep(0.5)  # let them start spinning
            busy.append(seconds_per_image(pairs))
        finally:
            for process in spinners:
                process.kill()
                process.wait()
    quiet_s, busy_s = sorted(quiet)[len(quiet) // 2], sorted(busy)[len(busy) // 2]
    print(f"quiet: {1e3 * quiet_s:8.1f} ms/img   with {args.busy} busy: {1e3 * busy_s:8.1f} ms/img   "
          f"slowdown {busy_s / quiet_s:.2f}x (goal <= 3x)")
    return 0


if __name__ == "__main__":
    run_main(main)
