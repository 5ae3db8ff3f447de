"""engine.checkpoint and train.py's resume: save, prune, refuse, resume bit for bit (also after a SIGKILL).

Runs use the synthetic Cityscapes-layout data at 64x128 with convnextv2_atto and a 32-channel UPerNet on CPU.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from engine.checkpoint import (TrainingProgress, find_resumable_checkpoint, list_checkpoints, read_meta,
                               register_checkpoint_hooks, resume_from, save_checkpoint)
from engine.config import DEMO_PRESET, load_config
from engine.setup import build_model_from_config
from tests.tiny_training import RESUMABLE, TINY, _tiny_cfg, copy_run, read_rows, run_train
from utils.fileio import UserError

ROOT = Path(__file__).resolve().parents[1]


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


def test_checkpoint_with_a_nonfinite_tensor_is_not_written_and_names_it(tmp_path):
    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path)
    _one_step(model, optimizer)
    progress.epoch = 1
    name, bn = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    name += ".running_var"
    bn.running_var[3] = float("inf")
    with pytest.raises(UserError, match=rf"epoch_0001: not written: model tensor {name} holds nan/inf"):
        save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    assert not (cfg.run_dir / "checkpoints").exists()
    bn.running_var[3] = 1.0
    next(iter(optimizer.optimizer.state.values()))["exp_avg_sq"].view(-1)[0] = float("nan")
    with pytest.raises(UserError, match=r"not written: optimizer exp_avg_sq of \S+ holds nan/inf"):
        save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    assert list_checkpoints(cfg.run_dir) == []


def test_checkpoint_save_resume_round_trip_and_pruning(tmp_path):
    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path)
    _one_step(model, optimizer)
    progress.epoch, progress.step = 1, 7
    first = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id="abc123")
    assert first.name == "epoch_0001"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert read_meta(first)["wandb_run_id"] == "abc123" and read_meta(first)["step"] == 7
    assert load_config(first / "config.json") == cfg
    assert set(load_file(first / "model.safetensors")) == set(saved)  # unwrapped keys, no "module." prefix

    _one_step(model, optimizer)
    progress.epoch, progress.step = 2, 14
    second = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id="abc123")
    expected_draw = torch.rand(3)  # the torch RNG stream continues from the state saved in `second`
    saved_moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    # keep_states=1: the older checkpoint keeps weights, config and meta only; the newest can be resumed
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    assert read_meta(first)["training_state"] is False
    assert find_resumable_checkpoint(cfg.run_dir) == second
    with pytest.raises(UserError, match="weights only"):
        resume_from(accelerator, first, progress)

    # resume restores weights, optimizer, progress counters and the RNG stream
    _one_step(model, optimizer)  # moves weights, AdamW moments and the RNG on
    progress.epoch, progress.step = 0, 0
    meta = resume_from(accelerator, second, progress)
    assert (progress.epoch, progress.step, meta["wandb_run_id"]) == (2, 14, "abc123")
    for k, v in load_file(second / "model.safetensors").items():
        assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(torch.rand(3), expected_draw)
    for p, moment in zip(model.parameters(), saved_moments):
        assert torch.equal(optimizer.state[p]["exp_avg"], moment)


def test_crash_during_save_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    import engine.checkpoint as ckpt_module

    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path)
    progress.epoch = 1

    def boom(*args, **kwargs):  # a crash, not a failed write (that one cleans up: tests/test_faults.py)
        raise RuntimeError("simulated crash")

    for target in ("save_file", "save_config"):  # during the weights, then after accelerate's state files
        with monkeypatch.context() as m:
            m.setattr(ckpt_module, target, boom)
            with pytest.raises(RuntimeError, match="simulated crash"):
                save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
        folder = cfg.run_dir / "checkpoints"
        assert not (folder / "epoch_0001").exists()
        assert [p.name for p in folder.iterdir()] == [".tmp_epoch_0001"]
        assert list_checkpoints(cfg.run_dir) == [] and find_resumable_checkpoint(cfg.run_dir) is None

    final = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)  # cleans the temp
    assert [p.name for p in (cfg.run_dir / "checkpoints").iterdir()] == ["epoch_0001"]
    assert find_resumable_checkpoint(cfg.run_dir) == final


# ------------------------------------------------------------------------------------------------ resume
def test_resume_refuses_other_settings_and_finished_run_returns(straight_runs, tiny_data, tmp_path, capsys):
    out = copy_run(straight_runs["0"], tmp_path / "run")
    with pytest.raises(UserError, match=r"other settings \(--lambda-dice 1.0 -> 0.5\); pass the same flags"):
        run_train(tiny_data, out, *RESUMABLE, "--lambda-dice", "0.5")
    with pytest.raises(UserError, match="absent: Cityscapes root does not exist"):  # the input error comes first
        run_train(tiny_data, out, *RESUMABLE, "--lambda-dice", "0.5", "--data-root", str(tmp_path / "absent"))
    assert run_train(tiny_data, out, *RESUMABLE) == 0
    assert "nothing to do" in capsys.readouterr().out
    # A longer schedule extends the run from its newest checkpoint, saying so; a shorter one than done is refused.
    schedule = ("--variant", "C", "--checkpoint-every", "1", "--keep-states", "2")
    assert run_train(tiny_data, out, *schedule, "--epochs", "3") == 0
    assert "--epochs 2 -> 3: continuing from epoch 2 with the LR schedule of a 3-epoch run" in capsys.readouterr().out
    assert [row["epoch"] for row in read_rows(out)] == [1, 2, 3] and load_config(out / "config.json").epochs == 3
    with pytest.raises(UserError, match="epoch_0003: this run already trained 3 epochs, more than --epochs 1"):
        run_train(tiny_data, out, *schedule, "--epochs", "1")
    with pytest.raises(UserError, match="--resume given but no complete checkpoint"):
        run_train(tiny_data, tmp_path / "empty", "--variant", "A", "--resume")


def test_resume_refuses_another_process_count(straight_runs, tiny_data, tmp_path):
    """The LR schedule's length and the per-rank RNG states depend on the process count: no silent resume."""
    out = copy_run(straight_runs["0"], tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "epoch_0002")  # as if killed during epoch 2
    meta_path = out / "checkpoints" / "epoch_0001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "num_processes": 2}))
    with pytest.raises(UserError, match=r"saved by 2 processes, now 1; resume with --num_processes 2"):
        run_train(tiny_data, out, *RESUMABLE)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_equals_the_uninterrupted_run_with_and_without_loader_workers(straight_runs, tiny_data, tmp_path,
                                                                              workers):
    """A run dir holding only epoch 1's checkpoint (as after a kill in epoch 2) resumes to the uninterrupted
    run's epoch-2 weights, bit for bit: with persistent workers the loaders' first iter() in the resumed
    process must not draw from the restored global torch RNG (which drives dropout)."""
    straight, resumed = straight_runs[workers], tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints" / "epoch_0001", resumed / "checkpoints" / "epoch_0001")
    assert run_train(tiny_data, resumed, *RESUMABLE, "--num-workers", workers) == 0
    a = load_file(straight / "checkpoints" / "epoch_0002" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "epoch_0002" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_broken_newest_checkpoint_stops_the_resume_with_one_line_and_overwrites_nothing(straight_runs, tiny_data,
                                                                                          tmp_path):
    """A truncated model.safetensors (or optimizer.bin) in the checkpoint to resume from, and a newest
    checkpoint without meta.json whose older ones hold weights only: one line each, nothing retrained."""
    out = tmp_path / "run"
    flags = ("--variant", "A", "--epochs", "3", "--checkpoint-every", "1")  # keep-states 1: 1 and 2 are pruned
    assert run_train(tiny_data, out, *flags) == 0
    ckpts = out / "checkpoints"
    shutil.rmtree(ckpts / "epoch_0003")
    before = {p: p.read_bytes() for p in sorted(ckpts.rglob("*")) if p.is_file()}

    # epoch 2 without meta.json, epoch 1 weights only: the old code restarted at epoch 0, overwriting both
    (ckpts / "epoch_0002" / "meta.json").unlink()
    del before[ckpts / "epoch_0002" / "meta.json"]
    with pytest.raises(UserError, match=rf"^{re.escape(str(ckpts / 'epoch_0002'))}: is incomplete \(no "
                                        r"meta.json\).*delete it to resume from "
                                        r"scratch.*or pass another --out"):
        run_train(tiny_data, out, *flags)
    shutil.rmtree(ckpts / "epoch_0002")  # the first choice: then the weights-only epoch 1 is the newest
    with pytest.raises(UserError, match=r"epoch_0001: holds weights only .*or pass another --out"):
        run_train(tiny_data, out, *flags)
    assert {p: p.read_bytes() for p in sorted(ckpts.rglob("*")) if p.is_file()} == {
        p: b for p, b in before.items() if "epoch_0002" not in p.parts}

    # a truncated file in the checkpoint resumed from: its checksum (meta.json) differs; without one (a checkpoint
    # saved before checksums existed) the read fails
    out = copy_run(straight_runs["0"], tmp_path / "cut")
    shutil.rmtree(out / "checkpoints" / "epoch_0002")
    meta_path = out / "checkpoints" / "epoch_0001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    checksum = r"does not match the sha256 checksum .*corrupt, use another epoch \(or delete it"
    weights, state = (rf"cannot {what} .*corrupt, .*delete it"
                      for what in ("read the weights", "load the training state"))
    for with_checksums, cases in ((True, (("model.safetensors", checksum), ("optimizer.bin", checksum))),
                                  (False, (("model.safetensors", weights), ("optimizer.bin", state)))):
        if not with_checksums:
            meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "checksums"}))
        for name, message in cases:
            path = out / "checkpoints" / "epoch_0001" / name
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            with pytest.raises(UserError, match=rf"epoch_0001.*: {message}"):
                run_train(tiny_data, out, *RESUMABLE)
            path.write_bytes(data)


