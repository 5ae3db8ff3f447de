"""Per-term gradient trajectories: read every run's `grad_stats.jsonl` and average it per group and epoch.

The file is written by train.py with `--log-grad-norms K` (`losses.gradients.GradStatsLog`, whose module
docstring defines every key): one JSON object per logging step with "epoch" (1-based), "step", "variant", "seed",
"lambda_boundary", "boundary_schedule" (absent in logs written before it existed) and the statistics
"grad_norm/<logits|features>/<term>" and "grad_cos/<logits|features>/<term>_<term>" (null where undefined). The schedule's parameters, and the schedule of a log without "boundary_schedule", come from the run's
`config.json` beside the log; without one, such a log counts as "constant". So does the head, which joins the
variant as in the results (`report.load.report_variant`). Only the file formats are shared with the training
code; nothing here imports it.

Aggregation, per group (as `report.load.Grouping` decides for the results), statistic and epoch:
    per seed: the mean over that seed's logging steps in the epoch (nulls left out);
    over seeds: `report.stats.summarize` of those per-seed means (mean, std, 1.96·SE and t·SE intervals).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.results_format import boundary_schedule_of
from losses.registry import TERMS  # torch-free: the term names, for the order of the statistics
from losses.schedule import SCHEDULE_PARAMS
from report.load import Grouping, RunSetting, report_variant
from report.stats import Summary, summarize
from report.tables import Table
from utils import UserError

FILE_NAME = "grad_stats.jsonl"
STAT_PREFIXES = ("grad_norm/", "grad_cos/")
_WHERE_ORDER = ("logits", "features")


@dataclass(frozen=True)
class GradPoint:
    """One logging step of one run."""

    variant: str
    seed: int
    lambda_boundary: float | None
    epoch: int
    step: int
    values: dict[str, float]  # statistic -> value (NaN for null)
    source: str  # "file:line"
    boundary_schedule: str = "constant"
    schedule_params: tuple[tuple[str, float], ...] | None = ()  # None: not known (no config.json beside the log)

    @property
    def setting(self) -> RunSetting:
        return RunSetting(self.variant, self.lambda_boundary, self.boundary_schedule, self.schedule_params)


def _statistic_order(name: str) -> tuple:
    """grad_norm before grad_cos; logits before features; terms (and pairs "a_b") in the registry's order."""
    kind, where, terms = (name.split("/") + ["", ""])[:3]
    order = tuple(list(TERMS).index(t) if t in TERMS else len(TERMS) for t in terms.split("_"))
    return (kind != "grad_norm", _WHERE_ORDER.index(where) if where in _WHERE_ORDER else 9, order, name)


def _run_config(log_path: Path) -> dict | None:
    """The config.json that train.py writes beside the log; None without."""
    path = log_path.parent / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the run's config ({e}); restore it from a checkpoint folder "
                        "(epoch_XXXX/config.json)") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object of config fields; restore it from a checkpoint folder")
    return config


def read_grad_log(path: str | Path) -> list[GradPoint]:
    """One run's grad_stats.jsonl -> GradPoints. A last line cut short (the run was killed while writing it) is
    skipped; any other malformed line raises a UserError naming the file and line."""
    path = Path(path)
    run_config = _run_config(path)
    run_schedule = None if run_config is None else boundary_schedule_of(run_config, path.parent / "config.json")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the gradient log ({e}); delete it or rerun with --log-grad-norms") from None
    points = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a write cut by a kill; train.py drops it itself when the run resumes
            raise UserError(f"{where}: not a JSON line; delete that line (or the file) and rerun aggregate.py") from None
        if not isinstance(obj, dict) or not all(k in obj for k in ("epoch", "step", "variant", "seed")):
            raise UserError(f"{where}: a gradient-log line needs epoch, step, variant, seed; delete that line")
        values = {}
        for k, v in obj.items():
            if not k.startswith(STAT_PREFIXES):
                continue
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise UserError(f"{where}: `{k}` = {v!r} is not a number; delete that line")
            values[k] = math.nan if v is None else float(v)
        kind = obj.get("boundary_schedule", run_schedule[0] if run_schedule else "constant")
        if not isinstance(kind, str) or kind not in SCHEDULE_PARAMS:
            raise UserError(f"{where}: unknown boundary_schedule {kind!r} (known: {', '.join(SCHEDULE_PARAMS)}); "
                            "delete that line")
        # the parameters of the run's config.json when it names the same schedule; a constant λ_b has none
        params = run_schedule[1] if run_schedule and run_schedule[0] == kind else () if kind == "constant" else None
        try:
            lam = obj.get("lambda_boundary")
            points.append(GradPoint(report_variant(str(obj["variant"]), run_config), int(obj["seed"]),
                                    None if lam is None else float(lam),
                                    int(obj["epoch"]), int(obj["step"]), values, where, kind, params))
        except (TypeError, ValueError):
            raise UserError(f"{where}: epoch, step, seed must be integers and lambda_boundary a number; "
                            "delete that line") from None
    return points


