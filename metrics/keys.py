"""The global metrics' result keys and display labels: the one list results files, W&B keys, train.py's
console line, evaluate.py and the reports go by (no torch here). A new global metric is one entry of each."""
from __future__ import annotations

METRIC_KEYS = ("miou", "boundary_f1", "trimap_iou")  # keys of SegmentationMetrics.compute() and results.json
METRIC_LABELS = {"miou": "mIoU", "boundary_f1": "Boundary F1", "trimap_iou": "Trimap IoU",
                 "boundary_iou": "Boundary IoU", "fragments_per_image": "fragments per image"}
COUNT_METRICS = ("fragments_per_image",)  # metrics that are counts; every other one is a fraction in [0, 1]
SHORT_LABELS = {"miou": "mIoU", "boundary_f1": "BF1", "trimap_iou": "Trimap"}  # train.py's epoch line
