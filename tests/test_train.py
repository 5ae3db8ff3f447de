"""train.py and its engine parts: config/CLI, LR schedule, gradient accumulation, checkpoints, resume, the demo.

Runs use the synthetic Cityscapes-layout data at 64x128 with convnextv2_atto and a 32-channel UPerNet on CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from engine.checkpoint import (TrainingProgress, find_resumable_checkpoint, list_checkpoints, read_meta,
                               register_checkpoint_hooks, resume_from, save_checkpoint)
from engine.config import (DEMO_PRESET, TrainConfig, build_parser, config_differences, load_config, parse_args,
                           save_config)
from engine.schedule import get_lr
from engine.setup import build_model_from_config
from engine.steps import accumulate_and_step, forward_loss
from losses import build_loss
from utils.fileio import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each Accelerator in this process starts from scratch (accelerate keeps process-wide singletons)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# ------------------------------------------------------------------------------------------ config and CLI
def test_every_field_has_a_flag_and_defaults_are_the_paper_recipe():
    cfg, resume = parse_args([])
    assert not resume
    assert (cfg.backbone, cfg.batch_size, cfg.grad_accum, cfg.mixed_precision) == ("convnextv2_base", 2, 4, "bf16")
    assert (cfg.lr, cfg.weight_decay, cfg.betas, cfg.poly_power, cfg.min_lr, cfg.warmup_steps) == (
        6e-5, 0.01, (0.9, 0.999), 1.0, 0.0, 0)
    assert (cfg.epochs, cfg.lambda_dice, cfg.lambda_boundary, cfg.aux_weight) == (160, 1.0, 0.2, 0.4)
    assert (cfg.eval_every, cfg.checkpoint_every, cfg.sdt_source, cfg.augment) == (1, 10, "gpu", "gpu")
    assert cfg.run_dir == Path("runs/C_seed42")
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
    assert cfg.run_dir == Path("runs/B_seed123")
    # the preset changes only the fields it lists
    demo, _ = parse_args(["--preset", "demo"])
    changed = {k for k, v in dataclasses.asdict(demo).items() if v != getattr(TrainConfig(), k)}
    assert changed == set(DEMO_PRESET)


def test_bad_flags_fail_with_one_clear_line(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--variant", "E"])
    assert "invalid choice: 'E'" in capsys.readouterr().err
    with pytest.raises(UserError, match="--batch-size must be >= 1"):
        parse_args(["--batch-size", "0"])
    with pytest.raises(UserError, match="--sdt-cache"):
        parse_args(["--sdt-source", "cache"])


def test_config_json_round_trip(tmp_path):
    cfg, _ = parse_args(["--preset", "demo", "--variant", "D", "--betas", "0.85", "0.99", "--out", "x"])
    save_config(cfg, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "config.json").read_text())["betas"] == [0.85, 0.99]
    other = dataclasses.replace(cfg, lambda_boundary=0.1, num_workers=0)
    assert config_differences(cfg, other) == ["lambda_boundary: 0.2 -> 0.1"]  # workers may change on resume
    (tmp_path / "bad.json").write_text('{"variant": "A", "learning_rate": 1}')
    with pytest.raises(UserError, match="unknown config keys"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text('{"variant": ')
    with pytest.raises(UserError, match="not valid JSON"):
        load_config(tmp_path / "cut.json")


# ------------------------------------------------------------------------------------------- LR schedule
def test_poly_schedule_first_middle_last():
    base, total = 6e-5, 1000
    assert get_lr(0, total, base) == base  # the first update uses the full LR (no warm-up in the paper)
    assert get_lr(500, total, base) == pytest.approx(base / 2)  # power 1: linear
    assert get_lr(999, total, base) == pytest.approx(base / 1000)  # the last update
    assert get_lr(1000, total, base) == 0.0 and get_lr(5000, total, base) == 0.0
    assert get_lr(500, total, base, power=2.0) == pytest.approx(base / 4)
    assert get_lr(500, total, base, min_lr=1e-6) == pytest.approx(1e-6 + (base - 1e-6) / 2)
    # optional warm-up: linear up to base_lr at step warmup_steps, then the decay over the remaining steps
    assert get_lr(0, total, base, warmup_steps=9) == pytest.approx(base / 10)
    assert get_lr(9, total, base, warmup_steps=9) == base
    assert get_lr(9 + 991 // 2, total, base, warmup_steps=9) == pytest.approx(base * (1 - (991 // 2) / 991))


# -------------------------------------------------------------------------------- gradient accumulation
def _tiny_cfg(**overrides) -> TrainConfig:
    cfg, _ = parse_args(["--preset", "demo", "--head-channels", "32", "--no-wandb"])
    return dataclasses.replace(cfg, **overrides)


def test_grad_accumulation_4x1_equals_one_step_on_4_samples():
    """accum 4 x batch 1 == batch 4, CE on a model without batch-dependent layers (BN in eval mode, no dropout)."""
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 64)
    labels = torch.randint(0, 19, (4, 32, 64))  # no ignore pixels: every sample weighs the same in the CE mean
    loss_fn = build_loss("A")
    init = build_model_from_config(_tiny_cfg(aux_weight=0.0)).eval()

    def run(accum: int, batch: int, optimizer_cls) -> tuple[list[dict], dict]:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accum)
        model = build_model_from_config(_tiny_cfg(aux_weight=0.0))
        model.load_state_dict(init.state_dict())
        model.eval()
        optimizer = optimizer_cls(model.parameters(), lr=0.1)
        model, optimizer = accelerator.prepare(model, optimizer)
        snapshots = []
        for i in range(0, 4, batch):
            with accelerator.accumulate(model):
                terms = forward_loss(model, images[i:i + batch], labels[i:i + batch], None, loss_fn)
                accumulate_and_step(accelerator, model, optimizer, terms["loss"], lr=1e-3)
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return snapshots, init.state_dict()

    # SGD: the update is lr x gradient, so this checks the accumulated gradient is the mean of the 4.
    # AdamW (train.py's optimizer): its first update is ~lr x sign(gradient), scale-free, but where
    # |gradient| ~ eps a float32 rounding difference moves it by a few % of lr (1e-3): atol = 10% of lr.
    # Using the wrong gradient (e.g. the last micro-batch's only) flips signs: differences of 2 x lr.
    for optimizer_cls, atol in ((torch.optim.SGD, 1e-7), (torch.optim.AdamW, 1e-4)):
        accumulated, before = run(4, 1, optimizer_cls)
        (single,), _ = run(1, 4, optimizer_cls)
        for k in before:  # no update until the 4th micro-batch
            for snap in accumulated[:3]:
                assert torch.equal(snap[k], before[k]), k
        changed = 0
        for k, v in single.items():
            torch.testing.assert_close(accumulated[3][k], v, rtol=1e-5, atol=atol, msg=lambda m: f"{optimizer_cls.__name__} {k}: {m}")
            changed += not torch.equal(v, before[k])
        assert changed > 10  # the step did update the weights


# ------------------------------------------------------------------------------------------- checkpoints
def _tiny_state(tmp_path):
    accelerator = Accelerator(cpu=True)
    cfg = _tiny_cfg(out=str(tmp_path / "run"), keep_states=1)
    model = build_model_from_config(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    register_checkpoint_hooks(accelerator)
    return accelerator, cfg, model, optimizer, progress


def _one_step(model, optimizer):
    out = model(torch.randn(2, 3, 32, 64))
    (out["logits"].square().mean() + out["aux_logits"].square().mean()).backward()
    optimizer.step()
    optimizer.zero_grad()


def test_checkpoint_save_resume_round_trip_and_pruning(tmp_path):
    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path)
    _one_step(model, optimizer)
    progress.epoch, progress.step = 1, 7
    first = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id="abc123")
    assert first.name == "epoch_0001"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    rng_after_save = torch.rand(3)
    assert read_meta(first)["wandb_run_id"] == "abc123" and read_meta(first)["step"] == 7
    assert load_config(first / "config.json") == cfg
    assert set(load_file(first / "model.safetensors")) == set(saved)  # unwrapped keys, no "module." prefix

    _one_step(model, optimizer)
    progress.epoch, progress.step = 2, 14
    second = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id="abc123")
    # keep_states=1: the older checkpoint keeps weights, config and meta only; the newest can be resumed
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    assert read_meta(first)["training_state"] is False
    assert find_resumable_checkpoint(cfg.run_dir) == second
    with pytest.raises(UserError, match="weights only"):
        resume_from(accelerator, first, progress)

    # resume restores weights, optimizer, progress counters and the RNG stream
    resumed_rng = None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    progress.epoch, progress.step = 0, 0
    meta = resume_from(accelerator, second, progress)
    assert (progress.epoch, progress.step, meta["wandb_run_id"]) == (2, 14, "abc123")
    for k, v in load_file(second / "model.safetensors").items():
        assert torch.equal(model.state_dict()[k], v), k
    resumed_rng = torch.rand(3)
    assert not torch.equal(resumed_rng, rng_after_save)  # the stream after epoch 2's save, not epoch 1's
    assert len(optimizer.state_dict()["state"]) > 0


def test_crash_during_save_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    import engine.checkpoint as ckpt_module

    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path)
    progress.epoch = 1

    def boom(*args, **kwargs):
        raise OSError("disk full")

    for target in ("save_file", "save_config"):  # during the weights, then after accelerate's state files
        with monkeypatch.context() as m:
            m.setattr(ckpt_module, target, boom)
            with pytest.raises(OSError, match="disk full"):
                save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
        folder = cfg.run_dir / "checkpoints"
        assert not (folder / "epoch_0001").exists()
        assert [p.name for p in folder.iterdir()] == [".tmp_epoch_0001"]
        assert list_checkpoints(cfg.run_dir) == [] and find_resumable_checkpoint(cfg.run_dir) is None

    final = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)  # cleans the temp
    assert [p.name for p in (cfg.run_dir / "checkpoints").iterdir()] == ["epoch_0001"]
    assert find_resumable_checkpoint(cfg.run_dir) == final
