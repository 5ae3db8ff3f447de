"""What train.py's micro-step uses, kept out of train.py so bench/bench_train.py and the tests build the
same: the device batch (`device_batch`), the non-finite guard (`GradientMask`, `EpochLossLog`) and the step's
state (`StepState`, built by `engine.setup.build_training`). The step itself is `train.train_micro_step`,
readable in train.py: inside `accelerator.accumulate(model)`, forward, loss, backward and (every --grad-accum
micro-batches) the optimizer step, with the guard's four calls around them.

The guard costs something only when it can act. With `--max-nonfinite K > 0` a micro-batch whose loss is
not finite is undone on the device, without a host sync (`GradientMask`: its gradient, its BatchNorm
updates, and the optimizer update of a window that kept nothing); for that every micro-step copies the
model's buffers and all-gathers the loss terms (every process must agree on undoing it before its backward).
With K = 0 (the default) nothing is undone: a bad micro-batch stops the run at the next host read, before
any checkpoint, so the mask is off (no hooks, no copies) and the loss terms are all-gathered once per read,
not per micro-step (`EpochLossLog`). Either way the host reads the loss sums and the non-finite count only
when train.py asks (`EpochLossLog.read`). Cost of each: BENCHMARKS.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator

from data_utils.augment import BatchAugment, normalize
from engine.config import TrainConfig


def augmentation_seed(run_seed: int, rank: int, micro_step: int) -> int:
    """Seed of BatchAugment for one micro-batch: a pure function of (run seed, rank, micro-step)."""
    return int(np.random.default_rng([run_seed, rank, micro_step]).integers(2**63 - 1))


def device_images(images: torch.Tensor, augment: BatchAugment | None, seed: int,
                  channels_last: bool = False) -> torch.Tensor:
    """Loader images on the device -> normalised float32 (N, 3, H, W), photometrically augmented if asked,
    in channels_last memory layout if asked (same shape, NHWC strides: what a channels_last model wants)."""
    if augment is not None:
        images = augment(images, seed=seed)
    elif images.dtype == torch.uint8:
        images = normalize(images)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def device_batch(batch: dict, augment: BatchAugment | None, seed: int, sdt_classes: int = 0,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A prepared loader's batch (on the device) -> (images, labels, sdt) for `train.train_micro_step`.

    images: `device_images` (augmented with `seed` when `augment` is given); labels: (N, H, W) int64 (the
    loader ships uint8, 1/8 of the bytes to copy); sdt: computed on the device from the labels
    (`compute_sdt_torch` over `sdt_classes` classes) when sdt_classes > 0 (--sdt-source gpu), else the batch's
    "sdt" (from the workers or the cache), or None.
    """
    images = device_images(batch["image"], augment, seed, channels_last=channels_last)
    labels = batch["label"]
    if sdt_classes:
        from data_utils.sdt import compute_sdt_torch
        sdt = compute_sdt_torch(labels, sdt_classes, validate=False)  # the loader already mapped the labels
    else:
        sdt = batch.get("sdt")
    return images, labels.long(), sdt  # .long() on the device; the losses index with int64


