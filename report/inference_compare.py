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

from report.load import METRICS, Study
from report.tables import Table
from utils.console import pct


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _ranks(means: dict[str, float]) -> dict[str, int]:
    """group -> rank by mean, 1 = best (largest: METRICS are all higher-is-better fractions)."""
    order = sorted(means, key=lambda g: -means[g])
    return {g: i + 1 for i, g in enumerate(order)}


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    seeds = sorted(set(a) & set(b))
    return _mean([a[s] - b[s] for s in seeds]), len(seeds)


def inference_tables(single: Study, tta: Study, tag: str, epoch: int) -> tuple[Table, Table]:
    """Tables 8a and 8b of the module docstring, for the groups both studies hold at `epoch` (METRICS are
    fractions: the CSVs hold percent and percentage points, as tables 1-5)."""
    groups = [g for g in single.groups if g in tta.groups]
    header = ["group", "metric", "single-scale (%)", "rank single-scale", f"{tag} (%)", f"rank {tag}",
              "TTA gain (pp)", "seeds"]
    rows, md_rows = [], []
    for metric in METRICS:
        means = {name: {g: _mean(list(study.values(g, epoch, metric).values())) for g in groups}
                 for name, study in (("single", single), ("tta", tta))}
        ranks = {name: _ranks(m) for name, m in means.items()}
        for g in groups:
            gain, n = _paired(tta.values(g, epoch, metric), single.values(g, epoch, metric))
            rows.append([g, metric, 100 * means["single"][g], ranks["single"][g], 100 * means["tta"][g],
                         ranks["tta"][g], 100 * gain, n])
            md_rows.append([g, metric, pct(means["single"][g]), str(ranks["single"][g]), pct(means["tta"][g]),
                            str(ranks["tta"][g]), pct(gain, signed=True), str(n)])
    gains = Table("table8_inference", f"Table 8a — single-scale (whole) vs {tag} at epoch {epoch} (%)", header,
                  rows, header, md_rows, ["rank 1 = best; TTA gain: TTA minus single-scale, paired by seed"])
    header = ["pair", "metric", "Δ single-scale (pp)", f"Δ {tag} (pp)", "same sign", "seeds"]
    rows, md_rows = [], []
    for a, b in itertools.combinations(groups, 2):
        for metric in METRICS:
            d_single, n = _paired(single.values(a, epoch, metric), single.values(b, epoch, metric))
            d_tta, _ = _paired(tta.values(a, epoch, metric), tta.values(b, epoch, metric))
            same = (d_single > 0) == (d_tta > 0)
            rows.append([f"{a} - {b}", metric, 100 * d_single, 100 * d_tta, same, n])
            md_rows.append([f"{a} − {b}", metric, pct(d_single, signed=True), pct(d_tta, signed=True),
                            "yes" if same else "**no**", str(n)])
    pairs = Table("table8b_inference_pairs", f"Table 8b — paired Δ between variants, whole vs {tag}", header, rows,
                  header, md_rows, ["Δ: mean over the common seeds of a − b (pp); same sign: the pair's order "
                                    "survives TTA"])
    return gains, pairs
