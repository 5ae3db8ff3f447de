"""The names of the dataset-level metrics, owned here (torch-free: engine.config, engine.results_format and
report/ import it without torch). A new global metric is one entry of each table below.

METRIC_KEYS are the results.json / metrics.jsonl keys of the global metrics (definitions in
`metrics.segmentation`); every one but `fragments_per_image` (a count) is a fraction in [0, 1].
PROFILES are the estimators of Boundary F1 and Trimap IoU that `SegmentationMetrics(profile=...)` reports.
"""
METRIC_KEYS = ("miou", "boundary_f1", "trimap_iou", "boundary_iou", "fragments_per_image")
FRACTION_KEYS = ("miou", "boundary_f1", "trimap_iou", "boundary_iou")
COUNT_KEYS = ("fragments_per_image",)
METRIC_LABELS = {"miou": "mIoU", "boundary_f1": "Boundary F1", "trimap_iou": "Trimap IoU",
                 "boundary_iou": "Boundary IoU", "fragments_per_image": "Fragments / image"}
SHORT_LABELS = {"miou": "mIoU", "boundary_f1": "BF1", "trimap_iou": "Trimap", "boundary_iou": "BIoU",
                "fragments_per_image": "frag/img"}  # train.py's epoch line
PROFILES = ("default", "study")


def val_key(metric: str) -> str:
    """The metrics.jsonl / W&B key of a global validation metric (engine.tracking.val_metrics_row): "val/miou"."""
    return f"val/{metric}"


def val_iou_key(class_name: str) -> str:
    """The metrics.jsonl / W&B key of a class's validation IoU: "val/iou/road"."""
    return f"val/iou/{class_name}"
