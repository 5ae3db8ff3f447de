"""metrics.SegmentationMetrics against slow, explicit references written independently here.

The references follow the definitions word by word: per-class masks, scipy.ndimage erosion/dilation with
explicit border values, the trimap contour from a Python loop over 4-neighbours, the band from a chessboard
distance transform, and IoU from per-class pixel counts.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import metrics.segmentation as seg
from data_utils.dataset import read_train_ids
from data_utils.labels import CITYSCAPES
from metrics import SegmentationMetrics
from metrics.keys import METRIC_KEYS, PROFILES
from utils.conventions import IGNORE_INDEX

C = CITYSCAPES.num_classes  # the real frames below are Cityscapes'
R = 3


# ---------------------------------------------------------------------------------------------------------------
# Independent references (numpy / scipy, one image at a time, one class at a time)

def ref_boundary(mask: np.ndarray) -> np.ndarray:
    """mask & ~erode(mask), 3x3 square, pixels outside the image counting as inside the mask."""
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=1)
    return mask & ~eroded


def ref_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=np.ones((2 * r + 1, 2 * r + 1), bool), border_value=0)


def ref_boundary_f1_image(pred: np.ndarray, target: np.ndarray, r: int = R, num_classes: int = C) -> float | None:
    """Mean F over classes present in the valid target; None when the image has no valid pixel."""
    valid = target != IGNORE_INDEX
    scores = []
    for c in range(num_classes):
        gt = target == c
        if not gt.any():
            continue
        pr = (pred == c) & valid
        bg, bp = ref_boundary(gt), ref_boundary(pr)
        n_bg, n_bp = int(bg.sum()), int(bp.sum())
        if n_bg == 0 and n_bp == 0:
            scores.append(1.0)
            continue
        if n_bg == 0 or n_bp == 0:
            scores.append(0.0)
            continue
        precision = (bp & ref_dilate(bg, r)).sum() / n_bp
        recall = (bg & ref_dilate(bp, r)).sum() / n_bg
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores)) if scores else None


def ref_trimap_band(target: np.ndarray, r: int = R) -> np.ndarray:
    h, w = target.shape
    valid = target != IGNORE_INDEX
    contour = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if not valid[y, x]:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and valid[yy, xx] and target[yy, xx] != target[y, x]:
                    contour[y, x] = True
    if not contour.any():
        return np.zeros((h, w), bool)
    chessboard = ndimage.distance_transform_cdt(~contour, metric="chessboard")  # distance to nearest contour px
    return (chessboard <= r) & valid


def ref_intersection_union(pred: np.ndarray, target: np.ndarray, where: np.ndarray,
                           num_classes: int = C) -> np.ndarray:
    """(C, 2) per-class I_c, U_c over the pixels in `where` (valid pixels only)."""
    where = where & (target != IGNORE_INDEX)
    out = np.zeros((num_classes, 2), np.int64)
    for c in range(num_classes):
        out[c, 0] = np.sum((pred == c) & (target == c) & where)
        out[c, 1] = np.sum(((pred == c) | (target == c)) & where)
    return out


def ref_study_boundary(mask: np.ndarray) -> np.ndarray:
    """The study's B: dilate(mask) XOR erode(mask), 3x3 square, outside the image background for both."""
    square = np.ones((3, 3), bool)
    return ndimage.binary_dilation(mask, square, border_value=0) ^ ndimage.binary_erosion(mask, square, border_value=0)


def ref_study_boundary_f1_image(pred: np.ndarray, target: np.ndarray, r: int = R, num_classes: int = C) -> float:
    valid = target != IGNORE_INDEX
    scores = []
    for c in range(num_classes):
        gt = (target == c) & valid
        if not gt.any():
            continue
        bg, bp = ref_study_boundary(gt), ref_study_boundary((pred == c) & valid)
        if not bg.any() and not bp.any():
            scores.append(1.0)
            continue
        precision = (bp & ref_dilate(bg, r)).sum() / (bp.sum() + 1e-6)
        recall = (bg & ref_dilate(bp, r)).sum() / (bg.sum() + 1e-6)
        scores.append(2 * precision * recall / (precision + recall + 1e-6))
    return float(np.mean(scores)) if scores else 0.0


