"""The data path: builder, label mapping, Dataset/collate, joint flip, SDT sources, augmentation, demo data.

References are independent of the code under test: the official *_labelTrainIds.png of a real frame,
PIL-decoded PNGs, scipy.ndimage.gaussian_filter, torchvision's adjust_* functions, explicit YIQ matrices.
"""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter

from data_utils import dataset as dataset_module
from data_utils import synthetic
from data_utils.augment import BatchAugment, colour_matrices, gaussian_blur, normalize
from data_utils.cityscapes import CityscapesBuilder, list_frames, load_split, resolve_data_root
from data_utils.dataset import (
    SegmentationDataset,
    collate_batch,
    hflip_decision,
    read_frame,
    read_image,
    read_label_ids,
    read_train_ids,
)
from data_utils.labels import CITYSCAPES
from utils import UserError

SAMPLE = "frankfurt_000000_000294"
H, W = 128, 256  # demo frames for tests: small, still showing all 19 classes


def _png(path) -> np.ndarray:
    return np.array(Image.open(path))


def _sample_paths(root):
    gt = root / "gtFine" / "val" / "frankfurt" / SAMPLE
    return {"image": root / "leftImg8bit" / "val" / "frankfurt" / f"{SAMPLE}_leftImg8bit.png",
            "labelIds": f"{gt}_gtFine_labelIds.png", "labelTrainIds": f"{gt}_gtFine_labelTrainIds.png",
            "instanceIds": f"{gt}_gtFine_instanceIds.png"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """A small synthetic dataset (3 train, 2 val) shared by the tests that only read it."""
    return synthetic.generate_dataset(tmp_path_factory.mktemp("demo") / "cityscapes", 3, 2, H, W, seed=7,
                                      progress=False)


@pytest.fixture
def scratch_root(demo_root, tmp_path):
    """A private copy of the demo dataset that a test may damage."""
    return shutil.copytree(demo_root, tmp_path / "root")


# ------------------------------------------------------------------------------------ the real sample frame
def test_real_sample_loads_through_builder(cityscapes_sample, tmp_path):
    ds = load_split(cityscapes_sample, "val", cache_dir=tmp_path / "hf")
    assert ds.column_names == ["name", "city", "image_path", "label_path"]
    assert len(ds) == 1 and ds[0]["name"] == SAMPLE and ds[0]["city"] == "frankfurt"
    paths = _sample_paths(cityscapes_sample.resolve())
    assert ds[0]["image_path"] == str(paths["image"]) and ds[0]["label_path"] == paths["labelIds"]
    assert not any((tmp_path / "hf").glob("**/*.png"))  # paths are stored, not pixels


# cityscapesScripts helpers/labels.py, transcribed independently of data_utils.labels: id -> trainId.
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                      26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # every other id in 0..33 -> 255


C = CITYSCAPES.num_classes


def test_label_table_matches_cityscapes_scripts():
    mapped = CITYSCAPES.to_train_ids(np.arange(34, dtype=np.uint8)[None], "label ids 0..33", "fix the table")[0]
    assert mapped.tolist() == [OFFICIAL_TRAIN_IDS.get(label_id, 255) for label_id in range(34)]


def test_real_sample_mapping_reproduces_official_train_ids(cityscapes_sample, tmp_path):
    """labelIds -> trainIds with our table against the official labelTrainIds file of the same frame.

    The sample is an 8x downscale in which the two files were resampled separately, so they disagree on
    0.2 % of pixels, all within 2 px of a label boundary. Hence: every label id's pixels carry (by majority)
    the official train id of that id, and away from boundaries the maps are identical pixel for pixel.
    """
    paths = _sample_paths(cityscapes_sample)
    label_ids, official = _png(paths["labelIds"]), _png(paths["labelTrainIds"])
    mapped = read_train_ids(str(paths["labelIds"]))
    for label_id in np.unique(label_ids):
        values, counts = np.unique(official[label_ids == label_id], return_counts=True)
        assert values[counts.argmax()] == mapped[label_ids == label_id][0], f"label id {label_id}"
    near_boundary = maximum_filter(label_ids, 5) != minimum_filter(label_ids, 5)
    assert (~near_boundary).mean() > 0.6
    np.testing.assert_array_equal(mapped[~near_boundary], official[~near_boundary])
    assert (mapped != official).mean() < 0.005
    item = SegmentationDataset(load_split(cityscapes_sample, "val", cache_dir=tmp_path))[0]
    assert item["label"].dtype == torch.uint8  # 1/8 of int64's bytes through the loader; .long() on the device
    np.testing.assert_array_equal(item["label"].numpy(), mapped)


def _check_instances_agree(label_ids: np.ndarray, instance_ids: np.ndarray) -> None:
    """Cityscapes encoding: id*1000 + k for instances of a class, the plain label id otherwise."""
    assert instance_ids.shape == label_ids.shape
    grouped = instance_ids >= 1000
    np.testing.assert_array_equal(instance_ids[grouped] // 1000, label_ids[grouped])
    np.testing.assert_array_equal(instance_ids[~grouped], label_ids[~grouped])


def test_real_sample_instance_ids_agree_with_label_ids(cityscapes_sample):
    paths = _sample_paths(cityscapes_sample)
    instance_ids = _png(paths["instanceIds"]).astype(np.int64)
    assert (instance_ids >= 1000).any() and (instance_ids < 1000).any()
    _check_instances_agree(_png(paths["labelIds"]).astype(np.int64), instance_ids)


# ------------------------------------------------------------------------------------------ builder
def test_builder_lists_sorted_frames_and_keys_cache_by_file_list(scratch_root, tmp_path):
    cache = tmp_path / "hf"
    builder = CityscapesBuilder(data_root=scratch_root, splits=("train", "val"), cache_dir=cache)
    builder.download_and_prepare()
    names = builder.as_dataset("train")["name"]
    assert list(names) == sorted(names) == [f"synthtown_{i:06d}_000019" for i in range(3)]
    assert len(builder.as_dataset("val")) == 2
    # Remove a frame: the next load must see the new list, not the cached table.
    name = "synthtown_000001_000019"
    (scratch_root / "leftImg8bit/train/synthtown" / f"{name}_leftImg8bit.png").unlink()
    for suffix in ("labelIds", "instanceIds"):
        (scratch_root / "gtFine/train/synthtown" / f"{name}_gtFine_{suffix}.png").unlink()
    assert list(load_split(scratch_root, "train", cache_dir=cache)["name"]) == [
        "synthtown_000000_000019", "synthtown_000002_000019"]
    # Same list again: the cached table is reused (no new cache folder).
    before = sorted(p.name for p in (cache / "cityscapes").iterdir())
    load_split(scratch_root, "train", cache_dir=cache)
    assert sorted(p.name for p in (cache / "cityscapes").iterdir()) == before


def test_data_root_from_environment(demo_root, monkeypatch):
    monkeypatch.setenv("CITYSCAPES_DATASET", str(demo_root))
    assert resolve_data_root(None) == demo_root
    with pytest.raises(UserError, match="leftImg8bit"):
        resolve_data_root(demo_root / "..")  # the argument wins over the environment


# ------------------------------------------------------------------------------------------ bad input
def test_the_city_of_a_frame_name_places_cache_files_and_predictions_alike(tmp_path):
    """One rule (data_utils.layout.frame_city) for the SDT cache's and the test-server predictions' folders."""
    from data_utils.layout import frame_city
    from data_utils.labels import CITYSCAPES
    from data_utils.sdt_cache import sdt_cache_path
    from engine.predictions import PredictionWriter

    cases = {"frankfurt_000000_000294": "frankfurt", "bad_honnef_000001_000019": "bad_honnef",
             "validation_000003": None, "frame": None}
    assert {name: frame_city(name) for name in cases} == cases
    writer = PredictionWriter(tmp_path / "preds", CITYSCAPES, threads=1)
    writer(list(cases), torch.zeros(len(cases), 3, 2, 4, dtype=torch.uint8), torch.zeros(len(cases), 2, 4,
                                                                                          dtype=torch.uint8))
    assert writer.close() == len(cases)
    for name, city in cases.items():
        folder = tmp_path / "cache" / city if city else tmp_path / "cache"
        assert sdt_cache_path(tmp_path / "cache", name) == folder / f"{name}.sdt"
        png = tmp_path / "preds" / "labelIds" / (city or "") / f"{name}_labelIds.png"
        assert np.array(Image.open(png)).tolist() == [[7] * 4] * 2  # train id 0 (road) as label id 7
        assert (tmp_path / "preds" / "overlay" / (city or "") / f"{name}_overlay.jpg").is_file()


def test_missing_root_errors_name_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    with pytest.raises(UserError, match="CITYSCAPES_DATASET"):
        resolve_data_root(None)
    with pytest.raises(UserError, match=str(tmp_path / "absent")):
        load_split(tmp_path / "absent", "train", cache_dir=tmp_path)
    (tmp_path / "partial" / "leftImg8bit").mkdir(parents=True)
    with pytest.raises(UserError, match=str(tmp_path / "partial" / "gtFine")):
        resolve_data_root(tmp_path / "partial")


def test_missing_split_names_the_folder(demo_root, tmp_path):
    with pytest.raises(UserError, match=rf"{demo_root}/leftImg8bit/test: split 'test' not found.*train, val"):
        load_split(demo_root, "test", cache_dir=tmp_path)


def test_image_without_label_and_label_without_image(scratch_root, tmp_path):
    image = scratch_root / "leftImg8bit/val/synthcity/synthcity_000001_000019_leftImg8bit.png"
    label = scratch_root / "gtFine/val/synthcity/synthcity_000001_000019_gtFine_labelIds.png"
    moved = tmp_path / "moved.png"
    shutil.move(label, moved)
    with pytest.raises(UserError, match=rf"{image}: image has no label"):
        load_split(scratch_root, "val", cache_dir=tmp_path)
    shutil.move(moved, label)
    image.unlink()
    with pytest.raises(UserError, match=rf"{label}: label has no image"):
        load_split(scratch_root, "val", cache_dir=tmp_path)


def test_real_fullres_val_without_images_is_reported(cityscapes_fullres, tmp_path):
    with pytest.raises(UserError, match=r"leftImg8bit/val: split 'val' not found; available splits: train"):
        load_split(cityscapes_fullres, "val", cache_dir=tmp_path)


def _frame(root, split="val", index=0):
    return list_frames(root.resolve(), split)[index]


def test_size_mismatch_names_the_label(scratch_root):
    frame = _frame(scratch_root)
    Image.fromarray(np.full((H, W + 2), 7, np.uint8)).save(frame["label_path"])
    with pytest.raises(UserError, match=rf"{frame['label_path']}: label is {W + 2}x{H} but its image"):
        read_frame(frame["image_path"], frame["label_path"])


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_png_names_the_file(scratch_root, damage):
    frame = _frame(scratch_root)
    data = open(frame["image_path"], "rb").read()
    open(frame["image_path"], "wb").write(data[: len(data) // 2] if damage == "truncated" else b"not a png" * 50)
    dataset = SegmentationDataset([frame])
    with pytest.raises(UserError, match=rf"{frame['image_path']}: cannot decode PNG"):
        dataset[0]


def _save_png(path, array: np.ndarray, mode: str | None = None, **options) -> str:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **options)
    return str(path)


@pytest.fixture
def decoder_calls(monkeypatch):
    """The files pyspng decoded (a spy on `pyspng.load`); fails when pyspng is not installed."""
    pyspng = pytest.importorskip("pyspng")
    calls, real_load = [], pyspng.load

    def load(data, *args, **kwargs):
        calls.append(len(data))
        return real_load(data, *args, **kwargs)

    monkeypatch.setattr(pyspng, "load", load)
    return calls


IMAGE_CASES = {  # name -> (array, PIL mode to save, options): every 8-bit mode read_image accepts
    "RGB": ((0, 256, (37, 53, 3)), None, {}),
    "RGB, transparent colour": ((0, 256, (37, 53, 3)), None, {"transparency": (1, 2, 3)}),
    "RGB, optimized": ((0, 4, (37, 53, 3)), None, {"optimize": True}),
    "RGBA": ((0, 256, (37, 53, 4)), None, {}),
    "L": ((0, 256, (37, 53)), None, {}),
    "LA": ((0, 256, (37, 53, 2)), None, {}),
    "P": ((0, 256, (37, 53, 3)), "P", {}),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_read_image_equals_pil_for_every_mode(tmp_path, case, decoder_calls):
    """pyspng where it can (8-bit RGB), PIL for the rest: always PIL's RGB pixels, bit for bit."""
    (low, high, shape), mode, options = IMAGE_CASES[case]
    array = np.random.default_rng(0).integers(low, high, shape, dtype=np.uint8)
    path = _save_png(tmp_path / "image.png", array, mode, **options)
    expected = np.array(Image.open(path).convert("RGB"))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, expected)
    assert len(decoder_calls) == (Image.open(path).mode == "RGB")


@pytest.mark.parametrize("mode", ["L", "P"])
def test_read_label_ids_equals_pil(tmp_path, mode, decoder_calls):
    ids = np.random.default_rng(1).integers(0, 34, (41, 67), dtype=np.uint8)
    path = _save_png(tmp_path / "label.png", ids, mode)
    np.testing.assert_array_equal(read_label_ids(path), np.array(Image.open(path)))
    np.testing.assert_array_equal(read_label_ids(path), ids)
    assert len(decoder_calls) == 2 * (mode == "L")


def test_sixteen_bit_label_is_refused_by_either_decoder(tmp_path, decoder_calls):
    path = _save_png(tmp_path / "instanceIds.png", np.full((9, 11), 26001, np.uint16))
    with pytest.raises(UserError, match="label mode I;16, expected an 8-bit single-channel"):
        read_label_ids(path)
    assert decoder_calls == []


def test_real_frames_decode_as_pil_does(cityscapes_fullres, decoder_calls, monkeypatch):
    """The real 2048x1024 frames (pyspng) equal PIL's pixels, and PIL alone (no pyspng) gives the same."""
    record = list_frames(cityscapes_fullres, "train")[0]
    fast = read_frame(record["image_path"], record["label_path"])
    assert len(decoder_calls) == 2
    monkeypatch.setattr(dataset_module, "pyspng", None)
    slow = read_frame(record["image_path"], record["label_path"])
    np.testing.assert_array_equal(fast[0], _png(record["image_path"]))
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_unknown_label_id_names_the_file(scratch_root):
    frame = _frame(scratch_root)
    label_ids = _png(frame["label_path"])
    label_ids[5, 5] = 40  # outside 0..33
    Image.fromarray(label_ids).save(frame["label_path"])
    with pytest.raises(UserError, match=rf"{frame['label_path']}: label ids \[40\] are not in the Cityscapes table"):
        SegmentationDataset([frame])[0]


def test_colour_or_instance_map_as_label_is_refused(scratch_root):
    frame = _frame(scratch_root)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(frame["label_path"])
    with pytest.raises(UserError, match=rf"{frame['label_path']}: label mode RGB"):
        read_frame(frame["image_path"], frame["label_path"])


# ---------------------------------------------------------------------------- generator -> builder -> Dataset
def test_generator_builder_dataset_round_trip(demo_root, tmp_path):
    records = load_split(demo_root, "train", cache_dir=tmp_path)
    dataset_u8 = SegmentationDataset(records, image_dtype="uint8")
    dataset_f = SegmentationDataset(records)
    seen = set()
    for i, record in enumerate(records):
        image_png, label_png = _png(record["image_path"]), _png(record["label_path"])
        assert image_png.shape == (H, W, 3) and label_png.dtype == np.uint8
        item = dataset_u8[i]
        assert item["name"] == record["name"] and "sdt" not in item
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, H, W)
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), image_png)
        train_ids = read_train_ids(record["label_path"])
        np.testing.assert_array_equal(item["label"].numpy(), train_ids)
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        expected = ((image_png / 255.0 - mean) / std).transpose(2, 0, 1)
        np.testing.assert_allclose(dataset_f[i]["image"].numpy(), expected, atol=1e-5)
        _check_instances_agree(label_png.astype(np.int64),
                               _png(record["label_path"].replace("labelIds", "instanceIds")).astype(np.int64))
        present = set(np.unique(train_ids).tolist())
        assert present >= set(range(C)), f"{record['name']} lacks {set(range(C)) - present}"
        seen |= set(np.unique(label_png).tolist())
    assert seen & {1, 2, 4, 6, 9, 10}, "some void ids appear"
    batch = collate_batch([dataset_u8[0], dataset_u8[1]])
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    assert batch["label"].dtype == torch.uint8 and batch["label"].is_contiguous()
    assert batch["name"] == list(records["name"][:2])


