"""Push the report's tables and figures to one W&B run, without ever needing the network.

Mode (`utils.wandb_mode.wandb_init_mode`, the same rule as train.py): an explicit WANDB_MODE (online / offline /
disabled) is respected; otherwise the run goes online only when credentials are already on this machine
(WANDB_API_KEY or a netrc entry for the W&B host, which is what `wandb login` writes) and offline otherwise — so
`--wandb` never prompts and never fails for lack of a login. An offline run is uploaded later with
`wandb sync <its folder>`.
"""
from __future__ import annotations

import math
from pathlib import Path

from report.tables import Table
from utils.wandb_mode import wandb_init_mode


def _cell(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def push_report(tables: list[Table], figures: dict[str, Path], headline: dict[str, float], *, project: str,
                name: str | None, config: dict) -> str:
    """Log every table as a wandb.Table and every figure as a wandb.Image to one run; return where it went
    (the run's URL, or the `wandb sync` command for an offline run)."""
    import wandb  # imported here: the report itself never needs wandb

    run = wandb.init(project=project, name=name, job_type="aggregate", config=config, mode=wandb_init_mode())
    try:
        payload = {f"tables/{t.name}": wandb.Table(columns=t.header, data=[[_cell(v) for v in r] for r in t.rows])
                   for t in tables}
        payload.update({f"figures/{k}": wandb.Image(str(p)) for k, p in figures.items()})
        run.log(payload)
        for k, v in headline.items():  # final-epoch means, for the runs table of the dashboard
            run.summary[k] = _cell(v)
        mode = run.settings.mode
        if mode in ("offline", "disabled"):
            where = "disabled" if mode == "disabled" else f"offline, upload with `wandb sync {Path(run.dir).parent}`"
        else:
            where = run.url or mode
    finally:
        run.finish()
    return where
