"""The study's figures (matplotlib, Agg backend; PNG, plus PDF/SVG copies on request: aggregate.py --format): per-epoch
curves with CI bands, per-class IoU bars.

Every figure colours a variant the same way (`group_colors`), so A is the same blue in every plot.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.colors  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from losses.registry import recipe_label  # noqa: E402  (torch-free)
from losses.variants import LOSS_WEIGHTS  # noqa: E402
from report.load import METRIC_LABELS, METRICS, Study, metric_unit  # noqa: E402
from report.stats import summarize  # noqa: E402
from report.tables import ALPHA  # noqa: E402
from utils import atomic_write_bytes  # noqa: E402

# tab10's first four, fixed per variant; further groups (e.g. one per λ_b) take the next tab10 colours in order.
VARIANT_COLORS = {"A": "#1f77b4", "B": "#ff7f0e", "C": "#2ca02c", "D": "#d62728"}
VARIANT_NAMES = {v: f"{v}: {recipe_label(w)}" for v, w in LOSS_WEIGHTS.items()}  # "C: ce+dice+0.2·boundary"
_EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def group_colors(groups: list[str], group_keys: dict[str, tuple[str, float | None]] | None = None) -> dict[str, str]:
    """group -> colour; A..D fixed, anything else in order from the remaining tab10 colours.

    With `group_keys` (group -> (variant, λ_b or None), `Study.group_keys`), the groups of a λ_b-swept variant
    get shades of the variant's colour, light for the smallest λ_b and dark for the largest.
    """
    keys = group_keys or {g: (g, None) for g in groups}
    extra = iter(_EXTRA_COLORS * (1 + len(groups) // len(_EXTRA_COLORS)))
    base = {}
    for g in groups:
        variant = keys[g][0]
        if variant not in base:
            base[variant] = VARIANT_COLORS.get(variant) or next(extra)
    colors = {}
    for variant, color in base.items():
        members = sorted((g for g in groups if keys[g][0] == variant), key=lambda g: (keys[g][1] or 0.0, g))
        for k, g in enumerate(members):
            colors[g] = color if len(members) == 1 else _shade(color, 0.55 - 0.9 * k / (len(members) - 1))
    return colors


def _shade(color: str, t: float) -> str:
    """Mix `color` with white (t > 0) or black (t < 0) by |t|."""
    rgb = np.array(matplotlib.colors.to_rgb(color))
    rgb = rgb + (1 - rgb) * t if t > 0 else rgb * (1 + t)
    return matplotlib.colors.to_hex(np.clip(rgb, 0, 1))


# The 95 % band of a mean over seeds, by aggregate.py --band: its legend text in the figures and the viewer.
BAND_TEXT = {"normal": "mean ± 1.96·SE", "t": "mean ± t(0.975, n−1)·SE"}

# No creation date in the vector files: the same report gives the same bytes (pdf: CreationDate, svg: Date).
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def figure_path(path: Path, fmt: str) -> Path:
    """The file of figure `path` (its PNG) in format `fmt`: curves.png -> curves.pdf."""
    return path.with_suffix(f".{fmt}")


def saved_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The formats a figure is written in: PNG (summary.md links it) first, then the others of `formats`."""
    return tuple(dict.fromkeys(("png", *formats)))


def _save(fig, path: Path, formats: tuple[str, ...] = ("png",)) -> None:
    """Write `fig` to `path` (PNG) and beside it in every other format of `formats` (matplotlib's names; aggregate.py
    --format offers pdf and svg), atomically."""
    for fmt in saved_formats(formats):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=130, bbox_inches="tight", metadata=_NO_DATE.get(fmt))
        atomic_write_bytes(figure_path(path, fmt), buf.getvalue())
    plt.close(fig)


def _caveat_footnote(fig, study: Study) -> None:
    """The study's estimator caveats (`Study.caveats`: metrics not computed by the toolkit's estimator) under the
    figure, where the panels' titles name the estimator."""
    if study.caveats:
        text = "\n".join(textwrap.fill(line, 170) for line in study.caveats)
        fig.text(0.5, 0.0, text, ha="center", va="top", fontsize=8, color="darkred")


