"""The study's tables, each built once as a `Table` that renders to CSV (numbers) and to Markdown (percent, 2 dp).

Units: metric values are fractions internally; every table shows them in percent (CSV: full precision, column
names say "(%)" for values and "(pp)" for differences and spreads; Markdown: two decimals). Differences are
always "first − second" in the order written, e.g. Δ(D−B) = mean_D − mean_B and, in the significance table,
"A vs B" tests A − B.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from report.bootstrap import PROFILE_METRICS, bootstrap_metrics, full_set_values
from report.load import METRIC_LABELS, METRICS, STUDY_LAMBDA_B, Study, metric_unit, unit_notes
from report.stats import Summary, holm, intervals_overlap, paired_ttest, summarize, t_quantile
from utils.console import noun_for, pct, plural

# The per-class deltas the study discusses: boundary-only vs CE, boundary-only vs Dice, Dice+boundary vs Dice.
DELTA_PAIRS = (("D", "A"), ("D", "B"), ("C", "B"))
ALPHA = 0.05


@dataclass
class Table:
    """One table: `header`/`rows` are the CSV (numbers as numbers), `md_header`/`md_rows` the Markdown view."""

    name: str  # file stem of the CSV, e.g. "table1_final_epoch"
    title: str
    header: list[str]
    rows: list[list]
    md_header: list[str]
    md_rows: list[list[str]]
    notes: list[str] = field(default_factory=list)  # lines shown under the Markdown table

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        for row in self.rows:
            writer.writerow([_csv_cell(v) for v in row])
        return buf.getvalue()

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.md_rows:
            lines.append("| " + " | ".join(self.md_header) + " |")
            lines.append("|" + "|".join("---:" if _is_numeric(col) else "---" for col in zip(*self.md_rows)) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in self.md_rows]
            if self.notes:
                lines.append("")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _is_numeric(column: tuple[str, ...]) -> bool:
    """Right-align a Markdown column when every cell is a number, a "± " pair or n/a."""
    strip = [c.replace("**", "").replace("n/a", "").replace("(no CI)", "") for c in column]
    return all(set(c) <= set("0123456789.+−-± *") for c in strip)


def _csv_cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.10g}"
    return str(v)


# ---------------------------------------------------------------------------------------------------- formatting
def signed_pct(x: float) -> str:
    """A difference of fractions in percentage points, signed with a typographic minus ("+5.29", "−2.10")."""
    return pct(x, signed=True).replace("-", "−")


def pm(mean: float, half: float) -> str:
    """"81.28 ± 0.24" (percent), or "81.28 (no CI)" when the interval is undefined."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{pct(mean)} ± {pct(half)}" if np.isfinite(half) else f"{pct(mean)} (no CI)"


def _p100(x: float) -> float:
    return 100 * x  # NaN stays NaN


