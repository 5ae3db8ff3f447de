"""The numpy reductions behind the metric records (`metrics.registry`): per-image scores from per-image counts,
dataset values from the per-image arrays of a file (`metrics.per_image`), and the image bootstrap's
sum-then-reduce forms (`report.bootstrap`). Torch-free. The metrics are defined in `metrics.segmentation`.

Every bootstrap form is reduce(Σ_images terms(per-image array)): the terms of an image add up over the images
of a draw, so `report.bootstrap` reweights them by how often each image is drawn.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

STUDY_EPS = 1e-6  # the study's guard in precision, recall and F


# ------------------------------------------------------------------------------------------ per-image scores
def _image_mean(scores: np.ndarray, counted: np.ndarray, empty: float) -> np.ndarray:
    """(n, C) scores, (n, C) bool -> (n,) mean over the counted classes of each image, `empty` where none."""
    num = counted.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counted, scores, 0.0).sum(-1) / num
    return np.where(num > 0, mean, empty)


def boundary_f1_per_class(boundary: np.ndarray) -> np.ndarray:
    """(..., C, 4) default-profile boundary counts -> (..., C) F-scores with the empty-boundary conventions."""
    pred_matched, pred_total, gt_matched, gt_total = np.moveaxis(boundary.astype(np.float64), -1, 0)
    precision = pred_matched / np.maximum(pred_total, 1)
    recall = gt_matched / np.maximum(gt_total, 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)  # P + R = 0 -> 0
    f1 = np.where((pred_total == 0) | (gt_total == 0), 0.0, f1)  # exactly one empty -> 0
    return np.where((pred_total == 0) & (gt_total == 0), 1.0, f1)  # both empty -> 1


def boundary_f1_scores(confusion: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Default profile: (n, C, C+1) confusion, (n, C, 4) counts -> (n,) image scores (NaN: no valid pixel)."""
    return _image_mean(boundary_f1_per_class(boundary), confusion.sum(-1) > 0, math.nan)


def study_boundary_f1_scores(confusion: np.ndarray, study_boundary: np.ndarray) -> np.ndarray:
    """Study profile: (n, C, C+1) confusion, (n, C, 4) counts with the study's B -> (n,) image scores."""
    pred_matched, pred_total, gt_matched, gt_total = np.moveaxis(study_boundary.astype(np.float64), -1, 0)
    precision = pred_matched / (pred_total + STUDY_EPS)
    recall = gt_matched / (gt_total + STUDY_EPS)
    f1 = 2 * precision * recall / (precision + recall + STUDY_EPS)
    f1 = np.where((pred_total == 0) & (gt_total == 0), 1.0, f1)
    return _image_mean(f1, confusion.sum(-1) > 0, 0.0)


def _intersection_union(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., C, C+1) confusion -> (..., C) I_c and U_c as float64."""
    C = confusion.shape[-2]
    confusion = confusion.astype(np.float64)
    intersection = np.diagonal(confusion[..., :C], axis1=-2, axis2=-1)
    union = confusion.sum(-1) + confusion[..., :C].sum(-2) - intersection  # target + predicted - both
    return intersection, union


def study_trimap_iou_scores(trimap_confusion: np.ndarray) -> np.ndarray:
    """Study profile: (n, C, C+1) trimap confusion -> (n,) image scores (0 for an image with an empty band)."""
    intersection, union = _intersection_union(trimap_confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / union
    return _image_mean(iou, union > 0, 0.0)


# ------------------------------------------------------------------------------------------ dataset level
def ratio_per_class(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """(C,) I_c, U_c -> (C,) I_c / U_c, NaN where U_c = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, math.nan)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """(C, C+1) summed confusion -> (C,) float64 IoU, NaN where U_c = 0."""
    return ratio_per_class(*_intersection_union(confusion))


def boundary_iou_per_class(stats: dict) -> np.ndarray:
    """Per-image arrays -> (C,) Boundary IoU per class from the summed (|G_d ∧ P_d|, |G_d ∨ P_d|)."""
    counts = stats["boundary_iou"].sum(0).astype(np.float64)  # (C, 2)
    return ratio_per_class(counts[:, 0], counts[:, 1])


def nanmean(values: np.ndarray) -> float:
    """The mean of the non-NaN values; NaN when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def mean(values: np.ndarray) -> float:
    """The mean of all values; NaN when there are none."""
    return float(values.mean()) if values.size else math.nan


# ------------------------------------------------------------------------------------------ bootstrap forms
def confusion_sums(confusion: np.ndarray) -> np.ndarray:
    """(n, C, C+1) per-image confusions -> (n, 3, C): intersection I_c, target area T_c, predicted area P_c
    (all the IoU needs, and each one adds up over images)."""
    C = confusion.shape[1]
    return np.stack([np.diagonal(confusion[:, :, :C], axis1=1, axis2=2),  # pred == target == c
                     confusion.sum(2),  # target == c, whatever was predicted
                     confusion[:, :, :C].sum(1)], axis=1)  # pred == c on valid pixels


def _mean_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Mean over the last axis of I_c / U_c over the classes with U_c > 0; NaN where no class has U_c > 0."""
    present = union > 0
    iou = np.divide(intersection, union, out=np.zeros(union.shape), where=present)
    count = present.sum(-1)
    return np.divide(iou.sum(-1), count, out=np.full(count.shape, np.nan), where=count > 0)


def miou_of_sums(sums: np.ndarray) -> np.ndarray:
    """(..., 3, C) summed (I, T, P) -> (...) mIoU, U_c = T_c + P_c − I_c (`metrics.segmentation`'s mIoU)."""
    i, t, p = sums[..., 0, :], sums[..., 1, :], sums[..., 2, :]
    return _mean_iou(i, t + p - i)


def boundary_iou_of_sums(sums: np.ndarray) -> np.ndarray:
    """(..., C, 2) summed (|G_d ∧ P_d|, |G_d ∨ P_d|) -> (...) Boundary IoU, mean over classes with a union."""
    return _mean_iou(sums[..., 0], sums[..., 1])


def identity(counts: np.ndarray) -> np.ndarray:
    """Per-image counts that add up over images as they are."""
    return counts


def image_terms(skip_nan: bool) -> Callable[[np.ndarray], np.ndarray]:
    """(n,) per-image values -> (n, 3): value (NaN -> 0), 1 if the image is counted, 1 if it is a NaN that
    makes the mean NaN. skip_nan: NaN images are left out (not counted); else every image counts and a NaN
    drawn makes the mean NaN."""
    def terms(x: np.ndarray) -> np.ndarray:
        nan = np.isnan(x)
        counted = ~nan if skip_nan else np.ones_like(nan)
        return np.stack([np.where(nan, 0.0, x), counted, nan & (not skip_nan)], axis=1)
    return terms


def mean_of_sums(sums: np.ndarray) -> np.ndarray:
    """(..., 3) summed image terms (`image_terms`) -> (...) mean over the counted images; NaN if none is
    counted or a NaN image was drawn."""
    total, counted, nans = sums[..., 0], sums[..., 1], sums[..., 2]
    return np.divide(total, counted, out=np.full(total.shape, np.nan), where=(counted > 0) & (nans == 0))
