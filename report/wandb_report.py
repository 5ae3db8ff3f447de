"""The W&B Report of a study (`aggregate.py --wandb-report`, docs/report.md#wb-report), with wandb-workspaces.

`build_report` builds it (pure: no network), `report_definition` turns it into JSON-able data for review,
`publish_report` writes that and saves the report when logged in (`report_entity`: the entity it goes to).
wandb_workspaces is imported inside the functions, so `import report.wandb_report` stays light (aggregate.py
calls `check_entity` before its imports).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from metrics.keys import FRACTION_KEYS, METRIC_LABELS, val_iou_key, val_key
from report.wandb_log import figure_key, table_key
from utils import UserError, atomic_write_json
from utils.wandb_mode import AGGREGATE_JOB_TYPE, TRAIN_JOB_TYPE, wandb_logged_in

if TYPE_CHECKING:  # light at import: aggregate.py checks --wandb-report's entity (check_entity) before its imports
    from report.load import Record
    from report.tables import Table

REPORT_FILE = "wandb_report.json"  # beside summary.md in aggregate's --out
GROUP_BY = "Group"  # the run attribute the panels group by: the run's W&B group


def run_groups(records: list[Record], from_csv: bool) -> list[str]:
    """The W&B groups of the runs behind `records` (each once, in the records' order).

    A results file's group is `engine.config.wandb_group` of the run's config (results.json `config`); a file
    without one (written before configs were recorded) and a tidy CSV's row count as the variant's group, the
    group train.py gives a run of the study's recipe (`C_seed42` -> `C`).
    """
    if from_csv:
        return list(dict.fromkeys(r.variant for r in records))
    from engine.config import config_from_dict, wandb_group  # torch-free, as report/ must stay
    from engine.results_format import read_results

    groups = {}
    for r in records:
        config = read_results(r.source).get("config")
        groups[wandb_group(config_from_dict(config, r.source)) if config else r.variant] = None
    return list(groups)


def build_report(entity: str, project: str, *, groups: list[str], classes: list[str], headline: Table,
                 tables: list[str], figures: list[str], aggregate_run_id: str | None, title: str,
                 description: str):
    """The Report (a `wandb_workspaces.reports.v2.Report`, not saved) of one aggregate. Its blocks:
      - the headline: `headline` (aggregate's table 1: mean ± CI per group at the final epoch) as Markdown;
      - the training runs: a runset of the project's runs of job type `train` in `groups`, grouped by run group,
        with a line plot per fraction metric (`metrics.keys.FRACTION_KEYS`: keys `val/miou`, ... as
        `metrics.keys.val_key`) against `epoch`, the mean over a group's seeds with a stderr band, unsmoothed, and
        a bar plot of `val/iou/<class>` per class (the W&B summary: a run's last evaluation, the final epoch of a
        finished run), mean ± stderr per group;
      - the aggregate: a runset of the aggregate run (job type `aggregate`, id `aggregate_run_id`), one panel per
        table (`tables/<name>`) and per figure (`figures/<name>`) it logged (`report.wandb_log`).

    Args:
        entity, project: where the training runs and the aggregate run are, and where the report is saved.
        groups: the W&B groups of the aggregate's training runs (`run_groups`); the runset keeps only these.
        classes: the dataset's class names (`Study.classes`), one bar each; none: no bar plot.
        headline: aggregate's table 1, shown as Markdown.
        tables, figures: the names of the tables and figures the aggregate run logged (`push_report`).
        aggregate_run_id: that run's id; None: the panels of tables and figures show the project's latest
            aggregate run.
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    def metric_plot(metric: str):
        return wr.LinePlot(title=METRIC_LABELS[metric], x="epoch", y=[val_key(metric)], title_x="epoch",
                           groupby=GROUP_BY, groupby_aggfunc="mean", groupby_rangefunc="stderr",
                           smoothing_type="none", layout=wr.Layout(w=12, h=8))

    train_runs = wr.Runset(entity=entity, project=project, name="training runs", groupby=["group"],
                           filters=[expr.Metric("JobType") == TRAIN_JOB_TYPE, expr.Metric("Group").isin(groups)])
    train_panels = [metric_plot(m) for m in FRACTION_KEYS]
    if classes:
        train_panels.append(wr.BarPlot(
            title="Per-class IoU at the final epoch", metrics=[val_iou_key(c) for c in classes], orientation="v",
            groupby=GROUP_BY, groupby_aggfunc="mean", groupby_rangefunc="stderr", layout=wr.Layout(w=24, h=10)))

    which = [expr.Metric("ID") == aggregate_run_id] if aggregate_run_id else []
    aggregate_run = wr.Runset(entity=entity, project=project, name="aggregate run",
                              filters=[expr.Metric("JobType") == AGGREGATE_JOB_TYPE, *which])
    aggregate_panels = [wr.WeavePanelSummaryTable(table_name=table_key(t), layout=wr.Layout(w=24, h=10))
                        for t in tables]
    aggregate_panels += [wr.MediaBrowser(title=f, media_keys=[figure_key(f)], layout=wr.Layout(w=12, h=10))
                         for f in figures]

    return wr.Report(entity=entity, project=project, title=title, description=description, blocks=[
        wr.H2("Headline"), wr.MarkdownBlock(headline.to_markdown()),
        wr.H2("Training curves"),
        wr.P("Mean over each group's seeds, band ± standard error; the bars are the runs' last evaluation."),
        wr.PanelGrid(runsets=[train_runs], panels=train_panels),
        wr.H2("Tables and figures of the aggregate"),
        wr.PanelGrid(runsets=[aggregate_run], panels=aggregate_panels),
    ])


def report_definition(obj):
    """A Report (or any of its blocks, panels, runsets) as plain JSON-able data for review: one dict per object,
    `type` = its class (`PanelGrid`, `LinePlot`, ...) plus its public fields that are set (not None or empty)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if not f.name.startswith("_") and not _unset(value):
                out[f.name] = report_definition(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [report_definition(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): report_definition(v) for k, v in obj.items()}
    return obj


def _unset(value) -> bool:
    """None, "", an empty container, or a range of Nones ((None, None): an axis without limits)."""
    if isinstance(value, (list, tuple, dict, str)):
        return all(v is None for v in value) if isinstance(value, (list, tuple)) else not value
    return value is None


def _not_saved_reason() -> str | None:
    """Why the report cannot be saved from here (no login, or WANDB_MODE says offline), or None."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    if not wandb_logged_in():
        return "no W&B login on this machine (no WANDB_API_KEY, no netrc entry for the W&B host)"
    return None


def check_entity(entity: str | None) -> None:
    """Refuse --wandb-report before any work when no entity is given and none can be looked up (no login)."""
    if not entity and not wandb_logged_in():
        raise UserError("--wandb-report: no W&B entity to build the Report for and no W&B login to look up "
                        "your default one; pass --wandb-entity ENTITY (the definition is then written to "
                        f"REPORT_DIR/{REPORT_FILE}), or run `wandb login` first")


def report_entity(entity: str | None) -> str:
    """`entity`, or when None or "" the W&B login's default entity (asks the W&B server: `check_entity` first)."""
    check_entity(entity)
    if entity:
        return entity
    import wandb

    return wandb.Api().default_entity


class ReportNotSaved(UserError):
    """The report's definition is written, but the report is not saved to W&B (aggregate.py keeps its --out)."""


def publish_report(report, path: Path) -> str:
    """Write the report's definition (`report_definition`) to `path` atomically, then save the report to W&B and
    return its URL; when it cannot be saved from here, a ReportNotSaved naming `path` (docs/report.md#wb-report)."""
    atomic_write_json(path, report_definition(report))
    reason = _not_saved_reason()
    if reason is not None:
        raise ReportNotSaved(f"{path}: the W&B Report's definition is written there but the report is not saved: "
                        f"{reason}; run `wandb login` (and unset WANDB_MODE) and rerun with --wandb-report")
    try:
        report.save()
    except Exception as e:  # network, permissions, a project wandb cannot find: the definition is kept
        raise ReportNotSaved(f"{path}: saving the W&B Report to {report.entity}/{report.project} failed ({e}); the "
                        "definition is kept there; check the entity and project and rerun with --wandb-report") \
            from None
    return report.url
