"""utils: the folder lock, with two real processes."""
from __future__ import annotations

import os
import signal

import pytest

from utils.dirlock import folder_lock
from utils.fileio import UserError


def test_folder_lock_is_exclusive_names_the_holder_and_dies_with_it(tmp_path, lock_holder):
    folder = tmp_path / "run"
    holder = lock_holder(folder, "holder.py")
    with pytest.raises(UserError) as err:
        with folder_lock(folder, "train.py", "pass another --out"):
            pass
    assert str(err.value) == f"{folder}: in use by holder.py (PID {holder.pid}); pass another --out"
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
    holder.wait()
    with folder_lock(folder, "train.py", "pass another --out") as path:
        assert path.read_text() == f"train.py (PID {os.getpid()})\n"
    with folder_lock(folder, "train.py", "pass another --out"):  # released at the end of the block
        pass
