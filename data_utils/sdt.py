"""Signed distance maps (SDT) for the Kervadec boundary loss: exact, clipped, int8 (the maths; their cache
files are `data_utils.sdt_cache`).

Definition (stated once, here; every path below reproduces it bit for bit). For a train-id label map L (H, W)
(0..C-1, 255 = ignore) and each class c, with M = (L == c):

    phi_c = 0                                   if M is empty or M covers every pixel
    phi_c = edt(~M) - edt(M)                    otherwise
    phi_c = clip(rint(phi_c), -clip, clip) as int8, then phi_c = 0 at ignore pixels

where edt(X) is `scipy.ndimage.distance_transform_edt(X)`: for each pixel of X the Euclidean distance to the
nearest pixel not in X (0 outside X). Ignore pixels are in ~M for every class. phi < 0 inside the class,
> 0 outside, +-1 next to the contour. The loss uses phi / clip.

Why the fast paths can be exact:
- Each pixel is in M or in ~M, so phi is +-sqrt(n) for an integer squared distance n. sqrt(n) is never
  k + 1/2 ((k + 1/2)^2 = k^2 + k + 1/4 is not an integer), so rounding never meets a tie: np.rint (half to
  even) and floor(x + 1/2) agree, and rint(sqrt(n)) = k  <=>  k^2 - k < n <= k^2 + k.
- After clipping only n <= clip^2 + clip matters (larger n gives clip). Such n has |dy|, |dx| <= clip, so
  features farther than `clip` along either axis never change the result: crops dilated by `clip` (CPU)
  and windows of +-clip (torch) are exact.

CPU (`compute_sdt`, numpy + the `edt` package, one thread): per present class, the class pixels are
  grouped into clusters more than 2 * clip apart (XY-cut), and each cluster's bounding box, dilated by
  `clip`, gets one multi-label EDT with two labels (class / not class). That single pass yields edt(M)^2
  inside and edt(~M)^2 outside; beyond the boxes every distance exceeds `clip`. `edt` returns float32
  squared distances; they are sums of squared integers below 2^24, hence exact.

Torch (`compute_sdt_torch`, any device, exact integer arithmetic):
  1. column pass: vertical distance to the nearest feature pixel within +-clip, by a log-step min-plus
     scan (offsets 1, 2, 4, ..., 64 forwards and backwards) on uint8, capped at clip + 1;
  2. row pass: D(y, x) = min_{|dx| <= clip} dx^2 + g(y, x + dx)^2 in int16/int32.
  Inside distances use one label-aware channel: in column x' the nearest pixel whose label differs from
  L(y, x) is at vertical distance 0 if L(y, x') != L(y, x), else at the length r(y, x') to the end of
  the run of equal labels (the "run distance"). On CUDA with Triton both passes run as fused kernels.
"""
from __future__ import annotations

import warnings

import edt
import numpy as np
import torch

from utils import UserError
from utils.conventions import IGNORE_INDEX, SDT_CLIP

INT8_MAX = int(np.iinfo(np.int8).max)  # the largest clip int8 storage holds

# --------------------------------------------------------------------------------------------------------
# Shared checks and rounding


def check_clip(clip: int) -> int:
    if isinstance(clip, bool) or not isinstance(clip, (int, np.integer)) or not 1 <= clip <= INT8_MAX:
        raise ValueError(f"clip must be an integer in 1..{INT8_MAX} (int8 storage), got {clip!r}")
    return int(clip)


def _check_num_classes(num_classes: int) -> int:
    integer = isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool)
    if not integer or not 1 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"num_classes must be an integer in 1..{IGNORE_INDEX} ({IGNORE_INDEX} is the ignore index), "
                         f"got {num_classes!r}")
    return int(num_classes)


def _bad_values_message(bad: list[int], num_classes: int) -> str:
    return (f"label map holds values {bad} that are neither train ids 0..{num_classes - 1} nor ignore "
            f"({IGNORE_INDEX}); map *_gtFine_labelIds.png with data_utils.labels.CITYSCAPES.to_train_ids first")


