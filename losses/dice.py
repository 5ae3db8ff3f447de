"""Soft Dice over the whole batch (notation: `losses.functional`)."""
from __future__ import annotations

import torch

from losses.functional import class_sums
from utils.conventions import IGNORE_INDEX

DICE_SMOOTH = 1.0  # the 1 added to numerator and denominator of every class's Dice (also losses.fused)


def dice_loss(probs: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Class-mean smoothed soft Dice over the whole batch: 1 − (1/C) Σ_c (2·I_c + 1) / (S_c + 1),

    with I_c = Σ_{n,x} p_c·y_c·v and S_c = Σ_{n,x} (p_c + y_c)·v (all C classes); the smoothing 1 is
    DICE_SMOOTH. Classes absent from the batch are kept in the mean: their term is 1 / (Σ p_c·v + 1), so
    predicting them anywhere is penalised and predicting them nowhere gives a perfect 1.

    Args:
        probs: (N, C, H, W) float softmax probabilities.
        target: (N, H, W) int64 class ids, `ignore_index` at unlabelled pixels.
    Returns:
        scalar tensor in [0, 1).
    """
    intersection, predicted, target_count = class_sums(probs, target, ignore_index)  # (C,) each
    dice_per_class = (2.0 * intersection + DICE_SMOOTH) / (predicted + target_count + DICE_SMOOTH)
    return 1.0 - dice_per_class.mean()
