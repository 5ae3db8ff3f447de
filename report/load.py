"""Read evaluation results into one flat list of `Record`s, and index them as a `Study`.

Two sources, one shape:
  - a runs tree: every `*.results.json` below RUNS_DIR (what `evaluate.py` writes beside each checkpoint), read
    by `engine.results_format.read_results` (plain JSON, no torch: the reader evaluate.py uses);
  - a tidy CSV, one row per (variant, seed, epoch): columns `variant, seed, epoch, mIoU, boundary_f1_mean,
    trimap_mIoU_mean` and optional per-class IoU columns named by class (every other column: `road`, ...,
    `bicycle` for Cityscapes) — the format of the original study's released per-run files.
The classes are the dataset's: the names a results file records (its `classes`), or the CSV's class columns.
All metric values are fractions in [0, 1]; a per-class IoU may be missing (NaN: the class never occurred).

Everything downstream is keyed by `Record.group`, not by the variant: `Grouping` is the single place that decides
which runs are aggregated together: one group per variant and λ_b schedule ("C", "C steal"), split further where
λ_b or the schedule's parameters differ among those runs (a λ_b sweep: "C λb=0.05", "C λb=0.2"). A run with a
head other than the study's UPerNet (train.py --head) carries it in its variant ("C segformer"), so the heads of
one variant are never pooled and the study's variant comparisons stay UPerNet's.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.progress import track

from engine.results_format import CONSENSUS_TAG, INFERENCE_TAG, RESULTS_SUFFIX, boundary_schedule_of, read_results
from losses.variants import LAMBDA_BOUNDARY
from metrics.keys import METRIC_LABELS, val_iou_key, val_key
from metrics.per_image import PER_IMAGE_SUFFIX, per_image_path, read_per_image, stale_value, subset
from metrics.registry import METRICS as RECORDS
from metrics.registry import UNIT_NOTES, metric
from models.heads import DEFAULT_HEAD
from utils import UserError
from utils.cli import shell_command
from utils.console import noun_for, plural
from utils.jsonl import METRICS_JSONL, read_epoch_rows

CSV_METRIC_COLUMNS = {"mIoU": "miou", "boundary_f1_mean": "boundary_f1", "trimap_mIoU_mean": "trimap_iou"}
# The global metrics of the tables and curves: the study's three, the ones both sources (results files and the
# study's CSVs) hold. The image bootstrap (report.bootstrap.PROFILE_METRICS) covers the others too.
METRICS = tuple(CSV_METRIC_COLUMNS.values())

# Estimators other than the toolkit's (metrics/), by the short name shown beside a metric's label wherever a report
# prints it, -> the one-line caveat under the tables, on the console and in the figures.
STUDY_V010 = "study's v0.1.0 estimator"
ESTIMATOR_CAVEATS = {
    STUDY_V010: "computed by the original study's first (v0.1.0) estimator, which measured only the road-vs-rest "
                "contour and which the study itself retracted: not comparable to the toolkit's or the study's "
                "corrected values (reference/README.md)",
}
# ... -> the tag a W&B key of such a metric carries (`Study.key`): "boundary_f1_study_v0_1_0" (no dots, which
# W&B reads as nesting, no spaces).
ESTIMATOR_KEY_TAGS = {STUDY_V010: "study_v0_1_0"}
# Known tidy CSVs (SHA-256 of the file's bytes, line ends as \n) whose metric columns come from such an estimator:
# digest -> {metric: name}. reference/pilot_results.csv: its boundary columns are v0.1.0's (its mIoU is sound);
# pilot_results_official.csv, not listed, holds the study's corrected per-class values.
CSV_ESTIMATORS = {
    "586d68f86b3453fc36919e7a563d8a2c9c2b74ef832f0ee79612ea0f405030c5": {"boundary_f1": STUDY_V010,
                                                                         "trimap_iou": STUDY_V010},
}


def metric_unit(key: str) -> tuple[str, float]:
    """(unit, factor) in which the tables and figures show a metric's differences (its record's `display`):
    ("pp", 100) for a fraction, ("count", 1) for a count, ("px", 1) for pixels."""
    return metric(key).display


def unit_notes(keys) -> str:
    """"Fragments / image: a count, ...": the metrics among `keys` that are not fractions, for a table's note."""
    return ", ".join(f"{metric(k).label}: {UNIT_NOTES[metric(k).unit]}" for k in keys if not metric(k).is_fraction)


