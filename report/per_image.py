"""Read `<checkpoint>.per_image.npz`, the per-image statistics evaluate.py writes beside each results file.

A stand-in: the format and its reader belong to the metrics package (issue 15's torch-free `metrics/per_image.py`,
which documents the keys, shapes and dataset-level reductions). This module only validates what the image
bootstrap (`report.bootstrap`) reads, so that replacing it is one import in `report/load.py`.

Keys (n images, C classes; plain arrays, no pickles): `names` (n,) unicode, unique; `class_names` (C,) unicode;
`boundary_px` () int; `confusion`, `trimap_confusion` (n, C, C+1) int; `boundary` (n, C, 4) int; `boundary_iou`
(n, C, 2) int; `fragments` (n,) int; `boundary_f1`, `study_boundary_f1`, `study_trimap_iou` (n,) float.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from utils import UserError

PER_IMAGE_SUFFIX = ".per_image.npz"
RESULTS_SUFFIX = ".results.json"  # engine.results_format.RESULTS_SUFFIX (not imported: no engine import here)
# key -> (shape in terms of n and C, dtype kind: "U" text, "i" integer, "f" float)
PER_IMAGE_KEYS = {
    "names": (("n",), "U"), "class_names": (("C",), "U"), "boundary_px": ((), "i"),
    "confusion": (("n", "C", "C+1"), "i"), "trimap_confusion": (("n", "C", "C+1"), "i"),
    "boundary": (("n", "C", 4), "i"), "boundary_f1": (("n",), "f"), "study_boundary_f1": (("n",), "f"),
    "study_trimap_iou": (("n",), "f"), "boundary_iou": (("n", "C", 2), "i"), "fragments": (("n",), "i"),
}
_PER_IMAGE_AXIS = {k for k, (shape, _) in PER_IMAGE_KEYS.items() if shape[:1] == ("n",)}  # the per-image arrays
_KIND_NAMES = {"U": "text", "i": "integer", "f": "float"}
_REDO = "re-run `python evaluate.py CHECKPOINT` (it rewrites the results and the per-image file)"


def per_image_path(results_file: str | Path) -> Path:
    """RUN/checkpoints/epoch_0010.results.json -> RUN/checkpoints/epoch_0010.per_image.npz (beside it)."""
    results_file = Path(results_file)
    stem = results_file.name[:-len(RESULTS_SUFFIX)] if results_file.name.endswith(RESULTS_SUFFIX) else results_file.stem
    return results_file.with_name(stem + PER_IMAGE_SUFFIX)


def read_per_image(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of one per-image file, validated (keys, shapes, dtypes, unique names, counts >= 0); integer
    arrays as int64, scores as float64. Raises UserError naming the file and the fix."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise UserError(f"{path}: no such per-image file; {_REDO}") from None
    except (EOFError, zipfile.BadZipFile):
        raise UserError(f"{path}: corrupt per-image file (truncated, or not a zip archive); {_REDO}") from None
    except ValueError:  # what np.load says of a file that is no .npy/.npz, or of an array of Python objects
        raise UserError(f"{path}: corrupt per-image file (not an .npz of plain arrays; pickled objects are refused); "
                        f"{_REDO}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the per-image file ({e}); {_REDO}") from None
    missing = [k for k in PER_IMAGE_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path}: per-image file lacks {', '.join(missing)} (written by an older evaluate.py?); "
                        f"{_REDO}")
    n, C = (arrays[k].shape[0] if arrays[k].ndim == 1 else -1 for k in ("names", "class_names"))
    dims = {"n": n, "C": C, "C+1": C + 1}
    out = {}
    for key, (shape, kind) in PER_IMAGE_KEYS.items():
        a = arrays[key]
        expected = tuple(dims.get(d, d) for d in shape)
        if a.shape != expected or a.dtype.kind not in ({"i", "u"} if kind == "i" else {kind}):
            want = "x".join(map(str, expected)) or "scalar"
            raise UserError(f"{path}: `{key}` is {a.dtype} {a.shape}, expected {want} {_KIND_NAMES[kind]} "
                            f"(n = {n} images, C = {C} classes); {_REDO}")
        if kind == "i" and a.size and a.min() < 0:
            raise UserError(f"{path}: `{key}` holds negative counts; {_REDO}")
        out[key] = a.astype(np.int64) if kind == "i" else a.astype(np.float64) if kind == "f" else a
    if len(set(out["names"].tolist())) != n:
        raise UserError(f"{path}: `names` repeats an image; {_REDO}")
    return out


def select_images(arrays: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    """The arrays of a per-image file for the images `index` (indices, a slice or a mask) of its image axis;
    the arrays without one (`class_names`, `boundary_px`) unchanged."""
    return {k: a[index] if k in _PER_IMAGE_AXIS else a for k, a in arrays.items()}