def _round_clip_sq(sq: np.ndarray, clip: int) -> np.ndarray:
    """float32 squared distances (exact integers or inf) -> min(rint(sqrt), clip) as int8. Overwrites `sq`.

    Capping at clip^2 + clip first keeps the root below clip + 1/2. float32 sqrt is correctly rounded and
    sqrt(n) stays >= 1/(8 clip + 4) away from any k + 1/2, so rint of the float32 root is exact.
    """
    np.minimum(sq, np.float32(clip * clip + clip), out=sq)
    np.sqrt(sq, out=sq)
    np.rint(sq, out=sq)
    return sq.astype(np.int8)


# --------------------------------------------------------------------------------------------------------
# The reference: the definition read literally, with scipy


def compute_sdt_reference(label: np.ndarray, num_classes: int, clip: int = SDT_CLIP) -> np.ndarray:
    """The module docstring's definition written out: two full-image scipy EDTs per present class.

    The slow reference (seconds per 1024x2048 label) that `compute_sdt` and `compute_sdt_torch` must equal
    bit for bit; it shares no code with them. Arguments and result as `compute_sdt`'s, without its input
    checks. Not for training: use `compute_sdt`.
    """
    from scipy.ndimage import distance_transform_edt  # here only: the fast paths do not need scipy

    sdt = np.zeros((num_classes, *label.shape), dtype=np.int8)
    for c in range(num_classes):
        inside = label == c
        if not inside.any() or inside.all():
            continue
        phi = distance_transform_edt(~inside) - distance_transform_edt(inside)
        sdt[c] = np.clip(np.rint(phi), -clip, clip).astype(np.int8)
    sdt[:, label == IGNORE_INDEX] = 0
    return sdt


# --------------------------------------------------------------------------------------------------------
# CPU: numpy + edt


def as_label_map(label, num_classes: int) -> np.ndarray:
    """Validate a (H, W) train-id map and return it as a C-contiguous uint8 array."""
    label = np.asarray(label)
    if label.ndim != 2 or label.size == 0:
        raise ValueError(f"label must be a non-empty (H, W) train-id map, got shape {label.shape}")
    if label.dtype == np.bool_ or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must hold integer train ids, got dtype {label.dtype}")
    if label.dtype != np.uint8:
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi > 255:
            raise UserError(_bad_values_message(sorted({lo, hi} - set(range(256))), num_classes))
        label = label.astype(np.uint8)
    return np.ascontiguousarray(label)


def _class_bounding_boxes(label: np.ndarray, num_classes: int) -> list[tuple[int, int, int, int, int]]:
    """(c, y0, y1, x0, x1) bounding box of every class that is present but does not cover the whole image.
    Raises UserError for values outside 0..C-1 and 255.

    One pass over the image: each value becomes one bit of a uint64 (classes 0..61, bit 62 = invalid value,
    bit 63 = ignore), OR-reduced per row and per column.
    """
    if num_classes > 62:  # not Cityscapes: one mask per class
        counts = np.bincount(label.ravel(), minlength=256)
        bad = [int(v) for v in np.flatnonzero(counts) if num_classes <= v != IGNORE_INDEX]
        if bad:
            raise UserError(_bad_values_message(bad[:5], num_classes))
        boxes = []
        for c in (c for c in range(num_classes) if 0 < counts[c] < label.size):
            ys, xs = np.flatnonzero((label == c).any(axis=1)), np.flatnonzero((label == c).any(axis=0))
            boxes.append((c, int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1))
        return boxes
    one = np.uint64(1)
    bit_of = np.full(256, one << np.uint64(62), dtype=np.uint64)  # invalid unless set below
    bit_of[:num_classes] = one << np.arange(num_classes, dtype=np.uint64)
    bit_of[IGNORE_INDEX] = one << np.uint64(63)
    bits = bit_of.take(label)  # (H, W) uint64
    rows, cols = np.bitwise_or.reduce(bits, axis=1), np.bitwise_or.reduce(bits, axis=0)  # (H,), (W,)
    seen = int(np.bitwise_or.reduce(rows))
    if (seen >> 62) & 1:
        bad = [int(v) for v in np.unique(label) if v >= num_classes and v != IGNORE_INDEX]
        raise UserError(_bad_values_message(bad[:5], num_classes))
    if (seen & (seen - 1)) == 0:  # a single value fills the image: every map is zero
        return []
    boxes = []
    for c in (c for c in range(num_classes) if (seen >> c) & 1):
        bit = one << np.uint64(c)
        ys, xs = np.flatnonzero(rows & bit), np.flatnonzero(cols & bit)
        boxes.append((c, int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1))
    return boxes


