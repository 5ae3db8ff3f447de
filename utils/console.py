"""What the tools print, defined once: the progress-bar columns, the percent format of a fraction and a count with
its noun ("1 checkpoint", never "1 checkpoints" nor "checkpoint(s)").

    >>> bar = Progress(*progress_columns(), console=console)     # train.py: progress_columns(info=True)
    >>> pct(0.81284), pct(float("nan")), pct(-0.021, signed=True)
    ('81.28', 'n/a', '-2.10')
    >>> plural(1, "checkpoint"), plural(3, "process", "processes")
    ('1 checkpoint', '3 processes')
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


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """`count` and `noun`, plural unless the count is 1: plural(1, "image") -> "1 image", plural(0, "image") ->
    "0 images"; `plural_noun` for the irregular ones (plural(2, "micro-batch", "micro-batches"))."""
    return f"{count} {noun_for(count, noun, plural_noun)}"


def noun_for(count: int, noun: str, plural_noun: str | None = None) -> str:
    """`noun` as `count` of them take it, without the count ("seeds 1, 2", "seed 3"): see `plural`."""
    return noun if count == 1 else plural_noun or noun + "s"
