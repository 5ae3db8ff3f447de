"""train.py and its engine parts: LR schedule, gradient accumulation, the non-finite guard, whole runs, the demo.

Runs use the synthetic Cityscapes-layout data at 64x128 with convnextv2_atto and a 32-channel UPerNet on CPU.
Config and CLI tests are in tests/test_config.py, checkpoint and resume tests in tests/test_checkpoint.py.
"""
from __future__ import annotations

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

from engine.checkpoint import (TrainingProgress, find_resumable_checkpoint, list_checkpoints, read_meta,
                               register_checkpoint_hooks, save_checkpoint)
from engine.config import DEMO_PRESET, load_config
from engine.schedule import get_lr
from engine.setup import build_model_from_config
from engine.steps import EpochLossLog, GradientMask, accumulate_and_step, forward_loss
from losses import build_loss
from tests.tiny_training import TINY, _tiny_cfg, read_rows, run_train
from utils.fileio import EXIT_BAD_INPUT, UserError

ROOT = Path(__file__).resolve().parents[1]


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
                terms, _ = forward_loss(model, images[i:i + batch], labels[i:i + batch], None, loss_fn)
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
            torch.testing.assert_close(accumulated[3][k], v, rtol=1e-5, atol=atol,
                                       msg=lambda m: f"{optimizer_cls.__name__} {k}: {m}")
            changed += not torch.equal(v, before[k])
        assert changed > 10  # the step did update the weights


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