def test_generator_is_deterministic_and_prefix_stable(demo_root):
    """Frame i depends only on (seed, split, i): regenerating it alone gives the file's exact pixels."""
    image, label_ids, instance_ids = synthetic.render_frame(7, "val", 1, H, W)
    city, name = synthetic.frame_name("val", 1)
    np.testing.assert_array_equal(image, _png(demo_root / "leftImg8bit/val" / city / f"{name}_leftImg8bit.png"))
    np.testing.assert_array_equal(label_ids, _png(demo_root / "gtFine/val" / city / f"{name}_gtFine_labelIds.png"))
    np.testing.assert_array_equal(instance_ids,
                                  _png(demo_root / "gtFine/val" / city / f"{name}_gtFine_instanceIds.png"))
    assert not np.array_equal(synthetic.render_frame(8, "val", 1, H, W)[1], label_ids)


def test_generate_refuses_existing_folder_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match=rf"{out}: already exists"):
        synthetic.generate_dataset(out, 1, 1, H, W, progress=False)
    calls = []

    def failing_write(*args):
        calls.append(1)
        raise KeyboardInterrupt  # an interrupt after the first frame

    monkeypatch.setattr(synthetic, "write_frame", failing_write)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate_dataset(tmp_path / "fresh", 2, 1, H, W, progress=False)
    assert calls and sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no target, no temp folder