def ref_study_trimap_iou_image(pred: np.ndarray, target: np.ndarray, r: int = R, num_classes: int = C) -> float:
    band = ref_trimap_band(target, r)
    if not band.any():
        return 0.0
    counts = ref_intersection_union(pred, target, band, num_classes)
    return float(np.mean([i / u for i, u in counts if u > 0]))


def ref_boundary_iou_counts(pred: np.ndarray, target: np.ndarray, d: int = R, num_classes: int = C) -> np.ndarray:
    """(C, 2) |G_d & P_d|, |G_d | P_d| with d successive 3x3 erosions, outside counting as inside."""
    valid = target != IGNORE_INDEX
    out = np.zeros((num_classes, 2), np.int64)
    for c in range(num_classes):
        inner = []
        for mask in ((target == c) & valid, (pred == c) & valid):
            eroded = ndimage.binary_erosion(mask, np.ones((3, 3), bool), iterations=d, border_value=1) if d else mask
            inner.append(mask & ~eroded)
        out[c] = (inner[0] & inner[1]).sum(), (inner[0] | inner[1]).sum()
    return out


def ref_fragments(pred: np.ndarray, num_classes: int = C) -> int:
    return sum(ndimage.label(pred == c, structure=np.ones((3, 3), bool))[1] for c in range(num_classes))


def ref_metrics(preds, targets, r: int = R, profile: str = "default", num_classes: int = C) -> dict:
    n = num_classes
    iu = np.zeros((n, 2), np.int64)
    iu_band = np.zeros((n, 2), np.int64)
    iu_boundary = np.zeros((n, 2), np.int64)
    f_scores, study_f_scores, study_trimap_scores = [], [], []
    for pred, target in zip(preds, targets):
        iu += ref_intersection_union(pred, target, np.ones(target.shape, bool), n)
        iu_band += ref_intersection_union(pred, target, ref_trimap_band(target, r), n)
        iu_boundary += ref_boundary_iou_counts(pred, target, r, n)
        f = ref_boundary_f1_image(pred, target, r, n)
        if f is not None:
            f_scores.append(f)
        study_f_scores.append(ref_study_boundary_f1_image(pred, target, r, n))
        study_trimap_scores.append(ref_study_trimap_iou_image(pred, target, r, n))

    def iou(counts):
        return [counts[c, 0] / counts[c, 1] if counts[c, 1] > 0 else math.nan for c in range(n)]

    per_class, boundary_iou = iou(iu), iou(iu_boundary)
    out = {"iou": per_class, "miou": float(np.nanmean(per_class)), "boundary_iou_per_class": boundary_iou,
           "boundary_iou": float(np.nanmean(boundary_iou)) if not np.isnan(boundary_iou).all() else math.nan,
           "fragments_per_image": float(np.mean([ref_fragments(p, n) for p in preds]))}
    if profile == "default":
        out["trimap_iou"] = float(np.nanmean(iou(iu_band)))
        out["boundary_f1"] = float(np.mean(f_scores)) if f_scores else math.nan
    else:
        out["trimap_iou"], out["boundary_f1"] = float(np.mean(study_trimap_scores)), float(np.mean(study_f_scores))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Random blob maps: a few classes (others absent), blobs touching the border, ignore regions, perturbed predictions

def blob_map(rng: np.random.Generator, h: int, w: int, classes: np.ndarray) -> np.ndarray:
    """Smooth random regions: argmax over classes of blurred noise (regions touch the border naturally)."""
    noise = rng.random((len(classes), h, w))
    noise = ndimage.gaussian_filter(noise, sigma=(0, rng.uniform(2, 5), rng.uniform(2, 5)))
    return classes[noise.argmax(0)].astype(np.int64)


