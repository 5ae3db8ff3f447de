"""Loss terms against explicit per-pixel / per-class Python loops, and the variant plumbing."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import AUX_LOSS_WEIGHT, LOSS_WEIGHTS, build_aux_loss, build_loss
from losses import boundary_loss, cross_entropy_loss, dice_loss
from losses.functional import log_probs_float
from utils.fileio import UserError

IGNORE = 255


# ---------------------------------------------------------------- slow explicit references (float64 loops)
def _softmax_at(logits, n, y, x):
    """Softmax over classes of one pixel, as a list of Python floats."""
    z = [float(v) for v in logits[n, :, y, x]]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def ref_ce(logits, target):
    total, count = 0.0, 0
    N, C, H, W = logits.shape
    for n in range(N):
        for y in range(H):
            for x in range(W):
                t = int(target[n, y, x])
                if t == IGNORE:
                    continue
                total += -math.log(_softmax_at(logits, n, y, x)[t])
                count += 1
    return total / count if count else 0.0


def ref_dice(logits, target):
    N, C, H, W = logits.shape
    score = 0.0
    for c in range(C):
        inter, card = 0.0, 0.0
        for n in range(N):
            for y in range(H):
                for x in range(W):
                    t = int(target[n, y, x])
                    if t == IGNORE:
                        continue
                    p = _softmax_at(logits, n, y, x)[c]
                    g = 1.0 if t == c else 0.0
                    inter += p * g
                    card += p + g
        score += (2 * inter + 1) / (card + 1)
    return 1.0 - score / C


def ref_boundary(logits, phi):
    N, C, H, W = logits.shape
    total = 0.0
    for n in range(N):
        for y in range(H):
            for x in range(W):
                p = _softmax_at(logits, n, y, x)
                for c in range(C):
                    total += float(phi[n, c, y, x]) * p[c]
    return total / (N * C * H * W)


# ---------------------------------------------------------------- inputs
def _random_case(seed, N=2, C=5, H=6, W=7, absent=(3,), ignore_frac=0.2, dtype=torch.float32):
    """Random logits/target/int8 sdt with ignore pixels and classes absent from the target."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, C, H, W, generator=g) * 3).to(dtype)
    present = [c for c in range(C) if c not in absent]
    target = torch.tensor(present)[torch.randint(len(present), (N, H, W), generator=g)]
    target[torch.rand(N, H, W, generator=g) < ignore_frac] = IGNORE
    sdt = torch.randint(-127, 128, (N, C, H, W), generator=g, dtype=torch.int8)
    sdt = sdt.masked_fill((target == IGNORE).unsqueeze(1), 0)  # φ = 0 at ignore pixels, as data_utils.sdt
    return logits, target, sdt


# ---------------------------------------------------------------- each term against its loop
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1])
def test_terms_match_explicit_loops(seed, dtype, fused):
    logits, target, sdt = _random_case(seed, dtype=dtype)
    # The reference sees exactly the values the loss sees (bf16 upcasts exactly); a loss computed in
    # bf16 would be off by ~1e-2, so a 1e-5 tolerance proves the float32 computation.
    ref_logits = logits.double()
    out = build_loss("C", fused=fused)(logits, target, sdt)
    for value in out.values():
        assert value.dtype == torch.float32
    assert out["ce"].item() == pytest.approx(ref_ce(ref_logits, target), rel=1e-5)
    assert out["dice"].item() == pytest.approx(ref_dice(ref_logits, target), rel=1e-5)
    phi = sdt.double() / 127
    assert out["boundary"].item() == pytest.approx(ref_boundary(ref_logits, phi), rel=1e-5, abs=1e-7)
    expected_total = ref_ce(ref_logits, target) + 1.0 * ref_dice(ref_logits, target) + 0.2 * ref_boundary(
        ref_logits, phi
    )
    assert out["loss"].item() == pytest.approx(expected_total, rel=1e-5)


def test_ce_equals_pytorch_cross_entropy():
    logits, target, _ = _random_case(2, N=3, C=19, H=9, W=11, absent=(0, 7, 18))
    ours = cross_entropy_loss(log_probs_float(logits), target, IGNORE)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, ignore_index=IGNORE))