def test_ensure_demo_dataset_generates_once_even_when_racing(tmp_path):
    root = tmp_path / "demo"
    results, errors = [], []

    def call():
        try:
            results.append(synthetic.ensure_demo_dataset(root, num_train=2, num_val=1, height=64, width=128))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [root] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # losers removed their temp folders
    assert len(list_frames(root, "train")) == 2 and len(list_frames(root, "val")) == 1
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert synthetic.ensure_demo_dataset(root, num_train=2, num_val=1, height=64, width=128) == root
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    with pytest.raises(UserError, match="synthetic.json: demo dataset was generated with"):
        synthetic.ensure_demo_dataset(root, num_train=5, num_val=1, height=64, width=128)


def test_ensure_demo_dataset_loser_of_the_rename_returns_the_winners_copy(tmp_path, monkeypatch):
    """Another process completes the same dataset while we generate: our rename fails, theirs is used."""
    root, real_write = tmp_path / "demo", synthetic.write_frame
    size = dict(num_train=1, num_val=1, height=64, width=128)

    def write_and_let_the_other_process_finish(*args):
        monkeypatch.setattr(synthetic, "write_frame", real_write)
        synthetic.generate_dataset(root, size["num_train"], size["num_val"], 64, 128, seed=0, progress=False)
        real_write(*args)

    monkeypatch.setattr(synthetic, "write_frame", write_and_let_the_other_process_finish)
    assert synthetic.ensure_demo_dataset(root, **size) == root
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert len(list_frames(root, "train")) == 1