def _yes_no(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


# ---------------------------------------------------------------------------------------------------- tables 1, 2
def interval_note(study: Study, epoch: int) -> str:
    ns = sorted({len(study.seeds_at(g, epoch)) for g in study.groups} - {0, 1})
    factors = ", ".join(f"n = {n}: t = {t_quantile(n):.2f}" for n in ns)
    return ("± 1.96·SE is the normal interval the paper printed; ± t·SE is the Student-t interval "
            f"t(0.975, n−1)·SE ({factors or 'no group has 2 seeds'}); SE = std(ddof=1)/√n over seeds.")


def seed_notes(study: Study, epoch: int) -> list[str]:
    """Say which groups lack seeds at `epoch` and which therefore get no interval."""
    notes = []
    for g in study.groups:
        have = study.seeds_at(g, epoch)
        lacking = [s for s in study.seeds if s not in have]
        if len(have) < 2:
            notes.append(f"{g}: {plural(len(have), 'seed')} at epoch {epoch}: no CI and no t-test "
                         f"(missing seeds: {', '.join(map(str, lacking)) or 'none'})")
        elif lacking:
            notes.append(f"{g}: {noun_for(len(lacking), 'seed')} {', '.join(map(str, lacking))} missing at epoch "
                         f"{epoch}; mean and CI over {plural(len(have), 'seed')}")
    return notes


def global_metrics_table(study: Study, epoch: int, name: str, title: str) -> Table:
    """Tables 1 and 2: per group, mean ± 1.96·SE and mean ± t·SE of mIoU, Boundary F1, Trimap IoU at `epoch`."""
    header = ["variant", "n_seeds", "seeds"]
    md_header = ["variant", "n"]
    for m in METRICS:
        lab = study.label(m)  # with the estimator caveat where not the toolkit's, in the CSV too
        header += [f"{lab} mean (%)", f"{lab} ±1.96·SE (%)", f"{lab} ±t·SE (%)", f"{lab} std (pp)"]
        md_header += [f"{lab} ± 1.96·SE", f"{lab} ± t·SE"]
    rows, md_rows = [], []
    for g in study.groups:
        seeds = study.seeds_at(g, epoch)
        row = [g, len(seeds), " ".join(map(str, seeds))]
        md_row = [g, str(len(seeds))]
        for m in METRICS:
            s = summarize(list(study.values(g, epoch, m).values()))
            row += [_p100(s.mean), _p100(s.half_normal), _p100(s.half_t), _p100(s.std)]
            md_row += [pm(s.mean, s.half_normal), pm(s.mean, s.half_t)]
        rows.append(row)
        md_rows.append(md_row)
    notes = [interval_note(study, epoch)] + seed_notes(study, epoch) + study.caveats
    return Table(name, title, header, rows, md_header, md_rows, notes)


def sweep_notes(study: Study) -> list[str]:
    """Which group stands for a λ_b-swept variant in the variant-to-variant comparisons."""
    stand_ins = {v: study.group_of(v) for v in study.lambda_sweep}
    if not stand_ins:
        return []
    shown = ", ".join(f"{v} = {g}" if g else f"{v}: none at λ_b = {STUDY_LAMBDA_B:g}" for v, g in stand_ins.items())
    return [f"λ_b sweep: in the variant comparisons (Δ, C−B) a swept variant is its group at the study's "
            f"λ_b = {STUDY_LAMBDA_B:g} ({shown})."]


# ---------------------------------------------------------------------------------------------------- λ_b sweep
def lambda_sweep_table(study: Study, epoch: int) -> Table | None:
    """Table 6: per λ_b-swept variant and λ_b, mean ± 1.96·SE and ± t·SE of each global metric at `epoch`, and
    the λ_b with the highest mean per variant and metric. None when no variant was run at several λ_b."""
    sweep = study.lambda_sweep
    if not sweep:
        return None
    header = ["variant", "lambda_boundary", "n_seeds", "seeds"]
    md_header = ["variant", "λ_b", "n"]
    for m in METRICS:
        lab = study.label(m)  # with the estimator caveat where not the toolkit's, in the CSV too
        header += [f"{lab} mean (%)", f"{lab} ±1.96·SE (%)", f"{lab} ±t·SE (%)", f"{lab} std (pp)"]
        md_header += [f"{lab} ± 1.96·SE", f"{lab} ± t·SE"]
    rows, md_rows, notes = [], [], [interval_note(study, epoch)]
    for variant, points in sweep.items():
        best = {m: (-math.inf, None) for m in METRICS}
        for lam, g in points:
            seeds = study.seeds_at(g, epoch)
            row, md_row = [variant, lam, len(seeds), " ".join(map(str, seeds))], [variant, f"{lam:g}", str(len(seeds))]
            for m in METRICS:
                s = summarize(list(study.values(g, epoch, m).values()))
                row += [_p100(s.mean), _p100(s.half_normal), _p100(s.half_t), _p100(s.std)]
                md_row += [pm(s.mean, s.half_normal), pm(s.mean, s.half_t)]
                if np.isfinite(s.mean) and s.mean > best[m][0]:
                    best[m] = (s.mean, lam)
            rows.append(row)
            md_rows.append(md_row)
        notes.append(f"{variant}: highest mean at " + ", ".join(
            f"{study.label(m)} λ_b = {lam:g} ({pct(mu)})" for m, (mu, lam) in best.items() if lam is not None)
            + "; compare the intervals before calling it better.")
    notes += [n for g in (g for points in sweep.values() for _, g in points) for n in seed_notes(study, epoch)
              if n.startswith(f"{g}:")]
    return Table("table6_lambda_sweep", f"Table 6 — λ_b sweep at epoch {epoch} (%)", header, rows, md_header,
                 md_rows, notes)


# ---------------------------------------------------------------------------------------------------- table 3
def _delta_pairs(study: Study) -> list[tuple[str, str]]:
    """DELTA_PAIRS as group names (a λ_b-swept variant is represented by its λ_b = 0.2 group), where both exist."""
    pairs = [(study.group_of(a), study.group_of(b)) for a, b in DELTA_PAIRS]
    return [(a, b) for a, b in pairs if a is not None and b is not None]


def paired_diff_std(study: Study, a: str, b: str, epoch: int, metric: str) -> float:
    """Std (ddof=1) over the common seeds of the per-seed difference a − b (NaN with < 2 common seeds)."""
    va, vb = study.values(a, epoch, metric), study.values(b, epoch, metric)
    common = [s for s in va if s in vb and np.isfinite(va[s]) and np.isfinite(vb[s])]
    if len(common) < 2:
        return float("nan")
    return float(np.std([va[s] - vb[s] for s in common], ddof=1))


def class_summaries(study: Study, epoch: int) -> dict[str, dict[str, Summary]]:
    """class -> group -> Summary of that class's IoU over seeds at `epoch`."""
    return {c: {g: summarize(list(study.values(g, epoch, c).values())) for g in study.groups}
            for c in study.classes}


def per_class_table(study: Study, epoch: int) -> Table:
    """Table 3: per-class IoU (mean over seeds) per group and the deltas Δ(D−A), Δ(D−B), Δ(C−B), sorted by the
    largest |Δ| of the row, largest first."""
    pairs = _delta_pairs(study)
    summ = class_summaries(study, epoch)
    header = ["class"] + [f"{g} mean (%)" for g in study.groups] + [f"{g} std (pp)" for g in study.groups]
    header += [f"Δ({a}−{b}) (pp)" for a, b in pairs] + [f"Δ({a}−{b}) paired std (pp)" for a, b in pairs]
    header += ["max |Δ| (pp)"]
    md_header = ["class"] + list(study.groups) + [f"Δ({a}−{b})" for a, b in pairs]
    entries = []
    for c in study.classes:
        deltas = [summ[c][a].mean - summ[c][b].mean for a, b in pairs]
        finite = [abs(d) for d in deltas if np.isfinite(d)]
        largest = max(finite) if finite else float("nan")
        row = [c] + [_p100(summ[c][g].mean) for g in study.groups] + [_p100(summ[c][g].std) for g in study.groups]
        row += [_p100(d) for d in deltas] + [_p100(paired_diff_std(study, a, b, epoch, c)) for a, b in pairs]
        row += [_p100(largest)]
        md_row = [c] + [pct(summ[c][g].mean) for g in study.groups] + [signed_pct(d) for d in deltas]
        entries.append((largest, row, md_row))
    entries.sort(key=lambda e: -e[0] if np.isfinite(e[0]) else math.inf)  # NaN rows last
    notes = [f"IoU in percent at epoch {epoch}, mean over seeds; Δ(X−Y) = mean_X − mean_Y in percentage points; "
             "rows sorted by the largest |Δ| of the row."]
    if not study.classes:
        notes = ["the input has no per-class IoU (the tidy CSV needs columns named by class: road, ..., bicycle)"]
    notes += sweep_notes(study) if study.classes else []
    missing = [f"Δ({a}−{b})" for a, b in DELTA_PAIRS if study.group_of(a) is None or study.group_of(b) is None]
    if missing and study.classes:
        notes.append(f"{', '.join(missing)} not computed: the variants are not all present")
    return Table("table3_per_class_iou", f"Table 3 — per-class IoU at epoch {epoch} (%)", header,
                 [e[1] for e in entries], md_header, [e[2] for e in entries], notes)


def extremes_table(study: Study, epoch: int, a: str = "D", b: str = "B", k: int = 5) -> Table:
    """Table 3b: the k classes where `a` gains most over `b` and the k where it loses most, with ± std.

    Shown per class: mean ± inter-seed std of each variant, and Δ(a−b) ± the std (ddof=1) of the per-seed
    differences a_s − b_s over the seeds both have.
    """
    a, b = study.group_of(a) or a, study.group_of(b) or b  # a λ_b-swept variant: its λ_b = 0.2 group
    title = f"Table 3b — {a} vs {b}: top-{k} and bottom-{k} per-class Δ({a}−{b}) at epoch {epoch} (pp)"
    header = ["rank", "class", f"{b} mean (%)", f"{b} std (pp)", f"{a} mean (%)", f"{a} std (pp)",
              f"Δ({a}−{b}) (pp)", f"Δ({a}−{b}) paired std (pp)"]
    md_header = ["", "class", f"{b} ± std", f"{a} ± std", f"Δ({a}−{b}) ± std"]
    if not study.classes or a not in study.groups or b not in study.groups:
        why = "no per-class IoU in the input" if not study.classes else f"variant {a} or {b} is absent"
        return Table("table3b_d_vs_b_extremes", title, header, [], md_header, [], [why])
    summ = class_summaries(study, epoch)
    scored = [(summ[c][a].mean - summ[c][b].mean, c) for c in study.classes]
    scored = sorted([x for x in scored if np.isfinite(x[0])], reverse=True)
    k = min(k, len(scored) // 2)  # never list a class both as top and bottom
    picks = [("top", i + 1, d, c) for i, (d, c) in enumerate(scored[:k])]
    picks += [("bottom", i + 1, d, c) for i, (d, c) in enumerate(reversed(scored[len(scored) - k:]))]
    rows, md_rows = [], []
    for side, i, d, c in picks:
        sd = paired_diff_std(study, a, b, epoch, c)
        sa, sb = summ[c][a], summ[c][b]
        rows.append([f"{side}-{i}", c, _p100(sb.mean), _p100(sb.std), _p100(sa.mean), _p100(sa.std), _p100(d),
                     _p100(sd)])
        md_rows.append([f"{side} {i}", c, pm(sb.mean, sb.std), pm(sa.mean, sa.std),
                        f"{signed_pct(d)} ± {pct(sd)}" if np.isfinite(sd) else signed_pct(d)])
    notes = [f"± is the inter-seed std (ddof=1); for Δ it is the std of the per-seed differences {a}_s − {b}_s."]
    return Table("table3b_d_vs_b_extremes", title, header, rows, md_header, md_rows, notes)


# ---------------------------------------------------------------------------------------------------- table 4
def volatility_table(study: Study, epoch: int) -> Table:
    """Table 4: inter-seed std (ddof=1, pp) of each class's IoU per group; the largest of each column in bold."""
    summ = class_summaries(study, epoch)
    header = ["class"] + [f"{g} std (pp)" for g in study.groups]
    md_header = ["class"] + [f"{g} std" for g in study.groups]
    stds = np.array([[summ[c][g].std for g in study.groups] for c in study.classes]).reshape(
        len(study.classes), len(study.groups))  # (C, G)
    rows, md_rows, notes = [], [], []
    col_max = [int(np.nanargmax(stds[:, j])) if np.isfinite(stds[:, j]).any() else -1
               for j in range(len(study.groups))]
    for i, c in enumerate(study.classes):
        rows.append([c] + [_p100(x) for x in stds[i]])
        md_rows.append([c] + [f"**{pct(x)}**" if col_max[j] == i else pct(x) for j, x in enumerate(stds[i])])
    if study.classes:
        with np.errstate(all="ignore"):
            col_mean = [np.nanmean(stds[:, j]) if np.isfinite(stds[:, j]).any() else float("nan")
                        for j in range(len(study.groups))]
        rows.append(["mean over classes"] + [_p100(x) for x in col_mean])
        md_rows.append(["_mean over classes_"] + [pct(x) for x in col_mean])
        for j, g in enumerate(study.groups):
            if col_max[j] >= 0:
                notes.append(f"most volatile class of {g}: {study.classes[col_max[j]]} "
                             f"(std {pct(stds[col_max[j], j])} pp)")
        if np.isfinite(stds).any():
            i, j = np.unravel_index(np.nanargmax(stds), stds.shape)
            seeds = plural(summ[study.classes[i]][study.groups[j]].n, "seed")
            notes.insert(0, f"**most volatile overall: {study.classes[i]} in {study.groups[j]}** "
                            f"(std {pct(stds[i, j])} pp over {seeds})")
        else:
            notes.append("no class has 2 seeds in any variant: no std")
    else:
        notes.append("the input has no per-class IoU")
    return Table("table4_class_volatility", f"Table 4 — inter-seed std of per-class IoU at epoch {epoch} (pp)",
                 header, rows, md_header, md_rows, notes)


# ---------------------------------------------------------------------------------------------------- table 5
def significance_table(study: Study, epoch: int) -> Table:
    """Table 5: paired-by-seed t-test for every pair of groups and every metric, Holm-corrected per metric.

    "X vs Y" tests X − Y over the seeds both have (scipy.stats.ttest_rel). Holm runs over the pairs of one
    metric (6 for four variants). Beside it: whether the two groups' 1.96·SE intervals (and t intervals) overlap.
    """
    pairs = list(itertools.combinations(study.groups, 2))
    header = ["metric", "comparison", "n_pairs", "mean Δ (pp)", "t", "p", "Holm p", f"significant (Holm p < {ALPHA})",
              "1.96·SE CIs overlap", "t CIs overlap"]
    md_header = ["metric", "comparison", "n", "mean Δ (pp)", "t", "p", "Holm p", "sig.", "1.96·SE CIs overlap",
                 "t CIs overlap"]
    rows, md_rows = [], []
    for m in METRICS:
        tests = []
        for a, b in pairs:
            va, vb = study.values(a, epoch, m), study.values(b, epoch, m)
            common = [s for s in va if s in vb]
            delta, t, p = paired_ttest([va[s] for s in common], [vb[s] for s in common])
            sa, sb = summarize(list(va.values())), summarize(list(vb.values()))
            tests.append((a, b, len(common), delta, t, p, intervals_overlap(sa, sb, "normal"),
                          intervals_overlap(sa, sb, "t")))
        p_holm = holm([x[5] for x in tests])
        for (a, b, n, delta, t, p, ov_n, ov_t), ph in zip(tests, p_holm):
            sig = None if not np.isfinite(ph) else bool(ph < ALPHA)
            rows.append([study.label(m), f"{a} vs {b}", n, _p100(delta), t, p, ph, sig, ov_n, ov_t])
            md_rows.append([study.label(m), f"{a} vs {b}", str(n), signed_pct(delta),
                            "n/a" if not np.isfinite(t) else f"{t:.2f}".replace("-", "−"),
                            "n/a" if not np.isfinite(p) else f"{p:.4f}",
                            "n/a" if not np.isfinite(ph) else f"{ph:.4f}",
                            {None: "n/a", True: "**yes**", False: "no"}[sig], _yes_no(ov_n), _yes_no(ov_t)])
    notes = [f"paired by seed (seeds as pairs), two-sided; \"X vs Y\" tests X − Y; Holm's step-down correction "
             f"within each metric's {plural(len(pairs), 'comparison')}; significant = Holm p < {ALPHA}.",
             "The paper argued from non-overlapping 1.96·SE intervals; with n = 3 seeds that interval is 2.2× "
             "narrower than the t interval, and overlap/non-overlap is not a test.",
             "n/a: fewer than 2 common seeds (no test; left out of the Holm family)."] + study.caveats
    return Table("table5_significance", f"Table 5 — significance at epoch {epoch}", header, rows, md_header,
                 md_rows, notes)


# ---------------------------------------------------------------------------------------------------- table 5b
BOOTSTRAP_TABLE = "table5b_image_bootstrap"
_BOOT_HEADER = ["metric", "comparison", "unit", "n_seeds X", "n_seeds Y", "Δ", "bootstrap 95% CI low",
                "bootstrap 95% CI high", "bootstrap p", "bootstrap Holm p", f"bootstrap significant (Holm p < {ALPHA})",
                "t-test n_pairs", "t-test mean Δ", "t", "t-test p", "t-test Holm p",
                f"t-test significant (Holm p < {ALPHA})"]
_BOOT_MD_HEADER = ["metric", "comparison", "seeds", "Δ", "bootstrap 95 % CI", "boot. p", "boot. Holm p", "sig.",
                   "t-test Δ", "t-test p", "t-test Holm p", "sig."]


def _signed(x: float, factor: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{factor * x:+.2f}".replace("-", "−")


def _p(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.4f}"


def _sig(p_holm: float) -> bool | None:
    return None if not np.isfinite(p_holm) else bool(p_holm < ALPHA)


def _sig_mark(p_holm: float) -> str:
    return {None: "n/a", True: "**yes**", False: "no"}[_sig(p_holm)]


def skipped_bootstrap_table(epoch: int, reason: str) -> Table:
    """Table 5b without rows: the bootstrap was off or could not run, and `reason` says why."""
    return Table(BOOTSTRAP_TABLE, f"Table 5b — paired image bootstrap at epoch {epoch}", _BOOT_HEADER, [],
                 _BOOT_MD_HEADER, [], [reason])


def bootstrap_table(study: Study, epoch: int, per_image: dict[str, dict[int, dict[str, np.ndarray]]], profile: str,
                    num_replicates: int, seed: int) -> tuple[Table, dict[str, dict[tuple[str, str], dict]]]:
    """Table 5b: for every pair of groups and every metric, the paired image bootstrap (`report.bootstrap.
    bootstrap_metrics`, which defines it) beside the paired-by-seed t-test (as table 5), both Holm-corrected
    within each metric.

    Both tests use the same per-run values: each run's metric on all images, from its per-image statistics
    (`per_image`: {group: {seed: arrays}}, `report.load.load_per_image`; equal to its results file's values).
    Returns the table and the bootstrap results keyed by results.json metric key (for `plot_bootstrap`).
    """
    names = PROFILE_METRICS[profile]  # results.json key -> bootstrap metric
    groups = [g for g in study.groups if g in per_image]
    pairs = list(itertools.combinations(groups, 2))
    if not pairs:
        return skipped_bootstrap_table(epoch, f"fewer than two groups with per-image statistics at epoch {epoch}: "
                                              "nothing to compare"), {}
    seeds = {g: sorted(per_image[g]) for g in groups}
    stats = {g: [per_image[g][s] for s in seeds[g]] for g in groups}
    boot = bootstrap_metrics(stats, pairs, list(names.values()), num_replicates, seed, progress=True)
    per_seed = {g: {s: full_set_values(per_image[g][s], names.values()) for s in seeds[g]} for g in groups}
    rows, md_rows, results = [], [], {}
    for key, name in names.items():
        unit, factor = metric_unit(key)
        tests = []
        for a, b in pairs:
            common = [s for s in seeds[a] if s in per_image[b]]
            tests.append((len(common), *paired_ttest([per_seed[a][s][name] for s in common],
                                                     [per_seed[b][s][name] for s in common])))
        t_holm = holm([t[3] for t in tests])
        results[key] = {pair: boot[name][pair] for pair in pairs}
        for (a, b), (n_pairs, t_delta, t, t_p), t_ph in zip(pairs, tests, t_holm):
            r = boot[name][a, b]
            rows.append([METRIC_LABELS[key], f"{a} vs {b}", unit, len(seeds[a]), len(seeds[b]), factor * r["delta"],
                         factor * r["ci_low"], factor * r["ci_high"], r["p"], r["p_holm"], _sig(r["p_holm"]),
                         n_pairs, factor * t_delta, t, t_p, t_ph, _sig(t_ph)])
            md_rows.append([METRIC_LABELS[key], f"{a} vs {b}", f"{len(seeds[a])}/{len(seeds[b])}",
                            _signed(r["delta"], factor),
                            f"[{_signed(r['ci_low'], factor)}, {_signed(r['ci_high'], factor)}]",
                            _p(r["p"]), _p(r["p_holm"]), _sig_mark(r["p_holm"]), _signed(t_delta, factor), _p(t_p),
                            _p(t_ph), _sig_mark(t_ph)])
    n_images = len(next(iter(stats.values()))[0]["names"])
    notes = [f"**Image bootstrap** ({num_replicates} replicates of the {n_images} images drawn with replacement, "
             f"seed {seed}, the same draws for every run; a group is the mean over its seeds): measures "
             "**image-sampling variance** — would the difference between these trained models hold on another "
             "sample of images like these? It does not cover another training seed.",
             "**Paired-by-seed t-test** (as table 5, pairs = common seeds): measures **training-seed variance** — "
             "would the difference hold for models trained with other seeds, on these images?",
             f"\"X vs Y\": Δ = X − Y on all images, in pp ({unit_notes(names)}); the 95 % CI, bootstrap p and "
             "Holm p (within each metric, over its "
             f"{plural(len(pairs), 'comparison')}) as defined in `report/bootstrap.py: bootstrap_metrics`; "
             f"bootstrap p = 0: no replicate reached 0 (p < {2 / num_replicates:.2g}); significant = Holm p < {ALPHA}.",
             f"metrics profile: {profile} (Boundary F1 and Trimap IoU as that profile defines them)."]
    return Table(BOOTSTRAP_TABLE, f"Table 5b — paired image bootstrap vs paired-by-seed t-test at epoch {epoch}",
                 _BOOT_HEADER, rows, _BOOT_MD_HEADER, md_rows, notes), results


# ---------------------------------------------------------------------------------------------------- crossover
def rankings(study: Study, metric: str,
             last_epoch: int | None = None) -> list[tuple[int, list[tuple[str, float]], int]]:
    """Per evaluated epoch up to `last_epoch`: (epoch, [(group, mean)] best first, fewest seeds behind a mean)."""
    out = []
    for e in [e for e in study.epochs if last_epoch is None or e <= last_epoch]:
        means = [(g, summarize(list(study.values(g, e, metric).values()))) for g in study.groups]
        means = [(g, s.mean, s.n) for g, s in means if s.n > 0]
        if not means:
            continue
        means.sort(key=lambda x: (-x[1], x[0]))
        out.append((e, [(g, mu) for g, mu, _ in means], min(n for _, _, n in means)))
    return out


def crossover_tables(study: Study, early_epoch: int | None, final_epoch: int) -> tuple[Table, Table]:
    """Crossover analysis per metric over the epochs up to `final_epoch`: the ranking at every epoch, the last
    epoch where the leader changes, and the C−B gap at the early versus the final epoch.

    ranking: the groups by their mean over the seeds present at that epoch, best first (ties by name);
    last leader change: the last evaluated epoch whose leader (rank 1) differs from the previous evaluated
    epoch's (None, "never", when one group leads throughout); C−B gap: mean_C − mean_B in percentage points.
    """
    rank_header = ["metric", "epoch", "min_seeds", "ranking", "leader", "leader_changed"]
    rank_rows, rank_md = [], []
    early_name = "early epoch" if early_epoch is None else f"epoch {early_epoch}"
    sum_header = ["metric", "final leader", "last leader change (epoch)", "previous leader",
                  f"C−B gap at {early_name} (pp)", f"C−B gap at epoch {final_epoch} (pp)"]
    sum_rows, sum_md = [], []
    full = len(study.seeds)
    for m in METRICS:
        ranks = rankings(study, m, last_epoch=final_epoch)
        last_change, previous, prev_leader = None, None, None
        for e, order, n_min in ranks:
            leader = order[0][0]
            changed = prev_leader is not None and leader != prev_leader
            if changed:
                last_change, previous = e, prev_leader
            prev_leader = leader
            ranking = " > ".join(g for g, _ in order)
            rank_rows.append([study.label(m), e, n_min, ranking, leader, changed])
            rank_md.append([study.label(m), f"{e}" + ("*" if n_min < full else ""),
                            " > ".join(f"{g} {pct(mu)}" for g, mu in order), "←" if changed else ""])
        gaps = []
        group_c, group_b = study.group_of("C"), study.group_of("B")
        for e in (early_epoch, final_epoch):
            if e is None or group_c is None or group_b is None:
                gaps.append(float("nan"))
                continue
            c = summarize(list(study.values(group_c, e, m).values()))
            b = summarize(list(study.values(group_b, e, m).values()))
            gaps.append(c.mean - b.mean)
        final_leader = ranks[-1][1][0][0] if ranks else "n/a"
        sum_rows.append([study.label(m), final_leader, last_change, previous, _p100(gaps[0]), _p100(gaps[1])])
        sum_md.append([study.label(m), final_leader,
                       "never" if last_change is None else str(last_change),
                       previous or "—", signed_pct(gaps[0]), signed_pct(gaps[1])])
    notes = ["ranking by the mean over the seeds present at each epoch; the last leader change is the last "
             "evaluated epoch whose leader differs from the previous evaluated epoch's.",
             "C−B gap = mean_C − mean_B (pp)."] + sweep_notes(study) + study.caveats
    sum_md_header = ["metric", "final leader", "last leader change", "previous leader",
                     *(h.replace(" (pp)", "") for h in sum_header[4:])]
    summary = Table("crossover_summary", "Crossover — leader changes and the C−B gap", sum_header, sum_rows,
                    sum_md_header, sum_md, notes)
    detail = Table("crossover_rankings", "Ranking of the variants at every evaluated epoch (mean, %)",
                   rank_header, rank_rows, ["metric", "epoch", "ranking (best first)", "leader changed"], rank_md,
                   ["* : at least one variant has fewer seeds at this epoch than in the whole study."] + study.caveats)
    return summary, detail


# ---------------------------------------------------------------------------------------------------- small reports
# Tables that compare groups, and the one that measures the spread over seeds: with one group (one seed) they
# have nothing to show (`shown`).
COMPARING_TABLES = ("table3b_d_vs_b_extremes", "table5_significance", BOOTSTRAP_TABLE, "crossover_summary",
                    "crossover_rankings")
SPREAD_TABLES = ("table4_class_volatility",)


def shown(table: Table, study: Study) -> Table:
    """`table` as summary.md shows it: a table comparing groups when the study has one group, or the inter-seed
    spread when every group has one seed, is one line saying what it needs, not an empty or all-n/a table (a demo's
    first report). The CSV keeps the table's rows."""
    if table.name in COMPARING_TABLES and len(study.groups) < 2:
        why = (f"needs ≥ 2 groups to compare; this report has one ({', '.join(study.groups)}): train another "
               "variant (train.py --variant) into the same runs folder")
    elif table.name in SPREAD_TABLES and max((len(study.seeds_of(g)) for g in study.groups), default=0) < 2:
        why = "needs ≥ 2 seeds of a group for an inter-seed spread; every group here has one (train.py --seed)"
    else:
        return table
    return replace(table, md_rows=[], notes=[why])


# ---------------------------------------------------------------------------------------------------- completeness
def completeness_notes(study: Study) -> list[str]:
    """Every hole in the group × seed × epoch grid, one line per seed and set of missing epochs (never dropped
    silently), plus the groups whose seeds are too few for an interval."""
    if not study.missing():
        return [f"complete: every variant has every seed ({', '.join(map(str, study.seeds))}) at every epoch"]
    by_hole: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for g, s, epochs in study.missing():
        by_hole.setdefault((s, tuple(epochs)), []).append(g)
    notes = []
    for (s, epochs), groups in sorted(by_hole.items()):
        if len(epochs) == len(study.epochs):
            what = "no result at any epoch"
        else:
            what = (f"no result at {noun_for(len(epochs), 'epoch')} {', '.join(map(str, epochs))} ({len(epochs)} of "
                    f"{len(study.epochs)})")
        notes.append(f"seed {s} of {noun_for(len(groups), 'variant')} {', '.join(groups)}: {what}")
    for g in study.groups:
        n = len(study.seeds_of(g))
        if n < 2:
            notes.append(f"variant {g} has {n} seed in total: no CI and no t-test for it")
    return notes


# ---------------------------------------------------------------------------------------------------- consensus
CONSENSUS_TABLE = "table7_consensus"
_CONS_HEADER = ["pairing", "metric", "unit", "n_seeds", "Δ mean over seeds", "Δ %", "t", "t-test p", "t-test Holm p",
                "bootstrap Δ", "bootstrap 95% CI low", "bootstrap 95% CI high", "bootstrap p", "bootstrap Holm p"]
_CONS_MD_HEADER = ["pairing", "metric", "seeds", "Δ", "Δ %", "t-test p (Holm)", "bootstrap 95 % CI",
                   "bootstrap p (Holm)"]


def consensus_table(consensus: dict[str, dict[int, tuple[dict, dict]]], profile: str, num_replicates: int,
                    seed: int) -> Table:
    """Table 7, the consensus matrix: for each pairing "X vetoed by Y" (`report.load.load_consensus`) and each
    metric, fused − primary: the mean over seeds of the per-seed Δ (and in % of the primary's mean), the
    paired-by-seed t-test (`report.stats.paired_ttest`), and the paired image bootstrap of fused vs primary
    (`report.bootstrap.bootstrap_metrics`, `num_replicates` draws with `seed`; 0 = none); Holm within each
    metric over the pairings."""
    names = PROFILE_METRICS[profile]
    pairings = list(consensus)
    per_seed = {p: {s: tuple(full_set_values(a, names.values()) for a in arrays) for s, arrays in runs.items()}
                for p, runs in consensus.items()}
    boot = {}
    if num_replicates and pairings:
        stats = {f"{p}|{role}": [runs[s][i] for s in sorted(runs)] for p, runs in consensus.items()
                 for i, role in enumerate(("primary", "fused"))}
        boot = bootstrap_metrics(stats, [(f"{p}|fused", f"{p}|primary") for p in pairings], list(names.values()),
                                 num_replicates, seed, progress=True)
    rows, md_rows = [], []
    for key, name in names.items():
        unit, factor = metric_unit(key)
        tests = []
        for p in pairings:
            seeds = sorted(per_seed[p])
            tests.append(paired_ttest([per_seed[p][s][1][name] for s in seeds],  # fused, primary
                                      [per_seed[p][s][0][name] for s in seeds]))
        t_holm = holm([t[2] for t in tests])
        b = [boot[name][f"{p}|fused", f"{p}|primary"] if boot else None for p in pairings]
        for p, (delta, t, t_p), t_ph, r in zip(pairings, tests, t_holm, b):
            base = float(np.mean([v[0][name] for v in per_seed[p].values()]))
            pct = 100 * delta / base if base else math.nan
            rows.append([p, METRIC_LABELS[key], unit, len(per_seed[p]), factor * delta, pct, t, t_p, t_ph,
                         *((factor * r["delta"], factor * r["ci_low"], factor * r["ci_high"], r["p"], r["p_holm"])
                           if r else (math.nan,) * 5)])
            md_rows.append([p, METRIC_LABELS[key], str(len(per_seed[p])), _signed(delta, factor), _signed(pct, 1),
                            f"{_p(t_p)} ({_p(t_ph)})",
                            f"[{_signed(r['ci_low'], factor)}, {_signed(r['ci_high'], factor)}]" if r else "n/a",
                            f"{_p(r['p'])} ({_p(r['p_holm'])})" if r else "n/a"])
    notes = ["Δ = fused − primary (the consensus filter `metrics/consensus.py: cc_veto`), per seed s on primary "
             "seed s vetoed by veto seed s, then the mean over seeds; in pp "
             f"({unit_notes(names)}); Δ % relative to the primary's mean.",
             "t-test: paired by seed (fused vs primary); bootstrap: the paired image bootstrap as table 5b "
             f"({num_replicates} replicates, seed {seed}); Holm within each metric over the "
             f"{plural(len(pairings), 'pairing')}.",
             f"metrics profile: {profile}."]
    return Table(CONSENSUS_TABLE, "Table 7 — consensus filter: fused vs primary", _CONS_HEADER, rows, _CONS_MD_HEADER,
                 md_rows, notes)
