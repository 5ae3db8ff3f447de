"""metrics.consensus (count_fragments, cc_veto) against explicit scipy.ndimage.label loops, one class and one
component at a time, on random and real label maps."""
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from data_utils.labels import CITYSCAPES, THIN_CLASSES
from metrics.consensus import cc_veto, count_fragments
from utils.conventions import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]

C = CITYSCAPES.num_classes
THIN = tuple(CITYSCAPES.names.index(name) for name in THIN_CLASSES)  # (4, 5, 6, 7): fence, pole, lights, signs
EIGHT = np.ones((3, 3), bool)


def ref_fragments(label_map: np.ndarray, num_classes: int = C) -> int:
    return sum(ndimage.label(label_map == c, structure=EIGHT)[1] for c in range(num_classes))


def ref_cc_veto(primary, veto, protect, max_drop_size, reassign) -> np.ndarray:
    out = primary.copy()
    for c in range(C):
        if c in protect:
            continue
        components, _ = ndimage.label(primary == c, structure=EIGHT)
        for k, box in enumerate(ndimage.find_objects(components), start=1):  # each component's bounding box
            component = components[box] == k
            if (veto[box][component] == c).any():
                continue
            if max_drop_size is not None and component.sum() > max_drop_size:
                continue
            out[box][component] = veto[box][component] if reassign == "veto" else IGNORE_INDEX
    return out


def random_maps(rng: np.random.Generator, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of a few classes (fragments of every size) and a veto that agrees on most of them."""
    classes = rng.choice(C, size=6, replace=False)
    noise = ndimage.gaussian_filter(rng.random((6, h, w)), sigma=(0, 2, 2))
    primary = classes[noise.argmax(0)]
    speckle = rng.random((h, w)) < 0.02  # single-pixel fragments, some of a protected class
    primary[speckle] = rng.choice([*classes, 5], size=int(speckle.sum()))
    veto = np.roll(primary, (2, -1), axis=(0, 1))
    veto[ndimage.gaussian_filter(rng.random((h, w)), 3) > 0.55] = classes[0]
    primary[:2, :3] = IGNORE_INDEX  # values outside 0..C-1 belong to no component
    return primary.astype(np.uint8), veto.astype(np.uint8)


def real_maps(cityscapes_fullres, count: int = 2):
    paths = sorted((cityscapes_fullres / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[:count]
    rng = np.random.default_rng(1)
    for path in paths:
        target = CITYSCAPES.to_train_ids(np.array(Image.open(path)), str(path), "fix")
        primary = np.where(target == IGNORE_INDEX, 0, target).astype(np.uint8)
        noise = rng.random(primary.shape) < 0.003
        primary[noise] = rng.integers(0, C, int(noise.sum()))
        veto = np.roll(primary, (3, 2), axis=(0, 1))
        yield primary, veto


OPTIONS = list(itertools.product((None, 6), ("veto", "ignore")))  # max_drop_size x reassign


@pytest.mark.parametrize("seed", range(4))
def test_random_maps_match_scipy_loops(seed):
    primary, veto = random_maps(np.random.default_rng(seed))
    assert count_fragments(primary, C) == ref_fragments(primary)
    assert count_fragments(primary.astype(np.int64), C) == ref_fragments(primary)  # any integer dtype
    for max_drop_size, reassign in OPTIONS:
        for protect in (THIN, ()):
            ours = cc_veto(primary, veto, C, protect=protect, max_drop_size=max_drop_size, reassign=reassign)
            ref = ref_cc_veto(primary, veto, protect, max_drop_size, reassign)
            np.testing.assert_array_equal(ours, ref, err_msg=f"{max_drop_size} {reassign} {protect}")
            assert ours.dtype == primary.dtype


def test_real_maps_match_scipy_loops(cityscapes_fullres):
    for primary, veto in real_maps(cityscapes_fullres):
        assert count_fragments(primary, C) == ref_fragments(primary)
        for max_drop_size, reassign in OPTIONS:
            ours = cc_veto(primary, veto, C, THIN, max_drop_size=max_drop_size and 400, reassign=reassign)
            np.testing.assert_array_equal(ours, ref_cc_veto(primary, veto, THIN, max_drop_size and 400,
                                                            reassign))


def test_hand_made_veto():
    primary = np.zeros((6, 8), np.uint8)
    primary[1:3, 1:3] = 13  # a car the veto sees (one shared pixel suffices)
    primary[4, 6] = 13  # a one-pixel car the veto does not see
    primary[0, 7] = 5  # a pole the veto does not see: protected
    veto = np.zeros_like(primary)
    veto[2, 2] = 13
    out = cc_veto(primary, veto, C, THIN)
    assert out[4, 6] == 0 and (out[1:3, 1:3] == 13).all() and out[0, 7] == 5
    assert cc_veto(primary, veto, C)[0, 7] == 0  # unprotected, the unsupported pole goes too
    assert cc_veto(primary, veto, C, THIN, reassign="ignore")[4, 6] == IGNORE_INDEX
    assert cc_veto(primary, veto, C, THIN, max_drop_size=0)[4, 6] == 13  # larger than the limit: kept
    assert count_fragments(primary, C) == 4  # road (one piece around the others), two cars, a pole
    assert primary[4, 6] == 13  # inputs untouched


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        cc_veto(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), C)
    with pytest.raises(ValueError, match="reassign='drop': use one of veto, ignore"):
        cc_veto(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), C, reassign="drop")
    with pytest.raises(ValueError, match="integer"):
        count_fragments(np.zeros((4, 4)), C)


def test_bench_consensus_runs_on_real_maps(cityscapes_fullres):
    """bench/bench_consensus.py checks cc_veto and count_fragments against its scipy procedures on real maps
    before it times them, and prints both rows (the figures themselves go to BENCHMARKS.md, not into a test)."""
    proc = subprocess.run([sys.executable, "bench/bench_consensus.py", "--data", str(cityscapes_fullres),
                           "--images", "1", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cc_veto: " in proc.stdout and "count_fragments: " in proc.stdout
