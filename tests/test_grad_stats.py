"""losses.gradients: per-term gradient norms and every pair's cosine against explicit autograd computations
(one fresh forward/backward per term, through the reference loss functions), a closed form for CE, the
zero-gradient NaN, and the grad_stats.jsonl log."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import losses.gradients as gradients
from losses import build_loss
from losses.gradients import GradStatsLog, cosine, term_gradient_stats

IGNORE = 255


class TinySegmentor(nn.Module):
    """A 3x3 conv "feature" layer + ReLU, then a 1x1 classifier and a 2x bilinear upsampling to the input size."""

    def __init__(self, num_classes=19, width=8):
        super().__init__()
        self.feature = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, images, return_features=False):
        features = F.relu(self.feature(images))
        logits = F.interpolate(self.classifier(features), size=images.shape[-2:], mode="bilinear",
                               align_corners=False)
        return {"logits": logits, "features": features} if return_features else {"logits": logits}


def make_batch(n=2, h=16, w=24, num_classes=19, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=g, dtype=dtype)
    # a few large class blobs, some ignore pixels
    coarse = torch.randint(0, 5, (n, h // 4 + 1, w // 4 + 1), generator=g)
    target = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :h, :w].contiguous()
    target[:, :2, :3] = IGNORE
    sdt = torch.rand(n, num_classes, h, w, generator=g, dtype=dtype) * 2 - 1  # float φ in [-1, 1]
    return images, target, sdt


def reference_stats(model, images, target, sdt, variant, dropout_seed=None):
    """Each term's gradient from its own fresh forward + backward (reference losses, plain autograd); norms and
    cosines in float64 numpy."""
    grads = {}
    for term in build_loss(variant).terms:
        loss_fn = build_loss(variant, fused=False)
        if dropout_seed is not None:
            torch.manual_seed(dropout_seed)
        out = model(images, return_features=True)
        out["logits"].retain_grad()
        out["features"].retain_grad()
        model.zero_grad(set_to_none=True)
        loss_fn(out["logits"], target, sdt)[term].backward()
        grads[term] = {"logits": out["logits"].grad.double().numpy().ravel(),
                       "features": out["features"].grad.double().numpy().ravel()}
    ref = {}
    for term, g in grads.items():
        for where in ("logits", "features"):
            ref[f"grad_norm/{where}/{term}"] = float(np.sqrt(np.sum(g[where] ** 2)))
    for first, second in itertools.combinations(grads, 2):
        for where in ("logits", "features"):
            a, b = grads[first][where], grads[second][where]
            ref[f"grad_cos/{where}/{first}_{second}"] = float(a @ b / np.sqrt((a @ a) * (b @ b)))
    return ref


def our_stats(model, images, target, sdt, variant, dropout_seed=None):
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    out = model(images, return_features=True)
    terms = build_loss(variant)(out["logits"], target, sdt)  # the fused loss train.py uses
    return {k: float(v) for k, v in term_gradient_stats(terms, out["logits"], out["features"]).items()}


@pytest.mark.parametrize("variant", ["A", "B", "C", "D", "ce=1,lovasz=0.5,focal=1,boundary=0.2"])
def test_tiny_model_matches_separate_autograd(variant):
    torch.manual_seed(0)
    model = TinySegmentor().double()
    images, target, sdt = make_batch(dtype=torch.float64)
    ours = our_stats(model, images, target, sdt, variant)
    ref = reference_stats(model, images, target, sdt, variant)
    assert set(ours) == set(ref)
    expected_terms = {"A": ["ce"], "B": ["ce", "dice"], "C": ["ce", "dice", "boundary"], "D": ["ce", "boundary"]}
    terms = expected_terms.get(variant, ["ce", "boundary", "focal", "lovasz"])
    assert {k.split("/")[2] for k in ours if k.startswith("grad_norm/")} == set(terms)
    pairs = {f"{a}_{b}" for a, b in itertools.combinations(terms, 2)}  # every pair, in recipe order
    assert {k.split("/")[2] for k in ours if k.startswith("grad_cos/")} == pairs
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-12), k


def test_real_convnextv2_atto_matches_separate_autograd():
    from models import build_model

    torch.manual_seed(0)
    # a narrow UPerNet keeps this fast on a CPU (as the demo preset does); the layers are the real ones
    model = build_model("convnextv2_atto", num_classes=19, aux_head=True, head_channels=32)
    model.train()  # Dropout2d active: every forward below draws the same mask from the same seed
    images, target, sdt = make_batch(n=2, h=64, w=64, seed=1)
    ours = our_stats(model, images, target, sdt, "C", dropout_seed=7)
    ref = reference_stats(model, images, target, sdt, "C", dropout_seed=7)
    assert set(ours) == set(ref) and len(ref) == 2 * 3 + 2 * 3  # 3 terms, 3 pairs, at logits and features
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-7), k
    assert all(v > 0 for k, v in ours.items() if k.startswith("grad_norm/"))


def test_ce_gradient_norm_closed_form():
    # ∂CE/∂z = v·(softmax(z) − onehot) / Σv: its norm computed by hand from the logits alone
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(19, 4, 1, 1, generator=g, dtype=torch.float64)
    logits = F.conv2d(features, weight)  # (2, 19, 5, 6); features gradient = W^T (∂CE/∂logits)
    target = torch.randint(0, 19, (2, 5, 6), generator=g)
    target[0, 0, :] = IGNORE
    stats = term_gradient_stats(build_loss("A")(logits, target), logits, features)
    valid = (target != IGNORE).double()
    y = F.one_hot(target.clamp_max(18), 19).permute(0, 3, 1, 2).double()
    grad = (logits.detach().softmax(1) - y) * valid[:, None] / valid.sum()
    assert float(stats["grad_norm/logits/ce"]) == pytest.approx(float(grad.norm()), rel=1e-12)
    grad_features = torch.einsum("nkhw,kc->nchw", grad, weight[:, :, 0, 0])
    assert float(stats["grad_norm/features/ce"]) == pytest.approx(float(grad_features.norm()), rel=1e-12)


def test_zero_boundary_gradient_gives_nan_cosine():
    torch.manual_seed(0)
    model = TinySegmentor().double()
    images, target, _ = make_batch(dtype=torch.float64)
    sdt = torch.zeros(2, 19, 16, 24, dtype=torch.float64)  # φ = 0 everywhere: the boundary term is constant
    stats = our_stats(model, images, target, sdt, "C")
    assert stats["grad_norm/logits/boundary"] == 0.0 and stats["grad_norm/features/boundary"] == 0.0
    assert math.isnan(stats["grad_cos/logits/dice_boundary"]) and math.isnan(stats["grad_cos/features/dice_boundary"])
    assert stats["grad_norm/logits/dice"] > 0


def test_training_backward_unchanged_and_no_param_grads():
    torch.manual_seed(0)
    model = TinySegmentor()
    images, target, sdt = make_batch()
    loss_fn = build_loss("C")

    def param_grads(with_stats):
        model.zero_grad(set_to_none=True)
        out = model(images, return_features=with_stats)
        terms = loss_fn(out["logits"], target, sdt)
        if with_stats:
            term_gradient_stats(terms, out["logits"], out["features"])
            assert all(p.grad is None for p in model.parameters())  # autograd.grad leaves .grad alone
        terms["loss"].backward()  # the graph was retained
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(param_grads(False), param_grads(True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dot_chunks_layouts_and_low_precision(monkeypatch):
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 19, 7, 9, generator=g), torch.randn(2, 19, 7, 9, generator=g)
    ref = float((a.double() * b.double()).sum())
    monkeypatch.setattr(gradients, "_CHUNK", 100)  # many chunks and a ragged last one
    assert float(gradients._dot(a, b)) == pytest.approx(ref, rel=1e-5)
    cl_a, cl_b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    assert float(gradients._dot(cl_a, cl_b)) == pytest.approx(ref, rel=1e-5)
    assert float(gradients._dot(cl_a, b)) == pytest.approx(ref, rel=1e-5)  # mixed layouts
    bf_a, bf_b = a.bfloat16(), b.bfloat16()
    out = gradients._dot(bf_a, bf_b)
    assert out.dtype == torch.float32  # accumulated in float32, not bf16
    assert float(out) == pytest.approx(float((bf_a.double() * bf_b.double()).sum()), rel=1e-5)
    assert float(cosine(a, a)) == 1.0 and float(cosine(a, -a)) == -1.0  # clamped, never 1.0000001
    assert math.isnan(float(cosine(a, torch.zeros_like(a))))


def test_bad_calls():
    logits = torch.randn(1, 19, 4, 4)
    with pytest.raises(ValueError, match="no loss term"):
        term_gradient_stats({"loss": logits.sum()}, logits, logits)
    with pytest.raises(ValueError, match="autograd graph"):
        term_gradient_stats({"ce": logits.sum()}, logits, logits)


def test_grad_stats_log_format_resume_and_epoch_means(tmp_path):
    path = tmp_path / "run" / "grad_stats.jsonl"
    log = GradStatsLog(path, keep_through_epoch=0)
    stats = {"grad_norm/logits/ce": torch.tensor(0.5), "grad_cos/logits/dice_boundary": torch.tensor(float("nan"))}
    row = log.append(stats, epoch=1, step=0, variant="C", seed=42, lambda_boundary=0.2,
                     weights={"ce": 1.0, "dice": 1.0, "boundary": 0.05})
    assert row == {"epoch": 1, "step": 0, "variant": "C", "seed": 42, "lambda_boundary": 0.2,
                   "boundary_schedule": "constant",  # the default: train.py calls without it work unchanged
                   "weight/ce": 1.0, "weight/dice": 1.0, "weight/boundary": 0.05,
                   "grad_cos/logits/dice_boundary": None, "grad_norm/logits/ce": 0.5}
    log.append({"grad_norm/logits/ce": torch.tensor(1.5), "grad_cos/logits/dice_boundary": torch.tensor(-0.25)},
               epoch=1, step=10, variant="C", seed=42, lambda_boundary=0.2, boundary_schedule="steal")
    log.append({"grad_norm/logits/ce": torch.tensor(3.0)}, epoch=2, step=20, variant="C", seed=42,
               lambda_boundary=0.2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 10, 20] and lines[0] == row
    assert [r["boundary_schedule"] for r in lines] == ["constant", "steal", "constant"]
    assert log.epoch_means(1) == {"grad_norm/logits/ce": 1.0, "grad_cos/logits/dice_boundary": -0.25}
    # a crash mid-line in epoch 2, then a resume from the checkpoint after epoch 1: epoch 2 is dropped
    with path.open("a") as f:
        f.write('{"epoch": 2, "step": 3')
    resumed = GradStatsLog(path, keep_through_epoch=1)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 10]
    assert math.isnan(resumed.epoch_means(1)["grad_cos/logits/dice_boundary"]) is False
    assert resumed.epoch_means(2) == {}
