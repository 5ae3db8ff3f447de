"""Kervadec et al.'s boundary loss, "Boundary loss for highly unbalanced segmentation" (MIDL 2019).

Sign convention of φ (data_utils.sdt): negative inside class c, positive outside, 0 at ignore pixels and for
classes absent from (or covering all of) the image. The term is therefore minimised by putting probability
mass inside each class region, and it is NEGATIVE at the optimum; nothing here assumes a loss is >= 0.
"""
from __future__ import annotations

import torch

from utils.conventions import SDT_CLIP


def boundary_loss(probs: torch.Tensor, sdt: torch.Tensor) -> torch.Tensor:
    """Boundary = (1 / (N·C·H·W)) Σ_{n,c,x} φ_c(x)·p_c(x), with φ negative inside the class region.

    Args:
        probs: (N, C, H, W) float softmax probabilities.
        sdt: (N, C, H, W) signed distance map, either int8 (φ = sdt / SDT_CLIP, the division is applied once to
            the sum, not to a full-size tensor) or float (already φ).
    Returns:
        scalar tensor in [−1, 1]; negative at the optimum.
    """
    if sdt.shape != probs.shape:
        raise ValueError(f"sdt has shape {tuple(sdt.shape)} but the logits have {tuple(probs.shape)}")
    total = (probs * sdt).sum()  # int8 promotes to probs' float dtype inside the multiply
    if not sdt.is_floating_point():
        total = total / SDT_CLIP
    return total / probs.numel()
