"""Datasets beyond Cityscapes: the class table as data, the HF datasets source, crops, and the demo-hf path end to end.

The HF data is `python -m data_utils.synthetic --format hf` at 64x128 / 80x96 (8 class groups, ADE20K-style
labels: 0 = unlabelled), trained with convnextv2_atto and a 32-channel UPerNet on the CPU.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from data_utils.classes import IGNORE_INDEX, ClassTable, default_palette, read_classes_file
from data_utils.dataset import SegmentationDataset, collate_batch, crop_offset, crop_pad
from data_utils.hf import HFFrames, dataset_classes, open_hf_dataset, reduce_labels_
from data_utils.labels import CITYSCAPES, LABELS
from data_utils.sdt import compute_sdt
from data_utils.sdt_cache import read_sdt_file, sdt_cache_path
from data_utils.source import DataSource
from data_utils.synthetic import GROUPS, generate_dataset, hf_classes, render_frame, second_size
from data_utils.synthetic import main as synthetic_main
from tests.tiny_training import train_main
from utils.fileio import UserError

H, W = 64, 128
GROUP_NAMES = list(GROUPS)


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory) -> Path:
    """8 train / 3 validation frames; even rows 64x128, odd rows 80x96."""
    return generate_dataset(tmp_path_factory.mktemp("hf") / "demo-hf", num_train=8, num_val=3, height=H, width=W,
                            progress=False, format="hf")


def hf_source(root: Path, **changes) -> DataSource:
    return DataSource(**{"hf_dataset": str(root), "reduce_labels": True, **changes})


# ------------------------------------------------------------------------------------------------ class tables
def test_classes_file_forms_and_palette(tmp_path):
    forms = {"list.json": ["wall", "sky"], "id2label.json": {"1": "sky", "0": "wall"},
             "object.json": {"names": ["wall", "sky"], "palette": [[1, 2, 3], "#0a0b0c"]}}
    for name, data in forms.items():
        (tmp_path / name).write_text(json.dumps(data))
        table = read_classes_file(tmp_path / name)
        assert table.names == ("wall", "sky") and table.num_classes == 2
    assert table.palette == ((1, 2, 3), (10, 11, 12)) and table.palette_hex == ("#010203", "#0a0b0c")
    assert read_classes_file(tmp_path / "list.json").palette == default_palette(2)
    for data, message in ((["a", "a"], "appear twice"), ({"0": "a", "2": "b"}, "without gaps"),
                          ({"names": ["a", "b"], "palette": [[0, 0, 0]]}, "1 palette colour for 2 classes"),
                          ({"names": ["a"], "palette": [[0, 0, 300]]}, "not \\[r, g, b\\]"), (3, "expected a JSON")):
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(UserError, match=rf"bad\.json: .*{message}"):
            read_classes_file(tmp_path / "bad.json")
    with pytest.raises(UserError, match="absent.json: classes file not found"):
        read_classes_file(tmp_path / "absent.json")


def test_default_palette_is_voc_colormap_without_black():
    """Against PASCAL VOC's published first entries (1: maroon, 2: green, ..., 7: gray, 8: dark red)."""
    assert default_palette(8) == ((128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
                                  (0, 128, 128), (128, 128, 128), (64, 0, 0))
    assert len(set(default_palette(150))) == 150


def test_cityscapes_table_is_the_official_one():
    official = {lab.id: lab.train_id for lab in LABELS if lab.id >= 0}
    for label_id in range(256):
        if label_id in official:
            assert CITYSCAPES.to_train_ids(np.uint8([[label_id]]), "x", "fix")[0, 0] == official[label_id]
        else:
            with pytest.raises(UserError, match=rf"x: label ids \[{label_id}\] are not in the Cityscapes table; fix"):
                CITYSCAPES.to_train_ids(np.uint8([[label_id]]), "x", "fix")
    # predictions back to label ids: each train id's label id, ignore -> 0 (unlabeled)
    inverse = {t: i for i, t in sorted(official.items(), reverse=True)}
    assert [int(v) for v in CITYSCAPES.to_label_ids(np.arange(19))] == [inverse[t] for t in range(19)]
    assert CITYSCAPES.to_label_ids(np.uint8([255]))[0] == 0


def test_index_table_maps_and_refuses_values():
    table = ClassTable(("a", "b", "c"), source="file.json")
    label = np.array([[0, 1, 2, 255]], np.uint8)
    np.testing.assert_array_equal(table.to_train_ids(label, "x", "fix"), label)
    for bad in (3, 254):
        with pytest.raises(UserError, match=rf"x: label values \[{bad}\] are neither class indices 0..2 "
                                            r"\(3 classes in file.json\) nor ignore \(255\); fix"):
            table.to_train_ids(np.array([[0, bad]], np.uint8), "x", "fix")
    with pytest.raises(UserError, match="label value 300 does not fit"):
        table.to_train_ids(np.array([[300]], np.int32), "x", "fix")


def test_reduce_labels_is_transformers_do_reduce_labels():
    """transformers' image processors: label[label == 0] = 255; label = label - 1; label[label == 254] = 255."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    expected = np.empty_like(label)
    for (y, x), v in np.ndenumerate(label):  # the convention, value by value
        expected[y, x] = 255 if v in (0, 255) else v - 1
    np.testing.assert_array_equal(reduce_labels_(label.copy()), expected)
    np.testing.assert_array_equal(reduce_labels_(label.astype(np.int64)), expected)


# --------------------------------------------------------------------------------------------- the HF source
def test_generator_writes_a_datasetdict_with_8_groups_and_two_sizes(hf_root):
    splits = open_hf_dataset(str(hf_root))
    assert list(splits) == ["train", "validation"] and (len(splits["train"]), len(splits["validation"])) == (8, 3)
    assert json.loads((hf_root / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(GROUP_NAMES)}
    source = hf_source(hf_root)
    classes = source.classes()
    assert classes.names == tuple(GROUP_NAMES) and classes.num_classes == 8
    frames = source.frames("train", classes)
    group_of = {name: g for g, members in enumerate(GROUPS.values()) for name in members}
    train_id_group = {lab.train_id: group_of[lab.name] for lab in LABELS if lab.train_id != 255}
    for index in (0, 1):
        image, train_ids = frames.read(index)
        size = (H, W) if index == 0 else second_size(H, W)
        assert image.shape == (*size, 3) and train_ids.shape == size
        ref_image, label_ids, _ = render_frame(0, "train", index, *size)
        official = CITYSCAPES.to_train_ids(label_ids, "x", "fix")
        expected = np.vectorize(lambda t: train_id_group.get(int(t), 255))(official)  # merged, pixel by pixel
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(train_ids, expected)
    assert second_size(H, W) == (80, 96)


def test_saved_dataset_parquet_folder_and_split_names(hf_root, tmp_path):
    splits = open_hf_dataset(str(hf_root))
    single = tmp_path / "single"
    splits["validation"].save_to_disk(str(single))  # a Dataset (not a dict): one split
    assert list(open_hf_dataset(str(single))) == ["train"]
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    for name, ds in splits.items():
        ds.to_parquet(str(parquet / f"{name}-00000-of-00001.parquet"))
    from_parquet = open_hf_dataset(str(parquet))
    assert set(from_parquet) == {"train", "validation"}
    frames = hf_source(parquet, classes_file=str(hf_root / "id2label.json")).frames("validation", read_classes_file(
        hf_root / "id2label.json"))
    np.testing.assert_array_equal(frames.read(1)[1], hf_source(hf_root).frames("validation", hf_source(
        hf_root).classes()).read(1)[1])
    with pytest.raises(UserError, match=rf"{hf_root}: split 'val' not found; available splits: train, validation"):
        hf_source(hf_root).frames("val", hf_source(hf_root).classes())
    with pytest.raises(UserError, match=rf"{tmp_path / 'empty'}: no such folder"):
        open_hf_dataset(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="some-user/ade20k: no such local folder, and hub dataset names cannot be "
                                        "loaded offline"):
        open_hf_dataset("some-user/ade20k")  # the test environment is offline (conftest.py)


def test_bad_columns_labels_and_classes_are_one_line_each(hf_root, tmp_path):
    source = hf_source(hf_root)
    with pytest.raises(UserError, match=r"\[train\]: no column 'mask' \(columns: image, label\); pass --label-column"):
        hf_source(hf_root, label_column="mask").classes()
    with pytest.raises(UserError, match="names no classes .* pass --classes FILE"):
        hf_source(hf_root, hf_dataset=str(shutil.copytree(hf_root, tmp_path / "copy", ignore=shutil.ignore_patterns(
            "id2label.json")))).classes()
    (tmp_path / "five.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    with pytest.raises(UserError, match=r"five.json: 5 classes, but the dataset \(.*id2label.json\) has 8"):
        hf_source(hf_root, classes_file=str(tmp_path / "five.json")).classes()
    # without --reduce-labels the group values 1..8 overflow 8 classes: the row and the fix are named
    frames = hf_source(hf_root, reduce_labels=False).frames("train", source.classes())
    with pytest.raises(UserError, match=r"\[train\] row 0, column 'label': label values \[8\] are neither class "
                                        r"indices 0..7 .*--reduce-labels"):
        frames.read(0)
    # an RGB (colour-coded) label
    rgb = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 4))], "label": [Image.new("RGB", (8, 4))]},
                                     features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}))
    with pytest.raises(UserError, match="row 0, column 'label': label image mode RGB, expected a single-channel"):
        HFFrames(rgb, "image", "label", source.classes(), False, "train", "rgb [train]").read(0)


def test_classes_from_a_class_label_feature_of_a_2d_array_label(tmp_path):
    """A label column of nested Sequences of a ClassLabel (a 2-D integer array) names the classes itself."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Sequence(datasets.Sequence(
        datasets.ClassLabel(names=["background", "cat", "dog"])))})
    label = [[0, 1, 2, 2], [1, 1, 0, 2]]
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 2))], "label": [label]}, features=features)
    ds.save_to_disk(str(tmp_path / "pets"))
    assert dataset_classes(str(tmp_path / "pets"), ds, "label", reduce_labels=False).names == ("background", "cat",
                                                                                               "dog")
    source = DataSource(hf_dataset=str(tmp_path / "pets"), reduce_labels=True)
    classes = source.classes()
    assert classes.names == ("cat", "dog")  # reduced: the background becomes ignore
    np.testing.assert_array_equal(source.frames("train", classes).read(0)[1], [[255, 0, 1, 1], [0, 0, 255, 1]])


