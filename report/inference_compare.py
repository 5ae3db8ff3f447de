"""aggregate.py --compare-inference TAG: does the variants' ranking survive test-time augmentation?

Two Studies of the same runs at the same epoch, one per inference mode (engine.inference: "whole" is the study's
single-scale protocol, TAG e.g. "whole-flip-ms0.5,0.75,1,1.25,1.5,1.75"), set side by side:
  8a. per group and metric: the mean over seeds and the rank (1 = best) under each mode, and the TTA gain,
      paired by seed (mean over the seeds evaluated in both modes of value_TTA - value_single);
  8b. per pair of groups and metric: the paired-by-seed Δ (mean over the common seeds of a - b) under each mode,
      and whether its sign is the same.
Values in percent, Δ in percentage points.
"""
from __future__ import annotations

import itertools
import math

from report.load import METRICS, Study, metric_unit
from report.tables import Table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _ranks(means: dict[str, float]) -> dict[str, int]:
    """group -> rank by mean, 1 = best (largest; fragments: smallest)."""
    order = sorted(means, key=lambda g: -means[g])
    return {g: i + 1 for i, g in enumerate(order)}


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    seeds = sorted(set(a) & set(b))
    return _mean([a[s] - b[s] for s in seeds]), len(seeds)


def inference_tables(single: Study, tta: Study, tag: str, epoch: int) -> tuple[Table, Table]:
    """Tables 8a and 8b of the module docstring, for the groups both studies hold at `epoch`."""
    groups = [g for g in single.groups if g in tta.groups]
    header = ["group", "metric", "single", "rank single", "tta", "rank tta", "tta_gain_pp", "seeds"]
    rows = []
    for metric in METRICS:
        _, scale = metric_unit(metric)
        means = {name: {g: _mean(list(study.values(g, epoch, metric).values())) for g in groups}
                 for name, study in (("single", single), ("tta", tta))}
        ranks = {name: _ranks(m) for name, m in means.items()}
        for g in groups:
            gain, n = _paired(tta.values(g, epoch, metric), single.values(g, epoch, metric))
            rows.append([g, metric, scale * means["single"][g], ranks["single"][g], scale * means["tta"][g],
                         ranks["tta"][g], scale * gain, n])
    gains = Table("table8_inference", f"Table 8a — single-scale (whole) vs {tag} at epoch {epoch} (%)", header,
                  rows, header, [[r[0], r[1], f"{r[2]:.2f}", str(r[3]), f"{r[4]:.2f}", str(r[5]), f"{r[6]:+.2f}",
                                  str(r[7])] for r in rows],
                  ["rank 1 = best; tta_gain_pp: TTA minus single-scale, paired by seed"])
    header = ["pair", "metric", "delta_single_pp", "delta_tta_pp", "same_sign", "seeds"]
    rows = []
    for a, b in itertools.combinations(groups, 2):
        for metric in METRICS:
            _, scale = metric_unit(metric)
            d_single, n = _paired(single.values(a, epoch, metric), single.values(b, epoch, metric))
            d_tta, _ = _paired(tta.values(a, epoch, metric), tta.values(b, epoch, metric))
            rows.append([f"{a} - {b}", metric, scale * d_single, scale * d_tta,
                         (d_single > 0) == (d_tta > 0), n])
    pairs = Table("table8b_inference_pairs", f"Table 8b — paired Δ between variants, whole vs {tag}", header, rows,
                  header, [[r[0], r[1], f"{r[2]:+.2f}", f"{r[3]:+.2f}", "yes" if r[4] else "**no**", str(r[5])]
                           for r in rows], ["Δ: mean over the seeds of a - b (pp); same_sign: the ranking of the "
                                            "pair survives TTA"])
    return gains, pairs