def test_synthetic_and_inspect_clis(tmp_path):
    from data_utils import inspect

    out = tmp_path / "cli"
    argv = ["--out", str(out), "--train", "1", "--val", "1", "--height", "64", "--width", "128", "--seed", "3"]
    assert synthetic.main(argv) == 0
    with pytest.raises(UserError, match="already exists"):  # run_main makes it one line and exit code 2
        synthetic.main(argv)
    overlays = tmp_path / "overlays"
    assert inspect.main(["--data-root", str(out), "--split", "val", "--out", str(overlays)]) == 0
    (png,) = overlays.glob("*_overlay.png")
    overlay = _png(png)
    assert overlay.shape[1] == 128 and overlay.shape[0] > 2 * 64
    np.testing.assert_array_equal(overlay[:64], _png(_frame(out)["image_path"]))  # top half: the plain image
    with pytest.raises(UserError, match="nowhere: Cityscapes root does not exist"):
        inspect.main(["--data-root", str(tmp_path / "nowhere"), "--out", str(overlays)])


# --------------------------------------------------------------------------- flips, epochs, SDT sources
def test_hflip_decision_is_a_fair_pure_function():
    flips = [hflip_decision(3, e, i)[0] for e in range(4) for i in range(500)]
    assert 0.45 < np.mean(flips) < 0.55
    assert [hflip_decision(3, 2, i) for i in range(20)] == [hflip_decision(3, 2, i) for i in range(20)]
    assert [hflip_decision(3, 2, i) for i in range(20)] != [hflip_decision(3, 1, i) for i in range(20)]
    assert [hflip_decision(3, 2, i) for i in range(20)] != [hflip_decision(4, 2, i) for i in range(20)]


