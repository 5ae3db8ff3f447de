"""What the tools print, defined once: the progress-bar columns and the percent format of a fraction.

    >>> bar = Progress(*progress_columns(), console=console)     # train.py: progress_columns(info=True)
    >>> pct(0.81284), pct(float("nan")), pct(-0.021, signed=True)
    ('81.28', 'n/a', '-2.10')
"""
from __future__ import annotations

import math


def progress_columns(info: bool = False) -> tuple:
    """rich Progress columns: description, bar, done/total, elapsed, "eta" remaining; `info=True` adds the
    task's `info` field (train.py's running loss)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    return (*columns, TextColumn("{task.fields[info]}")) if info else columns


def pct(fraction: float | None, signed: bool = False) -> str:
    """A fraction in [0, 1] (or a difference of fractions, `signed`) as percent with two decimals: "81.28",
    "+5.29"; None, NaN or inf (nothing to average) -> "n/a"."""
    if fraction is None or not math.isfinite(fraction):
        return "n/a"
    return f"{100 * fraction:+.2f}" if signed else f"{100 * fraction:.2f}"
