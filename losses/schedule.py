"""Per-epoch loss weights: the boundary weight λ_b held constant, ramped linearly, or grown at the expense of
the region terms (Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019, §3.3).

The weights are a pure function of the epoch index and of the base weights (`build_loss(...).weights`), so a
resumed run needs nothing but its epoch counter. train.py applies them at the start of every epoch:

    >>> from losses import build_loss
    >>> loss_fn = build_loss("C", lambda_boundary=0.2)
    >>> schedule = BoundaryWeightSchedule("linear", loss_fn.weights, start=0.0, ramp_epochs=4)
    >>> [round(schedule.weights_at(e)["boundary"], 4) for e in range(6)]
    [0.0, 0.05, 0.1, 0.15, 0.2, 0.2]
    >>> loss_fn.weights.update(schedule.weights_at(2))     # train.py: before training epoch 2 (0-based)
    >>> loss_fn.weights
    {'ce': 1.0, 'dice': 1.0, 'boundary': 0.1}

Notation: e = 0-based index of the epoch about to be trained (e = 0 is the first epoch), w⁰_t the base
weight of term t (ce 1, dice λ_d, boundary λ_b), b = each boundary term of the recipe, R = its region terms
(the kinds of `losses.registry.TERMS`: {ce} for D, {ce, dice} for C, {ce, lovasz} for "ce=1,lovasz=0.5,
boundary=0.2"). Only the recipe's terms are returned; region weights are returned unchanged except under
"steal".

    constant: w_t(e) = w⁰_t
    linear  : w_b(e) = start + (end − start) · min(e, ramp_epochs) / ramp_epochs     (end = w⁰_b by default;
              ramp_epochs = 0 gives `end` from the first epoch)
    steal   : s(e) = min(δ·e, s_max),   s_max = max(0, max_{t∈R} (w⁰_t − floor))
              w_b(e) = w⁰_b + s(e)
              w_t(e) = max(min(floor, w⁰_t), w⁰_t − s(e))       for t ∈ R

"steal" is Kervadec et al.'s rebalancing α·L_region + (1 − α)·L_boundary with α = 1 − δ·e (their δ = 0.01,
α floored at 0.01) carried over to the composite loss: each epoch the boundary weight gains δ and every region
weight loses δ, until it reaches `floor` (a weight already below the floor is never raised). The boundary
weight stops growing when the last region weight reaches its floor, i.e. it gains exactly what the largest
region weight lost. With the default base weights (ce = dice = 1) and `--lambda-boundary 0`, δ = floor = 0.01
this is their schedule: w_ce = w_dice = max(0.01, 1 − 0.01·e), w_b = min(0.01·e, 0.99).
"""
from __future__ import annotations

from losses.registry import recipe_label, terms_of_kind
from utils.fileio import UserError

# Each schedule and the run settings that parametrise it (TrainConfig fields, flags --boundary-start, ...; what
# results files and aggregate.py group runs by, engine.results_format): the one list of schedule names.
SCHEDULE_PARAMS = {"constant": (), "linear": ("boundary_start", "boundary_ramp_epochs"),
                   "steal": ("steal_delta", "steal_floor")}
SCHEDULE_KINDS = tuple(SCHEDULE_PARAMS)


def check_boundary_schedule(kind: str, weights: dict[str, float], label: str | None = None) -> None:
    """Refuse an unknown schedule, or one that moves λ_b for a recipe without a boundary term (A, B,
    "ce=1,lovasz=0.5"): UserError naming the flag. `label` names the loss (default: the recipe's label).
    BoundaryWeightSchedule runs it, and engine.config before any data loads."""
    if kind not in SCHEDULE_KINDS:
        raise UserError(f"unknown boundary schedule {kind!r}: choose one of {', '.join(SCHEDULE_KINDS)} "
                        "(--boundary-schedule)")
    if kind != "constant" and not terms_of_kind(weights, "boundary"):
        raise UserError(f"--boundary-schedule {kind} needs a loss with a boundary term (C, D, or a --loss recipe "
                        f"with one); {label or recipe_label(weights)} has only {', '.join(weights)}")


class BoundaryWeightSchedule:
    """The loss weights of one run as a function of the epoch.

    Args:
        kind: "constant", "linear" or "steal" (formulas in the module docstring).
        base_weights: the recipe's weights, e.g. `build_loss("C").weights` ({"ce", "dice", "boundary"});
            copied, so later changes to the loss object's dict do not feed back into the schedule.
        start: linear: λ_b at epoch 0.
        end: linear: λ_b from epoch `ramp_epochs` on; None = the base λ_b (`--lambda-boundary`), so the
            λ_b a run is recorded with is the one it ends at.
        ramp_epochs: linear: epochs to go from `start` to `end`.
        delta: steal: weight moved from each region term to the boundary term per epoch (δ).
        floor: steal: lowest weight of a region term.
    Raises:
        UserError: unknown kind, negative parameters, or a scheduled λ_b for a recipe without a boundary
            term (A, B, "ce=1,lovasz=0.5").
    """

    def __init__(self, kind: str, base_weights: dict[str, float], *, start: float = 0.0, end: float | None = None,
                 ramp_epochs: int = 0, delta: float = 0.01, floor: float = 0.01):
        check_boundary_schedule(kind, base_weights)
        self.boundary_terms = terms_of_kind(base_weights, "boundary")
        self.region_terms = terms_of_kind(base_weights, "region")  # the terms "steal" takes weight from
        checks = {"--boundary-start": start, "--boundary-ramp-epochs": ramp_epochs, "--steal-delta": delta,
                  "--steal-floor": floor}
        if end is not None:
            checks["the boundary schedule's end"] = end
        for flag, value in checks.items():
            if value < 0:
                raise UserError(f"{flag} must be >= 0, got {value}")
        self.kind = kind
        self.base_weights = {name: float(w) for name, w in base_weights.items()}
        self.start = float(start)
        self.end = None if end is None else float(end)  # None: each boundary term ends at its base weight
        self.ramp_epochs = int(ramp_epochs)
        self.delta = float(delta)
        self.floor = float(floor)
        region = [self.base_weights[t] for t in self.region_terms]
        self.max_stolen = max([0.0] + [w - self.floor for w in region])  # s_max: what the largest region weight can lose

    def weights_at(self, epoch: int) -> dict[str, float]:
        """{term: weight} for the epoch with 0-based index `epoch` (the recipe's terms only)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        weights = dict(self.base_weights)
        if self.kind == "linear":
            progress = 1.0 if self.ramp_epochs == 0 else min(epoch, self.ramp_epochs) / self.ramp_epochs
            for b in self.boundary_terms:
                end = self.base_weights[b] if self.end is None else self.end
                weights[b] = self.start + (end - self.start) * progress
        elif self.kind == "steal":
            stolen = min(self.delta * epoch, self.max_stolen)
            for b in self.boundary_terms:
                weights[b] = self.base_weights[b] + stolen
            for t in self.region_terms:
                base = self.base_weights[t]
                weights[t] = max(min(self.floor, base), base - stolen)
        return weights

    def __repr__(self) -> str:
        end = "base" if self.end is None else f"{self.end:g}"
        params = {"constant": "", "linear": f", start={self.start:g}, end={end}, ramp_epochs={self.ramp_epochs}",
                  "steal": f", delta={self.delta:g}, floor={self.floor:g}"}[self.kind]
        return f"BoundaryWeightSchedule({self.kind!r}{params})"
