"""The metric record contract (`metrics.registry`): every registered metric reaches results.json, the per-image
file, the console table, the W&B row and per-class table, train.py's epoch line, the image bootstrap's table and
figure, the viewer's curves and per-class panels, iterated over the registry rather than named one by one (a new
record is covered without touching this file)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rich.console import Console

import train
from engine.config import TrainConfig
from engine.results import metrics_table, read_results, results_path, write_results
from engine.tracking import val_metrics_row
from metrics import SegmentationMetrics
from metrics.keys import val_key
from metrics.per_image import ARRAYS, dataset_metrics, per_image_path, read_per_image
from metrics.registry import METRICS, UNITS, Metric, metric
from report import figures
from report.bootstrap import BOOTSTRAP_METRICS, PROFILE_METRICS
from report.load import Study, load_per_image, load_runs_dir
from report.tables import bootstrap_table
from utils.fileio import atomic_write_json

C = 4
CLASSES = ["road", "car", "pole", "sky"]
EPOCH = 1


def blocky_maps(rng: np.random.Generator, n: int = 4) -> np.ndarray:
    """(n, 24, 32) uint8 maps of 4x4 blocks of random classes, a few ignored blocks."""
    blocks = rng.integers(0, C, size=(n, 6, 8))
    blocks[rng.random(blocks.shape) < 0.08] = 255
    return np.kron(blocks, np.ones((4, 4), np.int64)).astype(np.uint8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs (variants X and Y, seed 0) evaluated at epoch 1 on the same 4 images: {variant: (results file,
    evaluate_model-like metrics)} below a runs folder."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    target = blocky_maps(rng)
    out = {}
    for variant, flip in (("X", 0.1), ("Y", 0.3)):
        pred = np.where(rng.random(target.shape) < flip, rng.integers(0, C, target.shape), target).astype(np.uint8)
        metric_ = SegmentationMetrics(num_classes=C, class_names=CLASSES)
        metric_.update(torch.from_numpy(pred), torch.from_numpy(target), names=[f"img{i}" for i in range(4)])
        metrics = {**metric_.compute(), "per_image": metric_.per_image(), "classes": CLASSES}
        ckpt = root / f"{variant}_seed0" / "checkpoints" / f"epoch_{EPOCH:04d}"
        ckpt.mkdir(parents=True)
        path = results_path(ckpt)
        write_results(path, metrics, cfg=TrainConfig(), epoch=EPOCH, checkpoint=ckpt, split="val", seconds=1.0)
        record = json.loads(path.read_text())
        atomic_write_json(path, {**record, "variant": variant})
        out[variant] = (path, metrics)
    return root, out


def test_registry_is_flat_unique_and_loud():
    keys = [m.key for m in METRICS]
    assert len(set(keys)) == len(keys) and all(isinstance(m, Metric) and m.unit in UNITS for m in METRICS)
    arrays = [name for m in METRICS for name in m.file_arrays]
    assert len(set(arrays)) == len(arrays), "two records own one per-image array"
    with pytest.raises(KeyError, match="valid metrics: miou, boundary_f1"):
        metric("no_such_metric")
    with pytest.raises(ValueError, match="unknown unit"):
        Metric("x", "X", "X", "percent", {}, "m:f", reduce=lambda s: 0.0, resample=None)


def test_every_record_reaches_results_json_and_the_per_image_file(runs):
    _, evaluated = runs
    for path, metrics in evaluated.values():
        record = read_results(path)
        stats = read_per_image(per_image_path(path.with_name(path.name.removesuffix(".results.json"))))
        assert list(stats) == list(ARRAYS)
        reduced = dataset_metrics(stats, record["metrics_profile"])
        for m in METRICS:
            assert set(m.file_arrays) <= set(stats), m.key
            assert record[m.key] == pytest.approx(metrics[m.key], rel=1e-12, nan_ok=True), m.key
            assert reduced[m.key] == pytest.approx(record[m.key], rel=1e-12, nan_ok=True), m.key
            if m.per_class is not None:
                assert list(record[m.per_class]) == CLASSES, m.key
                np.testing.assert_allclose(list(record[m.per_class].values()), metrics[m.per_class], rtol=1e-12)


def test_every_record_reaches_the_wandb_row_the_epoch_line_and_the_console_table(runs):
    _, evaluated = runs
    metrics = evaluated["X"][1]
    row = val_metrics_row(metrics)
    line = train.epoch_summary({"epoch": 1, "train/loss": 1.0, "train/lr": 1e-3, "train/images_per_s": 2.0,
                                "train/epoch_seconds": 3.0, **row}, epochs=2)
    table = metrics_table({"last": row}, "validation", prefix="val/")
    console = Console(record=True, width=200)
    console.print(table)
    rows = console.export_text().splitlines()
    for m in METRICS:
        assert row[val_key(m.key)] == pytest.approx(metrics[m.key], nan_ok=True), m.key
        assert f" {m.short} {m.show(metrics[m.key])}" in line, m.key
        assert any(r.strip("│ ").startswith(m.label) and m.show(metrics[m.key]) in r for r in rows), m.key


def test_every_record_reaches_the_bootstrap_table_and_figure(runs, monkeypatch, tmp_path):
    root, _ = runs
    study = Study.from_records(load_runs_dir(root))
    per_image, profile = load_per_image(study, EPOCH)
    assert set(PROFILE_METRICS[profile]) == {m.key for m in METRICS}
    assert set(PROFILE_METRICS[profile].values()) <= set(BOOTSTRAP_METRICS)
    table, results = bootstrap_table(study, EPOCH, per_image, profile, num_replicates=20, seed=0)
    assert {row[0] for row in table.rows} == {m.label for m in METRICS}
    assert set(results) == {m.key for m in METRICS}
    titles = []
    monkeypatch.setattr(figures, "_save",
                        lambda fig, path, formats=(): titles.extend(ax.get_title() for ax in fig.axes))
    figures.plot_bootstrap(results, tmp_path / "bootstrap.png")
    assert {m.label for m in METRICS} <= set(titles)


def test_every_record_reaches_the_viewer_and_the_wandb_per_class_table(runs):
    from engine.tracking import per_class_table
    from report.viewer import curves_data, per_class_data

    root, evaluated = runs
    study = Study.from_records(load_runs_dir(root))
    per_class_records = [m for m in METRICS if m.per_class is not None]
    assert [c["key"] for c in curves_data(study, None, EPOCH, "normal")["metrics"]] == [m.key for m in METRICS]
    assert [c["key"] for c in per_class_data(study, EPOCH)["metrics"]] == [m.key for m in per_class_records]
    table = per_class_table(evaluated["X"][1])
    assert table.columns == ["class", *(m.per_class for m in per_class_records)]
    assert [row[0] for row in table.data] == CLASSES
