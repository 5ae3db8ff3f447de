"""HD95 per class (`metrics.hausdorff`): the reference `metrics.hd95` equals MONAI's
`compute_hausdorff_distance(percentile=95)` on random and real maps, the batched torch path equals the
reference (CPU, and CUDA when present), and the exclusions follow MONAI's NaN / inf conventions."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

import metrics
from data_utils.dataset import read_train_ids
from utils.conventions import IGNORE_INDEX
from metrics import SegmentationMetrics
from metrics.hausdorff import hd95_dataset, hd95_image_stats, hd95_per_class

C = 5


def monai_hd95(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """MONAI on the one-hot maps of P = (pred == c) ∧ valid and G = (target == c) ∧ valid: (C,) float64, NaN
    where a class is in at most one of them."""
    monai_metrics = pytest.importorskip("monai.metrics")
    valid = (target != ignore_index) & (target < num_classes)
    classes = [np.where(valid & (m < num_classes), m, num_classes).astype(np.int64) for m in (pred, target)]
    one_hot = [torch.from_numpy(np.eye(num_classes + 1)[m].transpose(2, 0, 1)[None, :num_classes]) for m in classes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the ground truth of class c is all 0": the excluded classes
        out = monai_metrics.compute_hausdorff_distance(*one_hot, include_background=True, percentile=95)
    return out[0].double().numpy()


def random_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random regions as target, a noisy and shifted copy as prediction, some ignored target pixels and
    predictions outside 0..C-1."""
    target = (ndimage.gaussian_filter(rng.random((h, w)), 2) * 3 * C).astype(np.int64) % C
    target[rng.random((h, w)) < 0.03] = IGNORE_INDEX
    pred = np.roll(np.where(target == IGNORE_INDEX, 0, target), rng.integers(-3, 4, 2), axis=(0, 1))
    noise = rng.random((h, w)) < 0.05
    pred[noise] = rng.integers(0, C + 2, int(noise.sum()))  # C and C + 1: outside 0..C-1, no class
    return pred.astype(np.uint8), target.astype(np.uint8)


def one_sided(pred: np.ndarray, target: np.ndarray, num_classes: int) -> int:
    """The classes in exactly one of P and G (MONAI's plain Hausdorff distance: inf; with percentile=95: NaN,
    torch.quantile of infinite distances)."""
    valid = (target != IGNORE_INDEX) & (target < num_classes)
    return sum(((pred == c) & valid).any() != ((target == c) & valid).any() for c in range(num_classes))


def assert_matches_monai(ours: np.ndarray, monai: np.ndarray):
    """Equal where MONAI is finite (MONAI computes in float32), NaN where it is not."""
    finite = np.isfinite(monai)
    np.testing.assert_array_equal(np.isnan(ours), ~finite)
    np.testing.assert_allclose(ours[finite], monai[finite], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- hand-made
def test_shifted_square_and_exclusions():
    """A 16x16 square shifted by 2 rows: every directed distance is 0 (the shared sides) or at most 2, and
    more than 5 % are 2 (top and bottom rows), so HD95 = 2 for the square and for the background around it."""
    target = np.zeros((32, 32), np.uint8)
    target[8:24, 8:24] = 1
    pred = np.zeros_like(target)
    pred[10:26, 8:24] = 1
    target[0, 0:4] = 2  # class 2 only in the ground truth: excluded and counted (MONAI: inf)
    pred[31, 28:] = 4  # class 4 only in the prediction: excluded and counted
    # class 3 in neither: excluded, not counted (MONAI: NaN)
    out = metrics.hd95(pred, target, num_classes=C)
    assert out.dtype == np.float64 and out.shape == (C,)
    np.testing.assert_array_equal(out[:2], [2.0, 2.0])
    assert np.isnan(out[2:]).all()
    stats = hd95_image_stats(torch.from_numpy(pred)[None], torch.from_numpy(target)[None], C)
    np.testing.assert_array_equal(stats["hd95"][0].numpy(), out)
    assert stats["hd95_excluded"].tolist() == [2]
    assert_matches_monai(out, monai_hd95(pred, target, C))
    assert one_sided(pred, target, C) == 2


def test_ignored_pixels_belong_to_no_class():
    """A prediction on ignored pixels does not count, and a mask bordering ignored pixels has a boundary there."""
    target = np.zeros((20, 20), np.uint8)
    target[:, 10:] = IGNORE_INDEX
    pred = np.zeros_like(target)  # class 0 everywhere, also on the ignored half
    np.testing.assert_array_equal(metrics.hd95(pred, target, 2), [0.0, math.nan])  # the same mask, the same boundary
    ignore_inside = target.copy()
    ignore_inside[5, 3] = 1  # with a class-1 pixel as ignore label 1 instead: it is no longer G
    out = metrics.hd95(pred, ignore_inside, 2, ignore_index=1)
    assert_matches_monai(out, monai_hd95(pred, ignore_inside, 2, ignore_index=1))


# ---------------------------------------------------------------------------------------------------- vs MONAI
@pytest.mark.parametrize("seed", range(6))
def test_random_maps_match_monai_and_the_batched_path(seed):
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (1, 17), (23, 1), (31, 47), (40, 29)]
    pairs = [random_pair(rng, *shapes[seed % len(shapes)]) for _ in range(3)]
    pred = torch.from_numpy(np.stack([p for p, _ in pairs]))
    target = torch.from_numpy(np.stack([t for _, t in pairs]))
    batched = hd95_image_stats(pred, target, C)
    for i, (p, t) in enumerate(pairs):
        ours = metrics.hd95(p, t, C)
        assert_matches_monai(ours, monai_hd95(p, t, C))
        assert int(batched["hd95_excluded"][i]) == one_sided(p, t, C)
        np.testing.assert_allclose(batched["hd95"][i].numpy(), ours, rtol=1e-12, atol=0)  # NaN at the same places
    for dtype in (torch.int64, torch.int32):  # any integer dtype
        again = hd95_image_stats(pred.to(dtype), target.to(dtype), C)["hd95"]
        torch.testing.assert_close(again, batched["hd95"], rtol=0, atol=0, equal_nan=True)


