"""The `<checkpoint>.results.json` format and its one validating reader, in plain JSON (no torch, no training code).

evaluate.py (`--all`: is a checkpoint's results file valid?) and aggregate.py (`report.load`) read results files
through `read_results`, so both accept and refuse the same files; `engine.results.write_results` writes them.

Format (one JSON object; every metric record of `metrics.registry` under its key, and its per-class values under
its `per_class` key: fractions in [0, 1], counts and pixels >= 0; NaN is written as null):

    {"variant": "C", "seed": 42, "epoch": 160, "checkpoint": "RUN/checkpoints/epoch_0160",
     "split": "val", "num_images": 500, "images_digest": "3f1c...", "metrics_profile": "default", "miou": 0.8123,
     "boundary_f1": 0.7012, "trimap_iou": 0.6521, "boundary_iou": 0.4567, "fragments_per_image": 212.4,
     "iou": {"road": 0.98, ..., "bicycle": 0.77}, "boundary_iou_per_class": {"road": 0.61, ...},
     "classes": ["road", ..., "bicycle"], "seconds": 41.3,
     "lambda_dice": 1.0, "lambda_boundary": 0.2, "loss": {"ce": 1.0, "dice": 1.0, "boundary": 0.2},
     "backbone": "convnextv2_base", "boundary_px": 3, "checkpoint_saved_at": "2025-...", "config": {...}}

`variant` is the loss label (TrainConfig.loss_label: "C", or a --loss recipe's "ce+0.5·lovasz"), what aggregate.py
groups by; `loss` (optional: absent before recipes existed) the recipe {term: weight} trained with; lambda_dice /
lambda_boundary the recipe's dice / boundary weights (the flags' values when it has no such term). `images_digest`
(optional: absent in older files) fingerprints the evaluated images' names (`metrics.per_image.names_digest`):
evaluate.py --all redoes results whose per-image file is over other images.

Required: the keys of REQUIRED_KEYS. `classes` (optional: files written before it existed lack it) lists the
dataset's class names in train-id order (its `data_utils.classes.ClassTable`); `iou` (and
`boundary_iou_per_class`) map class names to values; a class without a value (null, or left out) is one that
never occurred. `boundary_f1` and `trimap_iou` are the estimators of `metrics_profile` (metrics.keys.PROFILES;
definitions in metrics.segmentation). Files written before the profiles, Boundary IoU and fragments existed
lack those keys: they read as profile "default" with NaN for the missing metrics. Every results file has
its per-image statistics beside it (metrics.per_image.per_image_path). `config` (optional) is the run's resolved
TrainConfig; `boundary_schedule_of` reads from it which λ_b schedule the run trained with.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from losses.schedule import SCHEDULE_PARAMS  # the λ_b schedules and their TrainConfig fields (torch-free)
from metrics.keys import PROFILES
from metrics.registry import METRICS
from utils.fileio import UserError

RESULTS_SUFFIX = ".results.json"
CONSENSUS_TAG = ".consensus."  # <checkpoint>.consensus.<veto run>.results.json: engine.consensus, not a run's own
REQUIRED_KEYS = ("variant", "seed", "epoch", "checkpoint", "split", "num_images", "miou", "boundary_f1",
                 "trimap_iou", "iou", "seconds", "lambda_dice", "lambda_boundary")
_REDO = "delete it and re-run evaluate.py (evaluate.py --all RUNS_DIR redoes it automatically)"


def results_path(checkpoint: str | Path) -> Path:
    """RUN/checkpoints/epoch_0010 -> RUN/checkpoints/epoch_0010.results.json (beside, not inside)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + RESULTS_SUFFIX)


