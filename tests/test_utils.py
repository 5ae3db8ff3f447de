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
