"""The metric records: one `Metric` per dataset-level metric, collected in `METRICS`, the one flat ordered
registry that every consumer iterates over (torch-free: report/ imports it without torch).

A record says everything the pipeline needs to know about its metric: the key it is written under
(results.json, metrics.jsonl / W&B as `metrics.keys.val_key(key)`), its labels, its unit, the per-image
statistics its producer computes for a batch (names, shapes, dtypes) and the arrays of the per-image file
(`metrics.per_image`) made from them, the reduction of those arrays to the dataset value (per metrics profile
where the estimators differ), its per-class values when it has them, and how the image bootstrap
(`report.bootstrap`) resamples it. So these consumers never name a metric:

    engine.evaluation, SegmentationMetrics   run every record's producer on each batch
    metrics.per_image                         the file's arrays; `dataset_metrics` reduces every record
    engine.results / results_format           write and check every record's value (and per-class values)
    engine.tracking, train.py                 the W&B row and the epoch line
    report.load / tables / figures / bootstrap  read, tabulate, plot and resample every record

Adding a metric is one function file (its producer and reductions) and one entry of METRICS (docs/extensions.md).
The definitions of the metrics are in their producers' docstrings (`metrics.segmentation` for the first five).

Example:
    >>> from metrics.registry import METRICS, metric
    >>> [m.key for m in METRICS][:2], metric("boundary_iou").label
    (['miou', 'boundary_f1'], 'Boundary IoU')
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module

import numpy as np

from metrics.hausdorff import hd95_dataset, hd95_of_sums, hd95_per_class, hd95_terms
from metrics.reductions import (boundary_f1_scores, boundary_iou_of_sums, boundary_iou_per_class, confusion_sums,
                                identity, image_terms, iou_from_confusion, mean, mean_of_sums, miou_of_sums,
                                nanmean, study_boundary_f1_scores, study_trimap_iou_scores)
from utils.console import pct

# unit -> (how tables and figures show a difference, the factor from the stored value): fractions are stored in
# [0, 1] and shown in percent (differences in percentage points); counts and pixels as they are.
UNITS = {"fraction": ("pp", 100.0), "count": ("count", 1.0), "px": ("px", 1.0)}
UNIT_NOTES = {"fraction": "", "count": "a count", "px": "pixels"}

# A per-image array's shape after the leading image dimension n ("C": the number of classes, "C+1": one more)
# and its numpy dtype kind ("i" integer counts, "f" float64).
ArraySpec = tuple[tuple, str]
Reduce = Callable[[Mapping[str, np.ndarray]], float]


@dataclass(frozen=True)
class Resample:
    """How the image bootstrap recomputes a metric on a draw of images: reduce(Σ_images terms(array)).

    array: the per-image file's array; terms: (n, ...) array -> (n, ...) per-image terms that add up over
    images; reduce: (..., term dims) sums -> (...) the metric's value (vectorised over replicates and runs)."""

    array: str
    terms: Callable[[np.ndarray], np.ndarray]
    reduce: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """One dataset-level metric (see the module docstring for who reads which field).

    key: results.json / metrics.jsonl key; label: tables, figures, consoles; short: train.py's epoch line.
    unit: a key of UNITS ("fraction" values lie in [0, 1]; "count" and "px" are >= 0).
    stats: the per-image statistics its producer returns for a batch, name -> ArraySpec (leading dim N).
    producer: "module:function" computing `stats`, imported on first use (torch lives there): called as
        f(pred, target, num_classes, ignore_index, boundary_px) on the batch's device, or with host=True as
        f(pred, num_classes) on the uint8 prediction copied to the host (on a background thread); returns
        {name: (N, ...) tensor}. Records naming the same producer share one call.
    reduce: per-image arrays -> the dataset value; a {profile: reduce} mapping where the profiles differ.
    resample: the image bootstrap's form (Resample), or {profile: Resample}.
    arrays: the per-image file's arrays it owns, name -> ArraySpec (default: `stats`, stored as they are).
    to_arrays: all records' stats of the images (numpy) -> its `arrays` (default: its stats as they are).
    per_class: results.json key of its per-class values ({class name: value}), or None;
    class_values: per-image arrays -> (C,) float64 per-class values (NaN: undefined) when per_class is set.
    reference: "module:function" of its public per-image reference implementation, if any (exported as
        `metrics.<function>`).
    higher_is_better: False for a metric where lower values are better (fragments, HD95): a panel that sorts
        or reads a difference as a gain uses it.
    """

    key: str
    label: str
    short: str
    unit: str
    stats: Mapping[str, ArraySpec]
    producer: str
    reduce: Reduce | Mapping[str, Reduce]
    resample: Resample | Mapping[str, Resample]
    arrays: Mapping[str, ArraySpec] | None = None
    to_arrays: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    per_class: str | None = None
    class_values: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None
    host: bool = False
    reference: str | None = None
    higher_is_better: bool = True

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"metric {self.key!r}: unknown unit {self.unit!r}; use one of {', '.join(UNITS)}")
        if (self.per_class is None) != (self.class_values is None):
            raise ValueError(f"metric {self.key!r}: per_class and class_values go together")

    @property
    def file_arrays(self) -> Mapping[str, ArraySpec]:
        """The per-image file's arrays this metric owns."""
        return self.arrays if self.arrays is not None else self.stats

    def image_arrays(self, stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All records' per-image stats (numpy) -> this metric's per-image file arrays."""
        if self.to_arrays is not None:
            return self.to_arrays(stats)
        return {name: stats[name] for name in self.stats}

    def value(self, arrays: Mapping[str, np.ndarray], profile: str) -> float:
        """The dataset value of per-image file arrays in a metrics profile."""
        reduce = self.reduce[profile] if isinstance(self.reduce, Mapping) else self.reduce
        return float(reduce(arrays))

    def resampler(self, profile: str) -> Resample:
        return self.resample[profile] if isinstance(self.resample, Mapping) else self.resample

    def load_producer(self) -> Callable:
        """The producer function (imports its module)."""
        module, name = self.producer.split(":")
        return getattr(import_module(module), name)

    @property
    def is_fraction(self) -> bool:
        return self.unit == "fraction"

    @property
    def display(self) -> tuple[str, float]:
        """(unit, factor) in which tables and figures show values and differences: ("pp", 100) for a fraction."""
        return UNITS[self.unit]

    def show(self, value) -> str:
        """A value for a console: percent for a fraction (`utils.console.pct`), else as it is; "n/a" for None or NaN."""
        if self.is_fraction:
            return pct(value)
        return "n/a" if value is None or math.isnan(value) else f"{self.display[1] * value:.2f}"


_SEGMENTATION = "metrics.segmentation:segmentation_image_stats"  # one kernel, five count arrays
_CONFUSION = {"confusion": (("C", "C+1"), "i")}  # rows target class, columns predicted class (+ outside 0..C-1)

METRICS: tuple[Metric, ...] = (
    Metric("miou", "mIoU", "mIoU", "fraction", _CONFUSION, _SEGMENTATION,
           reduce=lambda s: nanmean(iou_from_confusion(s["confusion"].sum(0))),
           resample=Resample("confusion", confusion_sums, miou_of_sums),
           per_class="iou", class_values=lambda s: iou_from_confusion(s["confusion"].sum(0))),
    Metric("boundary_f1", "Boundary F1", "BF1", "fraction",
           {"boundary": (("C", 4), "i"), "study_boundary": (("C", 4), "i")}, _SEGMENTATION,
           arrays={"boundary": (("C", 4), "i"), "boundary_f1": ((), "f"), "study_boundary_f1": ((), "f")},
           to_arrays=lambda s: {"boundary": s["boundary"],
                                "boundary_f1": boundary_f1_scores(s["confusion"], s["boundary"]),
                                "study_boundary_f1": study_boundary_f1_scores(s["confusion"], s["study_boundary"])},
           reduce={"default": lambda s: nanmean(s["boundary_f1"]), "study": lambda s: mean(s["study_boundary_f1"])},
           resample={"default": Resample("boundary_f1", image_terms(skip_nan=True), mean_of_sums),
                     "study": Resample("study_boundary_f1", image_terms(skip_nan=False), mean_of_sums)}),
    Metric("trimap_iou", "Trimap IoU", "Trimap", "fraction", {"trimap_confusion": (("C", "C+1"), "i")}, _SEGMENTATION,
           arrays={"trimap_confusion": (("C", "C+1"), "i"), "study_trimap_iou": ((), "f")},
           to_arrays=lambda s: {"trimap_confusion": s["trimap_confusion"],
                                "study_trimap_iou": study_trimap_iou_scores(s["trimap_confusion"])},
           reduce={"default": lambda s: nanmean(iou_from_confusion(s["trimap_confusion"].sum(0))),
                   "study": lambda s: mean(s["study_trimap_iou"])},
           resample={"default": Resample("trimap_confusion", confusion_sums, miou_of_sums),
                     "study": Resample("study_trimap_iou", image_terms(skip_nan=False), mean_of_sums)}),
    Metric("boundary_iou", "Boundary IoU", "BIoU", "fraction", {"boundary_iou": (("C", 2), "i")}, _SEGMENTATION,
           reduce=lambda s: nanmean(boundary_iou_per_class(s)),
           resample=Resample("boundary_iou", identity, boundary_iou_of_sums),
           per_class="boundary_iou_per_class", class_values=boundary_iou_per_class),
    Metric("fragments_per_image", "Fragments / image", "frag/img", "count", {"fragments": ((), "i")},
           "metrics.segmentation:fragment_stats", host=True, higher_is_better=False,
           reduce=lambda s: mean(s["fragments"].astype(np.float64)),
           resample=Resample("fragments", image_terms(skip_nan=False), mean_of_sums)),
    Metric("hd95", "HD95", "HD95", "px", {"hd95": (("C",), "f"), "hd95_excluded": ((), "i")},
           "metrics.hausdorff:hd95_image_stats", reduce=hd95_dataset,
           resample=Resample("hd95", hd95_terms, hd95_of_sums),
           per_class="hd95_per_class", class_values=hd95_per_class, reference="metrics.hausdorff:hd95",
           higher_is_better=False),
)


def metric(key: str) -> Metric:
    """The record of a metric key; a KeyError lists the valid keys."""
    for m in METRICS:
        if m.key == key:
            return m
    raise KeyError(f"unknown metric {key!r}; valid metrics: {', '.join(m.key for m in METRICS)}")


def stat_specs(host: bool | None = None) -> dict[str, ArraySpec]:
    """Every per-image statistic the producers return, name -> ArraySpec, in METRICS order (host=True / False:
    only those computed on the host / on the device)."""
    return {name: spec for m in METRICS if host is None or m.host == host for name, spec in m.stats.items()}


def producers(host: bool) -> list[Callable]:
    """The distinct producer functions of the records computed on the host (True) or the device (False)."""
    return [m.load_producer() for m in {m.producer: m for m in METRICS if m.host == host}.values()]
