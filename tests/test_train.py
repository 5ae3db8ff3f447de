"""train.py and its engine parts: LR schedule, gradient accumulation, the non-finite guard, run folders, whole
runs, the demo.

Runs use the synthetic Cityscapes-layout data at 64x128 with convnextv2_atto and a 32-channel UPerNet on CPU.
Config and CLI tests are in tests/test_config.py, checkpoint and resume tests in tests/test_checkpoint.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from data_utils.labels import CITYSCAPES
from engine.checkpoint import (TrainingProgress, find_resumable_checkpoint, list_checkpoints, read_meta,
                               register_checkpoint_hooks, save_checkpoint)
import engine.setup
import engine.steps
from engine.config import DEMO_PRESET, load_config, parse_args
from engine.schedule import get_lr
from engine.setup import build_accelerator, build_model_from_config
from engine.steps import EpochLossLog, GradientMask, StepState
from losses import build_loss
from tests.tiny_training import TINY, _tiny_cfg, read_rows, run_train
from utils.fileio import EXIT_BAD_INPUT, UserError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ config and CLI


RUN_SETTINGS = [  # what differs from the paper's recipe, one setting at a time, and the traps of issue 24
    [], ["--seed", "123"], ["--variant", "b"], ["--lambda-boundary", "0.1"], ["--boundary-schedule", "steal"],
    ["--head", "fpn"], ["--crop-size", "512", "1024"], ["--backbone", "resnet50"], ["--lr", "1e-4"],
    ["--loss", "ce=1,lovasz=0.5"], ["--preset", "demo"], ["--preset", "demo-hf"],
    ["--preset", "demo-hf", "--no-demo-data"], ["--preset", "demo", "--no-demo-data", "--data-root", "data/demo"],
    ["--hf-dataset", "org/ade"], ["--pretrained", ""], ["--mixed-precision", "no"],
]


def test_run_folders_tell_apart_what_differs_from_the_recipe_and_not_the_epochs():
    dirs = [parse_args(flags)[0].run_dir for flags in RUN_SETTINGS]
    assert len(set(dirs)) == len(dirs), dirs  # no two settings share a folder (and resume each other)
    assert dirs[:8] == [Path(p) for p in (
        "runs/cityscapes/convnextv2_base/C_seed42", "runs/cityscapes/convnextv2_base/C_seed123",
        "runs/cityscapes/convnextv2_base/B_seed42", "runs/cityscapes/convnextv2_base/C_lb0.1_seed42",
        "runs/cityscapes/convnextv2_base/C_steal_seed42", "runs/cityscapes/convnextv2_base/C_fpn_seed42",
        "runs/cityscapes/convnextv2_base/C_crop512x1024_seed42", "runs/cityscapes/resnet50/C_seed42")]
    assert dirs[10:12] == [Path("runs/demo/convnextv2_atto/C_seed42"), Path("runs/demo-hf/convnextv2_atto/C_seed42")]
    assert str(dirs[14]).startswith("runs/org_ade/convnextv2_base/C_")
    # the demo's recipe off the demo data (the trap: it wrote into the paper's folder)
    assert dirs[13].parent == Path("runs/cityscapes/convnextv2_atto") and "_x" in dirs[13].name
    # --epochs is no part of the folder: a longer schedule extends the run (docs/training.md, "Resume")
    assert parse_args(["--preset", "demo", "--epochs", "1"])[0].run_dir == dirs[10]
    assert parse_args(["--out", "mine"])[0].run_dir == Path("mine")


def test_wandb_groups_hold_the_seeds_of_one_setting_and_name_other_data_or_backbones():
    from engine.config import wandb_group
    groups = [wandb_group(parse_args(flags)[0]) for flags in RUN_SETTINGS]
    assert groups[0] == groups[1] == "C"  # the study's groups keep their names
    assert groups[10:12] == ["demo/convnextv2_atto/C", "demo-hf/convnextv2_atto/C"]
    assert groups[7] == "cityscapes/resnet50/C"
    assert len(set(groups)) == len(groups) - 1  # only the two seeds share one


def test_the_resume_refusal_names_only_the_differing_settings_on_one_line():
    from engine.config import resume_refusal
    paper, _ = parse_args([])
    assert resume_refusal(paper, dataclasses.replace(paper, num_workers=0, epochs=200, data_root="x")) is None
    assert resume_refusal(paper, dataclasses.replace(paper, lambda_dice=0.5)) == (
        "this run was made with other settings (--lambda-dice 1.0 -> 0.5); pass the same flags to resume it, or "
        "another --out for a new run")
    demo_hf, _ = parse_args(["--preset", "demo-hf", "--no-demo-data", "--class-names", *"abcdefgh"])
    refusal = resume_refusal(paper, demo_hf)  # the issue's ~1 500-character message
    assert "\n" not in refusal and len(refusal) < 300, refusal
    assert "--pretrained" not in refusal  # the weights come from the checkpoint: it may change on resume
    assert "--backbone convnextv2_base -> convnextv2_atto" in refusal and " more); pass the same flags" in refusal


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


class DictOut(torch.nn.Module):
    """A plain net with the segmentor's output, {"logits": ...} (+ "features": its input), for
    train.train_micro_step, which always asks for the features (one compiled graph, docs/performance.md)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images, return_features: bool = False):
        out = {"logits": self.net(images)}
        return {**out, "features": images} if return_features else out


def square_loss(logits, labels=None, sdt=None) -> dict[str, torch.Tensor]:
    """A loss in the recipes' form ({"loss": total, <term>: ...}) that needs no labels."""
    return {"loss": logits.square().mean(), "mean": logits.mean()}