def test_float_sdt_equals_int8_sdt_over_127():
    logits, target, sdt = _random_case(3)
    probs = log_probs_float(logits).exp()
    torch.testing.assert_close(boundary_loss(probs, sdt), boundary_loss(probs, sdt.float() / 127))


@pytest.mark.parametrize("fused", [True, False])
def test_channels_last_logits_give_same_values(fused):
    logits, target, sdt = _random_case(4, N=2, C=19, H=8, W=10)
    loss_fn = build_loss("C", fused=fused)
    a = loss_fn(logits, target, sdt)
    b = loss_fn(logits.contiguous(memory_format=torch.channels_last), target, sdt)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("fused", [True, False])
def test_all_pixels_ignored_gives_finite_zero_ce_with_grad(fused):
    logits, _, sdt = _random_case(5)
    logits.requires_grad_(True)
    target = torch.full(logits.shape[:1] + logits.shape[2:], IGNORE, dtype=torch.long)
    out = build_loss("C", fused=fused)(logits, target, torch.zeros_like(sdt))
    assert out["ce"].item() == 0.0
    # Dice with no valid pixel: every class scores (0 + 1) / (0 + 1) = 1, so the loss is 0.
    assert out["dice"].item() == pytest.approx(0.0)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", sorted(LOSS_WEIGHTS))
def test_gradients_finite_and_match_float64(variant, fused):
    logits, target, sdt = _random_case(6, dtype=torch.float32)
    logits = logits * 10  # saturated softmax: log-probs of -60 must not give inf/NaN gradients
    loss_fn = build_loss(variant, fused=fused)
    x32 = logits.clone().requires_grad_(True)
    loss_fn(x32, target, sdt)["loss"].backward()
    assert torch.isfinite(x32.grad).all()
    x64 = logits.double().requires_grad_(True)
    loss_fn(x64, target, sdt)["loss"].backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_all_terms_float64(fused):
    logits, target, sdt = _random_case(7, N=1, C=3, H=3, W=4, absent=(1,))
    loss_fn = build_loss("C", fused=fused)
    x = logits.double().requires_grad_(True)
    # Every output (total and each unweighted term) is checked: gradcheck perturbs all of them.
    outputs = lambda z: tuple(loss_fn(z, target, sdt)[k] for k in ("loss", "ce", "dice", "boundary"))  # noqa: E731
    assert torch.autograd.gradcheck(outputs, (x,))


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_logits_get_gradients(fused):
    logits, target, sdt = _random_case(8, dtype=torch.bfloat16)
    logits.requires_grad_(True)
    build_loss("C", fused=fused)(logits, target, sdt)["loss"].backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


