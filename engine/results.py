"""`<checkpoint>.results.json` and `<checkpoint>.per_image.npz`: the evaluation of one checkpoint, written
atomically beside it.

The format and its one validating reader, `read_results` (used by evaluate.py --all and by aggregate.py), live
in `engine.results_format`, which needs no torch; they are re-exported here. `checkpoint_saved_at` copies the
checkpoint's meta.json `saved_at`, so a results file left from an earlier checkpoint of the same name (a run
resumed from an older epoch rewrites it) is recognised as stale by evaluate.py.
"""
from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

from engine.checkpoint import read_meta
from engine.config import TrainConfig, config_to_dict
from engine.results_format import REQUIRED_KEYS, RESULTS_SUFFIX, read_results, results_path
from metrics.keys import METRIC_KEYS
from metrics.per_image import names_digest, per_image_path, write_per_image
from metrics.registry import METRICS
from utils.console import pct, plural
from utils.fileio import atomic_write_json

__all__ = ["METRIC_KEYS", "REQUIRED_KEYS", "RESULTS_SUFFIX", "batch_table", "checkpoint_table", "metrics_table",
           "per_image_path", "read_results", "results_path", "write_results"]


def write_results(path: str | Path, metrics: dict, *, cfg: TrainConfig, epoch: int, checkpoint: str | Path,
                  split: str, seconds: float, boundary_px: int = 3, per_image_file: str | Path | None = None,
                  extra: dict | None = None) -> dict:
    """Write the results file for `metrics` (SegmentationMetrics.compute(); the names of its per-class IoU are
    its "classes", as evaluate_model gives them, else those of `cfg`'s class table) atomically; returns the record.

    Args:
        path: the results file (`results_path(checkpoint)`); the per-image file goes to
            `per_image_path(checkpoint)`.
        metrics: `engine.evaluation.evaluate_model`'s dict (SegmentationMetrics.compute() + "per_image").
        cfg: the checkpoint's resolved config (loss, seed, lambdas, backbone, the full config).
        epoch: epochs trained when the checkpoint was saved.
        checkpoint: the checkpoint folder (its meta.json, if present, dates the results).
        split: the evaluated split; seconds: wall time of the evaluation.
        per_image_file: where the per-image statistics go (default `per_image_path(checkpoint)`).
        extra: more keys for the record (e.g. engine.consensus's "consensus" object).
    """
    if "classes" in metrics:
        classes = list(metrics["classes"])
    else:
        from engine.setup import class_table  # lazy: torch, models
        classes = list(class_table(cfg).names)
    iou = list(metrics["iou"])
    if len(iou) != len(classes):
        raise ValueError(f"metrics['iou'] has {plural(len(iou), 'value')}, expected one per class of {classes}")
    meta = read_meta(checkpoint) or {}
    # first: a results file implies its stats
    write_per_image(per_image_file or per_image_path(checkpoint), metrics["per_image"])
    record = {
        "variant": cfg.loss_label,
        "seed": cfg.seed,
        "epoch": int(epoch),
        "checkpoint": str(checkpoint),
        "split": split,
        "num_images": int(metrics["num_images"]),
        "images_digest": names_digest(metrics["per_image"]["names"]),  # which images: evaluate.py --all checks it
        "metrics_profile": metrics["metrics_profile"],
        **{m.key: float(metrics[m.key]) for m in METRICS},
        **{m.per_class: {name: float(value) for name, value in zip(classes, metrics[m.per_class])}
           for m in METRICS if m.per_class is not None},  # "iou", "boundary_iou_per_class", ...
        "classes": classes,
        "seconds": round(float(seconds), 3),
        "lambda_dice": cfg.loss_weights.get("dice", cfg.lambda_dice),
        "lambda_boundary": cfg.loss_weights.get("boundary", cfg.lambda_boundary),
        "loss": cfg.loss_weights,
        "backbone": cfg.backbone,
        "boundary_px": boundary_px,
        "checkpoint_saved_at": meta.get("saved_at"),
        "config": config_to_dict(cfg),
        **(extra or {}),
    }
    atomic_write_json(path, record)  # NaN (a class absent from the split) becomes null
    return record


def metrics_table(columns: dict[str, dict], title: str, caption: str | None = None, prefix: str = "") -> Table:
    """The console table of validation metrics that train.py (at the end) and evaluate.py print.

    One row per metric record (`metrics.registry.METRICS`: fractions in percent, other units as they are, the unit
    in the label), then the IoU of each class
    (the classes of the `<prefix>iou/<class>` keys, in their order); one column per entry of `columns`, header ->
    a flat metrics dict with the keys `<prefix>miou`, ..., `<prefix>iou/<class>` (metrics.jsonl's rows with
    prefix "val/"). A missing, None or NaN value (nothing to average, e.g. a class absent from the split) shows
    as n/a.

    Example:
        >>> metrics_table({"last (epoch 8)": rows[-1]}, "C_seed42: validation metrics (%)", prefix="val/")
    """
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    for header in columns:
        table.add_column(header, justify="right")
    class_keys = dict.fromkeys(k[len(prefix):] for column in columns.values() for k in column
                               if k.startswith(f"{prefix}iou/"))  # ordered, each once
    for m in METRICS:
        unit = "" if m.is_fraction else f" ({m.display[0]})"
        table.add_row(m.label + unit, *(m.show(column.get(prefix + m.key)) for column in columns.values()))
    for key in class_keys:
        values = [column.get(prefix + key) for column in columns.values()]
        table.add_row(f"  IoU {key[4:]}", *map(pct, values))
    return table


def checkpoint_table(record: dict) -> Table:
    """One checkpoint's results record (write_results) as `metrics_table`: evaluate.py's one-checkpoint table."""
    ckpt = Path(record["checkpoint"])
    flat = {**record, **{f"iou/{name}": value for name, value in record["iou"].items()}}
    return metrics_table({"%": flat}, f"{ckpt.parent.parent.name}/{ckpt.name} on {record['split']}",
                         caption=f"{plural(record['num_images'], 'image')}, {record['seconds']:.1f} s, metrics profile "
                                 f"{record.get('metrics_profile', 'default')}")


def batch_table(records: list[dict], runs_dir: Path) -> Table:
    """evaluate.py --all's table, one row per checkpoint: its run (folder below `runs_dir`, wrapped, never cut, in
    a narrow terminal), epoch and metrics."""
    table = Table(title=f"evaluated checkpoints under {runs_dir} (%)")
    table.add_column("run", overflow="fold")
    for column in ("variant", "seed", "epoch", *(m.short for m in METRICS if m.is_fraction), "s"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in records:
        run = os.path.relpath(Path(r["checkpoint"]).parent.parent, runs_dir)  # RUN/checkpoints/epoch_XXXX
        table.add_row(run, r["variant"], str(r["seed"]), str(r["epoch"]), *(m.show(r[m.key]) for m in METRICS if m.is_fraction),
                      f"{r['seconds']:.1f}")
    return table
