"""Segmentation metrics as count-then-reduce: mIoU, per-class IoU, Boundary F1 and Trimap IoU (profiles `default`
and `study`), per-class Boundary IoU, fragments per image, ...: one record per metric in `metrics.registry`;
their per-image statistics file; the consensus filter.

The torch-free parts (`metrics.registry`, `metrics.keys`, `metrics.per_image`, `metrics.reductions`,
`metrics.consensus`) import without torch; the torch names below load `metrics.segmentation` on first use, so
`import metrics.per_image` stays light (report/). A record's public per-image reference function (its
`reference`, e.g. `metrics.hd95`) is a name of this package too.
"""
from importlib import import_module

from metrics.keys import METRIC_KEYS, METRIC_LABELS, PROFILES, SHORT_LABELS
from metrics.registry import METRICS, Metric, metric

_LAZY = {"SegmentationMetrics": "metrics.segmentation", "segmentation_image_stats": "metrics.segmentation",
         "count_fragments": "metrics.consensus", "cc_veto": "metrics.consensus",
         "fragments_per_class": "metrics.consensus", "majority_vote": "metrics.consensus",
         "agreement_map": "metrics.consensus",
         "dataset_metrics": "metrics.per_image", "read_per_image": "metrics.per_image",
         "write_per_image": "metrics.per_image", "iou_from_confusion": "metrics.reductions",
         "boundary_f1_per_class": "metrics.reductions"}
_REFERENCES = {m.reference.split(":")[1]: m.reference for m in METRICS if m.reference}
__all__ = ["METRICS", "METRIC_KEYS", "METRIC_LABELS", "Metric", "PROFILES", "SHORT_LABELS", "metric",
           *sorted(_LAZY), *sorted(_REFERENCES)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _REFERENCES:
        module, function = _REFERENCES[name].split(":")
        return getattr(import_module(module), function)
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")