def _index_with_flip(seed, epoch, n, want: bool) -> int:
    return next(i for i in range(n) if hflip_decision(seed, epoch, i)[0] == want)


@pytest.mark.parametrize("source", ["cpu", "cache"])
def test_flip_moves_image_label_and_sdt_together(demo_root, tmp_path, source):
    from data_utils.sdt import compute_sdt

    records = list_frames(demo_root, "train")
    cache = tmp_path / "sdt"
    if source == "cache":
        from data_utils.sdt_cache import sdt_cache_path, write_sdt_file

        for r in records:
            labels = read_train_ids(r["label_path"])
            write_sdt_file(sdt_cache_path(cache, r["name"]), compute_sdt(labels, C), labels=labels)
    # Seed 2 flips frames [x, x, -] in epoch 0 and [-, x, x] in epoch 1: both cases in both epochs.
    dataset = SegmentationDataset(records, hflip=True, seed=2, image_dtype="uint8", sdt_source=source,
                                  sdt_cache_dir=cache if source == "cache" else None)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for want in (True, False):
            i = _index_with_flip(2, epoch, len(records), want)
            image, label = _png(records[i]["image_path"]), read_train_ids(records[i]["label_path"])
            if want:
                image, label = image[:, ::-1], label[:, ::-1]
            item = dataset[i]
            np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), image)
            np.testing.assert_array_equal(item["label"].numpy(), label)
            assert item["sdt"].dtype == torch.int8 and item["sdt"].shape == (C, H, W)
            # The SDT of the flipped label, computed from scratch: flip and distance transform commute.
            np.testing.assert_array_equal(item["sdt"].numpy(), compute_sdt(np.ascontiguousarray(label), C))


