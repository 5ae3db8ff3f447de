"""The original study's metric and consensus API on top of the toolkit's, for code and tests ported from it.

The study (guillaume-cassez/city-scape, v0.2.2, MIT; `reference/README.md`) ships `src.metrics.SegmentationMetrics`,
`src.metrics.segmentation_metrics.compute_boundary_f1 / compute_trimap_iou / _interclass_boundaries` and
`src.postprocessing.consensus.cc_veto / count_fragments / majority_vote / agreement_map`. Its tests, pointed at
this module (only their import lines changed), run against the toolkit. Every name here is a thin adapter: the
definitions live in the toolkit (`metrics.consensus`, `metrics.segmentation`'s "study" profile) and are written
there once. What differs in the names, and nothing else:

| the study | the toolkit |
|---|---|
| `cc_veto(..., protect_classes=THIN_CLASSES)` (default: train ids 4-7) | `metrics.consensus.cc_veto(..., protect=())` |
| `count_fragments(m)` -> {class: components} of the classes present | `fragments_per_class(m, C)` (C,) array; `count_fragments(m, C)` their sum |
| `majority_vote(preds)`, `agreement_map(preds)` (C = 19 by default) | `metrics.consensus.majority_vote / agreement_map` (C required) |
| `SegmentationMetrics().update(logits (N, C, H, W) or labels, target)` | `update(labels (N, H, W), target)` |
| `compute()["mIoU"]`, `["per_class_iou"]` {c: IoU, 0 where U_c = 0}; mIoU 0 on nothing | `compute()["miou"]`, `["iou"]` (NaN where U_c = 0; mIoU NaN on nothing) |
| `compute_boundary_f1(pred, target, distance)["boundary_f1"]` (one image) | profile "study", `boundary_px=distance` |
| `compute_trimap_iou(pred, target, width=w)["trimap_mIoU"]` (one image) | profile "study", `boundary_px=w`, "trimap_iou" |

Only 8-connectivity is supported (`connectivity=4` is refused), and `compute_boundary_f1` returns
"boundary_f1" only (not the study's mean precision / recall). docs/metrics.md ("Porting from the study").
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from data_utils.labels import CITYSCAPES
from data_utils.labels import THIN_CLASSES as THIN_CLASS_NAMES
from metrics import consensus
from metrics.band import interclass_contour
from metrics.segmentation import SegmentationMetrics as _ToolkitMetrics
from utils.conventions import IGNORE_INDEX

# The study's protected train ids: Cityscapes' fence, pole, traffic light, traffic sign (4, 5, 6, 7).
THIN_CLASSES = tuple(CITYSCAPES.names.index(name) for name in THIN_CLASS_NAMES)
STUDY_NUM_CLASSES = 19  # the study's default C (Cityscapes)


def _check_connectivity(connectivity: int) -> None:
    if connectivity != 8:
        raise ValueError(f"connectivity={connectivity}: the toolkit's components are 8-connected; use 8")


def count_fragments(label_map: np.ndarray, num_classes: int = STUDY_NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
                    connectivity: int = 8) -> dict[int, int]:
    """{class: number of 8-connected components} of the classes present in `label_map`
    (`metrics.consensus.fragments_per_class`); `ignore_index` is accepted for the study's signature (values
    outside 0..C-1 count for no class)."""
    _check_connectivity(connectivity)
    label_map = np.asarray(label_map)
    counts = consensus.fragments_per_class(label_map, num_classes)
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts)}


def cc_veto(primary: np.ndarray, veto: np.ndarray, num_classes: int = STUDY_NUM_CLASSES, connectivity: int = 8,
            max_drop_size: int | None = None, protect_classes: Sequence[int] = THIN_CLASSES,
            reassign: str = "veto", ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """`metrics.consensus.cc_veto` with the study's argument names and its default protection of THIN_CLASSES."""
    _check_connectivity(connectivity)
    return consensus.cc_veto(primary, veto, num_classes, protect=tuple(protect_classes),
                             max_drop_size=max_drop_size, reassign=reassign, ignore_index=ignore_index)


def majority_vote(preds: Sequence[np.ndarray], num_classes: int = STUDY_NUM_CLASSES,
                  ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """`metrics.consensus.majority_vote` with the study's default C."""
    return consensus.majority_vote(preds, num_classes, ignore_index)


def agreement_map(preds: Sequence[np.ndarray], num_classes: int = STUDY_NUM_CLASSES) -> np.ndarray:
    """`metrics.consensus.agreement_map` with the study's default C."""
    return consensus.agreement_map(preds, num_classes)


class SegmentationMetrics(_ToolkitMetrics):
    """The toolkit's `metrics.segmentation.SegmentationMetrics` (profile "study") with the study's defaults and
    calls: `update` also takes logits (N, C, H, W) (their argmax over C is the prediction), and `compute` adds
    the study's keys "mIoU" and "per_class_iou" ({class: IoU}, 0 where the class has no pixel; mIoU 0 when no
    class has one) to the toolkit's."""

    def __init__(self, num_classes: int = STUDY_NUM_CLASSES, ignore_index: int = IGNORE_INDEX, **kwargs):
        kwargs.setdefault("profile", "study")
        super().__init__(num_classes, ignore_index, **kwargs)

    def update(self, pred: torch.Tensor, target: torch.Tensor, names: Sequence[str] | None = None) -> None:
        if pred.dim() == 4:
            pred = pred.argmax(dim=1)
        super().update(pred, target, names)

    def compute(self) -> dict:
        result = super().compute()
        iou = [0.0 if math.isnan(v) else float(v) for v in result["iou"]]
        result["mIoU"] = 0.0 if math.isnan(result["miou"]) else float(result["miou"])
        result["per_class_iou"] = dict(enumerate(iou))
        return result


def _one_image_metrics(pred, target, num_classes: int, ignore_index: int, boundary_px: int) -> dict:
    metric = SegmentationMetrics(num_classes, ignore_index, boundary_px=boundary_px)
    metric.update(torch.as_tensor(np.asarray(pred))[None], torch.as_tensor(np.asarray(target))[None])
    return metric.compute()


def compute_boundary_f1(pred: np.ndarray, target: np.ndarray, distance: int = 3,
                        num_classes: int = STUDY_NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """{"boundary_f1": the study profile's Boundary F1 of one (H, W) image} (`metrics.segmentation`)."""
    value = _one_image_metrics(pred, target, num_classes, ignore_index, distance)["boundary_f1"]
    return {"boundary_f1": 0.0 if math.isnan(value) else float(value)}


def compute_trimap_iou(pred: np.ndarray, target: np.ndarray, num_classes: int = STUDY_NUM_CLASSES, width: int = 3,
                       ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """{"trimap_mIoU": the study profile's Trimap IoU of one (H, W) image} (`metrics.segmentation`)."""
    value = _one_image_metrics(pred, target, num_classes, ignore_index, width)["trimap_iou"]
    return {"trimap_mIoU": 0.0 if math.isnan(value) else float(value)}


def _interclass_boundaries(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) bool: the Trimap IoU contour of `metrics.segmentation` (a pixel whose 4-neighbour inside the image
    holds a different label, neither being `ignore_index`)."""
    label = np.asarray(label)
    return interclass_contour(label, label != ignore_index)
