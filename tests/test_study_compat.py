"""metrics.study_compat (the study's API) and the toolkit functions it adapts (fragments_per_class, majority_vote,
agreement_map) against explicit loops and scipy.ndimage.label, on random and hand-made maps."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from data_utils.labels import CITYSCAPES, THIN_CLASSES
from metrics import consensus, study_compat
from tests.test_consensus import random_maps, ref_cc_veto
from tests.test_metrics import random_pair, ref_study_boundary_f1_image, ref_study_trimap_iou_image
from utils.conventions import IGNORE_INDEX

C = 19
EIGHT = np.ones((3, 3), bool)


def ref_fragments_per_class(label_map: np.ndarray, num_classes: int = C) -> list[int]:
    return [ndimage.label(label_map == c, structure=EIGHT)[1] for c in range(num_classes)]


def ref_votes(preds, num_classes: int = C) -> tuple[np.ndarray, np.ndarray]:
    """(majority label with -1 for none, the fraction of maps that emit it), one pixel and one class at a time."""
    h, w = preds[0].shape
    label, agree = np.full((h, w), -1), np.zeros((h, w))
    for y, x in itertools.product(range(h), range(w)):
        votes = [sum(int(p[y, x] == c) for p in preds) for c in range(num_classes)]
        if max(votes) > 0:
            label[y, x] = votes.index(max(votes))  # the first (lowest) class among the ties
            agree[y, x] = max(votes) / len(preds)
    return label, agree


def random_votes(rng: np.random.Generator, n: int, h: int = 12, w: int = 15) -> list[np.ndarray]:
    """n maps over few classes (ties are common), with some ignore and out-of-range pixels."""
    classes = rng.choice(C, size=3, replace=False)
    maps = [classes[rng.integers(0, 3, (h, w))] for _ in range(n)]
    for m in maps:
        m[rng.random((h, w)) < 0.15] = IGNORE_INDEX
        m[rng.random((h, w)) < 0.03] = C + 3
    return [m.astype(np.int64) for m in maps]


@pytest.mark.parametrize("seed", range(4))
def test_fragments_per_class_matches_scipy_per_class(seed):
    rng = np.random.default_rng(seed)
    for label_map in (*random_maps(rng), random_pair(rng)[0]):
        counts = consensus.fragments_per_class(label_map, C)
        assert counts.tolist() == ref_fragments_per_class(label_map)
        assert counts.sum() == consensus.count_fragments(label_map, C)
        ours = consensus.fragments_per_class(np.where(label_map < 256, label_map, 255).astype(np.uint8), C)
        assert ours.tolist() == counts.tolist()  # the 8-bit path
        expected = {c: n for c, n in enumerate(ref_fragments_per_class(label_map)) if n}
        assert study_compat.count_fragments(label_map, num_classes=C) == expected


def test_fragments_per_class_hand_made():
    label_map = np.full((6, 7), 8)
    label_map[0:2, 0:2] = 13
    label_map[2, 2] = 13  # diagonal neighbour: the same component under 8-connectivity
    label_map[5, 6] = 13
    label_map[4, 0] = IGNORE_INDEX
    assert study_compat.count_fragments(label_map) == {8: 1, 13: 2}
    with pytest.raises(ValueError, match="connectivity=4"):
        study_compat.count_fragments(label_map, connectivity=4)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_majority_vote_and_agreement_match_loops(n):
    rng = np.random.default_rng(n)
    preds = random_votes(rng, n)
    label, agree = ref_votes(preds)
    voted = consensus.majority_vote(preds, C)
    assert voted.dtype == preds[0].dtype
    np.testing.assert_array_equal(voted, np.where(label >= 0, label, IGNORE_INDEX))
    np.testing.assert_allclose(consensus.agreement_map(preds, C), agree, rtol=1e-6)
    np.testing.assert_array_equal(study_compat.majority_vote(preds, ignore_index=254),
                                  np.where(label >= 0, label, 254))
    assert consensus.agreement_map(preds, C).dtype == np.float32
    as_uint8 = [p.astype(np.uint8) for p in preds]  # the dtype predictions travel in
    np.testing.assert_array_equal(consensus.majority_vote(as_uint8, C), voted.astype(np.uint8))


def test_majority_vote_hand_made_ties_and_voids():
    a = np.array([[3, 5, IGNORE_INDEX]])
    b = np.array([[4, 5, IGNORE_INDEX]])
    c = np.array([[IGNORE_INDEX, 2, IGNORE_INDEX]])
    assert study_compat.majority_vote([a, b, c]).tolist() == [[3, 5, IGNORE_INDEX]]  # tie 3/4 -> 3
    np.testing.assert_allclose(study_compat.agreement_map([a, b, c]), [[1 / 3, 2 / 3, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        consensus.majority_vote([], C)


@pytest.mark.parametrize("seed", range(3))
def test_cc_veto_protects_the_studys_thin_classes_by_default(seed):
    assert [CITYSCAPES.names[i] for i in study_compat.THIN_CLASSES] == list(THIN_CLASSES)
    primary, veto = random_maps(np.random.default_rng(seed))
    primary[:, 3] = 5  # a pole the veto lacks
    for protect, size in [(study_compat.THIN_CLASSES, None), ((), 40), ((2, 5), None)]:
        kwargs = {} if protect == study_compat.THIN_CLASSES else {"protect_classes": protect}
        ours = study_compat.cc_veto(primary, veto, num_classes=C, max_drop_size=size, **kwargs)
        np.testing.assert_array_equal(ours, ref_cc_veto(primary, veto, protect, size, "veto"))
    ignored = study_compat.cc_veto(primary, veto, protect_classes=(), reassign="ignore")
    np.testing.assert_array_equal(ignored, ref_cc_veto(primary, veto, (), None, "ignore"))


def ref_miou(preds, targets, num_classes: int = C) -> tuple[float, list[float]]:
    """The study's mIoU: I_c / U_c over the valid pixels of all images, 0 where U_c = 0, mean over U_c > 0."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, target in zip(preds, targets):
        for p, t in zip(pred.ravel(), target.ravel()):
            if t == IGNORE_INDEX:
                continue
            for c in range(num_classes):
                inter[c] += p == c and t == c
                union[c] += p == c or t == c
    iou = [i / u if u else 0.0 for i, u in zip(inter, union)]
    present = [v for v, u in zip(iou, union) if u]
    return (float(np.mean(present)) if present else 0.0), iou