@dataclass(frozen=True)
class Record:
    """The evaluation of one checkpoint: one (variant, seed, epoch)."""

    variant: str  # the loss (results' `variant`), then the head when it is not the study's ("C segformer")
    seed: int
    epoch: int
    metrics: dict[str, float]  # METRICS (and from a results file every record of metrics.registry) -> value
    iou: dict[str, float]  # class name -> fraction (NaN: class absent); empty when the source has none
    source: str  # "file" or "file:line", for error messages
    lambda_boundary: float | None = None  # None when the source does not say (the tidy CSV)
    split: str | None = None
    boundary_schedule: str = "constant"  # the run's λ_b schedule (config.boundary_schedule; the CSV: constant)
    schedule_params: tuple[tuple[str, float], ...] = ()  # its parameters (losses.schedule.SCHEDULE_PARAMS)
    group: str = ""  # set by assign_groups
    metrics_profile: str | None = None  # "default" / "study" (metrics.keys.PROFILES); None: the source does not say
    inference: str = "whole"  # the inference mode's tag (engine.inference.Inference.tag); older files: whole
    estimators: tuple[tuple[str, str], ...] = ()  # (metric, ESTIMATOR_CAVEATS name) where not the toolkit's
    # per-class values of every metrics.registry record that has them and the source holds: metric key -> class
    # name -> value (the IoU's are `iou` too); the viewer's per-class panel reads them
    class_values: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def from_history(self) -> bool:
        """A train.py evaluation read from the run's metrics.jsonl (`load_history`), not from a results file."""
        return f"{METRICS_JSONL}:" in Path(self.source).name

    @property
    def setting(self) -> "RunSetting":
        return RunSetting(self.variant, self.lambda_boundary, self.boundary_schedule, self.schedule_params)


# ---------------------------------------------------------------------------------------------------- readers
def _fraction(value, where: str, name: str, allow_nan: bool) -> float:
    """Parse one metric value; None / "" / "nan" mean NaN (allowed only where `allow_nan`)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan")):
        if allow_nan:
            return float("nan")
        raise UserError(f"{where}: `{name}` is empty; every run needs all three global metrics")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: `{name}` = {value!r} is not a number") from None
    if math.isnan(x) and allow_nan:
        return x
    if not 0.0 <= x <= 1.0:
        raise UserError(f"{where}: `{name}` = {x} is outside [0, 1]; values must be fractions, not percent")
    return x


def _int(value, where: str, name: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise UserError(f"{where}: `{name}` = {value!r} is not an integer") from None


def report_variant(variant: str, config: dict | None) -> str:
    """The variant a run is reported under: its loss (`variant` as results files and gradient logs write it),
    then its head when that is not the study's UPerNet ("C segformer"). A config without `head` (written before
    train.py --head existed), or none, means UPerNet."""
    head = (config or {}).get("head", DEFAULT_HEAD)
    return variant if head == DEFAULT_HEAD else f"{variant} {head}"


def read_results_file(path: str | Path) -> Record:
    """One `<ckpt>.results.json` -> Record, through the one validating reader evaluate.py uses too
    (`engine.results_format.read_results`). Corrupt or incomplete files, and a global metric that is null
    (undefined for that evaluation), raise UserError naming the file."""
    obj = read_results(path)
    for m in METRICS:
        if math.isnan(obj[m]):
            raise UserError(f"{path}: `{m}` is null (undefined for this evaluation, e.g. no labelled pixel); "
                            "every run needs all three global metrics: re-run `python evaluate.py "
                            "CHECKPOINT` on a labelled split, or move the file out of RUNS_DIR")
    schedule, params = boundary_schedule_of(obj.get("config") or {}, path)
    return Record(
        variant=report_variant(obj["variant"], obj.get("config")),
        seed=obj["seed"],
        epoch=obj["epoch"],
        metrics={m.key: obj[m.key] for m in RECORDS},
        iou=obj["iou"],
        source=str(path),
        lambda_boundary=float(obj["lambda_boundary"]),
        split=obj["split"],
        boundary_schedule=schedule,
        schedule_params=params,
        metrics_profile=obj["metrics_profile"],
        inference=(obj.get("inference") or {}).get("tag", "whole"),
        class_values={m.key: obj[m.per_class] for m in RECORDS if m.per_class and m.per_class in obj},
    )


def _inference_tag_of(path: Path) -> str:
    """The mode tag in a results file's name: <ckpt>.inference.<tag>.results.json, else whole."""
    name = path.name[: -len(RESULTS_SUFFIX)]
    return name.split(INFERENCE_TAG, 1)[1] if INFERENCE_TAG in name else "whole"


