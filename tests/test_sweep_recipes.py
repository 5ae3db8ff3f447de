"""sweep_recipes.yaml: a valid wandb grid whose `loss` parameter reaches train.py as --loss, one run dir per cell,
everything else the paper's recipe."""
from pathlib import Path

from engine.config import TrainConfig, parse_args
from engine.sweep_local import grid_runs, load_sweep, run_command
from losses import parse_recipe

SWEEP = Path(__file__).resolve().parents[1] / "sweep_recipes.yaml"


def test_recipe_sweep_parses_into_the_recipes_it_names():
    config = load_sweep(SWEEP)  # raises on schema violations
    assert config["command"] == load_sweep(SWEEP.with_name("sweep.yaml"))["command"]
    runs = grid_runs(config)
    assert len(runs) == 4 * 3
    paper, dirs = TrainConfig(), set()
    for run in runs:
        argv = run_command(config, run)
        cfg, _ = parse_args(argv[4:])
        assert cfg.loss_weights == parse_recipe(run["loss"]["value"]) and cfg.seed == run["seed"]["value"]
        assert {k for k in vars(paper) if getattr(cfg, k) != getattr(paper, k)} <= {"loss", "seed"}
        dirs.add(cfg.run_dir)
    assert len(dirs) == len(runs)
