"""sweep.yaml: valid for wandb's sweep engine, 12 grid runs, each run's command accepted by train.py's parser."""
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import build_parser, parse_args
from engine.sweep_local import grid_runs, load_sweep, main as sweep_local_main, run_command
from utils.fileio import EXIT_PARTIAL_FAILURE, UserError

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "sweep.yaml"


def test_sweep_yaml_is_valid_grid_of_12_runs():
    config = load_sweep(SWEEP)  # raises on schema violations (sweeps.schema_violations_from_proposed_config)
    assert config["method"] == "grid"
    assert config["metric"] == {"name": "val/miou", "goal": "maximize"}
    assert config["program"] == "train.py"
    runs = grid_runs(config)  # enumerated by sweeps.next_run
    cells = {(run["variant"]["value"], run["seed"]["value"]) for run in runs}
    assert len(runs) == 12
    assert cells == {(v, s) for v in "ABCD" for s in (42, 123, 456)}


def test_each_run_command_launches_train_py_through_accelerate_and_parses():
    config = load_sweep(SWEEP)
    seen = set()
    for run in grid_runs(config):
        argv = run_command(config, run)
        assert argv[:4] == ["/usr/bin/env", "accelerate", "launch", "train.py"]
        flags = argv[4:]
        build_parser().parse_args(flags)  # argparse exits (SystemExit) on an unknown flag
        cfg, resume = parse_args(flags)
        assert not resume
        assert (cfg.variant, cfg.seed) == (run["variant"]["value"], run["seed"]["value"])
        # everything else is the paper's recipe
        assert (cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.lr) == (160, 2, 4, 6e-5)
        seen.add(str(cfg.run_dir))
    assert len(seen) == 12  # one run directory per grid cell