# ---------------------------------------------------------------- fused Function vs plain autograd
@pytest.mark.parametrize("sdt_kind", ["int8", "float"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("variant", sorted(LOSS_WEIGHTS))
def test_fused_matches_autograd_values_and_per_term_gradients(variant, layout, sdt_kind):
    logits, target, sdt = _random_case(13, N=2, C=6, H=7, W=9, absent=(2, 5))
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    if sdt_kind == "float":
        sdt = sdt.float() / 127
    sdt_before = sdt.clone()
    fused, plain = build_loss(variant, 0.7, 0.3), build_loss(variant, 0.7, 0.3, fused=False)
    x_fused = logits.clone().requires_grad_(True)
    x_plain = logits.clone().requires_grad_(True)
    out_fused, out_plain = fused(x_fused, target, sdt), plain(x_plain, target, sdt)
    assert set(out_fused) == set(out_plain)
    for key in out_plain:  # the total and each unweighted term, each with its own gradient
        torch.testing.assert_close(out_fused[key], out_plain[key])
        (g_fused,) = torch.autograd.grad(out_fused[key], x_fused, retain_graph=True)
        (g_plain,) = torch.autograd.grad(out_plain[key], x_plain, retain_graph=True)
        torch.testing.assert_close(g_fused, g_plain, rtol=1e-4, atol=1e-9)
    # A combination of outputs (e.g. the cosine of Dice and boundary gradients needs both).
    if len(out_plain) > 2:
        names = [k for k in out_plain if k != "loss"]
        g_fused = torch.autograd.grad([out_fused[k] for k in names], x_fused, retain_graph=True)[0]
        g_plain = torch.autograd.grad([out_plain[k] for k in names], x_plain, retain_graph=True)[0]
        torch.testing.assert_close(g_fused, g_plain, rtol=1e-4, atol=1e-9)
    assert torch.equal(sdt, sdt_before)  # the caller's sdt is never scaled in place


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_region_does_not_lower_precision(fused):
    # Under bf16 autocast, a matmul-based reduction would silently run in bf16 (~1e-5 off here).
    logits, target, sdt = _random_case(16, N=2, C=19, H=16, W=24)
    loss_fn = build_loss("C", fused=fused)
    plain = loss_fn(logits, target, sdt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss_fn(logits, target, sdt)
    for key in plain:
        assert inside[key].dtype == torch.float32
        torch.testing.assert_close(inside[key], plain[key], rtol=1e-6, atol=1e-7)


def test_fused_bf16_gradient_matches_autograd():
    logits, target, sdt = _random_case(14, dtype=torch.bfloat16)
    grads = []
    for fused in (True, False):
        x = logits.clone().requires_grad_(True)
        build_loss("C", fused=fused)(x, target, sdt)["loss"].backward()
        grads.append(x.grad.float())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-2, atol=1e-5)  # both rounded to bf16


def _full_size_saved_tensors(loss_fn, logits, target, sdt):
    """Distinct float tensors of the logits' full (N, C, H, W) size that autograd keeps for backward."""
    saved = {}

    def pack(t):
        if t.is_floating_point() and t.shape == logits.shape and t.data_ptr() != logits.data_ptr():
            saved[t.data_ptr()] = t.dtype
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(logits.clone().requires_grad_(True), target, sdt)["loss"]
    return list(saved.values())


def test_memory_kept_for_backward():
    # The count the module docstrings state: fused keeps probs only; plain autograd log_probs and probs.
    logits, target, sdt = _random_case(15, dtype=torch.bfloat16)
    assert _full_size_saved_tensors(build_loss("C"), logits, target, sdt) == [torch.float32]
    assert _full_size_saved_tensors(build_loss("C", fused=False), logits, target, sdt) == [torch.float32] * 2


# ---------------------------------------------------------------- hand-made cases
def test_dice_perfect_prediction_is_zero_and_absent_class_counts():
    # 1x1x4 image, classes 0 and 1 present, class 2 absent; near-one-hot logits.
    target = torch.tensor([[[0, 0, 1, 1]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).double() * 50
    assert dice_loss(log_probs_float(logits).exp(), target).item() == pytest.approx(0.0, abs=1e-12)
    # Putting all the mass on the absent class 2 everywhere: classes 0 and 1 score 1/3 ((0+1)/(2+1)),
    # class 2 scores 1/5 ((0+1)/(4+1)); loss = 1 - (1/3 + 1/3 + 1/5) / 3.
    wrong = F.one_hot(torch.full_like(target, 2), 3).permute(0, 3, 1, 2).double() * 50
    expected = 1 - (1 / 3 + 1 / 3 + 1 / 5) / 3
    assert dice_loss(log_probs_float(wrong).exp(), target).item() == pytest.approx(expected, abs=1e-12)


def test_boundary_sign_and_gradient_direction():
    # One row of 6 pixels, 2 classes; class 1 occupies pixels 2..3. φ (Kervadec): negative inside the
    # region, positive outside, growing with the distance to the contour.
    phi1 = torch.tensor([3.0, 2.0, -1.0, -1.0, 2.0, 3.0]) / 127
    phi0 = -phi1  # class 0 is the complement
    sdt = torch.stack([phi0, phi1]).view(1, 2, 1, 6)

    def loss_for(class1_logit):
        logits = torch.stack([torch.zeros(6), class1_logit]).view(1, 2, 1, 6)
        return boundary_loss(log_probs_float(logits).exp(), sdt)

    perfect = loss_for(torch.tensor([-20.0, -20, 20, 20, -20, -20]))
    assert perfect.item() < 0  # negative at the optimum: expected, nothing may assume loss >= 0
    uniform = loss_for(torch.zeros(6))
    assert uniform.item() == pytest.approx(0.0, abs=1e-9)  # φ0 + φ1 = 0 at every pixel
    # Moving class-1 probability mass from outside (pixel 0) to inside (pixel 2) lowers the loss ...
    outside = loss_for(torch.tensor([2.0, 0, 0, 0, 0, 0]))
    inside = loss_for(torch.tensor([0.0, 0, 2.0, 0, 0, 0]))
    assert inside.item() < uniform.item() < outside.item()
    # ... and the gradient says so: raising the class-1 logit inside lowers it, outside raises it.
    z = torch.zeros(6, requires_grad=True)
    loss_for(z).backward()
    assert (z.grad[2:4] < 0).all() and (z.grad[[0, 1, 4, 5]] > 0).all()
    assert z.grad[0] > z.grad[1]  # farther from the contour pushes harder


# ---------------------------------------------------------------- variant plumbing
def test_variants_compute_exactly_their_terms():
    logits, target, sdt = _random_case(9)
    expected_keys = {"A": {"ce"}, "B": {"ce", "dice"}, "C": {"ce", "dice", "boundary"}, "D": {"ce", "boundary"}}
    for variant, keys in expected_keys.items():
        loss_fn = build_loss(variant, lambda_dice=0.7, lambda_boundary=0.3)
        assert set(loss_fn.weights) == keys
        assert loss_fn.uses_sdt == ("boundary" in keys)
        out = loss_fn(logits, target, sdt if loss_fn.uses_sdt else None)
        assert set(out) == keys | {"loss"}
        lambdas = {"ce": 1.0, "dice": 0.7, "boundary": 0.3}
        total = sum(lambdas[k] * out[k] for k in keys)
        torch.testing.assert_close(out["loss"], total)


def test_default_weights_are_the_papers():
    assert LOSS_WEIGHTS["C"] == {"ce": 1.0, "dice": 1.0, "boundary": 0.2}
    assert build_loss("C").weights == LOSS_WEIGHTS["C"]
    assert build_loss("D").weights == LOSS_WEIGHTS["D"]


@pytest.mark.parametrize("fused", [True, False])
def test_weights_mutation_changes_total(fused):
    logits, target, sdt = _random_case(10)
    loss_fn = build_loss("D", fused=fused)
    before = loss_fn(logits, target, sdt)
    loss_fn.weights["boundary"] = 1.5
    after = loss_fn(logits, target, sdt)
    torch.testing.assert_close(after["boundary"], before["boundary"])  # terms are unweighted
    torch.testing.assert_close(after["loss"], after["ce"] + 1.5 * after["boundary"])
    assert after["loss"].item() != pytest.approx(before["loss"].item())


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(UserError, match="A, B, C, D"):
        build_loss("E")


@pytest.mark.parametrize("variant", ["C", "D"])
def test_missing_sdt_is_a_clear_error(variant):
    logits, target, _ = _random_case(11)
    with pytest.raises(ValueError, match="signed distance map"):
        build_loss(variant)(logits, target)


def test_sdt_shape_mismatch_is_an_error():
    logits, target, sdt = _random_case(12)
    with pytest.raises(ValueError, match="shape"):
        build_loss("D")(logits, target, sdt[:, :3])


def test_aux_loss_kinds():
    main = build_loss("C", lambda_boundary=0.1)
    assert build_aux_loss("composite", main) is main  # shares the (scheduled) weights
    aux_ce = build_aux_loss("ce", main)
    assert aux_ce.weights == {"ce": 1.0} and not aux_ce.uses_sdt
    assert AUX_LOSS_WEIGHT == 0.4
    with pytest.raises(UserError, match="composite, ce"):
        build_aux_loss("dice", main)
