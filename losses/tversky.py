"""Tversky loss: Salehi et al., "Tversky loss function for image segmentation using 3D FCNs" (MLMI 2017)."""
from __future__ import annotations

import torch

from losses.functional import class_sums
from utils.conventions import IGNORE_INDEX


def tversky_loss(probs: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, *, alpha: float,
                 beta: float) -> torch.Tensor:
    """Tversky = 1 − (1/C) Σ_c (TP_c + 1) / (TP_c + α·FP_c + β·FN_c + 1), over the whole batch and all C classes

    (the Dice convention of this project), TP_c = Σ p_c·y_c·v, FP_c = Σ p_c·(1 − y_c)·v, FN_c = Σ (1 − p_c)·y_c·v
    (notation: `losses.functional`). α weighs false positives, β false negatives; β > α favours recall.

    Args:
        probs: (N, C, H, W) float softmax probabilities.
        target: (N, H, W) int64 class ids, `ignore_index` at unlabelled pixels.
        alpha, beta: >= 0 (registry defaults 0.3 and 0.7, MMSegmentation's; `--tversky-alpha/--tversky-beta`).
    Returns:
        scalar tensor in [0, 1); 0 when no pixel is valid and nothing is predicted.
    """
    true_positive, predicted, target_count = class_sums(probs, target, ignore_index)  # (C,) each
    false_positive, false_negative = predicted - true_positive, target_count - true_positive
    score = (true_positive + 1.0) / (true_positive + alpha * false_positive + beta * false_negative + 1.0)
    return 1.0 - score.mean()