def test_sdt_cache_missing_or_mismatched_file_names_the_path(demo_root, tmp_path):
    from data_utils.sdt import compute_sdt
    from data_utils.sdt_cache import sdt_cache_path, write_sdt_file

    records = list_frames(demo_root, "val")
    cache = tmp_path / "sdt"
    dataset = SegmentationDataset(records, sdt_source="cache", sdt_cache_dir=cache)
    path = sdt_cache_path(cache, records[0]["name"])
    with pytest.raises(UserError, match=rf"{path}: SDT cache file not found"):
        dataset[0]
    label = read_train_ids(records[0]["label_path"])
    write_sdt_file(path, compute_sdt(label, C, clip=20), labels=label, clip=20)  # made with another clip
    with pytest.raises(UserError, match=rf"{path}: cached SDT was clipped at 20"):
        dataset[0]
    write_sdt_file(path, compute_sdt(label[:, :-1], C), labels=label[:, :-1])  # made for another size
    with pytest.raises(UserError, match=rf"{path}: cached SDT has shape"):
        dataset[0]


def test_resumed_run_sees_the_same_flips_also_in_persistent_workers(demo_root):
    records = list_frames(demo_root, "train")
    # Seed 1 flips frames [-, -, x] in epoch 0 and [x, x, x] in epoch 3: a worker stuck in epoch 0 would show.
    assert [hflip_decision(1, 0, i)[0] for i in range(3)] != [hflip_decision(1, 3, i)[0] for i in range(3)]
    first = SegmentationDataset(records, hflip=True, seed=1, image_dtype="uint8")
    expected = {}
    for epoch in (0, 3):
        first.set_epoch(epoch)
        expected[epoch] = [first[i]["label"] for i in range(len(records))]
    resumed = SegmentationDataset(records, hflip=True, seed=1, image_dtype="uint8")  # a fresh process's view
    loader = torch.utils.data.DataLoader(resumed, batch_size=1, num_workers=1, persistent_workers=True,
                                         collate_fn=collate_batch)
    for epoch in (0, 3):  # the worker starts in epoch 0 and lives on; set_epoch must still reach it
        resumed.set_epoch(epoch)
        got = [batch["label"][0] for batch in loader]
        assert all(torch.equal(g, e) for g, e in zip(got, expected[epoch], strict=True)), f"epoch {epoch}"


