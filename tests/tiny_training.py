"""The tiny training setup that tests/test_train.py, tests/test_checkpoint.py and others share: the demo preset with
a 32-channel UPerNet, no loader workers and no W&B, run in this process on conftest's `tiny_data` (`train_main`:
any train.py command line in this process)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState

from engine.config import TrainConfig, parse_args


def _tiny_cfg(**overrides) -> TrainConfig:
    cfg, _ = parse_args(["--preset", "demo", "--head-channels", "32", "--no-wandb"])
    return dataclasses.replace(cfg, **overrides)


# 2 epochs, both checkpoints keeping their training state: conftest's `straight_runs` (resumable, evaluated).
RESUMABLE = ("--variant", "C", "--epochs", "2", "--checkpoint-every", "1", "--keep-states", "2")
TINY = ["--preset", "demo", "--no-demo-data", "--no-wandb", "--num-workers", "0", "--head-channels", "32"]


def train_main(argv: list[str]) -> int:
    """train.main(argv) in this process (fast: no interpreter start), as a fresh run: accelerate's singletons
    reset first, and the torch thread count it sets (the preset's cpu_threads) put back after."""
    import train

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    threads = torch.get_num_threads()
    try:
        return train.main(argv)
    finally:
        torch.set_num_threads(threads)


def run_train(data: Path, out: Path, *flags: str) -> int:
    """train.main in this process on the tiny data."""
    return train_main([*TINY, "--data-root", str(data), "--out", str(out), *flags])


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a finished run (conftest's `straight_runs`) that a test may change; its lock file left out."""
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock")))


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