class GradientMask:
    """Undoes a bad micro-batch on the device, without a host sync: afterwards the parameters, the buffers
    and the optimizer state are what they would be had the micro-batch not been in the data.

    train.train_micro_step calls, in this order: `save_buffers()` before the forward, `set_keep(keep)` after
    the loss (keep from `EpochLossLog.update`), `restore_buffers()` after the backward and, at the end of an
    accumulation window, `skip_step_unless_kept(optimizer)` before the optimizer step.

    - Gradient: a hook on every trainable parameter replaces the gradient coming from the backward pass by
      zeros while `keep` (a 0-dim bool tensor on the device, set before each backward) is False. The hook
      runs before the gradient is added to `.grad` and before DDP all-reduces it, so a skipped micro-batch
      adds exactly nothing to the accumulated gradients, on every process alike (each gets the same `keep`).
      Scaling the loss by 0 instead would not do: 0 x nan = nan. `keep = None` leaves gradients untouched.
    - Buffers: the forward of a bad micro-batch has already written its statistics into the BatchNorm
      running mean/var (nan or inf from a non-finite input) and counted it. `save_buffers()` before the
      forward copies every buffer on the device; `restore_buffers()` after the backward (autograd checks
      that BatchNorm's saved buffers are unchanged until then) puts them back where `keep` is False
      (`torch.where`, so the copy back costs no sync either).
    - Optimizer: a window of accumulated micro-batches none of which was kept must not step at all (AdamW
      would still decay its moments, count a step and apply weight decay on a zero gradient).
      `skip_step_unless_kept(optimizer)` sets `found_inf`, the flag with which fused Adam/AdamW skip an
      update on the device (as under torch's GradScaler); so the optimizer must be created with `fused=True`.
      A window with some kept micro-batches steps on their gradients (summed, divided by the window length
      as accelerate scales). Exception: under `--mixed-precision fp16` torch's GradScaler sets `found_inf`
      itself, so a window with no kept micro-batch steps on a zero gradient.

    `active=False` (train.py with --max-nonfinite 0, where a bad micro-batch stops the run instead): no hooks,
    and every method is a no-op, so the step pays nothing for the guard.
    """

    def __init__(self, model: torch.nn.Module, active: bool = True):
        self.model, self.active = model, active
        self.keep: torch.Tensor | None = None
        self.handles = [p.register_hook(self._apply) for p in model.parameters() if p.requires_grad] if active else []
        self._saved: list[torch.Tensor] = []
        self._window_kept: torch.Tensor | None = None  # whether any micro-batch of the open window was kept

    def _apply(self, grad: torch.Tensor) -> torch.Tensor:
        # where, not multiply: it selects 0 even where grad is nan or inf
        return grad if self.keep is None else torch.where(self.keep, grad, 0.0)

    def save_buffers(self) -> None:
        """Copy the model's buffers (BatchNorm running statistics and counts) on the device; call before the forward.

        The buffers are looked up each time: `accelerator.prepare` moves them to the device as new tensors.
        """
        if self.active:
            self._saved = [b.detach().clone() for b in self.model.buffers()]

    def set_keep(self, keep: torch.Tensor | None) -> None:
        """Mark this micro-batch kept or not (0-dim bool on the device), after its forward, before its backward."""
        if self.active:
            self.keep = keep
            self._window_kept = keep if self._window_kept is None else self._window_kept | keep

    def restore_buffers(self) -> None:
        """After the backward: where `keep` is False, put back the buffers `save_buffers` copied."""
        if not self.active:
            return
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), self._saved):
                buffer.copy_(torch.where(self.keep, buffer, saved))
        self._saved = []

    def skip_step_unless_kept(self, optimizer) -> None:
        """At the end of an accumulation window: make the optimizer's coming step a no-op, on the device,
        if none of the window's micro-batches was kept (fused Adam/AdamW read `found_inf`: 1.0 skips the
        update and the step count); the next `set_keep` opens a new window. `optimizer` may be accelerate's
        wrapper."""
        if not self.active:
            return
        kept = self._window_kept if self._window_kept is not None else torch.ones((), dtype=torch.bool)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        getattr(optimizer, "optimizer", optimizer).found_inf = (~kept).float().to(params[0].device)
        self._window_kept = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class LossReading:
    """What `EpochLossLog.read` brings to the host.

    means: epoch mean of each term over the finite micro-batches of all processes (nan if none yet);
    num_kept: those micro-batches x processes; num_bad: non-finite micro-batches since the previous read;
    first_bad: (where, {term: value}) of the first of them (`where` as given to `update`; the values of
        the first process whose terms are not all finite), or None.
    """
    means: dict[str, float]
    num_kept: int
    num_bad: int
    first_bad: tuple[object, dict[str, float]] | None


