"""Checkpoints: atomic save of the full training state, finding the newest complete one, resuming.

A checkpoint is a folder `RUN/checkpoints/epoch_XXXX/` holding

    model.safetensors        weights of the unwrapped model (no `module.` prefix: loads on any GPU count)
    optimizer.bin            AdamW state          } written by `accelerator.save_state`
    random_states_<rank>.pkl python/numpy/torch/cuda RNG states of each process
    custom_checkpoint_0.pkl  TrainingProgress (epoch, optimizer step, skipped steps)
    config.json              the resolved TrainConfig (evaluate.py rebuilds the model from it)
    meta.json                epoch, step, variant (the loss label), loss (the recipe), seed, lambdas, wandb_run_id,
                             training_state, checksums (sha256 of every other file, checked when loaded)

It is written into `RUN/checkpoints/.tmp_epoch_XXXX/`, every file fsync'ed, then renamed: a folder named
`epoch_XXXX` is therefore always complete, and a crash during the save leaves only a `.tmp_*` folder,
which the next save removes. Only the newest `keep_states` checkpoints keep the optimizer/RNG state
(~2x the weights); older ones are reduced to weights + config + meta, enough for evaluate.py.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_utils.cityscapes import resolve_data_root
from engine.config import TrainConfig, load_config, resume_refusal, save_config
from engine.checkpoint_paths import (CHECKPOINT_NAME, CHECKPOINTS, CHECKSUMS, WEIGHTS_NAME,  # noqa: F401 (re-exported)
                                     checkpoint_folders, checkpoint_path, list_checkpoints, meta_problem,
                                     read_meta, resolve_checkpoint)
from utils.console import plural
from utils.fileio import UserError, atomic_write_json, disk_full_advice, fsync_dir

WEIGHTS_ONLY_FILES = {WEIGHTS_NAME, "config.json", "meta.json"}  # a pruned checkpoint: what evaluate.py needs
_USE_ANOTHER = "use another epoch (or delete it: a run then resumes from its previous checkpoint)"


@dataclass
class TrainingProgress:
    """Counters saved inside the accelerate state (`register_for_checkpointing`), not in folder names."""
    epoch: int = 0            # epochs completed
    step: int = 0             # optimizer steps taken (drives the LR schedule)
    nonfinite_skipped: int = 0  # micro-batches skipped because of a non-finite loss (--max-nonfinite)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "nonfinite_skipped": self.nonfinite_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))



def register_checkpoint_hooks(accelerator) -> None:
    """Make `save_state`/`load_state` store the *unwrapped* model as `model.safetensors`.

    accelerate would save the wrapped model's state dict, whose keys gain `module.` under DDP and
    `_orig_mod.` under torch.compile, so a checkpoint could only be resumed on the same setup. The hooks
    (the pattern of diffusers' training scripts) take the model out of accelerate's hands.
    """

    def save_weights(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:  # train.py prepares exactly one model
                state = accelerator.unwrap_model(model).state_dict()
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                          os.path.join(output_dir, WEIGHTS_NAME))
        weights.clear()  # nothing left for accelerate to save

    def load_weights(models, input_dir):
        for model in models:
            load_weights_into(accelerator.unwrap_model(model), Path(input_dir) / WEIGHTS_NAME)
        models.clear()

    accelerator.register_save_state_pre_hook(save_weights)
    accelerator.register_load_state_pre_hook(load_weights)


def load_weights_into(model: torch.nn.Module, path: Path) -> None:
    """Load `model.safetensors` strictly: the one load of evaluate.py, predict.py and a resume. A UserError naming
    the checkpoint when the file fails its checksum (`verify_checksums`), cannot be read, holds a nan/inf (naming
    the tensor) or does not fit the model (naming the keys)."""
    path = Path(path)
    verify_checksums(path.parent, [path.name])
    try:
        state = load_file(str(path))
    except (OSError, RuntimeError, SafetensorError) as e:  # missing, truncated or garbled
        raise UserError(f"{path}: cannot read the weights ({e}); the checkpoint is corrupt, {_USE_ANOTHER}") from None
    bad = next((name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise UserError(f"{path}: tensor {bad} holds nan/inf; the checkpoint is unusable, {_USE_ANOTHER}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise UserError(f"{path}: weights do not fit the model built from config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})")
    model.load_state_dict(state)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 16 MiB chunks (0.18 s for ConvNeXt-V2-Base's ~350 MB of weights with
    the CPU's SHA instructions, faster than blake2b: bench/bench_checksums.py, docs/training.md)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksums(ckpt: Path, names=None) -> None:
    """Compare the files `names` (default: all it lists) of checkpoint `ckpt` with the sha256 digests meta.json
    recorded at save time; a UserError naming the first that differs (bit-rot, an edit, a partial copy). Files
    that meta.json does not list (checkpoints saved before checksums existed) or that are absent (reported by
    their reader) are not checked."""
    sums = (read_meta(ckpt) or {}).get(CHECKSUMS) or {}
    for name in sums if names is None else names:
        path = Path(ckpt) / name
        if name in sums and path.is_file() and file_sha256(path) != sums[name]:
            raise UserError(f"{path}: does not match the sha256 checksum meta.json recorded when it was saved "
                            f"(the file changed since: bit-rot or a partial copy); the checkpoint is corrupt, "
                            f"{_USE_ANOTHER}")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def save_checkpoint(accelerator, cfg: TrainConfig, progress: TrainingProgress, run_dir: str | Path,
                    wandb_run_id: str | None) -> Path:
    """Save the full training state after `progress.epoch` epochs; returns the checkpoint folder.

    Call on every process (each one writes its RNG state); the main process writes the rest and renames.
    A model or optimizer tensor holding nan/inf is a UserError naming it, before anything is written.
    """
    final = checkpoint_path(run_dir, progress.epoch)
    # accelerator._models/_optimizers: the objects save_state writes (accelerate has no public accessor)
    bad = first_nonfinite_tensor(accelerator.unwrap_model(accelerator._models[0]), accelerator._optimizers) \
        if accelerator._models else None
    if bad is not None:
        clip = f"a smaller --grad-clip (now {cfg.grad_clip:g})" if cfg.grad_clip > 0 else "with --grad-clip"
        raise UserError(f"{final}: not written: {bad} holds nan/inf after epoch {progress.epoch}; the newest good "
                        f"checkpoint is {find_resumable_checkpoint(run_dir) or 'none'}. Start again with a lower "
                        f"--lr or {clip} (another --out)")
    tmp = final.with_name(f".tmp_{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_config(cfg, tmp / "config.json")
            checksums = {path.name: file_sha256(path) for path in sorted(tmp.iterdir()) if path.is_file()}
            atomic_write_json(tmp / "meta.json", {
                "epoch": progress.epoch, "step": progress.step, "variant": cfg.loss_label, "loss": cfg.loss_weights,
                "seed": cfg.seed, "lambda_dice": cfg.lambda_dice, "lambda_boundary": cfg.lambda_boundary,
                "wandb_run_id": wandb_run_id, "num_processes": accelerator.num_processes,
                "nonfinite_skipped": progress.nonfinite_skipped, "training_state": True,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), CHECKSUMS: checksums,
            })
            _fsync_tree(tmp)
    except Exception as e:
        reason = _write_failure(e)
        if reason is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint would keep the disk full
        raise UserError(f"{tmp}: cannot write the checkpoint ({reason}); {disk_full_advice(tmp.parent)} the "
                        f"same command, which resumes from {find_resumable_checkpoint(run_dir) or 'the start'}"
                        ) from None
    if accelerator.is_main_process:
        if final.exists():  # re-running an epoch after resuming from an older checkpoint
            old = final.with_name(f".old_{final.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
        prune_training_states(run_dir, cfg.keep_states)
    accelerator.wait_for_everyone()
    return final


def first_nonfinite_tensor(model: torch.nn.Module, optimizers=()) -> str | None:
    """'model tensor <name>' or 'optimizer <key> of <parameter>' of the first tensor with a nan/inf, or None.

    One host sync: the per-tensor flags are computed on the device and copied once.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    tensors = [(f"model tensor {name}", t) for name, t in model.state_dict().items()]
    for optimizer in optimizers:
        for param, state in getattr(optimizer, "optimizer", optimizer).state.items():
            tensors += [(f"optimizer {key} of {names.get(id(param), 'a parameter')}", v)
                        for key, v in state.items() if torch.is_tensor(v)]
    if not tensors:
        return None
    device = tensors[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in tensors]).tolist()
    return next((name for (name, _), ok in zip(tensors, finite) if not ok), None)
