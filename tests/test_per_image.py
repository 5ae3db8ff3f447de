"""metrics.per_image: the file round trip and its checks, and the reductions of resampled statistics against
evaluations of the resampled images."""

import numpy as np
import pytest
import torch

from metrics import SegmentationMetrics
from metrics.keys import PROFILES
from metrics.per_image import ARRAYS, dataset_metrics, per_image_path, read_per_image, subset, write_per_image
from tests.test_metrics import C, random_pair
from utils.fileio import UserError


def evaluated(pairs, names, profile="default") -> SegmentationMetrics:
    metric = SegmentationMetrics(C, profile=profile)
    for (pred, target), name in zip(pairs, names):
        metric.update(torch.as_tensor(pred)[None], torch.as_tensor(target)[None], names=[name])
    return metric


def same(a: dict, b: dict) -> bool:
    return a["metrics_profile"] == b["metrics_profile"] and all(
        np.array_equal(np.asarray(a[k], float), np.asarray(b[k], float), equal_nan=True)
        for k in a if k != "metrics_profile")


@pytest.mark.parametrize("profile", PROFILES)
def test_resampled_statistics_equal_evaluating_the_resampled_images(profile):
    rng = np.random.default_rng(0)
    pairs = [random_pair(rng) for _ in range(5)]
    names = [f"frame_{i}" for i in range(5)]
    stats = evaluated(pairs, names, profile).per_image()
    for index in ([3, 1], [0, 0, 4, 2, 2], np.arange(5) % 2 == 0):  # a subset, a bootstrap draw, a mask
        chosen = np.arange(5)[index]
        again = evaluated([pairs[i] for i in chosen], [f"{names[i]}#{k}" for k, i in enumerate(chosen)], profile)
        assert same(dataset_metrics(subset(stats, index), profile), again.compute())


def test_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    stats = evaluated([random_pair(rng) for _ in range(3)], ["a", "b", "c"]).per_image()
    path = per_image_path(tmp_path / "epoch_0010")
    assert path.name == "epoch_0010.per_image.npz"
    write_per_image(path, stats)
    back = read_per_image(path)
    assert list(back) == list(ARRAYS)
    assert all(np.array_equal(back[k], stats[k], equal_nan=back[k].dtype.kind == "f") for k in ARRAYS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left

    with pytest.raises(ValueError, match="not unique"):
        write_per_image(path, {**stats, "names": np.array(["a", "a", "c"])})
    with pytest.raises(ValueError, match=r"`boundary` has shape \(2, 19, 4\), expected \(3, 19, 4\)"):
        write_per_image(path, {**stats, "boundary": stats["boundary"][:2]})
    np.savez(path, **{k: v for k, v in stats.items() if k != "fragments"})
    with pytest.raises(UserError, match=f"{path}: per-image file lacks fragments; delete it"):
        read_per_image(path)
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UserError, match=f"{path}: corrupt per-image file"):
        read_per_image(path)
    with pytest.raises(UserError, match="no such per-image file"):
        read_per_image(tmp_path / "missing.per_image.npz")


def test_reading_needs_no_torch(python_imports):
    """report/ reads these files: metrics.per_image, metrics.keys and metrics.consensus import without torch."""
    result, modules = python_imports("-c", "import metrics.per_image, metrics.keys, metrics.consensus")
    assert result.returncode == 0, result.stderr
    assert "torch" not in modules