# ----------------------------------------------------------------------------------------------------- crops
def test_crop_offset_is_a_pure_uniform_function_and_crop_pad_matches_a_loop():
    offsets = [crop_offset(3, 1, i, (10, 20), (4, 5)) for i in range(2000)]
    assert offsets[:50] == [crop_offset(3, 1, i, (10, 20), (4, 5)) for i in range(50)]
    tops, lefts = zip(*offsets)
    assert set(tops) == set(range(7)) and set(lefts) == set(range(16))  # every valid offset, nothing outside
    assert abs(np.mean(tops) - 3) < 0.2 and abs(np.mean(lefts) - 7.5) < 0.4
    assert crop_offset(3, 2, 0, (10, 20), (4, 5)) != crop_offset(3, 1, 0, (10, 20), (4, 5)) or \
        crop_offset(3, 2, 1, (10, 20), (4, 5)) != crop_offset(3, 1, 1, (10, 20), (4, 5))
    assert crop_offset(0, 0, 0, (3, 4), (8, 8)) == (0, 0)  # smaller than the crop: no room, padded instead
    rng = np.random.default_rng(0)
    array = rng.integers(0, 100, (2, 5, 7))
    for top, left, crop in ((0, 0, (3, 3)), (2, 4, (3, 3)), (3, 5, (4, 4)), (0, 0, (8, 9))):
        out = crop_pad(array, top, left, crop, fill=-1)
        for c, y, x in np.ndindex(out.shape):  # explicit reference: inside the frame or the fill
            inside = top + y < 5 and left + x < 7
            assert out[c, y, x] == (array[c, top + y, left + x] if inside else -1)


