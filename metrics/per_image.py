"""`<checkpoint>.per_image.npz`: the per-image statistics of one evaluation, and their reduction to the dataset
metrics of either profile. Torch-free (numpy only): report/ reads and resamples these files.

`SegmentationMetrics.compute()` is `dataset_metrics(SegmentationMetrics.per_image(), profile)`, so a results file
and its per-image file agree by construction, and the statistics of any subset of the images (`subset`, a
bootstrap resample) reduce to exactly what an evaluation of that subset gives. The metrics and their arrays are
the records of `metrics.registry`; this module only lays out, checks and reduces the arrays.

File layout (n images in dataset order, C classes; np.savez_compressed, no pickles; ARRAYS is the checked list):

    names              (n,) str            image names (the dataset's frame ids), unique
    class_names        (C,) str            class names in train-id order (results.json `iou` keys)
    boundary_px        () int64            r of the contour metrics
    then every record's `file_arrays`, in METRICS order (docs/metrics.md lists them), each with the leading
    image dimension n: int64 counts or float64 per-image scores (NaN: undefined for that image).

Example:
    >>> stats = read_per_image("runs/cityscapes/convnextv2_base/C_seed42/checkpoints/epoch_0160.per_image.npz")
    >>> dataset_metrics(subset(stats, [0, 0, 3]), "study")["miou"]  # images 0 (twice) and 3
"""
from __future__ import annotations

import hashlib
import io
import math
import zipfile
from pathlib import Path

import numpy as np

from metrics.keys import PROFILES
from metrics.registry import METRICS
from utils.fileio import UserError, atomic_write_bytes

PER_IMAGE_SUFFIX = ".per_image.npz"
# key -> (trailing shape with C for the number of classes, numpy dtype kind); every key but the scalar
# boundary_px and class_names has the leading image dimension n.
ARRAYS = {"names": ((), "U"), "class_names": (None, "U"), "boundary_px": (None, "i"),
          **{name: spec for m in METRICS for name, spec in m.file_arrays.items()}}
PER_IMAGE_KEYS = tuple(k for k, (trailing, _) in ARRAYS.items() if trailing is not None)  # resampled by `subset`


def per_image_path(checkpoint: str | Path) -> Path:
    """RUN/checkpoints/epoch_0010 -> RUN/checkpoints/epoch_0010.per_image.npz (beside its results file)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + PER_IMAGE_SUFFIX)


def names_digest(names) -> str:
    """A short fingerprint of a set of image names: the first 16 hex digits of the sha256 of the names sorted,
    one per line. results.json records it as `images_digest` (engine.results.write_results), so a per-image file
    over other images than its results (as many, but not the same) is told apart (engine.batch_eval)."""
    return hashlib.sha256("\n".join(sorted(str(n) for n in names)).encode()).hexdigest()[:16]


def dataset_metrics(stats: dict, profile: str) -> dict:
    """The dataset-level metrics of per-image statistics (the ARRAYS layout) in one profile.

    Returns:
        {every record's key: its value, and its per_class key (when it has one): a list of C values, ...,
        "num_images", "metrics_profile"} in METRICS order (miou, iou, boundary_f1, trimap_iou, boundary_iou,
        boundary_iou_per_class, fragments_per_image, ...); NaN where there is nothing to average.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown metrics profile {profile!r}: use one of {', '.join(PROFILES)}")
    out = {}
    for m in METRICS:
        out[m.key] = m.value(stats, profile)
        if m.per_class is not None:
            out[m.per_class] = m.class_values(stats).tolist()
    return {**out, "num_images": int(len(stats["names"])), "metrics_profile": profile}


def stale_value(stats: dict, recorded: dict, profile: str, keys=None) -> tuple[str, float, float] | None:
    """The first metric of `keys` (default: every record's key, in METRICS order) whose value over all images of
    `stats` (`dataset_metrics` in `profile`) differs from `recorded[key]` (its results record's) by more than 1e-6,
    as (key, value over the images, recorded value); None when all agree (NaN agrees with NaN). A per-image file
    that does not give its results is stale: aggregate.py refuses it, evaluate.py --all redoes it."""
    values = dataset_metrics(stats, profile)
    for key in keys or [m.key for m in METRICS]:
        value, was = float(values[key]), float(recorded[key])
        if not (abs(value - was) <= 1e-6 or (math.isnan(value) and math.isnan(was))):
            return key, value, was
    return None


def image_values(stats: dict, profile: str) -> dict[str, np.ndarray]:
    """Every record's value on each image alone: {key: (n,) float64}, entry i = `dataset_metrics(subset(stats,
    [i]), profile)[key]` (NaN where undefined for that image), computed for all images at once from the records'
    bootstrap forms (`metrics.registry.Resample`: reduce(terms(array)) of one image's terms)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown metrics profile {profile!r}: use one of {', '.join(PROFILES)}")
    out = {}
    for m in METRICS:
        form = m.resampler(profile)
        terms = np.asarray(form.terms(np.asarray(stats[form.array])), dtype=np.float64)  # (n, ...) per image
        out[m.key] = np.asarray(form.reduce(terms), dtype=np.float64)
    return out


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