def step_state(accelerator, model, optimizer, loss_fn, guard: bool, **cfg) -> StepState:
    """The micro-step's state around a prepared `model` and `optimizer` (train.py's comes from build_training);
    `guard`: the non-finite guard on (--max-nonfinite > 0). The mask must hook the unwrapped model's
    parameters: `accelerator.unwrap_model(model)` is the module the caller built."""
    mask = GradientMask(accelerator.unwrap_model(model), active=guard)
    return StepState(cfg=_tiny_cfg(**cfg), accelerator=accelerator, model=model, optimizer=optimizer,
                     loss_fn=loss_fn, aux_loss_fn=None, mask=mask, loss_log=EpochLossLog(accelerator, each_step=guard))


def test_grad_accumulation_4x1_equals_one_step_on_4_samples():
    """accum 4 x batch 1 == batch 4, CE on a model without batch-dependent layers (BN in eval mode, no dropout),
    through train.py's micro-step."""
    import train

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
        state = step_state(accelerator, model, optimizer, loss_fn, guard=False, aux_weight=0.0)
        snapshots = []
        for i in range(0, 4, batch):
            train.train_micro_step(state, images[i:i + batch], labels[i:i + batch], None, lr=1e-3)
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
            torch.testing.assert_close(accumulated[3][k], v, rtol=1e-5, atol=atol,
                                       msg=lambda m: f"{optimizer_cls.__name__} {k}: {m}")
            changed += not torch.equal(v, before[k])
        assert changed > 10  # the step did update the weights


# ------------------------------------------------------------------------------------------- fast path


@pytest.mark.parametrize("dynamo_backend", ["no", "aot_eager"])
def test_nonfinite_micro_batch_adds_no_gradient_and_is_logged_on_the_device(tmp_path, dynamo_backend):
    """Accumulate 3 micro-batches, the 2nd with a nan loss: the gradient is that of the other two (/3, as
    accelerate scales), the log's means cover them and it reports the bad one. aot_eager runs the model as
    compiled AOTAutograd graphs (train.py compiles with inductor on CUDA): the mask still applies, and a
    checkpoint of the compiled model holds the plain parameter names."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3, dynamo_backend=dynamo_backend)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 4, 1))
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    mask = GradientMask(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    assert (type(prepared).__name__ == "OptimizedModule") == (dynamo_backend != "no")
    inputs = torch.randn(3, 2, 3, 8, 6)
    log, losses = EpochLossLog(accelerator), []
    for i in range(3):
        with accelerator.accumulate(prepared):
            out = prepared(inputs[i])
            terms = {"loss": out.square().mean() * (float("nan") if i == 1 else 1.0), "mean": out.mean()}
            losses.append(terms["loss"].item())
            mask.keep = log.update(terms, where=("batch", i))
            accelerator.backward(terms["loss"])

    def reference_loss(x):  # the same net, functional, on the initial weights
        w1, b1, w2, b2 = reference
        out = torch.nn.functional.conv2d(torch.nn.functional.gelu(torch.nn.functional.conv2d(x, w1, b1, padding=1)),
                                         w2, b2)
        return out.square().mean()

    ((reference_loss(inputs[0]) + reference_loss(inputs[2])) / 3).backward()
    for p, ref in zip(model.parameters(), reference):
        torch.testing.assert_close(p.grad, ref.grad)
    reading = log.read()
    assert (reading.num_kept, reading.num_bad) == (2, 1)
    assert reading.means["loss"] == pytest.approx((losses[0] + losses[2]) / 2)
    where, values = reading.first_bad
    assert where == ("batch", 1) and math.isnan(values["loss"]) and math.isfinite(values["mean"])
    again = log.read()  # the bad count is per read; the means are the epoch's
    assert again.num_bad == 0 and again.first_bad is None and again.means == reading.means

    register_checkpoint_hooks(accelerator)
    progress = TrainingProgress(epoch=1)
    cfg = _tiny_cfg(out=str(tmp_path / "run"))
    ckpt = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    assert set(load_file(ckpt / "model.safetensors")) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("each_step", [True, False])
def test_loss_log_means_counts_and_first_bad_against_a_plain_loop(each_step):
    """The log's reading, whether it decides at every micro-step (the guard on) or at the read (off), equals
    a plain loop over the micro-batches: means over the finite ones, the bad ones counted per read, the
    first bad one's position and values."""
    log = EpochLossLog(Accelerator(cpu=True), each_step=each_step)
    values = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    values[2, 1], values[5, 0] = float("nan"), float("inf")
    readings = []
    for i, row in enumerate(values):
        keep = log.update({"loss": row[0], "ce": row[1], "dice": row[2]}, where=("batch", i))
        assert (keep is None) != each_step and (keep is None or bool(keep) == bool(torch.isfinite(row).all()))
        if i in (3, 6):
            readings.append(log.read())
    for reading, seen in zip(readings, (4, 7)):
        good = [row for row in values[:seen].tolist() if all(map(math.isfinite, row))]
        assert reading.num_kept == len(good)
        assert reading.means == pytest.approx({k: sum(r[j] for r in good) / len(good)
                                               for j, k in enumerate(("loss", "ce", "dice"))}, rel=1e-15)
    (where_1, values_1), (where_2, values_2) = readings[0].first_bad, readings[1].first_bad
    assert (readings[0].num_bad, where_1, readings[1].num_bad, where_2) == (1, ("batch", 2), 1, ("batch", 5))
    assert math.isnan(values_1["ce"]) and values_1["loss"] == values[2, 0] and values_2["loss"] == math.inf



def test_loss_log_interval_means_are_those_since_the_previous_call():
    """W&B's per-step loss (--log-every): each term's mean over the finite micro-batches read since the previous
    `interval_means` call, against a plain loop; an interval without any is NaN."""
    log = EpochLossLog(Accelerator(cpu=True), each_step=False)
    values = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    values[4, 1] = float("nan")
    intervals, start = [], 0
    for i, row in enumerate(values):
        log.update({"loss": row[0], "ce": row[1]})
        if i in (1, 5):
            log.read()  # a read that is not a per-step log: the interval goes on
        if i in (3, 8):
            log.read()
            intervals.append((log.interval_means(), values[start:i + 1]))
            start = i + 1
    for means, rows in intervals:
        good = [r for r in rows.tolist() if all(map(math.isfinite, r))]
        assert means == pytest.approx({"loss": sum(r[0] for r in good) / len(good),
                                       "ce": sum(r[1] for r in good) / len(good)}, rel=1e-15)
    assert all(math.isnan(v) for v in log.interval_means().values())


