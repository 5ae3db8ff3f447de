"""The viewer's Images panel (report/viewer_images.py, report/viewer_assets/40_images.js): the per-image values
and the Δ order against explicit loops over the per-image files, the band against the metrics' own counts,
label maps shipped exactly, and a corrupt sample file turning the panel off with one line."""
from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aggregate

from engine.config import TrainConfig
from engine.samples import read_predictions, read_sample_set, write_predictions, write_sample_set
from engine.results import results_path, write_results
from metrics import SegmentationMetrics
from metrics.band import trimap_band
from metrics.per_image import dataset_metrics, image_values, per_image_path, read_per_image, subset
from metrics.registry import METRICS
from report.load import Study, load_runs_dir
from report.viewer import VIEWER_FILE
from report.viewer_images import PANEL_ID, delta_order, image_panel_data, thumb_index
from utils.fileio import atomic_write_json

C = 4
CLASSES = ["road", "car", "pole", "sky"]
PALETTE = [[128, 64, 128], [0, 0, 142], [153, 153, 153], [70, 130, 180]]
EPOCH = 2
GROUPS = {"A": 0.30, "B": 0.20, "C": 0.12, "D": 0.06}  # group -> fraction of pixels predicted wrong
SEEDS = (1, 2)
NUM_IMAGES, SAMPLED = 10, 4
H, W = 72, 112


def scene_maps(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, H, W) uint8 train ids: horizontal bands of classes with a ragged edge, a pole, an ignored blob."""
    maps = np.zeros((n, H, W), np.uint8)
    for k in range(n):
        horizon = rng.integers(H // 4, H // 2) + np.cumsum(rng.integers(-1, 2, size=W)) // 2
        rows = np.arange(H)[:, None]
        maps[k] = np.where(rows < horizon, 3, 0)
        x0, y0 = rng.integers(0, W - W // 4), rng.integers(H // 2, H - H // 4)
        maps[k, y0:y0 + H // 5, x0:x0 + W // 5] = 1
        maps[k, :, rng.integers(2, W - 2)] = 2
        y1, x1 = rng.integers(0, H - 6), rng.integers(0, W - 6)
        maps[k, y1:y1 + 6, x1:x1 + 6] = 255
    return maps


def photo(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: a darkened shade of each pixel's class colour, a vertical gradient and a little noise."""
    colours = np.array(PALETTE + [[40, 40, 40]] * (256 - C), np.float64)
    shade = 0.55 * colours[target] + 40 * np.linspace(0, 1, H)[:, None, None]
    return np.clip(shade + rng.normal(0, 6, shade.shape), 0, 255).astype(np.uint8)


def predict(rng: np.random.Generator, target: np.ndarray, wrong: float) -> np.ndarray:
    """A prediction: the target shifted by up to two pixels, blobs of other classes covering about a fraction
    `wrong` of the image, and a few scattered wrong pixels."""
    pred = np.roll(target, tuple(rng.integers(-2, 3, 2)), axis=(-2, -1)).copy()
    h, w = pred.shape
    for _ in range(rng.poisson(wrong * h * w / 60)):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        pred[y:y + rng.integers(3, 10), x:x + rng.integers(3, 12)] = rng.integers(0, C)
    flip = rng.random(pred.shape) < wrong / 10
    pred[flip] = rng.integers(0, C, size=int(flip.sum()))
    pred[pred == 255] = 0  # a model predicts a class everywhere
    return pred


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four groups x two seeds evaluated at epoch 2 on the same 10 images (results, per-image files) with the
    predictions of 4 sampled images kept: the runs folder."""
    root = tmp_path_factory.mktemp("viewer_images")
    rng = np.random.default_rng(0)
    names = [f"frame_{i:02d}" for i in range(NUM_IMAGES)]
    targets = scene_maps(rng, NUM_IMAGES)
    photos = {n: photo(rng, t) for n, t in zip(names, targets)}
    sampled = names[1:1 + SAMPLED]
    for group, wrong in GROUPS.items():
        for seed in SEEDS:
            preds = np.stack([predict(rng, t, wrong * rng.uniform(0.5, 1.5)) for t in targets])
            metric = SegmentationMetrics(num_classes=C, class_names=CLASSES)
            metric.update(torch.from_numpy(preds), torch.from_numpy(targets), names=names)
            metrics = {**metric.compute(), "per_image": metric.per_image(), "classes": CLASSES}
            run = root / f"{group}_seed{seed}"
            ckpt = run / "checkpoints" / f"epoch_{EPOCH:04d}"
            ckpt.mkdir(parents=True)
            path = results_path(ckpt)
            write_results(path, metrics, cfg=TrainConfig(seed=seed), epoch=EPOCH, checkpoint=ckpt, split="val",
                          seconds=1.0)
            atomic_write_json(path, {**json.loads(path.read_text()), "variant": group})
            frames = dict(zip(names, targets))
            write_sample_set(run, "val", sampled, CLASSES, PALETTE, lambda n: (photos[n], frames[n]))
            write_predictions(path, "val", {n: p for n, p in zip(names, preds) if n in sampled}, PALETTE)
    return root


@pytest.fixture(scope="module")
def panel(runs):
    absent = {}
    data = image_panel_data(Study.from_records(load_runs_dir(runs)), runs, EPOCH, absent)
    assert data is not None, absent
    return data


def decode(uri: str) -> np.ndarray:
    """A data URI's image as an array; a grey map stored as RGB (WebP) as its first channel."""
    header, payload = uri.split(",", 1)
    array = np.array(Image.open(io.BytesIO(base64.b64decode(payload))))
    if array.ndim == 3:
        assert (array == array[..., :1]).all()  # grey: R = G = B
        array = array[..., 0]
    return array


