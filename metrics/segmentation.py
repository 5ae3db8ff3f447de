"""Semantic-segmentation metrics on any device: mIoU, per-class IoU, Boundary F1 and Trimap IoU.

Count, then reduce. `segmentation_image_stats(pred, target)` turns a batch of label maps into small per-image
count tensors (a few KB per image, never the maps themselves), so a distributed evaluation gathers them with
`accelerator.gather_for_metrics` and sums; the metrics are reductions of the summed counts, which makes
multi-GPU evaluation equal to single-GPU evaluation bit for bit.

Definitions (pred, target: (H, W) train ids; valid = target != ignore_index and 0 <= target < C; r = boundary_px):
- mIoU (dataset level): I_c = #(pred==c & target==c & valid), U_c = #((pred==c | target==c) & valid),
  IoU_c = I_c / U_c (NaN where U_c = 0), mIoU = mean of IoU_c over classes with U_c > 0.
- Boundary F1 (per image, then mean over images): for every class c present in the image's valid target,
  G = (target==c), P = (pred==c) & valid; boundary(M) = M & ~erode(M) with a 3x3 square, pixels outside the
  image counting as inside M (the frame is not a contour); tolerance = dilation by a (2r+1)x(2r+1) square.
  precision = |B(P) & dil(B(G))| / |B(P)|, recall = |B(G) & dil(B(P))| / |B(G)|, F = 2PR / (P + R);
  F = 1 when both boundaries are empty, 0 when exactly one is empty or P + R = 0. The image's score is the mean
  F over those classes; images without a valid pixel are skipped.
- Trimap IoU (dataset level): a valid pixel is a GT-contour pixel when one of its 4-neighbours inside the image
  holds a different valid label (transitions to/from ignore don't count); band = valid pixels within Chebyshev
  distance <= r of a contour pixel; I_c, U_c as for mIoU but counted over band pixels only.

How it stays fast without a per-class loop: every pixel stores its class as one bit of an integer (class c ->
bit c, 19 classes fit an int32), so the 3x3 erosion of all 19 class masks is one bitwise-AND window reduction
and the tolerance dilation of all 19 boundary maps is one bitwise-OR window reduction (separable, implemented
as shifted slices). Because a pixel has exactly one predicted and one target class, "is this pixel a matched
boundary pixel of its class" is a single bit test, and all per-class counts come from `torch.bincount`.

Example:
    >>> import torch
    >>> from metrics import SegmentationMetrics
    >>> metric = SegmentationMetrics(num_classes=19)
    >>> target = torch.zeros(1, 64, 64, dtype=torch.long); target[:, :, 32:] = 13
    >>> metric.update(target.clone(), target)
    >>> metric.compute()["miou"], metric.compute()["boundary_f1"]
    (1.0, 1.0)
"""
from __future__ import annotations

import math

import torch

# Keys of the per-image stats (all with leading dim N, integer counts):
#   confusion         (N, C, C+1): rows = target class over valid pixels, columns = predicted class; the last
#                                  column counts predictions outside 0..C-1 (they match no class).
#   trimap_confusion  (N, C, C+1): the same, counted only over the trimap band.
#   boundary          (N, C, 4):   per class |B(P) & dil(B(G))|, |B(P)|, |B(G) & dil(B(P))|, |B(G)|.
STAT_KEYS = ("confusion", "trimap_confusion", "boundary")


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


