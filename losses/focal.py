"""Focal loss: Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), over the valid pixels."""
from __future__ import annotations

import torch

from losses.functional import _valid_and_safe_target
from utils.conventions import IGNORE_INDEX


def focal_loss(log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, *,
               gamma: float) -> torch.Tensor:
    """Focal = Σ_x v·(−(1 − p_t)^γ · log p_t) / Σ_x v, p_t = p_target(x) (notation: `losses.functional`).

    γ = 0 is the cross-entropy; larger γ down-weights the pixels already classified well.

    Args:
        log_probs: (N, C, H, W) float log-probabilities (from `log_probs_float`).
        target: (N, H, W) int64 class ids, `ignore_index` at unlabelled pixels.
        gamma: the focusing parameter γ >= 0 (registry default 2, `--focal-gamma`).
    Returns:
        scalar tensor >= 0; 0 (with a gradient path) when no pixel is valid.
    """
    valid, safe_target = _valid_and_safe_target(target, ignore_index)
    log_p_true = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (N, H, W)
    # 1 − p_t as −expm1(log p_t): exact near p_t = 1; the floor keeps (·)^γ differentiable for γ < 1.
    modulator = (-torch.expm1(log_p_true)).clamp_min(torch.finfo(log_p_true.dtype).tiny).pow(gamma)
    valid_f = valid.to(log_p_true.dtype)
    return -(modulator * log_p_true * valid_f).sum() / valid_f.sum().clamp_min(1)