def random_pair(rng: np.random.Generator, h: int = 40, w: int = 56,
                num_classes: int = C) -> tuple[np.ndarray, np.ndarray]:
    classes = rng.choice(num_classes, size=rng.integers(2, 7), replace=False)
    target = blob_map(rng, h, w, classes)
    # Ignore regions: a random blob and, sometimes, a band along an image edge.
    ignore = ndimage.gaussian_filter(rng.random((h, w)), 3) > 0.53
    if rng.random() < 0.5:
        ignore[: rng.integers(1, 6)] = True
    target[ignore] = IGNORE_INDEX
    # Prediction: the target (its ignore pixels filled with noise) shifted by a few pixels, plus wrong blobs
    # of present or absent classes, plus a few out-of-range values that match no class.
    pred = np.where(ignore, rng.integers(0, num_classes, (h, w)), target)
    pred = np.roll(pred, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    wrong = ndimage.gaussian_filter(rng.random((h, w)), 2) > 0.56
    pred[wrong] = rng.choice(num_classes, size=2)[rng.integers(0, 2, int(wrong.sum()))]
    pred[rng.random((h, w)) < 0.003] = IGNORE_INDEX
    return pred.astype(np.int64), target


def run_metrics(preds, targets, num_classes: int = C, **kwargs) -> dict:
    metric = SegmentationMetrics(num_classes=num_classes, **kwargs)
    metric.update(torch.as_tensor(np.stack(preds)), torch.as_tensor(np.stack(targets)))
    return metric.compute()


def assert_metrics_close(ours: dict, ref: dict):
    for key in (k for k in METRIC_KEYS if k in ref):  # the records `ref_metrics` covers (others: their own tests)
        assert ours[key] == pytest.approx(ref[key], abs=1e-12, nan_ok=True), key
    for key in ("iou", "boundary_iou_per_class"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-12, err_msg=key)  # NaN positions must match too


# ---------------------------------------------------------------------------------------------------------------
# Against the references

@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_match_reference(seed, profile):
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng) for _ in range(3)]
    preds, targets = [p for p, _ in pairs], [t for _, t in pairs]
    assert_metrics_close(run_metrics(preds, targets, profile=profile), ref_metrics(preds, targets, profile=profile))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("boundary_px", [0, 1, 5])
def test_other_tolerances_match_reference(boundary_px, profile):
    rng = np.random.default_rng(100 + boundary_px)
    pairs = [random_pair(rng) for _ in range(2)]
    preds, targets = [p for p, _ in pairs], [t for _, t in pairs]
    ours = run_metrics(preds, targets, boundary_px=boundary_px, profile=profile)
    assert_metrics_close(ours, ref_metrics(preds, targets, r=boundary_px, profile=profile))


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (3, 4), (5, 2), (2, 2)])
def test_tiny_maps_match_reference(shape):
    """Maps smaller than the tolerance window exercise every clipping path of the erosion and dilation."""
    rng = np.random.default_rng(sum(shape))
    targets = [rng.choice([0, 1, 2, IGNORE_INDEX], size=shape).astype(np.int64) for _ in range(4)]
    preds = [rng.choice([0, 1, 2, 5], size=shape).astype(np.int64) for _ in range(4)]
    for r in (1, R, 6):
        for profile in PROFILES:
            assert_metrics_close(run_metrics(preds, targets, boundary_px=r, profile=profile),
                                 ref_metrics(preds, targets, r=r, profile=profile))


def test_cpu_row_tiles_equal_one_tile(monkeypatch):
    """Row bands with context rows give exactly the counts of the whole map (tiles of 8 rows here)."""
    rng = np.random.default_rng(7)
    pairs = [random_pair(rng, h=61, w=37) for _ in range(2)]
    pred = torch.as_tensor(np.stack([p for p, _ in pairs]))
    target = torch.as_tensor(np.stack([t for _, t in pairs]))
    whole = seg.segmentation_image_stats(pred, target, C, boundary_px=4)
    monkeypatch.setattr(seg, "CPU_TILE_PIXELS", 2 * 37 * 8)
    tiled = seg.segmentation_image_stats(pred, target, C, boundary_px=4)
    for key in seg.DEVICE_STAT_KEYS:
        assert torch.equal(whole[key], tiled[key]), key


