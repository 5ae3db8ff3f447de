"""Per-term gradient trajectories: read every run's `grad_stats.jsonl` and average it per group and epoch.

The file is written by train.py with `--log-grad-norms K` (`losses.gradients.GradStatsLog`; the README defines
every key): one JSON object per logging step with "epoch" (1-based), "step", "variant", "seed",
"lambda_boundary" and the statistics "grad_norm/<logits|features>/<ce|dice|boundary>" and
"grad_cos/<logits|features>/dice_boundary" (null where undefined). Only the file format is shared with the
training code; nothing here imports it.

Aggregation, per group (variant, or variant and λ_b as `report.load.group_label` decides), statistic and epoch:
    per seed: the mean over that seed's logging steps in the epoch (nulls left out);
    over seeds: `report.stats.summarize` of those per-seed means (mean, std, 1.96·SE and t·SE intervals).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from report.load import group_label, lambda_swept_variants
from report.stats import Summary, summarize
from report.tables import Table
from utils import UserError

FILE_NAME = "grad_stats.jsonl"
STAT_PREFIXES = ("grad_norm/", "grad_cos/")
_WHERE_ORDER = ("logits", "features")
_TERM_ORDER = ("ce", "dice", "boundary", "dice_boundary")


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


def _statistic_order(name: str) -> tuple:
    """grad_norm before grad_cos; logits before features; ce, dice, boundary."""
    kind, where, term = (name.split("/") + ["", ""])[:3]
    return (kind != "grad_norm", _WHERE_ORDER.index(where) if where in _WHERE_ORDER else 9,
            _TERM_ORDER.index(term) if term in _TERM_ORDER else 9, name)


def read_grad_log(path: str | Path) -> list[GradPoint]:
    """One run's grad_stats.jsonl -> GradPoints. A last line cut short (the run was killed while writing it) is
    skipped; any other malformed line raises a UserError naming the file and line."""
    path = Path(path)
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
        try:
            lam = obj.get("lambda_boundary")
            points.append(GradPoint(str(obj["variant"]), int(obj["seed"]), None if lam is None else float(lam),
                                    int(obj["epoch"]), int(obj["step"]), values, where))
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

    `swept`: variants to group by (variant, λ_b); pass the results' set (`lambda_swept_variants`) so the
    groups match the tables'; variants the logs themselves show at several λ_b are added.
    """

    logs: list[list[GradPoint]]
    swept: set[str] = field(default_factory=set)
    groups: list[str] = field(init=False)
    group_keys: dict[str, tuple[str, float | None]] = field(init=False)
    statistics: list[str] = field(init=False)

    def __post_init__(self):
        points = [p for log in self.logs for p in log]
        swept = set(self.swept) | lambda_swept_variants((p.variant, p.lambda_boundary) for p in points)
        self._values: dict[tuple[str, str, int, int], list[float]] = {}
        owner: dict[tuple[str, int], str] = {}
        self.group_keys = {}
        for log in self.logs:
            for p in log:
                g = group_label(p.variant, p.lambda_boundary, swept)
                self.group_keys[g] = (p.variant, p.lambda_boundary if g != p.variant else None)
                file = p.source.rsplit(":", 1)[0]
                if owner.setdefault((g, p.seed), file) != file:
                    raise UserError(f"{file}: a second gradient log for variant {g} seed {p.seed}, besides "
                                    f"{owner[(g, p.seed)]}; remove one")
                for k, v in p.values.items():
                    self._values.setdefault((g, k, p.epoch, p.seed), []).append(v)
        order = lambda g: (self.group_keys[g][0], -1.0 if self.group_keys[g][1] is None else self.group_keys[g][1], g)
        self.groups = sorted(self.group_keys, key=order)
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