def load_grad_logs(runs_dir: str | Path) -> list[list[GradPoint]]:
    """Every grad_stats.jsonl below `runs_dir` (sorted paths), one list of points per file (empty files left out)."""
    return [points for p in sorted(Path(runs_dir).rglob(FILE_NAME)) if (points := read_grad_log(p))]


@dataclass
class GradTrajectories:
    """Gradient statistics indexed by (group, statistic, epoch, seed) -> per-step values.

    `grouping`: pass the results' (`Study.grouping`) so the groups match the tables'; what the logs themselves
    show varying (e.g. λ_b, for runs not evaluated yet) is added.
    """

    logs: list[list[GradPoint]]
    grouping: Grouping | None = None
    groups: list[str] = field(init=False)
    group_keys: dict[str, tuple[str, float | None]] = field(init=False)
    statistics: list[str] = field(init=False)

    def __post_init__(self):
        grouping = Grouping.of((p.setting for log in self.logs for p in log), base=self.grouping)
        self._values: dict[tuple[str, str, int, int], list[float]] = {}
        owner: dict[tuple[str, int], str] = {}
        self.group_keys, order = {}, {}
        for log in self.logs:
            for p in log:
                g = grouping.label(p.setting)
                self.group_keys[g], order[g] = grouping.key(p.setting), grouping.order(p.setting)
                file = p.source.rsplit(":", 1)[0]
                if owner.setdefault((g, p.seed), file) != file:
                    raise UserError(f"{file}: a second gradient log for variant {g} seed {p.seed}, besides "
                                    f"{owner[(g, p.seed)]}; remove one")
                for k, v in p.values.items():
                    self._values.setdefault((g, k, p.epoch, p.seed), []).append(v)
        self.groups = sorted(self.group_keys, key=order.__getitem__)
        self.statistics = sorted({k[1] for k in self._values}, key=_statistic_order)
        self._seeds = sorted({k[3] for k in self._values})

    def epochs(self, group: str, statistic: str) -> list[int]:
        return sorted({e for g, k, e, _ in self._values if g == group and k == statistic})

    def summary(self, group: str, statistic: str, epoch: int) -> tuple[Summary, int]:
        """(summary over seeds of the per-seed mean over steps, number of finite step values behind it)."""
        per_seed, steps = [], 0
        for seed in self._seeds:
            vals = [v for v in self._values.get((group, statistic, epoch, seed), []) if np.isfinite(v)]
            if vals:
                per_seed.append(float(np.mean(vals)))
                steps += len(vals)
        return summarize(per_seed), steps


def grad_trajectory_table(traj: GradTrajectories) -> Table:
    """The figure's numbers as one long CSV: a row per group, statistic and epoch."""
    header = ["group", "variant", "lambda_boundary", "statistic", "epoch", "n_seeds", "n_steps", "mean", "std",
              "±1.96·SE", "±t·SE"]
    rows = []
    for g in traj.groups:
        variant, lam = traj.group_keys[g]
        for k in traj.statistics:
            for e in traj.epochs(g, k):
                s, steps = traj.summary(g, k, e)
                rows.append([g, variant, lam, k, e, s.n, steps, s.mean, s.std, s.half_normal, s.half_t])
    notes = ["per seed: mean over the logging steps of the epoch (null values left out); then mean and interval "
             "over seeds. Norms are L2 norms of unweighted terms' gradients; cosines are unitless."]
    return Table("grad_trajectories", "Per-term gradient statistics per epoch", header, rows, [], [], notes)
