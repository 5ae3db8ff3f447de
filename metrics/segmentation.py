"""Semantic-segmentation metrics on any device: mIoU, per-class IoU, Boundary F1 and Trimap IoU in two profiles,
per-class Boundary IoU and fragments per image.

Count, then reduce. `segmentation_image_stats(pred, target)` turns a batch of label maps into small per-image
count tensors (a few KB per image, never the maps themselves), so a distributed evaluation gathers them with
`accelerator.gather_for_metrics`; the metrics are reductions of the per-image counts (`metrics.per_image`, which
also writes them to `<checkpoint>.per_image.npz`), which makes multi-GPU evaluation equal to single-GPU
evaluation bit for bit, and any subset of the images (a bootstrap resample) an evaluation of that subset.

Definitions (pred, target: (H, W) train ids; valid = target != ignore_index and 0 <= target < C; for a class c,
G = (target == c) ∧ valid and P = (pred == c) ∧ valid; r = boundary_px; dil = dilation by a (2r+1)x(2r+1) square,
outside the image counting as background; erode = erosion by a 3x3 square). docs/metrics.md sets the two
profiles side by side with their measured difference.

Both profiles:
- mIoU (dataset level): I_c = #(pred==c & target==c & valid), U_c = #((pred==c | target==c) & valid) over all
  images, IoU_c = I_c / U_c (NaN where U_c = 0), mIoU = mean of IoU_c over classes with U_c > 0.
- Boundary IoU (Cheng et al. 2021, per class, dataset level): G_d = G ∧ ¬erode_d(G), P_d = P ∧ ¬erode_d(P), where
  erode_d = d successive 3x3 erosions with outside the image counting as inside (the frame is no contour), d = r;
  I_c = Σ_images |G_d ∧ P_d|, U_c = Σ_images |G_d ∨ P_d|; per-class value I_c / U_c (NaN where U_c = 0),
  boundary_iou = mean over classes with U_c > 0.
- fragments_per_image: the number of 8-connected components of pred == c summed over c in 0..C-1 (the whole map,
  ignored pixels included), averaged over images (`metrics.consensus.count_fragments`).

Profile "default" (this project's estimators):
- Boundary F1 (per image, then mean over images): for every class c present in the image's valid target,
  B(M) = M ∧ ¬erode(M), pixels outside the image counting as inside M (the 1-px inner ring; the frame is not a
  contour). precision = |B(P) ∧ dil(B(G))| / |B(P)|, recall = |B(G) ∧ dil(B(P))| / |B(G)|, F = 2PR / (P + R);
  F = 1 when both boundaries are empty, 0 when exactly one is empty or P + R = 0. The image's score is the mean
  F over those classes; images without a valid pixel are skipped.
- Trimap IoU (dataset level): a valid pixel is a GT-contour pixel when one of its 4-neighbours inside the image
  holds a different valid label (transitions to/from ignore don't count); band = valid ∧ dil(contour); I_c, U_c
  as for mIoU but counted over band pixels only, pooled over images.

Profile "study" (the original study's corrected v0.2.0 estimators, which its published numbers use):
- Boundary F1 (per image, then mean over ALL images): for every class c with a valid GT pixel,
  B(M) = dilate(M) XOR erode(M) with a 3x3 square, outside the image counting as background for both (the 2-px
  band across the contour; the frame is a contour where M touches it). F = 1 if B(G) and B(P) are both empty,
  else precision = |B(P) ∧ dil(B(G))| / (|B(P)| + 1e-6), recall = |B(G) ∧ dil(B(P))| / (|B(G)| + 1e-6),
  F = 2·precision·recall / (precision + recall + 1e-6). The image's score is the mean F over those classes, 0
  when it has none.
- Trimap IoU (per image, then mean over ALL images): the default's band (both sides of a valid-valid transition
  are contour pixels); the image's score is 0 if its band is empty, else the mean over the classes with a
  non-empty union in the band of |pred = c ∧ target = c ∧ band| / |(pred = c ∨ target = c) ∧ band|.

How it stays fast without a per-class loop: every pixel stores its class as one bit of an integer (class c ->
bit c, 30 classes fit an int32, 62 an int64; more classes, up to MAX_CLASSES = 255, take several int64 planes of
62, each handled as below; a pixel's states come from the plane of its class; on the CPU, above 30 classes only
those that occur in a tile of rows take bits, renumbered, so at C = 150 a tile of a real image is one int32
plane), so the 3x3 erosion of all the class masks is one bitwise-AND window reduction and the tolerance dilation
of all the boundary maps is one bitwise-OR window reduction (separable, implemented as shifted slices). In the
default B and in Boundary IoU's inner bands a pixel carries at most its own class's bit, so "is this pixel a
matched boundary pixel of its class" is a single bit test and all those counts come from one `torch.bincount` of
a per-pixel code. The study's B crosses the contour, so a pixel there carries the bits of every class around it;
its per-class counts come from a histogram of the bytes of the (few) nonzero pixels, decoded through a 256 x 8
table of bits.

Example:
    >>> import torch
    >>> from metrics import SegmentationMetrics
    >>> metric = SegmentationMetrics(num_classes=19, profile="study")
    >>> target = torch.zeros(1, 64, 64, dtype=torch.long); target[:, :, 32:] = 13
    >>> metric.update(target.clone(), target)
    >>> result = metric.compute()
    >>> result["miou"], result["boundary_f1"], result["boundary_iou"], result["fragments_per_image"]
    (1.0, 0.9999..., 1.0, 2.0)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from metrics.consensus import count_fragments
from metrics.keys import PROFILES
from metrics.per_image import dataset_metrics
from metrics.registry import METRICS, producers, stat_specs
from utils.console import plural
from utils.conventions import IGNORE_INDEX

# Keys of the per-image stats (all with leading dim N, integer counts):
#   confusion         (N, C, C+1): rows = target class over valid pixels, columns = predicted class; the last
#                                  column counts predictions outside 0..C-1 (they match no class).
#   trimap_confusion  (N, C, C+1): the same, counted only over the trimap band.
#   boundary          (N, C, 4):   default profile, per class |B(P) & dil(B(G))|, |B(P)|, |B(G) & dil(B(P))|, |B(G)|.
#   study_boundary    (N, C, 4):   the same with the study profile's B.
#   boundary_iou      (N, C, 2):   per class |G_d & P_d|, |G_d | P_d|.
#   fragments         (N,):        components of the prediction (on the host: `fragment_counts`).
# (`segmentation_image_stats`' keys; every record's statistics: `metrics.registry.stat_specs()`)
DEVICE_STAT_KEYS = ("confusion", "trimap_confusion", "boundary", "study_boundary", "boundary_iou")


def _erode_bits(x: torch.Tensor) -> torch.Tensor:
    """3x3 erosion of every bit plane of an integer map (..., H, W) at once: AND over the window.

    Neighbours outside the image are skipped, i.e. they count as inside every mask (the frame is no contour).
    """
    for dim in (-1, -2):
        size = x.shape[dim]
        out = x.clone()
        if size > 1:
            out.narrow(dim, 1, size - 1).bitwise_and_(x.narrow(dim, 0, size - 1))  # neighbour before
            out.narrow(dim, 0, size - 1).bitwise_and_(x.narrow(dim, 1, size - 1))  # neighbour after
        x = out
    return x


def _dilate_bits(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Square dilation (Chebyshev distance <= radius) of every bit plane of an integer map (..., H, W).

    Per axis, OR over the forward window [i, i + radius] is built by doubling (window 1 -> 2 -> 4 ...), then
    out[i] = fwd[i - radius] | fwd[i]: ~log2(radius) + 1 passes instead of 2 * radius. Outside the image
    is background (skipped).
    """
    for dim in (-1, -2):
        size = x.shape[dim]
        if radius == 0 or size == 1:
            continue
        fwd, width = x, 1  # fwd[i] = OR of x[i .. i + width - 1] (clipped at the end)
        while width < radius + 1:
            step = min(width, radius + 1 - width, size - 1)
            if step <= 0:
                break
            grown = fwd.clone()
            grown.narrow(dim, 0, size - step).bitwise_or_(fwd.narrow(dim, step, size - step))
            fwd, width = grown, width + step
        out = fwd.clone()
        shift = min(radius, size - 1)
        out.narrow(dim, shift, size - shift).bitwise_or_(fwd.narrow(dim, 0, size - shift))
        out.narrow(dim, 1, shift - 1).bitwise_or_(fwd.narrow(dim, 0, 1))  # rows 1..r-1: clipped window start
        x = out
    return x