def test_sweep_local_dry_run_prints_every_command(capsys):
    assert sweep_local_main([str(SWEEP), "--dry-run", "--", "--preset", "demo", "--epochs", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 12
    assert all(line.endswith("--preset demo --epochs 1") for line in lines)
    assert {line.split("--variant=")[1][0] for line in lines} == set("ABCD")


def test_invalid_sweep_file_is_a_user_error(tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("method: sideways\nparameters:\n  seed:\n    values: [1]\n")
    with pytest.raises(UserError, match="not a valid W&B sweep"):
        load_sweep(bad)


def _sweep_file(tmp_path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


RANDOM = SWEEP.read_text().replace("method: grid", "method: random")


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_need_count_and_stop_at_it(tmp_path, method):
    path = _sweep_file(tmp_path, SWEEP.read_text().replace("method: grid", f"method: {method}"))
    command = [sys.executable, "-m", "engine.sweep_local", str(path), "--dry-run"]
    # A subprocess with a timeout: without a stop, the sweep engine proposes runs forever.
    result = subprocess.run([*command, "--count", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert [line[:5] for line in result.stdout.splitlines() if line.startswith("[")] == ["[0/3]", "[1/3]", "[2/3]"]
    with pytest.raises(UserError, match=f"method {method} proposes runs without end; pass --count N"):
        sweep_local_main([str(path), "--dry-run"])


@pytest.mark.parametrize("count", ["0", "-1"])
def test_count_below_one_is_refused(count, capsys):
    with pytest.raises(SystemExit):
        sweep_local_main([str(SWEEP), "--dry-run", "--count", count])
    assert f"--count must be >= 1, got {count}" in capsys.readouterr().err


@pytest.mark.parametrize("parameters, message", [
    ("  varient:\n    values: [A, B]\n", "parameter 'varient' is not a train.py flag (--varient)"),
    ("  lambda_boundary:\n    values: [0.1]\n", "parameter 'lambda_boundary' is not a train.py flag"),
    ("  seed:\n    value: [42, 123]\n", "parameter 'seed': train.py refuses --seed=[42, 123] (argument --seed: invalid "
                                         "int value: '[42, 123]'); a list to sweep over goes under `values:`"),
    ("  variant:\n    values: [A, E]\n", "parameter 'variant': train.py refuses --variant=E"),
])
def test_unknown_or_malformed_parameters_are_refused_before_anything_runs(tmp_path, monkeypatch, parameters,
                                                                          message):
    from engine import sweep_local

    text = f"program: train.py\nmethod: grid\nparameters:\n{parameters}"
    text += "command:\n  - ${env}\n  - python\n  - ${program}\n  - ${args}\n"
    path = _sweep_file(tmp_path, text)
    launched = []
    monkeypatch.setattr(sweep_local.subprocess, "run", lambda *a, **k: launched.append(a))
    with pytest.raises(UserError, match=re.escape(f"{path}: {message}")):
        sweep_local_main([str(path)])
    assert launched == []


def test_accelerate_comes_from_the_running_interpreter_not_from_path(tmp_path, monkeypatch):
    from engine.sweep_local import resolve_accelerate

    beside = str(Path(sys.executable).parent / "accelerate")
    assert resolve_accelerate(["/usr/bin/env", "accelerate", "launch", "train.py"]) == [
        "/usr/bin/env", beside, "launch", "train.py"]
    # An interpreter without the script beside it: accelerate as a module of that interpreter.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert resolve_accelerate(["/usr/bin/env", "accelerate", "launch", "train.py"]) == [
        "/usr/bin/env", str(tmp_path / "python"), "-m", "accelerate.commands.launch", "train.py"]
    monkeypatch.undo()
    # The real thing, with the venv's bin not on PATH: the launcher is found and runs (its --help here).
    path = _sweep_file(tmp_path, "program: train.py\nmethod: grid\nparameters:\n  seed:\n    values: [1]\n"
                                 "command:\n  - ${env}\n  - accelerate\n  - launch\n  - --help\n")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert sweep_local_main([str(path)]) == 0


def test_a_failed_run_does_not_stop_the_others_and_exits_with_the_partial_failure_code(tmp_path, capsys):
    """Two real runs (python -c exiting with the seed's value): the failing first one is listed with its own exit
    code, the second still runs, and the sweep exits with EXIT_PARTIAL_FAILURE, not 1 (a crash's code)."""
    path = _sweep_file(tmp_path, "program: train.py\nmethod: grid\nparameters:\n  seed:\n    values: [2, 0]\n"
                                 "command:\n  - ${interpreter}\n  - -c\n"
                                 "  - import sys; sys.exit(int(sys.argv[-1].split('=')[-1]))\n  - ${args}\n")
    assert sweep_local_main([str(path)]) == EXIT_PARTIAL_FAILURE
    out, err = capsys.readouterr()
    assert "[0/2]" in out and "[1/2]" in out  # the run after the failure ran too
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("failed")] == ["failed (exit 2)"]


# ---------------------------------------------------------------------------------------------------- --index
def _documented_cells(config: dict) -> list[dict]:
    """The grid order engine.sweep_local's docstring states, built independently of the sweep engine:
    parameters sorted by name, their cartesian product with the last name varying fastest."""
    names = sorted(config["parameters"])
    return [dict(zip(names, values)) for values in itertools.product(*(config["parameters"][n]["values"]
                                                                          for n in names))]


def _dry_run_lines(capsys, *flags) -> list[str]:
    assert sweep_local_main([str(SWEEP), "--dry-run", *flags]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]


def test_index_runs_exactly_one_cell_in_the_documented_order(capsys):
    config = load_sweep(SWEEP)
    cells = _documented_cells(config)
    assert [{k: v["value"] for k, v in run.items()} for run in grid_runs(config)] == cells
    assert cells[5] == {"seed": 123, "variant": "B"}  # the docstring's example
    full = _dry_run_lines(capsys, "--", "--epochs", "1")
    flags = set()
    for index, cell in enumerate(cells):
        (line,) = _dry_run_lines(capsys, "--index", str(index), "--", "--epochs", "1")
        assert line == full[index]  # the line [index/12] of the whole sweep, extra flags included
        assert line.startswith(f"[{index}/12] ")
        argv = shlex.split(line.split("] ", 1)[1])
        cfg, _ = parse_args(argv[argv.index("train.py") + 1:])
        assert (cfg.variant, cfg.seed, cfg.epochs) == (cell["variant"], cell["seed"], 1)
        flags.add((cfg.variant, cfg.seed))
    assert flags == {(v, s) for v in "ABCD" for s in (42, 123, 456)}  # 12 distinct cells cover the grid


@pytest.mark.parametrize("index", ["12", "-1"])
def test_index_out_of_range_names_the_file_and_the_valid_range(index):
    with pytest.raises(UserError, match=re.escape(f"{SWEEP}: --index {index} is out of range: the grid has 12 "
                                                  "cells; pass an index from 0 to 11")):
        sweep_local_main([str(SWEEP), "--dry-run", "--index", index])


def test_index_is_refused_for_random_search_and_with_count(tmp_path, capsys):
    path = _sweep_file(tmp_path, RANDOM)
    with pytest.raises(UserError, match="method random has no fixed cells; pass --count N instead"):
        sweep_local_main([str(path), "--dry-run", "--index", "0"])
    with pytest.raises(SystemExit):
        sweep_local_main([str(SWEEP), "--dry-run", "--index", "0", "--count", "1"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("parameters, extra, message", [
    ("  seed:\n    values: [1, -5]\n", [],
     "parameter 'seed': train.py refuses --seed=-5 (argument --seed: must be an integer in [0, 4294967296), got -5)"),
    ("  lambda-boundary:\n    values: [0.1, .nan]\n", [],
     "parameter 'lambda-boundary': train.py refuses --lambda-boundary=nan (argument --lambda-boundary: must be a "
     "finite number >= 0, got nan)"),
    # each value alone is fine; the cell (with the flags after --) is what train.py refuses
    ("  min-lr:\n    values: [0, 0.01]\n", ["--lr", "0.001"],
     "train.py refuses cell 1 (--min-lr=0.01 --lr 0.001): --min-lr must be <= --lr, got lr=0.001 min_lr=0.01"),
    ("  loss:\n    values: ['ce=1']\n  variant:\n    values: [A]\n", [],
     "train.py refuses cell 0 (--loss=ce=1 --variant=A): --loss 'ce=1' sets every term's weight: drop --variant"),
])
def test_values_train_py_refuses_stop_the_sweep_before_the_first_run(tmp_path, monkeypatch, parameters, extra,
                                                                     message):
    """Issue #23 §4: a sweep of values train.py refuses launched every run, each failing."""
    from engine import sweep_local

    path = _sweep_file(tmp_path, f"program: train.py\nmethod: grid\nparameters:\n{parameters}")
    launched = []
    monkeypatch.setattr(sweep_local.subprocess, "run", lambda *a, **k: launched.append(a))
    with pytest.raises(UserError, match=re.escape(f"{path}: {message}")):
        sweep_local_main([str(path), *(["--", *extra] if extra else [])])
    assert launched == []


@pytest.mark.parametrize("text, where, problem", [
    ("method: grid\nparameters:\n\tseed:\n    values: [1]\n", "line 3, column 1",
     "found character '\\t' that cannot start any token (YAML indents with spaces, not tabs)"),
    ("method: grid\nparameters:\n  seed:\n    values: [1\n", "line 5, column 1", "expected ',' or ']'"),
    ("method: grid\nparameters: seed: 1\n", "line 2, column 17", "mapping values are not allowed here"),
])
@pytest.mark.parametrize("reader", ["sweep", "config"])
def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, text, where, problem, reader):
    """utils.fileio.read_yaml, shared by sweep files and --config files (PyYAML's own message is 5-8 lines
    quoting `<unicode string>`)."""
    path = _sweep_file(tmp_path, text)
    what = "sweep file" if reader == "sweep" else "config file (--config)"
    with pytest.raises(UserError) as error:
        load_sweep(path) if reader == "sweep" else parse_args(["--config", str(path)])
    message = str(error.value)
    assert "\n" not in message and "<unicode string>" not in message
    assert message.startswith(f"{path}: cannot read the {what} at {where}: {problem}"), message


def test_a_bayes_sweep_prints_no_sklearn_convergence_warning(tmp_path, capfd):
    """Issue #23 §5: sklearn's ConvergenceWarning (the Gaussian process fitted to runs without a metric yet)
    reached the console once per proposed run."""
    import warnings

    path = _sweep_file(tmp_path, SWEEP.read_text().replace("method: grid", "method: bayes"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sweep_local_main([str(path), "--dry-run", "--count", "4"]) == 0
    assert not [w for w in caught if "ConvergenceWarning" in w.category.__name__]
    assert "ConvergenceWarning" not in capfd.readouterr().err
