"""Every registered loss term against an explicit per-pixel / per-class loop, gradcheck, fused vs plain autograd,
and the recipe plumbing (parsing, errors, build_loss). A new term adds its reference loop to REFERENCES."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import TERMS, build_loss, parse_recipe, recipe_label
from losses.functional import log_probs_float
from tests.test_losses import IGNORE, _random_case, _softmax_at, ref_boundary, ref_ce, ref_dice
from utils.fileio import UserError


# ---------------------------------------------------------------- explicit references (float64 Python loops)
def _valid_pixels(target):
    N, H, W = target.shape
    return [(n, y, x) for n in range(N) for y in range(H) for x in range(W) if int(target[n, y, x]) != IGNORE]


def ref_focal(logits, target, gamma=2.0):
    pixels = _valid_pixels(target)
    total = 0.0
    for n, y, x in pixels:
        p_t = _softmax_at(logits, n, y, x)[int(target[n, y, x])]
        total += -((1 - p_t) ** gamma) * math.log(p_t)
    return total / len(pixels) if pixels else 0.0


def ref_tversky(logits, target, alpha=0.3, beta=0.7):
    C = logits.shape[1]
    pixels = _valid_pixels(target)
    score = 0.0
    for c in range(C):
        tp = fp = fn = 0.0
        for n, y, x in pixels:
            p = _softmax_at(logits, n, y, x)[c]
            g = 1.0 if int(target[n, y, x]) == c else 0.0
            tp += p * g
            fp += p * (1 - g)
            fn += (1 - p) * g
        score += (tp + 1) / (tp + alpha * fp + beta * fn + 1)
    return 1.0 - score / C


def ref_lovasz(logits, target):
    C = logits.shape[1]
    pixels = _valid_pixels(target)
    losses = []
    for c in range(C):
        truth = [1.0 if int(target[n, y, x]) == c else 0.0 for n, y, x in pixels]
        if sum(truth) == 0:
            continue  # only the classes present in the batch
        errors = [abs(g - _softmax_at(logits, n, y, x)[c]) for g, (n, y, x) in zip(truth, pixels)]
        order = sorted(range(len(pixels)), key=lambda i: -errors[i])
        G = sum(truth)
        loss_c, previous, seen_fg, seen_bg = 0.0, 0.0, 0.0, 0.0
        for i in order:
            seen_fg += truth[i]
            seen_bg += 1 - truth[i]
            jaccard = 1 - (G - seen_fg) / (G + seen_bg)
            loss_c += errors[i] * (jaccard - previous)
            previous = jaccard
        losses.append(loss_c)
    return sum(losses) / len(losses) if losses else 0.0


# term -> reference(logits float64, target, phi float64); every registered term must have one
REFERENCES = {
    "ce": lambda z, t, phi: ref_ce(z, t),
    "dice": lambda z, t, phi: ref_dice(z, t),
    "boundary": lambda z, t, phi: ref_boundary(z, phi),
    "focal": lambda z, t, phi: ref_focal(z, t),
    "tversky": lambda z, t, phi: ref_tversky(z, t),
    "lovasz": lambda z, t, phi: ref_lovasz(z, t),
}
MIXED = "ce=1,dice=0.5,boundary=0.2,focal=0.3,tversky=0.4,lovasz=0.6"


def test_every_registered_term_has_a_reference_and_metadata():
    assert set(REFERENCES) == set(TERMS)
    for term in TERMS.values():
        assert callable(term.load()) and term.load().__doc__  # formula and shapes in the docstring
        assert term.needs_sdt == (term.name == "boundary")
        assert term.kind == ("boundary" if term.name == "boundary" else "region")


# ---------------------------------------------------------------- each term against its loop
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("term", sorted(TERMS))
def test_term_matches_explicit_loop(term, seed, dtype):
    # classes 3 absent from the target, ~20 % ignore pixels; the reference sees the exact (upcast) logits
    logits, target, sdt = _random_case(seed, dtype=dtype)
    out = build_loss(term, fused=False)(logits, target, sdt)
    assert set(out) == {term, "loss"} and out[term].dtype == torch.float32
    expected = REFERENCES[term](logits.double(), target, sdt.double() / 127)
    assert out[term].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(out["loss"], out[term])


def test_mixed_recipe_total_is_the_weighted_sum_of_the_references():
    logits, target, sdt = _random_case(2, N=2, C=4, H=5, W=6, absent=(0,))
    weights = parse_recipe(MIXED)
    out = build_loss(MIXED)(logits, target, sdt)
    expected = {t: REFERENCES[t](logits.double(), target, sdt.double() / 127) for t in weights}
    for t in weights:
        assert out[t].item() == pytest.approx(expected[t], rel=1e-5, abs=1e-7), t
    assert out["loss"].item() == pytest.approx(sum(w * expected[t] for t, w in weights.items()), rel=1e-5)


@pytest.mark.parametrize("term", sorted(TERMS))
def test_gradcheck_float64(term):
    logits, target, sdt = _random_case(7, N=1, C=3, H=3, W=4, absent=(1,))
    loss_fn = build_loss(term, fused=False)
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, target, sdt)[term], (x,))


@pytest.mark.parametrize("recipe", [*sorted(TERMS), MIXED, "dice=1,lovasz=1", "boundary=1,focal=2"])
def test_fused_equals_plain_autograd_in_value_and_gradient(recipe):
    """fused=True never drops a term: every term alone, and mixed recipes, equal the plain path."""
    logits, target, sdt = _random_case(13, N=2, C=6, H=7, W=9, absent=(2, 5))
    fused, plain = build_loss(recipe), build_loss(recipe, fused=False)
    x_fused, x_plain = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    out_fused, out_plain = fused(x_fused, target, sdt), plain(x_plain, target, sdt)
    assert list(out_fused) == list(out_plain) == [*parse_recipe(recipe), "loss"]
    for key in out_plain:
        torch.testing.assert_close(out_fused[key], out_plain[key])
        (g_fused,) = torch.autograd.grad(out_fused[key], x_fused, retain_graph=True)
        (g_plain,) = torch.autograd.grad(out_plain[key], x_plain, retain_graph=True)
        torch.testing.assert_close(g_fused, g_plain, rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------- hand-made cases
def test_focal_with_gamma_zero_is_the_cross_entropy():
    logits, target, _ = _random_case(3)
    out = build_loss("ce=1,focal=1", params={"focal": {"gamma": 0.0}})(logits, target)
    torch.testing.assert_close(out["focal"], out["ce"])


def test_perfect_prediction_scores_zero_and_no_valid_pixel_is_a_finite_zero():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, IGNORE, 1]]])
    perfect = F.one_hot(target.clamp_max(2), 3).permute(0, 3, 1, 2).double() * 60
    for term in ("focal", "tversky", "lovasz"):
        assert build_loss(term)(perfect, target)[term].item() == pytest.approx(0.0, abs=1e-12), term
    logits = torch.randn(1, 3, 2, 4, requires_grad=True)
    ignored = torch.full((1, 2, 4), IGNORE)
    for term in ("focal", "lovasz"):  # "0 when no pixel is valid"
        out = build_loss(term)(logits, ignored)
        assert out[term].item() == 0.0
        out["loss"].backward()
        assert torch.isfinite(logits.grad).all()


def test_lovasz_hand_computed_two_pixels():
    # class 1 at pixel 0 (p = 0.8), not at pixel 1 (p = 0.4): errors 0.2 (fg), 0.4 (bg), sorted 0.4 (bg), 0.2 (fg);
    # G = 1: J_1 = 1 − (1 − 0)/(1 + 1) = 0.5, J_2 = 1 − 0/(1 + 1) = 1, loss_1 = 0.4·0.5 + 0.2·(1 − 0.5) = 0.3.
    # class 0 at pixel 1 (p = 0.6), not at pixel 0 (p = 0.2): sorted 0.4 (fg), 0.2 (bg); J_1 = 1 − 0/1 = 1,
    # J_2 = 1, loss_0 = 0.4·1 + 0.2·0 = 0.4. Mean over the two present classes: 0.35.
    p1 = torch.tensor([0.8, 0.4], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).view(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    from losses import lovasz_softmax_loss

    assert lovasz_softmax_loss(probs, target).item() == pytest.approx(0.35)


def test_tversky_with_alpha_beta_one_is_soft_iou():
    logits, target, _ = _random_case(4)
    probs = log_probs_float(logits.double()).exp()
    valid = (target != IGNORE).double()
    y = F.one_hot(target.clamp_max(4), 5).permute(0, 3, 1, 2).double() * valid[:, None]
    inter = (probs * y * valid[:, None]).sum((0, 2, 3))
    union = ((probs + y - probs * y) * valid[:, None]).sum((0, 2, 3))
    out = build_loss("tversky", params={"tversky": {"alpha": 1.0, "beta": 1.0}})(logits.double(), target)
    assert out["tversky"].item() == pytest.approx(1 - ((inter + 1) / (union + 1)).mean().item(), rel=1e-12)


# ---------------------------------------------------------------- recipes
def test_build_loss_takes_a_variant_a_recipe_string_or_a_dict():
    assert build_loss("C").weights == {"ce": 1.0, "dice": 1.0, "boundary": 0.2}
    assert build_loss("C", lambda_boundary=0.1).weights["boundary"] == 0.1
    from_text, from_dict = build_loss("lovasz=0.5, ce"), build_loss({"lovasz": 0.5, "ce": 1})
    assert from_text.weights == from_dict.weights == {"ce": 1.0, "lovasz": 0.5}  # canonical (registry) order
    assert from_text.name == recipe_label(from_text.weights) == "ce+0.5·lovasz"
    assert not from_text.uses_sdt and build_loss("ce=1,boundary=0.3").uses_sdt
    assert build_loss("focal").params == {"focal": {"gamma": 2.0}}


@pytest.mark.parametrize("spec, message", [
    ("ce=1,lovasz2=0.5", "unknown loss term 'lovasz2'; registered terms: ce, dice, boundary, focal, tversky, lovasz"),
    ("ce=-1", "must be a finite number >= 0"),
    ("ce=nan", "must be a finite number >= 0"),
    ("ce=inf", "must be a finite number >= 0"),
    ("ce=x", "not a number"),
    ({}, "no loss term; registered terms"),
    (",", "no loss term; registered terms"),
    ("ce=1,ce=2", "appears twice"),
    ("E", "use a variant (A, B, C, D) or a recipe of the terms ce, dice"),
])
def test_bad_recipes_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        build_loss(spec)
    assert "\n" not in str(err.value)


def test_lambdas_belong_to_the_variants_and_bad_term_parameters_are_refused():
    with pytest.raises(UserError, match="apply to the variants"):
        build_loss("ce=1,dice=1", lambda_dice=0.5)
    with pytest.raises(UserError, match="--focal-gamma must be a finite number >= 0"):
        build_loss("focal", params={"focal": {"gamma": -1.0}})
    with pytest.raises(UserError, match="has no parameter 'delta'"):
        build_loss("focal", params={"focal": {"delta": 1.0}})


def test_registry_config_and_metric_keys_import_without_torch(python_imports):
    code = ("import engine.config, losses, losses.schedule, metrics.keys, report.load; "
            "print(engine.config.parse_args(['--loss', 'ce=1,lovasz=0.5'])[0].run_name)")
    result, modules = python_imports("-c", code)
    assert result.returncode == 0, result.stderr
    assert "torch" not in modules
    assert result.stdout.strip() == "ce1_lovasz0.5_seed42"
