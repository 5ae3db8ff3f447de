"""sweep_lambda.yaml: valid for wandb's sweep engine, the 24-run grid (C, D) x λ_b x seeds, every run's command
accepted by train.py's parser with only --lambda-boundary, --variant and --seed changed from the paper's recipe."""
from pathlib import Path

from engine.config import TrainConfig, build_parser, parse_args
from engine.sweep_local import grid_runs, load_sweep, main as sweep_local_main, run_command

SWEEP = Path(__file__).resolve().parents[1] / "sweep_lambda.yaml"
LAMBDAS = (0.05, 0.1, 0.2, 0.5)
SEEDS = (42, 123, 456)


def cell(run: dict) -> tuple[str, float, int]:
    return run["variant"]["value"], run["lambda-boundary"]["value"], run["seed"]["value"]


def test_sweep_lambda_is_a_valid_grid_of_24_runs():
    config = load_sweep(SWEEP)  # raises on schema violations (sweeps.schema_violations_from_proposed_config)
    assert config["method"] == "grid" and config["program"] == "train.py"
    assert config["metric"] == {"name": "val/miou", "goal": "maximize"}
    runs = grid_runs(config)  # enumerated by sweeps.next_run
    assert len(runs) == 24
    assert {cell(r) for r in runs} == {(v, lam, s) for v in "CD" for lam in LAMBDAS for s in SEEDS}


def test_same_command_as_the_study_sweep():
    study = load_sweep(SWEEP.with_name("sweep.yaml"))
    config = load_sweep(SWEEP)
    assert (config["command"], config["project"], config["metric"]) == \
        (study["command"], study["project"], study["metric"])


def test_each_run_parses_with_only_lambda_variant_seed_changed():
    config = load_sweep(SWEEP)
    paper = TrainConfig()
    for run in grid_runs(config):
        argv = run_command(config, run)
        assert argv[:4] == ["/usr/bin/env", "accelerate", "launch", "train.py"]
        build_parser().parse_args(argv[4:])  # argparse exits (SystemExit) on an unknown flag
        cfg, resume = parse_args(argv[4:])
        assert not resume
        assert (cfg.variant, cfg.lambda_boundary, cfg.seed) == cell(run)
        changed = {k for k in vars(paper) if getattr(cfg, k) != getattr(paper, k)}
        assert changed <= {"variant", "lambda_boundary", "seed"}  # everything else is the paper's recipe


def test_each_cell_gets_its_own_run_dir():
    # TrainConfig.run_name must tell λ_b values apart, or four runs would resume each other's directory
    config = load_sweep(SWEEP)
    dirs = {str(parse_args(run_command(config, run)[4:])[0].run_dir) for run in grid_runs(config)}
    assert len(dirs) == 24


def test_sweep_local_dry_run_lists_24_commands(capsys):
    assert sweep_local_main([str(SWEEP), "--dry-run", "--", "--preset", "demo"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 24 and all(line.endswith("--preset demo") for line in lines)
    assert {line.split("--lambda-boundary=")[1].split()[0] for line in lines} == {str(x) for x in LAMBDAS}
