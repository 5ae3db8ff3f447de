"""Loss terms by name, recipes {term: weight} over them, the study's variants A-D, and the callable train.py uses.

    A = CE                 B = CE + λ_d·Dice      C = CE + λ_d·Dice + λ_b·Boundary      D = CE + λ_b·Boundary

One file per term (`ce.py`, `dice.py`, `boundary.py`, `focal.py`, `tversky.py`, `lovasz.py`: formula and shapes
in each docstring), registered in `losses.registry.TERMS`. Example:

    >>> loss_fn = build_loss("C")                      # λ_d = 1.0, λ_b = 0.2
    >>> loss_fn = build_loss("ce=1,lovasz=0.5")        # or any recipe
    >>> out = loss_fn(logits, target, sdt=sdt_int8)    # {"loss", <term>: unweighted value, ...}
    >>> out["loss"].backward()

This package is importable without torch (engine.config and report/ import it): the names below that need
torch (build_loss, the term functions, ...) are imported on first access.
"""
from __future__ import annotations

import importlib

from losses.registry import TERMS, needs_sdt, parse_recipe, recipe_label, recipe_slug
from losses.variants import AUX_LOSS_KINDS, AUX_LOSS_WEIGHT, LAMBDA_BOUNDARY, LAMBDA_DICE, LOSS_WEIGHTS, resolve_loss

# name -> module, for the torch-heavy names: the loss callable and every registered term's function
_LAZY = {"SegmentationLoss": "losses.loss", "build_loss": "losses.loss", "build_aux_loss": "losses.loss",
         **{term.function.split(":")[1]: term.function.split(":")[0] for term in TERMS.values()}}

__all__ = ["AUX_LOSS_KINDS", "AUX_LOSS_WEIGHT", "LAMBDA_BOUNDARY", "LAMBDA_DICE", "LOSS_WEIGHTS", "TERMS",
           "needs_sdt", "parse_recipe", "recipe_label", "recipe_slug", "resolve_loss", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'losses' has no attribute {name!r}")
