"""CE, Dice and boundary in one autograd Function with a hand-written backward, to save memory at 1024x2048.

Same values as the term functions `losses.ce`, `losses.dice`, `losses.boundary` (the readable reference, and
what this is tested against). It covers exactly FUSED_TERMS; `SegmentationLoss` computes a recipe's other
terms through autograd beside it, so no term is ever dropped. Why: with plain autograd the composite loss
keeps log_probs and probs for backward and builds ~4 more full-size float32 (N, C, H, W) gradient tensors
in backward (for probs, log_probs, logits and the boundary product). Here the forward keeps only probs, and the backward builds one float32 tensor G in
place plus the gradient in the logits' dtype:

    forward : probs (1 float32 map, kept) + the transient product probs·sdt of the boundary term
    backward: G (1 float32 map, in place) + grad_logits (in the logits' dtype)

Gradient (z = logits, p = softmax(z), M = N·C·H·W, V = Σ v, α/β/γ the effective weights below):
    ∂L/∂p_c(x) = G_c(x) = γ·φ_c(x)/M + β·v(x)·[b_c + a_c·y_c(x)],
                   a_c = −2 / (C·(S_c + 1)),  b_c = (2·I_c + 1) / (C·(S_c + 1)²)        (Dice)
    ∂L/∂z_k(x) = p_k·(G_k − Σ_c p_c·G_c) + α·v·(p_k − y_k) / V                        (softmax; CE)
The Function returns (loss, ce, dice, boundary), each differentiable: the backward receives one upstream
gradient per output and uses α = g_loss·w_ce + g_ce, β = g_loss·w_dice + g_dice, γ = g_loss·w_bnd + g_bnd,
so `loss.backward()` and a per-term `torch.autograd.grad(out["dice"], logits)` both work. First-order only
(no double backward).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from losses.dice import DICE_SMOOTH
from losses.functional import class_sums, log_probs_float
from utils.conventions import IGNORE_INDEX, SDT_CLIP

FUSED_TERMS = ("ce", "dice", "boundary")  # the terms this Function computes


class FusedSegmentationLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, sdt, w_ce, w_dice, w_bnd, use_dice, use_bnd, ignore_index):
        """logits (N, C, H, W), target (N, H, W) int64, sdt (N, C, H, W) int8/float or None; weights are
        floats. Returns four float32 scalars: weighted total, CE, Dice, boundary (0 for unused terms)."""
        valid = target != ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)  # (N, 1, H, W)
        valid_f = valid.unsqueeze(1).to(torch.promote_types(logits.dtype, torch.float32))  # (N, 1, H, W)
        num_valid = valid_f.sum().clamp_min(1)

        probs = log_probs_float(logits)  # (N, C, H, W) float32: log-probs for now
        ce = -(probs.gather(1, safe_target) * valid_f).sum() / num_valid
        probs.exp_()  # in place: from here on it holds softmax probabilities
        dice, intersection, cardinality = ce.new_zeros(()), None, None
        if use_dice:
            # Same reductions as dice_loss, kept (C,) for the backward.
            intersection, predicted, target_count = class_sums(probs, target, ignore_index)
            cardinality = predicted + target_count
            dice = 1.0 - ((2.0 * intersection + DICE_SMOOTH) / (cardinality + DICE_SMOOTH)).mean()  # as dice_loss
        boundary = ce.new_zeros(())
        if use_bnd:
            if sdt.shape != probs.shape:
                raise ValueError(f"sdt has shape {tuple(sdt.shape)} but the logits have {tuple(probs.shape)}")
            boundary = (probs * sdt).sum()  # transient full-size product
            if not sdt.is_floating_point():
                boundary = boundary / SDT_CLIP
            boundary = boundary / probs.numel()
        loss = w_ce * ce + w_dice * dice + w_bnd * boundary

        ctx.save_for_backward(probs, safe_target, valid_f, num_valid, sdt if use_bnd else None,
                              intersection, cardinality)
        ctx.weights = (w_ce, w_dice, w_bnd)
        ctx.use_dice, ctx.use_bnd, ctx.logits_dtype = use_dice, use_bnd, logits.dtype
        return loss, ce, dice, boundary

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, g_ce, g_dice, g_bnd):
        probs, safe_target, valid_f, num_valid, sdt, intersection, cardinality = ctx.saved_tensors
        w_ce, w_dice, w_bnd = ctx.weights
        num_classes = probs.shape[1]
        # Effective weight of each term: through "loss" and through its own output.
        alpha = g_loss * w_ce + g_ce
        beta = g_loss * w_dice + g_dice
        gamma = g_loss * w_bnd + g_bnd

        # G = ∂L/∂p for the Dice and boundary terms, built in place in one float32 map.
        if ctx.use_bnd:
            scale = gamma / (probs.numel() * (1.0 if sdt.is_floating_point() else SDT_CLIP))
            grad = sdt.to(probs.dtype, copy=True).mul_(scale)  # copy: never scale the caller's sdt
        else:
            grad = torch.zeros_like(probs)
        if ctx.use_dice:
            denom = cardinality + DICE_SMOOTH
            a = -2.0 / (num_classes * denom) * beta  # (C,), at the true class only
            b = (2.0 * intersection + DICE_SMOOTH) / (num_classes * denom.square()) * beta  # (C,), every class
            grad.addcmul_(b.view(1, -1, 1, 1), valid_f)
            grad.scatter_add_(1, safe_target, a[safe_target] * valid_f)
        if ctx.use_dice or ctx.use_bnd:
            # Softmax Jacobian: p_k·(G_k − Σ_c p_c G_c), in place: G ← p·G, then subtract p·Σ_c(p·G).
            grad.mul_(probs)
            grad.addcmul_(probs, grad.sum(1, keepdim=True), value=-1.0)
        # CE: α·v·(p − y) / V.
        ce_coef = valid_f * (alpha / num_valid)  # (N, 1, H, W)
        grad.addcmul_(probs, ce_coef)
        grad.scatter_add_(1, safe_target, -ce_coef)
        return grad.to(ctx.logits_dtype), None, None, None, None, None, None, None, None


def fused_loss_terms(logits, target, sdt, weights: dict[str, float], ignore_index: int = IGNORE_INDEX):
    """(weighted sum, {term: value}) for the terms named in `weights`, a non-empty subset of FUSED_TERMS.

    CE is always computed (it is nearly free here); without "ce" in `weights` it weighs 0 and is not returned.
    """
    unknown = set(weights) - set(FUSED_TERMS)
    if unknown or not weights:
        raise ValueError(f"the fused loss computes {FUSED_TERMS}, got {sorted(weights)}")
    use_dice, use_bnd = "dice" in weights, "boundary" in weights
    loss, ce, dice, boundary = FusedSegmentationLoss.apply(
        logits, target, sdt, float(weights.get("ce", 0.0)), float(weights.get("dice", 0.0)),
        float(weights.get("boundary", 0.0)), use_dice, use_bnd, ignore_index,
    )
    values = {"ce": ce, "dice": dice, "boundary": boundary}
    return loss, {name: values[name] for name in FUSED_TERMS if name in weights}