def test_skipped_micro_batch_leaves_parameters_buffers_and_optimizer_as_if_it_was_not_there():
    """Micro-batches [x0, bad, x2] (bad: one nan pixel) with GradientMask vs the loop over [x0, x2]: after
    the bad one, weights, BatchNorm running stats and counts, and the AdamW state (moments, step count) equal
    their values before it, and at the end the two runs are bit-identical. accum 1: the bad micro-batch
    closes a window of its own, which must not step at all (a zero-gradient AdamW step would still move)."""
    inputs = torch.randn(3, 2, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    bad = inputs[1].clone()
    bad[0, 0, 0, 0] = float("nan")

    def run(batches, probe_after: int | None = None):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        torch.manual_seed(0)
        accelerator = Accelerator(cpu=True)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.GELU(),
                                    torch.nn.Conv2d(8, 4, 1))
        mask = GradientMask(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
        model, optimizer = accelerator.prepare(model, optimizer)
        log, probes = EpochLossLog(accelerator), []
        for i, x in enumerate(batches):
            with accelerator.accumulate(model):
                mask.save_buffers()
                loss = model(x).square().mean()
                mask.set_keep(log.update({"loss": loss}))
                accumulate_and_step(accelerator, model, optimizer, loss, lr=1e-2, mask=mask)
            probes.append(({k: v.clone() for k, v in model.state_dict().items()},
                           {id_: {k: v.clone() for k, v in st.items()}
                            for id_, st in optimizer.optimizer.state_dict()["state"].items()}))
        assert log.read().num_bad == sum(not torch.isfinite(x).all() for x in batches)
        return probes

    with_bad, without = run([inputs[0], bad, inputs[2]]), run([inputs[0], inputs[2]])
    (model_0, optim_0), (model_1, optim_1), (model_2, optim_2) = with_bad
    assert all(torch.equal(model_0[k], model_1[k]) for k in model_0)  # nothing moved at the bad one
    assert optim_0.keys() == optim_1.keys() and all(
        torch.equal(optim_0[i][k], optim_1[i][k]) for i in optim_0 for k in optim_0[i])
    assert int(model_1["1.num_batches_tracked"]) == 1 and int(optim_1[0]["step"]) == 1
    ref_model, ref_optim = without[-1]
    assert [k for k in ref_model if not torch.equal(ref_model[k], model_2[k])] == []
    assert all(torch.equal(ref_optim[i][k], optim_2[i][k]) for i in ref_optim for k in ref_optim[i])
    assert all(torch.isfinite(v).all() for v in model_2.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA notion")
def test_the_micro_step_with_its_nonfinite_guard_makes_no_host_sync():
    """torch.cuda's sync debug mode raises on any device-to-host wait: none in a good or a bad micro-step
    (loss log, gradient mask, BatchNorm restore, AdamW skip flag), accumulating or stepping."""
    accelerator = Accelerator(gradient_accumulation_steps=2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.GELU(),
                                torch.nn.Conv2d(8, 4, 1))
    mask = GradientMask(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    log = EpochLossLog(accelerator)
    inputs = torch.randn(6, 2, 3, 8, 6, device=accelerator.device)
    inputs[3, 0, 0, 0, 0] = float("nan")

    def micro_step(x):
        with accelerator.accumulate(model):
            mask.save_buffers()
            loss = model(x).square().mean()
            mask.set_keep(log.update({"loss": loss}, where=0))
            accumulate_and_step(accelerator, model, optimizer, loss, lr=1e-3, grad_clip=1.0, mask=mask)

    micro_step(inputs[0])  # first step: lazy CUDA initialisation and optimizer state
    micro_step(inputs[1])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in inputs[2:]:
            micro_step(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert log.read().num_bad == 1


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
    import train

    # batch 4: 4 micro-batches per epoch; the 5th loss call is epoch 2's first micro-batch
    monkeypatch.setattr(train, "build_loss", lambda *a, **k: NaNLossAfter(build_loss(*a, **k), 5, 10**9))
    out = tmp_path / "stop"
    flags = ("--variant", "B", "--epochs", "2", "--checkpoint-every", "1", "--aux-weight", "0")
    with pytest.raises(UserError, match=r"non-finite loss at optimizer step 4 \(epoch 2, batch 0\): ce=nan") as err:
        run_train(tiny_data, out, *flags)
    assert "epoch_0001" in str(err.value) and "--max-nonfinite" in str(err.value)
    assert [c.name for c in list_checkpoints(out)] == ["epoch_0001"]
    assert find_resumable_checkpoint(out) == out / "checkpoints" / "epoch_0001"

    # with a tolerance, one bad micro-batch is skipped and the run goes on
    monkeypatch.setattr(train, "build_loss", lambda *a, **k: NaNLossAfter(build_loss(*a, **k), 5, 5))
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
    from engine import steps

    bad_call = 2
    flags = ("--variant", "B", "--epochs", "1", "--max-nonfinite", "1")
    real_images, real_forward, real_step = steps.device_images, steps.forward_loss, steps.accumulate_and_step

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

    def skipped_forward(model, *args, **kwargs):
        skipped_forward.calls += 1
        if skipped_forward.calls != bad_call:
            return real_forward(model, *args, **kwargs)
        buffers = [b.clone() for b in model.buffers()]
        with torch.no_grad():
            terms, stats = real_forward(model, *args, **kwargs)
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)
        return {k: v * float("nan") for k, v in terms.items()}, stats  # counted as skipped, like the nan pixel

    def skipped_step(*args, **kwargs):
        skipped_step.calls += 1
        if skipped_step.calls != bad_call:
            real_step(*args, **kwargs)

    skipped_forward.calls = skipped_step.calls = 0
    monkeypatch.setattr(steps, "forward_loss", skipped_forward)
    monkeypatch.setattr(steps, "accumulate_and_step", skipped_step)
    assert run_train(tiny_data, tmp_path / "skip", *flags) == 0

    assert [r["train/nonfinite_skipped"] for r in read_rows(tmp_path / "nan")] == [1]
    ckpt_nan, ckpt_skip = (tmp_path / run / "checkpoints" / "epoch_0001" for run in ("nan", "skip"))
    weights_nan, weights_skip = load_file(ckpt_nan / "model.safetensors"), load_file(ckpt_skip / "model.safetensors")
    assert [k for k, v in weights_nan.items() if not torch.isfinite(v).all()] == []
    assert [k for k in weights_skip if not torch.equal(weights_nan[k], weights_skip[k])] == []
    optim_nan, optim_skip = (torch.load(c / "optimizer.bin", weights_only=False)["state"] for c in (ckpt_nan, ckpt_skip))
    assert optim_nan.keys() == optim_skip.keys()
    for i, state in optim_nan.items():
        assert all(torch.equal(v, optim_skip[i][k]) for k, v in state.items()), i
    assert {int(s["step"]) for s in optim_nan.values()} == {3}  # 4 micro-batches, one skipped


def test_nonfinite_stop_comes_at_the_next_host_read_naming_the_first_bad_micro_batch(tiny_data, tmp_path,
                                                                                      monkeypatch):
    import train

    monkeypatch.setattr(train, "HOST_READ_EVERY", 3)  # the host reads after micro-batches 2, 5, 8, ...
    losses = []

    def nan_from_second_call(*args, **kwargs):
        losses.append(NaNLossAfter(build_loss(*args, **kwargs), 2, 10**9))
        return losses[-1]

    monkeypatch.setattr(train, "build_loss", nan_from_second_call)
    out = tmp_path / "late"
    with pytest.raises(UserError, match=r"non-finite loss at optimizer step 1 \(epoch 1, batch 1\): ce=nan.*"
                                        r"\(2 non-finite micro-batch\(es\) so far\)"):
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
    majority = int(train_counts[:19].argmax())
    trivial = SegmentationMetrics()
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
    assert "2 process(es) on cpu" in result.stdout
    rows = read_rows(out)
    assert [r["step"] for r in rows] == [4, 8]  # 16 frames / (2 per process x 2 processes) per epoch

    ckpt = out / "checkpoints" / "epoch_0002"
    assert read_meta(ckpt)["num_processes"] == 2
    cfg = load_config(ckpt / "config.json")
    model = build_model_from_config(cfg)
    load_weights_into(model, ckpt / "model.safetensors")
    single = evaluate_model(model, build_dataloader(cfg, cfg.val_split, train=False), Accelerator(cpu=True))
    logged = read_results(results_path(ckpt))
    assert single["num_images"] == logged["num_images"] == 5
    for key in METRIC_KEYS:
        assert single[key] == pytest.approx(logged[key], abs=1e-12), key
    assert single["iou"] == pytest.approx(list(logged["iou"].values()), abs=1e-12, nan_ok=True)
    # the per-image statistics gathered over 2 processes (names too) equal the single-process ones, in order
    stats = read_per_image(per_image_path(ckpt))
    assert list(stats["names"]) == list(single["per_image"]["names"]) == sorted(stats["names"])
    for key, value in single["per_image"].items():
        np.testing.assert_array_equal(stats[key], value, err_msg=key)


def test_wandb_mode_is_offline_unless_logged_in(tmp_path, monkeypatch):
    from engine.tracking import wandb_logged_in

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_logged_in()  # no netrc file
    (tmp_path / "netrc").write_text("machine example.org login user password pw\n")
    assert not wandb_logged_in()
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    assert wandb_logged_in()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_logged_in()


def test_wandb_offline_run_with_overlays_continues_the_same_run_after_resume(tiny_data, tmp_path, monkeypatch):
    import train

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    flags = ("--wandb", "--log-images", "2", "--variant", "B", "--epochs", "2", "--checkpoint-every", "1",
             "--aux-weight", "0")
    monkeypatch.setattr(train, "build_loss", lambda *a, **k: NaNLossAfter(build_loss(*a, **k), 5, 10**9))
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
    assert list((offline_runs[-1] / "files" / "media").rglob("*.png"))  # the prediction overlays


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