def _mean_and_half(study: Study, group: str, epoch: int, metric: str, band: str) -> tuple[float, float] | None:
    """Mean over seeds and the half-width of the `band` interval (1.96·SE or t·SE), in percent; None
    without any seed (the half-width is NaN with one seed)."""
    s = summarize(list(study.values(group, epoch, metric).values()))
    if s.n == 0:
        return None
    return 100 * s.mean, 100 * (s.half_t if band == "t" else s.half_normal)


def _curve(study: Study, group: str, metric: str, band: str):
    """(epochs, mean %, lower %, upper %) of one group; the band is NaN where fewer than 2 seeds exist."""
    epochs, mean, half = [], [], []
    for e in study.epochs:
        point = _mean_and_half(study, group, e, metric, band)
        if point is not None:
            epochs.append(e)
            mean.append(point[0])
            half.append(point[1])
    epochs, mean, half = np.array(epochs), np.array(mean), np.array(half)
    return epochs, mean, mean - half, mean + half


def plot_curves(study: Study, path: Path, band: str = "normal", zoom_from: int | None = None,
                mark_epoch: int | None = None, formats: tuple[str, ...] = ("png",)) -> Path:
    """Per-epoch mean over seeds of mIoU, Boundary F1 and Trimap IoU, one line per group, shaded 95 % band.

    Two rows: the whole run on top; below, the same curves from epoch `zoom_from` (default: the middle of
    the run) on a tight y-axis, where the variants differ by tenths of a point.
    band: "normal" (mean ± 1.96·SE, the paper's) or "t" (mean ± t(0.975, n−1)·SE).
    mark_epoch: drawn as a dotted vertical line on the top row (the early epoch of table 2).
    """
    colors = group_colors(study.groups, study.group_keys)
    if len(study.epochs) == 1:  # nothing to draw a curve through: show the intervals themselves
        return _plot_single_epoch(study, path, formats)
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
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # no epoch 1.25
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{METRIC_LABELS[m]} (%)")
            ax.set_title(study.label(m) if i == 0 else f"{study.label(m)}, epochs ≥ {zoom_from}")
    band_text = BAND_TEXT[band]
    handles, labels = axes[0, 0].get_legend_handles_labels()
    mark = f"; dotted: epoch {mark_epoch}" if mark_epoch is not None else ""
    fig.suptitle(f"Mean over seeds; shaded: {band_text} (no band where < 2 seeds){mark}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if rows == 2 else 0.86))
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 0.965 if rows == 2 else 0.93))
    _caveat_footnote(fig, study)
    _save(fig, path, formats)
    return path


def _plot_single_epoch(study: Study, path: Path, formats: tuple[str, ...] = ("png",)) -> Path:
    """One evaluated epoch: per metric, each group's mean with its 1.96·SE (thick) and t (thin) interval."""
    colors = group_colors(study.groups, study.group_keys)
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
        ax.set_title(f"{study.label(m)}, epoch {epoch}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Mean over seeds; thick: ± 1.96·SE, thin: ± t(0.975, n−1)·SE", fontsize=10)
    fig.tight_layout()
    _caveat_footnote(fig, study)
    _save(fig, path, formats)
    return path


def per_class_pair(study: Study) -> tuple[str, str]:
    """(reference, key) of the per-class views (this figure, the viewer's default): Δ against A (else the first
    group), classes sorted by Δ(D − reference) (else the last group's; the reference itself with one group)."""
    ref = study.group_of("A") or study.groups[0]
    key = study.group_of("D") if study.group_of("D") not in (None, ref) else study.groups[-1]
    return ref, key


