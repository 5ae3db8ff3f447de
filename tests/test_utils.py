"""utils: the folder lock (two real processes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.dirlock import folder_lock
from utils.fileio import UserError

ROOT = Path(__file__).resolve().parents[1]


def hold_lock(folder: Path, program: str = "holder.py") -> subprocess.Popen:
    """A separate process that takes `folder_lock(folder)` and sleeps; returns once it holds the lock."""
    code = ("import sys, time; from utils.dirlock import folder_lock\n"
            f"with folder_lock({str(folder)!r}, {program!r}, 'wait'):\n"
            "    print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_folder_lock_is_exclusive_names_the_holder_and_dies_with_it(tmp_path):
    folder = tmp_path / "run"
    holder = hold_lock(folder)
    try:
        with pytest.raises(UserError) as err:
            with folder_lock(folder, "train.py", "pass another --out"):
                pass
        assert str(err.value) == f"{folder}: in use by holder.py (PID {holder.pid}); pass another --out"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
        holder.wait()
    with folder_lock(folder, "train.py", "pass another --out") as path:
        assert path.read_text() == f"train.py (PID {os.getpid()})\n"
    with folder_lock(folder, "train.py", "pass another --out"):  # released at the end of the block
        pass