def test_segmentation_metrics_takes_logits_and_reports_miou():
    rng = np.random.default_rng(7)
    pairs = [random_pair(rng, 20, 24) for _ in range(2)]
    preds = np.stack([np.where(p < C, p, 0) for p, _ in pairs])  # logits argmax to a class
    targets = np.stack([t for _, t in pairs])
    logits = torch.randn(2, C, 20, 24)
    logits.scatter_(1, torch.from_numpy(preds)[:, None], 10.0)  # argmax = preds
    from_logits, from_labels = study_compat.SegmentationMetrics(), study_compat.SegmentationMetrics()
    from_logits.update(logits, torch.from_numpy(targets))
    from_labels.update(torch.from_numpy(preds), torch.from_numpy(targets))
    miou, iou = ref_miou(preds, targets)
    for result in (from_logits.compute(), from_labels.compute()):
        assert math.isclose(result["mIoU"], miou, rel_tol=1e-12)
        assert result["per_class_iou"] == pytest.approx(dict(enumerate(iou)), rel=1e-12)
        assert result["metrics_profile"] == "study"
    assert study_compat.SegmentationMetrics().compute()["mIoU"] == 0.0  # nothing added: the study's 0


@pytest.mark.parametrize("seed", range(3))
def test_one_image_boundary_f1_and_trimap_match_the_study_reference(seed):
    rng = np.random.default_rng(seed)
    pred, target = random_pair(rng, 30, 36)
    for r in (1, 3):
        bf1 = study_compat.compute_boundary_f1(pred, target, distance=r, num_classes=C)["boundary_f1"]
        assert math.isclose(bf1, ref_study_boundary_f1_image(pred, target, r, C), rel_tol=1e-6, abs_tol=1e-9)
        tri = study_compat.compute_trimap_iou(pred, target, num_classes=C, width=r)["trimap_mIoU"]
        assert math.isclose(tri, ref_study_trimap_iou_image(pred, target, r, C), rel_tol=1e-9, abs_tol=1e-12)


def test_interclass_boundaries_matches_a_pixel_loop():
    _, target = random_pair(np.random.default_rng(3), 14, 17)
    h, w = target.shape
    expected = np.zeros((h, w), bool)
    for y, x in itertools.product(range(h), range(w)):
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            v, u = y + dy, x + dx
            if 0 <= v < h and 0 <= u < w and IGNORE_INDEX not in (target[y, x], target[v, u]):
                expected[y, x] |= target[y, x] != target[v, u]
    np.testing.assert_array_equal(study_compat._interclass_boundaries(target, IGNORE_INDEX), expected)
