"""Views of the metric records (`metrics.registry.METRICS`, which owns every metric's name, label and unit) and
the metrics.jsonl / W&B key rules. Torch-free: engine.config, engine.results_format and report/ import it.

METRIC_KEYS are the results.json / metrics.jsonl keys of the dataset-level metrics, in registry order;
FRACTION_KEYS those in [0, 1], COUNT_KEYS the counts. PROFILES are the estimators of Boundary F1 and Trimap IoU
that `SegmentationMetrics(profile=...)` reports (a record's reduce and resample may differ per profile).
"""
from metrics.registry import METRICS

METRIC_KEYS = tuple(m.key for m in METRICS)
FRACTION_KEYS = tuple(m.key for m in METRICS if m.unit == "fraction")
COUNT_KEYS = tuple(m.key for m in METRICS if m.unit == "count")
METRIC_LABELS = {m.key: m.label for m in METRICS}
SHORT_LABELS = {m.key: m.short for m in METRICS}  # train.py's epoch line
PROFILES = ("default", "study")


def val_key(metric: str) -> str:
    """The metrics.jsonl / W&B key of a global validation metric (engine.tracking.val_metrics_row): "val/miou"."""
    return f"val/{metric}"


def val_iou_key(class_name: str) -> str:
    """The metrics.jsonl / W&B key of a class's validation IoU: "val/iou/road"."""
    return f"val/iou/{class_name}"