# ---------------------------------------------------------------------------------------------------- numbers
def test_image_values_are_each_image_alone(runs):
    stats = read_per_image(per_image_path(runs / "A_seed1" / "checkpoints" / f"epoch_{EPOCH:04d}"))
    for profile in ("default", "study"):
        values = image_values(stats, profile)
        for i in range(NUM_IMAGES):
            alone = dataset_metrics(subset(stats, [i]), profile)
            for m in METRICS:
                assert values[m.key][i] == pytest.approx(alone[m.key], rel=1e-12, nan_ok=True), (m.key, i)


def test_image_values_by_hand():
    """A perfect image and an image predicted as the wrong one of two classes everywhere."""
    target = np.zeros((2, 8, 8), np.uint8)
    target[:, :, 4:] = 1
    pred = target.copy()
    pred[1] = 1 - target[1]
    metric = SegmentationMetrics(num_classes=2, boundary_px=1)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    values = image_values(metric.per_image(), "default")
    np.testing.assert_array_equal(values["miou"], [1.0, 0.0])
    np.testing.assert_array_equal(values["trimap_iou"], [1.0, 0.0])
    np.testing.assert_array_equal(values["boundary_iou"], [1.0, 0.0])


def explicit_deltas(runs: Path, names: list[str], x: str, y: str, key: str) -> dict[str, float]:
    """Per sampled image: the mean over X's seeds of the metric on that image alone (from its per-image file,
    image by image) minus Y's."""
    def group_mean(group: str, name: str) -> float:
        total, count = 0.0, 0
        for seed in SEEDS:
            stats = read_per_image(per_image_path(runs / f"{group}_seed{seed}" / "checkpoints" / f"epoch_{EPOCH:04d}"))
            i = stats["names"].tolist().index(name)
            value = dataset_metrics(subset(stats, [i]), "default")[key]
            if not math.isnan(value):
                total, count = total + value, count + 1
        return total / count if count else math.nan
    return {n: group_mean(x, n) - group_mean(y, n) for n in names}


def check_order(order: list[str], deltas: dict[str, float], names: list[str]) -> None:
    """`order` sorts `deltas` descending, NaN last, equal Δ (up to rounding) in sample order."""
    assert sorted(order) == sorted(names)
    finite = [n for n in order if not math.isnan(deltas[n])]
    assert order[len(finite):] == [n for n in names if math.isnan(deltas[n])]
    for a, b in zip(finite, finite[1:]):
        assert deltas[a] >= deltas[b] - 1e-12
        if abs(deltas[a] - deltas[b]) <= 1e-12:
            assert names.index(a) < names.index(b)


@pytest.mark.parametrize("x, y", [("D", "A"), ("C", "B"), ("A", "D")])
def test_delta_order_equals_an_explicit_loop_over_the_per_image_files(runs, panel, x, y):
    for m in METRICS:
        deltas = explicit_deltas(runs, panel["names"], x, y, m.key)
        order = delta_order(panel, x, y, m.key)
        check_order(order, deltas, panel["names"])
    assert len(set(delta_order(panel, x, y, "miou"))) == SAMPLED


