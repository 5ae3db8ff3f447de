"""`<checkpoint>.per_image.npz`: the per-image statistics of one evaluation, and their reductions to the dataset
metrics of both profiles. Torch-free (numpy only): report/ reads and resamples these files.

`SegmentationMetrics.compute()` is `dataset_metrics(SegmentationMetrics.per_image(), profile)`, so a results file
and its per-image file agree by construction, and the statistics of any subset of the images (`subset`, a
bootstrap resample) reduce to exactly what an evaluation of that subset gives. The metrics are defined in
`metrics.segmentation`; this module only reduces counts.

File layout (n images in dataset order, C classes; np.savez_compressed, no pickles; ARRAYS is the checked list):

    names              (n,) str            image names (the dataset's frame ids), unique
    class_names        (C,) str            class names in train-id order (results.json `iou` keys)
    boundary_px        () int64            r of the contour metrics
    confusion          (n, C, C+1) int64   rows target class over valid pixels, columns predicted class, the last
                                           column predictions outside 0..C-1
    trimap_confusion   (n, C, C+1) int64   the same over the trimap band
    boundary           (n, C, 4) int64     default Boundary F1 counts: |B(P)∧dil(B(G))|, |B(P)|,
                                           |B(G)∧dil(B(P))|, |B(G)|
    boundary_f1        (n,) float64        default profile: the image's Boundary F1 (NaN: no valid pixel)
    study_boundary_f1  (n,) float64        study profile: the image's Boundary F1
    study_trimap_iou   (n,) float64        study profile: the image's Trimap IoU
    boundary_iou       (n, C, 2) int64     per class |G_d ∧ P_d|, |G_d ∨ P_d|
    fragments          (n,) int64          8-connected components of the prediction, summed over classes

Example:
    >>> stats = read_per_image("runs/cityscapes/convnextv2_base/C_seed42/checkpoints/epoch_0160.per_image.npz")
    >>> dataset_metrics(subset(stats, [0, 0, 3]), "study")["miou"]  # images 0 (twice) and 3
"""
from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np

from metrics.keys import PROFILES
from utils.fileio import UserError, atomic_write_bytes

PER_IMAGE_SUFFIX = ".per_image.npz"
# key -> (trailing shape with C for the number of classes, numpy dtype kind); every key but the scalar
# boundary_px and class_names has the leading image dimension n.
ARRAYS = {
    "names": ((), "U"), "class_names": (None, "U"), "boundary_px": (None, "i"),
    "confusion": (("C", "C+1"), "i"), "trimap_confusion": (("C", "C+1"), "i"), "boundary": (("C", 4), "i"),
    "boundary_f1": ((), "f"), "study_boundary_f1": ((), "f"), "study_trimap_iou": ((), "f"),
    "boundary_iou": (("C", 2), "i"), "fragments": ((), "i"),
}
PER_IMAGE_KEYS = tuple(k for k, (trailing, _) in ARRAYS.items() if trailing is not None)  # resampled by `subset`
STUDY_EPS = 1e-6  # the study's guard in precision, recall and F


