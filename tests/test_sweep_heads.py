"""sweep_heads.yaml: valid for wandb's sweep engine, the 36-run grid variants x heads x seeds, every run's command
accepted by train.py's parser with only --variant, --head and --seed changed from the paper's recipe, one run dir
per cell (the upernet cells are sweep.yaml's)."""
from pathlib import Path

from engine.config import TrainConfig, build_parser, parse_args
from engine.sweep_local import grid_runs, load_sweep, main as sweep_local_main, run_command
from models import HEADS

SWEEP = Path(__file__).resolve().parents[1] / "sweep_heads.yaml"
SEEDS = (42, 123, 456)


def cell(run: dict) -> tuple[str, str, int]:
    return run["variant"]["value"], run["head"]["value"], run["seed"]["value"]


def test_sweep_heads_is_a_valid_grid_of_variants_heads_and_seeds():
    config = load_sweep(SWEEP)  # raises on schema violations (sweeps.schema_violations_from_proposed_config)
    study = load_sweep(SWEEP.with_name("sweep.yaml"))
    assert (config["method"], config["program"]) == ("grid", "train.py")
    assert (config["command"], config["project"], config["metric"]) == \
        (study["command"], study["project"], study["metric"])
    heads = config["parameters"]["head"]["values"]
    assert set(heads) <= set(HEADS) and {"upernet", "segformer", "fpn"} <= set(heads)
    runs = grid_runs(config)  # enumerated by sweeps.next_run
    assert len(runs) == 4 * len(heads) * len(SEEDS)
    assert {cell(r) for r in runs} == {(v, h, s) for v in "ABCD" for h in heads for s in SEEDS}


def test_each_run_parses_with_only_variant_head_seed_changed_into_a_run_dir_of_its_own():
    config = load_sweep(SWEEP)
    paper, dirs = TrainConfig(), set()
    study_dirs = {str(parse_args(run_command(study, run)[4:])[0].run_dir)
                  for study in [load_sweep(SWEEP.with_name("sweep.yaml"))] for run in grid_runs(study)}
    for run in grid_runs(config):
        argv = run_command(config, run)
        assert argv[:4] == ["/usr/bin/env", "accelerate", "launch", "train.py"]
        build_parser().parse_args(argv[4:])  # argparse exits (SystemExit) on an unknown flag
        cfg, resume = parse_args(argv[4:])
        assert not resume and (cfg.variant, cfg.head, cfg.seed) == cell(run)
        assert {k for k in vars(paper) if getattr(cfg, k) != getattr(paper, k)} <= {"variant", "head", "seed"}
        dirs.add(str(cfg.run_dir))
        assert (str(cfg.run_dir) in study_dirs) == (cfg.head == "upernet")
    assert len(dirs) == len(grid_runs(config))


def test_sweep_local_dry_run_prints_every_command(capsys):
    assert sweep_local_main([str(SWEEP), "--dry-run", "--", "--preset", "demo", "--epochs", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == len(grid_runs(load_sweep(SWEEP)))
    assert {line.split("--head=")[1].split()[0] for line in lines} == {"upernet", "segformer", "fpn"}