def _class_index(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer labels -> `dtype` class index in 0..C, where C stands for every value outside 0..C-1."""
    if labels.dtype == torch.uint8:
        return labels.to(dtype).clamp_(max=num_classes)
    index = labels.clamp(-1, num_classes).to(dtype)  # clamp first, so huge values cannot wrap around
    return index.remainder_(num_classes + 1)  # -1 -> C (the remainder takes the divisor's sign)


# Pixels per tile on the CPU: row bands of ~128K pixels keep every temporary in cache (and out of the
# allocator's page-faulting large-block path), which is 2-3x faster than whole 1024x2048 maps. On a GPU the
# whole batch is one tile.
CPU_TILE_PIXELS = 2**17


def _bit_counts(planes: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(M, L) integer bit-field maps -> (M, num_bits) int64: per row, how many pixels have bit b set.

    A histogram of the bytes of the pixels (8 * bytes + the row, one bincount), decoded through a 256 x 8 table
    of bits. On the CPU only the nonzero pixels are histogrammed (boundary maps are sparse); on a GPU the
    compaction would cost a host sync, so every pixel goes in.
    """
    rows, device = planes.shape[0], planes.device
    num_bytes = (num_bits + 7) // 8
    if device.type == "cpu":
        nonzero = planes != 0
        row = torch.repeat_interleave(torch.arange(rows, device=device), nonzero.sum(1))
        values = planes[nonzero].long()
    else:
        row = torch.arange(rows, device=device).repeat_interleave(planes.shape[1])
        values = planes.flatten().long()
    byte_index = torch.arange(num_bytes, device=device)
    byte_values = (values[:, None] >> (8 * byte_index)) & 255  # (pixels, bytes)
    cell = (row[:, None] * num_bytes + byte_index) * 256 + byte_values
    hist = torch.bincount(cell.flatten(), minlength=rows * num_bytes * 256).view(rows, num_bytes, 256, 1)
    bit_table = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1  # (256, 8)
    return (hist * bit_table).sum(2).flatten(1)[:, :num_bits]


def _study_boundary_counts(bits: torch.Tensor, eroded: torch.Tensor, boundary_px: int, rows: tuple[int, int],
                           frame: tuple[bool, bool], num_classes: int) -> torch.Tensor:
    """The study profile's per-class boundary counts over the counted rows.

    Args:
        bits: (2, N, h, W) class bit planes of P and G; eroded: their 3x3 erosion with outside = inside.
        frame: whether the first / last row of the band is the image's top / bottom row.

    Returns:
        (N, C, 4) int64: |B(P) & dil(B(G))|, |B(P)|, |B(G) & dil(B(P))|, |B(G)| with B = dilate XOR erode.
    """
    eroded = eroded.clone()  # outside = background: every pixel on the frame erodes away
    eroded[..., 0] = 0
    eroded[..., -1] = 0
    if frame[0]:
        eroded[..., 0, :] = 0
    if frame[1]:
        eroded[..., -1, :] = 0
    boundary = _dilate_bits(bits, 1).bitwise_and_(eroded.bitwise_not_())  # dilate XOR erode (erode ⊆ dilate)
    matched = boundary & _dilate_bits(boundary, boundary_px).flip(0)  # B(P) & dil(B(G)), B(G) & dil(B(P))
    planes = torch.stack([matched[0], boundary[0], matched[1], boundary[1]])[:, :, rows[0]:rows[1]]
    n_img = bits.shape[1]
    counts = _bit_counts(planes.reshape(4 * n_img, -1), num_classes)  # (4 * N, C)
    return counts.view(4, n_img, num_classes).permute(1, 2, 0)


# Classes per integer bit plane: bits 0..61 of an int64 hold classes, bit 62 the trimap contour riding along,
# and the sign bit stays 0, so `x.clamp(max=1)` is "x != 0". More classes take several planes.
CLASSES_PER_PLANE = 62
MAX_CLASSES = IGNORE_INDEX  # label maps are uint8 with 255 = ignore, and predictions reach the host as uint8


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}: 1..{MAX_CLASSES} supported (train ids 0..{MAX_CLASSES - 1} "
                         f"and ignore {MAX_CLASSES} in uint8 label maps)")


