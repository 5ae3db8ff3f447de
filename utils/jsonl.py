"""Per-epoch JSON-lines logs of a run (`metrics.jsonl`, `grad_stats.jsonl`) that stay in step with resumes."""
from __future__ import annotations

import json
import os
from pathlib import Path

from utils.fileio import atomic_write_text, json_safe, named_os_errors


class EpochJsonl:
    """A JSON-lines file whose rows carry an integer `"epoch"`; appended one flushed, fsync'ed line at a time.

    Opening it for a run resumed after `keep_through_epoch` completed epochs drops the rows of later epochs
    (and a line cut short by a crash) with one atomic rewrite, so the file always matches the training state
    that continues. NaN/inf values are written as null (JSON has no NaN). Only the main process holds one.
    """

    def __init__(self, path: str | os.PathLike, keep_through_epoch: int):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= keep_through_epoch:
                    self.rows.append(row)
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def append(self, row: dict) -> dict:
        row = json_safe(dict(row))
        with named_os_errors(self.path), self.path.open("a") as f:  # a full disk: run_main's line names the file
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        return row