def test_band_is_the_one_the_metrics_count_over():
    rng = np.random.default_rng(1)
    for r in (0, 1, 3):
        target = scene_maps(rng, 3)
        target[0, :5] = rng.integers(0, C, size=(5, W))  # noisy rows: many contours
        pred = np.stack([predict(rng, t, 0.2) for t in target])
        metric = SegmentationMetrics(num_classes=C, boundary_px=r)
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
        trimap = metric.per_image()["trimap_confusion"]  # (n, C, C+1) counted over the band
        for k in range(3):
            band = trimap_band(target[k], C, r)
            expected = np.zeros((C, C + 1), np.int64)
            np.add.at(expected, (target[k][band], np.minimum(pred[k][band], C)), 1)
            np.testing.assert_array_equal(trimap[k], expected)
    # by hand: two classes side by side, an ignored column between does not make a contour
    target = np.zeros((3, 8), np.uint8)
    target[:, 4:] = 1
    np.testing.assert_array_equal(trimap_band(target, 2, 0)[0], [0, 0, 0, 1, 1, 0, 0, 0])  # both sides
    np.testing.assert_array_equal(trimap_band(target, 2, 1)[0], [0, 0, 1, 1, 1, 1, 0, 0])
    target[:, 4] = 255
    assert not trimap_band(target, 2, 1).any()


def test_label_maps_and_band_travel_exactly(runs, panel):
    run = runs / "C_seed2"
    labels = {n: np.array(Image.open(run / "samples" / f"{n}_gt.png")) for n in panel["names"]}
    preds_dir = run / "checkpoints" / f"epoch_{EPOCH:04d}.samples"
    for image, pred in zip(panel["images"], panel["preds"]["C"]["2"]):
        label = labels[image["name"]]
        rows, cols = thumb_index(*label.shape)
        np.testing.assert_array_equal(decode(image["full"]["label"]), label)
        np.testing.assert_array_equal(decode(image["thumb"]["label"]), label[np.ix_(rows, cols)])
        band = trimap_band(label, C, 3)
        np.testing.assert_array_equal(decode(image["full"]["band"]), band)
        np.testing.assert_array_equal(decode(image["thumb"]["band"]), band[np.ix_(rows, cols)])
        full = np.array(Image.open(preds_dir / f"{image['name']}.png"))
        np.testing.assert_array_equal(decode(pred["full"]), full)
    assert panel["classes"] == {"names": CLASSES, "palette": PALETTE, "ignore_index": 255}
    assert panel["groups"] == list(GROUPS) and panel["num_images"] == NUM_IMAGES


def test_thumbnail_pixels_are_centres():
    rows, cols = thumb_index(1024, 2048)
    assert (len(rows), len(cols)) == (256, 512) and rows[0] == 2 and cols[-1] == 2046  # (511 + 0.5) * 4
    rows, cols = thumb_index(40, 56)
    np.testing.assert_array_equal(rows, np.arange(40))


# ---------------------------------------------------------------------------------------------------- absent
def test_panel_absent_from_csv_and_without_samples(tmp_path, runs):
    absent = {}
    assert image_panel_data(None, None, EPOCH, absent) is None and "tidy CSV" in absent[PANEL_ID]
    study = Study.from_records(load_runs_dir(runs))
    absent = {}
    assert image_panel_data(study, runs, EPOCH + 1, absent) is None
    assert "no run at epoch 3" in absent[PANEL_ID] and "evaluate.py --all" in absent[PANEL_ID]


def test_corrupt_sample_file_turns_the_panel_off_with_one_line(tmp_path, runs):
    import shutil
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    bad = copy / "B_seed1" / "checkpoints" / f"epoch_{EPOCH:04d}.samples" / "frame_02.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    absent = {}
    assert image_panel_data(Study.from_records(load_runs_dir(copy)), copy, EPOCH, absent) is None
    reason = absent[PANEL_ID]
    assert "\n" not in reason and str(bad) in reason and "evaluate.py" in reason


# ---------------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def report_dir(runs, tmp_path_factory):
    """aggregate.py on the four-group runs folder: the report with its viewer.html."""
    out = tmp_path_factory.mktemp("viewer_images_report")
    aggregate.main([str(runs), "--out", str(out), "--bootstrap", "0"])
    return out


def page_order(page) -> list[str]:
    return page.eval_on_selector_all("#images-rows .images-row", "rows => rows.map(r => r.dataset.name)")


