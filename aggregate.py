"""Aggregate evaluation results into the study's tables and figures.

Reads every `*.results.json` below a runs directory (or the original study's tidy CSV) and writes, to --out:
summary.md (all tables in Markdown), one CSV per table, curves.png, per_class_iou.png and viewer.html (one
self-contained file, offline: the curves, per-class bars, tables and sampled predictions to explore;
report/viewer.py, docs/report.md):
  1. global metrics at the final epoch, mean ± 1.96·SE (the paper's interval) and ± t(0.975, n−1)·SE
  2. the same at an early epoch (default 10)
  3. per-class IoU per variant with Δ(D−A), Δ(D−B), Δ(C−B) (+ 3b: top/bottom-5 of D vs B)
  4. inter-seed std per class and variant
  5. paired-by-seed t-tests of every pair of variants, Holm-corrected per metric, beside CI overlap
  5b. the paired image bootstrap of every pair beside the t-test (from the runs' *.per_image.npz; bootstrap.png)
  7. the consensus filter, fused vs primary per pairing, when runs hold evaluate.py --consensus results
     (table7_consensus.csv; docs/report.md)
  8. with --compare-inference MODE: ranks and paired Δs under single-scale and under test-time augmentation
     (table8_inference.csv, table8b_inference_pairs.csv; report/inference_compare.py, docs/inference.md)
  and the crossover analysis (ranking per epoch, last leader change, C−B gap early vs final).
Runs are grouped by variant and λ_b schedule ("C", "C steal"). With a λ_b sweep (a variant run at several
--lambda-boundary values) its constant-λ_b runs are grouped by (variant, λ_b) ("C λb=0.05") and
  6. the final metrics against λ_b (table6_lambda_sweep.csv, lambda_sweep.png) are added; when run dirs hold
the per-term gradient logs of `train.py --log-grad-norms K`, grad_trajectories.png/.csv plot them per group.
Only the results of one inference mode make the tables (--inference, default whole): modes are never mixed.

    python aggregate.py runs/ --out report/
    python aggregate.py --from-csv reference/pilot_results.csv --out reports/paper/
    python aggregate.py runs/ --out report/ --early-epoch 20 --wandb
    python aggregate.py runs/ --out report/ --compare-inference whole-flip-ms0.5,0.75,1,1.25,1.5,1.75
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils import UserError, atomic_write_text, parse_args_first, run_main
from utils.cli import ArgumentParser
from utils.console import plural
from utils.signals import sigterm_as_ctrl_c
from utils.staged_dir import staged_folder

# The most bootstrap replicates: 10x the default, p-values to 2e-5. Time and memory grow with B (8·B bytes per pair
# and metric, then percentiles over them): --bootstrap 100000000 ran for minutes before printing anything.
MAX_BOOTSTRAP = 100_000


FIGURE_FORMATS = ("png", "pdf", "svg")  # --format: the PNG summary.md links, and vector copies for papers


def figure_formats(value: str) -> tuple[str, ...]:
    """argparse type of --format: "png,pdf" -> ("png", "pdf"); an unknown format names the valid ones."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in value.split(",") if f.strip()))
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(value)}: not a figure format; valid: "
                                         f"{', '.join(FIGURE_FORMATS)} (comma-separated, e.g. png,pdf)")
    return formats


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", nargs="?", help="folder searched recursively for *.results.json")
    p.add_argument("--from-csv", metavar="FILE", help="tidy CSV instead of a runs folder (variant, seed, epoch, "
                   "mIoU, boundary_f1_mean, trimap_mIoU_mean, optional per-class columns; fractions)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="where summary.md, the CSVs and PNGs go")
    p.add_argument("--early-epoch", type=int, default=None, help="epoch of table 2 and of the early C−B gap "
                   "(default 10, skipped with a note when 10 was not evaluated)")
    p.add_argument("--final-epoch", type=int, default=None, help="epoch of tables 1, 3-5 (default: the last one)")
    p.add_argument("--band", choices=("normal", "t"), default="normal",
                   help="shaded band of the curves: mean ± 1.96·SE (normal, as the paper) or ± t(0.975, n−1)·SE")
    p.add_argument("--bootstrap", type=int, default=10_000, metavar="B", help="replicates of the paired image "
                   "bootstrap at the final epoch (table 5b; needs *.per_image.npz beside the results); 0 = off, "
                   f"at most {MAX_BOOTSTRAP}")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap's image draws")
    p.add_argument("--inference", default="whole", metavar="MODE",
                   help="the inference mode whose results make the tables (engine.inference's tag, e.g. "
                        "whole-flip-ms0.5,1,1.5; default whole, the study's protocol); modes are never mixed")
    p.add_argument("--compare-inference", default=None, metavar="MODE", help="add tables 8a/8b: each variant's "
                   "metrics and rank, and the paired Δ between variants, under --inference and under MODE")
    p.add_argument("--format", type=figure_formats, default=("png",), metavar="FMT[,FMT...]",
                   help="figure formats, comma-separated: png (summary.md links it; always written), pdf, svg "
                        "(vector, for papers); default png")
    p.add_argument("--no-html", action="store_true", help="do not write viewer.html, the interactive viewer")
    p.add_argument("--wandb", action="store_true", help="also log tables and figures to a W&B run (offline "
                   "unless logged in; WANDB_MODE is respected)")
    p.add_argument("--wandb-report", action="store_true", help="also build a W&B Report of the project's "
                   "training runs and of this aggregate (implies --wandb): its definition goes to "
                   "REPORT_DIR/wandb_report.json, and it is saved to W&B when logged in (docs/report.md)")
    p.add_argument("--wandb-project", default="boundary-seg", help="W&B project of the aggregate run and of the "
                   "training runs the report shows (default: boundary-seg)")
    p.add_argument("--wandb-entity", default=None, help="W&B entity (team or user) of the runs and the report "
                   "(default: your login's default entity)")
    p.add_argument("--wandb-name", default=None, help="name of the aggregate's W&B run (default: W&B's)")
    args = p.parse_args(argv)
    if (args.runs_dir is None) == (args.from_csv is None):
        p.error("give either RUNS_DIR or --from-csv FILE (exactly one)")
    if args.from_csv and (args.inference != "whole" or args.compare_inference):
        p.error("--inference and --compare-inference read a runs folder's results, not --from-csv")
    if args.compare_inference == args.inference:
        p.error(f"--compare-inference {args.compare_inference}: give another mode than --inference's")
    if args.bootstrap < 0 or args.bootstrap_seed < 0:
        p.error("--bootstrap and --bootstrap-seed take integers >= 0")
    if args.bootstrap > MAX_BOOTSTRAP:
        p.error(f"--bootstrap {args.bootstrap}: at most {MAX_BOOTSTRAP} replicates (the default "
                f"{p.get_default('bootstrap')} already gives p-values to 2e-4; time and memory grow with B)")
    if args.wandb_report:  # the report shows the aggregate run's tables and figures: log them (--wandb)
        from report.wandb_report import check_entity

        check_entity(args.wandb_entity)
        args.wandb = True
    return args


if __name__ == "__main__":
    parse_args_first(parse_args)  # --help and rejected flags answer before matplotlib and scipy load (~2 s)

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from report.figures import (group_colors, plot_bootstrap, plot_curves, plot_grad_trajectories, plot_lambda_sweep,
                            plot_per_class, saved_formats)
from report.gradients import GradTrajectories, grad_trajectory_table, load_grad_logs
from report.inference_compare import inference_tables
from report.load import (METRICS, Study, inference_modes, load_consensus, load_csv, load_per_image,
                         load_runs_dir)
from report.stats import summarize
from report.tables import (Table, bootstrap_table, completeness_notes, consensus_table,
                           crossover_tables, extremes_table,
                           global_metrics_table, lambda_sweep_table, per_class_table, significance_table,
                           shown, skipped_bootstrap_table, volatility_table)
from report.viewer import VIEWER_FILE, build_viewer, viewer_data
from report.wandb_log import WANDB_DIR
from report.wandb_report import ReportNotSaved

console = Console(stderr=True)


def pick_epochs(study: Study, early: int | None, final: int | None) -> tuple[int | None, int]:
    """The final epoch (default: last evaluated) and the early epoch (default 10; None if 10 was not evaluated)."""
    listed = ", ".join(map(str, study.epochs))
    final = study.epochs[-1] if final is None else final
    if final not in study.epochs:
        raise UserError(f"--final-epoch {final}: no result at that epoch; evaluated epochs: {listed}")
    if early is None:
        return (10 if 10 in study.epochs else None), final
    if early not in study.epochs:
        raise UserError(f"--early-epoch {early}: no result at that epoch; evaluated epochs: {listed}")
    return early, final


def bootstrap_section(study: Study, final: int, args: argparse.Namespace, loaded) -> tuple[Table, dict]:
    """Table 5b and the bootstrap results for the figure from `loaded` (`report.load.load_per_image` at `final`);
    without per-image statistics (a tidy CSV, results without *.per_image.npz) or with --bootstrap 0, a table
    without rows saying why (also on the console)."""
    if args.bootstrap == 0:
        return skipped_bootstrap_table(final, "off (--bootstrap 0)"), {}
    if loaded is None:
        why = ("a tidy CSV holds no per-image statistics" if args.from_csv else
               f"no *.per_image.npz beside the epoch-{final} results (evaluate.py writes them)")
        table = skipped_bootstrap_table(final, f"image bootstrap skipped: {why}; it needs a runs folder whose "
                                               "results have them (--bootstrap 0 turns it off)")
        console.print(f"[yellow]{escape(table.notes[0])}[/yellow]", soft_wrap=True)
        return table, {}
    return bootstrap_table(study, final, *loaded, args.bootstrap, args.bootstrap_seed)


def inference_comparison(study: Study, final: int, args: argparse.Namespace) -> tuple[Table, Table]:
    """Tables 8a/8b (report.inference_compare): --inference's study beside --compare-inference's, at `final`."""
    other = Study.from_records(load_runs_dir(args.runs_dir, args.compare_inference))
    if final not in other.epochs:
        raise UserError(f"--compare-inference {args.compare_inference}: no results at the final epoch {final} (its "
                        f"epochs: {', '.join(map(str, other.epochs))}); evaluate them with evaluate.py's mode flags")
    return inference_tables(study, other, args.compare_inference, final)


def print_table(t: Table) -> None:
    if not t.md_rows:  # a table with nothing to show (report.tables.shown): its title and why
        console.print(f"{t.title}: {'; '.join(t.notes)}", soft_wrap=True)
        return
    rt = RichTable(title=t.title, title_justify="left")
    for i, h in enumerate(t.md_header):
        rt.add_column(h, justify="left" if i == 0 else "right")
    for row in t.md_rows:
        rt.add_row(*[c.replace("**", "") for c in row])
    console.print(rt)


def main(argv=None) -> int:
    args = parse_args(argv)
    # --out gets the whole report or nothing (utils.staged_dir): it is written into a temp folder beside --out,
    # swapped in at the end; files of an earlier report that this one lacks go, files a user put there and the
    # W&B offline runs of earlier reports (not uploaded yet, maybe) stay
    with staged_folder(Path(args.out), "--out", publish_on=(ReportNotSaved,), keep=(WANDB_DIR,),
                       marker="summary.md") as out:
        return write_report(args, out)


def write_report(args: argparse.Namespace, out: Path) -> int:
    """The report of `args` into the folder `out` (main's temp folder), and to W&B with --wandb."""
    # -------- load: one Record per (variant, seed, epoch), grouped by variant and λ_b schedule (report.load.Grouping:
    #          split further by λ_b for a λ_b sweep, e.g. "C λb=0.05"; a schedule is its own group, e.g. "C steal")
    source = args.from_csv or args.runs_dir
    records = load_csv(args.from_csv) if args.from_csv else load_runs_dir(args.runs_dir, args.inference)
    study = Study.from_records(records)
    early, final = pick_epochs(study, args.early_epoch, args.final_epoch)
    from_history = sum(r.from_history for r in records)  # train.py's epochs without a checkpoint (load_history)
    counted = plural(len(records) - from_history, "result") + (
        f" (+ {plural(from_history, 'evaluated epoch')} without a checkpoint, from the runs' metrics.jsonl)"
        if from_history else "")
    console.print(f"{counted} from {source}: variants {', '.join(study.groups)}, "
                  f"seeds {', '.join(map(str, study.seeds))}, {plural(len(study.epochs), 'epoch')} "
                  f"({study.epochs[0]}…{study.epochs[-1]})")
    for line in study.caveats:  # metrics from another estimator than the toolkit's (report.load.ESTIMATOR_CAVEATS)
        console.print(f"[yellow]caveat: {escape(line)}[/yellow]", soft_wrap=True)
    others = [] if args.from_csv else [m for m in inference_modes(args.runs_dir) if m != args.inference]
    if others and not args.compare_inference:
        console.print(f"results of inference mode {args.inference} only; also there: {', '.join(others)} "
                      "(--inference MODE for their tables, --compare-inference MODE to set them side by side)",
                      soft_wrap=True)
    completeness = completeness_notes(study)
    for line in completeness:  # holes are reported, never dropped silently
        console.print(f"[yellow]{line}[/yellow]" if not line.startswith("complete") else line, soft_wrap=True)

    # -------- tables
    t1 = global_metrics_table(study, final, "table1_final_epoch", f"Table 1 — global metrics at the final "
                              f"epoch {final} (%)")
    if early is not None:
        t2 = global_metrics_table(study, early, "table2_early_epoch", f"Table 2 — global metrics at the early "
                                  f"epoch {early} (%)")
    else:
        t2 = Table("table2_early_epoch", "Table 2 — global metrics at an early epoch", t1.header, [], t1.md_header,
                   [], [f"epoch 10 was not evaluated (epochs: {', '.join(map(str, study.epochs))}); "
                        "pick one with --early-epoch"])
    t3 = per_class_table(study, final)
    t3b = extremes_table(study, final)
    t4 = volatility_table(study, final)
    t5 = significance_table(study, final)
    # the runs' per-image statistics at the final epoch, read once: the bootstrap's, and the viewer's Images panel's
    per_image = None if args.from_csv or args.bootstrap == 0 else load_per_image(study, final)
    t5b, boot = bootstrap_section(study, final, args, per_image)
    cross_summary, cross_rankings = crossover_tables(study, early, final)
    tables = [t1, t2, t3, t3b, t4, t5, t5b, cross_summary, cross_rankings]
    consensus = load_consensus(args.runs_dir, final) if args.runs_dir else {}  # evaluate.py --consensus files
    t7 = consensus_table(consensus, study.records[0].metrics_profile, args.bootstrap, args.bootstrap_seed) \
        if consensus else None
    if t7 is not None:
        tables.append(t7)
    t8 = inference_comparison(study, final, args) if args.compare_inference else None
    tables += list(t8 or ())
    t6 = lambda_sweep_table(study, final)  # None unless a variant was run at several λ_b
    if t6 is not None:
        tables.append(t6)
    grad_logs = load_grad_logs(args.runs_dir) if args.runs_dir else []
    trajectories = GradTrajectories(grad_logs, study.grouping) if grad_logs else None

    # -------- figures
    figures = {"curves": plot_curves(study, out / "curves.png", band=args.band, mark_epoch=early,
                                     formats=args.format)}
    per_class = plot_per_class(study, final, out / "per_class_iou.png", formats=args.format)
    if per_class is not None:  # None: no per-class IoU in this input (a stale figure is gone: main's staging)
        figures["per_class_iou"] = per_class
    if boot:
        figures["bootstrap"] = plot_bootstrap(boot, out / "bootstrap.png", formats=args.format)
    if t6 is not None:
        figures["lambda_sweep"] = plot_lambda_sweep(study, final, out / "lambda_sweep.png", band=args.band,
                                                     formats=args.format)
    if trajectories is not None:
        keys = {**trajectories.group_keys, **study.group_keys}  # colours as in the other figures
        colors = group_colors(study.groups + [g for g in trajectories.groups if g not in keys], keys)
        figures["grad_trajectories"] = plot_grad_trajectories(trajectories, out / "grad_trajectories.png", args.band,
                                                              colors, formats=args.format)
        grad_table = grad_trajectory_table(trajectories)
        atomic_write_text(out / "grad_trajectories.csv", grad_table.to_csv())

    # -------- write: one CSV per table, then summary.md (every file atomically)
    for t in tables:
        atomic_write_text(out / f"{t.name}.csv", t.to_csv())
    md = ["# Loss-ablation report\n",
          f"Source: `{source}` — {counted}; variants {', '.join(study.groups)}; seeds "
          f"{', '.join(map(str, study.seeds))}; epochs {', '.join(map(str, study.epochs))}. Final epoch {final}, "
          f"early epoch {early if early is not None else 'n/a'}. Values in percent; Δ in percentage points (pp).\n",
          *[f"**Caveat.** {line}\n" for line in study.caveats],
          "## Data completeness\n", *[f"- {line}" for line in completeness], "",
          "## Global metrics\n", t1.to_markdown(), t2.to_markdown(),
          "## Per-class IoU\n", *(shown(t, study).to_markdown() for t in (t3, t3b, t4)),
          "## Significance\n", *(shown(t, study).to_markdown() for t in (t5, t5b)),
          "## Crossover\n", shown(cross_summary, study).to_markdown(),
          "<details><summary>Ranking at every epoch</summary>\n", shown(cross_rankings, study).to_markdown(),
          "</details>\n"]
    if t6 is not None:
        md += ["## λ_b sweep\n", t6.to_markdown()]
    if t7 is not None:
        md += ["## Consensus filter\n", t7.to_markdown()]
    if t8 is not None:
        md += ["## Single-scale vs test-time augmentation\n", *(t.to_markdown() for t in t8)]
    if trajectories is not None:
        md += ["## Gradient trajectories\n",
               f"{plural(len(grad_logs), 'run')} with `grad_stats.jsonl`; groups {', '.join(trajectories.groups)}. "
               "Numbers per group, statistic and epoch in `grad_trajectories.csv`.", "",
               *[f"- {n}" for n in grad_table.notes], ""]
    md += ["## Figures\n", *[f"![{k}]({p.name})\n" for k, p in figures.items()]]
    atomic_write_text(out / "summary.md", "\n".join(md))
    viewer = None  # report.viewer: the interactive page, one offline file (open it in a browser)
    if not args.no_html:
        data = viewer_data(study, tables, early=early, final=final, source=source, runs_dir=args.runs_dir,
                           band=args.band, per_image=per_image)
        viewer = build_viewer(data, out / VIEWER_FILE)
    print_table(t1)
    print_table(shown(cross_summary, study))
    if t6 is not None:
        print_table(t6)
    for t in t8 or ():
        print_table(t)
    n_csv = len(tables) + (trajectories is not None)
    kinds = "/".join(f.upper() for f in saved_formats(args.format))
    console.print(f"wrote summary.md, {plural(n_csv, 'CSV')} and {plural(len(figures), 'figure')} ({kinds}) to "
                  f"{args.out}/")
    if viewer is not None:  # where to look, and which panel is left out and why (the page says it too)
        console.print(f"viewer: {Path(args.out) / VIEWER_FILE} (open it in a browser, offline)", soft_wrap=True)
        for panel, reason in data["absent"].items():
            console.print(f"  no {panel} panel: {escape(reason)}", soft_wrap=True)
        if data["images"] and data["images"]["left_out"]:  # a run's samples missing: the panel shows the others
            console.print(f"  images panel: {escape(data['images']['left_out'])}", soft_wrap=True)

    # -------- W&B (optional)
    if args.wandb:
        from report.wandb_log import new_run_id, push_report, shown_tables

        headline = {f"final/{g}/{study.key(m)}": summarize(list(study.values(g, final, m).values())).mean
                    for g in study.groups for m in METRICS}
        run_id = new_run_id()
        logged, notes = shown_tables(tables, study)  # a table with nothing to show: its line, not an empty table
        where = push_report(logged, figures, headline, project=args.wandb_project, name=args.wandb_name,
                            config={"source": str(source), "final_epoch": final, "early_epoch": early,
                                    "variants": study.groups, "seeds": study.seeds, "band": args.band},
                            entity=args.wandb_entity, run_id=run_id, out_dir=out, html=viewer, notes=notes)
        console.print(f"W&B: {where}".replace(str(out), args.out), soft_wrap=True)  # where it is once published
        if args.wandb_report:  # report.wandb_report: written to --out, saved when logged in (else a UserError)
            from report.wandb_report import REPORT_FILE, build_report, publish_report, report_entity, run_groups

            wandb_report = build_report(
                report_entity(args.wandb_entity), args.wandb_project, groups=run_groups(records, bool(args.from_csv)),
                classes=study.classes, headline=t1, tables=[t.name for t in logged], figures=list(figures),
                aggregate_run_id=run_id, title="Loss-ablation report", description=f"aggregate.py over {source}: "
                f"groups {', '.join(study.groups)}; seeds {', '.join(map(str, study.seeds))}; final epoch {final}")
            url = publish_report(wandb_report, out / REPORT_FILE)
            console.print(f"W&B Report: {url}", soft_wrap=True)
    return 0


if __name__ == "__main__":
    with sigterm_as_ctrl_c():  # `timeout`, `docker stop`: as Ctrl-C, --out as it was, no staging folder left
        run_main(main)