def test_cpu_worker_augmentation_matches_batch_augment(demo_root):
    records = list_frames(demo_root, "val")
    augment = BatchAugment()
    dataset = SegmentationDataset(records, hflip=True, seed=2, augment=augment)
    plain = SegmentationDataset(records, hflip=True, seed=2, image_dtype="uint8")
    for i in range(len(records)):
        _, sample_seed = hflip_decision(2, 0, i)
        expected = augment(plain[i]["image"][None], seed=sample_seed)[0]
        torch.testing.assert_close(dataset[i]["image"], expected, rtol=0, atol=0)


def test_collate_refuses_mixed_sizes():
    items = [{"image": torch.zeros(3, 4, 6), "label": torch.zeros(4, 6, dtype=torch.long), "name": "a"},
             {"image": torch.zeros(3, 4, 8), "label": torch.zeros(4, 8, dtype=torch.long), "name": "b"}]
    with pytest.raises(UserError, match=r"frames \['a', 'b'\] have different sizes"):
        collate_batch(items)


def test_real_fullres_frame_through_dataset(cityscapes_fullres, tmp_path):
    records = load_split(cityscapes_fullres, "train", cache_dir=tmp_path)
    assert len(records) == 8 and records[0]["name"] == "aachen_000000_000019"
    item = SegmentationDataset(records, hflip=True, seed=0)[0]
    assert item["image"].shape == (3, 1024, 2048) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1024, 2048)
    values = set(item["label"].unique().tolist())
    assert values <= set(range(C)) | {255} and len(values) > 5


# ------------------------------------------------------------------------------------------ augmentation
def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return x * std + mean


