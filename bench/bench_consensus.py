"""Speed of the consensus filter and the fragment count on real 1024x2048 label maps (issue 16: >= 5 frames/s on
one CPU core), against the per-class scipy.ndimage.label procedure they replace, ratios in one run.

Primary and veto are two reproducible perturbations of each real val label map (`bench_metrics.load_pairs`:
shifted, ignore filled, random rectangles of other classes), so the primary has components the veto lacks.
Every variant runs over the same maps, interleaved, best of --repeats (`bench_metrics.best_seconds`); the scipy
results are checked against ours first.

    OMP_NUM_THREADS=1 python bench/bench_consensus.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from bench.bench_metrics import DEFAULT_ROOT, best_seconds, load_pairs  # noqa: E402
from data_utils.labels import CITYSCAPES, THIN_CLASSES  # noqa: E402
from metrics.consensus import cc_veto, count_fragments  # noqa: E402
from utils import run_main  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402

EIGHT = np.ones((3, 3), bool)
NUM_CLASSES = CITYSCAPES.num_classes
PROTECT = tuple(CITYSCAPES.names.index(name) for name in THIN_CLASSES)  # evaluate.py's default --protect


def scipy_fragments(label_map: np.ndarray) -> int:
    """One scipy.ndimage.label call per class (the procedure count_fragments replaces)."""
    return sum(ndimage.label(label_map == c, structure=EIGHT)[1] for c in range(NUM_CLASSES))


def scipy_veto(primary: np.ndarray, veto: np.ndarray) -> np.ndarray:
    """cc_veto with evaluate.py's default options through one scipy.ndimage.label call per class and a bincount
    of the veto's support per component."""
    out = primary.copy()
    for c in range(NUM_CLASSES):
        if c in PROTECT:
            continue
        components, n = ndimage.label(primary == c, structure=EIGHT)
        if n == 0:
            continue
        supported = np.bincount(components[veto == c], minlength=n + 1) > 0
        dropped = ~supported[components] & (components > 0)
        out[dropped] = veto[dropped]
    return out


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="cityscapes_fullres folder")
    parser.add_argument("--images", type=int, default=6, help="label maps timed")
    parser.add_argument("--repeats", type=int, default=3, help="passes; each map's best time counts")
    args = parser.parse_args()

    primaries = [p for p, _ in load_pairs(args.data, args.images, seed=0)]
    vetoes = [p for p, _ in load_pairs(args.data, args.images, seed=1)]
    for primary, veto in zip(primaries, vetoes):  # a benchmark of a wrong answer is worthless
        assert count_fragments(primary, NUM_CLASSES) == scipy_fragments(primary)
        assert np.array_equal(cc_veto(primary, veto, NUM_CLASSES, PROTECT), scipy_veto(primary, veto))
    pairs = list(zip(primaries, vetoes))
    seconds = best_seconds({
        "cc_veto": (lambda p, v: cc_veto(p, v, NUM_CLASSES, PROTECT), pairs),
        "cc_veto, scipy per class": (scipy_veto, pairs),
        "count_fragments": (lambda p: count_fragments(p, NUM_CLASSES), [(p,) for p in primaries]),
        "count_fragments, scipy per class": (scipy_fragments, [(p,) for p in primaries]),
    }, args.repeats)
    print(f"{args.images} real 1024x2048 maps, best of {args.repeats}, one thread")
    print(f"{'':34s} {'ms/map':>8s} {'frames/s':>9s}")
    for name, s in seconds.items():
        print(f"{name:34s} {1e3 * s:8.1f} {1 / s:9.1f}")
    for name in ("cc_veto", "count_fragments"):
        ratio = seconds[f"{name}, scipy per class"] / seconds[name]
        verdict = "meets" if 1 / seconds[name] >= 5 else "MISSES"
        print(f"{name}: {ratio:.1f}x the scipy procedure; {verdict} the >= 5 frames/s target")


if __name__ == "__main__":
    run_main(main)
