"""HD95 per class: the 95th-percentile symmetric Hausdorff distance between the predicted and the ground-truth
boundary of each class, in pixels (lower is better). `hd95` is the per-image reference (numpy + scipy) and
defines it; `hd95_image_stats` is the batched torch path the evaluation runs (CPU or GPU), equal to it.

The module imports without torch (the metric record, `metrics.registry`, is read by report/); the batched path
imports torch when it runs.

Example:
    >>> import numpy as np
    >>> target = np.zeros((32, 32), np.uint8); target[:, 16:] = 1
    >>> pred = np.zeros((32, 32), np.uint8); pred[:, 18:] = 1
    >>> hd95(pred, target, num_classes=3)  # both boundaries 2 px apart (the frame is a boundary too)
    array([ 2.,  2., nan])
"""
from __future__ import annotations

import math

import numpy as np

from metrics.reductions import nanmean
from utils.conventions import IGNORE_INDEX

PERCENTILE = 95.0


def _edges(mask: np.ndarray) -> np.ndarray:
    """The boundary of a mask: its pixels with a 4-neighbour outside it (outside the image counts as outside;
    scipy's default 4-connected erosion, MONAI's)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _percentile(distances: np.ndarray) -> float:
    """The PERCENTILE-th percentile with linear interpolation between order statistics (torch.quantile's)."""
    return float(np.percentile(distances, PERCENTILE, method="linear"))


def hd95(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """HD95 per class of one image: (num_classes,) float64, in pixels; NaN where the class is excluded.

    Definition (MONAI's `compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95)` on the
    one-hot maps of P and G, with Euclidean distances and unit spacing). Valid pixels: target != ignore_index and
    0 <= target < C. For a class c, G = (target == c) ∧ valid and P = (pred == c) ∧ valid: ignored pixels belong
    to no class in either map (a prediction there does not count, and a mask bordering them has a boundary
    there). The boundary of a mask M is ∂M = M ∧ ¬erode(M), erode the 3x3-cross (4-neighbour) erosion with
    outside the image counting as background (the frame is a boundary). With d(x, S) the Euclidean distance
    from pixel x to the nearest pixel of S, the directed distances are D(P→G) = {d(x, ∂G) : x ∈ ∂P} and
    D(G→P) = {d(y, ∂P) : y ∈ ∂G}, and

        HD95_c = max(q95(D(P→G)), q95(D(G→P))),

    q95 the 95th percentile with linear interpolation between order statistics (numpy's "linear",
    torch.quantile's). Exclusions (MONAI's conventions): a class absent from both P and G has no distances (MONAI:
    NaN); a class absent from exactly one of them has only infinite distances (MONAI's Hausdorff distance: inf;
    with percentile=95: NaN, torch.quantile of infinities). Both are excluded: NaN here. Only the second kind is
    counted (`hd95_image_stats`' "hd95_excluded", in the per-image file; a class in neither map is simply absent,
    as a class with U_c = 0 is for the IoU).

    Dataset value (`hd95_dataset`, the "hd95" of results.json): the mean of HD95 over all (image, class) pairs
    that are not excluded (MONAI's reduction="mean"); per class (`hd95_per_class`, results.json
    "hd95_per_class"): the mean over the images where the class is not excluded (MONAI's "mean_batch"), NaN
    where it is excluded in every image.

    Args:
        pred, target: (H, W) integer label maps (train ids); pred values outside 0..C-1 belong to no class.
        num_classes: C.
        ignore_index: the ignore label in `target`.
    """
    from scipy.ndimage import distance_transform_edt

    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be (H, W); got {pred.shape} and {target.shape}")
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    out = np.full(num_classes, math.nan)
    for c in range(num_classes):
        P, G = (pred == c) & valid, (target == c) & valid
        if not (P.any() and G.any()):
            continue  # excluded: absent from one map (MONAI: inf) or both (MONAI: NaN)
        rows, cols = np.nonzero(P | G)  # the crop: every boundary pixel, plus a frame of 1 (as MONAI crops)
        r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, P.shape[0])
        c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, P.shape[1])
        P, G = P[r0:r1, c0:c1], G[r0:r1, c0:c1]
        edge_p, edge_g = _edges(P), _edges(G)
        to_g = distance_transform_edt(~edge_g)  # d(x, ∂G) for every pixel x
        to_p = distance_transform_edt(~edge_p)
        out[c] = max(_percentile(to_g[edge_p]), _percentile(to_p[edge_g]))
    return out


