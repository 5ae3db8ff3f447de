"""Data and files that are wrong in ways the checks before the work did not see (issue 23 §3): a stale SDT
cache, val frames of two sizes, an empty HF split, a crop larger than every frame, a per-image file over
fewer images than its results, non-finite or bit-rotten checkpoint weights, a meta.json field of the wrong type.

Each test names its row of docs/faults.md. Checkpoints are the tiny ones of tests/test_checkpoint.py
(`_tiny_state`: saved without training) and tests/test_evaluate.py (`make_checkpoint`: random-init weights).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import evaluate
from engine.checkpoint import WEIGHTS_NAME, read_meta, resume_checkpoint, resume_from, save_checkpoint
from engine.checkpoint_eval import load_checkpoint
from tests.test_checkpoint import _one_step, _tiny_state
from tests.test_evaluate import make_checkpoint, tiny_config
from tests.test_faults import last_error_line
from tests.tiny_training import _tiny_cfg, read_rows, run_train
from utils.fileio import UserError

H, W = 64, 128


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """4 train / 3 val synthetic frames at 64x128 in the Cityscapes layout (read only; copy to change)."""
    from data_utils.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data") / "tiny", num_train=4, num_val=3, height=H, width=W,
                            progress=False)


# -------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_with_a_nan_weight_is_refused_on_load_naming_the_tensor(tiny, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "runs" / "A_seed1", 1, tiny_config(tiny))
    state = load_file(ckpt / WEIGHTS_NAME)
    name = sorted(k for k, v in state.items() if v.is_floating_point())[5]
    state[name].view(-1)[0] = float("nan")
    save_file(state, ckpt / WEIGHTS_NAME)  # written so (no checksum in this meta.json): the load must see it
    line = last_error_line(lambda: evaluate.main([str(ckpt)]), capsys)
    assert line == (f"error: {ckpt / WEIGHTS_NAME}: tensor {name} holds nan/inf; the checkpoint is unusable, use "
                    "another epoch (or delete it: a run then resumes from its previous checkpoint)")
    assert not list(ckpt.parent.glob("*.results.json"))  # nothing evaluated, nothing written
    state[name].view(-1)[0] = float("inf")
    save_file(state, ckpt / WEIGHTS_NAME)
    with pytest.raises(UserError, match=f"tensor {name} holds nan/inf"):  # predict.py's load, the same function
        load_checkpoint(ckpt)


def _rot_tail(path: Path, count: int = 64) -> None:
    """Same-size bit-rot: the last `count` bytes set to 0xff."""
    data = bytearray(path.read_bytes())
    data[-count:] = b"\xff" * count
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [WEIGHTS_NAME, "optimizer.bin"])
def test_bit_rot_in_a_checkpoint_is_refused_by_its_checksum_on_resume_and_evaluate(tmp_path, name):
    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path)
    _one_step(model, optimizer)
    progress.epoch, progress.step = 1, 3
    ckpt = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    assert set(read_meta(ckpt)["checksums"]) == {p.name for p in ckpt.iterdir()} - {"meta.json"}
    size = (ckpt / name).stat().st_size
    _rot_tail(ckpt / name)
    assert (ckpt / name).stat().st_size == size
    with pytest.raises(UserError, match=rf"^{ckpt / name}: does not match the sha256 checksum meta.json recorded"):
        resume_from(accelerator, ckpt, progress)
    if name == WEIGHTS_NAME:
        with pytest.raises(UserError, match=rf"^{ckpt / name}: does not match the sha256 checksum"):
            load_checkpoint(ckpt)


def test_checkpoints_without_checksums_still_load_and_pruning_keeps_the_checksums_of_what_is_kept(tmp_path):
    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path)  # keep_states=1
    _one_step(model, optimizer)
    progress.epoch = 1
    first = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    progress.epoch = 2
    second = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    assert set(read_meta(first)["checksums"]) == {WEIGHTS_NAME, "config.json"}  # pruned to weights + config
    load_checkpoint(first)
    meta = read_meta(second)
    del meta["checksums"]  # as saved before checksums existed
    (second / "meta.json").write_text(json.dumps(meta))
    progress.epoch = 0
    assert resume_from(accelerator, second, progress)["epoch"] == 2 == progress.epoch


def test_meta_json_field_of_the_wrong_type_is_one_line_in_evaluate_and_resume(tiny, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "runs" / "A_seed1", 1, tiny_config(tiny))
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "epoch": "x"}))
    line = last_error_line(lambda: evaluate.main([str(ckpt)]), capsys)
    assert line == (f"error: {ckpt}: meta.json's `epoch` is \"x\", not an integer >= 0; the checkpoint is corrupt: "
                    "copy it again or evaluate another epoch")

    accelerator, cfg, model, optimizer, progress = _tiny_state(tmp_path / "resume")
    progress.epoch = 1
    ckpt = save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    good = read_meta(ckpt)
    for field, value in (("epoch", "x"), ("num_processes", 0), ("training_state", "yes")):
        (ckpt / "meta.json").write_text(json.dumps({**good, field: value}))
        line = last_error_line(lambda: resume_checkpoint(cfg, num_processes=1), capsys)
        assert line.startswith(f"error: {ckpt}: is incomplete (meta.json's `{field}` is {json.dumps(value)}, not ")
        assert line.endswith("delete it to resume from scratch (no earlier checkpoint with training state), or pass "
                             "another --out for a new run")


# ------------------------------------------------------------------------------------------------ SDT cache
def test_stale_sdt_cache_from_other_labels_of_the_same_shape_is_refused_naming_the_frame(tiny, tmp_path, capsys):
    """N36: a cache made by precompute_sdt.py from another dataset of the same frame size and names trained with
    exit 0. train.py (the demo preset's loader workers, the cache read in them) stops with one line naming the
    frame's file; the precompute_sdt.py rerun it names redoes the stale files, which then read."""
    import precompute_sdt
    from data_utils.cityscapes import load_split
    from data_utils.dataset import SegmentationDataset
    from data_utils.synthetic import generate_dataset

    other = generate_dataset(tmp_path / "other", num_train=4, num_val=3, height=H, width=W, seed=99, progress=False)
    cache = tmp_path / "sdt"
    made = ["--split", "train", "--out", str(cache), "--jobs", "1"]
    assert precompute_sdt.main(["--data-root", str(other), *made]) == 0  # the other dataset's labels
    flags = ("--variant", "C", "--epochs", "1", "--sdt-source", "cache", "--sdt-cache", str(cache),
             "--num-workers", "2", "--batch-size", "2")
    line = last_error_line(lambda: run_train(tiny, tmp_path / "run", *flags), capsys)
    assert line.startswith(f"error: {cache}/") and ".sdt: made from other labels than this frame's" in line
    assert line.endswith("remake it: rerun precompute_sdt.py for this split with this --out and the run's data "
                         "flags (it redoes stale files)")
    assert precompute_sdt.main(["--data-root", str(tiny), *made]) == 0
    assert "4 written, 0 already valid" in capsys.readouterr().err  # every stale file redone
    assert precompute_sdt.main(["--data-root", str(tiny), *made, "--verify"]) == 0
    dataset = SegmentationDataset(load_split(tiny, "train"), sdt_source="cache", sdt_cache_dir=cache)
    assert all(dataset[i]["sdt"].shape == (dataset.num_classes, H, W) for i in range(len(dataset)))


def test_sdt_cache_of_format_version_1_is_refused_with_the_command_that_remakes_it(tiny, tmp_path):
    import precompute_sdt
    from data_utils.dataset import SegmentationDataset
    from data_utils.cityscapes import load_split

    cache = tmp_path / "sdt"
    made = ["--data-root", str(tiny), "--split", "train", "--out", str(cache), "--jobs", "1"]
    assert precompute_sdt.main(made) == 0
    path = sorted(cache.rglob("*.sdt"))[0]
    data = bytearray(path.read_bytes())
    data[8:10] = (1).to_bytes(2, "little")  # as written before label fingerprints
    path.write_bytes(bytes(data))
    dataset = SegmentationDataset(load_split(tiny, "train"), sdt_source="cache", sdt_cache_dir=cache)
    index = dataset.names.index(path.stem)
    with pytest.raises(UserError, match=rf"^{path}: SDT cache format version 1 \(not tied to its labels\), this code "
                                        r"reads version 2; remake the cache: rerun precompute_sdt.py"):
        dataset[index]
    assert precompute_sdt.main(made) == 0
    assert dataset[index]["sdt"].shape == (dataset.num_classes, H, W)


# ----------------------------------------------------------------------------------------- evaluate --all
def test_per_image_file_over_fewer_images_than_its_results_is_redone_by_evaluate_all(tiny, tmp_path, capsys):
    """A per_image.npz that is valid by itself but covers 2 of the 3 images: evaluate --all kept it and aggregate
    refused it, sending the user back to evaluate: a loop. evaluate --all now redoes it."""
    from engine.batch_eval import pending_reason
    from metrics.per_image import per_image_path, read_per_image, subset, write_per_image

    runs = tmp_path / "runs"
    ckpt = make_checkpoint(runs / "A_seed1", 1, tiny_config(tiny))
    assert evaluate.main(["--all", str(runs)]) == 0
    full = read_per_image(per_image_path(ckpt))
    write_per_image(per_image_path(ckpt), subset(full, [0, 2]))
    assert pending_reason(ckpt, "val") == "per-image statistics cover 2 of the 3 images of the results, redoing"
    capsys.readouterr()
    assert evaluate.main(["--all", str(runs)]) == 0
    assert "1 to evaluate" in capsys.readouterr().out
    assert read_per_image(per_image_path(ckpt))["names"].tolist() == full["names"].tolist()
    assert pending_reason(ckpt, "val") is None


def test_per_image_file_over_other_images_or_an_older_split_is_redone_by_evaluate_all(tiny, tmp_path, capsys):
    """As many images as the results, but other ones (results.json's `images_digest`) or other values (aggregate.py
    refused those as stale), or results and per-image file that agree with each other but not with the frames the
    split's folder holds now: all redone."""
    from data_utils.cityscapes import list_frames
    from data_utils.layout import image_path, label_path
    from engine.batch_eval import pending_reason
    from metrics.per_image import per_image_path, read_per_image, write_per_image

    data, runs = tmp_path / "data", tmp_path / "runs"
    shutil.copytree(tiny, data)
    ckpt = make_checkpoint(runs / "A_seed1", 1, tiny_config(data))
    assert evaluate.main(["--all", str(runs)]) == 0
    full = read_per_image(per_image_path(ckpt))
    write_per_image(per_image_path(ckpt), {**full, "names": full["names"][::-1] + "_x"})
    assert pending_reason(ckpt, "val") == "per-image statistics are over other images than the results, redoing"
    confusion = full["confusion"].copy()
    confusion[0, 0, 0] += 1000  # the right images, other values: aggregate.py calls it stale
    write_per_image(per_image_path(ckpt), {**full, "confusion": confusion})
    assert pending_reason(ckpt, "val").startswith("per-image statistics give miou ")
    write_per_image(per_image_path(ckpt), full)
    assert pending_reason(ckpt, "val") is None
    results = ckpt.with_name(ckpt.name + ".results.json")
    record = json.loads(results.read_text())
    results.write_text(json.dumps({k: v for k, v in record.items() if k != "images_digest"}))
    assert pending_reason(ckpt, "val") is None  # written before the digest existed: kept
    results.write_text(json.dumps(record))

    frame = list_frames(data, "val")[0]  # a fourth val frame, after the evaluation
    new = f"{frame['city']}_999999_000019"
    shutil.copy(frame["image_path"], image_path(data, "val", frame["city"], new))
    shutil.copy(frame["label_path"], label_path(data, "val", frame["city"], new))
    assert pending_reason(ckpt, "val") == ("per-image statistics over 3 images, the split 'val' holds 4 frames now "
                                           "(3 in both), redoing")
    assert pending_reason(ckpt, "val", data_root=str(tiny)) is None  # --data-root: that folder's split
    assert pending_reason(ckpt, "val", data_root=str(tmp_path / "moved")) is None  # unlisted: its evaluation says why
    capsys.readouterr()
    assert evaluate.main(["--all", str(runs)]) == 0
    assert "1 to evaluate" in capsys.readouterr().out
    assert sorted(read_per_image(per_image_path(ckpt))["names"].tolist()) == sorted(f["name"] for f in
                                                                                    list_frames(data, "val"))
    assert pending_reason(ckpt, "val") is None


# ------------------------------------------------------------------------------------------- HF datasets
@pytest.fixture(scope="module")
def hf_empty_val(tmp_path_factory) -> dict[str, Path]:
    """The same 2 train rows and an empty validation split, as save_to_disk writes them and as parquet files."""
    import datasets
    from data_utils.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("hf")
    saved = generate_dataset(root / "saved", num_train=2, num_val=0, height=H, width=W, progress=False, format="hf")
    train = datasets.load_from_disk(str(saved / "train"))
    (root / "parquet" / "data").mkdir(parents=True)
    train.to_parquet(str(root / "parquet" / "data" / "train-00000-of-00001.parquet"))
    train.select([]).to_parquet(str(root / "parquet" / "data" / "validation-00000-of-00001.parquet"))
    shutil.copy(saved / "id2label.json", root / "parquet")
    return {"saved": saved, "parquet": root / "parquet"}


@pytest.mark.parametrize("kind", ["saved", "parquet"])
def test_hf_dataset_with_an_empty_validation_split_is_one_line(hf_empty_val, kind, tmp_path, capsys):
    import train

    path = hf_empty_val[kind]
    argv = ["--preset", "demo", "--no-demo-data", "--no-wandb", "--hf-dataset", str(path), "--out",
            str(tmp_path / "run"), "--epochs", "1"]
    line = last_error_line(lambda: train.main(argv), capsys)
    assert line == (f"error: {path}: split 'validation' has no rows; add frames to it, or leave it out of the dataset "
                    "and train and evaluate on splits that have frames (--train-split / --val-split)")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- frame sizes
def test_val_frames_of_two_sizes_are_evaluated_one_per_batch(tiny, tmp_path):
    """A Cityscapes-layout val split with frames of two sizes passed the check before training, then failed after
    the whole first epoch suggesting --crop-size (which does not apply to val). The val loader now reads the PNG
    headers and takes one frame per batch when they differ: the run trains and evaluates every val frame."""
    from data_utils.synthetic import render_frame, second_size, write_frame
    from engine.setup import build_dataloader

    data = Path(shutil.copytree(tiny, tmp_path / "data"))
    write_frame(data, "val", 1, *render_frame(0, "val", 1, *second_size(H, W)))  # 80x96 among 64x128 frames
    cfg = _tiny_cfg(data_root=str(data), demo_data=False, batch_size=2)
    assert build_dataloader(cfg, "val", train=False).batch_size == 1
    assert build_dataloader(_tiny_cfg(data_root=str(tiny), demo_data=False, batch_size=2), "val",
                            train=False).batch_size == 2  # one size: batches as before
    assert run_train(data, tmp_path / "run", "--variant", "A", "--epochs", "1", "--batch-size", "2") == 0
    assert read_rows(tmp_path / "run")[-1]["val/miou"] > 0


def test_crop_larger_than_every_frame_is_one_line_before_any_work(tiny, tmp_path, capsys):

    line = last_error_line(lambda: run_train(tiny, tmp_path / "run", "--epochs", "1", "--crop-size", "100000",
                                            "100000"), capsys)
    assert line == (f"error: --crop-size 100000 100000: larger than every frame of split 'train' of {tiny} (the "
                    f"largest is {H}x{W}, HxW), so it would crop nothing and pad the rest; pass a crop of at most "
                    f"{H} {W}, or 0 0 for native frames")
    assert not (tmp_path / "run").exists()
    line = last_error_line(lambda: run_train(tiny, tmp_path / "run", "--epochs", "1", "--crop-size", "32", "129"),
                          capsys)
    assert line.startswith("error: --crop-size 32 129: larger than every frame")


def test_train_frames_of_two_sizes_without_a_crop_are_one_line_before_any_work(tiny, tmp_path, capsys):
    from data_utils.synthetic import render_frame, second_size, write_frame

    data = Path(shutil.copytree(tiny, tmp_path / "data"))
    write_frame(data, "train", 2, *render_frame(0, "train", 2, *second_size(H, W)))
    line = last_error_line(lambda: run_train(data, tmp_path / "run", "--epochs", "1", "--batch-size", "2"), capsys)
    assert line == (f"error: split 'train' of {data} holds frames of 2 sizes (HxW: {H}x{W} (3 frames), 80x96 (1 "
                    "frame)); frames are not resized, so a training batch needs one size: pass --crop-size H W or "
                    "--batch-size 1")
    assert not (tmp_path / "run").exists()
