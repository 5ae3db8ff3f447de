"""The loss terms by name, and recipes {term: weight} over them; no torch here (config and reports import it).

Each term is a pure tensor function in its own file of `losses/` (formula and shapes in its docstring). It is
registered by ONE line of `TERMS` below: its name, where the function is ("module:function", imported on first
use, so this module stays torch-free), its kind ("region" or "boundary": what the λ_b schedules of
`losses.schedule` move weight between), the standard inputs it takes (in order, from INPUTS; "sdt" among them
means the term needs the signed distance maps) and its keyword parameters with their defaults (train.py sets
each through the TrainConfig field `<term>_<param>`, e.g. `--focal-gamma`).

A recipe is a dict {term: weight}, written on the command line as "ce=1,lovasz=0.5" (a bare name weighs 1):

    >>> parse_recipe("lovasz=0.5,ce")
    {'ce': 1.0, 'lovasz': 0.5}
    >>> recipe_label({"ce": 1.0, "lovasz": 0.5}), recipe_slug({"ce": 1.0, "lovasz": 0.5})
    ('ce+0.5·lovasz', 'ce1_lovasz0.5')
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

from utils.fileio import UserError

# What SegmentationLoss hands a term function, by name: log_probs / probs (N, C, H, W) float32 (log_softmax and
# softmax of the logits over C), target (N, H, W) int64 with ignore_index at unlabelled pixels, sdt (N, C, H, W)
# int8 or float signed distance maps (data_utils.sdt), ignore_index an int.
INPUTS = ("log_probs", "probs", "target", "sdt", "ignore_index")
KINDS = ("region", "boundary")


@dataclass(frozen=True)
class LossTerm:
    """One registered loss term (see the module docstring for the fields)."""

    name: str
    function: str  # "module:function" of the pure tensor function
    kind: str  # "region" or "boundary"
    inputs: tuple[str, ...]  # of INPUTS, in the function's positional order
    params: dict[str, float] = field(default_factory=dict)  # keyword parameter -> default
    summary: str = ""  # one line for --help and the README

    @property
    def needs_sdt(self) -> bool:
        return "sdt" in self.inputs

    def load(self):
        """The term's function (imports its module, and so torch, on first use)."""
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


TERMS = {term.name: term for term in (
    LossTerm("ce", "losses.ce:cross_entropy_loss", "region", ("log_probs", "target", "ignore_index"),
             summary="cross-entropy"),
    LossTerm("dice", "losses.dice:dice_loss", "region", ("probs", "target", "ignore_index"),
             summary="soft Dice over the batch"),
    LossTerm("boundary", "losses.boundary:boundary_loss", "boundary", ("probs", "sdt"),
             summary="Kervadec boundary loss"),
    LossTerm("focal", "losses.focal:focal_loss", "region", ("log_probs", "target", "ignore_index"),
             {"gamma": 2.0}, "focal loss (Lin et al. 2017)"),
    LossTerm("tversky", "losses.tversky:tversky_loss", "region", ("probs", "target", "ignore_index"),
             {"alpha": 0.3, "beta": 0.7}, "Tversky loss (Salehi et al. 2017)"),
    LossTerm("lovasz", "losses.lovasz:lovasz_softmax_loss", "region", ("probs", "target", "ignore_index"),
             summary="Lovász-softmax (Berman et al. 2018)"),
)}

for _term in TERMS.values():  # a wrong registry line fails at import, not in the middle of a run
    assert _term.name.isalpha() and _term.name.islower(), _term.name  # no "_": grad_cos keys join pairs with it
    assert _term.kind in KINDS and set(_term.inputs) <= set(INPUTS), _term.name

EXAMPLE = "ce=1,lovasz=0.5,boundary=0.2"


def _terms_hint() -> str:
    return f"registered terms: {', '.join(TERMS)}; e.g. --loss '{EXAMPLE}'"


def check_recipe(weights: dict, where: str = "--loss") -> dict[str, float]:
    """A validated copy of the recipe {term: weight}, in TERMS order (its canonical form).

    Raises:
        UserError (one line listing the registered terms): no term, an unknown term, a weight that is not a
            finite number >= 0.
    """
    if not weights:
        raise UserError(f"{where}: the recipe has no loss term; {_terms_hint()}")
    unknown = [name for name in weights if name not in TERMS]
    if unknown:
        raise UserError(f"{where}: unknown loss term {unknown[0]!r}; {_terms_hint()}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise UserError(f"{where}: the weight of {name!r} must be a finite number >= 0, got {weight!r}")
    return {name: float(weights[name]) for name in TERMS if name in weights}


def parse_recipe(text: str, where: str = "--loss") -> dict[str, float]:
    """"ce=1,lovasz=0.5" (spaces allowed; a bare name weighs 1) -> {term: weight} in canonical order."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = (s.strip() for s in part.partition("="))
        if name in weights:
            raise UserError(f"{where}: {name!r} appears twice in {text!r}; give each term once")
        try:
            weights[name] = float(value) if sep else 1.0
        except ValueError:
            raise UserError(f"{where}: the weight of {name!r} is {value!r}, not a number; "
                            f"write term=weight, e.g. --loss '{EXAMPLE}'") from None
    return check_recipe(weights, where)


def recipe_label(weights: dict[str, float]) -> str:
    """The canonical human label: "ce+0.5·lovasz" (TERMS order, a weight of 1 not written)."""
    return "+".join(name if w == 1 else f"{w:g}·{name}" for name, w in check_recipe(weights).items())


def recipe_slug(weights: dict[str, float]) -> str:
    """A file-name-safe form for run names and directories: "ce1_lovasz0.5"."""
    return "_".join(f"{name}{w:g}" for name, w in check_recipe(weights).items())


def needs_sdt(weights: dict[str, float]) -> bool:
    """Whether a recipe needs the signed distance maps (one of its terms takes `sdt`): the one place deciding it."""
    return any(TERMS[name].needs_sdt for name in weights)


def terms_of_kind(weights: dict[str, float], kind: str) -> list[str]:
    """The recipe's terms of one kind ("region" or "boundary"), in recipe order."""
    return [name for name in weights if TERMS[name].kind == kind]


def term_params(overrides: dict[str, dict[str, float]] | None, names) -> dict[str, dict[str, float]]:
    """{term: {param: value}} for the terms `names` that have parameters: the registry defaults, replaced by
    `overrides` (same shape). Raises UserError for an unknown parameter or a value that is not finite >= 0."""
    overrides = overrides or {}
    out = {}
    for name in names:
        given = overrides.get(name, {})
        unknown = sorted(set(given) - set(TERMS[name].params))
        if unknown:
            raise UserError(f"loss term {name!r} has no parameter {unknown[0]!r} "
                            f"(its parameters: {', '.join(TERMS[name].params) or 'none'})")
        values = {**TERMS[name].params, **given}
        for param, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--{name}-{param} must be a finite number >= 0, got {value}")
        if values:
            out[name] = {param: float(value) for param, value in values.items()}
    return out