def test_far_boundaries_take_the_exhaustive_search(monkeypatch):
    """Boundaries further apart than the column window (a blob predicted far from the ground truth's)."""
    from metrics import hausdorff

    target = np.zeros((40, 120), np.uint8)
    target[5:15, 2:12] = 1
    pred = np.zeros_like(target)
    pred[25:35, 90:110] = 1
    pred[6:9, 3:5] = 1
    monkeypatch.setattr(hausdorff, "NEAR_WINDOWS", (1, 4))
    ours = metrics.hd95(pred, target, 2)
    assert ours[1] > 60
    batched = hd95_image_stats(torch.from_numpy(pred)[None], torch.from_numpy(target)[None], 2)["hd95"][0]
    np.testing.assert_allclose(batched.numpy(), ours, rtol=1e-12)
    assert_matches_monai(ours, monai_hd95(pred, target, 2))


def test_real_frames_match_monai(cityscapes_fullres):
    """Two 1024x2048 val label maps against their shifted, noisy copies (a hallucinated class or two)."""
    paths = sorted((cityscapes_fullres / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[:2]
    rng = np.random.default_rng(1)
    for path in paths:
        target = read_train_ids(str(path))
        pred = np.roll(np.where(target == IGNORE_INDEX, 0, target), (3, -2), axis=(0, 1)).astype(np.uint8)
        pred[rng.integers(0, 1000):][:20, 500:540] = rng.integers(0, 19)  # a wrong rectangle
        batched = hd95_image_stats(torch.from_numpy(pred)[None], torch.from_numpy(target)[None], 19)
        assert_matches_monai(batched["hd95"][0].numpy(), monai_hd95(pred, target, 19))
        assert int(batched["hd95_excluded"][0]) == one_sided(pred, target, 19)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(5)
    pairs = [random_pair(rng, 64, 96) for _ in range(4)]
    pred = torch.from_numpy(np.stack([p for p, _ in pairs]))
    target = torch.from_numpy(np.stack([t for _, t in pairs]))
    cpu = hd95_image_stats(pred, target, C)
    cuda = hd95_image_stats(pred.cuda(), target.cuda(), C)
    for key in cpu:
        torch.testing.assert_close(cuda[key].cpu(), cpu[key], rtol=1e-12, atol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------------- reductions
def test_dataset_value_is_the_mean_over_pairs_not_excluded():
    rng = np.random.default_rng(3)
    pairs = [random_pair(rng, 30, 40) for _ in range(4)]
    metric = SegmentationMetrics(num_classes=C)
    metric.update(torch.from_numpy(np.stack([p for p, _ in pairs])), torch.from_numpy(np.stack([t for _, t in pairs])))
    values = np.stack([metrics.hd95(p, t, C) for p, t in pairs])  # (images, classes)
    kept = [v for row in values for v in row if not math.isnan(v)]
    result = metric.compute()
    assert result["hd95"] == pytest.approx(sum(kept) / len(kept), rel=1e-12)
    per_class = [np.mean([v for v in values[:, c] if not math.isnan(v)]) if (~np.isnan(values[:, c])).any()
                 else math.nan for c in range(C)]
    np.testing.assert_allclose(result["hd95_per_class"], per_class, rtol=1e-12)
    empty = {"hd95": np.full((2, C), np.nan)}
    assert math.isnan(hd95_dataset(empty)) and np.isnan(hd95_per_class(empty)).all()