def inference_modes(runs_dir: str | Path) -> list[str]:
    """The inference-mode tags of the results files below `runs_dir` (consensus files aside), whole first."""
    tags = {_inference_tag_of(p) for p in Path(runs_dir).rglob(f"*{RESULTS_SUFFIX}") if CONSENSUS_TAG not in p.name}
    return sorted(tags, key=lambda tag: (tag != "whole", tag))


def load_runs_dir(runs_dir: str | Path, inference: str = "whole") -> list[Record]:
    """Every `*.results.json` below `runs_dir` (sorted paths) of inference mode `inference` (engine.inference's
    tag; whole: the study's protocol), consensus files aside, as Records. A file whose record names another mode
    than its file name is refused: one table never mixes inference modes."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: not a directory; pass the folder holding the training runs")
    paths = sorted(p for p in runs_dir.rglob("*.results.json")
                   if CONSENSUS_TAG not in p.name and _inference_tag_of(p) == inference)
    if not paths:
        modes = inference_modes(runs_dir)
        if modes:
            raise UserError(f"{runs_dir}: no results of inference mode {inference!r} below it (modes there: "
                            f"{', '.join(modes)}); pass --inference with one of them, or run evaluate.py with the "
                            "mode's flags")
        raise UserError(f"{runs_dir}: no *.results.json below it; evaluate the checkpoints first "
                        f"(`{shell_command('python', 'evaluate.py', '--all', runs_dir)}`)")
    records = [read_results_file(p) for p in track(paths, description="reading results", transient=True)]
    for record in records:
        if record.inference != inference:
            raise UserError(f"{record.source}: results of inference mode {record.inference!r} among mode "
                            f"{inference!r}'s; a table never mixes modes: rename or move the file (evaluate.py "
                            "names it <ckpt>.inference.<mode>.results.json)")
    return records + (load_history(records) if inference == "whole" else [])


def _number(row: dict, key: str) -> float:
    """A metrics.jsonl value; absent or null (NaN written by utils.jsonl) is NaN."""
    value = row.get(key)
    return float("nan") if value is None else float(value)


def load_history(records: list[Record]) -> list[Record]:
    """train.py's evaluations at the epochs that have no results file, as Records: a run evaluates every
    --eval-every epochs but writes `<ckpt>.results.json` only beside a checkpoint (every --checkpoint-every), so
    without these the curves of the demo (8 epochs, checkpoints at 4 and 8) had 2 points of 8.

    Read from each run's `RUN/metrics.jsonl` (RUN: two levels above a results file, RUN/checkpoints/...), its
    rows with val/<metric> (`metrics.keys.val_key`) and val/iou/<class>; each takes the run's setting (variant,
    seed, λ_b, schedule, split, profile) from the run's newest results record, and only when the run's
    config.json evaluated the same split with the same metrics profile (a checkpoint re-evaluated by evaluate.py
    with other settings keeps its history out). These epochs have no per-image file (no image bootstrap there),
    and of the per-class values only the IoU (the row's; the viewer's per-class panel shows no other there).
    """
    runs: dict[Path, Record] = {}
    for r in sorted(records, key=lambda r: r.epoch):
        path = Path(r.source)
        if path.parent.name == "checkpoints":
            runs[path.parent.parent] = r  # the newest record of each run
    have = {(Path(r.source).parent.parent, r.epoch) for r in records}
    out = []
    for run_dir, template in sorted(runs.items()):
        history, config = run_dir / METRICS_JSONL, run_dir / "config.json"
        if not history.is_file() or not config.is_file():
            continue
        try:
            cfg = json.loads(config.read_text())
            rows = read_epoch_rows(history)
        except (OSError, ValueError):
            continue  # the results files still make the report; the curves just lack these epochs
        if cfg.get("val_split") != template.split or cfg.get("metrics_profile") != template.metrics_profile:
            continue
        for line_no, row in rows:
            epoch = row["epoch"]
            if (run_dir, epoch) in have or any(not isinstance(row.get(val_key(m)), (int, float)) for m in METRICS):
                continue  # not an evaluated epoch, or one with a results file (which wins)
            iou = {c: _number(row, val_iou_key(c)) for c in template.iou}
            out.append(replace(template, epoch=epoch, source=f"{history}:{line_no}",
                               metrics={m.key: _number(row, val_key(m.key)) for m in RECORDS}, iou=iou,
                               class_values={"miou": iou} if iou else {}))  # the row's, not the template's
    return out


def csv_estimators(raw: bytes) -> tuple[tuple[str, str], ...]:
    """A tidy CSV's provenance, as data: (metric, estimator) for the columns a known file (CSV_ESTIMATORS, by the
    SHA-256 of its bytes with \r\n read as \n, so a Windows checkout matches) holds from another estimator."""
    digest = hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()
    return tuple(CSV_ESTIMATORS.get(digest, {}).items())


def load_csv(path: str | Path) -> list[Record]:
    """A tidy CSV (one row per variant, seed, epoch; fractions) -> Records. Per-class columns are optional."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
        header = reader.fieldnames or []
        rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None
    missing = [c for c in ("variant", "seed", "epoch", *CSV_METRIC_COLUMNS) if c not in header]
    if missing:
        raise UserError(f"{path}: CSV lacks the {noun_for(len(missing), 'column')} {', '.join(missing)}; expected "
                        "variant, seed, epoch, mIoU, boundary_f1_mean, trimap_mIoU_mean and optional per-class columns")
    classes = [c for c in header if c not in ("variant", "seed", "epoch", *CSV_METRIC_COLUMNS)]
    estimators = csv_estimators(raw)
    records = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}:{line}"
        if None in row or any(v is None for v in row.values()):
            raise UserError(f"{where}: the row has a different number of fields than the header")
        iou = {c: _fraction(row[c], where, c, allow_nan=True) for c in classes}
        records.append(Record(
            variant=row["variant"].strip(),
            seed=_int(row["seed"], where, "seed"),
            epoch=_int(row["epoch"], where, "epoch"),
            metrics={m: _fraction(row[col], where, col, allow_nan=False) for col, m in CSV_METRIC_COLUMNS.items()},
            iou=iou,
            source=where,
            estimators=estimators,
            class_values={"miou": iou} if classes else {},
        ))
    if not records:
        raise UserError(f"{path}: the CSV has a header but no rows")
    return records