# ------------------------------------------------------------------------------------------ batched (torch)
NEAR_WINDOWS = (3, 16)  # columns either side searched for the nearest boundary pixel before comparing with all
PAIR_CHUNK = 2**20  # (query, column) or (query, target) pairs per step: bounds the memory of a step


def _boundary_pixels(classes, num_classes: int):
    """(N, H, W) class index (C = no class) -> (image, class, row, col) int64 tensors of every boundary pixel:
    a pixel of a class with a 4-neighbour of another index or outside the image."""
    import torch

    inner = torch.zeros_like(classes, dtype=torch.bool)
    inner[:, 1:-1, 1:-1] = True  # pixels on the frame border the outside
    for dim in (1, 2):
        size = classes.shape[dim]
        same = classes.narrow(dim, 0, size - 1) == classes.narrow(dim, 1, size - 1)
        inner.narrow(dim, 0, size - 1).logical_and_(same)
        inner.narrow(dim, 1, size - 1).logical_and_(same)
    image, row, col = torch.nonzero(~inner & (classes < num_classes), as_tuple=True)
    return image, classes[image, row, col].long(), row, col


def _nearest_sq(queries, targets, shape: tuple[int, int]):
    """Squared Euclidean distance from every query pixel to the nearest target pixel of its group.

    queries, targets: (group, row, col) int64 tensors; every query's group has a target. Near queries: targets
    are sorted by (group, column, row), so for a query (g, i, j) the nearest targets of column k above and
    below row i are the neighbours of key (g, k, i) in that order (one searchsorted); columns k within
    w of j are searched (w = each of NEAR_WINDOWS in turn, for the queries not done yet), which is exact when the
    best squared distance is <= (w + 1)² (every other column is further away). Far queries (the rest: a boundary
    far from the other map's boundary of its class) are compared with every target of their group.
    """
    import torch

    height, width = shape
    group, row, col = queries
    t_key, order = torch.sort((targets[0] * width + targets[2]) * height + targets[1])
    best = torch.full_like(row, torch.iinfo(torch.int64).max)
    todo, searched = torch.arange(len(row), device=row.device), -1
    for window in NEAR_WINDOWS:  # rings of columns: most boundary pixels are a pixel or two from the other's
        near = min(window, width - 1)
        offsets = torch.arange(searched + 1, near + 1, device=row.device)
        offsets = torch.cat([offsets, -offsets[offsets > 0]])
        chunk = max(1, PAIR_CHUNK // len(offsets))
        for start in range(0, len(todo), chunk):
            q = todo[start:start + chunk]
            k = col[q, None] + offsets  # (q, offsets) columns
            inside = (k >= 0) & (k < width)
            column = (group[q, None] * width + k.clamp(0, width - 1)) * height  # key of (g, k, row 0)
            pos = torch.searchsorted(t_key, column + row[q, None])
            sq = torch.full(k.shape, torch.iinfo(torch.int64).max, dtype=torch.int64, device=row.device)
            for p in (pos - 1, pos):  # the nearest target above / at or below row i in column k
                key = t_key[p.clamp(0, len(t_key) - 1)]
                hit = inside & (p >= 0) & (p < len(t_key)) & (key >= column) & (key < column + height)
                d = (key - column - row[q, None]) ** 2 + (k - col[q, None]) ** 2
                sq = torch.where(hit, torch.minimum(sq, d), sq)
            best[q] = torch.minimum(best[q], sq.min(1).values)
        searched = near
        todo = todo[best[todo] > (near + 1) ** 2]
        if len(todo) == 0 or near == width - 1:
            return best
    far = todo
    t_group = targets[0][order]
    t_row, t_col = targets[1][order].int(), targets[2][order].int()  # int32: sums of squares of 2^12 fit
    far = far[torch.argsort(group[far])]
    groups, counts = torch.unique_consecutive(group[far], return_counts=True)
    bounds = torch.searchsorted(t_group, torch.stack([groups, groups + 1])).tolist()
    first = 0
    for lo, hi, count in zip(*bounds, counts.tolist()):
        q_all = far[first:first + count]
        first += count
        chunk = max(1, PAIR_CHUNK // max(1, hi - lo))
        for start in range(0, count, chunk):
            q = q_all[start:start + chunk]
            d_row = row[q, None].int() - t_row[None, lo:hi]  # (q, T): to each of the group's targets
            d_col = col[q, None].int() - t_col[None, lo:hi]
            best[q] = d_row.mul_(d_row).add_(d_col.mul_(d_col)).min(1).values.long()
    return best


def _percentile_per_group(sq, group, num_groups: int):
    """(M,) squared distances and their group -> (num_groups,) float64 PERCENTILE-th percentile of the
    distances of each group (linear interpolation, as `_percentile`); NaN for a group without distances."""
    import torch

    order = torch.argsort(group * (int(sq.max()) + 1 if len(sq) else 1) + sq)
    distance = sq[order].double().sqrt()
    counts = torch.bincount(group, minlength=num_groups)
    first = torch.cumsum(counts, 0) - counts
    rank = (counts - 1).clamp(min=0).double() * (PERCENTILE / 100)
    low = rank.floor().long()
    high = torch.minimum(low + 1, (counts - 1).clamp(min=0))
    last = max(len(distance) - 1, 0)
    at_low = distance[(first + low).clamp(max=last)] if len(distance) else torch.zeros_like(rank)
    at_high = distance[(first + high).clamp(max=last)] if len(distance) else torch.zeros_like(rank)
    value = at_low + (rank - low) * (at_high - at_low)
    return torch.where(counts > 0, value, torch.full_like(value, math.nan))


def hd95_image_stats(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX, boundary_px: int = 3) -> dict:
    """`hd95` of every image of a batch, on the inputs' device (the HD95 record's producer).

    Args:
        pred, target: (N, H, W) integer label maps (as `hd95` takes them); boundary_px: unused (the producers'
            common signature).

    Returns:
        {"hd95": (N, C) float64, NaN where excluded; "hd95_excluded": (N,) int64, the classes of each image
        present in exactly one of prediction and ground truth}.
    """
    import torch

    n_img, height, width = target.shape
    C = num_classes
    valid = (target >= 0) & (target < C) & (target != ignore_index)
    target_cls = torch.where(valid, target.long(), C)
    pred_cls = torch.where(valid & (pred >= 0) & (pred < C), pred.long(), C)
    groups = n_img * C
    edges = {}
    for name, classes in (("pred", pred_cls), ("target", target_cls)):
        image, cls, row, col = _boundary_pixels(classes, C)
        edges[name] = (image * C + cls, row, col)
    present = {name: torch.bincount(e[0], minlength=groups) > 0 for name, e in edges.items()}
    both = present["pred"] & present["target"]
    directed = []
    for source, goal in (("pred", "target"), ("target", "pred")):
        group, row, col = edges[source]
        keep = both[group]
        queries = (group[keep], row[keep], col[keep])
        sq = _nearest_sq(queries, edges[goal], (height, width))
        directed.append(_percentile_per_group(sq, queries[0], groups))
    value = torch.where(both, torch.maximum(*directed), torch.full_like(directed[0], math.nan))
    excluded = (present["pred"] ^ present["target"]).view(n_img, C).sum(1)
    return {"hd95": value.view(n_img, C), "hd95_excluded": excluded.long()}


# ------------------------------------------------------------------------------------------ reductions (numpy)
def hd95_dataset(arrays) -> float:
    """The dataset's HD95: the mean over the (image, class) pairs that are not excluded (NaN if none)."""
    return nanmean(arrays["hd95"])


def hd95_per_class(arrays) -> np.ndarray:
    """(C,) per class the mean over the images where it is not excluded; NaN where it is excluded in all."""
    values = arrays["hd95"]
    counted = (~np.isnan(values)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, np.nansum(values, 0) / counted, math.nan)


def hd95_terms(values: np.ndarray) -> np.ndarray:
    """(n, C) per-image HD95 -> (n, 2) terms that add up over images: the sum of the values not excluded, and
    their number."""
    kept = ~np.isnan(values)
    return np.stack([np.where(kept, values, 0.0).sum(1), kept.sum(1)], axis=1)


def hd95_of_sums(sums: np.ndarray) -> np.ndarray:
    """(..., 2) summed `hd95_terms` -> (...) the mean over the pairs not excluded (NaN if none)."""
    return np.divide(sums[..., 0], sums[..., 1], out=np.full(sums.shape[:-1], np.nan), where=sums[..., 1] > 0)