def _occupied_runs(occupied: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[start, stop) runs of True indices, split wherever consecutive True indices are more than `gap` apart."""
    idx = np.flatnonzero(occupied)
    cuts = np.flatnonzero(np.diff(idx) > gap)
    return list(zip(np.r_[idx[0], idx[cuts + 1]].tolist(), (np.r_[idx[cuts], idx[-1]] + 1).tolist()))


def _clusters(mask: np.ndarray, gap: int) -> list[tuple[int, int, int, int]]:
    """Split the True pixels of `mask` into groups whose bounding boxes (y0, y1, x0, x1) are more than `gap`
    apart along rows or along columns: recursive XY-cut on row and column projections.

    With gap = 2 * clip the boxes dilated by `clip` are disjoint, so no pixel is within `clip` of two groups:
    each group can be transformed on its own dilated box, which covers less area than the class's box when
    a class sits in separate places (poles, signs and cars on both sides of the street).
    """
    boxes, todo = [], [(0, mask.shape[0], 0, mask.shape[1], 0, False)]
    while todo:  # (box, axis to split next, was the last split along the other axis trivial?)
        y0, y1, x0, x1, axis, other_axis_tight = todo.pop()
        runs = _occupied_runs(mask[y0:y1, x0:x1].any(axis=1 - axis), gap)
        for a, b in runs:
            box = (y0 + a, y0 + b, x0, x1) if axis == 0 else (y0, y1, x0 + a, x0 + b)
            if len(runs) == 1 and other_axis_tight:
                boxes.append(box)  # tight along both axes and not splittable: a final group
            else:
                todo.append((*box, 1 - axis, len(runs) == 1))
    return boxes


def _rounded_distance(two_labels: np.ndarray, clip: int) -> np.ndarray:
    """(h, w) uint8 map of labels 1/2 -> (h, w) int8 min(rint(distance to the nearest pixel of the other
    label), clip), via one multi-label `edt.edtsq` on one thread.

    `edt` walks down every column with a stride of one row; when a row holds a multiple of 512 values the
    walk keeps hitting the same cache sets and runs ~1.5x slower (full-width 2048 crops). Such maps get 8
    extra columns mirroring the last 8: reflecting a pixel across the border line x = w - 1/2 never
    brings it closer to a pixel inside, so every distance inside is unchanged.
    """
    width = two_labels.shape[1]
    if width % 512 == 0:
        two_labels = np.concatenate([two_labels, two_labels[:, : width - 9 : -1]], axis=1)  # w-1..w-8
    sq = edt.edtsq(two_labels, black_border=False, parallel=1)
    return _round_clip_sq(sq, clip)[:, :width]


def compute_sdt(label, num_classes: int, clip: int = SDT_CLIP) -> np.ndarray:
    """Signed distance maps of one train-id label map, exactly as defined in the module docstring.

    Args:
        label: (H, W) integer train ids, 0..num_classes-1, 255 = ignore.
        num_classes: number of classes C (19 for Cityscapes).
        clip: clip value (1..127); distances are rounded, then clipped to [-clip, clip].

    Returns:
        (C, H, W) int8: negative inside class c, positive outside, 0 at ignore pixels and for classes that
        are absent or cover the whole image.

    Runs on one thread (several images in parallel: use processes, as precompute_sdt.py does).

    Example:
        >>> label = np.ones((3, 6), np.uint8); label[:, :2] = 0
        >>> compute_sdt(label, num_classes=2)[0, 0]
        array([-2, -1,  1,  2,  3,  4], dtype=int8)
    """
    num_classes, clip = _check_num_classes(num_classes), check_clip(clip)
    label = as_label_map(label, num_classes)
    height, width = label.shape
    sdt = np.zeros((num_classes, height, width), dtype=np.int8)
    boxes = _class_bounding_boxes(label, num_classes)
    if not boxes:
        return sdt
    keep = label != IGNORE_INDEX  # (H, W) bool; phi is 0 at ignore pixels
    far = keep.view(np.uint8) * np.int8(clip)  # phi away from every crop: clip, or 0 at ignore

    for c, by0, by1, bx0, bx1 in boxes:
        sdt[c] = far
        for gy0, gy1, gx0, gx1 in _clusters(label[by0:by1, bx0:bx1] == c, gap=2 * clip):
            y0, y1 = max(by0 + gy0 - clip, 0), min(by0 + gy1 + clip, height)
            x0, x1 = max(bx0 + gx0 - clip, 0), min(bx0 + gx1 + clip, width)
            in_class = label[y0:y1, x0:x1] == c
            # Two labels, 2 = class and 1 = everything else (ignore included): one multi-label EDT gives
            # every pixel its squared distance to the nearest pixel of the other label, i.e. edt(M)^2
            # inside the class and edt(~M)^2 outside it.
            magnitude = _rounded_distance(in_class.view(np.uint8) + np.uint8(1), clip)
            sign = keep[y0:y1, x0:x1].view(np.int8) - 2 * in_class.view(np.int8)  # -1 in, +1 out, 0 ignore
            np.multiply(magnitude, sign, out=sdt[c, y0:y1, x0:x1])
    return sdt


# --------------------------------------------------------------------------------------------------------
# Torch: the same maps from exact integer arithmetic, on any device


def _check_label_batch(labels: torch.Tensor, num_classes: int, validate: bool = True) -> torch.Tensor:
    """Validate an (N, H, W) integer tensor of train ids (its values only when `validate`); return it as
    contiguous uint8 on its device."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 3 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty (N, H, W) tensor, got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must hold integer train ids, got dtype {labels.dtype}")
    bad = (labels < 0) | ((labels >= num_classes) & (labels != IGNORE_INDEX)) if validate else None
    if validate and bool(bad.any()):  # one host sync per batch
        raise UserError(_bad_values_message(torch.unique(labels[bad])[:5].tolist(), num_classes))
    return labels.to(torch.uint8).contiguous()