def test_crop_moves_image_label_and_sdt_together_with_ignore_padding(hf_root, tmp_path):
    source = hf_source(hf_root)
    classes = source.classes()
    frames = source.frames("train", classes)
    crop = (72, 112)  # taller than the 64x128 frames, narrower than both sizes: crops and pads
    for name in frames.names[:2]:
        path = sdt_cache_path(tmp_path, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        from data_utils.sdt_cache import write_sdt_file
        labels = frames.read(frames.names.index(name))[1]
        write_sdt_file(path, compute_sdt(labels, classes.num_classes), labels=labels)
    by_source = {src: SegmentationDataset(frames, hflip=True, seed=5, image_dtype="uint8", sdt_source=src,
                                          sdt_cache_dir=tmp_path, crop_size=crop) for src in ("cpu", "cache")}
    for epoch in (0, 1):
        for ds in by_source.values():
            ds.set_epoch(epoch)
        for index in (0, 1):
            item, cached = by_source["cpu"][index], by_source["cache"][index]
            image, train_ids = frames.read(index)
            sdt = compute_sdt(train_ids, classes.num_classes)
            from data_utils.dataset import hflip_decision
            if hflip_decision(5, epoch, index)[0]:
                image, train_ids, sdt = image[:, ::-1], train_ids[:, ::-1], sdt[:, :, ::-1]
            top, left = crop_offset(5, epoch, index, train_ids.shape, crop)
            np.testing.assert_array_equal(item["label"].numpy(), crop_pad(train_ids, top, left, crop, IGNORE_INDEX))
            np.testing.assert_array_equal(item["image"].numpy(), crop_pad(image.transpose(2, 0, 1), top, left, crop, 0))
            np.testing.assert_array_equal(item["sdt"].numpy(), crop_pad(sdt, top, left, crop, 0))
            assert item["sdt"].shape == (8, *crop) and torch.equal(item["sdt"], cached["sdt"])
            if index == 0:  # a 64-row frame in a 72-row crop: the bottom rows are padding
                assert (item["label"][64:] == IGNORE_INDEX).all() and (item["image"][:, 64:] == 0).all()
    batch = collate_batch([by_source["cpu"][0], by_source["cpu"][1]])  # two frame sizes, one batch
    assert batch["label"].shape == (2, *crop)
    native = SegmentationDataset(frames, image_dtype="uint8")
    with pytest.raises(UserError, match="different sizes .* --crop-size H W"):
        collate_batch([native[0], native[1]])


# -------------------------------------------------------------------------------------------------- end to end
TINY_HF = ["--preset", "demo-hf", "--no-demo-data", "--no-wandb", "--head-channels", "32", "--crop-size", "64", "96",
           "--epochs", "1", "--batch-size", "4"]


def run_train(hf: Path, out: Path, *flags: str) -> int:
    return train_main([*TINY_HF, "--hf-dataset", str(hf), "--out", str(out), *flags])


@pytest.fixture(scope="module")
def hf_runs(hf_root, tmp_path_factory) -> Path:
    """RUNS/C_seed42: one epoch of the demo-hf path as shipped (DataLoader workers on, SDT in the workers) on
    8 classes, two frame sizes and crops."""
    runs = tmp_path_factory.mktemp("runs")
    assert run_train(hf_root, runs / "C_seed42", "--num-workers", "2") == 0
    return runs


def assert_evaluate_rebuilds_the_run(run: Path, names: list[str], num_images: int) -> dict:
    """The run records its classes; evaluate.py rebuilds model, data and classes from the checkpoint's config
    and gives train.py's numbers. Returns evaluate.py's results."""
    import evaluate

    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == names and len(config["class_palette"]) == len(names)
    ckpt = run / "checkpoints" / "epoch_0001"
    results_file = ckpt.with_name("epoch_0001.results.json")
    by_train = json.loads(results_file.read_text())
    assert by_train["classes"] == names and list(by_train["iou"]) == names
    assert by_train["num_images"] == num_images  # the validation split, each frame at its native size

    results_file.unlink()
    AcceleratorState._reset_state(True)
    assert evaluate.main([str(ckpt), "--num-workers", "0"]) == 0
    by_evaluate = json.loads(results_file.read_text())
    assert by_evaluate["classes"] == names and by_evaluate["split"] == "validation"
    for key in ("miou", "boundary_f1", "trimap_iou", "iou", "num_images"):
        assert by_evaluate[key] == pytest.approx(by_train[key], abs=1e-6, nan_ok=True), key
    return by_evaluate


def test_demo_hf_trains_and_evaluate_rebuilds_it_from_the_checkpoint(hf_root, hf_runs, tmp_path):
    """evaluate.py rebuilds the demo-hf run (`assert_evaluate_rebuilds_the_run`); another class list cannot
    resume the run."""
    assert_evaluate_rebuilds_the_run(hf_runs / "C_seed42", GROUP_NAMES, num_images=3)

    (tmp_path / "other.json").write_text(json.dumps([f"c{i}" for i in range(8)]))
    with pytest.raises(UserError, match="--class-names"):
        run_train(hf_root, hf_runs / "C_seed42", "--num-workers", "2", "--epochs", "2",
                  "--classes", str(tmp_path / "other.json"))


def test_the_generators_train_hint_works_as_printed(tmp_path, capsys):
    """`python -m data_utils.synthetic --format hf` prints the train.py command for what it wrote; with other
    sizes than the demo-hf preset's own data, that command was refused ("synthetic.json: demo dataset was
    generated with ..."). Run here as printed, plus one epoch, a small head and no W&B for speed."""
    import shlex

    from data_utils.synthetic import hf_train_command
    from engine.config import DEMO_HF_PRESET

    root = tmp_path / "my hf"  # a space: the printed path must survive the shell
    assert synthetic_main(["--format", "hf", "--out", str(root), "--train", "4", "--val", "2", "--height", str(H),
                           "--width", str(W)]) == 0
    hint = capsys.readouterr().out.split("train on them: ", 1)[1].strip()
    argv = shlex.split(hint)
    assert argv[:2] == ["python", "train.py"]
    assert train_main([*argv[2:], "--epochs", "1", "--out", str(tmp_path / "run"), "--no-wandb", "--head-channels",
                       "32"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "epoch_0001.results.json").is_file()
    # the crop both sizes hold (64x128 and 80x96 here); for the preset's own sizes, the preset's crop
    assert second_size(H, W) == (80, 96) and hint.endswith("--crop-size 64 96")
    crop = DEMO_HF_PRESET["crop_size"]
    assert hf_train_command(Path("x"), 128, 256).endswith(f"--crop-size {crop[0]} {crop[1]}")




def test_150_classes_train_and_evaluate(tmp_path):
    """ADE20K's class count: `python -m data_utils.synthetic --format hf --num-classes 150` (the 19 classes at
    0, 7, ..., 126: three bit planes in the metrics), one epoch with loader workers, evaluate.py from the
    checkpoint."""
    root = tmp_path / "hf150"
    assert synthetic_main(["--format", "hf", "--num-classes", "150", "--out", str(root), "--train", "4", "--val",
                           "2", "--height", str(H), "--width", str(W)]) == 0
    _, names = hf_classes(150)
    assert len(names) == 150 and names[126] == CITYSCAPES.names[18]
    with pytest.raises(UserError, match="--num-classes 255 needs --format hf and 19..254"):
        generate_dataset(tmp_path / "bad", 1, 1, format="hf", num_classes=255)
    assert run_train(root, tmp_path / "run", "--num-workers", "2") == 0
    results = assert_evaluate_rebuilds_the_run(tmp_path / "run", names, num_images=2)
    present = [n for n in names if not n.startswith("unused")]
    assert len(present) == 19 and all(results["iou"][n] is not None for n in present)  # a number: U_c > 0


def test_aggregate_reports_the_dataset_classes(hf_runs, tmp_path):
    import aggregate

    assert aggregate.main([str(hf_runs), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "table3_per_class_iou.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_class = [r["class"] for r in rows if r["class"] in GROUP_NAMES]
    assert per_class == GROUP_NAMES
    assert all(r["class"] in GROUP_NAMES or not r["class"].strip() or r["class"].startswith("mean") for r in rows)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "two-wheeler" in summary and "road" not in summary and "bicycle" not in summary


def test_precompute_and_every_sdt_source_with_8_classes(hf_root, tmp_path):
    """precompute_sdt.py on the HF dataset; --sdt-source cache trains exactly like cpu (both crop the full
    frame's map), gpu (the torch path, here on the CPU) trains too."""
    import precompute_sdt

    cache = tmp_path / "sdt"
    assert precompute_sdt.main(["--hf-dataset", str(hf_root), "--reduce-labels", "--split", "train",
                                "--out", str(cache), "--jobs", "2"]) == 0
    classes = hf_source(hf_root).classes()
    frames = hf_source(hf_root).frames("train", classes)
    for index, name in enumerate(frames.names):
        np.testing.assert_array_equal(read_sdt_file(sdt_cache_path(cache, name)),
                                      compute_sdt(frames.read(index)[1], num_classes=8))
    assert precompute_sdt.main(["--hf-dataset", str(hf_root), "--reduce-labels", "--split", "train",
                                "--out", str(cache), "--jobs", "1", "--verify"]) == 0
    rows = {}
    for source, extra in (("cpu", []), ("cache", ["--sdt-cache", str(cache)]), ("gpu", [])):
        assert run_train(hf_root, tmp_path / source, "--sdt-source", source, "--num-workers", "0", *extra) == 0
        rows[source] = json.loads((tmp_path / source / "metrics.jsonl").read_text().splitlines()[0])
    assert rows["cache"]["train/boundary"] == rows["cpu"]["train/boundary"]
    assert rows["cache"]["train/loss"] == rows["cpu"]["train/loss"]
    assert np.isfinite(rows["gpu"]["train/boundary"]) and rows["gpu"]["train/boundary"] != 0


# ------------------------------------------------------------------------------------- config, metrics, losses
def test_config_fields_preset_and_recorded_classes(tmp_path):
    from engine.config import DEMO_HF_PRESET, DEMO_PRESET, load_config, parse_args, save_config
    from engine.setup import class_table, with_class_table

    cfg, _ = parse_args(["--preset", "demo-hf", "--crop-size", "32", "48", "--class-names", "a", "b",
                         "--class-palette", "#000001", "#000002"])
    assert cfg.crop_size == (32, 48) and cfg.class_names == ("a", "b") and cfg.val_split == "validation"
    assert cfg.run_dir == Path("runs/demo-hf/convnextv2_atto/C_crop32x48_seed42")  # apart from runs/demo
    assert {k for k in DEMO_HF_PRESET if DEMO_HF_PRESET[k] != DEMO_PRESET.get(k)} == {
        "data_root", "hf_dataset", "reduce_labels", "val_split", "crop_size"}
    save_config(cfg, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == cfg  # tuples survive the JSON round trip
    for flags, message in ((["--crop-size", "0", "64"], "--crop-size needs H W >= 1"),
                           (["--reduce-labels"], "--reduce-labels applies to --hf-dataset"),
                           (["--class-names", "a", "b", "--class-palette", "#000000"], "1 colour for 2")):
        with pytest.raises(UserError, match=message):
            parse_args(flags)
    # Cityscapes: recording the names keeps the official table (with its id map), as a config without them
    default, _ = parse_args([])
    assert default.crop_size == (0, 0) and class_table(default) is CITYSCAPES
    recorded = with_class_table(default)
    assert recorded.class_names == CITYSCAPES.names and class_table(recorded) is CITYSCAPES
    # more classes than uint8 label maps hold: refused before training, not at the first evaluation
    assert len(with_class_table(parse_args(["--class-names", *(f"c{i}" for i in range(254))])[0]).class_names) == 254
    with pytest.raises(UserError, match="255 classes; at most 254 fit uint8 label maps"):
        with_class_table(parse_args(["--class-names", *(f"c{i}" for i in range(255))])[0])


def test_metrics_and_losses_with_8_classes(hf_root):
    """SegmentationMetrics' IoU against a numpy confusion matrix, and the fused loss against the unfused one,
    on the 8-class frames."""
    from losses import build_loss
    from metrics import SegmentationMetrics

    source = hf_source(hf_root)
    frames = source.frames("train", source.classes())
    target = np.stack([frames.read(i)[1] for i in (0, 2)]).astype(np.int64)  # two 64x128 frames
    rng = np.random.default_rng(0)
    pred = np.where(rng.random(target.shape) < 0.3, rng.integers(0, 8, target.shape), target)
    pred[target == IGNORE_INDEX] = rng.integers(0, 8, int((target == IGNORE_INDEX).sum()))
    metric = SegmentationMetrics(num_classes=8)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    result = metric.compute()
    valid = target != IGNORE_INDEX
    confusion = np.zeros((8, 8), np.int64)
    np.add.at(confusion, (target[valid], pred[valid]), 1)
    tp = np.diag(confusion)
    np.testing.assert_allclose(result["iou"], tp / (confusion.sum(0) + confusion.sum(1) - tp), atol=1e-12)
    assert 0 < result["boundary_f1"] < 1 and 0 < result["trimap_iou"] < 1

    labels = torch.from_numpy(target)
    logits = torch.randn(2, 8, *target.shape[1:], generator=torch.Generator().manual_seed(0))
    sdt = torch.from_numpy(np.stack([compute_sdt(t, num_classes=8) for t in target.astype(np.uint8)]))
    fused = build_loss("C", fused=True)(logits, labels, sdt)
    plain = build_loss("C", fused=False)(logits, labels, sdt)
    for term in ("loss", "ce", "dice", "boundary"):
        torch.testing.assert_close(fused[term], plain[term], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain["ce"], torch.nn.functional.cross_entropy(logits, labels, ignore_index=255))