class EpochLossLog:
    """One epoch's loss terms, kept on the device and brought to the host only by `read()`.

    A micro-batch is good when every term of every process is finite: good ones count in the epoch means;
    of the bad ones the log counts them and reports the first one's values and position. `update(terms)`
    adds a micro-batch's scalar terms (as float64) to the read window, on the device, and decides whether
    it is good
    - at once when `each_step` (what `GradientMask` needs: the same answer on every process before the
      backward): every process's terms are all-gathered, (P, K) for the K names, one small collective per
      micro-step, and `update` returns `keep`, a 0-dim bool on the device;
    - in `read()` otherwise (--max-nonfinite 0: nothing to undo): the window's terms are all-gathered
      there, one collective per read, and `update` returns None.
    `read()` copies the window to the host (one transfer, the one host sync) and adds it to the epoch's sums;
    call it at the same micro-steps on every process.
    """

    def __init__(self, accelerator, each_step: bool = True):
        self.accelerator, self.each_step = accelerator, each_step
        self.names: list[str] | None = None  # the terms' names, set by the first update
        self.window: list[torch.Tensor] = []  # since the last read: (P, K) per micro-step (each_step), else (1, K)
        self.positions: list = []  # host: `where` of each update since the last read
        self.sums: list[float] = []  # host: the epoch's sum of each term over the good micro-batches
        self.num_kept = 0
        self.interval_sums: list[float] = []  # host: the same since the last `interval_means` (W&B's per-step log)
        self.interval_kept = 0

    def update(self, terms: dict[str, torch.Tensor], where=None) -> torch.Tensor | None:
        """Add one micro-batch's scalar terms; returns `keep` (all finite, on the device) when `each_step`.

        `where` (any object, e.g. (optimizer step, epoch, batch)) is what `read` reports for a bad one.
        """
        if self.names is None:
            self.names, self.sums, self.interval_sums = list(terms), [0.0] * len(terms), [0.0] * len(terms)
        values = torch.stack([terms[k].detach().double() for k in self.names])[None]  # (1, K)
        self.positions.append(where)
        if not self.each_step:
            self.window.append(values)
            return None
        values = self.accelerator.gather(values)  # (P, K): one small all-gather per micro-step
        self.window.append(values)
        return torch.isfinite(values).all()

    def read(self) -> LossReading:
        """Bring the window to the host (one transfer; without `each_step` one all-gather first), add its good
        micro-batches to the epoch sums, and start a new window."""
        window = torch.stack(self.window) if self.window else None  # (W, P, K), or (W, 1, K) without each_step
        if window is not None and not self.each_step:
            window = self.accelerator.gather(window.transpose(0, 1).contiguous()).transpose(0, 1)  # (W, P, K)
        rows = window.tolist() if window is not None else []  # W x P x K floats
        num_bad, first_bad = 0, None
        for where, values in zip(self.positions, rows):
            if all(math.isfinite(v) for process in values for v in process):
                for k, total in enumerate(map(sum, zip(*values))):  # each term summed over the processes
                    self.sums[k] += total
                    self.interval_sums[k] += total
                self.num_kept += len(values)
                self.interval_kept += len(values)
                continue
            num_bad += 1
            if first_bad is None:
                bad_row = next(row for row in values if not all(map(math.isfinite, row)))
                first_bad = (where, dict(zip(self.names, bad_row)))
        self.window, self.positions = [], []
        means = {name: total / self.num_kept if self.num_kept else math.nan
                 for name, total in zip(self.names or [], self.sums)}
        return LossReading(means, self.num_kept, num_bad, first_bad)

    def interval_means(self) -> dict[str, float]:
        """Each term's mean over the good micro-batches (all processes) read since the previous call, or since the
        epoch began (NaN: none); then a new interval starts. train.py's per-step W&B log (--log-every) reads the
        log first, so the interval ends at the current micro-step."""
        means = {name: total / self.interval_kept if self.interval_kept else math.nan
                 for name, total in zip(self.names or [], self.interval_sums)}
        self.interval_sums, self.interval_kept = [0.0] * len(self.interval_sums), 0
        return means


@dataclass
class StepState:
    """What train.train_micro_step uses, built by `engine.setup.build_training` (tests build their own).

    model and optimizer are the `accelerator.prepare`d ones (the optimizer a fused AdamW, for `mask`);
    loss_fn returns {"loss": the weighted total, <term>: each unweighted term} (losses.build_loss);
    aux_loss_fn is applied to the aux head's logits when the model has one and cfg.aux_weight > 0;
    mask: active when cfg.max_nonfinite > 0; loss_log: the current epoch's (train.py starts a new one per
    epoch), `each_step` as the mask is active; augment / sdt_classes: for `device_batch`.
    """
    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., dict[str, torch.Tensor]]
    aux_loss_fn: Callable[..., dict[str, torch.Tensor]] | None
    mask: GradientMask
    loss_log: EpochLossLog
    augment: BatchAugment | None = None
    sdt_classes: int = 0

    def __post_init__(self):
        if self.mask.active != self.loss_log.each_step:  # the mask needs `keep` at every micro-step
            raise ValueError("StepState: an active GradientMask needs an EpochLossLog with each_step=True, "
                             "an inactive one each_step=False")

    def new_epoch(self) -> EpochLossLog:
        """A fresh loss log for the next epoch (its means start again), guarded as the mask is."""
        self.loss_log = EpochLossLog(self.accelerator, each_step=self.mask.active)
        return self.loss_log