def _vertical_distance(features: torch.Tensor, clip: int) -> torch.Tensor:
    """(..., H, W) bool -> (..., H, W) uint8: distance along H to the nearest True in the same column,
    exact up to `clip`, and clip + 1 where there is none within `clip`.

    Log-step min-plus scan: after the steps 1, 2, 4, ..., 2^m (each forwards and backwards) every offset
    |o| <= 2^(m+1) - 1 has been reached at cost |o| (its binary expansion) and no path costs less than its
    offset, so the result is exact. Values stay <= clip + 1 + 64 < 256.
    """
    dist = torch.full(features.shape, clip + 1, dtype=torch.uint8, device=features.device)
    dist.masked_fill_(features, 0)
    height = dist.shape[-2]
    step = 1
    while step <= clip and step < height:
        shifted = dist[..., :-step, :] + step  # from the pixel `step` rows above
        torch.minimum(dist[..., step:, :], shifted, out=dist[..., step:, :])
        shifted = dist[..., step:, :] + step  # from the pixel `step` rows below
        torch.minimum(dist[..., :-step, :], shifted, out=dist[..., :-step, :])
        step *= 2
    return dist.clamp_(max=clip + 1)


def _row_min_plus(vertical: torch.Tensor, clip: int) -> torch.Tensor:
    """(h, w) uint8 vertical distances g -> (h, w) int16 D(y, x) = min_{|dx| <= clip} dx^2 + g(y, x + dx)^2.

    Exact squared Euclidean distance to the nearest feature wherever it is <= clip^2 + clip; >= that
    elsewhere. int16 is enough: g^2 + dx^2 <= 128^2 + 127^2 < 2^15.
    """
    g2 = vertical.to(torch.int16).square_()
    acc = g2.clone()
    scratch = torch.empty_like(g2)
    width = g2.shape[-1]
    for dx in range(1, min(clip, width - 1) + 1):
        n = width - dx
        torch.add(g2[:, :n], dx * dx, out=scratch[:, :n])  # feature dx columns to the left
        torch.minimum(acc[:, dx:], scratch[:, :n], out=acc[:, dx:])
        torch.add(g2[:, dx:], dx * dx, out=scratch[:, :n])  # feature dx columns to the right
        torch.minimum(acc[:, :n], scratch[:, :n], out=acc[:, :n])
    return acc