def test_guard_is_off_at_max_nonfinite_0_and_gathers_once_per_read(tiny_data, monkeypatch):
    """--max-nonfinite 0 (the default): no gradient hooks, no buffer copies, and the loss terms are gathered
    once per read instead of once per micro-step; K > 0: a hook on every trainable parameter and a gather
    per micro-step. Through build_training and train.py's micro-step."""
    import train

    for max_nonfinite, hooks, gathers_per_step, gathers_per_read in ((0, 0, 0, 1), (1, None, 1, 0)):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        cfg, _ = parse_args([*TINY, "--data-root", str(tiny_data), "--variant", "B",
                             "--max-nonfinite", str(max_nonfinite)])
        accelerator = build_accelerator(cfg, cpu=True)
        training = engine.setup.build_training(cfg, accelerator, val=False)
        state = training.step
        trainable = sum(p.requires_grad for p in accelerator.unwrap_model(state.model).parameters())
        assert len(state.mask.handles) == (trainable if hooks is None else hooks)
        assert state.mask.active == state.loss_log.each_step == (max_nonfinite > 0)
        with pytest.raises(ValueError, match="GradientMask needs an EpochLossLog"):  # a mask without its answers
            dataclasses.replace(state, loss_log=EpochLossLog(accelerator, each_step=not state.mask.active))
        gathers = []
        monkeypatch.setattr(accelerator, "gather", lambda t: gathers.append(t.shape) or t)
        batch = next(iter(training.train_loader))
        images, labels, sdt = engine.steps.device_batch(batch, state.augment, 0, state.sdt_classes)
        for _ in range(2):
            train.train_micro_step(state, images, labels, sdt, lr=1e-3)
        assert len(gathers) == 2 * gathers_per_step
        reading = state.loss_log.read()
        assert len(gathers) == 2 * gathers_per_step + gathers_per_read and reading.num_kept == 2
        monkeypatch.undo()


# ------------------------------------------------------------------------------------------- checkpoints


