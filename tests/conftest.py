"""Shared fixtures: a fresh accelerate state per test, and paths to the real Cityscapes frames in
../shared/data (skipped when absent)."""
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each Accelerator in this process starts from scratch (accelerate keeps process-wide singletons), and
    train.main's torch.set_num_threads (the demo preset's cpu_threads) does not leak into other tests."""
    threads = torch.get_num_threads()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.set_num_threads(threads)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared real-data folder is not next to the repo")
    return path


@pytest.fixture
def cityscapes_sample() -> Path:
    """One real val frame, 8x downscaled (256x128): labelIds, labelTrainIds, instanceIds, image."""
    return _need(SHARED_DATA / "cityscapes_sample")


@pytest.fixture
def cityscapes_fullres() -> Path:
    """Real 2048x1024 frames: 8 train images with labels, 15 val label maps."""
    return _need(SHARED_DATA / "cityscapes_fullres")


@pytest.fixture
def seed_metrics() -> Path:
    """The original study's per-run metric CSVs."""
    return _need(SHARED_DATA / "seed_metrics")
