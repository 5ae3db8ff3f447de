"""Prediction samples (engine.samples): the deterministic choice against a loop reference, the files' round trip,
the one-line errors for missing or corrupt files, the size budget on a real frame; and the scripts writing them
(train.py's per-epoch evaluation, evaluate.py, evaluate.py --all filling in without recomputing metrics)."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_utils.classes import class_presence
from engine.samples import (CheckpointSamples, RunSamples, SampleSink, choose_samples, encode_label_png,
                            read_predictions, read_sample_set, run_samples_dir, safe_stem, samples_dir,
                            write_predictions, write_sample_set)
from tests.test_faults import one_error_line
from tests.tiny_training import copy_run, run_train
from utils.fileio import EXIT_BAD_INPUT, UserError

PALETTE = [[128, 64, 128], [70, 70, 70], [220, 20, 60], [0, 0, 142]]
CLASSES = ["road", "building", "person", "car"]


# ------------------------------------------------------------------------------------------- the choice
def reference_choice(names, presence, k):
    """choose_samples' rule written as plain loops over sets: most new classes first, ties to the smallest
    sha256 of the name, coverage restarting when nothing new is left."""
    classes = [{c for c, present in enumerate(row) if present} for row in presence]
    digest = {name: hashlib.sha256(name.encode()).hexdigest() for name in names}
    chosen, covered = [], set()
    for _ in range(min(k, len(names))):
        left = [i for i in range(len(names)) if names[i] not in chosen]
        if max(len(classes[i] - covered) for i in left) == 0:
            covered = set()
        best = None
        for i in left:
            key = (-len(classes[i] - covered), digest[names[i]])
            if best is None or key < best[0]:
                best = (key, i)
        chosen.append(names[best[1]])
        covered |= classes[best[1]]
    return chosen


def test_choice_on_a_hand_made_split():
    # frame "wide" holds 3 classes, "thin" the one it lacks, the others repeat covered ones
    names = ["a", "wide", "b", "thin", "c"]
    presence = np.array([[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [1, 0, 1, 0, 0]], bool)
    chosen = choose_samples(names, presence, k=3)
    assert chosen[:2] == ["wide", "thin"]  # every present class covered by the first two
    # the third: a new round (nothing new is left), the most classes first: "c" (2 classes)
    assert chosen[2] == "c"
    assert chosen == reference_choice(names, presence, 3)


@pytest.mark.parametrize("seed", range(6))
def test_choice_matches_the_loop_reference_on_random_splits(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(5, 40)), int(rng.integers(2, 12))
    names = [f"city_{rng.integers(10**6):06d}_{i}" for i in range(n)]
    presence = rng.random((n, c)) < rng.uniform(0.05, 0.6)
    for k in (1, 4, 8, n + 3):
        chosen = choose_samples(names, presence, k)
        assert chosen == reference_choice(names, presence, k)
        assert len(chosen) == min(k, n) and len(set(chosen)) == len(chosen)
    # the classes present in the split are all covered once K reaches the greedy cover
    present = set(np.flatnonzero(presence.any(0)))
    covered = set(np.flatnonzero(presence[[names.index(x) for x in choose_samples(names, presence, c)]].any(0)))
    assert covered == present


def test_choice_is_a_function_of_names_not_their_order():
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(20)]
    presence = rng.random((20, 5)) < 0.3
    perm = rng.permutation(20)
    assert choose_samples([names[i] for i in perm], presence[perm], 6) == choose_samples(names, presence, 6)
    assert choose_samples(names, presence, 3) == choose_samples(names, presence, 6)[:3]  # a prefix


def test_class_presence_ignores_the_ignore_index():
    label = np.array([[0, 2, 255], [2, 2, 255]], np.uint8)
    assert class_presence(label, 4).tolist() == [True, False, True, False]


def test_safe_stems_are_distinct_file_names():
    names = ["frankfurt_000000_000294", "a/b", "a_b", "../x", ".hidden"]
    stems = [safe_stem(n) for n in names]
    assert stems[0] == names[0]
    assert len(set(stems)) == len(stems) and all("/" not in s and not s.startswith(".") for s in stems)


# ------------------------------------------------------------------------------------------- the files
def random_labels(rng, shape=(24, 40)):
    label = rng.integers(0, len(CLASSES), shape).astype(np.uint8)
    label[rng.random(shape) < 0.1] = 255
    return label


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    results = tmp_path / "checkpoints" / "epoch_0002.results.json"
    preds = {name: random_labels(rng) for name in ("f1", "city/f2")}
    folder = write_predictions(results, "val", preds, PALETTE, names=["city/f2", "f1"])
    assert folder == tmp_path / "checkpoints" / "epoch_0002.samples" == samples_dir(results)
    samples = read_predictions(results)
    assert isinstance(samples, CheckpointSamples) and samples.names == ["city/f2", "f1"] and samples.split == "val"
    for name, pred in preds.items():
        np.testing.assert_array_equal(samples.pred(name), pred)
        with Image.open(samples.paths[name]) as png:  # P mode, the palette's colours, ignore black
            assert png.mode == "P"
            rgb = np.array(png.convert("RGB"))
        lut = np.zeros((256, 3), np.uint8)
        lut[:len(PALETTE)] = PALETTE
        np.testing.assert_array_equal(rgb, lut[pred])
    index = json.loads((folder / "index.json").read_text())
    assert set(index) == {"split", "names", "files", "sha256"}
    # a smaller sample rewrites the folder without the old file
    write_predictions(results, "val", {"f1": preds["f1"]}, PALETTE)
    assert sorted(p.name for p in folder.iterdir()) == ["f1.png", "index.json"]


def test_inference_mode_samples_sit_beside_their_results_file(tmp_path):
    results = tmp_path / "epoch_0002.inference.whole-flip.results.json"
    assert samples_dir(results) == tmp_path / "epoch_0002.inference.whole-flip.samples"


def test_sample_set_round_trip_and_written_once(tmp_path):
    rng = np.random.default_rng(2)
    smooth = np.stack([*np.meshgrid(np.arange(40) * 6, np.arange(24) * 10), np.full((24, 40), 90)], -1)
    frames = {n: ((smooth + shift).astype(np.uint8), random_labels(rng)) for shift, n in enumerate(("f1", "a/b"))}
    calls = []

    def read_frame(name):
        calls.append(name)
        return frames[name]

    assert write_sample_set(tmp_path, "val", ["a/b", "f1"], CLASSES, PALETTE, read_frame)
    run = read_sample_set(tmp_path)
    assert isinstance(run, RunSamples)
    assert (run.split, run.names, run.class_names, run.palette, run.ignore_index, run.num_frames) == \
        ("val", ["a/b", "f1"], CLASSES, PALETTE, 255, 2)
    for name, (image, label) in frames.items():
        np.testing.assert_array_equal(run.label(name), label)
        assert run.image(name).shape == image.shape and run.image(name).dtype == np.uint8
        assert np.abs(run.image(name).astype(int) - image).mean() < 3  # JPEG: lossy, but this image
        assert run.paths[name]["image"].suffix == ".jpg" and run.paths[name]["label"].name.endswith("_gt.png")
    assert not write_sample_set(tmp_path, "val", ["a/b", "f1"], CLASSES, PALETTE, read_frame)  # same: kept
    assert calls == ["a/b", "f1"]
    assert write_sample_set(tmp_path, "val", ["f1"], CLASSES, PALETTE, read_frame)  # names changed: rewritten
    assert read_sample_set(tmp_path).names == ["f1"] and len(list(run_samples_dir(tmp_path).iterdir())) == 3


def test_sink_keeps_only_the_sample():
    sink = SampleSink(["b", "d"])
    preds = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3)
    sink(["a", "b", "c", "d"], None, preds)
    assert sorted(sink.predictions) == ["b", "d"]
    np.testing.assert_array_equal(sink.predictions["d"], preds[3])
    preds[3] = 0  # the sink holds copies, not views of a batch that is reused
    assert sink.predictions["d"].any()


@pytest.mark.parametrize("damage", ["missing folder", "missing png", "flipped byte", "bad index", "no index"])
def test_a_missing_or_corrupt_prediction_file_is_one_line_naming_it(tmp_path, damage, capsys):
    results = tmp_path / "run" / "checkpoints" / "epoch_0004.results.json"
    folder = write_predictions(results, "val", {"f1": random_labels(np.random.default_rng(3))}, PALETTE)
    damaged = {"missing folder": folder / "index.json", "missing png": folder / "f1.png",
               "flipped byte": folder / "f1.png", "bad index": folder / "index.json",
               "no index": folder / "index.json"}[damage]
    if damage == "missing folder":
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    elif damage in ("missing png", "no index"):
        damaged.unlink()
    elif damage == "flipped byte":
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
    else:
        damaged.write_text('{"split": "val", "names": ["f1"]')
    line = one_error_line(lambda: read_predictions(results), capsys)
    assert line.startswith(f"error: {damaged}: ")
    assert f"python evaluate.py {tmp_path / 'run' / 'checkpoints' / 'epoch_0004'}" in line


def test_a_corrupt_sample_set_is_one_line_naming_it(tmp_path, capsys):
    rng = np.random.default_rng(4)
    write_sample_set(tmp_path, "val", ["f1"], CLASSES, PALETTE,
                     lambda name: (rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), random_labels(rng, (8, 8))))
    image = run_samples_dir(tmp_path) / "f1.jpg"
    image.write_bytes(image.read_bytes()[:50])  # truncated
    line = one_error_line(lambda: read_sample_set(tmp_path), capsys)
    assert line.startswith(f"error: {image}: ") and f"python evaluate.py {tmp_path}" in line
    with pytest.raises(UserError, match="missing"):
        read_sample_set(tmp_path / "elsewhere")


def test_size_budget_on_a_real_full_resolution_frame(cityscapes_fullres):
    from data_utils.labels import CITYSCAPES
    label_file = sorted((cityscapes_fullres / "gtFine" / "val").rglob("*_labelIds.png"))[0]
    train_ids = CITYSCAPES.to_train_ids(np.array(Image.open(label_file)), str(label_file), "")
    assert train_ids.shape == (1024, 2048)
    data = encode_label_png(train_ids, CITYSCAPES.palette)
    assert len(data) <= 150_000, f"{label_file.name}: {len(data)} bytes"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(data))), train_ids)
    # a prediction is more ragged than the ground truth: 1% of the pixels set to random classes still fits
    rng = np.random.default_rng(0)
    noisy = train_ids.copy()
    salt = rng.random(noisy.shape) < 0.01
    noisy[salt] = rng.integers(0, CITYSCAPES.num_classes, salt.sum())
    assert len(encode_label_png(noisy, CITYSCAPES.palette)) <= 150_000


def test_the_module_imports_without_torch(python_imports):
    result, modules = python_imports("-c", "import engine.samples")
    assert result.returncode == 0, result.stderr
    assert "torch" not in modules and "accelerate" not in modules


# ------------------------------------------------------------------------------- the scripts writing them
def reference_presence(data_root: Path, split: str = "val") -> tuple[list[str], np.ndarray]:
    """The split's names in dataset order and the classes of each label, decoded here one file at a time."""
    from data_utils.dataset import read_train_ids
    from data_utils.labels import CITYSCAPES
    labels = sorted((data_root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
    names = [p.name.removesuffix("_gtFine_labelIds.png") for p in labels]
    presence = np.zeros((len(labels), CITYSCAPES.num_classes), bool)
    for i, path in enumerate(labels):
        for value in np.unique(read_train_ids(str(path))):
            if value != 255:
                presence[i, value] = True
    return names, presence


def server_predictions(preds: Path) -> dict[str, np.ndarray]:
    """evaluate.py --save-predictions' labelIds PNGs (an independent writer) as train ids, by frame name."""
    from data_utils.dataset import read_train_ids
    return {p.name.removesuffix("_labelIds.png"): read_train_ids(str(p)) for p in (preds / "labelIds").rglob("*.png")}


def test_training_keeps_the_sample_with_each_checkpoint_and_evaluate_agrees(straight_runs, tiny_data, tmp_path):
    """The demo-like run with loader workers: RUN/samples/ holds the chosen frames (names as the loop reference
    picks them from the labels), every checkpoint its predictions; evaluate.py on the same checkpoint writes the
    same predictions as its test-server PNGs."""
    import evaluate
    run = copy_run(straight_runs["2"], tmp_path / "run")
    names, presence = reference_presence(tiny_data)
    sample = read_sample_set(run)
    assert sample.names == reference_choice(names, presence, 8) and len(sample.names) == len(names) == 5
    assert sample.split == "val" and sample.class_names[0] == "road" and sample.ignore_index == 255
    from data_utils.dataset import read_frame
    for name in sample.names:
        city = name.split("_")[0]
        image, label = read_frame(str(tiny_data / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png"),
                                  str(tiny_data / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png"))
        np.testing.assert_array_equal(sample.label(name), label)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)  # the frame as a quality-90 JPEG
        np.testing.assert_array_equal(sample.image(name), np.array(Image.open(buffer)))
    ckpt = run / "checkpoints" / "epoch_0002"
    trained = read_predictions(ckpt.with_name("epoch_0002.results.json"))
    assert trained.names == sample.names
    assert read_predictions(ckpt.with_name("epoch_0001.results.json")).names == sample.names

    assert evaluate.main([str(ckpt), "--save-predictions", str(tmp_path / "preds")]) == 0
    server = server_predictions(tmp_path / "preds")
    evaluated = read_predictions(ckpt.with_name("epoch_0002.results.json"))
    for name in sample.names:
        np.testing.assert_array_equal(trained.pred(name), server[name])
        np.testing.assert_array_equal(evaluated.pred(name), server[name])


def test_training_picks_the_sample_from_its_label_check_without_decoding_again(tiny_data, tmp_path, monkeypatch):
    import engine.sample_eval

    def decode_again(*args, **kwargs):
        raise AssertionError("the val labels were decoded a second time")
    monkeypatch.setattr(engine.sample_eval, "split_presence", decode_again)
    assert run_train(tiny_data, tmp_path / "run", "--epochs", "1", "--num-workers", "2", "--samples", "3") == 0
    names, presence = reference_presence(tiny_data)
    assert read_sample_set(tmp_path / "run").names == reference_choice(names, presence, 3)
    assert read_predictions(tmp_path / "run" / "checkpoints" / "epoch_0001.results.json").names == \
        reference_choice(names, presence, 3)


def test_evaluate_chooses_the_same_sample_for_a_run_without_one(straight_runs, tiny_data, tmp_path):
    import shutil

    import evaluate
    run = copy_run(straight_runs["0"], tmp_path / "run")
    shutil.rmtree(run_samples_dir(run))  # e.g. a run trained before samples existed
    ckpt = run / "checkpoints" / "epoch_0001"
    assert evaluate.main([str(ckpt), "--samples", "2", "--flip"]) == 0
    names, presence = reference_presence(tiny_data)
    assert read_sample_set(run).names == reference_choice(names, presence, 2)
    flip = read_predictions(ckpt.with_name("epoch_0001.inference.whole-flip.results.json"))
    assert flip.names == reference_choice(names, presence, 2)
    assert evaluate.main([str(ckpt), "--samples", "0"]) == 0  # off: the earlier folder stays as it was
    assert read_predictions(ckpt.with_name("epoch_0001.results.json")).names == reference_choice(names, presence, 8)


def test_evaluate_all_fills_in_missing_samples_without_recomputing_metrics(straight_runs, tmp_path, capsys):
    import shutil

    import evaluate
    from engine.samples import INDEX_NAME
    run = copy_run(straight_runs["2"], tmp_path / "runs" / "run")
    results = {p: p.read_bytes() for p in (run / "checkpoints").glob("epoch_*.*") if p.is_file()}
    before = read_predictions(run / "checkpoints" / "epoch_0002.results.json")
    expected = {name: before.pred(name) for name in before.names}
    shutil.rmtree(samples_dir(run / "checkpoints" / "epoch_0002.results.json"))  # missing
    damaged = run / "checkpoints" / "epoch_0001.samples" / INDEX_NAME
    damaged.write_text("{")  # corrupt
    capsys.readouterr()
    assert evaluate.main(["--all", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "2 already evaluated" in out and "0 to evaluate" in out and "2 of the evaluated checkpoints lack" in out
    assert {p: p.read_bytes() for p in results} == results  # results and per-image files untouched
    after = read_predictions(run / "checkpoints" / "epoch_0002.results.json")
    assert after.names == before.names
    for name in after.names:
        np.testing.assert_array_equal(after.pred(name), expected[name])
    assert read_predictions(run / "checkpoints" / "epoch_0001.results.json").names == before.names
    assert evaluate.main(["--all", str(tmp_path / "runs")]) == 0  # nothing left to fill in
    assert "lack their prediction samples" not in capsys.readouterr().out


@pytest.mark.parametrize("workers", [0, 2])
def test_check_labels_returns_what_each_label_holds_in_dataset_order(tiny_data, workers):
    from data_utils.dataset import check_labels
    from engine.config import parse_args
    from engine.setup import build_dataloader
    cfg, _ = parse_args(["--preset", "demo", "--no-demo-data", "--data-root", str(tiny_data)])
    dataset = build_dataloader(cfg, "val", train=False).dataset
    names, presence = reference_presence(tiny_data)
    assert list(dataset.names) == names
    np.testing.assert_array_equal(check_labels(dataset, num_workers=workers), presence)


def test_a_negative_samples_flag_is_one_error_line(capsys):
    import evaluate
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["x", "--samples", "-1"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().endswith("--samples must be >= 0 (0: none), got -1")
    from engine.config import parse_args
    with pytest.raises(SystemExit) as exit_info:  # its declared range: argparse's line (tests/test_checks_first.py)
        parse_args(["--preset", "demo", "--samples", "-1"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().endswith("argument --samples: must be an integer >= 0, got -1")