# ---------------------------------------------------------------------------------------------------- grouping
STUDY_LAMBDA_B = LAMBDA_BOUNDARY  # the study's fixed λ_b: the group that stands for a swept variant in its tables


_PARAM_NAMES = {"boundary_start": "start", "boundary_ramp_epochs": "ramp", "steal_delta": "δ",
                "steal_floor": "floor"}  # how a schedule parameter (a TrainConfig field) is shown in a group label


@dataclass(frozen=True)
class RunSetting:
    """What sets a run apart from the other runs of its variant: its λ_b and its λ_b schedule."""

    variant: str
    lambda_boundary: float | None = None  # None: the source does not say (the tidy CSV)
    boundary_schedule: str = "constant"  # losses.schedule.SCHEDULE_KINDS (train.py --boundary-schedule)
    schedule_params: tuple[tuple[str, float], ...] | None = ()  # ((TrainConfig field, value), ...); None: unknown


@dataclass(frozen=True)
class Grouping:
    """The single place that decides which runs are aggregated together, and the label of each group.

    Runs are grouped by variant and λ_b schedule; within one (variant, schedule) a field that takes several
    values among the runs, λ_b (a λ_b sweep) or the schedule's parameters, splits the group and joins its label:

        constant, one λ_b:        "C"                       (the study's groups)
        constant, several λ_b:    "C λb=0.05", "C λb=0.2"  (a λ_b sweep)
        a schedule:               "C steal", "C linear"; "C steal λb=0", "C linear start=0 ramp=10", ... when
                                  λ_b or the parameters (start, ramp, δ, floor) differ among its runs
    Unknown values (None) take no part in deciding what varies and show as "n/a".
    """

    varying: dict[tuple[str, str], frozenset[str]]  # (variant, schedule) -> {"lambda_boundary", "params"} that vary

    @classmethod
    def of(cls, settings, base: "Grouping | None" = None) -> "Grouping":
        """The grouping of `settings` (RunSettings), extending `base` (e.g. the results' grouping, so that the
        gradient logs are grouped as the tables are)."""
        seen: dict[tuple[str, str], dict[str, set]] = {}
        for s in settings:
            fields = seen.setdefault((s.variant, s.boundary_schedule), {"lambda_boundary": set(), "params": set()})
            if s.lambda_boundary is not None:
                fields["lambda_boundary"].add(float(s.lambda_boundary))
            if s.schedule_params is not None:
                fields["params"].add(s.schedule_params)
        varying = dict(base.varying) if base else {}
        for key, fields in seen.items():
            varying[key] = varying.get(key, frozenset()) | {f for f, values in fields.items() if len(values) > 1}
        return cls(varying)

    def label(self, s: RunSetting) -> str:
        """The group of a run: "C", "C λb=0.05", "C steal", "C steal δ=0.02 floor=0.01", ... (see the class)."""
        varying = self.varying.get((s.variant, s.boundary_schedule), frozenset())
        parts = [s.variant] if s.boundary_schedule == "constant" else [s.variant, s.boundary_schedule]
        if "lambda_boundary" in varying:
            parts.append(f"λb={'n/a' if s.lambda_boundary is None else format(s.lambda_boundary, 'g')}")
        if "params" in varying:
            parts += (["params n/a"] if s.schedule_params is None else
                      [f"{_PARAM_NAMES.get(name, name)}={value:g}" for name, value in s.schedule_params])
        return " ".join(parts)

    def key(self, s: RunSetting) -> tuple[str, float | None]:
        """(variant, λ_b) for a group of a λ_b sweep of constant-λ_b runs, (variant, None) for any other group:
        what the λ_b-sweep table and figure and the figures' colour shades go by."""
        swept = "lambda_boundary" in self.varying.get((s.variant, "constant"), frozenset())
        return s.variant, s.lambda_boundary if swept and s.boundary_schedule == "constant" else None

    def order(self, s: RunSetting) -> tuple:
        """Sort key of the groups: by variant; constant λ_b first, by λ_b; then the schedules by name."""
        lam = self.key(s)[1]
        return s.variant, s.boundary_schedule != "constant", -1.0 if lam is None else lam, self.label(s)