def plot_per_class(study: Study, epoch: int, path: Path, formats: tuple[str, ...] = ("png",)) -> Path | None:
    """Per-class IoU at `epoch` (mean ± inter-seed std) as grouped bars on a 0-100 % axis, classes sorted by Δ(D−A)
    largest first; below, each group's Δ against the reference (A when present) in percentage points (the zoom).
    One group: the bars alone, classes in the dataset's order (no Δ panel: there is nothing to subtract).
    None without per-class IoU."""
    if not study.classes:
        return None
    colors = group_colors(study.groups, study.group_keys)
    stats = {c: {g: summarize(list(study.values(g, epoch, c).values())) for g in study.groups} for c in study.classes}
    ref, key = per_class_pair(study)
    delta = {c: stats[c][key].mean - stats[c][ref].mean for c in study.classes}
    order = sorted(study.classes, key=lambda c: -delta[c] if np.isfinite(delta[c]) else np.inf)
    others = [g for g in study.groups if g != ref]

    x = np.arange(len(order))
    width = 0.8 / len(study.groups)
    if others:
        fig, (ax_iou, ax_delta) = plt.subplots(2, 1, figsize=(max(10, 0.75 * len(order)), 7.5), sharex=True,
                                               gridspec_kw={"height_ratios": [3, 2]})
    else:
        fig, ax_iou = plt.subplots(figsize=(max(10, 0.75 * len(order)), 4.8))
    for k, g in enumerate(study.groups):
        mu = np.array([100 * stats[c][g].mean for c in order])
        sd = np.array([100 * stats[c][g].std for c in order])
        ax_iou.bar(x + (k - (len(study.groups) - 1) / 2) * width, mu, width, yerr=np.nan_to_num(sd),
                   color=colors[g], label=VARIANT_NAMES.get(g, g), error_kw={"lw": 0.8, "capsize": 1.5})
    ax_iou.set_ylim(0, 100)  # bars from 0, so their lengths compare honestly; the Δ panel below zooms on the gaps
    ax_iou.set_ylabel("IoU (%)")
    sorting = f", sorted by Δ({key}−{ref})" if key != ref else ""
    spread = "mean ± inter-seed std" if len(study.seeds) > 1 else "one seed: no std"
    ax_iou.set_title(f"Per-class IoU at epoch {epoch} ({spread}){sorting}")
    ax_iou.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    ax_iou.grid(axis="y", alpha=0.3)
    if not others:  # one group: no Δ panel (it would read "Δ(C−C)")
        ax_iou.set_xticks(x, order, rotation=45, ha="right")
        fig.tight_layout()
        _save(fig, path, formats)
        return path

    width_d = 0.8 / len(others)
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
    _save(fig, path, formats)
    return path


def plot_lambda_sweep(study: Study, epoch: int, path: Path, band: str = "normal",
                      formats: tuple[str, ...] = ("png",)) -> Path | None:
    """Final-epoch mIoU, Boundary F1 and Trimap IoU against λ_b (log axis), one line per λ_b-swept variant:
    mean over seeds with its 95 % interval as error bars (`band`: 1.96·SE or t·SE). None without a sweep."""
    sweep = study.lambda_sweep
    if not sweep:
        return None
    lams = sorted({lam for points in sweep.values() for lam, _ in points})
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.6 * len(METRICS), 3.8), squeeze=False)
    for ax, m in zip(axes[0], METRICS):
        for variant, points in sweep.items():
            x, mu, half = [], [], []
            for lam, g in points:
                point = _mean_and_half(study, g, epoch, m, band)
                if point is not None:
                    x.append(lam)
                    mu.append(point[0])
                    half.append(point[1])
            ax.errorbar(x, mu, yerr=np.nan_to_num(half), color=VARIANT_COLORS.get(variant, "black"), marker="o",
                        ms=5, lw=1.8, capsize=4, label=VARIANT_NAMES.get(variant, variant))
        ax.set_xscale("log")
        ax.set_xticks(lams, [f"{lam:g}" for lam in lams])
        ax.minorticks_off()
        ax.set_xlabel("λ_b")
        ax.set_ylabel(f"{METRIC_LABELS[m]} (%)")
        ax.set_title(f"{study.label(m)}, epoch {epoch}")
        ax.grid(alpha=0.3)
    band_text = BAND_TEXT[band]
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"λ_b sweep: mean over seeds, bars {band_text} (none where < 2 seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 0.93))
    _caveat_footnote(fig, study)
    _save(fig, path, formats)
    return path