def test_skipped_micro_batch_leaves_parameters_buffers_and_optimizer_as_if_it_was_not_there():
    """Micro-batches [x0, bad, x2] (bad: one nan pixel) with GradientMask vs the loop over [x0, x2]: after
    the bad one, weights, BatchNorm running stats and counts, and the AdamW state (moments, step count) equal
    their values before it, and at the end the two runs are bit-identical. accum 1: the bad micro-batch
    closes a window of its own, which must not step at all (a zero-gradient AdamW step would still move)."""
    import train

    inputs = torch.randn(3, 2, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    bad = inputs[1].clone()
    bad[0, 0, 0, 0] = float("nan")

    def run(batches):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        torch.manual_seed(0)
        accelerator = Accelerator(cpu=True)
        model = DictOut(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                            torch.nn.GELU(), torch.nn.Conv2d(8, 4, 1)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
        model, optimizer = accelerator.prepare(model, optimizer)
        state, probes = step_state(accelerator, model, optimizer, square_loss, guard=True), []
        for x in batches:
            train.train_micro_step(state, x, None, None, lr=1e-2)
            probes.append(({k: v.clone() for k, v in model.state_dict().items()},
                           {id_: {k: v.clone() for k, v in st.items()}
                            for id_, st in optimizer.optimizer.state_dict()["state"].items()}))
        assert state.loss_log.read().num_bad == sum(not torch.isfinite(x).all() for x in batches)
        return probes

    with_bad, without = run([inputs[0], bad, inputs[2]]), run([inputs[0], inputs[2]])
    (model_0, optim_0), (model_1, optim_1), (model_2, optim_2) = with_bad
    assert all(torch.equal(model_0[k], model_1[k]) for k in model_0)  # nothing moved at the bad one
    assert optim_0.keys() == optim_1.keys() and all(
        torch.equal(optim_0[i][k], optim_1[i][k]) for i in optim_0 for k in optim_0[i])
    assert int(model_1["net.1.num_batches_tracked"]) == 1 and int(optim_1[0]["step"]) == 1
    ref_model, ref_optim = without[-1]
    assert [k for k in ref_model if not torch.equal(ref_model[k], model_2[k])] == []
    assert all(torch.equal(ref_optim[i][k], optim_2[i][k]) for i in ref_optim for k in ref_optim[i])
    assert all(torch.isfinite(v).all() for v in model_2.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA notion")
@pytest.mark.parametrize("guard", [True, False])
def test_the_micro_step_with_its_nonfinite_guard_makes_no_host_sync(guard):
    """torch.cuda's sync debug mode raises on any device-to-host wait: none in a good or a bad micro-step
    (loss log, gradient mask, BatchNorm restore, AdamW skip flag), accumulating or stepping, guard on or off.
    Without the guard the bad micro-batch reaches the weights, so the two after it are non-finite too."""
    import train

    accelerator = Accelerator(gradient_accumulation_steps=2)
    model = DictOut(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.GELU(), torch.nn.Conv2d(8, 4, 1)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = step_state(accelerator, model, optimizer, square_loss, guard=guard, grad_clip=1.0)
    inputs = torch.randn(6, 2, 3, 8, 6, device=accelerator.device)
    inputs[3, 0, 0, 0, 0] = float("nan")

    def micro_step(x):
        train.train_micro_step(state, x, None, None, lr=1e-3, where=0)

    micro_step(inputs[0])  # first step: lazy CUDA initialisation and optimizer state
    micro_step(inputs[1])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in inputs[2:]:
            micro_step(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state.loss_log.read().num_bad == (1 if guard else 3)


# ------------------------------------------------------------------------------------- whole training runs


def test_training_workers_persist_and_evaluation_workers_do_not(tiny_data):
    """Evaluation's loader workers would otherwise sit idle through all the training between evaluations."""
    from engine.setup import build_dataloader

    cfg = _tiny_cfg(data_root=str(tiny_data), num_workers=2)
    train_loader, val_loader = build_dataloader(cfg, "train", train=True), build_dataloader(cfg, "val", train=False)
    assert train_loader.persistent_workers and train_loader.num_workers == 2
    assert not val_loader.persistent_workers and val_loader.num_workers == 2
    assert [len(batch["name"]) for batch in val_loader] == [4, 1]  # and they still deliver every frame
    assert [len(batch["name"]) for batch in val_loader] == [4, 1]  # twice: workers started anew


@pytest.mark.parametrize("variant, sdt_source", [("A", "gpu"), ("B", "gpu"), ("C", "gpu"), ("D", "cpu")])
def test_one_optimizer_step_per_variant(tiny_data, tmp_path, variant, sdt_source):
    from losses import LOSS_WEIGHTS

    out = tmp_path / "run"
    # 16 frames / batch 8 = 2 micro-batches, accumulated into one optimizer step
    assert run_train(tiny_data, out, "--variant", variant, "--sdt-source", sdt_source, "--epochs", "1",
                     "--batch-size", "8", "--grad-accum", "2") == 0
    (row,) = read_rows(out)
    assert (row["epoch"], row["step"]) == (1, 1)
    weights = LOSS_WEIGHTS[variant]
    for term in ("ce", "dice", "boundary"):
        assert (f"train/{term}" in row) == (term in weights), term
        if term in weights:
            assert row[f"train/weighted/{term}"] == pytest.approx(weights[term] * row[f"train/{term}"])
    main = sum(row[f"train/weighted/{t}"] for t in weights)
    assert row["train/loss"] == pytest.approx(main + 0.4 * row["train/aux"], rel=1e-5)
    assert row["train/lr"] == DEMO_PRESET["lr"]  # the first (and only) step uses the full LR
    assert {"val/miou", "val/boundary_f1", "val/trimap_iou", "val/boundary_iou", "val/fragments_per_image",
            "val/iou/road", "val/iou/bicycle"} <= set(row)
    ckpt = out / "checkpoints" / "epoch_0001"
    optimizer_state = torch.load(ckpt / "optimizer.bin", weights_only=False)["state"]
    assert {int(s["step"]) for s in optimizer_state.values()} == {1}
    results = json.loads((out / "checkpoints" / "epoch_0001.results.json").read_text())
    assert (results["variant"], results["epoch"], results["miou"]) == (variant, 1, row["val/miou"])
    assert (out / "checkpoints" / "epoch_0001.per_image.npz").is_file()


def test_worker_augmentation_and_sdt_cache_give_the_same_boundary_term_as_computing_it(tiny_data, tmp_path,
                                                                                          monkeypatch):
    """--augment cpu, --sdt-source cache and --num-workers 2 together: the precomputed maps are the ones the
    workers would compute (same φ, flipped with the frame), so the run's losses equal an --sdt-source cpu run's."""
    import precompute_sdt
    from data_utils import sdt

    cache = tmp_path / "sdt_train"
    assert precompute_sdt.main(["--data-root", str(tiny_data), "--split", "train", "--out", str(cache),
                                "--jobs", "1"]) == 0
    assert len(list(cache.rglob("*.sdt"))) == 16
    flags = ("--variant", "C", "--epochs", "1", "--augment", "cpu", "--num-workers", "2")
    assert run_train(tiny_data, tmp_path / "cpu", *flags, "--sdt-source", "cpu") == 0

    def no_compute(*args, **kwargs):
        raise AssertionError("--sdt-source cache computed an SDT instead of reading the cache")

    monkeypatch.setattr(sdt, "compute_sdt", no_compute)  # the forked workers inherit it
    assert run_train(tiny_data, tmp_path / "cache", *flags, "--sdt-source", "cache", "--sdt-cache", str(cache)) == 0
    (computed,), (cached,) = read_rows(tmp_path / "cpu"), read_rows(tmp_path / "cache")
    assert math.isfinite(cached["train/loss"]) and math.isfinite(cached["train/boundary"])
    assert cached["train/boundary"] != 0.0
    for key in ("train/boundary", "train/ce", "train/dice", "train/loss"):
        assert cached[key] == pytest.approx(computed[key], rel=1e-6, abs=1e-9), key


class NaNLossAfter:
    """Wraps a loss so that calls number `first`..`last` (1-based) return non-finite values."""

    def __init__(self, inner, first: int, last: int):
        self.inner, self.first, self.last, self.calls = inner, first, last, 0
        self.weights = inner.weights

    def __call__(self, logits, target, sdt=None):
        out = self.inner(logits, target, sdt)
        self.calls += 1
        if self.first <= self.calls <= self.last:
            out = {k: v * float("nan") if k in ("ce", "loss") else v for k, v in out.items()}
        return out


def test_nonfinite_loss_stops_naming_step_and_terms_and_keeps_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    """At the default --max-nonfinite 0 the guard is off (nothing undone, the bad step reaches the weights):
    the run still stops with one line at the read that closes the epoch, before its checkpoint."""
    # batch 4: 4 micro-batches per epoch; the 5th loss call is epoch 2's first micro-batch
    monkeypatch.setattr(engine.setup, "build_loss", lambda *a, **k: NaNLossAfter(build_loss(*a, **k), 5, 10**9))
    out = tmp_path / "stop"
    flags = ("--variant", "B", "--epochs", "2", "--checkpoint-every", "1", "--aux-weight", "0")
    with pytest.raises(UserError, match=r"non-finite loss at optimizer step 4 \(epoch 2, batch 0\): ce=nan") as err:
        run_train(tiny_data, out, *flags)
    assert "epoch_0001" in str(err.value) and "--max-nonfinite" in str(err.value)
    assert [c.name for c in list_checkpoints(out)] == ["epoch_0001"]
    assert find_resumable_checkpoint(out) == out / "checkpoints" / "epoch_0001"

    # with a tolerance, one bad micro-batch is skipped and the run goes on
    monkeypatch.setattr(engine.setup, "build_loss", lambda *a, **k: NaNLossAfter(build_loss(*a, **k), 5, 5))
    out = tmp_path / "skip"
    assert run_train(tiny_data, out, *flags, "--max-nonfinite", "1") == 0
    rows = read_rows(out)
    assert [r["train/nonfinite_skipped"] for r in rows] == [0, 1]
    assert all(torch.isfinite(v).all() for v in load_file(out / "checkpoints/epoch_0002/model.safetensors").values())


def test_one_nonfinite_pixel_is_skipped_without_a_trace_in_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    """One nan pixel in micro-batch 2 of 4 with --max-nonfinite 1: the checkpoint holds only finite tensors
    and equals (weights, BatchNorm statistics, AdamW state) a run that skips that micro-batch: its forward
    runs (same dropout draws) without gradient, every buffer is put back from a copy, and no backward or
    optimizer step happens."""
    import train
    from engine import steps

    bad_call = 2
    flags = ("--variant", "B", "--epochs", "1", "--max-nonfinite", "1")
    real_images, real_step = steps.device_images, train.train_micro_step

    def poisoned_images(*args, **kwargs):
        images = real_images(*args, **kwargs)
        poisoned_images.calls += 1
        if poisoned_images.calls == bad_call:
            images = images.clone()
            images[1, 2, 5, 7] = float("nan")
        return images

    poisoned_images.calls = 0
    monkeypatch.setattr(steps, "device_images", poisoned_images)
    assert run_train(tiny_data, tmp_path / "nan", *flags) == 0
    monkeypatch.undo()

    def skipping_step(state, images, labels, sdt, lr, where=None, grad_stats=False):
        skipping_step.calls += 1
        if skipping_step.calls != bad_call:
            return real_step(state, images, labels, sdt, lr, where=where, grad_stats=grad_stats)
        buffers = [b.clone() for b in state.model.buffers()]
        with state.accelerator.accumulate(state.model), torch.no_grad():
            state.model(images)  # the same dropout draws as the nan run's forward
        for buffer, saved in zip(state.model.buffers(), buffers):
            buffer.copy_(saved)
        nan = torch.tensor(float("nan"))
        state.loss_log.update({name: nan for name in state.loss_log.names}, where=where)  # counted as skipped
        return {}

    skipping_step.calls = 0
    monkeypatch.setattr(train, "train_micro_step", skipping_step)
    assert run_train(tiny_data, tmp_path / "skip", *flags) == 0

    assert [r["train/nonfinite_skipped"] for r in read_rows(tmp_path / "nan")] == [1]
    ckpt_nan, ckpt_skip = (tmp_path / run / "checkpoints" / "epoch_0001" for run in ("nan", "skip"))
    weights_nan, weights_skip = load_file(ckpt_nan / "model.safetensors"), load_file(ckpt_skip / "model.safetensors")
    assert [k for k, v in weights_nan.items() if not torch.isfinite(v).all()] == []
    assert [k for k in weights_skip if not torch.equal(weights_nan[k], weights_skip[k])] == []
    optim_nan, optim_skip = (torch.load(c / "optimizer.bin", weights_only=False)["state"]
                             for c in (ckpt_nan, ckpt_skip))
    assert optim_nan.keys() == optim_skip.keys()
    for i, state in optim_nan.items():
        assert all(torch.equal(v, optim_skip[i][k]) for k, v in state.items()), i
    assert {int(s["step"]) for s in optim_nan.values()} == {3}  # 4 micro-batches, one skipped


def test_guard_on_and_off_give_bit_identical_runs_on_finite_batches(tiny_data, tmp_path):
    """--max-nonfinite 1 (gradient hooks, buffer copies, the AdamW skip flag, a gather per micro-step) and 0
    (none of it) on finite data, over accumulation windows: bit-identical weights, BatchNorm statistics and
    AdamW state after the epoch, and the same logged losses."""
    flags = ("--variant", "C", "--epochs", "1", "--batch-size", "2", "--grad-accum", "3")  # 8 micro-batches
    for k in ("0", "1"):
        assert run_train(tiny_data, tmp_path / k, *flags, "--max-nonfinite", k) == 0
    off, on = (tmp_path / k / "checkpoints" / "epoch_0001" for k in ("0", "1"))
    weights_off, weights_on = load_file(off / "model.safetensors"), load_file(on / "model.safetensors")
    assert weights_off.keys() == weights_on.keys()
    assert [k for k in weights_off if not torch.equal(weights_off[k], weights_on[k])] == []
    optim_off, optim_on = (torch.load(c / "optimizer.bin", weights_only=False)["state"] for c in (off, on))
    assert optim_off.keys() == optim_on.keys()
    for i, state in optim_off.items():
        assert all(torch.equal(v, optim_on[i][k]) for k, v in state.items()), i
    assert {int(s["step"]) for s in optim_off.values()} == {3}  # windows of 3, 3 and the short last 2
    (row_off,), (row_on,) = read_rows(tmp_path / "0"), read_rows(tmp_path / "1")
    assert {k: v for k, v in row_off.items() if k.startswith("train/loss") or k.startswith("val/miou")} == \
        {k: v for k, v in row_on.items() if k.startswith("train/loss") or k.startswith("val/miou")}


def test_nonfinite_stop_comes_at_the_next_host_read_naming_the_first_bad_micro_batch(tiny_data, tmp_path,
                                                                                      monkeypatch):
    import train

    monkeypatch.setattr(train, "HOST_READ_EVERY", 3)  # the host reads after micro-batches 2, 5, 8, ...
    losses = []

    def nan_from_second_call(*args, **kwargs):
        losses.append(NaNLossAfter(build_loss(*args, **kwargs), 2, 10**9))
        return losses[-1]

    monkeypatch.setattr(engine.setup, "build_loss", nan_from_second_call)
    out = tmp_path / "late"
    with pytest.raises(UserError, match=r"non-finite loss at optimizer step 1 \(epoch 1, batch 1\): ce=nan.*"
                                        r"\(2 non-finite micro-batches so far\)"):
        run_train(tiny_data, out, "--variant", "B", "--epochs", "1", "--batch-size", "1", "--aux-weight", "0")
    assert losses[0].calls == 3  # it ran on to the read after micro-batch 2, not one batch further
    assert list_checkpoints(out) == []


def test_boundary_schedule_per_epoch_and_gradient_statistics_log(tiny_data, tmp_path):
    from losses.schedule import BoundaryWeightSchedule

    out = tmp_path / "steal"
    assert run_train(tiny_data, out, "--variant", "C", "--epochs", "2", "--boundary-schedule", "steal",
                     "--steal-delta", "0.25", "--log-grad-norms", "1") == 0
    schedule = BoundaryWeightSchedule("steal", build_loss("C").weights, delta=0.25)
    rows = read_rows(out)
    for epoch, row in enumerate(rows):  # the weights in use are the schedule's, and weigh the logged terms
        for term, weight in schedule.weights_at(epoch).items():
            assert row[f"train/loss_weight/{term}"] == weight
            assert row[f"train/weighted/{term}"] == pytest.approx(weight * row[f"train/{term}"])
    assert rows[1]["train/loss_weight/boundary"] == 0.45 and rows[1]["train/loss_weight/ce"] == 0.75
    grad_rows = [json.loads(line) for line in (out / "grad_stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in grad_rows] == list(range(8))  # every optimizer step (4 per epoch)
    assert grad_rows[4]["weight/boundary"] == 0.45
    for epoch in (1, 2):  # the epoch row carries the mean of that epoch's measurements
        mean = sum(r["grad_norm/logits/dice"] for r in grad_rows if r["epoch"] == epoch) / 4
        assert rows[epoch - 1]["grad_norm/logits/dice"] == pytest.approx(mean)
        assert -1 <= rows[epoch - 1]["grad_cos/features/dice_boundary"] <= 1


def test_compiled_evaluation_runs_one_graph_for_a_short_last_batch(tiny_data):
    """5 frames in batches of 2: the last batch (1 frame) is padded to 2, so a compiled model traces one graph
    for the whole evaluation, and the metrics equal the eager model's."""
    from torch._dynamo.testing import CompileCounter

    from engine.evaluation import evaluate_model
    from engine.setup import build_dataloader

    cfg = _tiny_cfg(data_root=str(tiny_data), batch_size=2, num_workers=0)
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    loader = build_dataloader(cfg, cfg.val_split, train=False)
    assert [len(b["name"]) for b in loader] == [2, 2, 1]
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = evaluate_model(torch.compile(model, backend=counter), loader, Accelerator(cpu=True))
    eager = evaluate_model(model, loader, Accelerator(cpu=True))
    torch._dynamo.reset()
    assert counter.frame_count == 1
    assert compiled["num_images"] == eager["num_images"] == 5
    assert compiled["miou"] == pytest.approx(eager["miou"], abs=1e-12)


@pytest.mark.slow  # ~1 min: dynamo traces the model twice
def test_compiled_run_compiles_two_graphs_whatever_the_step_or_batch(tiny_data, tmp_path, monkeypatch):
    """Two epochs under torch.compile, every other step measuring gradient statistics, each epoch evaluated
    on 5 frames in batches of 4 (the last one of 1): dynamo compiles exactly the two graphs docs/performance.md
    promises (training mode, evaluation mode), without a graph break. Dynamo's "eager" backend stands in for
    inductor (the same graphs and guards, no code generation), on the CPU where train.py never compiles."""
    from accelerate.utils import DynamoBackend
    from torch._dynamo.utils import counters

    import train

    def compiling_accelerator(cfg):
        accelerator = build_accelerator(cfg)
        accelerator.state.dynamo_plugin.backend = DynamoBackend.EAGER
        return accelerator

    monkeypatch.setattr(train, "build_accelerator", compiling_accelerator)
    torch._dynamo.reset()
    counters.clear()
    assert run_train(tiny_data, tmp_path / "run", "--variant", "C", "--epochs", "2", "--batch-size", "4",
                     "--compile", "--log-grad-norms", "2") == 0
    assert len((tmp_path / "run" / "grad_stats.jsonl").read_text().splitlines()) == 4  # steps 0, 2, 4, 6
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def test_second_run_on_a_locked_run_dir_stops_and_ctrl_c_stops_with_one_line_and_code_130(tiny_data, tmp_path,
                                                                                         process_groups, capsys):
    """A real train.py holds its --out; a second run on it (train.main under run_main, as the script runs it)
    stops with exit code 2 and one line naming the dir and the first's PID. Then Ctrl-C (SIGINT to the process
    group, as a terminal sends it, workers included) stops the first with one line saying where it resumes,
    no traceback, exit code 130, and the lock released."""
    from utils.dirlock import folder_lock
    from utils.fileio import run_main

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    demo_with_workers = [flag for flag in TINY if flag not in ("--num-workers", "0")]
    out = tmp_path / "run"
    flags = ["--variant", "B", "--epochs", "50", "--checkpoint-every", "1"]
    command = [sys.executable, "train.py", *demo_with_workers, "--data-root", str(tiny_data), *flags, "--out", str(out)]
    first = process_groups.start(command, env=env)
    process_groups.wait_for(first, (out / "checkpoints" / "epoch_0001").exists)
    capsys.readouterr()
    with pytest.raises(SystemExit) as second:
        run_main(lambda: run_train(tiny_data, out, *flags, "--lr", "1e-4"))
    assert second.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {out}: in use by train.py (PID {first.pid}); wait for it to finish or stop it, or pass another --out"]
    stdout, stderr = process_groups.ctrl_c(first)
    assert first.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"interrupted at epoch \d+, optimizer step \d+; the same command resumes from "
                        rf"{re.escape(str(out))}/checkpoints/epoch_\d{{4}}", last), last
    assert [r["epoch"] for r in read_rows(out)] == list(range(1, len(read_rows(out)) + 1))  # one run's lines only
    with folder_lock(out, "test", "-"):
        pass


def test_ctrl_c_closes_the_wandb_run_as_failed(tiny_data, tmp_path, monkeypatch):
    import wandb

    from engine import steps

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    exit_codes = []
    real_finish = wandb.sdk.wandb_run.Run.finish

    def recording_finish(self, exit_code=None, *args, **kwargs):
        exit_codes.append(exit_code)
        return real_finish(self, exit_code, *args, **kwargs)

    def ctrl_c_in_epoch_2(*args, **kwargs):
        ctrl_c_in_epoch_2.calls += 1
        if ctrl_c_in_epoch_2.calls == 6:  # 4 micro-batches per epoch
            raise KeyboardInterrupt
        return real_images(*args, **kwargs)

    real_images, ctrl_c_in_epoch_2.calls = steps.device_images, 0
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "finish", recording_finish)
    monkeypatch.setattr(steps, "device_images", ctrl_c_in_epoch_2)
    out = tmp_path / "run"
    assert run_train(tiny_data, out, "--wandb", "--variant", "A", "--epochs", "2", "--checkpoint-every", "1") == 130
    assert exit_codes[0] == 130  # the first close is the failed one; end_training's later finish is a no-op
    assert (out / "checkpoints" / "epoch_0001").is_dir() and not (out / "checkpoints" / "epoch_0002").exists()


def test_sigterm_before_the_first_checkpoint_then_the_same_command_continues_the_wandb_run(tiny_data, tmp_path,
                                                                                        monkeypatch):
    """SLURM's preemption or requeue (SIGTERM) in epoch 1: the W&B run is marked preempting (a sweep requeues
    it) and closed with exit code 130; the requeued task, the same command with no checkpoint to resume from,
    trains from the start into the same W&B run (engine.tracking.init_wandb), not a second run of the group."""
    import signal

    import wandb

    from engine import steps

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    preempting = []
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "mark_preempting", lambda self: preempting.append(self.id))

    def sigterm_at_micro_batch_2(*args, **kwargs):
        sigterm_at_micro_batch_2.calls += 1
        if sigterm_at_micro_batch_2.calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_images(*args, **kwargs)

    real_images, sigterm_at_micro_batch_2.calls = steps.device_images, 0
    monkeypatch.setattr(steps, "device_images", sigterm_at_micro_batch_2)
    out, flags = tmp_path / "run", ("--wandb", "--variant", "A", "--epochs", "1")
    handler_before = signal.getsignal(signal.SIGTERM)
    assert run_train(tiny_data, out, *flags) == 130
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    assert preempting == [run_id] and not (out / "checkpoints").exists()
    assert signal.getsignal(signal.SIGTERM) is handler_before  # train.main put the handler back
    monkeypatch.setattr(steps, "device_images", real_images)
    assert run_train(tiny_data, out, *flags) == 0
    assert read_meta(out / "checkpoints" / "epoch_0001")["wandb_run_id"] == run_id
    offline_runs = sorted((out / "wandb").glob("offline-run-*"))  # -<id>, or -<id>-1 within the same second
    assert len(offline_runs) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name)
                                          for p in offline_runs)


def test_demo_setting_learns_well_above_majority_class(tiny_data, tmp_path):
    """A smaller demo (64x128, 16 frames, 6 epochs): val mIoU must be far above predicting the majority class."""
    import numpy as np

    from data_utils.cityscapes import load_split
    from data_utils.dataset import read_frame
    from metrics import SegmentationMetrics

    out = tmp_path / "learn"
    assert run_train(tiny_data, out, "--epochs", "6", "--lr", "2e-3") == 0
    learned = read_rows(out)[-1]["val/miou"]

    train_counts = np.zeros(256, np.int64)
    for rec in load_split(tiny_data, "train"):
        train_counts += np.bincount(read_frame(rec["image_path"], rec["label_path"])[1].ravel(), minlength=256)
    majority = int(train_counts[:CITYSCAPES.num_classes].argmax())
    trivial = SegmentationMetrics(CITYSCAPES.num_classes)
    for rec in load_split(tiny_data, "val"):
        label = torch.from_numpy(read_frame(rec["image_path"], rec["label_path"])[1].astype(np.int64))[None]
        trivial.update(torch.full_like(label, majority), label)
    baseline = trivial.compute()["miou"]
    assert learned > max(3 * baseline, baseline + 0.05), (learned, baseline)


def test_two_process_ddp_trains_and_its_evaluation_equals_single_process(tiny_data, tmp_path):
    """Two-process gloo DDP on the CPU: the val metrics written at the checkpoint equal a single-process
    evaluation of the same checkpoint (5 val frames: the last batch is padded, then dropped).

    accelerate 1.x's `launch --cpu --num_processes 2` starts ONE process (its simple launcher); CPU DDP is
    `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` (torch.distributed.run + gloo)."""
    from engine.checkpoint import load_weights_into
    from engine.evaluation import evaluate_model
    from engine.results import read_results, results_path
    from engine.samples import SampleSink, read_predictions, read_sample_set
    from engine.setup import build_dataloader
    from metrics.keys import METRIC_KEYS
    from metrics.per_image import per_image_path, read_per_image

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launch, "train.py", *TINY, "--data-root", str(tiny_data), "--variant", "C",
                             "--epochs", "2", "--batch-size", "2", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes on cpu" in result.stdout
    rows = read_rows(out)
    assert [r["step"] for r in rows] == [4, 8]  # 16 frames / (2 per process x 2 processes) per epoch

    ckpt = out / "checkpoints" / "epoch_0002"
    assert read_meta(ckpt)["num_processes"] == 2
    cfg = load_config(ckpt / "config.json")
    model = build_model_from_config(cfg)
    load_weights_into(model, ckpt / "model.safetensors")
    sink = SampleSink(read_sample_set(out).names)
    single = evaluate_model(model, build_dataloader(cfg, cfg.val_split, train=False), Accelerator(cpu=True),
                            on_predictions=sink)
    logged = read_results(results_path(ckpt))
    # the prediction samples, gathered from both processes, are the single-process predictions
    kept = read_predictions(results_path(ckpt))
    assert kept.names == sink.names and len(kept.names) == 5
    for name in kept.names:
        np.testing.assert_array_equal(kept.pred(name), sink.predictions[name], err_msg=name)
    assert single["num_images"] == logged["num_images"] == 5
    for key in METRIC_KEYS:
        assert single[key] == pytest.approx(logged[key], abs=1e-12), key
    assert single["iou"] == pytest.approx(list(logged["iou"].values()), abs=1e-12, nan_ok=True)
    # the per-image statistics gathered over 2 processes (names too) equal the single-process ones, in order
    stats = read_per_image(per_image_path(ckpt))
    assert list(stats["names"]) == list(single["per_image"]["names"]) == sorted(stats["names"])
    for key, value in single["per_image"].items():
        np.testing.assert_array_equal(stats[key], value, err_msg=key)


def test_wandb_offline_run_with_sample_images_continues_the_same_run_after_resume(tiny_data, tmp_path, monkeypatch):
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    flags = ("--wandb", "--log-images", "2", "--variant", "B", "--epochs", "2", "--checkpoint-every", "1",
             "--aux-weight", "0")
    monkeypatch.setattr(engine.setup, "build_loss", lambda *a, **k: NaNLossAfter(build_loss(*a, **k), 5, 10**9))
    with pytest.raises(UserError, match="non-finite"):
        run_train(tiny_data, out, *flags)  # stops in epoch 2; epoch 1 is checkpointed
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    assert run_train(tiny_data, out, *flags) == 0

    run_id = read_meta(out / "checkpoints" / "epoch_0001")["wandb_run_id"]
    assert run_id and read_meta(out / "checkpoints" / "epoch_0002")["wandb_run_id"] == run_id
    offline_runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs)
    assert list((offline_runs[-1] / "files" / "media").rglob("*.png"))  # the sample images
    # the resumed run appends its epochs to the same W&B run: epoch 1 before the stop, epoch 2 after it
    from tests.wandb_files import OfflineRun

    epochs = [[row["epoch"] for row in OfflineRun.read(next(p.glob("*.wandb"))).history if "epoch" in row]
              for p in offline_runs]
    assert epochs == [[1], [2]]


# ------------------------------------------------------------------------------- loss recipes, other backbones
def test_loss_recipe_trains_end_to_end_is_recorded_and_grouped_by_its_label(tiny_data, tmp_path):
    """`--loss "ce=1,lovasz=0.5"` (workers on, as the demo ships): every term is logged under its name, the
    results record the recipe, and aggregate's loader groups the run under the recipe's label."""
    from report.load import Study, load_runs_dir

    out = tmp_path / "runs" / "recipe"
    children = set(multiprocessing.active_children())
    assert run_train(tiny_data, out, "--loss", "ce=1,lovasz=0.5", "--epochs", "2", "--num-workers", "2",
                     "--log-grad-norms", "2") == 0
    assert set(multiprocessing.active_children()) <= children  # the loader workers stopped with train.main
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert "train/dice" not in row and "train/boundary" not in row
        assert row["train/weighted/lovasz"] == pytest.approx(0.5 * row["train/lovasz"])
        assert row["train/loss"] == pytest.approx(row["train/ce"] + row["train/weighted/lovasz"]
                                                  + 0.4 * row["train/aux"], rel=1e-5)
        assert -1 <= row["grad_cos/logits/ce_lovasz"] <= 1 and row["grad_norm/features/lovasz"] > 0
    results = json.loads((out / "checkpoints" / "epoch_0002.results.json").read_text())
    assert results["variant"] == "ce+0.5·lovasz" and results["loss"] == {"ce": 1.0, "lovasz": 0.5}
    assert read_meta(out / "checkpoints" / "epoch_0002")["loss"] == {"ce": 1.0, "lovasz": 0.5}
    study = Study.from_records(load_runs_dir(tmp_path / "runs"))
    assert study.groups == ["ce+0.5·lovasz"]


@pytest.mark.parametrize("backbone", ["resnet18", "swin_tiny_patch4_window7_224"])
def test_other_backbone_trains_and_its_checkpoint_evaluates(tiny_data, tmp_path, backbone):
    """resnet18 (a stride-2 stem level to skip) and swin (NHWC, built for the 64x128 training frames) train end to
    end, and evaluate.py rebuilds the model from the checkpoint's config alone."""
    import evaluate

    out = tmp_path / "run"
    assert run_train(tiny_data, out, "--backbone", backbone, "--variant", "D", "--epochs", "1") == 0
    (row,) = read_rows(out)
    assert math.isfinite(row["train/loss"]) and 0 <= row["val/miou"] <= 1
    ckpt = out / "checkpoints" / "epoch_0001"
    results = ckpt.with_name("epoch_0001.results.json")
    written = json.loads(results.read_text())
    results.unlink()
    assert evaluate.main([str(ckpt)]) == 0
    assert json.loads(results.read_text())["miou"] == pytest.approx(written["miou"])