def test_sorting_by_delta_in_the_browser_follows_the_per_image_files(runs, report_dir, viewer_browser, tmp_path):
    page = viewer_browser.open_viewer(report_dir / VIEWER_FILE)
    viewer_browser.show_panel(PANEL_ID)
    names = page_order(page)
    assert sorted(names) == sorted(page.evaluate("VIEWER.data.images.names"))
    for key in ("boundary_f1", "miou", "fragments_per_image"):
        for x, y in (("D", "A"), ("B", "C")):
            page.select_option("#images-metric", key)
            page.select_option("#images-x", x)
            page.select_option("#images-y", y)
            order = page_order(page)
            check_order(order, explicit_deltas(runs, names, x, y, key), page.evaluate("VIEWER.data.images.names"))
            # which sign is a gain: the record's higher_is_better (fragments: lower is better)
            better = "lower is better" if key == "fragments_per_image" else "higher is better"
            assert better in page.inner_text("#images-note")
    page.select_option("#images-order", "asc")
    assert page_order(page) == list(reversed(order)) or len(set(order)) < SAMPLED
    page.select_option("#images-order", "desc")
    # the error view: wrong pixels red, wrong pixels inside the band yellow, exactly where the shipped maps say
    page.select_option("#images-view", "errors")
    check_error_view(page, runs)
    page.select_option("#images-seed-3", "2")  # D's other seed: its prediction and its per-image values
    check_error_view(page, runs)
    shown_miou = page.eval_on_selector_all("#images-rows .images-row .images-metrics", "boxes => boxes.map(b => "
                                           "b.querySelector('tr').lastChild.textContent)")[3]  # row 1, group D
    first = page_order(page)[0]
    stats = read_per_image(per_image_path(runs / "D_seed2" / "checkpoints" / f"epoch_{EPOCH:04d}"))
    alone = dataset_metrics(subset(stats, [stats["names"].tolist().index(first)]), "default")["miou"]
    assert shown_miou == f"{100 * alone:.2f} %"
    # the controls redraw without error; a click opens the full size, Esc closes it
    page.fill("#images-opacity", "80")
    page.click("#images-rows .images-row canvas >> nth=3")
    page.wait_for_selector("#images-modal[data-ready='1']")
    width = page.evaluate("document.getElementById('images-full-canvas').width")
    assert width == W
    page.keyboard.press("Escape")
    assert page.query_selector("#images-modal") is None
    page.select_option("#images-view", "overlay")
    page.select_option("#images-metric", "boundary_f1")
    page.select_option("#images-x", "D")
    page.select_option("#images-y", "A")
    screenshot(page, tmp_path)
    viewer_browser.check_clean()


CANVAS_PIXELS = """(canvas) => [canvas.height, canvas.width,
    Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data)]"""


def check_error_view(page, runs: Path) -> None:
    """Group D's cell of the first row, in the errors view, against the sample files: red where the prediction
    differs from a valid ground-truth pixel outside the Trimap band, yellow inside it, grey elsewhere."""
    name = page_order(page)[0]
    seed = page.eval_on_selector("#images-seed-3", "s => s.value")
    row = page.query_selector(f"#images-rows .images-row[data-name='{name}']")
    h, w, flat = row.query_selector_all("canvas")[2 + list(GROUPS).index("D")].evaluate(CANVAS_PIXELS)
    rgb = np.array(flat, np.uint8).reshape(h, w, 4)[..., :3]
    label = read_sample_set(runs / f"D_seed{seed}").label(name)
    pred = read_predictions(runs / f"D_seed{seed}" / "checkpoints" / f"epoch_{EPOCH:04d}.results.json").pred(name)
    assert (h, w) == label.shape  # small images are their own thumbnails
    wrong = (label != 255) & (pred != label)
    band = trimap_band(label, C, 3)
    assert wrong.any() and (wrong & band).any() and (wrong & ~band).any()
    np.testing.assert_array_equal(np.all(rgb == [255, 200, 0], -1), wrong & band)
    np.testing.assert_array_equal(np.all(rgb == [214, 39, 40], -1), wrong & ~band)
    assert (rgb[~wrong] == rgb[~wrong][:, :1]).all()  # grey