def assign_groups(records: list[Record]) -> list[Record]:
    """Label every record with its group (`Grouping`) and refuse two results for one (group, seed, epoch)."""
    grouping = Grouping.of(r.setting for r in records)
    grouped = [replace(r, group=grouping.label(r.setting)) for r in records]
    seen: dict[tuple[str, int, int], Record] = {}
    for r in grouped:
        key = (r.group, r.seed, r.epoch)
        if key in seen:
            raise UserError(f"{r.source}: a second result for variant {r.group} seed {r.seed} epoch {r.epoch}, "
                            f"besides {seen[key].source}; remove one")
        seen[key] = r
    return grouped


# ---------------------------------------------------------------------------------------------------- the index
@dataclass
class Study:
    """All records indexed by (group, epoch, seed), with the grid they are expected to fill.

    groups / seeds / epochs are the sorted unions over all records: a run is expected for every group × seed ×
    epoch, and `missing()` lists the holes.
    """

    records: list[Record]
    groups: list[str] = field(init=False)
    seeds: list[int] = field(init=False)
    epochs: list[int] = field(init=False)
    classes: list[str] = field(init=False)  # classes with a per-class IoU in at least one record (records' order)

    def __post_init__(self):
        self._index = {(r.group, r.epoch, r.seed): r for r in self.records}
        self.grouping = Grouping.of(r.setting for r in self.records)
        # group -> (variant, λ_b for a group of a λ_b sweep, else None); groups in `Grouping.order`
        self.group_keys = {r.group: self.grouping.key(r.setting) for r in self.records}
        order = {r.group: self.grouping.order(r.setting) for r in self.records}
        self.groups = sorted(self.group_keys, key=order.__getitem__)
        self.seeds = sorted({r.seed for r in self.records})
        self.epochs = sorted({r.epoch for r in self.records})
        self.classes = list(dict.fromkeys(c for r in self.records for c in r.iou))  # each once, first seen first
        self.estimators = {m: name for r in self.records for m, name in r.estimators}  # metric -> not the toolkit's

    def label(self, metric: str) -> str:
        """A metric's label as every table, figure and console line shows it: "Boundary F1", or with the estimator
        that computed it when that is not the toolkit's ("Boundary F1 (study's v0.1.0 estimator)")."""
        name = self.estimators.get(metric)
        return METRIC_LABELS[metric] if name is None else f"{METRIC_LABELS[metric]} ({name})"

    def key(self, metric: str) -> str:
        """A metric's key as the W&B run of the report logs it: "boundary_f1", or with the tag of the estimator that
        computed it when that is not the toolkit's ("boundary_f1_study_v0_1_0", ESTIMATOR_KEY_TAGS), so a chart
        never sets the study's retracted values beside the toolkit's under one key."""
        name = self.estimators.get(metric)
        return metric if name is None else f"{metric}_{ESTIMATOR_KEY_TAGS[name]}"

    @property
    def caveats(self) -> list[str]:
        """One line per estimator other than the toolkit's: "Boundary F1, Trimap IoU: computed by ...", for the
        notes of the tables, the console and the figures (ESTIMATOR_CAVEATS)."""
        by_name: dict[str, list[str]] = {}
        for m, name in self.estimators.items():
            by_name.setdefault(name, []).append(METRIC_LABELS[m])
        return [f"{', '.join(labels)}: {ESTIMATOR_CAVEATS[name]}" for name, labels in by_name.items()]

    @classmethod
    def from_records(cls, records: list[Record]) -> "Study":
        """Group the records and index them; results of several dataset splits or metrics profiles are refused
        (not comparable)."""
        for name, what in (("split", "splits"), ("metrics_profile", "metrics profiles")):
            values = sorted({getattr(r, name) for r in records if getattr(r, name)})
            if len(values) > 1:
                examples = ", ".join(next(r.source for r in records if getattr(r, name) == v) for v in values)
                raise UserError(f"results of several {what} ({', '.join(values)}) are mixed, e.g. {examples}; "
                                f"they are not comparable: aggregate one {name.replace('_', ' ')}'s results at a "
                                "time (or re-evaluate with evaluate.py --all RUNS_DIR --metrics-profile P --force)")
        return cls(assign_groups(records))

    @property
    def lambda_sweep(self) -> dict[str, list[tuple[float, str]]]:
        """variant -> [(λ_b, group)] ascending, for the variants that were run at several λ_b."""
        out: dict[str, list[tuple[float, str]]] = {}
        for g in self.groups:
            variant, lam = self.group_keys[g]
            if lam is not None:
                out.setdefault(variant, []).append((lam, g))
        return out

    def group_of(self, variant: str) -> str | None:
        """The group standing for `variant` in the study's variant-to-variant comparisons (Δ(D−A), C−B, ...): the
        variant itself, or for a λ_b-swept variant its group at the study's λ_b = 0.2; None when absent."""
        if variant in self.groups:
            return variant
        return next((g for lam, g in self.lambda_sweep.get(variant, []) if lam == STUDY_LAMBDA_B), None)

    def values(self, group: str, epoch: int, metric: str) -> dict[int, float]:
        """seed -> value of a global metric (METRICS) or of a class's IoU (a class name), for the seeds present."""
        out = {}
        for seed in self.seeds:
            r = self._index.get((group, epoch, seed))
            if r is None:
                continue
            v = r.metrics[metric] if metric in r.metrics else r.iou.get(metric)
            if v is not None:
                out[seed] = v
        return out

    def seeds_at(self, group: str, epoch: int) -> list[int]:
        return [s for s in self.seeds if (group, epoch, s) in self._index]

    def seeds_of(self, group: str) -> list[int]:
        """The seeds of `group` with a result at any epoch."""
        return [s for s in self.seeds if any((group, e, s) in self._index for e in self.epochs)]

    def missing(self) -> list[tuple[str, int, list[int]]]:
        """(group, seed, epochs without a result) for every (group, seed) with holes in the grid."""
        holes = []
        for g in self.groups:
            for s in self.seeds:
                absent = [e for e in self.epochs if (g, e, s) not in self._index]
                if absent:
                    holes.append((g, s, absent))
        return holes