def _write_failure(e: Exception) -> str | None:
    """Why a checkpoint write failed (no space, read-only, I/O error), or None for any other exception.

    torch.save reports a full disk as `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected
    pos 576 vs 534`, safetensors as `SafetensorError: Error while serializing: I/O error: No space left on
    device (os error 28)`, plain writes as OSError (errno ENOSPC).
    """
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or "PytorchStreamWriter" in str(e)):
        return f"torch.save: {str(e).strip()}"
    if isinstance(e, SafetensorError) and "I/O error" in str(e):
        return f"safetensors: {str(e).strip()}"
    return None


def has_training_state(ckpt: Path) -> bool:
    meta = read_meta(ckpt)
    return bool(meta and meta.get("training_state")) and (ckpt / "custom_checkpoint_0.pkl").is_file()


def find_resumable_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that still holds its optimizer/RNG state, or None."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        if has_training_state(ckpt):
            return ckpt
    return None


def checkpoint_to_resume(run_dir: str | Path) -> Path | None:
    """`find_resumable_checkpoint`, refusing when a newer epoch_XXXX folder exists that a resume would retrain
    and overwrite (one without readable meta.json or weights, or one whose training state was pruned)."""
    resume = find_resumable_checkpoint(run_dir)
    resume_epoch = read_meta(resume)["epoch"] if resume is not None else 0
    newer = [path for epoch, path in checkpoint_folders(run_dir) if epoch > resume_epoch]
    if newer:
        path = newer[-1]
        why = "holds weights only (its training state was pruned)" if path in list_checkpoints(run_dir) \
            else f"is incomplete ({meta_problem(path) or f'no {WEIGHTS_NAME}'})"
        raise UserError(f"{path}: {why}, so this run cannot resume from it and would overwrite it; delete it to "
                        f"resume from {resume or 'scratch (no earlier checkpoint with training state)'}, or pass "
                        "another --out for a new run")
    return resume