def _plane_states(target_bit: torch.Tensor, pred_bit: torch.Tensor, width: int, contour: torch.Tensor | None,
                  boundary_px: int, rows: tuple[int, int], frame: tuple[bool, bool],
                  parts: frozenset[str]) -> tuple[torch.Tensor | int, torch.Tensor | None, torch.Tensor | None]:
    """The morphology of `_state_cells` on one bit plane of at most CLASSES_PER_PLANE classes.

    Args:
        target_bit, pred_bit: (N, h, W) the bit of each pixel's target / predicted class in the plane, 0..width-1,
            or `width` where that class is in another plane or there is none (pred_bit is `width` wherever the
            target is not valid, so the predicted masks are P = (pred == c) & valid).
        contour: (N, h, W) 0/1 trimap contour, dilated along with the plane's boundaries (as bit `width` of the
            GT map) into the trimap band; or None.

    Returns:
        state: (N, h, W) pred-boundary state * 12 + GT-boundary state * 4 + P_d * 2 + G_d of the plane's classes
            (`_state_cells` defines them): nonzero only where the predicted or target class is in the plane;
            0 for the states of parts left out.
        band: (N, h, W) 0/1 trimap band, or None without a contour.
        study: (N, width, 4) `_study_boundary_counts` of the plane's classes, or None without the "study" part.
    """
    # Class masks as bit planes: bit b of a pixel is set when the pixel belongs to the plane's class b.
    class_bits = (1 << width) - 1
    gt_bits = (1 << target_bit) & class_bits  # G for every class of the plane
    pred_bits = (1 << pred_bit) & class_bits  # P for every class of the plane
    bits = torch.stack([pred_bits, gt_bits])  # (2, N, h, W)
    eroded = _erode_bits(bits) if parts & {"default", "boundary_iou", "study"} else None
    study = _study_boundary_counts(bits, eroded, boundary_px, rows, frame, width) if "study" in parts else None
    state, band = 0, None
    if not parts & {"default", "boundary_iou"}:  # the band alone
        if contour is not None:
            band = _dilate_bits(contour, boundary_px)
        return state, band, study

    # One tolerance dilation serves B(P), B(G) and the trimap contour (riding along as bit `width` of the GT
    # map). Boundary IoU's inner band M ∧ ¬erode_d(M) (d = r) is M ∧ dil_{r-1}(B(M)): a pixel of M within d of
    # a non-M pixel is within d - 1 of the last pixel of M on the way there, a pixel of B(M) (the default's B).
    # So the dilation runs as r - 1, then 1 more.
    boundary = bits & ~eroded
    marked = boundary.clone()
    if contour is not None:
        marked[1] |= contour << width
    if "boundary_iou" in parts and boundary_px > 0:
        near = _dilate_bits(marked, boundary_px - 1)
        inner = (near & bits).clamp_(max=1)  # (2, N, h, W) 0/1: P_d, G_d
        state = inner[0] * 2 + inner[1]
        dilated = _dilate_bits(near, 1)
    else:
        dilated = _dilate_bits(marked, boundary_px)
    if contour is not None:
        band = dilated[1] >> width  # 0/1: within r of a contour pixel (bit `width` is the highest one set)
    if "default" in parts:
        # A pixel carries at most one bit of B(P) (its predicted class) and one of B(G) (its target
        # class), so "matched boundary pixel of its class" is a single nonzero test.
        pred_boundary, gt_boundary = boundary[0], boundary[1]  # (N, h, W) each
        pred_state = pred_boundary.clamp(max=1) + (pred_boundary & dilated[1]).clamp_(max=1)  # 0/1/2
        gt_state = gt_boundary.clamp(max=1) + (gt_boundary & dilated[0]).clamp_(max=1)  # 0/1/2
        state = state + pred_state * 12 + gt_state * 4
    return state, band, study


