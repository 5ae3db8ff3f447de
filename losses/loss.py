"""The callable train.py uses: a weighted sum over the terms of one recipe (`losses.registry`).

    >>> loss_fn = build_loss("C")                          # the variant: λ_d = 1.0, λ_b = 0.2
    >>> loss_fn = build_loss("ce=1,lovasz=0.5")            # any recipe of registered terms (or a dict)
    >>> out = loss_fn(logits, target, sdt=sdt_int8)        # {"loss", "ce", "lovasz"}: total + unweighted terms
    >>> out["loss"].backward()
    >>> loss_fn.weights["lovasz"] = 0.1                    # takes effect on the next call (λ_b schedules)
"""
from __future__ import annotations

import torch

from losses.functional import log_probs_float
from losses.fused import FUSED_TERMS, fused_loss_terms
from losses.registry import TERMS, needs_sdt, recipe_label, term_params
from losses.variants import AUX_LOSS_KINDS, resolve_loss
from utils.conventions import IGNORE_INDEX
from utils.fileio import UserError


class SegmentationLoss:
    """Weighted sum of the terms of one recipe. Call: (logits, target, sdt=None) -> dict of scalars.

    Attributes:
        name: the recipe's label, "C" for a variant, "ce+0.5·lovasz" for a recipe.
        terms: the recipe's terms (fixed at construction: what __call__ computes), in TERMS order.
        weights: mutable dict term -> weight with exactly those terms. Changing a value takes effect on the
            next call (a λ_b schedule); keys the recipe does not compute are ignored.
        params: {term: {parameter: value}} of the terms that have parameters (focal's γ, ...).
        uses_sdt: whether the call needs `sdt` (a term of the recipe takes it).
        ignore_index: target value of unlabelled pixels.
        fused: compute the terms of FUSED_TERMS (ce, dice, boundary) in one autograd Function with a
            hand-written backward (`losses.fused`, ~half the full-size float32 tensors of plain autograd),
            and the recipe's other terms through autograd beside it; False runs every term's reference
            function through autograd (same values).
    """

    def __init__(self, name: str, weights: dict[str, float], ignore_index: int = IGNORE_INDEX, fused: bool = True,
                 params: dict[str, dict[str, float]] | None = None):
        self.name = name
        self.terms = tuple(weights)
        self.weights = dict(weights)
        self.params = params or {}
        self.uses_sdt = needs_sdt(weights)
        self.ignore_index = ignore_index
        self.fused = fused
        self._functions = {term: TERMS[term].load() for term in self.terms}

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, sdt: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            logits: (N, C, H, W) any float dtype (the loss is computed in float32).
            target: (N, H, W) int64 train ids, `ignore_index` at unlabelled pixels.
            sdt: (N, C, H, W) signed distance map, int8 (φ = sdt / SDT_CLIP, 127) or float φ; needed when `uses_sdt`.
        Returns:
            {"loss": weighted total, and each term's unweighted value under its name}; float32 scalar
            tensors, still attached to the graph.
        """
        if self.uses_sdt and sdt is None:
            raise ValueError(
                f"loss {self.name} has a term that needs the signed distance map: "
                "pass sdt=batch['sdt'] (enable an SDT source in the data pipeline)"
            )
        weights = {name: self.weights[name] for name in self.terms}
        out, loss = {}, None
        rest = self.terms
        if self.fused:
            fused_weights = {name: w for name, w in weights.items() if name in FUSED_TERMS}
            if fused_weights:
                loss, out = fused_loss_terms(logits, target, sdt, fused_weights, self.ignore_index)
            rest = tuple(name for name in self.terms if name not in FUSED_TERMS)
        if rest:
            log_probs = log_probs_float(logits)  # (N, C, H, W) float32
            inputs = {"log_probs": log_probs, "target": target, "sdt": sdt, "ignore_index": self.ignore_index}
            if any("probs" in TERMS[name].inputs for name in rest):
                inputs["probs"] = log_probs.exp()  # (N, C, H, W) float32, shared by the terms that take it
            for name in rest:
                args = (inputs[key] for key in TERMS[name].inputs)
                out[name] = self._functions[name](*args, **self.params.get(name, {}))
            plain = sum(weights[name] * out[name] for name in rest)
            loss = plain if loss is None else loss + plain
        return {**{name: out[name] for name in self.terms}, "loss": loss}

    def __repr__(self) -> str:
        terms = " + ".join(f"{self.weights[name]:g}·{name}" for name in self.terms)
        params = "".join(f", {term}.{k}={v:g}" for term, values in self.params.items() for k, v in values.items())
        return (f"SegmentationLoss({self.name}: {terms}{params}, ignore_index={self.ignore_index}, "
                f"fused={self.fused})")


def build_loss(
    loss: str | dict = "C",
    lambda_dice: float | None = None,
    lambda_boundary: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    *,
    fused: bool = True,
    params: dict[str, dict[str, float]] | None = None,
) -> SegmentationLoss:
    """The loss of a variant ("A".."D", λ_d / λ_b replaced where given), a recipe string ("ce=1,focal=0.5")
    or a recipe dict ({"ce": 1.0, "focal": 0.5}).

    `params` sets term parameters ({"focal": {"gamma": 1.0}}; the registry's defaults otherwise).
    `fused=False` uses plain autograd over every term's reference function (same values; more memory).

    Raises:
        UserError: unknown variant or term, bad weight or parameter (the message lists the valid ones).
    """
    name, weights = resolve_loss(loss, lambda_dice, lambda_boundary)
    return SegmentationLoss(name, weights, ignore_index, fused=fused, params=term_params(params, weights))


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



