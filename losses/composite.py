"""The composite loss of one variant (`SegmentationLoss`) and its builders; see `losses` for the variants."""
from __future__ import annotations

import torch

from losses.functional import boundary_loss, cross_entropy_loss, dice_loss, log_probs_float
from losses.fused import fused_loss_terms
from losses.variants import AUX_LOSS_KINDS, LOSS_WEIGHTS
from utils.fileio import UserError


class SegmentationLoss:
    """Weighted sum of the terms of one variant. Call: (logits, target, sdt=None) -> dict of scalars.

    Attributes:
        variant: "A".."D".
        weights: mutable dict term -> weight, with exactly the variant's terms ("ce", "dice", "boundary").
            Changing a value takes effect on the next call (a λ_b schedule); keys the variant does not
            compute are ignored.
        uses_sdt: whether the call needs `sdt` (variants C and D).
        ignore_index: target value of unlabelled pixels.
        fused: compute all terms in one autograd Function with a hand-written backward
            (`losses.fused`, ~half the full-size float32 tensors of plain autograd); False runs the
            reference functions of `losses.functional` through autograd (same values).
    """

    def __init__(self, variant: str, weights: dict[str, float], ignore_index: int = 255, fused: bool = True):
        self.variant = variant
        self.terms = tuple(weights)  # fixed at construction: what __call__ computes
        self.weights = dict(weights)
        self.uses_sdt = "boundary" in self.terms
        self.ignore_index = ignore_index
        self.fused = fused

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, sdt: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            logits: (N, C, H, W) any float dtype (the loss is computed in float32).
            target: (N, H, W) int64 train ids, `ignore_index` at unlabelled pixels.
            sdt: (N, C, H, W) signed distance map, int8 (φ = sdt / 127) or float φ; needed by C and D.
        Returns:
            {"loss": weighted total, and the unweighted terms the variant uses under "ce" / "dice" /
            "boundary"}; float32 scalar tensors, still attached to the graph.
        """
        if self.uses_sdt and sdt is None:
            raise ValueError(
                f"loss variant {self.variant} uses the boundary term and needs the signed distance map: "
                "pass sdt=batch['sdt'] (enable an SDT source in the data pipeline)"
            )
        weights = {name: self.weights[name] for name in self.terms}
        if self.fused:
            loss, out = fused_loss_terms(logits, target, sdt, weights, self.ignore_index)
            return {**out, "loss": loss}
        log_probs = log_probs_float(logits)  # (N, C, H, W) float32
        out = {"ce": cross_entropy_loss(log_probs, target, self.ignore_index)}
        if "dice" in self.terms or "boundary" in self.terms:
            probs = log_probs.exp()  # (N, C, H, W) float32, shared by Dice and Boundary
            if "dice" in self.terms:
                out["dice"] = dice_loss(probs, target, self.ignore_index)
            if "boundary" in self.terms:
                out["boundary"] = boundary_loss(probs, sdt)
        out["loss"] = sum(weights[name] * out[name] for name in self.terms)
        return out

    def __repr__(self) -> str:
        terms = " + ".join(f"{self.weights[name]:g}·{name}" for name in self.terms)
        return (
            f"SegmentationLoss(variant={self.variant!r}: {terms}, ignore_index={self.ignore_index}, "
            f"fused={self.fused})"
        )


def build_loss(
    variant: str,
    lambda_dice: float = 1.0,
    lambda_boundary: float = 0.2,
    ignore_index: int = 255,
    *,
    fused: bool = True,
) -> SegmentationLoss:
    """The loss of one variant (A, B, C, D) with the given Dice / boundary weights.

    `fused=False` uses plain autograd over `losses.functional` (same values; more memory).

    Raises:
        UserError: unknown variant (the message lists the valid ones).
    """
    if variant not in LOSS_WEIGHTS:
        raise UserError(f"unknown loss variant {variant!r}: choose one of {', '.join(LOSS_WEIGHTS)} (--variant)")
    lambdas = {"ce": 1.0, "dice": float(lambda_dice), "boundary": float(lambda_boundary)}
    weights = {name: lambdas[name] for name in LOSS_WEIGHTS[variant]}
    return SegmentationLoss(variant, weights, ignore_index, fused=fused)


def build_aux_loss(kind: str, main_loss: SegmentationLoss) -> SegmentationLoss:
    """The loss applied to the auxiliary head's logits (added to the total with weight AUX_LOSS_WEIGHT).

    kind="composite" (the study's choice): the main loss object itself, so a λ_b schedule applied to
    `main_loss.weights` also applies to the aux head. kind="ce": plain cross-entropy (variant A).
    """
    if kind == "composite":
        return main_loss
    if kind == "ce":
        return build_loss("A", ignore_index=main_loss.ignore_index, fused=main_loss.fused)
    raise UserError(f"unknown aux loss {kind!r}: choose one of {', '.join(AUX_LOSS_KINDS)} (--aux-loss)")
