"""The body of one training micro-step, kept out of train.py so tests can drive it with their own model.

    terms, _ = forward_loss(model, images, labels, sdt, loss_fn, aux_loss_fn, aux_weight)
    accumulate_and_step(accelerator, model, optimizer, terms["loss"], lr, grad_clip)

`accelerator.accumulate` decides whether this micro-step closes an accumulation window (then gradients
are all-reduced and the optimizer steps) or only adds its gradient (DDP's sync skipped). accelerate divides
the loss by the number of accumulation steps, so accum 4 x batch 1 gives the mean of the 4 per-batch
gradients (equal to one step on the 4 samples for a per-sample-mean loss and no batch-dependent layers).
"""
from __future__ import annotations

import numpy as np
import torch

from data_utils.augment import BatchAugment, normalize
from losses.gradients import term_gradient_stats


def augmentation_seed(run_seed: int, rank: int, micro_step: int) -> int:
    """Seed of BatchAugment for one micro-batch: a pure function of (run seed, rank, micro-step)."""
    return int(np.random.default_rng([run_seed, rank, micro_step]).integers(2**63 - 1))


def device_images(images: torch.Tensor, augment: BatchAugment | None, seed: int) -> torch.Tensor:
    """Loader images on the device -> normalised float32 (N, 3, H, W), photometrically augmented if asked."""
    if augment is not None:
        return augment(images, seed=seed)
    return normalize(images) if images.dtype == torch.uint8 else images


def forward_loss(model, images: torch.Tensor, labels: torch.Tensor, sdt: torch.Tensor | None, loss_fn,
                 aux_loss_fn=None, aux_weight: float = 0.0,
                 grad_stats: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Forward pass and the variant's loss, plus `aux_weight` x the aux head's loss when the model has one.

    Args:
        images: (N, 3, H, W) normalised float; labels: (N, H, W) int64 train ids (255 ignore);
        sdt: (N, C, H, W) int8 signed distance maps, or None for variants without the boundary term.
        grad_stats: also measure each main-head term's gradient norm w.r.t. the logits and UPerNet's fused
            features (`losses.gradients.term_gradient_stats`: one extra backward per term, params untouched).
    Returns:
        (terms, stats). terms: {"loss": main + aux_weight * aux (what is back-propagated), "ce"/"dice"/
        "boundary": the main head's unweighted terms, "aux": the aux head's loss when present}; stats: the
        gradient statistics, {} unless asked for. Scalar tensors.
    """
    out = model(images, return_features=True) if grad_stats else model(images)
    terms = loss_fn(out["logits"], labels, sdt)
    stats = term_gradient_stats(terms, out["logits"], out["features"]) if grad_stats else {}
    if "aux_logits" in out and aux_loss_fn is not None and aux_weight > 0:
        terms["aux"] = aux_loss_fn(out["aux_logits"], labels, sdt)["loss"]
        terms["loss"] = terms["loss"] + aux_weight * terms["aux"]
    return terms, stats


def zero_loss(model) -> torch.Tensor:
    """A loss of exactly 0 that still reaches every parameter.

    Back-propagating it instead of a non-finite loss adds nothing to the accumulated gradients while
    DDP still sees every gradient hook fire, so all processes stay in step.
    """
    return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.zeros(()))


def accumulate_and_step(accelerator, model, optimizer, loss: torch.Tensor, lr: float, grad_clip: float = 0.0) -> None:
    """Backward of one micro-batch; at the end of an accumulation window set the LR, clip, step, zero grads.

    Must run inside `with accelerator.accumulate(model):` (the caller owns the context, so the forward
    pass is inside it too, as DDP's no_sync requires).
    """
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        for group in optimizer.param_groups:
            group["lr"] = lr
        if grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()  # accelerate's wrapper skips it while gradients are still being accumulated
    optimizer.zero_grad(set_to_none=True)
