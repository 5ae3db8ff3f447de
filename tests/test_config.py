"""engine.config and train.py's command line: flags, the demo preset, run names, loss recipes, config files.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from engine.config import (DEMO_PRESET, TrainConfig, build_parser, config_differences, load_config, parse_args,
                           save_config)
from engine.setup import build_accelerator
from utils.fileio import UserError


# ------------------------------------------------------------------------------------------ config and CLI
def test_every_field_has_a_flag_and_defaults_are_the_paper_recipe():
    cfg, resume = parse_args([])
    assert not resume
    assert (cfg.backbone, cfg.batch_size, cfg.grad_accum, cfg.mixed_precision) == ("convnextv2_base", 2, 4, "bf16")
    assert (cfg.lr, cfg.weight_decay, cfg.betas, cfg.poly_power, cfg.min_lr, cfg.warmup_steps) == (
        6e-5, 0.01, (0.9, 0.999), 1.0, 0.0, 0)
    assert (cfg.epochs, cfg.lambda_dice, cfg.lambda_boundary, cfg.aux_weight) == (160, 1.0, 0.2, 0.4)
    assert (cfg.eval_every, cfg.checkpoint_every, cfg.sdt_source, cfg.augment) == (1, 10, "gpu", "gpu")
    assert cfg.run_dir == Path("runs/cityscapes/convnextv2_base/C_seed42")
    flags = {opt for action in build_parser()._actions for opt in action.option_strings}
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in flags


def test_flags_override_preset_which_overrides_defaults():
    cfg, resume = parse_args(["--preset", "demo", "--variant=B", "--seed", "123", "--lambda-boundary", "0.5",
                              "--epochs", "3", "--betas", "0.8", "0.95", "--no-wandb", "--resume"])
    assert resume
    assert (cfg.variant, cfg.seed, cfg.lambda_boundary, cfg.epochs, cfg.betas, cfg.wandb) == (
        "B", 123, 0.5, 3, (0.8, 0.95), False)
    assert cfg.backbone == DEMO_PRESET["backbone"] and cfg.lr == DEMO_PRESET["lr"]
    assert cfg.run_dir.parent == Path("runs/demo/convnextv2_atto")  # demo runs stay apart from real ones
    assert re.fullmatch(r"B_lb0\.5_x[0-9a-f]{6}_seed123", cfg.run_name)  # --betas off the demo's: a hash
    # the preset changes only the fields it lists
    demo, _ = parse_args(["--preset", "demo"])
    changed = {k for k, v in dataclasses.asdict(demo).items() if v != getattr(TrainConfig(), k)}
    assert changed == set(DEMO_PRESET)


def test_run_name_encodes_variant_seed_and_non_default_lambdas():
    names = [parse_args(flags)[0].run_name for flags in (
        [], ["--variant", "D", "--seed", "456"], ["--lambda-boundary", "0.05"], ["--lambda-dice", "0.5"],
        ["--lambda-boundary", "0.2"], ["--boundary-schedule", "steal"])]
    assert names == ["C_seed42", "D_seed456", "C_lb0.05_seed42", "C_ld0.5_seed42", "C_seed42", "C_steal_seed42"]


def test_bad_flags_fail_with_one_clear_line(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--variant", "E"])
    assert "invalid choice: 'E'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--batch-size", "0"])
    assert "argument --batch-size: must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(UserError, match="--sdt-cache"):
        parse_args(["--sdt-source", "cache"])


def test_config_json_round_trip(tmp_path):
    cfg, _ = parse_args(["--preset", "demo", "--variant", "D", "--betas", "0.85", "0.99", "--out", "x"])
    save_config(cfg, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "config.json").read_text())["betas"] == [0.85, 0.99]
    other = dataclasses.replace(cfg, lambda_boundary=0.1, num_workers=0)
    assert config_differences(cfg, other) == ["--lambda-boundary 0.2 -> 0.1"]  # workers may change on resume
    (tmp_path / "bad.json").write_text('{"variant": "A", "learning_rate": 1}')
    with pytest.raises(UserError, match="unknown config keys"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text('{"variant": ')
    with pytest.raises(UserError, match="not valid JSON"):
        load_config(tmp_path / "cut.json")


# ------------------------------------------------------------------------------------------- fast path
def test_fast_path_flags_default_on_may_change_on_resume_and_compile_only_on_cuda(monkeypatch):
    cfg, _ = parse_args([])
    assert cfg.compile and cfg.channels_last
    off, _ = parse_args(["--no-compile", "--no-channels-last", "--no-wandb"])
    assert not off.compile and not off.channels_last
    assert config_differences(cfg, off) == []  # how a run executes, not what it computes: a resume may change them
    assert parse_args(["--preset", "demo"])[0].compile is False
    # An `accelerate launch --dynamo_backend inductor` (or accelerate config) does not override --no-compile.
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    for compile_flag in (True, False):
        AcceleratorState._reset_state(True)
        accelerator = build_accelerator(dataclasses.replace(off, compile=compile_flag))
        expected = "INDUCTOR" if compile_flag and torch.cuda.is_available() else "NO"  # ignored on the CPU
        assert accelerator.state.dynamo_plugin.backend.value == expected
        assert accelerator.non_blocking and accelerator.gradient_accumulation_steps == off.grad_accum


def test_recipe_flags_run_name_and_refusals():
    cfg, _ = parse_args(["--loss", "lovasz=0.5,ce=1,boundary=0.2"])
    assert cfg.loss_weights == {"ce": 1.0, "boundary": 0.2, "lovasz": 0.5}
    assert (cfg.loss_label, cfg.run_name) == ("ce+0.2·boundary+0.5·lovasz", "ce1_boundary0.2_lovasz0.5_seed42")
    cfg, _ = parse_args(["--loss", "ce,focal=0.5", "--focal-gamma", "1", "--boundary-schedule", "constant"])
    assert (cfg.loss_label, cfg.run_name, cfg.loss_params) == (
        "ce+0.5·focal gamma=1", "ce1_focal0.5_gamma1_seed42", {"focal": {"gamma": 1.0}})
    with pytest.raises(UserError, match="unknown loss term 'dyce'; registered terms: ce, dice"):
        parse_args(["--loss", "ce=1,dyce=1"])
    with pytest.raises(UserError, match="needs a loss with a boundary term .* ce\\+0.5·lovasz has only ce, lovasz"):
        parse_args(["--loss", "ce=1,lovasz=0.5", "--boundary-schedule", "steal"])  # refused before any data loads
    with pytest.raises(UserError, match="sets every term's weight: drop --lambda-boundary"):
        parse_args(["--loss", "ce=1,boundary=0.5", "--lambda-boundary", "0.1"])
    from engine.setup import uses_sdt

    assert uses_sdt(parse_args(["--loss", "ce=1,boundary=0.5"])[0]) and not uses_sdt(parse_args(["--variant", "B"])[0])