# ---------------------------------------------------------------------------------------------------- per image
_REEVALUATE = "re-run `python evaluate.py CHECKPOINT` (it writes both files), or pass --bootstrap 0"


def load_per_image(study: Study, epoch: int) -> tuple[dict[str, dict[int, dict[str, np.ndarray]]], str] | None:
    """The per-image statistics (`metrics.per_image`) of every run at `epoch`, for the image bootstrap.

    Returns ({group: {seed: arrays}}, the runs' metrics profile), every run's arrays in the image order of the
    first run; None when no run at `epoch` has a per-image file (results written without one).
    Raises UserError, naming the file, when only some runs have one, when the runs cover different image names
    or classes or use different metrics profiles, or when a file's full-set mIoU, Boundary F1 or Trimap IoU
    differs from its results file (a stale per-image file).
    """
    records = sorted((r for r in study.records if r.epoch == epoch),
                     key=lambda r: (study.groups.index(r.group), r.seed))
    paths = {r.source: per_image_path(r.source[:-len(RESULTS_SUFFIX)]) if r.source.endswith(RESULTS_SUFFIX)
             else Path(r.source) for r in records}  # beside the results; a metrics.jsonl epoch (load_history): none
    missing = [r for r in records if not paths[r.source].is_file()]
    if len(missing) == len(records):
        return None
    if missing:
        r = missing[0]
        raise UserError(f"{paths[r.source]}: no per-image statistics for {r.group} seed {r.seed} ({len(missing)} of "
                        f"{plural(len(records), 'run')} at epoch {epoch} lack them); the image bootstrap needs them "
                        f"for every run: {_REEVALUATE}")
    profile = records[0].metrics_profile  # one for all: Study refuses results of several profiles
    out: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    ref_path, ref_names, ref_classes = None, None, None
    for r in track(records, description="reading per-image statistics", transient=True):
        path = paths[r.source]
        arrays = read_per_image(path)
        if ref_names is None:
            ref_path, ref_names, ref_classes = path, arrays["names"], arrays["class_names"]
        if arrays["class_names"].tolist() != ref_classes.tolist():
            raise UserError(f"{path}: classes {', '.join(arrays['class_names'])} differ from {ref_path}'s; compare "
                            "runs trained on the same class table")
        if arrays["names"].tolist() != ref_names.tolist():
            only_here = sorted(set(arrays["names"].tolist()) - set(ref_names.tolist()))
            only_ref = sorted(set(ref_names.tolist()) - set(arrays["names"].tolist()))
            if only_here or only_ref:
                example = (f"{only_ref[0]} only in {ref_path}" if only_ref else f"{only_here[0]} only here")
                raise UserError(f"{path}: per-image statistics over {plural(len(arrays['names']), 'image')}, "
                                f"{ref_path} over {len(ref_names)}, not the same images (e.g. {example}); evaluate "
                                "every run on the same split, or pass --bootstrap 0")
            order = np.argsort(arrays["names"])[np.argsort(np.argsort(ref_names))]  # this file's rows in ref order
            arrays = subset(arrays, order)
        stale = stale_value(arrays, r.metrics, profile, METRICS)  # what evaluate.py --all redoes too
        if stale is not None:
            m, value, recorded = stale
            raise UserError(f"{path}: its {METRIC_LABELS[m]} over all images is {value:.6f}, but {r.source} "
                            f"says {recorded:.6f} (a stale per-image file?); {_REEVALUATE}")
        out.setdefault(r.group, {})[r.seed] = arrays
    return out, profile