def per_image_path(checkpoint: str | Path) -> Path:
    """RUN/checkpoints/epoch_0010 -> RUN/checkpoints/epoch_0010.per_image.npz (beside its results file)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + PER_IMAGE_SUFFIX)


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


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def dataset_metrics(stats: dict, profile: str) -> dict:
    """The dataset-level metrics of per-image statistics (the ARRAYS layout) in one profile.

    Returns:
        {"miou", "iou" (list of C), "boundary_f1", "trimap_iou" (the profile's), "boundary_iou",
        "boundary_iou_per_class" (list of C), "fragments_per_image", "num_images", "metrics_profile"};
        fractions in [0, 1], NaN where there is nothing to average (per class: U_c = 0).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown metrics profile {profile!r}: use one of {', '.join(PROFILES)}")
    iou = iou_from_confusion(stats["confusion"].sum(0))
    boundary_iou = stats["boundary_iou"].sum(0).astype(np.float64)  # (C, 2)
    boundary_iou = ratio_per_class(boundary_iou[:, 0], boundary_iou[:, 1])
    if profile == "default":
        boundary_f1 = _nanmean(stats["boundary_f1"])
        trimap_iou = _nanmean(iou_from_confusion(stats["trimap_confusion"].sum(0)))
    else:
        boundary_f1, trimap_iou = _mean(stats["study_boundary_f1"]), _mean(stats["study_trimap_iou"])
    return {"miou": _nanmean(iou), "iou": iou.tolist(), "boundary_f1": boundary_f1, "trimap_iou": trimap_iou,
            "boundary_iou": _nanmean(boundary_iou), "boundary_iou_per_class": boundary_iou.tolist(),
            "fragments_per_image": _mean(stats["fragments"].astype(np.float64)),
            "num_images": int(len(stats["names"])), "metrics_profile": profile}


def subset(stats: dict, index) -> dict:
    """The statistics of the images at `index` (an integer array: a subset, a reordering or a resample with
    repeats; or a boolean mask of length n)."""
    return {k: (v[np.asarray(index)] if k in PER_IMAGE_KEYS else v) for k, v in stats.items()}


# ------------------------------------------------------------------------------------------ the file
def _check(stats: dict) -> None:
    """Raise ValueError naming what is wrong when `stats` does not follow ARRAYS."""
    missing = [k for k in ARRAYS if k not in stats]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    C = len(stats["class_names"])
    n = len(stats["names"])
    for key, (trailing, kind) in ARRAYS.items():
        value = np.asarray(stats[key])
        if value.dtype.kind != kind and not (kind == "i" and value.dtype.kind == "u"):
            raise ValueError(f"`{key}` has dtype {value.dtype}, expected kind {kind!r}")
        if trailing is None:
            expected = (C,) if key == "class_names" else ()
        else:
            expected = (n, *({"C": C, "C+1": C + 1}.get(d, d) for d in trailing))
        if value.shape != expected:
            raise ValueError(f"`{key}` has shape {value.shape}, expected {expected}")
        if kind == "i" and value.size and value.min() < 0:
            raise ValueError(f"`{key}` holds negative counts")
    if len(set(np.asarray(stats["names"]).tolist())) != n:
        raise ValueError("image names are not unique")


def write_per_image(path: str | Path, stats: dict) -> None:
    """Write per-image statistics (`SegmentationMetrics.per_image()`) atomically as a compressed npz."""
    try:
        _check(stats)
    except ValueError as e:
        raise ValueError(f"{path}: per-image statistics {e}") from None
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(stats[k]) for k in ARRAYS})
    atomic_write_bytes(path, buffer.getbuffer())


def read_per_image(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check a per-image file: {key: array} for the keys of ARRAYS (no pickles are loaded).

    Raises UserError naming the file when it is missing, unreadable, or does not follow the layout.
    """
    path = Path(path)
    redo = "delete it and re-run evaluate.py on its checkpoint (evaluate.py --all RUNS_DIR redoes it)"
    try:
        with np.load(path, allow_pickle=False) as data:
            stats = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise UserError(f"{path}: no such per-image file; evaluate the checkpoint with evaluate.py") from None
    except (EOFError, zipfile.BadZipFile):
        raise UserError(f"{path}: corrupt per-image file (truncated, or not a zip archive); {redo}") from None
    except ValueError:  # what np.load says of a file that is no .npy/.npz, or of an array of Python objects
        raise UserError(f"{path}: corrupt per-image file (not an .npz of plain arrays; pickled objects are "
                        f"refused); {redo}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the per-image file ({e}); {redo}") from None
    try:
        _check(stats)
    except ValueError as e:
        raise UserError(f"{path}: per-image file {e}; {redo}") from None
    return stats
