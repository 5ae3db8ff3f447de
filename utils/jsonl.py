"""Per-epoch JSON-lines logs of a run (`metrics.jsonl`, `grad_stats.jsonl`) that stay in step with resumes."""
from __future__ import annotations

import json
import os
from pathlib import Path

from utils.fileio import atomic_write_text, json_safe, named_os_errors

METRICS_JSONL = "metrics.jsonl"  # RUN/metrics.jsonl: train.py's per-epoch rows, the dicts W&B gets too


def read_epoch_rows(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number from 1, row) for each line of an `EpochJsonl` file that holds a JSON object with an integer
    "epoch"; a line cut short by a crash is skipped. OSError and UnicodeDecodeError (unreadable file) propagate."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append((line_no, row))
    return rows


class EpochJsonl:
    """A JSON-lines file whose rows carry an integer `"epoch"`; appended one flushed, fsync'ed line at a time.

    Opening it for a run resumed after `keep_through_epoch` completed epochs drops the rows of later epochs
    (and a line cut short by a crash) with one atomic rewrite, so the file always matches the training state
    that continues. NaN/inf values are written as null (JSON has no NaN). Only the main process holds one.
    """

    def __init__(self, path: str | os.PathLike, keep_through_epoch: int):
        self.path = Path(path)
        self.rows: list[dict] = [row for _, row in read_epoch_rows(self.path) if row["epoch"] <= keep_through_epoch] \
            if self.path.exists() else []
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def append(self, row: dict) -> dict:
        row = json_safe(dict(row))
        with named_os_errors(self.path), self.path.open("a") as f:  # a full disk: run_main's line names the file
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        return row