def consensus_path(checkpoint: str | Path, veto_run: str, suffix: str = RESULTS_SUFFIX) -> Path:
    """RUN/checkpoints/epoch_0010, "B_seed42" -> RUN/checkpoints/epoch_0010.consensus.B_seed42.results.json (or
    another `suffix`, e.g. the per-image file's)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.name}{CONSENSUS_TAG}{veto_run}{suffix}")


INFERENCE_TAG = ".inference."  # <checkpoint>.inference.<mode tag>.results.json: evaluate.py --flip/--scales/--slide


def inference_path(checkpoint: str | Path, tag: str, suffix: str = RESULTS_SUFFIX) -> Path:
    """The results file of `checkpoint` evaluated in inference mode `tag` (engine.inference.Inference.tag):
    results_path(checkpoint) for "whole" (the study's protocol), else
    RUN/checkpoints/epoch_0010.inference.whole-flip-ms0.5,1,1.5.results.json (or another `suffix`, e.g. the
    per-image file's)."""
    checkpoint = Path(checkpoint)
    if tag == "whole":
        return checkpoint.with_name(checkpoint.name + suffix)
    return checkpoint.with_name(f"{checkpoint.name}{INFERENCE_TAG}{tag}{suffix}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction_or_nan(value, path: Path, name: str) -> float:
    """null -> NaN (undefined: e.g. a class absent from the split); else a number in [0, 1]."""
    if value is None:
        return math.nan
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{path}: `{name}` = {value!r} is not a fraction in [0, 1] (values are fractions, not "
                        f"percent); {_REDO}")
    return float(value)


def _value_or_nan(value, path: Path, name: str, fraction: bool) -> float:
    """A metric's value: a fraction (`_fraction_or_nan`), else null -> NaN or a number >= 0."""
    if fraction:
        return _fraction_or_nan(value, path, name)
    if value is not None and not (_is_number(value) and value >= 0):
        raise UserError(f"{path}: `{name}` = {value!r} is not a number >= 0; {_REDO}")
    return math.nan if value is None else float(value)


def _per_class(values, classes: list[str], path: Path, name: str, fraction: bool) -> dict[str, float]:
    """{class name: value or null} -> {class name: float (NaN for null)} in `classes` order."""
    if not isinstance(values, dict):
        raise UserError(f"{path}: `{name}` must map class names to values; {_REDO}")
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise UserError(f"{path}: unknown class names in `{name}`: {', '.join(unknown)} (the file's classes: "
                        f"{', '.join(classes)}); {_REDO}")
    return {c: _value_or_nan(values[c], path, f"{name}/{c}", fraction) for c in classes if c in values}


def read_results(path: str | Path) -> dict:
    """Read and validate a results file: the JSON object, with null metric values as NaN (also for the metric
    keys an older file lacks), `metrics_profile` ("default" for an older file), and `iou` (and
    `boundary_iou_per_class`) in `classes` order (only the classes the file lists; the file's order when it has
    no `classes`).

    Raises UserError naming the file when it is missing, not JSON, lacks a required key, or holds a value of
    the wrong type or outside [0, 1].
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such results file; evaluate the checkpoint with evaluate.py") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt results file ({e.msg} at line {e.lineno}); {_REDO}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the results file ({e}); {_REDO}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: a results file holds one JSON object; {_REDO}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise UserError(f"{path}: results file lacks {', '.join(missing)}; {_REDO}")
    for key in ("variant", "checkpoint", "split"):
        if not isinstance(record[key], str) or not record[key]:
            raise UserError(f"{path}: `{key}` = {record[key]!r} is not a non-empty string; {_REDO}")
    for key in ("seed", "epoch", "num_images"):
        if isinstance(record[key], bool) or not isinstance(record[key], int):
            raise UserError(f"{path}: `{key}` = {record[key]!r} is not an integer; {_REDO}")
    for key in ("seconds", "lambda_dice", "lambda_boundary"):
        if not _is_number(record[key]) or not record[key] >= 0:
            raise UserError(f"{path}: `{key}` = {record[key]!r} is not a number >= 0; {_REDO}")
    for m in METRICS:
        record[m.key] = _value_or_nan(record.get(m.key), path, m.key, m.is_fraction)
    record.setdefault("metrics_profile", "default")
    if record["metrics_profile"] not in PROFILES:
        raise UserError(f"{path}: unknown `metrics_profile` {record['metrics_profile']!r} (known: "
                        f"{', '.join(PROFILES)}); {_REDO}")
    iou = record["iou"]
    if not isinstance(iou, dict):
        raise UserError(f"{path}: `iou` must map class names to values; {_REDO}")
    classes = record.get("classes", list(iou))
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"{path}: `classes` must list the class names; {_REDO}")
    for m in METRICS:
        if m.per_class is not None and (m.per_class in REQUIRED_KEYS or m.per_class in record):
            record[m.per_class] = _per_class(record[m.per_class], classes, path, m.per_class, m.is_fraction)
    if "config" in record and not isinstance(record["config"], dict):
        raise UserError(f"{path}: `config` must be the run's config object; {_REDO}")
    return record


def boundary_schedule_of(config: dict, where: str | Path) -> tuple[str, tuple[tuple[str, float], ...]]:
    """(kind, ((parameter, value), ...)) of the λ_b schedule of a run's config (a TrainConfig dict: a results
    record's `config`, or RUN/config.json); ("constant", ()) when it names none (written before schedules
    existed). The parameters are the kind's SCHEDULE_PARAMS fields, in that order.

    Raises UserError naming `where` for an unknown kind or a missing / non-numeric parameter.
    """
    kind = config.get("boundary_schedule", "constant")
    if not isinstance(kind, str) or kind not in SCHEDULE_PARAMS:
        raise UserError(f"{where}: unknown λ_b schedule {kind!r} in the run's config (known: "
                        f"{', '.join(SCHEDULE_PARAMS)}); was it written by a newer version of train.py?")
    params = []
    for name in SCHEDULE_PARAMS[kind]:
        value = config.get(name)
        if not _is_number(value):
            raise UserError(f"{where}: the {kind} λ_b schedule needs a number `{name}` in the run's config, got "
                            f"{value!r}; the file is corrupt")
        params.append((name, float(value)))
    return kind, tuple(params)
