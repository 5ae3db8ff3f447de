"""Push the report's tables and figures to one W&B run, without ever needing the network.

Mode (`utils.wandb_mode.wandb_init_mode`, the same rule as train.py): an explicit WANDB_MODE (online / offline /
disabled) is respected; otherwise the run goes online only when credentials are already on this machine
(WANDB_API_KEY or a netrc entry for the W&B host, which is what `wandb login` writes) and offline otherwise — so
`--wandb` never prompts and never fails for lack of a login. An offline run is uploaded later with
`wandb sync <its folder>`.
"""
from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import TYPE_CHECKING

from utils.cli import shell_command
from utils.fileio import json_safe
from utils.wandb_mode import AGGREGATE_JOB_TYPE, wandb_init_mode

if TYPE_CHECKING:  # light at import (report.wandb_report.check_entity runs before aggregate.py's imports)
    from report.load import Study
    from report.tables import Table


WANDB_DIR = "wandb"  # wandb.init(dir=D) writes its run folders under D/wandb (push_report: the report's folder)


def table_key(name: str) -> str:
    """The W&B key of a logged table: "tables/table1_final_epoch" (report.wandb_report's panels read it)."""
    return f"tables/{name}"


def note_key(name: str) -> str:
    """The W&B summary key of a table left out for having nothing to show: "table_notes/table5_significance"."""
    return f"table_notes/{name}"


def figure_key(name: str) -> str:
    """The W&B key of a logged figure: "figures/curves"."""
    return f"figures/{name}"


VIEWER_KEY = "viewer"  # the W&B key of the viewer page (aggregate.py's viewer.html)


def new_run_id() -> str:
    """A fresh W&B run id (8 random characters of a-z0-9, as wandb draws its own), chosen before the run starts
    so the W&B Report can name the run."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def shown_tables(tables: list[Table], study: Study) -> tuple[list[Table], dict[str, str]]:
    """The tables worth a wandb.Table, and {name: why} of the others: a table summary.md shows as a line instead
    (`report.tables.shown`: a comparison of one group, a spread of one seed) or with no rows is left out."""
    from report.tables import shown

    kept, notes = [], {}
    for t in tables:
        view = shown(t, study)
        if view.rows and view.md_rows:
            kept.append(t)
        else:
            notes[t.name] = "; ".join(view.notes) or "no rows"
    return kept, notes


def push_report(tables: list[Table], figures: dict[str, Path], headline: dict[str, float], *, project: str,
                name: str | None, config: dict, entity: str | None = None, run_id: str | None = None,
                out_dir: Path | None = None, html: Path | None = None, notes: dict[str, str] | None = None) -> str:
    """Log every table as a wandb.Table, every figure as a wandb.Image and the viewer page `html` (if given) as a
    wandb.Html under "viewer" to one run (id `run_id`, or a new one; `entity` None: the login's default), and each
    of `notes` (a table left out: name -> why, `shown_tables`) in the summary under `note_key`; return where it went
    (the run's URL, or the `wandb sync` command for an offline run). Its W&B files go to `out_dir`/wandb (the
    report's folder), not the current folder."""
    import wandb  # imported here: the report itself never needs wandb

    run = wandb.init(project=project, entity=entity or None, name=name, id=run_id, dir=out_dir,
                     job_type=AGGREGATE_JOB_TYPE, config=config, mode=wandb_init_mode())
    try:
        payload = {table_key(t.name): wandb.Table(columns=t.header, data=json_safe(t.rows))
                   for t in tables}
        payload.update({figure_key(k): wandb.Image(str(p)) for k, p in figures.items()})
        if html is not None:  # inject=False: W&B's injected stylesheet is a link to the network; the page is offline
            payload[VIEWER_KEY] = wandb.Html(Path(html).read_text(encoding="utf-8"), inject=False)
        run.log(payload)
        for k, v in headline.items():  # final-epoch means, for the runs table of the dashboard
            run.summary[k] = json_safe(v)
        for name, why in (notes or {}).items():
            run.summary[note_key(name)] = why
        mode = run.settings.mode
        if mode in ("offline", "disabled"):
            sync = shell_command("wandb", "sync", Path(run.dir).parent)
            where = "disabled" if mode == "disabled" else f"offline, upload with `{sync}`"
        else:
            where = run.url or mode
    finally:
        run.finish()
    return where
