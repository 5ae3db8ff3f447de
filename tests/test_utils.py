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


# ----------------------------------------------------------------------------------------------------------
# CPU threads (utils.threads)


def test_threads_per_job_divides_the_cores_this_process_may_use(monkeypatch):
    from utils import threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [threads.threads_per_job(jobs) for jobs in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)  # taskset -c 5
    assert threads.usable_cpus() == 1 and threads.threads_per_job(1) == 1
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        threads.threads_per_job(0)


def test_set_torch_threads_explicit_count_or_per_job(monkeypatch):
    import torch

    from utils import threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.set_torch_threads(jobs=2) == 1 and torch.get_num_threads() == 1
    assert threads.set_torch_threads(threads=3) == 3 and torch.get_num_threads() == 3  # conftest restores it


@pytest.mark.parametrize("entry", ["train", "evaluate", "precompute_sdt"])
def test_entry_points_set_the_openmp_wait_policy_before_torch_loads(entry):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: each entry point must import utils (which sets
    PASSIVE) before torch. Checked in a fresh interpreter with an import hook that records the order."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import os, sys\n"
        "seen = {}\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and 'torch' not in seen:\n"
        "            seen['torch'] = os.environ.get('OMP_WAIT_POLICY')\n"
        "sys.meta_path.insert(0, Spy())\n"
        f"import {entry}\n"
        "print(seen.get('torch'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "PASSIVE"