def _state_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int,
                  boundary_px: int, rows: tuple[int, int]) -> torch.Tensor:
    """Joint histogram of (trimap band, pred-boundary state, GT-boundary state, target class, pred class).

    Args:
        pred, target: (N, h, W) integer maps (a full image or a band of rows with `boundary_px + 1` rows of
            context above and below, so every counted pixel sees its whole neighbourhood).
        rows: (first, last + 1) of the rows that are counted.

    Returns:
        (N, 2, 3, 3, K, K) int64 counts, K = C + 1, index C = no class. Boundary state: 0 = not a boundary
        pixel, 1 = boundary pixel outside the other map's tolerance, 2 = matched (inside it).
    """
    C, K = num_classes, num_classes + 1
    n_img = pred.shape[0]
    # Everything below is elementwise integer arithmetic in one dtype (torch.where, gathers and mixed-dtype
    # ops are several times slower per pixel on CPU) plus one bincount. Bits 0..C-1 hold the classes, bit C
    # the trimap contour; values stay >= 0, so `x.clamp(max=1)` is the 0/1 "x != 0" in the same dtype.
    dtype = torch.int32 if C <= 30 and n_img * 18 * K * K < 2**31 else torch.int64

    # Class index per pixel, C = "no class" (ignored target pixels, predictions outside 0..C-1).
    target_cls = _class_index(target, C, dtype)  # (N, h, W) in 0..C
    if 0 <= ignore_index < C:  # an ignore label inside the class range (not Cityscapes' 255)
        target_cls.masked_fill_(target == ignore_index, C)
    pred_cls = _class_index(pred, C, dtype)  # (N, h, W) in 0..C

    # Class masks as bit planes: bit c of a pixel is set when the pixel belongs to class c.
    class_bits = (1 << C) - 1
    gt_bits = (1 << target_cls) & class_bits  # G for every class; 0 on ignored pixels
    valid_all_bits = -gt_bits.clamp(max=1)  # -1 (all bits set) on valid pixels, 0 on ignored ones
    pred_bits = (1 << pred_cls) & class_bits & valid_all_bits  # P = (pred == c) & valid
    bits = torch.stack([pred_bits, gt_bits])  # (2, N, h, W)
    boundary = _erode_bits(bits).bitwise_not_().bitwise_and_(bits)  # B(P), B(G) = M & ~erode(M)

    # Trimap contour: two 4-neighbours are a transition when both are valid and differ, i.e. when the XOR of
    # their one-hot codes has two bits set (x & (x - 1) != 0); an ignored pixel (code 0) leaves one bit.
    contour = torch.zeros_like(gt_bits)
    for dim in (-1, -2):
        size = gt_bits.shape[dim]
        if size > 1:
            xor = gt_bits.narrow(dim, 0, size - 1) ^ gt_bits.narrow(dim, 1, size - 1)
            transition = xor & (xor - 1)  # nonzero on a valid-valid transition between a pixel and the next
            contour.narrow(dim, 0, size - 1).bitwise_or_(transition)
            contour.narrow(dim, 1, size - 1).bitwise_or_(transition)

    # One tolerance dilation serves B(P), B(G) and the trimap contour (riding along as bit C of the GT map).
    dilated = boundary.clone()
    dilated[1] |= contour.clamp_(max=1) << C
    dilated = _dilate_bits(dilated, boundary_px)
    pred_boundary, gt_boundary = boundary[0], boundary[1]  # (N, h, W) each
    pred_boundary_dil, gt_boundary_dil = dilated[0], dilated[1]

    # A pixel carries at most one bit of B(P) (its predicted class) and one of B(G) (its target class), so
    # "matched boundary pixel of its class" is a single nonzero test; the class comes from the index maps.
    band = gt_boundary_dil >> C  # 0/1: within r of a contour pixel (bit C is the highest one set)
    pred_state = pred_boundary.clamp(max=1) + (pred_boundary & gt_boundary_dil).clamp_(max=1)  # 0/1/2
    gt_state = gt_boundary.clamp(max=1) + (gt_boundary & pred_boundary_dil).clamp_(max=1)  # 0/1/2
    state = band * 9 + pred_state * 3 + gt_state  # 0..17
    cell = (state * K + target_cls) * K + pred_cls  # (N, h, W) in 0 .. 18*K*K - 1
    cell = cell[:, rows[0]:rows[1]] + torch.arange(n_img, device=cell.device, dtype=dtype).view(n_img, 1, 1) * (
        18 * K * K)
    counts = torch.bincount(cell.flatten(), minlength=n_img * 18 * K * K)
    return counts.view(n_img, 2, 3, 3, K, K)