def resume_checkpoint(cfg: TrainConfig, num_processes: int, require: bool = False) -> tuple[Path | None, bool]:
    """The checkpoint a run of `cfg` resumes from, checked: (checkpoint or None for a fresh start, finished).

    `finished`: the checkpoint already holds cfg.epochs epochs (nothing to do). A UserError, one line, when
    `require` (--resume) and there is nothing to resume; when a newer, unusable checkpoint would be
    overwritten (`checkpoint_to_resume`); when the data root is missing (reported before the next check); when
    the checkpoint was made with other settings than `cfg` (`engine.config.resume_refusal`); when it holds more
    epochs than cfg.epochs (more extend the run); or when it was saved by another process count: the optimizer-step
    count per epoch, the effective batch and the per-rank RNG states all depend on it, so resuming on
    another count would silently change the LR schedule.
    """
    run_dir = cfg.run_dir
    ckpt = checkpoint_to_resume(run_dir)
    if ckpt is None:
        if require:
            raise UserError(f"{run_dir}: --resume given but no complete checkpoint with training state is there")
        return None, False
    if not cfg.hf_dataset:
        resolve_data_root(cfg.data_root)  # an input error first: it would be the next one after the refusal
    refusal = resume_refusal(load_config(ckpt / "config.json"), cfg)
    if refusal:
        raise UserError(f"{ckpt}: {refusal}")
    meta = read_meta(ckpt)
    if meta.get("num_processes", num_processes) != num_processes:
        raise UserError(f"{ckpt}: saved by {plural(meta['num_processes'], 'process', 'processes')}, now "
                        f"{num_processes}; resume with --num_processes {meta['num_processes']}, or start a new run "
                        "with another --out")
    if meta["epoch"] > cfg.epochs:  # more --epochs extend the run (engine.config.EXTENDABLE_CHANGES), fewer cannot
        raise UserError(f"{ckpt}: this run already trained {plural(meta['epoch'], 'epoch')}, more than --epochs "
                        f"{cfg.epochs}; evaluate one of its checkpoints, or pass another --out for a new run")
    return ckpt, meta["epoch"] == cfg.epochs


def prune_training_states(run_dir: str | Path, keep: int) -> None:
    """Drop optimizer/RNG files from all but the newest `keep` (>= 1) checkpoints that have them."""
    with_state = [c for c in list_checkpoints(run_dir) if has_training_state(c)]
    for ckpt in with_state[:-keep]:
        meta = read_meta(ckpt)
        meta["training_state"] = False
        if CHECKSUMS in meta:
            meta[CHECKSUMS] = {k: v for k, v in meta[CHECKSUMS].items() if k in WEIGHTS_ONLY_FILES}
        atomic_write_json(ckpt / "meta.json", meta)  # first: a crash below leaves a weights-only checkpoint
        for path in ckpt.iterdir():
            if path.name not in WEIGHTS_ONLY_FILES:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def resume_from(accelerator, ckpt: Path, progress: TrainingProgress) -> dict:
    """Restore weights, optimizer, RNG states and `progress` from `ckpt`; returns its meta.json."""
    if not has_training_state(ckpt):
        raise UserError(f"{ckpt}: holds weights only (its training state was pruned); resume from the newest "
                        "checkpoint or start a new run with another --out")
    # the weights are checked by load_weights_into (the load hook); the optimizer, RNG and progress files here
    verify_checksums(ckpt, [p.name for p in sorted(ckpt.iterdir()) if p.name not in (WEIGHTS_NAME, "meta.json")])
    try:
        accelerator.load_state(str(ckpt))
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as e:  # a damaged file
        raise UserError(f"{ckpt}: cannot load the training state ({type(e).__name__}: {e}); the checkpoint is "
                        "corrupt, delete it to resume from the previous one") from None
    meta = read_meta(ckpt)
    if progress.epoch != meta["epoch"]:
        raise UserError(f"{ckpt}: meta.json says epoch {meta['epoch']} but the saved state says {progress.epoch}; "
                        "the checkpoint is inconsistent, delete it to resume from an older one")
    return meta