def _inside_sq_torch(label: torch.Tensor, clip: int) -> torch.Tensor:
    """(H, W) uint8 -> (H, W) int16: squared distance to the nearest pixel holding another value (= edt(M)^2
    inside each class), exact up to clip^2 + clip.

    In column x' the nearest pixel whose value differs from L(y, x) is at vertical distance 0 if
    L(y, x') != L(y, x), else at the run distance r(y, x') (1 + distance to the nearest end of the run of
    equal values), so D = min_{|dx| <= clip} dx^2 + [L(y, x + dx) == L(y, x)] * r(y, x + dx)^2.
    """
    differs = label[1:] != label[:-1]  # (H - 1, W): vertical neighbours hold other values
    run_end = torch.zeros(label.shape, dtype=torch.bool, device=label.device)
    run_end[1:] |= differs
    run_end[:-1] |= differs
    run = (_vertical_distance(run_end, clip).to(torch.int16) + 1).clamp_(max=clip + 1)
    r2 = run.square_()
    acc = r2.clone()
    zero = torch.zeros((), dtype=torch.int16, device=label.device)
    width = label.shape[-1]
    for dx in range(1, min(clip, width - 1) + 1):
        n = width - dx
        same = label[:, dx:] == label[:, :n]  # (H, n): pixel pairs dx apart hold the same value
        left = torch.where(same, r2[:, :n], zero).add_(dx * dx)  # seen from the right pixel of each pair
        torch.minimum(acc[:, dx:], left, out=acc[:, dx:])
        right = torch.where(same, r2[:, dx:], zero).add_(dx * dx)  # seen from the left pixel
        torch.minimum(acc[:, :n], right, out=acc[:, :n])
    return acc


def _round_sqrt_torch(sq: torch.Tensor, clip: int) -> torch.Tensor:
    """Integer squared distances -> min(rint(sqrt), clip) as int8 (floor(x + 1/2) = rint: no ties, see top)."""
    capped = sq.clamp(max=clip * clip + clip).to(torch.float32)
    return capped.sqrt_().add_(0.5).floor_().to(torch.int8)


def _class_boxes_torch(label: torch.Tensor, num_classes: int, clip: int) -> list[tuple[int, int, int, int, int]]:
    """(c, y0, y1, x0, x1) bounding boxes dilated by `clip` (cut to the image) of the classes that are present
    but do not fill the image, for one (H, W) uint8 map whose values are checked; one host sync."""
    height, width = label.shape
    index = label.long()
    rows = torch.zeros((height, 256), dtype=torch.bool, device=label.device).scatter_(1, index, True)
    cols = torch.zeros((width, 256), dtype=torch.bool, device=label.device).scatter_(1, index.t(), True)
    values = rows.any(0)  # (256,) the values that occur
    rows, cols = rows[:, :num_classes].to(torch.uint8), cols[:, :num_classes].to(torch.uint8)
    y0 = rows.argmax(0)  # first row holding the class
    y1 = height - rows.flip(0).argmax(0)  # one past the last
    x0, x1 = cols.argmax(0), width - cols.flip(0).argmax(0)
    table = torch.stack([values[:num_classes].long(), y0, y1, x0, x1], 1).tolist()
    if int(values.sum()) == 1:  # a single value fills the image: every map is zero
        return []
    return [(c, max(a - clip, 0), min(b + clip, height), max(l - clip, 0), min(r + clip, width))
            for c, (p, a, b, l, r) in enumerate(table) if p]


