"""Statistics over seeds: mean, standard error, the two 95 % intervals, the paired t-test and Holm's correction.

With n seeds x_1..x_n of one metric:
    mean = sum(x) / n,   std = sqrt(sum((x - mean)^2) / (n - 1))   (ddof = 1),   SE = std / sqrt(n)
    normal interval  : mean ± 1.96 · SE             (what the original study printed)
    Student-t interval: mean ± t(0.975, n - 1) · SE  (the right one for small n; t(0.975, 2) = 4.30)
Fewer than 2 values give no std, SE or interval (NaN).

Example:
    >>> s = summarize([0.815127, 0.810961, 0.812403])
    >>> round(100 * s.mean, 2), round(100 * s.half_normal, 2)
    (81.28, 0.24)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

Z_95 = 1.96  # the normal 97.5 % quantile as the paper rounds it


@dataclass(frozen=True)
class Summary:
    """One cell of a table: n values summarised. Fields are in the unit of the inputs; NaN when n < 2."""

    n: int
    mean: float
    std: float  # sample std, ddof = 1
    se: float  # std / sqrt(n)
    half_normal: float  # 1.96 · SE
    half_t: float  # t(0.975, n - 1) · SE

    @property
    def has_ci(self) -> bool:
        return self.n >= 2


def t_quantile(n: int) -> float:
    """t(0.975, n - 1), the Student-t factor of a two-sided 95 % interval from n values (NaN for n < 2)."""
    return float(sps.t.ppf(0.975, n - 1)) if n >= 2 else float("nan")


def summarize(values: Sequence[float]) -> Summary:
    """Mean, std (ddof=1), SE and both 95 % half-widths of the finite entries of `values` (NaN are dropped)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan)
    mean = float(x.mean())
    if n < 2:
        nan = float("nan")
        return Summary(1, mean, nan, nan, nan, nan)
    std = float(x.std(ddof=1))
    se = std / np.sqrt(n)
    return Summary(n, mean, std, se, Z_95 * se, t_quantile(n) * se)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Paired t-test of a against b (a[i] and b[i] come from the same seed).

    Returns (mean of a - b, t, two-sided p); the sign convention is a - b, as `scipy.stats.ttest_rel(a, b)`.
    With fewer than 2 pairs, t and p are NaN. When every difference is the same (zero variance, up to 1e-12)
    t is the limit ±inf with p = 0 for a non-zero mean, and NaN for a zero one (scipy would divide by a
    rounding residue and warn of catastrophic cancellation).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.shape} and {b.shape}")
    if a.size == 0:
        return float("nan"), float("nan"), float("nan")
    delta = float(np.mean(a - b))
    if a.size < 2:
        return delta, float("nan"), float("nan")
    d = a - b
    if np.ptp(d) <= 1e-12:
        return (delta, math.copysign(math.inf, delta), 0.0) if delta != 0 else (delta, math.nan, math.nan)
    res = sps.ttest_rel(a, b)
    return delta, float(res.statistic), float(res.pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values for one family of tests; NaN entries are left out of the family.

    With the m valid p-values sorted ascending p_(1) <= ... <= p_(m):
        p_adj_(i) = min(1, max_{j <= i} (m - j + 1) · p_(j))
    and a hypothesis is rejected at level alpha iff its adjusted p < alpha (equivalent to Holm's sequential rule).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]  # (m - j + 1) · p_(j), j = 1..m
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def intervals_overlap(a: Summary, b: Summary, kind: str = "normal") -> bool | None:
    """Whether the 95 % intervals of two summaries overlap (`kind` "normal" = 1.96·SE, "t"); None without CIs."""
    if not (a.has_ci and b.has_ci):
        return None
    ha, hb = (a.half_normal, b.half_normal) if kind == "normal" else (a.half_t, b.half_t)
    return bool(abs(a.mean - b.mean) <= ha + hb)
