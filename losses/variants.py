"""The study's four loss variants as named recipes, and what a loss specification resolves to; no torch here.

    A = CE                 B = CE + λ_d·Dice      C = CE + λ_d·Dice + λ_b·Boundary      D = CE + λ_b·Boundary

A specification is a variant name ("C"), a recipe string ("ce=1,focal=0.5", `losses.registry.parse_recipe`)
or a recipe dict; `resolve_loss` turns any of them into (label, {term: weight}).
"""
from __future__ import annotations

from losses.registry import TERMS, check_recipe, parse_recipe, recipe_label
from utils.fileio import UserError

LAMBDA_DICE = 1.0  # λ_d of the study (B, C)
LAMBDA_BOUNDARY = 0.2  # λ_b of the study (C, D); the one place this default is written

# The paper's weights per variant (CE weight 1). The keys of each entry are the terms the variant computes;
# resolve_loss's lambda_* arguments replace the dice / boundary values.
LOSS_WEIGHTS = {
    "A": {"ce": 1.0},
    "B": {"ce": 1.0, "dice": LAMBDA_DICE},
    "C": {"ce": 1.0, "dice": LAMBDA_DICE, "boundary": LAMBDA_BOUNDARY},
    "D": {"ce": 1.0, "boundary": LAMBDA_BOUNDARY},
}

# The auxiliary FCN head's loss is added with this weight (MMSegmentation's UPerNet configs, and the
# original study's training code).
AUX_LOSS_WEIGHT = 0.4
AUX_LOSS_KINDS = ("composite", "ce")


def variant_summary() -> str:
    """"A = ce, B = ce+dice, C = ce+dice+0.2·boundary, D = ce+0.2·boundary" (for --help)."""
    return ", ".join(f"{name} = {recipe_label(weights)}" for name, weights in LOSS_WEIGHTS.items())


def resolve_loss(spec: str | dict, lambda_dice: float | None = None,
                 lambda_boundary: float | None = None) -> tuple[str, dict[str, float]]:
    """(label, recipe) of a loss specification.

    A variant name gives its LOSS_WEIGHTS entry with λ_d / λ_b replaced where given, labelled by the name ("C");
    a recipe string or dict is validated and labelled by its canonical text ("ce+0.5·lovasz"); the lambdas
    belong to the variants and are refused with a recipe.

    Raises:
        UserError: unknown variant or term, bad weight, empty recipe (one line listing what is valid).
    """
    if isinstance(spec, str) and spec in LOSS_WEIGHTS:
        lambdas = {"dice": lambda_dice, "boundary": lambda_boundary}
        weights = {name: float(w if lambdas.get(name) is None else lambdas[name])
                   for name, w in LOSS_WEIGHTS[spec].items()}
        return spec, check_recipe(weights, f"variant {spec}")
    if lambda_dice is not None or lambda_boundary is not None:
        raise UserError("lambda_dice / lambda_boundary apply to the variants A-D; a recipe carries its own weights")
    if isinstance(spec, dict):
        weights = check_recipe(spec, "loss recipe")
    elif isinstance(spec, str) and ("=" in spec or "," in spec or spec in TERMS):
        weights = parse_recipe(spec)
    else:
        raise UserError(f"unknown loss {spec!r}: use a variant ({', '.join(LOSS_WEIGHTS)}) or a recipe of the "
                        f"terms {', '.join(TERMS)}, e.g. 'ce=1,lovasz=0.5'")
    return recipe_label(weights), weights
