"""engine.inference on random models and inputs: whole, slide, flip and multi-scale against explicit references."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_utils.augment import normalize
from engine.config import DEMO_PRESET, TrainConfig
from engine.inference import WHOLE, Inference, class_scores, predict, slide_windows
from engine.setup import build_model_from_config


class ConvNet(torch.nn.Module):
    """A random 3x3-conv model returning {"logits"} at the input size (any size, odd ones included)."""

    def __init__(self, num_classes: int = 5, pointwise: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        k = 1 if pointwise else 3
        self.conv = torch.nn.Conv2d(3, num_classes, k, padding=k // 2)

    def forward(self, images):
        return {"logits": self.conv(images)}


@pytest.fixture(scope="module")
def uper() -> torch.nn.Module:
    """The demo preset's architecture (convnextv2_atto + UPerNet), random init, 16 head channels."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TrainConfig(), **{**DEMO_PRESET, "head_channels": 16})
    return build_model_from_config(cfg).eval()


def images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, height, width), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


@torch.no_grad()
def test_whole_is_the_single_scale_forward_pass(uper):
    x = images(2, 64, 96)
    reference = uper(normalize(x))["logits"]
    assert torch.equal(class_scores(uper, x), reference)
    assert torch.equal(predict(uper, x, inference=Inference(scales=(1.0,))), reference.argmax(1))
    resized = F.interpolate(reference, size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.equal(predict(uper, x, size=(32, 48)), resized.argmax(1))


@torch.no_grad()
@pytest.mark.parametrize("crop", [(64, 96), (100, 200)])
def test_slide_with_a_window_covering_the_image_equals_whole(uper, crop):
    x = images(2, 64, 96, seed=1)
    slide = Inference(mode="slide", crop=crop, stride=(7, 9))
    assert torch.equal(class_scores(uper, x, slide), class_scores(uper, x, WHOLE))


@pytest.mark.parametrize("size,crop,stride", [((45, 77), (16, 20), (11, 13)), ((33, 31), (10, 31), (3, 7)),
                                              ((17, 50), (40, 12), (40, 5)), ((64, 64), (32, 32), (32, 32))])
def test_slide_windows_cover_every_pixel_inside_the_image(size, crop, stride):
    count = np.zeros(size, int)
    windows = slide_windows(*size, crop, stride)
    for y1, y2, x1, x2 in windows:
        assert 0 <= y1 < y2 <= size[0] and 0 <= x1 < x2 <= size[1]
        assert (y2 - y1, x2 - x1) == (min(crop[0], size[0]), min(crop[1], size[1]))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    per_axis = [-(-max(s - c, 0) // st) + 1 for s, c, st in zip(size, crop, stride)]  # ceil((s - c) / st) + 1
    assert len(windows) == per_axis[0] * per_axis[1]


@torch.no_grad()
def test_slide_averages_each_pixel_over_its_windows():
    """A 3x3 conv sees the window border (zero padding), so slide differs from whole; reference: explicit loops."""
    model = ConvNet(seed=3)
    x = images(2, 23, 37, seed=2)
    crop, stride = (10, 16), (7, 9)
    scores = class_scores(model, x, Inference(mode="slide", crop=crop, stride=stride)).numpy()
    normed = normalize(x)
    total = np.zeros(scores.shape)
    count = np.zeros(scores.shape[-2:])
    for row in range((23 - 10 + 7 - 1) // 7 + 1):  # mmseg's grid: ceil((H - crop) / stride) + 1 rows
        for col in range((37 - 16 + 9 - 1) // 9 + 1):
            y2, x2 = min(row * 7 + 10, 23), min(col * 9 + 16, 37)
            y1, x1 = y2 - 10, x2 - 16
            total[..., y1:y2, x1:x2] += model(normed[..., y1:y2, x1:x2])["logits"].numpy()
            count[y1:y2, x1:x2] += 1
    np.testing.assert_allclose(scores, total / count, rtol=1e-5, atol=1e-5)
    pointwise = ConvNet(pointwise=True)  # a 1x1 conv sees no border: slide = whole
    np.testing.assert_allclose(class_scores(pointwise, x, Inference(mode="slide", crop=crop, stride=stride)),
                               class_scores(pointwise, x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_flip_is_the_mean_of_the_two_explicit_passes(uper):
    x = images(2, 64, 96, seed=4)
    normed = normalize(x)
    plain = uper(normed)["logits"].softmax(1)
    flipped = uper(normed.flip(-1))["logits"].flip(-1).softmax(1)
    torch.testing.assert_close(class_scores(uper, x, Inference(flip=True)), (plain + flipped) / 2)


@torch.no_grad()
def test_multi_scale_flip_slide_is_the_mean_softmax_over_all_passes():
    model = ConvNet(seed=5)
    x = images(1, 21, 30, seed=5)
    inference = Inference(mode="slide", crop=(12, 12), stride=(8, 8), flip=True, scales=(0.5, 1.0, 1.5))
    normed = normalize(x)
    passes = []
    for scale, size in ((0.5, (11, 15)), (1.0, (21, 30)), (1.5, (32, 45))):  # round-half-up of 21, 30 x scale
        scaled = F.interpolate(normed, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            logits = class_scores(model, scaled.flip(-1) if flip else scaled,
                                  Inference(mode="slide", crop=(12, 12), stride=(8, 8)))
            logits = logits.flip(-1) if flip else logits
            passes.append(F.interpolate(logits, size=(21, 30), mode="bilinear", align_corners=False).softmax(1))
    torch.testing.assert_close(class_scores(model, x, inference), torch.stack(passes).mean(0))


def test_inference_tags_and_bad_settings():
    assert WHOLE.tag == "whole"
    assert Inference(mode="slide", crop=(512, 1024)).stride == (341, 682)
    assert Inference(mode="slide", crop=(8, 8), stride=(4, 4), flip=True, scales=(0.5, 1.0)).tag == \
        "slide8x8s4x4-flip-ms0.5,1"
    for bad in ({"mode": "tiles"}, {"mode": "slide"}, {"scales": (0.0,)}, {"scales": ()}):
        with pytest.raises(ValueError):
            Inference(**bad)
