"""Progress bars that leave no stale line above an error: `Bars`, a rich Progress cleared when its block fails, and
`no_datasets_bars` for HF datasets' own.

    with Bars(*progress_columns(), console=console) as bar:    # utils.console.progress_columns
        task = bar.add_task("checkpoints", total=len(todo))
        ...                                                    # an exception: the bars vanish, then the error line

A plain Progress stops at its last state, so `error: ...` came after a line like "epochs 0/2 ... eta -:--:--"
(on a terminal the bars stayed drawn; in a log file they were printed once, at the stop).
"""
from __future__ import annotations

from contextlib import contextmanager

from rich.progress import Progress


class Bars(Progress):
    """rich `Progress` whose bars are cleared, not left at their last state, when its `with` block ends in an
    exception (or on `clear()`); on success they stay, as a Progress's do. `stop()` again is a no-op."""

    def stop(self) -> None:
        if self.live.is_started:  # Progress.stop prints a blank line on a non-terminal each time it is called
            super().stop()

    def clear(self) -> None:
        """Stop with the bars erased (a terminal) or never printed (a log file)."""
        if self.live.is_started:
            for task in self.task_ids:
                self.update(task, visible=False)
            self.live.transient = True
            self.live.stop()  # not Progress.stop: no blank line after the bars

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.clear()
        self.stop()


@contextmanager
def no_datasets_bars():
    """HF `datasets`' own progress bars off inside the block (then as they were): building a split's file list or
    reading a parquet folder prints "Generating train split: 8 examples [...]" lines, before an error line too;
    the tools draw their own bars. Hub downloads are not wrapped: their bars show real waiting."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()
