"""Read evaluation results into one flat list of `Record`s, and index them as a `Study`.

Two sources, one shape:
  - a runs tree: every `*.results.json` below RUNS_DIR (what `evaluate.py` writes beside each checkpoint), read
    by `engine.results_format.read_results` (plain JSON, no torch: the reader evaluate.py uses);
  - a tidy CSV, one row per (variant, seed, epoch): columns `variant, seed, epoch, mIoU, boundary_f1_mean,
    trimap_mIoU_mean` and optional per-class IoU columns named by class (`road`, ..., `bicycle`) — the
    format of the original study's released per-run files.
All metric values are fractions in [0, 1]; a per-class IoU may be missing (NaN: the class never occurred).

Everything downstream is keyed by `Record.group`, not by the variant: `Grouping` is the single place that decides
which runs are aggregated together: one group per variant and λ_b schedule ("C", "C steal"), split further where
λ_b or the schedule's parameters differ among those runs (a λ_b sweep: "C λb=0.05", "C λb=0.2").
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.progress import track

from data_utils.labels import CLASS_NAMES
from engine.results_format import boundary_schedule_of, read_results
from utils import UserError

METRICS = ("miou", "boundary_f1", "trimap_iou")  # results.json keys of the global metrics
METRIC_LABELS = {"miou": "mIoU", "boundary_f1": "Boundary F1", "trimap_iou": "Trimap IoU"}
CSV_METRIC_COLUMNS = {"mIoU": "miou", "boundary_f1_mean": "boundary_f1", "trimap_mIoU_mean": "trimap_iou"}


@dataclass(frozen=True)
class Record:
    """The evaluation of one checkpoint: one (variant, seed, epoch)."""

    variant: str
    seed: int
    epoch: int
    metrics: dict[str, float]  # METRICS -> fraction
    iou: dict[str, float]  # class name -> fraction (NaN: class absent); empty when the source has none
    source: str  # "file" or "file:line", for error messages
    lambda_boundary: float | None = None  # None when the source does not say (the tidy CSV)
    split: str | None = None
    boundary_schedule: str = "constant"  # the run's λ_b schedule (config.boundary_schedule; the CSV: constant)
    schedule_params: tuple[tuple[str, float], ...] = ()  # its parameters (engine.results_format.SCHEDULE_PARAMS)
    group: str = ""  # set by assign_groups

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
        variant=obj["variant"],
        seed=obj["seed"],
        epoch=obj["epoch"],
        metrics={m: obj[m] for m in METRICS},
        iou=obj["iou"],
        source=str(path),
        lambda_boundary=float(obj["lambda_boundary"]),
        split=obj["split"],
        boundary_schedule=schedule,
        schedule_params=params,
    )


def load_runs_dir(runs_dir: str | Path) -> list[Record]:
    """Every `*.results.json` below `runs_dir` (sorted paths), as Records."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: not a directory; pass the folder holding the training runs")
    paths = sorted(runs_dir.rglob("*.results.json"))
    if not paths:
        raise UserError(f"{runs_dir}: no *.results.json below it; evaluate the checkpoints first "
                        f"(`python evaluate.py --all {runs_dir}`)")
    return [read_results_file(p) for p in track(paths, description="reading results", transient=True)]


def load_csv(path: str | Path) -> list[Record]:
    """A tidy CSV (one row per variant, seed, epoch; fractions) -> Records. Per-class columns are optional."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None
    missing = [c for c in ("variant", "seed", "epoch", *CSV_METRIC_COLUMNS) if c not in header]
    if missing:
        raise UserError(f"{path}: CSV lacks the column(s) {', '.join(missing)}; expected variant, seed, epoch, "
                        "mIoU, boundary_f1_mean, trimap_mIoU_mean and optional per-class columns")
    classes = [c for c in CLASS_NAMES if c in header]
    records = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}:{line}"
        if None in row or any(v is None for v in row.values()):
            raise UserError(f"{where}: the row has a different number of fields than the header")
        records.append(Record(
            variant=row["variant"].strip(),
            seed=_int(row["seed"], where, "seed"),
            epoch=_int(row["epoch"], where, "epoch"),
            metrics={m: _fraction(row[col], where, col, allow_nan=False) for col, m in CSV_METRIC_COLUMNS.items()},
            iou={c: _fraction(row[c], where, c, allow_nan=True) for c in classes},
            source=where,
        ))
    if not records:
        raise UserError(f"{path}: the CSV has a header but no rows")
    return records


# ---------------------------------------------------------------------------------------------------- grouping
STUDY_LAMBDA_B = 0.2  # the study's fixed λ_b: the group that stands for a swept variant in the study's tables


_PARAM_NAMES = {"boundary_start": "start", "boundary_ramp_epochs": "ramp", "steal_delta": "δ",
                "steal_floor": "floor"}  # how a schedule parameter (a TrainConfig field) is shown in a group label


@dataclass(frozen=True)
class RunSetting:
    """What sets a run apart from the other runs of its variant: its λ_b and its λ_b schedule."""

    variant: str
    lambda_boundary: float | None = None  # None: the source does not say (the tidy CSV)
    boundary_schedule: str = "constant"  # "constant", "linear" or "steal" (train.py --boundary-schedule)
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
    classes: list[str] = field(init=False)  # classes with a per-class IoU in at least one record (CLASS_NAMES order)

    def __post_init__(self):
        self._index = {(r.group, r.epoch, r.seed): r for r in self.records}
        self.grouping = Grouping.of(r.setting for r in self.records)
        # group -> (variant, λ_b for a group of a λ_b sweep, else None); groups in `Grouping.order`
        self.group_keys = {r.group: self.grouping.key(r.setting) for r in self.records}
        order = {r.group: self.grouping.order(r.setting) for r in self.records}
        self.groups = sorted(self.group_keys, key=order.__getitem__)
        self.seeds = sorted({r.seed for r in self.records})
        self.epochs = sorted({r.epoch for r in self.records})
        present = set().union(*(r.iou.keys() for r in self.records))
        self.classes = [c for c in CLASS_NAMES if c in present]

    @classmethod
    def from_records(cls, records: list[Record]) -> "Study":
        """Group the records and index them; results of several dataset splits are refused (not comparable)."""
        splits = sorted({r.split for r in records if r.split})
        if len(splits) > 1:
            examples = ", ".join(next(r.source for r in records if r.split == s) for s in splits)
            raise UserError(f"results of several splits ({', '.join(splits)}) are mixed, e.g. {examples}; "
                            "aggregate one split's results at a time")
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

    def missing(self) -> list[tuple[str, int, list[int]]]:
        """(group, seed, epochs without a result) for every (group, seed) with holes in the grid."""
        holes = []
        for g in self.groups:
            for s in self.seeds:
                absent = [e for e in self.epochs if (g, e, s) not in self._index]
                if absent:
                    holes.append((g, s, absent))
        return holes