def test_batch_augment_deterministic_finite_normalised():
    images = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8)
    augment = BatchAugment(blur_prob=0.5)
    out = augment(images, seed=123)
    assert out.dtype == torch.float32 and out.shape == images.shape and torch.isfinite(out).all()
    assert torch.equal(out, augment(images, seed=123))
    assert not torch.equal(out, augment(images, seed=124))
    pixels = _unnormalize(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # clamped to [0, 1] before normalising


def test_batch_augment_disabled_is_plain_normalisation():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    off = BatchAugment(brightness=0, contrast=0, saturation=0, hue=0, blur_prob=0)
    assert torch.equal(off(images, seed=1), normalize(images))
    expected = (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(images), expected)


def test_colour_jitter_matches_torchvision_where_nothing_clips():
    """brightness -> contrast -> saturation against torchvision's own functions (values kept in [0.3, 0.6])."""
    import torchvision.transforms.functional as TF

    torch.manual_seed(0)
    images = 0.3 + 0.3 * torch.rand(4, 3, 20, 24)
    augment = BatchAugment(brightness=0.2, contrast=0.2, saturation=0.2, hue=0, blur_prob=0)
    params = augment.sample_params(4, seed=9)
    got = _unnormalize(augment(images, seed=9))
    for n in range(4):
        x = TF.adjust_brightness(images[n], float(params["brightness"][n]))
        x = TF.adjust_contrast(x, float(params["contrast"][n]))
        x = TF.adjust_saturation(x, float(params["saturation"][n]))
        torch.testing.assert_close(got[n], x, atol=2e-4, rtol=0)  # 0.2989 vs 0.299 luma weight


def test_hue_rotation_properties():
    """YIQ hue rotation: gray stays gray, luma is kept, rotations compose, a full turn is the identity."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
    one = torch.ones(1)

    def hue(h):
        return colour_matrices(one, one, one, torch.tensor([h], dtype=torch.float64))[0]

    gray = torch.full((3,), 0.4, dtype=torch.float64)
    colour = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)

    def angle(rgb):  # of the chroma in the YIQ (I, Q) plane
        _, i, q = yiq @ rgb
        return torch.atan2(q, i)

    for h in (0.05, -0.2, 0.5):
        torch.testing.assert_close(hue(h) @ gray, gray)
        torch.testing.assert_close((yiq @ hue(h) @ colour)[0], (yiq @ colour)[0])  # luma Y unchanged
        turned = angle(hue(h) @ colour) - angle(colour) - 2 * torch.pi * h
        assert abs(torch.remainder(turned + torch.pi, 2 * torch.pi) - torch.pi) < 1e-9  # moved by 2πh
    torch.testing.assert_close(hue(0.1) @ hue(0.15), hue(0.25))
    torch.testing.assert_close(hue(1.0 - 1e-12), torch.eye(3, dtype=torch.float64))


def test_blur_against_scipy():
    # Hand case: a single bright pixel spreads into the 2-D Gaussian kernel scipy builds.
    delta = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    delta[0, 0, 10, 10] = 1.0
    expected = gaussian_filter(delta[0, 0].numpy(), 1.5, mode="mirror", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(delta, torch.tensor([1.5]))[0, 0].numpy(), expected, atol=1e-12)
    # Random images, one sigma each (a shared kernel length, zero-padded per image), near the borders too.
    images = torch.rand(2, 3, 30, 40, dtype=torch.float64)
    sigmas = torch.tensor([0.6, 2.0])
    out = gaussian_blur(images, sigmas)
    for n in range(2):
        ref = gaussian_filter(images[n].numpy(), (0, float(sigmas[n]), float(sigmas[n])), mode="mirror")
        np.testing.assert_allclose(out[n].numpy(), ref, atol=1e-7)


def test_batch_augment_blur_only_equals_scipy():
    images = torch.randint(0, 256, (4, 3, 24, 32), dtype=torch.uint8)
    augment = BatchAugment(brightness=0, contrast=0, saturation=0, hue=0, blur_prob=0.5)
    params = augment.sample_params(4, seed=4)
    assert 0 < int(params["blur"].sum()) < 4
    got = _unnormalize(augment(images, seed=4)).numpy()
    for n in range(4):
        x = images[n].double().numpy() / 255
        if params["blur"][n]:
            sigma = float(params["sigma"][n])
            x = gaussian_filter(x, (0, sigma, sigma), mode="mirror")
        np.testing.assert_allclose(got[n], x, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batch_augment_same_on_gpu():
    images = torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8)
    augment = BatchAugment(blur_prob=1.0)
    torch.testing.assert_close(augment(images.cuda(), seed=3).cpu(), augment(images, seed=3), atol=1e-4, rtol=0)