def test_batched_equals_one_at_a_time_and_gathered_halves():
    rng = np.random.default_rng(11)
    pairs = [random_pair(rng) for _ in range(4)]
    pred = torch.as_tensor(np.stack([p for p, _ in pairs]))
    target = torch.as_tensor(np.stack([t for _, t in pairs]))
    batched = SegmentationMetrics(C)
    batched.update(pred, target)
    single = SegmentationMetrics(C)
    for i in range(4):
        single.update(pred[i], target[i])  # (H, W) works too
    # What a 2-process evaluation does: per-process stats, gathered (concatenated), then added.
    halves = SegmentationMetrics(C)
    stats = [halves.image_stats(pred[:2], target[:2]), halves.image_stats(pred[2:], target[2:])]
    host = seg.host_image_stats(pred, halves.num_classes)  # fragments, computed on the host
    halves.add_stats({**{k: torch.cat([s[k] for s in stats]) for k in stats[0]}, **host})
    assert _same(batched.compute(), single.compute())
    assert _same(batched.compute(), halves.compute())
    for key, value in batched.image_stats(pred[:2], target[:2]).items():
        torch.testing.assert_close(stats[0][key], value, rtol=0, atol=0, equal_nan=True, msg=key)


def _same(a: dict, b: dict) -> bool:
    """Equal results: the same profile and bit-identical numbers (NaN = NaN)."""
    return a["metrics_profile"] == b["metrics_profile"] and all(
        np.array_equal(np.asarray(a[k], float), np.asarray(b[k], float), equal_nan=True)
        for k in a if k != "metrics_profile")


def test_input_dtypes_agree():
    rng = np.random.default_rng(3)
    pred, target = random_pair(rng)
    pred = np.where(pred == IGNORE_INDEX, 0, pred)  # keep values in uint8 range for every dtype
    results = []
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.int16):
        metric = SegmentationMetrics(C)
        metric.update(torch.as_tensor(pred).to(dtype)[None], torch.as_tensor(target).to(dtype)[None])
        results.append(metric.compute())
    assert all(_same(results[0], r) for r in results[1:])


def test_out_of_range_values_match_no_class():
    """Predictions and targets outside 0..C-1 (here -1 and 300) behave like 'no class' / ignore."""
    rng = np.random.default_rng(5)
    pred, target = random_pair(rng)
    pred[:3, :5] = -1
    pred[-2:, -4:] = 300
    odd_target = target.copy()
    odd_target[target == IGNORE_INDEX] = -7  # another out-of-range value than 255: ignored as well
    ours = run_metrics([pred], [odd_target])
    assert_metrics_close(ours, ref_metrics([pred], [target]))


# More classes than one bit plane holds (ADE20K 150, COCO-Stuff 171): the classes go in planes of 62

@pytest.mark.parametrize("num_classes", [63, 124, 150, 255])
def test_many_classes_match_reference(num_classes):
    rng = np.random.default_rng(num_classes)
    pairs = [random_pair(rng, num_classes=num_classes) for _ in range(3)]
    preds, targets = [p for p, _ in pairs], [t for _, t in pairs]
    for profile in PROFILES:
        assert_metrics_close(run_metrics(preds, targets, num_classes, profile=profile),
                             ref_metrics(preds, targets, profile=profile, num_classes=num_classes))


def test_classes_on_both_sides_of_a_plane_edge():
    """Stripes of classes 0 | 61 | 62 | 123 | 124 | 149 (61/62 and 123/124 sit in different planes) under an
    ignore block; the prediction moves the edges, adds class 130 (absent from the target) and values 150, 255."""
    num_classes = 150
    target = np.repeat(np.array([0, 61, 62, 123, 124, 149]), 8)[None].repeat(24, 0)  # (24, 48)
    target[3:7, 18:30] = IGNORE_INDEX
    pred = np.roll(target, 1, axis=1)
    pred[12:18, 30:36] = 130
    pred[20:, :3], pred[0, 40:] = 150, IGNORE_INDEX
    for profile in PROFILES:
        ours = run_metrics([pred], [target], num_classes, profile=profile)
        assert_metrics_close(ours, ref_metrics([pred], [target], profile=profile, num_classes=num_classes))
    present = {0, 61, 62, 123, 124, 149}
    assert all(math.isnan(ours["iou"][c]) == (c not in present | {130}) for c in range(num_classes))
    assert ours["iou"][130] == 0.0 and 0 < ours["boundary_iou_per_class"][124] < 1