def screenshot(page, tmp_path: Path) -> None:
    """The panel as drawn: under tmp_path, and as a small PNG under $VIEWER_SCREENSHOTS when set (docs/img, shown
    in docs/report.md: `VIEWER_SCREENSHOTS=docs/img pytest tests/test_viewer_images.py -k browser`)."""
    full = tmp_path / "full_images.png"
    page.screenshot(path=str(full))
    pixels = np.array(Image.open(full).convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # drawn, not blank
    image = Image.open(full).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    path = Path(os.environ.get("VIEWER_SCREENSHOTS") or tmp_path) / "viewer_images.png"
    image.quantize(256, Image.Quantize.FASTOCTREE).save(path, optimize=True)
    assert path.stat().st_size < 100_000


def test_corrupt_sample_file_leaves_the_rest_of_the_report(runs, tmp_path, viewer_browser):
    import shutil
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    bad = copy / "D_seed2" / "checkpoints" / f"epoch_{EPOCH:04d}.samples" / "frame_03.png"
    bad.write_bytes(b"not a png")
    assert aggregate.main([str(copy), "--out", str(tmp_path / "report"), "--bootstrap", "0"]) == 0
    page = viewer_browser.open_viewer(tmp_path / "report" / VIEWER_FILE)
    reason = page.evaluate(f"VIEWER.data.absent.{PANEL_ID}")
    assert str(bad) in reason and "evaluate.py" in reason and "\n" not in reason
    viewer_browser.show_panel(PANEL_ID)
    assert reason in page.inner_text(f"#panel-{PANEL_ID}")
    for panel in ("curves", "per_class", "tables"):
        viewer_browser.show_panel(panel)
    viewer_browser.check_clean()


def test_a_checkpoint_with_fewer_samples_keeps_the_common_images(tmp_path, runs):
    import shutil
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    results = copy / "C_seed1" / "checkpoints" / f"epoch_{EPOCH:04d}.results.json"
    kept = read_predictions(results)
    names = kept.names[:2]  # evaluated with --samples 2: a prefix of the run's sample set
    write_predictions(results, "val", {n: kept.pred(n) for n in names}, PALETTE)
    absent = {}
    data = image_panel_data(Study.from_records(load_runs_dir(copy)), copy, EPOCH, absent)
    assert data is not None and data["names"] == names and len(data["preds"]["A"]["1"]) == 2


def test_a_run_without_samples_is_named_with_the_command_that_fills_them_in(tmp_path, runs, capsys, viewer_browser):
    """D seed 2's prediction samples are missing (deleted, or evaluated with --samples 0): the panel shows the other
    runs, and one line (on the page and on aggregate.py's console) names the missing folder and the command that
    fills it in."""
    import shutil
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    missing = copy / "D_seed2" / "checkpoints" / f"epoch_{EPOCH:04d}.samples"
    shutil.rmtree(missing)
    absent = {}
    data = image_panel_data(Study.from_records(load_runs_dir(copy)), copy, EPOCH, absent)
    assert not absent and list(data["preds"]["D"]) == ["1"]  # the rest of the panel stays
    line = data["left_out"]
    assert "\n" not in line and str(missing) in line and f"evaluate.py --all {copy} --samples {SAMPLED}" in line
    capsys.readouterr()
    assert aggregate.main([str(copy), "--out", str(tmp_path / "report"), "--bootstrap", "0"]) == 0
    assert str(missing) in capsys.readouterr().err.replace("\n", "")
    page = viewer_browser.open_viewer(tmp_path / "report" / VIEWER_FILE)
    viewer_browser.show_panel(PANEL_ID)
    assert page.inner_text("#images-left-out") == line
    viewer_browser.check_clean()
    assert image_panel_data(Study.from_records(load_runs_dir(runs)), runs, EPOCH, {})["left_out"] is None


def test_epochs_from_the_training_history_have_no_samples(tmp_path):
    """A final epoch known only from a run's metrics.jsonl (report.load.load_history: no checkpoint, so no
    results, per-image or sample files) leaves the panel absent with its reason, not a crash."""
    import dataclasses

    from report.load import Record
    record = Record(variant="A", seed=1, epoch=5, metrics={"miou": 0.5, "boundary_f1": 0.5, "trimap_iou": 0.5},
                    iou={}, source=str(tmp_path / "A_seed1" / "metrics.jsonl:5"))
    study = Study.from_records([record, dataclasses.replace(record, seed=2)])
    absent = {}
    assert image_panel_data(study, tmp_path, 5, absent) is None and "no run at epoch 5" in absent[PANEL_ID]
