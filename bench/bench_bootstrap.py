"""Speed of the paired image bootstrap (`report.bootstrap`) at the study's size, against an explicit loop.

The issue's setting: 10 000 replicates x 12 runs (4 groups x 3 seeds) x 500 images x 19 classes on one CPU
core, every pair of groups (6). The per-image statistics are synthetic (`synthetic_stats`). Timed: the mIoU
bootstrap (`paired_image_bootstrap`) and every default-profile metric at once (`bootstrap_metrics`); then the
explicit per-replicate loop (`loop_deltas`: per replicate and run, index the drawn images, sum, reduce) on
--loop-replicates replicates, checked equal to the vectorised Δ_b of the same replicates and extrapolated to
all replicates for the ratio.

    python bench/bench_bootstrap.py
    python bench/bench_bootstrap.py --replicates 2000 --images 100 --loop-replicates 20
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, the setting (before numpy loads its BLAS)

import itertools  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from report.bootstrap import PROFILE_METRICS, bootstrap_metrics, paired_image_bootstrap  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def synthetic_stats(rng: np.random.Generator, n: int, C: int, quality: float = 0.8,
                    empty_image: bool = False) -> dict[str, np.ndarray]:
    """Random per-image statistics of one run with every key of the per-image file (`metrics.per_image`).

    Each image holds ~60 % of the classes; a target pixel is predicted right with probability `quality`,
    otherwise as any class or outside 0..C-1 alike. empty_image: image 0 has no valid pixel (its Boundary F1 is
    NaN). The boundary arrays are random counts with matched <= total, not derived from maps.
    """
    target_px = rng.integers(1, 400, size=(n, C)) * (rng.random((n, C)) < 0.6)  # (n, C)
    if empty_image:
        target_px[0] = 0
    pvals = np.full((C, C + 1), (1 - quality) / C)
    pvals[np.arange(C), np.arange(C)] = quality  # (C, C+1), rows sum to 1 (C off-diagonal cells share 1 − q)
    confusion = rng.multinomial(target_px, pvals)  # (n, C, C+1)
    boundary_total = rng.integers(0, 50, size=(n, C, 2))
    boundary = np.stack([rng.binomial(boundary_total[..., 0], quality), boundary_total[..., 0],
                         rng.binomial(boundary_total[..., 1], quality), boundary_total[..., 1]], axis=-1)
    union = rng.integers(0, 80, size=(n, C))
    f1 = np.clip(rng.normal(quality, 0.1, size=n), 0, 1)
    if empty_image:
        f1[0] = np.nan
    hd95 = np.where(target_px > 0, rng.gamma(2.0, 10 / quality, size=(n, C)), np.nan)  # NaN: class excluded
    hd95[rng.random((n, C)) < 0.1] = np.nan
    return {
        "names": np.array([f"city_{i:06d}_000019" for i in range(n)]),
        "class_names": np.array([f"class{c}" for c in range(C)]),
        "boundary_px": np.array(3),
        "confusion": confusion,
        "trimap_confusion": rng.binomial(confusion, 0.3),
        "boundary": boundary,
        "boundary_f1": f1,
        "study_boundary_f1": np.clip(rng.normal(quality, 0.1, size=n), 0, 1),
        "study_trimap_iou": np.clip(rng.normal(quality - 0.2, 0.1, size=n), 0, 1),
        "boundary_iou": np.stack([rng.binomial(union, quality), union], axis=-1),
        "fragments": rng.integers(20, 200, size=n),
        "hd95": hd95,
        "hd95_excluded": rng.integers(0, 3, size=n),
    }


def _iou_mean_loop(intersection, union) -> float:
    values = [i / u for i, u in zip(intersection, union) if u > 0]
    return sum(values) / len(values) if values else math.nan


def run_value_loop(run: dict[str, np.ndarray], metric: str, images: np.ndarray) -> float:
    """One run's `metric` (a BOOTSTRAP_METRICS name) on the drawn `images` (indices, repeats allowed), written
    out as in the definitions of `report.bootstrap.bootstrap_metrics`."""
    if metric in ("miou", "trimap_iou"):
        conf = run["confusion" if metric == "miou" else "trimap_confusion"][images].sum(0)  # (C, C+1)
        C = conf.shape[0]
        return _iou_mean_loop([conf[c, c] for c in range(C)],
                              [conf[c, :].sum() + conf[:, c].sum() - conf[c, c] for c in range(C)])
    if metric == "boundary_iou":
        counts = run["boundary_iou"][images].sum(0)  # (C, 2)
        return _iou_mean_loop(counts[:, 0], counts[:, 1])
    if metric == "hd95":  # the mean over the drawn (image, class) pairs that are not excluded
        values = [v for i in images for v in run["hd95"][i] if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
    key = {"fragments_per_image": "fragments"}.get(metric, metric)
    values = [run[key][i] for i in images]
    if metric == "boundary_f1":  # the default profile skips images without a score
        values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def loop_deltas(stats: dict[str, list[dict]], pairs: list[tuple[str, str]], metric: str,
                rows: np.ndarray) -> np.ndarray:
    """(B, P) Δ_b of every pair, one replicate (a row of image indices) and one run at a time."""
    out = np.empty((len(rows), len(pairs)))
    for b, images in enumerate(rows):
        group = {g: np.mean([run_value_loop(run, metric, images) for run in runs]) for g, runs in stats.items()}
        out[b] = [group[x] - group[y] for x, y in pairs]
    return out


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicates", type=int, default=10_000)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--seeds", type=int, default=3, help="runs per group")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--loop-replicates", type=int, default=50, help="replicates of the explicit loop")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    groups = [chr(ord("A") + k) for k in range(args.groups)]
    stats = {g: [synthetic_stats(rng, args.images, args.classes, quality=0.75 + 0.01 * k) for _ in range(args.seeds)]
             for k, g in enumerate(groups)}
    pairs = list(itertools.combinations(groups, 2))
    metrics = list(PROFILE_METRICS["default"].values())
    print(f"{args.replicates} replicates x {args.groups * args.seeds} runs x {args.images} images x {args.classes} "
          f"classes, {len(pairs)} pairs; BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}", flush=True)

    start = time.perf_counter()
    paired_image_bootstrap({g: [r["confusion"] for r in runs] for g, runs in stats.items()}, pairs,
                           args.replicates, seed=0)
    t_miou = time.perf_counter() - start
    start = time.perf_counter()
    result = bootstrap_metrics(stats, pairs, metrics, args.replicates, seed=0)
    t_all = time.perf_counter() - start

    rows = np.random.default_rng(0).integers(0, args.images, size=(args.replicates, args.images))
    k = min(args.loop_replicates, args.replicates)
    start = time.perf_counter()
    loops = {m: loop_deltas(stats, pairs, m, rows[:k]) for m in metrics}
    t_loop = (time.perf_counter() - start) * args.replicates / k
    for m in metrics:
        vectorised = np.stack([result[m][pair]["samples"][:k] for pair in pairs], axis=1)
        np.testing.assert_allclose(vectorised, loops[m], rtol=1e-10, atol=1e-12, err_msg=m)

    print(f"mIoU only (paired_image_bootstrap):          {t_miou:7.2f} s")
    print(f"{len(metrics)} metrics (bootstrap_metrics):              {t_all:7.2f} s   "
          f"({args.replicates / t_all:,.0f} replicates/s)")
    print(f"explicit loop, {len(metrics)} metrics (from {k} replicates): {t_loop:7.1f} s   "
          f"= {t_loop / t_all:.0f}x the vectorised time; Δ_b equal on those {k} replicates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