def plot_grad_trajectories(traj, path: Path, band: str = "normal", colors: dict[str, str] | None = None,
                           formats: tuple[str, ...] = ("png",)) -> Path:
    """Per-term gradient statistics over epochs (`report.gradients.GradTrajectories`), one line per group.

    Rows: gradients w.r.t. the logits, then w.r.t. the features. Columns: the L2 norm of each unweighted
    term's gradient (log axis), then the Dice/boundary cosine. Line: mean over seeds of each seed's mean over
    the epoch's logging steps; shaded: the 95 % band over seeds (`band`: 1.96·SE or t·SE). `colors`: group ->
    colour, to match the other figures (default: `group_colors` over the trajectories' own groups).
    """
    colors = colors or group_colors(traj.groups, traj.group_keys)
    wheres = [w for w in ("logits", "features") if any(k.split("/")[1] == w for k in traj.statistics)]
    columns = list(dict.fromkeys("/".join((k.split("/")[0], k.split("/")[2])) for k in traj.statistics))
    fig, axes = plt.subplots(len(wheres), len(columns), figsize=(4.4 * len(columns), 3.4 * len(wheres)),
                             squeeze=False)
    for i, where in enumerate(wheres):
        for j, column in enumerate(columns):
            kind, term = column.split("/")
            statistic = f"{kind}/{where}/{term}"
            ax = axes[i, j]
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            drawn = 0
            for g in traj.groups:
                epochs = traj.epochs(g, statistic)
                if not epochs:
                    continue
                drawn += 1
                summaries = [traj.summary(g, statistic, e)[0] for e in epochs]
                mu = np.array([s.mean for s in summaries])
                half = np.array([s.half_t if band == "t" else s.half_normal for s in summaries])
                ax.plot(epochs, mu, color=colors[g], lw=1.6, marker="o", ms=2.5, label=VARIANT_NAMES.get(g, g))
                ax.fill_between(epochs, mu - half, mu + half, color=colors[g], alpha=0.18, lw=0)
            if not drawn:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            elif kind == "grad_norm":
                ax.set_yscale("log", nonpositive="clip")  # a band reaching below 0 is clipped at the axis bottom
            else:
                ax.axhline(0, color="gray", lw=0.8)
            if kind == "grad_norm":
                ax.set_title(f"‖∂{term}/∂{where}‖₂")
            else:
                ax.set_title(f"cos(∂dice/∂{where}, ∂boundary/∂{where})" if term == "dice_boundary"
                             else f"{kind} {term} ({where})")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:  # the union of the panels' legends (a group may lack a term, e.g. D has no Dice)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    band_text = BAND_TEXT[band]
    fig.suptitle(f"Per-term gradients (unweighted terms): per seed the mean over the epoch's logging steps; "
                 f"line: mean over seeds, shaded: {band_text}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.88 if len(wheres) > 1 else 0.8))
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, 0.955 if len(wheres) > 1 else 0.91))
    _save(fig, path, formats)
    return path


def plot_bootstrap(results: dict[str, dict[tuple[str, str], dict]], path: Path,
                   formats: tuple[str, ...] = ("png",)) -> Path:
    """The image bootstrap's replicates (table 5b): one panel per metric, one violin per pair "X vs Y" showing
    the distribution of Δ_b = X_b − Y_b, its 95 % interval as a bar and the full-set Δ as a dot; a line at 0.
    `results`: {metric key: {(X, Y): bootstrap result}} (`report.tables.bootstrap_table`)."""
    metrics = list(results)
    panel_width = max(4.2, 0.6 * max(len(r) for r in results.values()) + 1.8)  # inches; wider with more pairs
    ncols = max(1, min(3, len(metrics), int(18 // panel_width)))  # at most ~18 inches wide
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_width * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, metrics):
        unit, factor = metric_unit(m)
        for k, ((x, y), r) in enumerate(results[m].items()):
            d = factor * r["samples"][np.isfinite(r["samples"])]
            if d.size and np.ptp(d) > 0:  # a constant Δ_b (identical runs) has no density to draw
                parts = ax.violinplot([d], positions=[k], widths=0.8, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor("#7f7f7f")
                    body.set_alpha(0.35)
            significant = np.isfinite(r["p_holm"]) and r["p_holm"] < ALPHA
            ax.errorbar(k, factor * r["delta"], yerr=[[factor * (r["delta"] - r["ci_low"])],
                                                      [factor * (r["ci_high"] - r["delta"])]],
                        color="#d62728" if significant else "black", lw=2.5, capsize=5, marker="o", ms=5)
        ax.axhline(0, color="gray", lw=0.8, ls="--")
        pairs = list(results[m])
        ax.set_xticks(range(len(pairs)), [f"{x} vs {y}" for x, y in pairs], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"Δ ({unit})")
        ax.set_title(METRIC_LABELS.get(m, m))
        ax.grid(axis="y", alpha=0.3)
    replicates = max(r["replicates"] for res in results.values() for r in res.values())
    fig.suptitle(f"Paired image bootstrap, {replicates} replicates: Δ_b distribution (violin), 95 % interval "
                 f"(bar), Δ on all images (dot); red: Holm p < {ALPHA}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    _save(fig, path, formats)
    return path
