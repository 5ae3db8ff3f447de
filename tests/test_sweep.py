"""sweep.yaml: valid for wandb's sweep engine, 12 grid runs, each run's command accepted by train.py's parser."""
from pathlib import Path

import pytest

from engine.config import build_parser, parse_args
from engine.sweep_local import grid_runs, load_sweep, main as sweep_local_main, run_command
from utils.fileio import UserError

SWEEP = Path(__file__).resolve().parents[1] / "sweep.yaml"


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
