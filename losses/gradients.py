"""Per-term gradient statistics: how strongly, and in which direction, each loss term pulls on the network.

The study explains C < D by "gradient interference" between Dice and the boundary term without measuring it.
`term_gradient_stats` measures it on the training graph itself: for each UNWEIGHTED term t of the recipe
(CE, Dice, boundary, or whatever registered terms it has) it takes g_t = ∂t/∂logits and ∂t/∂features with one `torch.autograd.grad` call per
term (`retain_graph=True`, so the training backward that follows still works), and returns

    grad_norm/logits/<t>    = ‖∂t/∂logits‖₂       over all N·C·H·W entries (logits at the input size)
    grad_norm/features/<t>  = ‖∂t/∂features‖₂     over all N·F·H/4·W/4 entries (the head's fused map, F =
                                                   --head-channels: the last map the classes share, models.heads;
                                                   the path to it is Dropout2d, the 1x1 classifier and the
                                                   bilinear upsampling)
    grad_cos/<where>/<a>_<b>  = ⟨g_a, g_b⟩ / (‖g_a‖₂·‖g_b‖₂), clamped to [−1, 1], for every pair of terms a, b
                                 in recipe order (C: ce_dice, ce_boundary, dice_boundary; NaN when either
                                 gradient is exactly zero)

The gradients are those of the terms as `losses.build_loss` defines them (unweighted; multiply a norm by the
term's weight for its share of the total). Norms and dot products accumulate in float32 (float64 inputs in
float64) whatever the gradient dtype (bf16 under autocast), in chunks, so no full-size float32 copy is made;
the K terms' gradients are held together for the pairwise cosines (K logits-sized and K features-sized
tensors in the gradient dtype, freed on return).
The values stay on the device as 0-dim tensors: nothing here synchronises with the host.

`GradStatsLog` writes them to `RUN/grad_stats.jsonl`, one JSON object per logging step:
    {"epoch": 1-based epoch being trained, "step": optimizer steps taken before this micro-batch,
     "variant" (the loss label: "C", or a recipe's "ce+0.5·lovasz"), "seed", "lambda_boundary": the run's configured λ_b (--lambda-boundary, as in results.json),
     "boundary_schedule": the run's λ_b schedule (--boundary-schedule: constant, linear or steal),
     "weight/<term>": the loss weights in use at this step (they differ from the configured ones under a
     λ_b schedule), then the keys above (NaN -> null)}

Example:
    >>> out = model(images, return_features=True)
    >>> terms = loss_fn(out["logits"], labels, sdt)
    >>> stats = term_gradient_stats(terms, out["logits"], out["features"])   # before terms["loss"].backward()
"""
from __future__ import annotations

import itertools
import math

import torch

from losses.registry import TERMS
from utils.jsonl import EpochJsonl

