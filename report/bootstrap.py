"""Paired image bootstrap: would a difference between two groups of runs survive another draw of val images?

The definitions (resampling, each metric on a resample, Δ, interval, p, Holm) are written once, in
`bootstrap_metrics`; `paired_image_bootstrap` is its mIoU form on bare confusions, the API other code uses.

How it stays fast: every metric is a function of per-image quantities summed over the images (counts, or a
score and a 0/1 "counted"), so a replicate's sums are a count-weighted product. With W (B, n) the number of
times each image is drawn in each replicate and F (n, K) the per-image quantities of every run and metric side
by side, W @ F (B, K) holds every replicate's sums at once; float64 keeps integer counts exact (< 2^53).
Replicates are processed in blocks of at most CHUNK_BYTES.

Example:
    >>> rng = np.random.default_rng(0)
    >>> base = rng.integers(0, 30, size=(20, 3, 4))  # 20 images, 3 classes (+1 column: outside 0..C-1)
    >>> better = base + 40 * np.eye(3, 4, dtype=int)  # more correct pixels on every image
    >>> out = paired_image_bootstrap({"X": [better], "Y": [base]}, [("X", "Y")], num_replicates=200, seed=0)
    >>> out["X", "Y"]["delta"] > 0, out["X", "Y"]["p"]
    (True, 0.0)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from rich.progress import track

from metrics.keys import PROFILES
from metrics.registry import METRICS, Resample
from report.stats import holm
from utils.console import noun_for

CHUNK_BYTES = 64 * 2**20  # memory bound of one block of replicates (W, the image draws and W @ F, float64)
LEVEL = 95.0  # the interval: the 2.5 and 97.5 percentiles of the replicates' Δ


# ---------------------------------------------------------------------------------------------------- metrics
def _bootstrap_names() -> tuple[dict[str, Resample], dict[str, dict[str, str]]]:
    """Every record's resample form (`metrics.registry`) under its results.json key, and where a profile has its
    own estimator, under "<profile>_<key>" (study_boundary_f1, study_trimap_iou); and per profile the map
    results.json key -> that name."""
    forms, names = {}, {profile: {} for profile in PROFILES}
    for m in METRICS:
        for profile in PROFILES:
            form = m.resampler(profile)
            name = m.key if form is m.resampler(PROFILES[0]) else f"{profile}_{m.key}"
            forms.setdefault(name, form)
            names[profile][m.key] = name
    return forms, names


# name -> Resample (array, terms, reduce): the metric is reduce(Σ_images terms(per-image array));
# PROFILE_METRICS: results.json key -> BOOTSTRAP_METRICS name, per metrics profile (results.json `metrics_profile`)
BOOTSTRAP_METRICS, PROFILE_METRICS = _bootstrap_names()


def full_set_values(stats: Mapping[str, np.ndarray], metrics: Sequence[str]) -> dict[str, float]:
    """One run's value of each metric on its full image set, every image once (`bootstrap_metrics` defines them)."""
    out = {}
    for m in metrics:
        spec = BOOTSTRAP_METRICS[m]
        out[m] = float(spec.reduce(np.asarray(spec.terms(np.asarray(stats[spec.array])), dtype=np.float64).sum(0)))
    return out


