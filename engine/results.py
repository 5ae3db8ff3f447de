"""`<checkpoint>.results.json`: the evaluation of one checkpoint, written atomically beside it.

The format and its one validating reader, `read_results` (used by evaluate.py --all and by aggregate.py), live
in `engine.results_format`, which needs no torch; they are re-exported here. `checkpoint_saved_at` copies the
checkpoint's meta.json `saved_at`, so a results file left from an earlier checkpoint of the same name (a run
resumed from an older epoch rewrites it) is recognised as stale by evaluate.py.
"""
from __future__ import annotations

from pathlib import Path

from data_utils.labels import CLASS_NAMES
from engine.checkpoint import read_meta
from engine.config import TrainConfig, config_to_dict
from engine.results_format import METRIC_KEYS, REQUIRED_KEYS, RESULTS_SUFFIX, read_results, results_path
from utils.fileio import atomic_write_json

__all__ = ["METRIC_KEYS", "REQUIRED_KEYS", "RESULTS_SUFFIX", "read_results", "results_path", "write_results"]


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

