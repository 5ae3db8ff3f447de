"""The four entry scripts' command lines: --help and every rejected flag answer before torch & co. are imported,
and values that would fail late (or train silently wrong) are refused with one line."""
from __future__ import annotations

import math
import re

import pytest

from engine.config import parse_args
from utils.fileio import UserError

HEAVY = {"torch", "timm", "accelerate", "datasets"}


@pytest.mark.parametrize("argv", [
    ("train.py", "--help"),
    ("evaluate.py", "--help"),
    ("precompute_sdt.py", "--help"),
    ("aggregate.py", "--help"),
])
def test_help_answers_before_the_heavy_imports(argv, python_imports):
    result, modules = python_imports(*argv)
    assert result.returncode == 0 and "usage:" in result.stdout
    assert not modules & HEAVY, f"{argv} imported {sorted(modules & HEAVY)} before answering --help"


@pytest.mark.parametrize("argv, message", [
    (("train.py", "--seed", "-1"), "error: --seed must be in [0, 2**32), got -1"),
    (("train.py", "--lambda-dice", "nan"), "error: --lambda-dice is a loss weight: it must be finite and >= 0"),
    (("train.py", "--variant", "E"), "invalid choice: 'E'"),
    (("evaluate.py",), "give one checkpoint folder or --all RUNS_DIR"),
    (("precompute_sdt.py", "--out", "x", "--workers", "0"), "--workers must be >= 1"),
    (("aggregate.py", "--out", "x"), "give either RUNS_DIR or --from-csv FILE"),
])
def test_rejected_flags_answer_in_one_line_before_the_heavy_imports(argv, message, python_imports):
    result, modules = python_imports(*argv)
    errors = result.stderr.splitlines()
    assert result.returncode != 0
    assert message in errors[-1]
    assert not [line for line in errors if line.startswith("Traceback")]
    assert not modules & HEAVY, f"{argv} imported {sorted(modules & HEAVY)} before refusing it"


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
    (["--seed", str(2**32)], "--seed must be in [0, 2**32)"),
    (["--lambda-dice", "nan"], "--lambda-dice is a loss weight: it must be finite and >= 0, got nan"),
    (["--lambda-boundary", "-5"], "--lambda-boundary is a loss weight: it must be finite and >= 0, got -5.0"),
    (["--aux-weight", "inf"], "--aux-weight is a loss weight"),
    (["--boundary-start", "-0.1"], "--boundary-start is a loss weight"),
    (["--steal-delta", "nan"], "--steal-delta is a loss weight"),
    (["--steal-floor", "-1"], "--steal-floor is a loss weight"),
])
def test_seeds_and_loss_weights_out_of_range_are_refused(flags, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_args(flags)


def test_edge_values_of_seeds_and_loss_weights_are_accepted():
    cfg, _ = parse_args(["--seed", "0", "--lambda-boundary", "0", "--aux-weight", "0"])
    assert (cfg.seed, cfg.lambda_boundary, cfg.aux_weight) == (0, 0.0, 0.0)
    cfg, _ = parse_args(["--seed", str(2**32 - 1), "--lambda-dice", "1e3"])
    assert cfg.seed == 2**32 - 1 and math.isfinite(cfg.lambda_dice)
