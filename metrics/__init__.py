"""Segmentation metrics as count-then-reduce: mIoU, per-class IoU, Boundary F1 and Trimap IoU (profiles `default`
and `study`), per-class Boundary IoU, fragments per image; their per-image statistics file; the consensus filter.

The torch-free parts (`metrics.keys`, `metrics.per_image`, `metrics.consensus`) import without torch; the torch
names below load `metrics.segmentation` on first use, so `import metrics.per_image` stays light (report/).
"""
from importlib import import_module

from metrics.keys import METRIC_KEYS, METRIC_LABELS, PROFILES, SHORT_LABELS

_LAZY = {"SegmentationMetrics": "metrics.segmentation", "segmentation_image_stats": "metrics.segmentation",
         "STAT_KEYS": "metrics.segmentation", "count_fragments": "metrics.consensus", "cc_veto": "metrics.consensus",
         "dataset_metrics": "metrics.per_image", "read_per_image": "metrics.per_image",
         "write_per_image": "metrics.per_image", "iou_from_confusion": "metrics.per_image",
         "boundary_f1_per_class": "metrics.per_image"}
__all__ = ["METRIC_KEYS", "METRIC_LABELS", "PROFILES", "SHORT_LABELS", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")
