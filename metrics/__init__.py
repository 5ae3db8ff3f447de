"""Segmentation metrics (mIoU, per-class IoU, Boundary F1, Trimap IoU) as count-then-reduce, on any device."""
from metrics.segmentation import (
    STAT_KEYS,
    SegmentationMetrics,
    boundary_f1_per_class,
    iou_from_confusion,
    segmentation_image_stats,
)

__all__ = ["STAT_KEYS", "SegmentationMetrics", "boundary_f1_per_class", "iou_from_confusion",
           "segmentation_image_stats"]
