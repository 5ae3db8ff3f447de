"""One training micro-step, kept out of train.py so bench/bench_train.py times the same step and tests can
drive its parts with their own model. train.py's loop, per micro-batch:

    images, labels, sdt = device_batch(batch, augment, seed, sdt_classes, channels_last)
    terms, _ = train_micro_step(accelerator, model, optimizer, images, labels, sdt, loss_fn=..., ...)
    ...
    reading = loss_log.read()  # every few micro-steps and at the epoch's end: the one host sync

where `train_micro_step` is, inside `accelerator.accumulate(model)`:

    mask.save_buffers()  # BatchNorm statistics, copied on the device
    terms, _ = forward_loss(model, images, labels, sdt, loss_fn, aux_loss_fn, aux_weight)
    mask.set_keep(loss_log.update(terms, where=(step, epoch, batch_index)))  # on the device: no host sync
    accumulate_and_step(accelerator, model, optimizer, terms["loss"], lr, grad_clip, mask)

`accelerator.accumulate` decides whether this micro-step closes an accumulation window (then gradients
are all-reduced and the optimizer steps) or only adds its gradient (DDP's sync skipped). accelerate divides
the loss by the number of accumulation steps, so accum 4 x batch 1 gives the mean of the 4 per-batch
gradients (equal to one step on the 4 samples for a per-sample-mean loss and no batch-dependent layers).

No host sync in the step: whether a micro-batch's loss is finite is decided on the device (`EpochLossLog`),
the micro-batch is undone on the device (`GradientMask`: its gradient, its BatchNorm updates, and the
optimizer update of a window that kept nothing), and the host reads the loss sums and the non-finite count
only when train.py asks (`EpochLossLog.read`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from data_utils.augment import BatchAugment, normalize
from losses.gradients import term_gradient_stats


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
    """A prepared loader's batch (on the device) -> (images, labels, sdt) for `train_micro_step`.

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


