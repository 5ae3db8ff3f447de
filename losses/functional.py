"""What every loss term shares: the notation, float32 log-probabilities, and the per-class sums.

Notation (shapes), used by the docstrings of every term file (`losses/ce.py`, `dice.py`, `boundary.py`,
`focal.py`, `tversky.py`, `lovasz.py`): logits (N, C, H, W) of any float dtype; target (N, H, W) int64 train
ids with `ignore_index` (`utils.conventions.IGNORE_INDEX`, 255) at unlabelled pixels; v = (target !=
ignore_index); y_c = one-hot(target), zero at ignore pixels; p = softmax(logits) over C; φ (N, C, H, W) the
signed distance map / `utils.conventions.SDT_CLIP` (int8 maps store it times 127); sums over x run over all
pixels of all N images.

Everything is computed in float32 whatever the logits dtype (bf16 under autocast; float64 inputs stay
float64 so gradcheck works). `log_probs` is computed once by `log_softmax` and `p = log_probs.exp()` once;
the terms are then derived from these two tensors with gather / scatter_add / bmm, so CE, Dice, boundary,
focal and Tversky build no one-hot tensor and no (N, C, H, W) mask (Lovász sorts a (C, N·H·W) error table,
see its file). At 1024x2048 one float32 19-channel map is 160 MB per image, so this matters. Full-size
float32 (N, C, H, W) tensors materialised in the forward pass of the plain path:
  - log_probs (kept for backward)                         — always
  - probs = exp(log_probs) (kept for backward)            — only when a term takes `probs`
  - the product probs·sdt inside `boundary_loss`          — transient, freed before the next term
Autograd's backward adds the gradient tensors of probs, log_probs and logits on top. There are no host
syncs (no `.item()`, no boolean indexing), so the functions are also torch.compile friendly.
The term functions are the readable reference; training uses `losses.fused` for ce, dice and boundary
(same values, one hand-written backward that keeps only probs), which the tests check against them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.conventions import IGNORE_INDEX


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


def class_sums(probs: torch.Tensor, target: torch.Tensor,
               ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch-level soft counts behind Dice and Tversky, each (C,), over valid pixels of all N images:

        TP_c = Σ p_c·y_c·v      (the probability of the true class, summed per true class)
        P_c  = Σ p_c·v          (predicted mass;  FP_c = P_c − TP_c)
        G_c  = Σ y_c·v          (valid pixels of class c;  FN_c = G_c − TP_c)

    Args:
        probs: (N, C, H, W) float softmax probabilities; target: (N, H, W) int64, `ignore_index` unlabelled.
    Returns:
        (TP, P, G), float tensors of shape (C,) in probs' dtype.
    """
    num_classes = probs.shape[1]
    valid, safe_target = _valid_and_safe_target(target, ignore_index)
    valid_f = valid.to(probs.dtype)
    prob_true = probs.gather(1, safe_target.unsqueeze(1)).squeeze(1) * valid_f  # (N, H, W)
    zeros = probs.new_zeros(num_classes)
    true_positive = zeros.scatter_add(0, safe_target.flatten(), prob_true.flatten())
    target_count = zeros.scatter_add(0, safe_target.flatten(), valid_f.flatten())
    return true_positive, _pixel_weighted_class_sum(probs, valid_f), target_count
