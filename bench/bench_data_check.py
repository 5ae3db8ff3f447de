"""What train.py's check of every file before the first step costs (`data_utils.dataset.check_frames`).

On the 8 real 2048x1024 frames (shared data): the header check (PNG mode and size of image and label, no
decoding, in this process) that train.py runs on the train split, and the header check plus the decoded
label ids that it runs on the val split (the shared val folder has labels without images, so the train
frames stand in for it), in this process (0 workers) and in worker processes; each setting --passes times
after a warm-up pass (files in the page cache), median. The full-split estimate scales the one-process time
per frame to Cityscapes' 2975 train and 500 val frames (W workers on W free cores divide the label part by
about W).

    python bench/bench_data_check.py --num-workers 0,2
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="bench-check-hf-"))
from data_utils.cityscapes import load_split  # noqa: E402
from data_utils.dataset import SegmentationDataset, check_frames  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.fileio import RenamedFlag, run_main  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes_fullres"
CITYSCAPES_TRAIN, CITYSCAPES_VAL = 2975, 500


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--num-workers", default="0,2",
                        help="comma list of check_frames' worker counts (train.py passes its --num-workers)")
    parser.add_argument("--workers", action=RenamedFlag, new="--num-workers", dest="num_workers")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args(argv)
    dataset = SegmentationDataset(load_split(args.data_root, "train"))
    n = len(dataset)
    print(f"{n} frames of {args.data_root}, {os.cpu_count()} CPUs")
    print(f"{'check':<26} {'workers':>7} {'median s':>9} {'ms/frame':>9} {'full split, 1 process, s':>25}")
    settings = [("headers (train)", False, 0, CITYSCAPES_TRAIN)] + [
        ("headers + label ids (val)", True, int(w), CITYSCAPES_VAL) for w in args.num_workers.split(",")]
    for name, decode, workers, full in settings:
        check_frames(dataset, decode, workers)  # warm-up: page cache
        times = []
        for _ in range(args.passes):
            start = time.perf_counter()
            check_frames(dataset, decode, workers)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        estimate = f"{median / n * full:25.1f}" if workers == 0 else f"{'':>25}"  # a pool's start does not scale
        print(f"{name:<26} {workers:>7} {median:9.3f} {1000 * median / n:9.1f} {estimate}")
    return 0


if __name__ == "__main__":
    run_main(main)