NUM_STATES = 2 * 3 * 3 * 2 * 2  # per pixel: trimap band, pred-boundary state, GT-boundary state, P_d, G_d


def _state_cells(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int,
                 boundary_px: int, rows: tuple[int, int], frame: tuple[bool, bool],
                 parts: frozenset[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each counted pixel's cell in the joint histogram of (trimap band, pred-boundary state, GT-boundary state,
    P_d, G_d, target class, pred class), and the study profile's boundary counts.

    Args:
        pred, target: (N, h, W) integer maps (a full image or a band of rows with `boundary_px + 1` rows of
            context above and below, so every counted pixel sees its whole neighbourhood).
        rows: (first, last + 1) of the rows that are counted.
        frame: whether the band's first / last row is the image's top / bottom row.
        parts: the PARTS to compute; a state of a part left out is 0.

    Returns:
        (N * counted rows * W,) integer cells of the flattened (N, 2, 3, 3, 2, 2, K, K) histogram, K = C + 1,
        index C = no class. Boundary state (default profile's B): 0 = not a boundary pixel, 1 = boundary pixel
        outside the other map's tolerance, 2 = matched (inside it). P_d, G_d: 0/1, the pixel is in its class's
        Boundary-IoU inner band.
        (N, C, 4) int64 `_study_boundary_counts`, or None without the "study" part.
    """
    C, K = num_classes, num_classes + 1
    n_img = pred.shape[0]
    # Everything below is elementwise integer arithmetic in one dtype per stage (torch.where, gathers and
    # mixed-dtype ops are several times slower per pixel on CPU) plus one bincount. The cells fit an int32 up
    # to ~1800 images at C = 150; the class bits below pick their own dtype.
    dtype = torch.int32 if n_img * NUM_STATES * K * K < 2**31 else torch.int64

    # Class index per pixel, C = "no class" (ignored target pixels, predictions outside 0..C-1).
    target_cls = _class_index(target, C, dtype)  # (N, h, W) in 0..C
    if 0 <= ignore_index < C:  # an ignore label inside the class range (not Cityscapes' 255)
        target_cls.masked_fill_(target == ignore_index, C)
    valid = target_cls != C  # (N, h, W)
    pred_cls = _class_index(pred, C, dtype).masked_fill_(~valid, C)  # (N, h, W) in 0..C; C where not valid

    # Trimap contour: a valid pixel with a 4-neighbour of another valid class.
    contour = torch.zeros_like(valid)
    for dim in (-1, -2):
        size = valid.shape[dim]
        if size > 1:
            transition = ((target_cls.narrow(dim, 0, size - 1) != target_cls.narrow(dim, 1, size - 1))
                          & valid.narrow(dim, 0, size - 1) & valid.narrow(dim, 1, size - 1))
            contour.narrow(dim, 0, size - 1).logical_or_(transition)
            contour.narrow(dim, 1, size - 1).logical_or_(transition)

    # The bits: on the CPU only the k classes that occur in the tile, renumbered 0..k-1 (k = none); up to 30
    # of them (and the contour bit) fit an int32, up to 62 one int64 plane. Every class's masks and morphology
    # are its own, so which bit carries it changes no count.
    classes, target_idx, pred_idx = _tile_classes(target_cls, pred_cls, C)
    k = C if classes is None else len(classes)
    bits_dtype = torch.int32 if k <= 30 else torch.int64
    target_idx, pred_idx, contour = (x.to(bits_dtype) for x in (target_idx, pred_idx, contour))

    # The k classes in bit planes of CLASSES_PER_PLANE (one plane up to 62 classes); a pixel's boundary states
    # come from the plane of its class, the band from the first plane, which carries the contour.
    study = []
    for first in range(0, k, CLASSES_PER_PLANE):
        width = min(CLASSES_PER_PLANE, k - first)
        target_bit, pred_bit = ((target_idx, pred_idx) if width == k else  # index i -> bit i - first
                                (_class_index(idx - first, width, bits_dtype) for idx in (target_idx, pred_idx)))
        plane_state, plane_band, plane_study = _plane_states(target_bit, pred_bit, width,
                                                             contour if first == 0 else None, boundary_px, rows,
                                                             frame, parts)
        if first == 0:
            state, band = plane_state, plane_band
        else:
            state = state + plane_state
        study.append(plane_study)
    state = (band * 36 + state).to(dtype)  # 0..71: band, pred state, GT state, P_d, G_d
    cell = (state * K + target_cls) * K + pred_cls  # (N, h, W) in 0 .. 72*K*K - 1
    cell = cell[:, rows[0]:rows[1]] + torch.arange(n_img, device=cell.device, dtype=dtype).view(n_img, 1, 1) * (
        NUM_STATES * K * K)
    if "study" not in parts:
        return cell.flatten(), None
    study = torch.cat(study, 1)  # (N, k, 4)
    if classes is not None:  # back to the class numbers
        study = study.new_zeros(n_img, C, 4).index_copy_(1, classes, study)
    return cell.flatten(), study


def _tile_classes(target_cls: torch.Tensor, pred_cls: torch.Tensor,
                  num_classes: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The classes that occur in a CPU tile and the pixels' indices among them.

    Args:
        target_cls, pred_cls: (N, h, W) class indices in 0..C, C = no class (pred_cls is C where the target
            is not valid).

    Returns:
        classes: (k,) int64 the classes 0..C-1 present in target_cls or pred_cls, ascending, and class 0
            always; None (keep all C, indices unchanged) on a GPU, where k would cost a host sync, up to C = 30
            (one int32 plane already), or when every class is present.
        target_idx, pred_idx: (N, h, W) each pixel's position in `classes`, k = no class.
    """
    C = num_classes
    if target_cls.device.type != "cpu" or C <= 30:  # up to 30 classes are one int32 plane anyway
        return None, target_cls, pred_cls
    seen = torch.bincount(target_cls.flatten(), minlength=C + 1)[:C] > 0
    seen |= torch.bincount(pred_cls.flatten(), minlength=C + 1)[:C] > 0
    seen[0] = True  # at least one class, so that there is a plane (for a tile without any, one without pixels)
    classes = seen.nonzero().squeeze(1)
    k = len(classes)
    if k == C:
        return None, target_cls, pred_cls
    lookup = torch.full((C + 1,), k, dtype=target_cls.dtype)
    lookup[classes] = torch.arange(k, dtype=target_cls.dtype)
    return classes, *(lookup.index_select(0, x.flatten()).view_as(x) for x in (target_cls, pred_cls))


PARTS = ("default", "study", "boundary_iou")  # what segmentation_image_stats computes besides the confusions


@torch.no_grad()
def segmentation_image_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                             ignore_index: int = IGNORE_INDEX, boundary_px: int = 3,
                             parts=PARTS) -> dict[str, torch.Tensor]:
    """Per-image counts behind every metric but fragments (DEVICE_STAT_KEYS), computed on the inputs' device.

    Args:
        pred: (N, H, W) or (H, W) integer predicted train ids (values outside 0..C-1 match no class).
        target: same shape, integer train ids; `ignore_index` (and any value outside 0..C-1) is ignored.
        num_classes: C, 1..MAX_CLASSES (each class is one bit of an integer; 62 fit one int64 plane).
        ignore_index: the ignore label in `target`.
        boundary_px: r, the boundary tolerance, trimap band half-width and Boundary-IoU depth d in pixels.
        parts: which counts besides `confusion` and `trimap_confusion` to compute (a subset of PARTS):
            "default" -> `boundary`, "study" -> `study_boundary`, "boundary_iou" -> `boundary_iou`. Every
            evaluation computes all of them (the per-image file holds both profiles); fewer serve benchmarks.

    Returns:
        {key: int64 tensor with leading dim N} (layout in the comment above DEVICE_STAT_KEYS).
    """
    if pred.shape != target.shape or pred.dim() not in (2, 3):
        raise ValueError(f"pred and target must both be (N, H, W) or (H, W); got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point() or torch.bool in (pred.dtype, target.dtype):
        raise ValueError("pred and target must be integer label maps (argmax the logits first)")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target on {target.device}")
    _check_num_classes(num_classes)
    if boundary_px < 0:
        raise ValueError(f"boundary_px={boundary_px} must be >= 0")
    parts = frozenset(parts)
    if parts - set(PARTS):
        raise ValueError(f"unknown parts {sorted(parts - set(PARTS))}: choose from {', '.join(PARTS)}")
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    n_img, height, width = pred.shape
    C = num_classes

    # Row bands with boundary_px + 1 rows of context: the (study's) erosion and dilation reach 1 row, the
    # tolerance dilation r more.
    context = boundary_px + 1
    tile_rows = height
    if pred.device.type == "cpu":
        tile_rows = max(2 * context, CPU_TILE_PIXELS // max(1, n_img * width))
    cells, study = [], 0
    for top in range(0, height, tile_rows):
        bottom = min(height, top + tile_rows)
        lo, hi = max(0, top - context), min(height, bottom + context)
        tile_cells, tile_study = _state_cells(pred[:, lo:hi], target[:, lo:hi], C, ignore_index, boundary_px,
                                              rows=(top - lo, bottom - lo), frame=(lo == 0, hi == height),
                                              parts=parts)
        cells.append(tile_cells)
        if tile_study is not None:
            study = study + tile_study
    # One histogram for all tiles: its 72 (C + 1)^2 cells per image (13 MB at C = 150) are zeroed once.
    K = C + 1
    counts = torch.bincount(torch.cat(cells), minlength=n_img * NUM_STATES * K * K).view(n_img, 2, 3, 3, 2, 2, K, K)

    # Reduce to small per-image tensors; row C (ignored targets) is dropped here.
    # counts dims: 0 image, 1 band, 2 pred state, 3 GT state, 4 P_d, 5 G_d, 6 target class, 7 pred class.
    by_band = counts.sum((2, 3, 4, 5))  # (N, 2, K, K): band x target class x predicted class
    stats = {"confusion": by_band.sum(1)[:, :C],  # (N, C, C+1)
             "trimap_confusion": by_band[:, 1, :C]}  # (N, C, C+1)
    if parts & {"default", "boundary_iou"}:
        by_pred = counts.sum((1, 3, 5, 6))  # (N, 3, 2, K): pred-boundary state x P_d x predicted class
        by_gt = counts.sum((1, 2, 4, 7))  # (N, 3, 2, K): GT-boundary state x G_d x target class
    if "default" in parts:
        by_pred_state, by_gt_state = by_pred.sum(2), by_gt.sum(2)  # (N, 3, K) each
        stats["boundary"] = torch.stack([
            by_pred_state[:, 2, :C],  # |B(P) & dil(B(G))|
            by_pred_state[:, 1, :C] + by_pred_state[:, 2, :C],  # |B(P)|
            by_gt_state[:, 2, :C],  # |B(G) & dil(B(P))|
            by_gt_state[:, 1, :C] + by_gt_state[:, 2, :C],  # |B(G)|
        ], dim=-1)  # (N, C, 4)
    if "study" in parts:
        stats["study_boundary"] = study  # (N, C, 4)
    if "boundary_iou" in parts:
        pred_inner = by_pred.sum(1)[:, 1, :C]  # (N, C) |P_d|
        gt_inner = by_gt.sum(1)[:, 1, :C]  # (N, C) |G_d|
        both_inner = counts[:, :, :, :, 1, 1].sum((1, 2, 3)).diagonal(dim1=-2, dim2=-1)[:, :C]  # |G_d & P_d|
        stats["boundary_iou"] = torch.stack([both_inner, gt_inner + pred_inner - both_inner], dim=-1)  # (N, C, 2)
    return stats


def fragment_counts(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) or (H, W) integer predictions (any device) -> (N,) int64 fragments on the CPU
    (`metrics.consensus.count_fragments` per image)."""
    pred = pred.reshape(-1, *pred.shape[-2:])
    if pred.dtype != torch.uint8 and num_classes < MAX_CLASSES:  # 8-bit maps: a quarter of the bytes of int32
        pred = torch.where((pred >= 0) & (pred < num_classes), pred, MAX_CLASSES).to(torch.uint8)  # no class
    maps = pred.cpu().numpy()
    return torch.tensor([count_fragments(m, num_classes) for m in maps], dtype=torch.int64)


def fragment_stats(pred: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """The fragments record's producer (on the host): {"fragments": `fragment_counts`}."""
    return {"fragments": fragment_counts(pred, num_classes)}


@torch.no_grad()
def device_image_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int,
                       boundary_px: int) -> dict[str, torch.Tensor]:
    """Every device-side record's per-image statistics of a batch (`metrics.registry`), on the inputs' device."""
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    stats = {}
    for producer in producers(host=False):
        stats.update(producer(pred, target, num_classes, ignore_index, boundary_px))
    return stats


def host_image_stats(pred: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Every host-side record's per-image statistics (on the CPU) of a batch of predictions (any device)."""
    stats = {}
    for producer in producers(host=True):
        stats.update(producer(pred, num_classes))
    return stats


class SegmentationMetrics:
    """Keeps the per-image counts of an evaluation and reduces them to the metrics of one profile.

    Args:
        num_classes: C, the dataset's (its `data_utils.classes.ClassTable.num_classes`; 19 for Cityscapes).
        ignore_index: the ignore label in targets (`utils.conventions.IGNORE_INDEX`).
        boundary_px: r, the Boundary-F1 tolerance, Trimap band half-width and Boundary-IoU depth in pixels (3).
        profile: "default" or "study": which estimators of Boundary F1 and Trimap IoU `compute` reports (the
            module docstring defines both; the per-image statistics hold both).
        class_names: C names, in train-id order, for the per-image file (default "0", "1", ...).

    Distributed use: `stats = metric.image_stats(pred, target)` plus the host-side statistics (from
    `host_image_stats`: fragments), then `metric.add_stats(accelerator.gather_for_metrics(stats), names)` on
    every process (engine.evaluation does this); `update` does it all in one process. The counts stay on the
    device of the stats added; nothing syncs with the host until `compute()` / `per_image()`.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, boundary_px: int = 3,
                 profile: str = "default", class_names: Sequence[str] | None = None):
        _check_num_classes(num_classes)
        if boundary_px < 0:
            raise ValueError(f"boundary_px={boundary_px} must be >= 0")
        if profile not in PROFILES:
            raise ValueError(f"unknown metrics profile {profile!r}: use one of {', '.join(PROFILES)}")
        class_names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        if len(class_names) != num_classes:
            raise ValueError(f"{plural(len(class_names), 'class name')} for num_classes={num_classes}")
        self.num_classes, self.ignore_index, self.boundary_px = num_classes, ignore_index, boundary_px
        self.profile, self.class_names = profile, class_names
        self.reset()

    def reset(self) -> None:
        self._stats: list[dict[str, torch.Tensor]] = []  # one dict of per-image counts per add_stats call
        self._names: list[str] = []

    @property
    def num_images(self) -> int:
        return len(self._names)

    def image_stats(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, H, W) pred/target -> the per-image statistics of every device-side record (`device_image_stats`)."""
        return device_image_stats(pred, target, self.num_classes, self.ignore_index, self.boundary_px)

    def add_stats(self, stats: dict[str, torch.Tensor], names: Sequence[str] | None = None) -> None:
        """Add per-image stats (every key of `metrics.registry.stat_specs()`, possibly gathered across
        processes) and the images' names (default: their running index)."""
        keys = stat_specs()
        missing = [k for k in keys if k not in stats]
        if missing:
            raise ValueError(f"stats lack {', '.join(missing)} (host-side ones come from host_image_stats)")
        n = stats["confusion"].shape[0]
        names = [str(self.num_images + i) for i in range(n)] if names is None else list(names)
        if len(names) != n:
            raise ValueError(f"{plural(len(names), 'name')} for {plural(n, 'image')}")
        self._stats.append({k: stats[k] for k in keys})
        self._names += names

    def update(self, pred: torch.Tensor, target: torch.Tensor, names: Sequence[str] | None = None) -> None:
        """Add a batch of (N, H, W) integer maps (single process; see the class docstring for distributed)."""
        stats = self.image_stats(pred, target)
        stats.update(host_image_stats(pred, self.num_classes))
        self.add_stats(stats, names)

    def per_image(self) -> dict[str, np.ndarray]:
        """The per-image statistics in the `<checkpoint>.per_image.npz` layout (`metrics.per_image.ARRAYS`)."""
        C = self.num_classes
        dims = {"C": C, "C+1": C + 1}
        stats = {}
        for key, (trailing, kind) in stat_specs().items():
            dtype = np.int64 if kind == "i" else np.float64
            if self._stats:
                stats[key] = torch.cat([s[key].cpu() for s in self._stats]).numpy().astype(dtype)
            else:
                stats[key] = np.zeros((0, *(dims.get(d, d) for d in trailing)), dtype)
        arrays = {"names": np.array(self._names, dtype=str), "class_names": np.array(self.class_names, dtype=str),
                  "boundary_px": np.int64(self.boundary_px)}
        for m in METRICS:
            arrays.update(m.image_arrays(stats))
        return arrays

    def compute(self) -> dict:
        """`metrics.per_image.dataset_metrics` of the images added so far, in this profile: every record's value
        and per-class values ({"miou", "iou" (list of C, NaN where U_c = 0), "boundary_f1", ...}), "num_images"
        and "metrics_profile". Fractions in [0, 1]; NaN where nothing to average.
        """
        return dataset_metrics(self.per_image(), self.profile)
