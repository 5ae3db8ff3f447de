"""utils: the folder lock, with two real processes; the shared conventions (utils.conventions) defined once."""
from __future__ import annotations

import ast
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from utils.conventions import IGNORE_INDEX, SDT_CLIP
from utils.dirlock import folder_lock
from utils.fileio import UserError
from utils.staged_dir import FILE_LIST, staged_folder


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


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_utils", "models", "losses", "metrics", "engine", "report", "utils")


def test_no_signature_repeats_the_ignore_index_the_sdt_clip_or_a_class_count():
    """255 and 127 have one owner (utils.conventions), and the class count is the dataset's: no function of the
    packages takes IGNORE_INDEX, SDT_CLIP or Cityscapes' 19 as a literal default."""
    literals = {IGNORE_INDEX, SDT_CLIP, 19}
    found = []
    for path in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}" for d in defaults
                          if isinstance(d, ast.Constant) and type(d.value) in (int, float) and d.value in literals]
    assert not found, found


def test_the_class_count_is_a_required_argument():
    """A dataset property: metrics, models and the SDT take it from the caller (the dataset's class table)."""
    from data_utils.sdt import compute_sdt
    from metrics import SegmentationMetrics
    from metrics.consensus import cc_veto, count_fragments
    from models import build_model

    label = np.zeros((4, 4), np.uint8)
    for call in (lambda: SegmentationMetrics(), lambda: build_model("convnextv2_atto"), lambda: compute_sdt(label),
                 lambda: count_fragments(label), lambda: cc_veto(label, label)):
        with pytest.raises(TypeError, match="num_classes"):
            call()


def test_one_percent_format_and_one_set_of_progress_columns():
    from utils.console import pct, progress_columns

    assert [pct(0.81284), pct(1.0), pct(0.0), pct(-0.021, signed=True), pct(0.0529, signed=True)] == \
        ["81.28", "100.00", "0.00", "-2.10", "+5.29"]
    assert {pct(None), pct(float("nan")), pct(np.float64("inf")), pct(np.float32("nan"))} == {"n/a"}
    columns, with_info = progress_columns(), progress_columns(info=True)
    assert with_info[:-1] == columns or [type(c) for c in with_info[:-1]] == [type(c) for c in columns]
    assert with_info[-1].text_format == "{task.fields[info]}"


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


def test_staged_folder_is_published_whole_keeps_a_users_files_and_replaces_what_a_link_points_to(tmp_path):
    def files(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}

    real, link = tmp_path / "real", tmp_path / "link"
    link.symlink_to(real)  # --out given as a link: the folder it points to gets the output
    with staged_folder(link, "--out") as out:
        (out / "sub").mkdir()
        (out / "sub" / "a.txt").write_text("1")
        (out / "b.txt").write_text("1")
        assert not real.exists()  # nothing there before the end
    assert link.is_symlink() and files(real) == {"sub/a.txt": "1", "b.txt": "1", FILE_LIST: "b.txt\nsub/a.txt\n"}
    mask = os.umask(0)
    os.umask(mask)
    assert real.stat().st_mode & 0o777 == 0o777 & ~mask  # the mode mkdir gives (mkdtemp's is 0700)
    (real / "mine").mkdir()
    (real / "mine" / "notes.txt").write_text("keep")
    before = files(real)
    with pytest.raises(KeyboardInterrupt), staged_folder(link, "--out") as out:
        (out / "c.txt").write_text("2")
        raise KeyboardInterrupt
    assert files(real) == before
    with staged_folder(link, "--out", keep=("sub",)) as out:  # sub/: never stale, like W&B's offline runs
        (out / "c.txt").write_text("2")
    assert files(real) == {"c.txt": "2", "sub/a.txt": "1", "mine/notes.txt": "keep", FILE_LIST: "c.txt\n"}
    with staged_folder(link, "--out") as out:
        (out / "c.txt").write_text("3")
    assert files(real) == {"c.txt": "3", "sub/a.txt": "1", "mine/notes.txt": "keep", FILE_LIST: "c.txt\n"}
    assert "b.txt" not in files(real)  # stale: the first output made it, the last two did not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no staging or old folder left


def test_staged_folder_refuses_a_folder_that_is_no_earlier_output_or_holds_the_current_folder(tmp_path,
                                                                                              monkeypatch):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "code.py").write_text("")
    with pytest.raises(UserError, match=rf"^{project}: not empty and not an earlier output \(no {FILE_LIST} or "
                                        r"summary.md\), .*; pass a new or empty folder as --out$"):
        with staged_folder(project, "--out", marker="summary.md"):
            pytest.fail("the block ran")
    (project / "summary.md").write_text("")  # an output of an earlier version: replaced, src/ carried over
    monkeypatch.chdir(project / "src")
    with pytest.raises(UserError, match=rf"^{project}: the current folder, or one holding it, .*as --out$"):
        with staged_folder(project, "--out", marker="summary.md"):
            pytest.fail("the block ran")
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == ["src", "src/code.py", "summary.md"]


def test_epoch_jsonl_rows_skip_cut_lines_and_rows_without_an_integer_epoch(tmp_path):
    """utils.jsonl.read_epoch_rows, shared by EpochJsonl (a resume) and report.load.load_history: line numbers from
    1, a line cut short by a crash and rows without an integer "epoch" skipped; a resume keeps the epochs <= K."""
    from utils.jsonl import EpochJsonl, read_epoch_rows

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 0.5}\n[1, 2]\n{"epoch": "2"}\n{"epoch": 2, "loss": 0.4}\n'
                    '{"epoch": 3, "loss": 0.3}\n{"epoch": 4, "lo')
    assert read_epoch_rows(path) == [(1, {"epoch": 1, "loss": 0.5}), (4, {"epoch": 2, "loss": 0.4}),
                                     (5, {"epoch": 3, "loss": 0.3})]
    log = EpochJsonl(path, keep_through_epoch=2)
    assert log.rows == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}]
    assert path.read_text() == '{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.4}\n'
    assert EpochJsonl(tmp_path / "new.jsonl", keep_through_epoch=0).rows == []