@torch.no_grad()
def segmentation_image_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 19,
                             ignore_index: int = 255, boundary_px: int = 3) -> dict[str, torch.Tensor]:
    """Per-image counts behind mIoU, Boundary F1 and Trimap IoU, computed on the inputs' device.

    Args:
        pred: (N, H, W) or (H, W) integer predicted train ids (values outside 0..C-1 match no class).
        target: same shape, integer train ids; `ignore_index` (and any value outside 0..C-1) is ignored.
        num_classes: C, at most 62 (each class is one bit of an integer; up to 30 fit an int32).
        ignore_index: the ignore label in `target`.
        boundary_px: r, the boundary tolerance and trimap band half-width in pixels.

    Returns:
        {"confusion": (N, C, C+1) int64, "trimap_confusion": (N, C, C+1) int64, "boundary": (N, C, 4) int64}
        (layout in STAT_KEYS' comment above).
    """
    if pred.shape != target.shape or pred.dim() not in (2, 3):
        raise ValueError(f"pred and target must both be (N, H, W) or (H, W); got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point() or torch.bool in (pred.dtype, target.dtype):
        raise ValueError("pred and target must be integer label maps (argmax the logits first)")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target on {target.device}")
    if not 1 <= num_classes <= 62:
        raise ValueError(f"num_classes={num_classes}: 1..62 supported (one bit per class)")
    if boundary_px < 0:
        raise ValueError(f"boundary_px={boundary_px} must be >= 0")
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    n_img, height, width = pred.shape
    C = num_classes

    # Row bands with boundary_px + 1 rows of context: erosion reaches 1 row, the tolerance dilation r more.
    context = boundary_px + 1
    tile_rows = height
    if pred.device.type == "cpu":
        tile_rows = max(2 * context, CPU_TILE_PIXELS // max(1, n_img * width))
    counts = 0
    for top in range(0, height, tile_rows):
        bottom = min(height, top + tile_rows)
        lo, hi = max(0, top - context), min(height, bottom + context)
        counts = counts + _state_counts(pred[:, lo:hi], target[:, lo:hi], C, ignore_index, boundary_px,
                                        rows=(top - lo, bottom - lo))

    # Reduce to small per-image tensors; row C (ignored targets) is dropped here.
    confusion = counts.sum((1, 2, 3))[:, :C]  # (N, C, C+1)
    trimap_confusion = counts[:, 1].sum((1, 2))[:, :C]  # (N, C, C+1)
    by_pred_state = counts.sum((1, 3, 4))  # (N, 3, K): pred-boundary state x predicted class
    by_gt_state = counts.sum((1, 2, 5))  # (N, 3, K): GT-boundary state x target class
    boundary = torch.stack([
        by_pred_state[:, 2, :C],  # |B(P) & dil(B(G))|
        by_pred_state[:, 1, :C] + by_pred_state[:, 2, :C],  # |B(P)|
        by_gt_state[:, 2, :C],  # |B(G) & dil(B(P))|
        by_gt_state[:, 1, :C] + by_gt_state[:, 2, :C],  # |B(G)|
    ], dim=-1)  # (N, C, 4)
    return {"confusion": confusion, "trimap_confusion": trimap_confusion, "boundary": boundary}


def boundary_f1_per_class(boundary: torch.Tensor) -> torch.Tensor:
    """(..., C, 4) boundary counts -> (..., C) float64 F-scores with the empty-boundary conventions."""
    pred_matched, pred_total, gt_matched, gt_total = boundary.double().unbind(-1)
    precision = pred_matched / pred_total.clamp_min(1)
    recall = gt_matched / gt_total.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-300)  # P + R = 0 -> 0
    f1 = torch.where((pred_total == 0) | (gt_total == 0), 0.0, f1)  # exactly one empty -> 0
    return torch.where((pred_total == 0) & (gt_total == 0), 1.0, f1)  # both empty -> 1


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """(C, C+1) summed confusion -> (C,) float64 IoU, NaN where U_c = 0."""
    C = confusion.shape[0]
    confusion = confusion.double()
    intersection = confusion.diagonal()  # (C,) pred == target == c
    target_area = confusion.sum(1)  # (C,) target == c, whatever was predicted
    pred_area = confusion[:, :C].sum(0)  # (C,) pred == c on valid pixels
    union = target_area + pred_area - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1), math.nan)


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


