"""`<checkpoint>.results.json`: the evaluation of one checkpoint, written atomically beside it.

Format (one JSON object; metric values are fractions in [0, 1]; NaN is written as null):

    {"variant": "C", "seed": 42, "epoch": 160, "checkpoint": "runs/C_seed42/checkpoints/epoch_0160",
     "split": "val", "num_images": 500, "miou": 0.8123, "boundary_f1": 0.7012, "trimap_iou": 0.6521,
     "iou": {"road": 0.98, ..., "bicycle": 0.77}, "seconds": 41.3, "lambda_dice": 1.0, "lambda_boundary": 0.2,
     "backbone": "convnextv2_base", "boundary_px": 3, "checkpoint_saved_at": "2025-...", "config": {...}}

`checkpoint_saved_at` copies the checkpoint's meta.json `saved_at`, so a results file left from an earlier
checkpoint of the same name (a run resumed from an older epoch rewrites it) is recognised as stale.
aggregate.py reads these files; `read_results` is the validating reader used by evaluate.py --all.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from data_utils.labels import CLASS_NAMES
from engine.checkpoint import read_meta
from engine.config import TrainConfig, config_to_dict
from utils.fileio import UserError, atomic_write_json

RESULTS_SUFFIX = ".results.json"
METRIC_KEYS = ("miou", "boundary_f1", "trimap_iou")
REQUIRED_KEYS = ("variant", "seed", "epoch", "checkpoint", "split", "num_images", *METRIC_KEYS, "iou", "seconds",
                 "lambda_dice", "lambda_boundary")


def results_path(checkpoint: str | Path) -> Path:
    """RUN/checkpoints/epoch_0010 -> RUN/checkpoints/epoch_0010.results.json (beside, not inside)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + RESULTS_SUFFIX)


def write_results(path: str | Path, metrics: dict, *, cfg: TrainConfig, epoch: int, checkpoint: str | Path,
                  split: str, seconds: float, boundary_px: int = 3) -> dict:
    """Write the results file for `metrics` (SegmentationMetrics.compute()) atomically; returns the record.

    Args:
        cfg: the checkpoint's resolved config (variant, seed, lambdas, backbone, the full config).
        epoch: epochs trained when the checkpoint was saved.
        checkpoint: the checkpoint folder (its meta.json, if present, dates the results).
        split: the evaluated split; seconds: wall time of the evaluation.
    """
    iou = list(metrics["iou"])
    if len(iou) != len(CLASS_NAMES):
        raise ValueError(f"metrics['iou'] has {len(iou)} values, expected {len(CLASS_NAMES)}")
    meta = read_meta(checkpoint) or {}
    record = {
        "variant": cfg.variant,
        "seed": cfg.seed,
        "epoch": int(epoch),
        "checkpoint": str(checkpoint),
        "split": split,
        "num_images": int(metrics["num_images"]),
        **{key: float(metrics[key]) for key in METRIC_KEYS},
        "iou": {name: float(value) for name, value in zip(CLASS_NAMES, iou)},
        "seconds": round(float(seconds), 3),
        "lambda_dice": cfg.lambda_dice,
        "lambda_boundary": cfg.lambda_boundary,
        "backbone": cfg.backbone,
        "boundary_px": boundary_px,
        "checkpoint_saved_at": meta.get("saved_at"),
        "config": config_to_dict(cfg),
    }
    atomic_write_json(path, record)  # NaN (a class absent from the split) becomes null
    return record


def _fraction_or_nan(value, path: Path, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{path}: `{name}` = {value!r} is not a fraction in [0, 1]; the file is corrupt, delete "
                        "it and re-run evaluate.py")
    return float(value)


def read_results(path: str | Path) -> dict:
    """Read and validate a results file; null metric values come back as NaN.

    Raises UserError naming the file when it is missing, not JSON, or lacks/garbles a required key.
    """
    path = Path(path)
    redo = "delete it and re-run evaluate.py (evaluate.py --all redoes it automatically)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such results file; evaluate the checkpoint with evaluate.py") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: corrupt results file ({e}); {redo}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: a results file holds one JSON object; {redo}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise UserError(f"{path}: results file lacks {', '.join(missing)}; {redo}")
    for key in ("seed", "epoch", "num_images"):
        if isinstance(record[key], bool) or not isinstance(record[key], int):
            raise UserError(f"{path}: `{key}` = {record[key]!r} is not an integer; {redo}")
    for key in METRIC_KEYS:
        record[key] = _fraction_or_nan(record[key], path, key)
    iou = record["iou"]
    if not isinstance(iou, dict) or sorted(iou) != sorted(CLASS_NAMES):
        raise UserError(f"{path}: `iou` must map the {len(CLASS_NAMES)} class names to values; {redo}")
    record["iou"] = {name: _fraction_or_nan(iou[name], path, f"iou/{name}") for name in CLASS_NAMES}
    return record
