"""Segmentation metrics (mIoU, per-class IoU, Boundary F1, Trimap IoU) as count-then-reduce, on any device.

The metric keys and labels (`metrics.keys`) import without torch; the torch-heavy names below are imported on
first access, so torch-free readers (report/, engine.results_format) can use this package.
"""
from __future__ import annotations

import importlib

from metrics.keys import METRIC_KEYS, METRIC_LABELS, SHORT_LABELS

_LAZY = {name: "metrics.segmentation" for name in ("STAT_KEYS", "SegmentationMetrics", "boundary_f1_per_class",
                                                      "iou_from_confusion", "segmentation_image_stats")}

__all__ = ["METRIC_KEYS", "METRIC_LABELS", "SHORT_LABELS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")