def forward_loss(model, images: torch.Tensor, labels: torch.Tensor, sdt: torch.Tensor | None, loss_fn,
                 aux_loss_fn=None, aux_weight: float = 0.0,
                 grad_stats: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Forward pass and the recipe's loss, plus `aux_weight` x the aux head's loss when the model has one.

    Args:
        images: (N, 3, H, W) normalised float; labels: (N, H, W) int64 train ids (255 ignore; the loader
            ships uint8, so call `.long()` on the device batch);
        sdt: (N, C, H, W) int8 signed distance maps, or None for a loss that does not need them.
        grad_stats: also measure each main-head term's gradient norm w.r.t. the logits and UPerNet's fused
            features (`losses.gradients.term_gradient_stats`: one extra backward per term, params untouched).
    Returns:
        (terms, stats). terms: {"loss": main + aux_weight * aux (what is back-propagated), <term>: each of the
        main head's unweighted terms, "aux": the aux head's loss when present}; stats: the
        gradient statistics, {} unless asked for. Scalar tensors.
    """
    out = model(images, return_features=True) if grad_stats else model(images)
    terms = loss_fn(out["logits"], labels, sdt)
    stats = term_gradient_stats(terms, out["logits"], out["features"]) if grad_stats else {}
    if "aux_logits" in out and aux_loss_fn is not None and aux_weight > 0:
        terms["aux"] = aux_loss_fn(out["aux_logits"], labels, sdt)["loss"]
        terms["loss"] = terms["loss"] + aux_weight * terms["aux"]
    return terms, stats


class GradientMask:
    """Undoes a bad micro-batch on the device, without a host sync: afterwards the parameters, the buffers
    and the optimizer state are what they would be had the micro-batch not been in the data.

    - Gradient: a hook on every trainable parameter replaces the gradient coming from the backward pass by
      zeros while `keep` (a 0-dim bool tensor on the device, set before each backward) is False. The hook
      runs before the gradient is added to `.grad` and before DDP all-reduces it, so a skipped micro-batch
      adds exactly nothing to the accumulated gradients, on every process alike (each gets the same `keep`).
      Scaling the loss by 0 instead would not do: 0 x nan = nan. `keep = None` leaves gradients untouched.
    - Buffers: the forward of a bad micro-batch has already written its statistics into the BatchNorm
      running mean/var (nan or inf from a non-finite input) and counted it. `save_buffers()` before the
      forward copies every buffer on the device; `restore_buffers()` after the backward (autograd checks
      that BatchNorm's saved buffers are unchanged until then) puts them back where `keep` is False
      (`torch.where`, so the copy back costs no sync either; `accumulate_and_step` calls it).
    - Optimizer: a window of accumulated micro-batches none of which was kept must not step at all (AdamW
      would still decay its moments, count a step and apply weight decay on a zero gradient). At the end of
      the window `accumulate_and_step` calls `skip_step_unless_kept(optimizer)`, which sets `found_inf`, the
      flag with which fused Adam/AdamW skip an update on the device (as under torch's GradScaler); so the
      optimizer must be created with `fused=True`. A window with some kept micro-batches steps on their gradients
      (summed, divided by the window length as accelerate scales). Exception: under `--mixed-precision fp16`
      torch's GradScaler sets `found_inf` itself, so a window with no kept micro-batch steps on a zero gradient.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.keep: torch.Tensor | None = None
        self.handles = [p.register_hook(self._apply) for p in model.parameters() if p.requires_grad]
        self._saved: list[torch.Tensor] = []
        self._window_kept: torch.Tensor | None = None  # whether any micro-batch of the open window was kept

    def _apply(self, grad: torch.Tensor) -> torch.Tensor:
        # where, not multiply: it selects 0 even where grad is nan or inf
        return grad if self.keep is None else torch.where(self.keep, grad, 0.0)

    def save_buffers(self) -> None:
        """Copy the model's buffers (BatchNorm running statistics and counts) on the device; call before the forward.

        The buffers are looked up each time: `accelerator.prepare` moves them to the device as new tensors.
        """
        self._saved = [b.detach().clone() for b in self.model.buffers()]

    def set_keep(self, keep: torch.Tensor) -> None:
        """Mark this micro-batch kept or not (0-dim bool on the device), after its forward, before its backward."""
        self.keep = keep
        self._window_kept = keep if self._window_kept is None else self._window_kept | keep

    def restore_buffers(self) -> None:
        """After the backward: where `keep` is False, put back the buffers `save_buffers` copied."""
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), self._saved):
                buffer.copy_(torch.where(self.keep, buffer, saved))
        self._saved = []

    def skip_step_unless_kept(self, optimizer) -> None:
        """At the end of an accumulation window: make the optimizer's coming step a no-op, on the device,
        if none of the window's micro-batches was kept (fused Adam/AdamW read `found_inf`: 1.0 skips the
        update and the step count); the next `set_keep` opens a new window. `optimizer` may be accelerate's
        wrapper."""
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
    """One epoch's loss terms, accumulated on the device and read on the host only in `read()`.

    `update(terms)` gathers every process's terms, (P, K) for the K names, so all processes agree on
    whether the micro-batch is good: it is bad when any term of any process is nan or inf. Good micro-batches
    are added to the epoch sums; of the bad ones the log counts them and keeps the first one's values
    and position, all with device ops (`torch.where`), so the step never waits for the device.
    """

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.names: list[str] | None = None  # the terms' names, set by the first update

    def _start(self, names: list[str], num_processes: int, device: torch.device) -> None:
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        self.names = names
        self.sums, self.num_kept = zeros(len(names)), zeros()  # finite micro-batches of the epoch
        self.num_bad, self.first_index = zeros(), zeros()  # since the last read
        self.first_values = zeros(num_processes, len(names))
        self.positions: list = []  # host: `where` of each update since the last read

    def update(self, terms: dict[str, torch.Tensor], where=None) -> torch.Tensor:
        """Add one micro-batch's scalar terms; returns `keep`, a 0-dim bool on the device (all finite).

        `where` (any object, e.g. (optimizer step, epoch, batch)) is what `read` reports for a bad one.
        """
        names = list(terms)
        values = torch.stack([terms[k].detach().double() for k in names])[None]  # (1, K)
        values = self.accelerator.gather(values)  # (P, K): one small all-gather per micro-step
        if self.names is None:
            self._start(names, values.shape[0], values.device)
        keep = torch.isfinite(values).all()
        self.sums += torch.where(keep, values.sum(0), 0.0)  # where, not multiply: 0 x nan = nan
        self.num_kept += keep * values.shape[0]
        first = (self.num_bad == 0) & ~keep
        self.first_index = torch.where(first, len(self.positions), self.first_index)
        self.first_values = torch.where(first, values, self.first_values)
        self.num_bad += ~keep
        self.positions.append(where)
        return keep

    def read(self) -> LossReading:
        """Copy the log to the host (one transfer, the one host sync) and start a new window of bad ones."""
        if self.names is None:
            return LossReading({}, 0, 0, None)
        packed = torch.cat([self.sums, self.num_kept[None], self.num_bad[None], self.first_index[None],
                            self.first_values.flatten()]).tolist()
        k = len(self.names)
        sums, (num_kept, num_bad, first_index), rows = packed[:k], packed[k:k + 3], packed[k + 3:]
        means = {name: total / num_kept if num_kept else math.nan for name, total in zip(self.names, sums)}
        first_bad = None
        if num_bad:
            rows = [rows[i:i + k] for i in range(0, len(rows), k)]
            bad_row = next(row for row in rows if not all(map(math.isfinite, row)))
            first_bad = (self.positions[int(first_index)], dict(zip(self.names, bad_row)))
        self.num_bad.zero_()
        self.positions = []
        return LossReading(means, int(num_kept), int(num_bad), first_bad)


def accumulate_and_step(accelerator, model, optimizer, loss: torch.Tensor, lr: float, grad_clip: float = 0.0,
                        mask: GradientMask | None = None) -> None:
    """Backward of one micro-batch; at the end of an accumulation window set the LR, clip, step, zero grads.

    Must run inside `with accelerator.accumulate(model):` (the caller owns the context, so the forward
    pass is inside it too, as DDP's no_sync requires). With `mask`, a micro-batch that is not kept gets its
    buffers back, and a window none of whose micro-batches was kept does not step (`GradientMask`; needs
    a fused optimizer).
    """
    accelerator.backward(loss)
    if mask is not None:
        mask.restore_buffers()
    if accelerator.sync_gradients:
        for group in optimizer.param_groups:
            group["lr"] = lr
        if grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        if mask is not None:
            mask.skip_step_unless_kept(optimizer)
    optimizer.step()  # accelerate's wrapper skips it while gradients are still being accumulated
    optimizer.zero_grad(set_to_none=True)


def train_micro_step(accelerator, model, optimizer, images: torch.Tensor, labels: torch.Tensor,
                     sdt: torch.Tensor | None, *, loss_fn, aux_loss_fn, cfg, lr: float, mask: GradientMask,
                     loss_log: EpochLossLog, where=None,
                     grad_stats: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """train.py's micro-step, inside `accelerator.accumulate(model)`: forward and loss (`forward_loss`), the
    terms into `loss_log` and its finite flag into `mask` (on the device), then `accumulate_and_step`.

    Args: the tensors from `device_batch`; cfg: the TrainConfig (aux_weight, grad_clip); lr: this optimizer
        step's LR; where: what `loss_log` reports for a bad micro-batch; grad_stats: measure the terms'
        gradient statistics if this micro-batch closes an accumulation window.
    Returns `forward_loss`'s (terms, stats). Afterwards `accelerator.sync_gradients` tells whether the
    optimizer stepped.
    """
    with accelerator.accumulate(model):
        mask.save_buffers()  # BatchNorm statistics, put back if this micro-batch is bad
        terms, stats = forward_loss(model, images, labels, sdt, loss_fn, aux_loss_fn, cfg.aux_weight,
                                    grad_stats=grad_stats and accelerator.sync_gradients)
        # On the device: all processes' terms gathered (they must agree on skipping a bad batch), the epoch
        # sums, and keep = all finite; if False the micro-batch is undone.
        mask.set_keep(loss_log.update(terms, where=where))
        accumulate_and_step(accelerator, model, optimizer, terms["loss"], lr, cfg.grad_clip, mask)
    return terms, stats
