"""The study's four loss variants and the callable train.py uses.

    A = CE                 B = CE + λ_d·Dice      C = CE + λ_d·Dice + λ_b·Boundary      D = CE + λ_b·Boundary

The formulas are in `losses.functional`. Example:

    >>> loss_fn = build_loss("C")                      # λ_d = 1.0, λ_b = 0.2
    >>> out = loss_fn(logits, target, sdt=sdt_int8)    # {"loss", "ce", "dice", "boundary"}
    >>> out["loss"].backward()
    >>> loss_fn.weights["boundary"] = 0.1              # e.g. a per-epoch λ_b schedule

Importing the package does not import torch (engine.config reads the variant table, and train.py's
`--help` answers before torch is loaded): the torch-based names load from `losses.composite` on first use.
"""
from losses.variants import AUX_LOSS_KINDS, AUX_LOSS_WEIGHT, LOSS_WEIGHTS

_COMPOSITE = ("SegmentationLoss", "build_aux_loss", "build_loss")  # defined in losses.composite (torch)


def __getattr__(name: str):  # PEP 562: `from losses import build_loss` imports losses.composite here
    if name in _COMPOSITE:
        from losses import composite
        return getattr(composite, name)
    raise AttributeError(f"module 'losses' has no attribute {name!r}")


__all__ = ["AUX_LOSS_KINDS", "AUX_LOSS_WEIGHT", "LOSS_WEIGHTS", *_COMPOSITE]