def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(straight_runs, tiny_data, tmp_path,
                                                                    process_groups):
    """A real train.py is SIGKILLed in epoch 2 (after epoch 1's checkpoint) and restarted with the same
    command, which resumes. Epoch 2's weights must be bit-identical to the uninterrupted run's (data order,
    flips, augmentation, dropout, SDT, optimizer and RNG state all resume exactly). The demo preset as
    shipped, so with its 2 persistent DataLoader workers (the uninterrupted run: straight_runs["2"])."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    demo_with_workers = [flag for flag in TINY if flag not in ("--num-workers", "0")]
    assert DEMO_PRESET["num_workers"] == 2 and "--num-workers" not in demo_with_workers
    killed = tmp_path / "killed"
    command = [sys.executable, "train.py", *demo_with_workers, "--data-root", str(tiny_data), *RESUMABLE,
               "--out", str(killed)]
    proc = process_groups.start(command, env=env)
    process_groups.wait_for(proc, (killed / "checkpoints" / "epoch_0001").exists)
    time.sleep(0.2)  # into epoch 2 (4 micro-batches of ~0.2-0.8 s each)
    assert not (killed / "checkpoints" / "epoch_0002").exists()
    process_groups.send(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    straight = straight_runs["2"]
    a = load_file(straight / "checkpoints" / "epoch_0002" / "model.safetensors")
    b = load_file(killed / "checkpoints" / "epoch_0002" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = read_rows(straight), read_rows(killed)
    assert [r["epoch"] for r in rows_b] == [1, 2]  # no duplicate line for the interrupted epoch
    assert rows_a[1]["train/loss"] == rows_b[1]["train/loss"] and rows_a[1]["val/miou"] == rows_b[1]["val/miou"]
