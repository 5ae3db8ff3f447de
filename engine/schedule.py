"""The learning rate as a pure function of the optimizer step (nanoGPT's `get_lr`).

The paper's recipe is polynomial decay with power 1.0 from the base LR to 0 over all optimizer steps of the
run, with no warm-up. Because the LR depends on nothing but the step counter, resuming from a checkpoint or
changing the number of GPUs cannot shift the schedule (a prepared torch scheduler, by contrast, steps
`num_processes` times per call and skips steps the optimizer skipped).

    lr(step) = min_lr + (base_lr - min_lr) * (1 - progress) ** power,
    progress = (step - warmup_steps) / (total_steps - warmup_steps)        for step >= warmup_steps
    lr(step) = base_lr * (step + 1) / (warmup_steps + 1)                    for step <  warmup_steps

`step` counts optimizer steps already taken (0 for the first update), so the last update of a run uses
lr(total_steps - 1) > min_lr and lr(total_steps) = min_lr is never applied (as in mmseg's PolyLR).
"""
from __future__ import annotations


def get_lr(step: int, total_steps: int, base_lr: float, power: float = 1.0, min_lr: float = 0.0,
           warmup_steps: int = 0) -> float:
    """LR for the update that follows `step` optimizer steps.

    Args:
        step: optimizer steps taken so far (0-based index of the coming update).
        total_steps: optimizer steps in the whole run (epochs * steps per epoch).
        base_lr: peak LR (after warm-up).
        power: polynomial exponent; 1.0 is linear decay.
        min_lr: LR reached at `total_steps`.
        warmup_steps: linear warm-up length in optimizer steps; 0 disables it.

    Example:
        >>> get_lr(0, 100, 6e-5), get_lr(50, 100, 6e-5), get_lr(100, 100, 6e-5)
        (6e-05, 3e-05, 0.0)
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    # 1) linear warm-up, reaching base_lr at step == warmup_steps
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    # 2) past the end (e.g. a resumed run with a rounding change): stay at the floor
    if step >= total_steps:
        return min_lr
    # 3) in between, polynomial decay from base_lr to min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * (1.0 - progress) ** power