class SegmentationMetrics:
    """Accumulates per-image counts and reduces them to mIoU, per-class IoU, Boundary F1 and Trimap IoU.

    Args:
        num_classes: C (19 for Cityscapes).
        ignore_index: the ignore label in targets (255).
        boundary_px: r, the Boundary-F1 tolerance and Trimap band half-width in pixels (3).

    Distributed use: `stats = metric.image_stats(pred, target)`, then
    `metric.add_stats(accelerator.gather_for_metrics(stats))` on every process; `update` does both steps
    without the gather. Accumulators live on the device of the first stats added; nothing syncs with the host
    until `compute()`.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = 255, boundary_px: int = 3):
        if not 1 <= num_classes <= 62:
            raise ValueError(f"num_classes={num_classes}: 1..62 supported")
        if boundary_px < 0:
            raise ValueError(f"boundary_px={boundary_px} must be >= 0")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.boundary_px = boundary_px
        self.reset()

    def reset(self) -> None:
        self.confusion = None  # (C, C+1) int64, summed over images
        self.trimap_confusion = None  # (C, C+1) int64
        self.boundary_f1_sum = None  # () float64: sum of per-image scores
        self.boundary_f1_images = None  # () int64: images with at least one valid pixel
        self.num_images = 0

    def image_stats(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, H, W) pred/target -> per-image count tensors with leading dim N (see `segmentation_image_stats`)."""
        return segmentation_image_stats(pred, target, self.num_classes, self.ignore_index, self.boundary_px)

    @torch.no_grad()
    def add_stats(self, stats: dict[str, torch.Tensor]) -> None:
        """Add per-image stats (from `image_stats`, possibly gathered across processes)."""
        confusion, trimap, boundary = (stats[k] for k in STAT_KEYS)
        if self.confusion is None:
            device = confusion.device
            self.confusion = torch.zeros(confusion.shape[1:], dtype=torch.int64, device=device)
            self.trimap_confusion = torch.zeros_like(self.confusion)
            self.boundary_f1_sum = torch.zeros((), dtype=torch.float64, device=device)
            self.boundary_f1_images = torch.zeros((), dtype=torch.int64, device=device)
        self.confusion += confusion.sum(0)
        self.trimap_confusion += trimap.sum(0)
        # Boundary F1 is averaged per image over the classes present in that image's valid target.
        present = confusion.sum(-1) > 0  # (N, C)
        num_present = present.sum(-1)  # (N,)
        f1_sum = (boundary_f1_per_class(boundary) * present).sum(-1)  # (N,)
        scored = num_present > 0  # images without a valid pixel are skipped
        self.boundary_f1_sum += (f1_sum / num_present.clamp_min(1))[scored].sum()
        self.boundary_f1_images += scored.sum()
        self.num_images += confusion.shape[0]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of (N, H, W) integer maps (single process; see the class docstring for distributed)."""
        self.add_stats(self.image_stats(pred, target))

    def compute(self) -> dict:
        """-> {"miou", "iou" (list of C, NaN where U_c = 0), "boundary_f1", "trimap_iou", "num_images"}.

        Values are fractions in [0, 1]; a metric with nothing to average is NaN.
        """
        if self.confusion is None:
            nan = math.nan
            return {"miou": nan, "iou": [nan] * self.num_classes, "boundary_f1": nan, "trimap_iou": nan,
                    "num_images": 0}
        iou = iou_from_confusion(self.confusion.cpu())
        images = int(self.boundary_f1_images)
        return {
            "miou": _nanmean(iou),
            "iou": iou.tolist(),
            "boundary_f1": float(self.boundary_f1_sum) / images if images else math.nan,
            "trimap_iou": _nanmean(iou_from_confusion(self.trimap_confusion.cpu())),
            "num_images": self.num_images,
        }