WHERE = ("logits", "features")
_CHUNK = 1 << 22  # elements per float32 partial sum: 16 MiB temporaries at most


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors as 1-D in the same element order, as views when their layouts allow (NCHW or NHWC)."""
    channels_last = a.dim() == 4 and all(
        t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in (a, b))
    if channels_last:
        return a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1)
    return a.reshape(-1), b.reshape(-1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b over all entries, accumulated in float32 (float64 stays float64) chunk by chunk; 0-dim tensor."""
    acc = torch.promote_types(a.dtype, torch.float32)
    a, b = _flat_pair(a, b)
    total = torch.zeros((), dtype=acc, device=a.device)
    with torch.autocast(a.device.type, enabled=False):  # the caller may be inside autocast: keep float32
        for i in range(0, a.numel(), _CHUNK):
            total = total + torch.dot(a[i:i + _CHUNK].to(acc), b[i:i + _CHUNK].to(acc))
    return total


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ / (‖a‖·‖b‖) clamped to [−1, 1]; NaN when either norm is 0 (no host sync)."""
    denom = _dot(a, a).sqrt() * _dot(b, b).sqrt()
    return torch.where(denom > 0, _dot(a, b) / denom, torch.full_like(denom, math.nan)).clamp(-1.0, 1.0)


def term_gradient_stats(terms: dict[str, torch.Tensor], logits: torch.Tensor,
                        features: torch.Tensor) -> dict[str, torch.Tensor]:
    """L2 norm of each unweighted term's gradient w.r.t. the logits and the features, and every pair's cosine.

    Call it after the forward pass and before `terms["loss"].backward()`: each term costs one extra backward
    from the loss to `features` on the same graph (through the loss, the upsampling and the classifier; the
    backbone and the head are not traversed), and the parameters' `.grad` are not touched.

    Args:
        terms: the loss's output, `{"loss", <term>: value, ...}`; its registered terms are measured, in their
            order (other keys, e.g. "loss" and "aux", are ignored).
        logits: (N, C, H, W) the tensor the loss was computed from.
        features: (N, F, h, w) the model's "features" output that `logits` was computed from.
    Returns:
        {"grad_norm/logits/<t>", "grad_norm/features/<t>" for each term t, and "grad_cos/logits/<a>_<b>",
        "grad_cos/features/<a>_<b>" for each pair}: detached float32 (float64 for float64 inputs) 0-dim
        tensors on the logits' device.
    """
    present = [t for t in terms if t in TERMS]
    if not present:
        raise ValueError(f"no loss term to measure: expected some of {tuple(TERMS)}, got {sorted(terms)}")
    if not (logits.requires_grad and features.requires_grad):
        raise ValueError("logits and features must be part of the autograd graph (call outside torch.no_grad)")
    stats: dict[str, torch.Tensor] = {}
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # each term's (logits, features) gradients
    for t in present:
        grads = torch.autograd.grad(terms[t], (logits, features), retain_graph=True, allow_unused=True)
        # A term that does not reach a tensor has a zero gradient there (norm 0, cosine NaN).
        kept[t] = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, (logits, features)))
        for where, g in zip(WHERE, kept[t]):
            stats[f"grad_norm/{where}/{t}"] = _dot(g, g).sqrt()
    for a, b in itertools.combinations(present, 2):
        for where, g_a, g_b in zip(WHERE, kept[a], kept[b]):
            stats[f"grad_cos/{where}/{a}_{b}"] = cosine(g_a, g_b)
    return stats


# ---------------------------------------------------------------------------------------------------- the log
class GradStatsLog(EpochJsonl):
    """`RUN/grad_stats.jsonl`: one JSON object per logging step (format in the module docstring).

    Opening it for a run resumed after `keep_through_epoch` completed epochs drops the lines of later epochs
    (and a line cut by a crash) with one atomic rewrite, so the file matches the training state that
    continues; each `append` then adds one line and flushes it. Only the main process should hold one.
    """

    def append(self, stats: dict[str, torch.Tensor], *, epoch: int, step: int, variant: str, seed: int,
               lambda_boundary: float, weights: dict[str, float] | None = None,
               boundary_schedule: str = "constant") -> dict:
        """Write one line from `term_gradient_stats`' output (one host sync here); returns the row.

        `lambda_boundary` and `boundary_schedule` are the run's configured λ_b and λ_b schedule
        (--lambda-boundary, --boundary-schedule: what aggregate.py groups by); `weights` the loss weights in
        use (`loss_fn.weights`), written as "weight/<term>"."""
        names = sorted(stats)
        values = torch.stack([stats[k].detach().float() for k in names]).tolist() if names else []
        row = {"epoch": int(epoch), "step": int(step), "variant": variant, "seed": int(seed),
               "lambda_boundary": float(lambda_boundary), "boundary_schedule": str(boundary_schedule),
               **{f"weight/{k}": float(w) for k, w in (weights or {}).items()},
               **dict(zip(names, values))}
        return super().append(row)

    def epoch_means(self, epoch: int) -> dict[str, float]:
        """Mean over the logging steps of `epoch` of every statistic (nulls skipped; NaN when all are null):
        what train.py adds to the epoch's metrics row, so W&B gets one point per epoch like every other key."""
        rows = [r for r in self.rows if r["epoch"] == epoch]
        keys = sorted({k for r in rows for k in r if k.startswith(("grad_norm/", "grad_cos/"))})
        out = {}
        for k in keys:
            vals = [r[k] for r in rows if r.get(k) is not None]
            out[k] = sum(vals) / len(vals) if vals else math.nan
        return out