def load_consensus(runs_dir: str | Path, epoch: int) -> dict[str, dict[int, tuple[dict, dict]]]:
    """The consensus files (`engine.results_format.consensus_path`, evaluate.py --consensus) of primaries at
    `epoch` below `runs_dir`: {"<primary variant> vetoed by <veto variant>": {seed: (primary arrays, fused
    arrays)}}, the per-image statistics of the primary (its own file, in the fused file's image order) and of
    the fused maps. {} when there are none. Raises UserError naming the file when one is unreadable or its
    primary's per-image file is missing or covers other images.
    """
    out: dict[str, dict[int, tuple[dict, dict]]] = {}
    for path in sorted(Path(runs_dir).rglob(f"*{CONSENSUS_TAG}*{RESULTS_SUFFIX}")):
        record = read_results(path)
        consensus = record.get("consensus")
        if not isinstance(consensus, dict) or record["epoch"] != epoch:
            continue
        fused = read_per_image(path.with_name(path.name[: -len(RESULTS_SUFFIX)] + PER_IMAGE_SUFFIX))
        primary_file = per_image_path(consensus["primary"])
        if not primary_file.is_file():
            raise UserError(f"{path}: its primary has no per-image file {primary_file}; {_REEVALUATE}")
        primary = read_per_image(primary_file)
        if sorted(primary["names"].tolist()) != sorted(fused["names"].tolist()):
            raise UserError(f"{primary_file}: not the images of {path}; evaluate both on the same split")
        order = np.argsort(primary["names"])[np.argsort(np.argsort(fused["names"]))]  # primary rows in fused order
        pairing = f"{record['variant']} vetoed by {consensus['veto_variant']}"
        out.setdefault(pairing, {})[record["seed"]] = (subset(primary, order), fused)
    return out
