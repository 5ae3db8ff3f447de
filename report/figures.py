"""The study's figures (matplotlib, Agg backend, PNG): per-epoch curves with CI bands, per-class IoU bars.

Every figure colours a variant the same way (`group_colors`), so A is the same blue in every plot.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from report.load import METRIC_LABELS, METRICS, Study  # noqa: E402
from report.stats import summarize  # noqa: E402
from utils import atomic_write_bytes  # noqa: E402

# tab10's first four, fixed per variant; further groups (e.g. one per λ_b) take the next tab10 colours in order.
VARIANT_COLORS = {"A": "#1f77b4", "B": "#ff7f0e", "C": "#2ca02c", "D": "#d62728"}
VARIANT_NAMES = {"A": "A: CE", "B": "B: CE+Dice", "C": "C: CE+Dice+Boundary", "D": "D: CE+Boundary"}
_EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def group_colors(groups: list[str]) -> dict[str, str]:
    """group -> colour; A..D fixed, anything else in order from the remaining tab10 colours."""
    extra = iter(_EXTRA_COLORS * (1 + len(groups) // len(_EXTRA_COLORS)))
    return {g: VARIANT_COLORS.get(g) or next(extra) for g in groups}


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _curve(study: Study, group: str, metric: str, band: str):
    """(epochs, mean %, lower %, upper %) of one group; the band is NaN where fewer than 2 seeds exist."""
    epochs, mean, half = [], [], []
    for e in study.epochs:
        s = summarize(list(study.values(group, e, metric).values()))
        if s.n == 0:
            continue
        epochs.append(e)
        mean.append(100 * s.mean)
        half.append(100 * (s.half_t if band == "t" else s.half_normal))
    epochs, mean, half = np.array(epochs), np.array(mean), np.array(half)
    return epochs, mean, mean - half, mean + half


def plot_curves(study: Study, path: Path, band: str = "normal", zoom_from: int | None = None,
                mark_epoch: int | None = None) -> Path:
    """Per-epoch mean over seeds of mIoU, Boundary F1 and Trimap IoU, one line per group, shaded 95 % band.

    Two rows: the whole run on top; below, the same curves from epoch `zoom_from` (default: the middle of
    the run) on a tight y-axis, where the variants differ by tenths of a point.
    band: "normal" (mean ± 1.96·SE, the paper's) or "t" (mean ± t(0.975, n−1)·SE).
    mark_epoch: drawn as a dotted vertical line on the top row (the early epoch of table 2).
    """
    colors = group_colors(study.groups)
    if len(study.epochs) == 1:  # nothing to draw a curve through: show the intervals themselves
        return _plot_single_epoch(study, path)
    last = study.epochs[-1]
    if zoom_from is None:
        zoom_from = next((e for e in study.epochs if e >= last / 2), last)
    rows = 2 if len(study.epochs) > 2 and zoom_from < last else 1
    fig, axes = plt.subplots(rows, len(METRICS), figsize=(5.2 * len(METRICS), 3.6 * rows), squeeze=False)
    for j, m in enumerate(METRICS):
        for i in range(rows):
            ax = axes[i, j]
            lo_all, hi_all = [], []
            for g in study.groups:
                ep, mu, lo, hi = _curve(study, g, m, band)
                if i == 1:  # zoomed row: only the late epochs
                    keep = ep >= zoom_from
                    ep, mu, lo, hi = ep[keep], mu[keep], lo[keep], hi[keep]
                ax.plot(ep, mu, color=colors[g], lw=1.8, marker="o", ms=2.5, label=VARIANT_NAMES.get(g, g))
                ax.fill_between(ep, lo, hi, color=colors[g], alpha=0.18, lw=0)
                finite = np.isfinite(lo)
                lo_all += list(np.where(finite, lo, mu))
                hi_all += list(np.where(finite, hi, mu))
            if i == 1 and lo_all:  # tight y-range so 0.1-point differences are visible
                pad = 0.08 * (max(hi_all) - min(lo_all) + 1e-9)
                ax.set_ylim(min(lo_all) - pad, max(hi_all) + pad)
            if i == 0 and mark_epoch is not None:
                ax.axvline(mark_epoch, color="gray", ls=":", lw=1)
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{METRIC_LABELS[m]} (%)")
            ax.set_title(METRIC_LABELS[m] if i == 0 else f"{METRIC_LABELS[m]}, epochs ≥ {zoom_from}")
    band_text = "mean ± 1.96·SE" if band == "normal" else "mean ± t(0.975, n−1)·SE"
    handles, labels = axes[0, 0].get_legend_handles_labels()
    mark = f"; dotted: epoch {mark_epoch}" if mark_epoch is not None else ""
    fig.suptitle(f"Mean over seeds; shaded: {band_text} (no band where < 2 seeds){mark}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if rows == 2 else 0.86))
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 0.965 if rows == 2 else 0.93))
    _save(fig, path)
    return path


def _plot_single_epoch(study: Study, path: Path) -> Path:
    """One evaluated epoch: per metric, each group's mean with its 1.96·SE (thick) and t (thin) interval."""
    colors = group_colors(study.groups)
    epoch = study.epochs[0]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
    for ax, m in zip(axes[0], METRICS):
        for k, g in enumerate(study.groups):
            s = summarize(list(study.values(g, epoch, m).values()))
            mu = 100 * s.mean
            ax.errorbar(k, mu, yerr=100 * np.nan_to_num(s.half_t), color=colors[g], lw=1, capsize=4)
            ax.errorbar(k, mu, yerr=100 * np.nan_to_num(s.half_normal), color=colors[g], lw=5, marker="o", ms=7)
        ax.set_xticks(range(len(study.groups)), [VARIANT_NAMES.get(g, g) for g in study.groups], rotation=20,
                      ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(study.groups) - 0.4)
        ax.set_ylabel(f"{METRIC_LABELS[m]} (%)")
        ax.set_title(f"{METRIC_LABELS[m]}, epoch {epoch}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Mean over seeds; thick: ± 1.96·SE, thin: ± t(0.975, n−1)·SE", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_per_class(study: Study, epoch: int, path: Path) -> Path | None:
    """Per-class IoU at `epoch` (mean ± inter-seed std) as grouped bars, classes sorted by Δ(D−A) largest first;
    below, each group's Δ against the reference (A when present) in percentage points. None without per-class IoU."""
    if not study.classes:
        return None
    colors = group_colors(study.groups)
    stats = {c: {g: summarize(list(study.values(g, epoch, c).values())) for g in study.groups} for c in study.classes}
    ref = "A" if "A" in study.groups else study.groups[0]
    key = "D" if "D" in study.groups and ref != "D" else study.groups[-1]
    delta = {c: stats[c][key].mean - stats[c][ref].mean for c in study.classes}
    order = sorted(study.classes, key=lambda c: -delta[c] if np.isfinite(delta[c]) else np.inf)
    others = [g for g in study.groups if g != ref]

    x = np.arange(len(order))
    width = 0.8 / len(study.groups)
    fig, (ax_iou, ax_delta) = plt.subplots(2, 1, figsize=(max(10, 0.75 * len(order)), 7.5), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 2]})
    for k, g in enumerate(study.groups):
        mu = np.array([100 * stats[c][g].mean for c in order])
        sd = np.array([100 * stats[c][g].std for c in order])
        ax_iou.bar(x + (k - (len(study.groups) - 1) / 2) * width, mu, width, yerr=np.nan_to_num(sd),
                   color=colors[g], label=VARIANT_NAMES.get(g, g), error_kw={"lw": 0.8, "capsize": 1.5})
    lows = [100 * stats[c][g].mean for c in order for g in study.groups if np.isfinite(stats[c][g].mean)]
    ax_iou.set_ylim(max(0.0, min(lows) - 5) if lows else 0, 100)  # bars start near the data: the gaps are small
    ax_iou.set_ylabel("IoU (%)")
    ax_iou.set_title(f"Per-class IoU at epoch {epoch} (mean ± inter-seed std), sorted by Δ({key}−{ref})")
    ax_iou.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    ax_iou.grid(axis="y", alpha=0.3)

    width_d = 0.8 / max(1, len(others))
    for k, g in enumerate(others):
        d = np.array([100 * (stats[c][g].mean - stats[c][ref].mean) for c in order])
        ax_delta.bar(x + (k - (len(others) - 1) / 2) * width_d, d, width_d, color=colors[g],
                     label=f"Δ({g}−{ref})")
    ax_delta.axhline(0, color="black", lw=0.8)
    ax_delta.set_ylabel(f"Δ vs {ref} (pp)")
    ax_delta.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    ax_delta.grid(axis="y", alpha=0.3)
    ax_delta.set_xticks(x, order, rotation=45, ha="right")
    fig.tight_layout()
    _save(fig, path)
    return path
