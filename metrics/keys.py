"""The global metrics' result keys and display labels: the one list results files, W&B keys, train.py's
console line, evaluate.py and the reports go by (no torch here). A new global metric is one entry of each."""
from __future__ import annotations

METRIC_KEYS = ("miou", "boundary_f1", "trimap_iou")  # keys of SegmentationMetrics.compute() and results.json
METRIC_LABELS = {"miou": "mIoU", "boundary_f1": "Boundary F1", "trimap_iou": "Trimap IoU"}
SHORT_LABELS = {"miou": "mIoU", "boundary_f1": "BF1", "trimap_iou": "Trimap"}  # train.py's epoch line