@pytest.mark.parametrize("classes_per_plane", [1, 4])
def test_several_planes_equal_one_plane(monkeypatch, classes_per_plane):
    """At C = 19 the counts from planes of 1 or 4 classes equal those of the single plane bit for bit."""
    rng = np.random.default_rng(17)
    pairs = [random_pair(rng) for _ in range(3)]
    pred = torch.as_tensor(np.stack([p for p, _ in pairs]))
    target = torch.as_tensor(np.stack([t for _, t in pairs]))
    one_plane = seg.segmentation_image_stats(pred, target, C)
    monkeypatch.setattr(seg, "CLASSES_PER_PLANE", classes_per_plane)
    planes = seg.segmentation_image_stats(pred, target, C)
    for key in seg.DEVICE_STAT_KEYS:
        assert torch.equal(one_plane[key], planes[key]), key


# ---------------------------------------------------------------------------------------------------------------
# Hand-made cases

def two_halves(h=32, w=48, left=0, right=1):
    target = np.full((h, w), left, np.int64)
    target[:, w // 2:] = right
    return target


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    _, target = random_pair(rng)
    pred = np.where(target == IGNORE_INDEX, 3, target)  # anything where the target is ignored
    out = run_metrics([pred], [target])
    assert out["miou"] == out["boundary_f1"] == out["trimap_iou"] == 1.0
    present = set(np.unique(target)) - {IGNORE_INDEX}
    assert all((out["iou"][c] == 1.0) == (c in present) for c in range(C))
    assert all(math.isnan(out["iou"][c]) for c in range(C) if c not in present)


@pytest.mark.parametrize("shift", [1, 2, R])
def test_shift_within_tolerance_scores_boundary_f1_one(shift):
    target = two_halves()
    pred = two_halves()
    pred[:, 24 - shift:24] = 1  # the vertical edge moves `shift` pixels left
    # Also a square object moved diagonally by `shift`: every contour pixel stays within Chebyshev distance.
    target[8:20, 4:14] = 5
    pred[8 + shift:20 + shift, 4 + shift:14 + shift] = 5
    out = run_metrics([pred], [target])
    assert out["boundary_f1"] == 1.0
    assert out["miou"] < 1.0


@pytest.mark.parametrize("shift", [R + 1, R + 2])
def test_shift_beyond_tolerance_scores_below_one(shift):
    target = two_halves()
    pred = two_halves()
    pred[:, 24 - shift:24] = 1
    out = run_metrics([pred], [target])
    assert out["boundary_f1"] < 1.0
    assert out["boundary_f1"] == pytest.approx(ref_boundary_f1_image(pred, target))
    assert out["boundary_f1"] == 0.0  # a straight edge moved past the tolerance matches nowhere


def test_class_predicted_but_absent_does_not_enter_the_image_average():
    h, w, s = 32, 48, 4
    target = two_halves(h, w)
    pred = target.copy()
    pred[10:10 + s, 5:5 + s] = 7  # class 7 is not in the target; the hole sits > R px from the edge at x=24
    out = run_metrics([pred], [target])
    # Class 0: B(P) = its edge column (h px, all matched) + the 8-connected ring around the hole (4s+4 px,
    # unmatched); B(G) = the edge column, all matched. Class 1 is perfect. Class 7 must not count.
    precision = h / (h + 4 * s + 4)
    f_class0 = 2 * precision / (precision + 1)
    assert out["boundary_f1"] == pytest.approx((f_class0 + 1.0) / 2, abs=1e-12)
    assert not math.isnan(out["iou"][7]) and out["iou"][7] == 0.0  # it does count for IoU (a false positive)


def test_empty_boundaries_and_images_without_valid_pixels():
    h, w = 16, 20
    whole = np.full((h, w), 4, np.int64)  # one class covering the image: no boundary inside the frame
    out = run_metrics([whole.copy()], [whole])
    assert out["boundary_f1"] == 1.0  # both boundaries empty -> F = 1
    assert math.isnan(out["trimap_iou"])  # no contour, no band, nothing to average

    pred = whole.copy()
    pred[5:9, 5:9] = 2
    metric = SegmentationMetrics(C)
    metric.update(torch.as_tensor(pred)[None], torch.as_tensor(whole)[None])  # B(G) empty, B(P) not -> 0
    metric.update(torch.zeros(1, h, w, dtype=torch.long), torch.full((1, h, w), IGNORE_INDEX))  # skipped
    out = metric.compute()
    assert out["boundary_f1"] == 0.0 and out["num_images"] == 2


def test_border_is_not_a_contour():
    """A class touching the image frame has no boundary along the frame (outside counts as inside)."""
    target = two_halves(10, 12)
    stats = SegmentationMetrics(C).image_stats(torch.as_tensor(target)[None], torch.as_tensor(target)[None])
    gt_boundary_px = stats["boundary"][0, :, 3]
    assert gt_boundary_px[0] == 10 and gt_boundary_px[1] == 10  # one column each side of the edge


def test_study_boundary_is_the_two_pixel_band_and_the_frame():
    """The study's B(M) = dilate(M) XOR erode(M) with outside = background: both sides of an edge, and the frame."""
    target = two_halves(10, 12)  # class 0 in columns 0..5, class 1 in 6..11
    stats = SegmentationMetrics(C).image_stats(torch.as_tensor(target)[None], torch.as_tensor(target)[None])
    # dilate(G_0) = columns 0..6; erode(G_0) = rows 1..8 x columns 1..4; B = 70 - 32 pixels
    assert stats["study_boundary"][0, 0, 3] == 10 * 7 - 8 * 4
    assert stats["boundary"][0, 0, 3] == 10  # the default's 1-px inner ring, no frame


def test_study_profile_averages_over_all_images():
    """An image without a valid pixel scores 0 in the study profile and counts in its mean; the default skips it."""
    target = two_halves()
    pred = torch.as_tensor(np.stack([target, target]))
    targets = torch.as_tensor(np.stack([target, np.full_like(target, IGNORE_INDEX)]))
    default, study = SegmentationMetrics(C), SegmentationMetrics(C, profile="study")
    default.update(pred, targets)
    study.update(pred, targets)
    assert default.compute()["boundary_f1"] == 1.0 and default.compute()["trimap_iou"] == 1.0
    # a perfect image scores 1 up to the 1e-6 guards: F = 2 p^2 / (2 p + 1e-6), p = n / (n + 1e-6)
    assert study.compute()["boundary_f1"] == pytest.approx(0.5, abs=1e-5)
    assert study.compute()["trimap_iou"] == 0.5  # the image without a band scores 0


def test_boundary_iou_of_a_shifted_edge():
    """G_d, P_d: bands of d = 3 columns on each side of the edge (the frame is no contour); a 1-px shift -> 1/2."""
    target, pred = two_halves(), two_halves()
    pred[:, 23] = 1  # the edge at column 24 moves one pixel left
    out = run_metrics([pred], [target])
    # class 0: G_d = columns 21..23, P_d = 20..22 -> I = 2 columns, U = 4; class 1 likewise
    assert out["boundary_iou_per_class"][:2] == [0.5, 0.5] and out["boundary_iou"] == 0.5
    whole = np.full((16, 20), 4, np.int64)  # one class over the image: no contour, U = 0 -> NaN
    assert math.isnan(run_metrics([whole], [whole])["boundary_iou"])


def test_ignore_transitions_are_not_trimap_contours():
    target = np.zeros((12, 30), np.int64)
    target[:, 10:20] = IGNORE_INDEX  # class 0 | ignore | class 0: no valid-valid transition anywhere
    target[:, 20:] = 1  # ... except none either: ignore separates 0 and 1
    pred = np.ones_like(target)
    stats = SegmentationMetrics(C).image_stats(torch.as_tensor(pred)[None], torch.as_tensor(target)[None])
    assert stats["trimap_confusion"].sum() == 0
    assert stats["confusion"].sum() == 12 * 20


def test_empty_metric_and_bad_inputs():
    out = SegmentationMetrics(C).compute()
    assert out["num_images"] == 0 and math.isnan(out["miou"]) and len(out["iou"]) == C
    for num_classes in (0, seg.MAX_CLASSES + 1):  # uint8 label maps: train ids 0..254, 255 = ignore
        with pytest.raises(ValueError, match="1..255 supported"):
            SegmentationMetrics(num_classes)
    metric = SegmentationMetrics(C)
    with pytest.raises(ValueError):
        metric.update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------
# Real data

def _sample_frame(cityscapes_sample):
    gt_path = next((cityscapes_sample / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    target = read_train_ids(str(gt_path)).astype(np.int64)
    # A plausible prediction: shifted by a few pixels, ignore pixels predicted as road, a wrong block.
    pred = np.roll(np.where(target == IGNORE_INDEX, 0, target), (2, -3), axis=(0, 1))
    pred[40:70, 100:160] = 13
    return gt_path, pred, target


def test_real_frame_matches_numpy_confusion_matrix(cityscapes_sample):
    _, pred, target = _sample_frame(cityscapes_sample)
    valid = target != IGNORE_INDEX
    confusion = np.zeros((C, C), np.int64)
    np.add.at(confusion, (target[valid], pred[valid]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    out = run_metrics([pred], [target])
    np.testing.assert_allclose(out["iou"], iou, atol=1e-12)
    assert out["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert_metrics_close(out, ref_metrics([pred], [target]))


def official_scores(pairs, gt_paths, tmp_path, monkeypatch) -> dict:
    """cityscapesScripts' pixel-level evaluator on predictions written as labelIds PNGs."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))  # the module reads it at import time
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev  # installed by requirements.txt

    pred_paths = []
    for (pred, _), gt_path in zip(pairs, gt_paths):
        pred_paths.append(tmp_path / gt_path.name.replace("_gtFine_labelIds", "_pred"))
        Image.fromarray(CITYSCAPES.to_label_ids(pred)).save(pred_paths[-1])
    args = ev.CArgs()
    for name, value in vars(ev.args).items():
        setattr(args, name, value)
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, False
    return ev.evaluateImgLists([str(p) for p in pred_paths], [str(p) for p in gt_paths], args)


def assert_equals_official(pairs, official):
    out = run_metrics([p for p, _ in pairs], [t for _, t in pairs])
    for c, name in enumerate(CITYSCAPES.names):
        assert out["iou"][c] == pytest.approx(official["classScores"][name], abs=1e-12, nan_ok=True), name
    assert out["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)


def test_real_frame_matches_cityscapesscripts(cityscapes_sample, tmp_path, monkeypatch):
    gt_path, pred, target = _sample_frame(cityscapes_sample)
    assert_equals_official([(pred, target)], official_scores([(pred, target)], [gt_path], tmp_path, monkeypatch))


def perturbed(target: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """A plausible prediction: ignore pixels predicted as road, then shifted, noisy or with wrong blocks."""
    pred = np.where(target == IGNORE_INDEX, 0, target)
    if kind == "shifted":
        return np.roll(pred, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
    if kind == "noisy":
        noise = rng.random(pred.shape) < 0.02
        pred[noise] = rng.integers(0, C, int(noise.sum()))
        return pred
    h, w = pred.shape  # "blocked": wrong rectangles, some of classes absent from the frame
    for _ in range(12):
        y, x = rng.integers(0, h - 64), rng.integers(0, w - 64)
        pred[y:y + rng.integers(16, 200), x:x + rng.integers(16, 300)] = rng.integers(0, C)
    return pred


def test_real_val_maps_match_cityscapesscripts(cityscapes_fullres, tmp_path, monkeypatch):
    """The 15 real 1024x2048 val maps with shifted, noisy and blocked predictions (5 each), pooled as the
    official evaluator pools them."""
    gt_paths = sorted((cityscapes_fullres / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    assert len(gt_paths) == 15
    rng = np.random.default_rng(0)
    pairs = []
    for i, gt_path in enumerate(gt_paths):
        target = read_train_ids(str(gt_path)).astype(np.int64)
        pairs.append((perturbed(target, rng, ("shifted", "noisy", "blocked")[i % 3]), target))
    assert_equals_official(pairs, official_scores(pairs, gt_paths, tmp_path, monkeypatch))


# ---------------------------------------------------------------------------------------------------------------
# Devices

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("num_classes", [C, 150])
def test_cuda_equals_cpu(num_classes):
    rng = np.random.default_rng(21)
    pairs = [random_pair(rng, 64, 96, num_classes) for _ in range(3)]
    pred = torch.as_tensor(np.stack([p for p, _ in pairs]))
    target = torch.as_tensor(np.stack([t for _, t in pairs]))
    cpu, cuda = SegmentationMetrics(num_classes), SegmentationMetrics(num_classes)
    cpu.update(pred, target)
    stats = cuda.image_stats(pred.cuda(), target.cuda())
    assert all(v.device.type == "cuda" for v in stats.values())
    cuda.add_stats(stats)
    assert _same(cpu.compute(), cuda.compute())
