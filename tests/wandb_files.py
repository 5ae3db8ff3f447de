"""Read an offline W&B run from its files, as `wandb sync` would upload it, without the network or a login.

wandb writes each run's records to `<run dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb`: a 7-byte header
(":W&B", magic 0xBEE1, version 0), then LevelDB's log format (32 KiB blocks; each chunk: CRC-32 4 bytes, length
2 bytes, type 1 byte: 1 full, 2 first, 3 middle, 4 last; a block tail too short for a chunk header is padding)
whose records are `wandb_internal_pb2.Record` protobufs. `OfflineRun` collects what the tests check: the logged
history rows, the metric definitions (define_metric), the summary and the artifacts.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # the file's header, and each chunk's


def read_records(path: Path) -> list:
    """Every Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), f"{path}: not a W&B log"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # padding at the end of a block
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zeros: the rest of the block is padding
            pos += BLOCK - pos % BLOCK
            continue
        if pos + HEADER + length > len(data):
            break  # still being written
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict:
    """Key -> value; a logged object (image, table) is a dict of its fields, as wandb flattens it into nested keys
    (["predictions", "_type"]): a "/" inside a key ("val/miou") is part of the key."""
    out: dict = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
    return out


@dataclass
class OfflineRun:
    path: Path  # the .wandb file
    history: list[dict] = field(default_factory=list)  # one dict per logged row (wandb.log)
    metrics: dict[str, dict] = field(default_factory=dict)  # define_metric: name or glob -> {"step_metric": ...}
    summary: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # ArtifactRecord protobufs (log_artifact)
    config: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, timeout_s: float = 60) -> "OfflineRun":
        """The run's records once its log ends with the `exit` record: wandb's service process may still be
        writing the tail (the last summary, the exit) for a moment after `run.finish()` returned."""
        deadline = time.monotonic() + timeout_s
        records = read_records(path)
        while not (records and records[-1].WhichOneof("record_type") == "exit"):
            assert time.monotonic() < deadline, f"{path}: no exit record after {timeout_s} s (the run never ended?)"
            time.sleep(0.2)
            records = read_records(path)
        run = cls(path)
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "history":
                run.history.append(_items(record.history.item))
            elif kind == "metric":
                m = record.metric
                run.metrics[m.name or m.glob_name] = {"step_metric": m.step_metric}
            elif kind == "summary":
                run.summary.update(_items(record.summary.update))
            elif kind == "artifact":
                run.artifacts.append(record.artifact)
            elif kind == "config":
                run.config.update(_items(record.config.update))
        return run


def offline_runs(folder: Path) -> list[OfflineRun]:
    """Every offline run below `folder` (e.g. a train.py run dir, or aggregate.py's --out), oldest first."""
    return [OfflineRun.read(p) for p in sorted(Path(folder).rglob("offline-run-*/run-*.wandb"))]
