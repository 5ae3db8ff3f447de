"""Lovász-softmax: Berman et al., "The Lovász-Softmax loss: a tractable surrogate for the optimization of the
intersection-over-union measure in neural networks" (CVPR 2018), over the valid pixels of the whole batch.

Memory: it sorts a (C, N·H·W) table of errors (one float32 and one int64 index per class and pixel: at
2 × 1024 × 2048 and 19 classes, ~1.8 GB plus autograd's copies), the price of the exact Lovász extension.
"""
from __future__ import annotations

import torch

from losses.functional import _valid_and_safe_target
from utils.conventions import IGNORE_INDEX


def lovasz_softmax_loss(probs: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Lovász = mean over the classes c present in the batch's valid target of loss_c, where (notation:
    `losses.functional`), over the valid pixels i of all N images pooled:

        e_i = |y_c(i) − p_c(i)|, sorted in decreasing order, g = y_c sorted the same way, G = Σ_i g_i
        J_k = 1 − (G − Σ_{i≤k} g_i) / (G + Σ_{i≤k} (1 − g_i)),   J_0 = 0
        loss_c = Σ_k e_k·(J_k − J_{k−1})

    The sort order is a constant of the backward (the gradient flows through e only), as in the authors' code.

    Args:
        probs: (N, C, H, W) float softmax probabilities.
        target: (N, H, W) int64 class ids, `ignore_index` at unlabelled pixels.
    Returns:
        scalar tensor in [0, 1]; 0 (with a gradient path) when no pixel is valid.
    """
    num_classes = probs.shape[1]
    valid, safe_target = _valid_and_safe_target(target, ignore_index)
    valid = valid.reshape(1, -1)  # (1, P), P = N·H·W
    classes = torch.arange(num_classes, device=probs.device).unsqueeze(1)
    truth = (safe_target.reshape(1, -1) == classes) & valid  # (C, P) bool: y_c at valid pixels
    per_class_probs = probs.transpose(0, 1).reshape(num_classes, -1)  # (C, P)
    errors = torch.where(valid, (truth.to(probs.dtype) - per_class_probs).abs(), 0.0)  # (C, P)
    # Sort key −1 at ignore pixels: they go after every valid pixel, where their e = 0 adds nothing.
    order = torch.where(valid, errors.detach(), -1.0).argsort(dim=1, descending=True)
    errors_sorted = errors.gather(1, order)
    truth_sorted = truth.gather(1, order).to(probs.dtype)
    total = truth_sorted.sum(1, keepdim=True)  # G per class, (C, 1)
    jaccard = 1.0 - (total - truth_sorted.cumsum(1)) / (total + (1.0 - truth_sorted).cumsum(1))  # denominator >= 1
    jaccard = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)  # J_k − J_{k−1}
    per_class = (errors_sorted * jaccard).sum(1)  # (C,)
    present = (total.squeeze(1) > 0).to(probs.dtype)
    return (per_class * present).sum() / present.sum().clamp_min(1)
