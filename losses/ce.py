"""Cross-entropy over the valid pixels (notation: `losses.functional`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.conventions import IGNORE_INDEX


def cross_entropy_loss(log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """CE = Σ_x v·(−log p_target(x)) / Σ_x v; equals F.cross_entropy(logits, target, ignore_index=...).

    Args:
        log_probs: (N, C, H, W) float log-probabilities (from `log_probs_float`).
        target: (N, H, W) int64 class ids, `ignore_index` at unlabelled pixels.
    Returns:
        scalar tensor. 0 (with a gradient path) when every pixel is ignored, where F.cross_entropy gives NaN.
    """
    nll_sum = F.nll_loss(log_probs, target, ignore_index=ignore_index, reduction="sum")
    num_valid = (target != ignore_index).sum()
    return nll_sum / num_valid.clamp_min(1).to(nll_sum.dtype)