def _sdt_torch(labels: torch.Tensor, num_classes: int, clip: int) -> torch.Tensor:
    """Pure-torch path of `compute_sdt_torch`: per image one inside pass, per present class one crop."""
    batch, height, width = labels.shape
    sdt = torch.zeros((batch, num_classes, height, width), dtype=torch.int8, device=labels.device)
    for i in range(batch):
        label = labels[i]
        boxes = _class_boxes_torch(label, num_classes, clip)
        if not boxes:
            continue
        keep = label != IGNORE_INDEX
        inside = _round_sqrt_torch(_inside_sq_torch(label, clip), clip).neg_()
        far = keep.to(torch.int8) * clip
        for c, y0, y1, x0, x1 in boxes:
            crop = label[y0:y1, x0:x1]
            in_class = crop == c
            outside = _round_sqrt_torch(_row_min_plus(_vertical_distance(in_class, clip), clip), clip)
            phi = torch.where(in_class, inside[y0:y1, x0:x1], outside)
            phi.masked_fill_(~keep[y0:y1, x0:x1], 0)
            sdt[i, c] = far
            sdt[i, c, y0:y1, x0:x1] = phi
    return sdt


_triton_error: str | None = None  # set when the Triton path failed once; later calls use plain torch
_triton_checked: set[tuple[torch.device, int]] = set()  # (device, clip) where the kernels passed the self-check


def _use_triton(labels: torch.Tensor) -> bool:
    if not labels.is_cuda or _triton_error is not None:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _self_check_triton(sdt_triton, device: torch.device, clip: int) -> None:
    """Once per (device, clip): the kernels must reproduce the pure-torch maps on a small fixed batch
    (classes, ignore, an absent class, distances beyond 127 px, a single-value image), else RuntimeError."""
    label = torch.zeros((2, 40, 300), dtype=torch.uint8)
    label[0, :, 90:] = 1
    label[0, 10:18, 150:163] = 2
    label[0, 25:, 240:] = IGNORE_INDEX
    label[0, 3, 5] = 2
    label[1] = 3  # one class fills the image
    label = label.to(device)
    if not torch.equal(sdt_triton(label, 5, clip), _sdt_torch(label, 5, clip)):
        raise RuntimeError(f"the kernels disagree with the pure-torch maps on the self-check (clip={clip})")
    _triton_checked.add((device, clip))


def compute_sdt_torch(labels: torch.Tensor, num_classes: int, clip: int = SDT_CLIP, *,
                      validate: bool = True) -> torch.Tensor:
    """Signed distance maps of a batch of train-id maps on their device, bit-identical to `compute_sdt`.

    Args:
        labels: (N, H, W) integer tensor, 0..num_classes-1, 255 = ignore, on any device.
        num_classes: number of classes C.
        clip: clip value (1..127).
        validate: check that every value is a train id or 255 (UserError otherwise). The check costs one
            host sync per batch; train.py skips it for loader batches, whose labels were already mapped
            through the official table (values 0..18 and 255 only).

    Returns:
        (N, C, H, W) int8 tensor on the device of `labels`.

    On CUDA with Triton installed, fused kernels (`data_utils.sdt_triton`) compute the whole batch without
    host round trips; elsewhere a pure-torch version (per present class, on its dilated bounding box) runs.
    Both are exact integer computations; values outside 0..C-1 and 255 raise UserError. The kernels are
    checked once per (device, clip) against the pure-torch path on a small fixed batch; if they fail or
    disagree (say, a Triton that cannot compile them for this GPU), a RuntimeWarning says so once and the
    pure-torch path takes over: the maps are the same, only slower.

    Example:
        >>> labels = torch.zeros(2, 64, 96, dtype=torch.uint8); labels[:, 20:40, 30:50] = 1
        >>> compute_sdt_torch(labels, num_classes=2).shape
        torch.Size([2, 2, 64, 96])
    """
    num_classes, clip = _check_num_classes(num_classes), check_clip(clip)
    labels = _check_label_batch(labels, num_classes, validate)
    if _use_triton(labels):
        from data_utils.sdt_triton import sdt_triton

        try:
            if (labels.device, clip) not in _triton_checked:
                _self_check_triton(sdt_triton, labels.device, clip)
            return sdt_triton(labels, num_classes, clip)
        except Exception as e:  # e.g. a Triton/GPU combination that cannot compile the kernels
            global _triton_error
            _triton_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"compute_sdt_torch: the Triton kernels failed ({_triton_error}); using the pure-torch "
                          "path from now on (identical maps, slower)", RuntimeWarning, stacklevel=2)
    return _sdt_torch(labels, num_classes, clip)
