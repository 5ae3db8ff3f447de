"""The three loss terms as pure tensor functions: cross-entropy, soft Dice, Kervadec boundary loss.

Notation (shapes): logits (N, C, H, W) of any float dtype; target (N, H, W) int64 train ids with
`ignore_index` (255) at unlabelled pixels; v = (target != ignore_index); y = one-hot(target), zero at
ignore pixels; p = softmax(logits) over C; φ (N, C, H, W) the signed distance map / 127.

    CE       = Σ_x v·(−log p_target(x)) / Σ_x v                  (0, not NaN, when no pixel is valid)
    Dice     = 1 − (1/C) Σ_c (2·I_c + 1) / (S_c + 1),
               I_c = Σ_{n,x} p_c·y_c·v,   S_c = Σ_{n,x} (p_c + y_c)·v   (whole batch, all C classes)
    Boundary = (1 / (N·C·H·W)) Σ_{n,c,x} φ_c(x)·p_c(x)

Sign convention of φ (data_utils.sdt): negative inside class c, positive outside, 0 at ignore pixels
and for classes absent from (or covering all of) the image. The boundary term is therefore minimised by
putting probability mass inside each class region, and it is NEGATIVE at the optimum; nothing here
assumes a loss is >= 0.

Everything is computed in float32 whatever the logits dtype (bf16 under autocast; float64 inputs stay
float64 so gradcheck works). `log_probs` is computed once by `log_softmax` and `p = log_probs.exp()`
once; the terms are then derived from these two tensors with gather / scatter_add / bmm, so no one-hot
tensor and no (N, C, H, W) mask is ever built. At 1024x2048 one float32 19-channel map is 160 MB per
image, so this matters. Full-size float32 (N, C, H, W) tensors materialised in the forward pass:
  - log_probs (kept for backward)                         — always
  - probs = exp(log_probs) (kept for backward)            — only when Dice or Boundary is used
  - the product probs·sdt inside `boundary_loss`          — transient, freed before the next term
Autograd's backward adds the gradient tensors of probs, log_probs and logits on top. There are no host
syncs (no `.item()`, no boolean indexing), so the functions are also torch.compile friendly.
These functions are the readable reference; training uses `losses.fused` (same values, one hand-written
backward that keeps only probs), which the tests check against them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SDT_SCALE = 127.0  # int8 signed distance maps are stored clipped to [-127, 127]; φ = sdt_int8 / 127


def log_probs_float(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the class dim (1) in float32 (float64 stays float64); (N, C, H, W) -> same shape.

    Passing `dtype=` lets CUDA read bf16/fp16 logits directly instead of materialising a float32 copy.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.log_softmax(logits, dim=1, dtype=dtype)


def _valid_and_safe_target(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) target -> (valid bool mask, target with ignore pixels replaced by class 0 for gather)."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _pixel_weighted_class_sum(probs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_{n,h,w} probs[n, c, h, w] · weight[n, h, w] -> (C,), as a batched matmul (no full-size temporary).

    Works on views for both NCHW-contiguous and channels_last tensors (logits of a channels_last model).
    """
    n, c = probs.shape[:2]
    weight = weight.to(probs.dtype)
    with torch.autocast(probs.device.type, enabled=False):  # autocast would run the bmm in bf16
        if probs.is_contiguous(memory_format=torch.channels_last) and not probs.is_contiguous():
            nhwc = probs.permute(0, 2, 3, 1).reshape(n, -1, c)  # (N, HW, C), a view
            return torch.bmm(weight.reshape(n, 1, -1), nhwc).sum(0).view(c)
        nchw = probs.reshape(n, c, -1)  # (N, C, HW), a view when contiguous
        return torch.bmm(nchw, weight.reshape(n, -1, 1)).sum(0).view(c)


def cross_entropy_loss(log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean of −log p_target over valid pixels; equals F.cross_entropy(logits, target, ignore_index=...).

    Args:
        log_probs: (N, C, H, W) float log-probabilities (from `log_probs_float`).
        target: (N, H, W) int64 class ids, `ignore_index` at unlabelled pixels.
    Returns:
        scalar tensor. 0 (with a gradient path) when every pixel is ignored, where F.cross_entropy gives NaN.
    """
    nll_sum = F.nll_loss(log_probs, target, ignore_index=ignore_index, reduction="sum")
    num_valid = (target != ignore_index).sum()
    return nll_sum / num_valid.clamp_min(1).to(nll_sum.dtype)


def dice_loss(
    probs: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, smooth: float = 1.0
) -> torch.Tensor:
    """Class-mean smoothed soft Dice over the whole batch: 1 − (1/C) Σ_c (2·I_c + 1) / (S_c + 1).

    Classes absent from the batch are kept in the mean: their term is 1 / (Σ p_c·v + 1), so predicting
    them anywhere is penalised and predicting them nowhere gives a perfect 1.

    Args:
        probs: (N, C, H, W) float softmax probabilities.
        target: (N, H, W) int64 class ids, `ignore_index` at unlabelled pixels.
    Returns:
        scalar tensor in [0, 1).
    """
    num_classes = probs.shape[1]
    valid, safe_target = _valid_and_safe_target(target, ignore_index)
    valid_f = valid.to(probs.dtype)
    # I_c: the probability of the true class at each valid pixel, summed per true class.
    prob_true = probs.gather(1, safe_target.unsqueeze(1)).squeeze(1) * valid_f  # (N, H, W)
    zeros = probs.new_zeros(num_classes)
    intersection = zeros.scatter_add(0, safe_target.flatten(), prob_true.flatten())  # (C,)
    # S_c = Σ p_c·v + Σ y_c·v: predicted mass on valid pixels plus the valid pixel count of class c.
    target_count = zeros.scatter_add(0, safe_target.flatten(), valid_f.flatten())  # (C,)
    cardinality = _pixel_weighted_class_sum(probs, valid_f) + target_count  # (C,)
    dice_per_class = (2.0 * intersection + smooth) / (cardinality + smooth)
    return 1.0 - dice_per_class.mean()


def boundary_loss(probs: torch.Tensor, sdt: torch.Tensor) -> torch.Tensor:
    """Kervadec boundary loss (1 / (N·C·H·W)) Σ φ_c(x)·p_c(x), with φ negative inside the class region.

    Args:
        probs: (N, C, H, W) float softmax probabilities.
        sdt: (N, C, H, W) signed distance map, either int8 (φ = sdt / 127, the division is applied once to
            the sum, not to a full-size tensor) or float (already φ).
    Returns:
        scalar tensor in [−1, 1]; negative at the optimum.
    """
    if sdt.shape != probs.shape:
        raise ValueError(f"sdt has shape {tuple(sdt.shape)} but the logits have {tuple(probs.shape)}")
    total = (probs * sdt).sum()  # int8 promotes to probs' float dtype inside the multiply
    if not sdt.is_floating_point():
        total = total / SDT_SCALE
    return total / probs.numel()