# ---------------------------------------------------------------------------------------------------- bootstrap
def replicate_draws(n: int, num_replicates: int, seed: int, chunk: int):
    """Blocks of W: (b, n) float64, W[j, i] = how often image i is drawn in replicate j, from the rows of
    `numpy.random.default_rng(seed).integers(0, n, size=(num_replicates, n))` (drawn block by block from one
    generator, which yields the same rows)."""
    rng = np.random.default_rng(seed)
    for start in range(0, num_replicates, chunk):
        b = min(chunk, num_replicates - start)
        rows = rng.integers(0, n, size=(b, n))  # (b, n) image indices
        flat = (rows + n * np.arange(b)[:, None]).ravel()
        yield start, np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_metrics(stats: Mapping[str, Sequence[Mapping[str, np.ndarray]]], pairs: Sequence[tuple[str, str]],
                      metrics: Sequence[str], num_replicates: int, seed: int = 0, chunk_replicates: int | None = None,
                      progress: bool = False) -> dict[str, dict[tuple[str, str], dict]]:
    """Paired image bootstrap of the differences between groups of runs, for several metrics.

    Args:
        stats: {group: [per-image statistics of each of its runs (seeds)]}; each a mapping of the per-image
            file's keys (`metrics.per_image`) to arrays over the same n images in the same order.
        pairs: the comparisons (X, Y); Δ = X − Y.
        metrics: names in BOOTSTRAP_METRICS.
        num_replicates: B >= 1.
        seed: the seed of the image draws.
        chunk_replicates: replicates per block (default: as many as fit CHUNK_BYTES); the result does not
            depend on it (sums of counts are exact; of per-image scores, up to the order of the float sums).
        progress: show a progress bar over the blocks.

    Definitions. Replicate b = 1..B draws the n images with the indices of row b of
    `numpy.random.default_rng(seed).integers(0, n, size=(B, n))` (with replacement; an image drawn k times
    counts k times), the same rows for every run, pair and metric (paired). A run's value on a draw, from its
    per-image arrays over the drawn images, is its record's resample form (`metrics.registry.Resample`):
    reduce(Σ_drawn images terms(array)), the dataset value of `metrics.per_image.dataset_metrics` on those
    images. E.g. mIoU (`miou`): the confusion summed over the draw, IoU_c = I_c / U_c, the mean over the classes
    with U_c > 0; Boundary F1 (`boundary_f1`, default profile): the mean of the per-image scores, NaN images
    skipped; `study_boundary_f1`, `study_trimap_iou`, `fragments_per_image`: the mean over all drawn images.
    A group's value is the mean over its runs; Δ_b = X_b − Y_b. The point Δ is the same on the full image set
    (every image once). Over the B replicates (those with a finite Δ_b): the 95 % interval is the 2.5 and 97.5
    percentiles of Δ_b (`numpy.percentile`, linear interpolation); p = min(1, 2 · min(fraction of Δ_b <= 0,
    fraction of Δ_b >= 0)), the two-sided bootstrap p-value; Holm's correction (`report.stats.holm`) runs over
    the pairs within each metric.

    Returns:
        {metric: {(X, Y): {"delta", "ci_low", "ci_high", "p", "p_holm", "x", "y", "replicates", "samples"}}}:
        x, y the groups' full-set values; replicates = number of finite Δ_b; samples the (B,) Δ_b. Values in
        the metric's unit (fractions; fragments per image a count).
    """
    if num_replicates < 1:
        raise ValueError(f"num_replicates={num_replicates}: need at least 1 replicate")
    unknown = [m for m in metrics if m not in BOOTSTRAP_METRICS]
    if unknown:
        raise ValueError(f"unknown {noun_for(len(unknown), 'metric')} {', '.join(unknown)}; known: "
                         f"{', '.join(BOOTSTRAP_METRICS)}")
    if not pairs:
        raise ValueError("no pairs to compare")
    groups = list(dict.fromkeys(g for pair in pairs for g in pair))
    empty = [g for g in groups if not stats.get(g)]
    if empty:
        raise ValueError(f"no runs for {noun_for(len(empty), 'group')} {', '.join(empty)}")
    runs = [run for g in groups for run in stats[g]]  # (R,) group-major
    owner = np.array([k for k, g in enumerate(groups) for _ in stats[g]])  # (R,) group index of each run

    # F (n, K): per metric, per run, the per-image terms flattened; `blocks` remembers where each metric sits.
    columns, blocks, offset = [], {}, 0
    for m in metrics:
        spec = BOOTSTRAP_METRICS[m]
        terms = [np.asarray(spec.terms(np.asarray(run[spec.array])), dtype=np.float64) for run in runs]
        shapes = {t.shape for t in terms}
        if len(shapes) != 1:
            raise ValueError(f"`{spec.array}` differs in shape between runs: {sorted(shapes)}; the runs must "
                             "cover the same images and classes")
        shape = terms[0].shape
        columns += [t.reshape(shape[0], -1) for t in terms]
        width = len(runs) * int(np.prod(shape[1:], dtype=np.int64))
        blocks[m] = (offset, width, shape[1:])
        offset += width
    F = np.concatenate(columns, axis=1)  # (n, K)
    n, K = F.shape
    x_index = np.array([groups.index(x) for x, _ in pairs])
    y_index = np.array([groups.index(y) for _, y in pairs])

    def deltas(W: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(b, n) draw counts -> per metric the group values (b, G) and the pairs' Δ (b, P)."""
        sums = W @ F  # (b, K): every replicate's sums, every run and metric
        values, out = {}, {}
        for m, (start, width, term_shape) in blocks.items():
            per_run = BOOTSTRAP_METRICS[m].reduce(sums[:, start:start + width].reshape(len(W), len(runs),
                                                                                       *term_shape))  # (b, R)
            group = np.stack([per_run[:, owner == k].mean(1) for k in range(len(groups))], axis=1)  # (b, G)
            values[m], out[m] = group, group[:, x_index] - group[:, y_index]
        return values, out

    full_values, full_delta = deltas(np.ones((1, n)))
    chunk = chunk_replicates or max(1, CHUNK_BYTES // (8 * (K + 2 * n)))
    samples = {m: np.empty((num_replicates, len(pairs))) for m in metrics}
    draws = replicate_draws(n, num_replicates, seed, chunk)
    steps = -(-num_replicates // chunk)
    for start, W in track(draws, total=steps, description=f"bootstrap ({num_replicates} replicates)",
                          transient=True, disable=not progress):
        for m, d in deltas(W)[1].items():
            samples[m][start:start + len(W)] = d

    result = {}
    tail = (100 - LEVEL) / 2
    for m in metrics:
        entries = []
        for k, (x, y) in enumerate(pairs):
            d = samples[m][:, k]
            finite = d[np.isfinite(d)]
            if finite.size:
                low, high = np.percentile(finite, [tail, 100 - tail])
                p = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0)))
            else:
                low = high = p = float("nan")
            entries.append({"delta": float(full_delta[m][0, k]), "ci_low": float(low), "ci_high": float(high),
                            "p": float(p), "x": float(full_values[m][0, x_index[k]]),
                            "y": float(full_values[m][0, y_index[k]]), "replicates": int(finite.size),
                            "samples": d})
        for entry, p_holm in zip(entries, holm([e["p"] for e in entries])):
            entry["p_holm"] = float(p_holm)
        result[m] = dict(zip(map(tuple, pairs), entries))
    return result


def paired_image_bootstrap(confusions: Mapping[str, Sequence[np.ndarray]], pairs: Sequence[tuple[str, str]],
                           num_replicates: int, seed: int = 0) -> dict[tuple[str, str], dict]:
    """The paired image bootstrap of mIoU (`bootstrap_metrics` with metrics=["miou"]).

    Args:
        confusions: {group: [(n_images, C, C+1) int confusion of each seed's run]}: rows target class, columns
            predicted class, the last column predictions outside 0..C-1; the same images in the same order.
        pairs: the comparisons (X, Y); Δ = X − Y.
        num_replicates: B; seed: the seed of the image draws.

    Returns:
        {(X, Y): {"delta", "ci_low", "ci_high", "p", "p_holm", ...}}, fractions (see `bootstrap_metrics`).
    """
    stats = {g: [{"confusion": c} for c in runs] for g, runs in confusions.items()}
    return bootstrap_metrics(stats, pairs, ["miou"], num_replicates, seed)["miou"]
