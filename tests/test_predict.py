"""predict.py end to end on a demo-preset checkpoint trained for one epoch on tiny synthetic frames: the outputs
for images of several sizes and modes, conversions, failures, --gt metrics, and the ONNX export round trip."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from data_utils.image_files import find_images, read_rgb
from data_utils.labels import CITYSCAPES
from engine.checkpoint_eval import load_checkpoint
from engine.inference import Inference
from engine.inference import predict as predict_ids
from engine.checkpoint import resolve_checkpoint
from report.load import load_runs_dir
from tests.tiny_training import train_main
from utils import UserError
from utils.conventions import IGNORE_INDEX
from utils.fileio import EXIT_BAD_INPUT, EXIT_PARTIAL_FAILURE


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """runs/demo/C_seed42 as after the demo (preset as shipped, its model), trained 1 epoch on 4 tiny frames."""
    from data_utils.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("predict")
    data = generate_dataset(root / "data", num_train=4, num_val=2, height=64, width=128, progress=False)
    out = root / "runs" / "demo" / "C_seed42"
    assert train_main(["--preset", "demo", "--no-demo-data", "--no-wandb", "--num-workers", "0",
                       "--data-root", str(data), "--out", str(out), "--epochs", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory, run_dir):
    """A folder of images of three sizes and kinds (RGB PNG, JPEG, RGBA, grayscale, 16-bit) and a sub-folder."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    val = sorted((run_dir.parent.parent.parent / "data" / "leftImg8bit" / "val").rglob("*.png"))
    Image.open(val[0]).save(folder / "frame.png")
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (45, 77, 3), np.uint8)).save(folder / "sub" / "odd.jpg")
    Image.fromarray(rng.integers(0, 256, (45, 77, 4), np.uint8)).save(folder / "sub" / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (96, 64), np.uint8)).save(folder / "gray.webp", lossless=True)
    Image.fromarray(rng.integers(0, 65536, (64, 128), np.uint16)).save(folder / "deep.png")
    return folder


OUTPUTS = ("_trainIds.png", "_labelIds.png", "_color.png", "_overlay.jpg")
NAMES = ("frame", "sub/odd", "sub/alpha", "gray", "deep")


def test_demo_run_folder_with_flip_writes_every_output_matching_the_inference_module(run_dir, images, tmp_path,
                                                                                       capsys):
    out = tmp_path / "preds"
    assert predict.main([str(run_dir), str(images), "--out", str(out), "--flip", "--batch-size", "2",
                         "--num-workers", "0"]) == 0
    stdout = capsys.readouterr().out
    assert "RGBA converted to RGB (alpha dropped)" in stdout and "16-bit" in stdout and "grayscale" in stdout
    _, _, model = load_checkpoint(resolve_checkpoint(run_dir))
    for name in NAMES:
        for suffix in OUTPUTS:
            assert (out / f"{name}{suffix}").is_file(), name + suffix
        image, _ = read_rgb(next(images.glob(f"{name}.*")))
        train_ids = np.asarray(Image.open(out / f"{name}_trainIds.png"))
        with torch.no_grad():
            expected = predict_ids(model.eval(), torch.from_numpy(image.transpose(2, 0, 1).copy())[None],
                                   inference=Inference(flip=True))[0].numpy()
        np.testing.assert_array_equal(train_ids, expected)
        label_ids = np.asarray(Image.open(out / f"{name}_labelIds.png"))
        # the label ids the test server reads map back to the train ids
        np.testing.assert_array_equal(CITYSCAPES.to_train_ids(label_ids, "labelIds", ""), train_ids)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_color.png")),
                                      CITYSCAPES.colorize(train_ids))
        overlay = Image.open(out / f"{name}_overlay.jpg")
        assert overlay.width > image.shape[1] and overlay.height >= image.shape[0]  # legend on the right
    assert not list(out.rglob(".*tmp*"))  # no temp file left behind


def test_slide_mode_and_a_glob(run_dir, images, tmp_path):
    out = tmp_path / "preds"
    assert predict.main([str(run_dir), str(images / "sub" / "*.jpg"), "--out", str(out), "--slide", "--crop",
                         "32,32", "--stride", "20,25", "--num-workers", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"odd{s}" for s in OUTPUTS)


def test_unreadable_image_is_named_the_others_written_exit_3(run_dir, images, tmp_path, capsys):
    broken = tmp_path / "in"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    Image.open(images / "frame.png").save(broken / "good.png")
    out = tmp_path / "preds"
    assert predict.main([str(run_dir), str(broken), "--out", str(out), "--num-workers", "1"]) == EXIT_PARTIAL_FAILURE
    stdout = capsys.readouterr().out
    assert "1 of 2 images failed" in " ".join(stdout.split()) and "bad.png" in stdout
    assert (out / "good_trainIds.png").is_file() and not list(out.glob("bad*"))


def test_ground_truth_gives_error_view_and_metrics_checked_against_numpy(run_dir, tmp_path):
    data = run_dir.parent.parent.parent / "data"
    out = tmp_path / "preds"
    assert predict.main([str(run_dir), str(data / "leftImg8bit" / "val"), "--out", str(out), "--gt",
                         str(data / "gtFine" / "val"), "--num-workers", "0"]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "image,pixel_accuracy,miou,boundary_f1,boundary_iou" and len(rows) == 3
    for row in rows[1:]:
        name, accuracy = row.split(",")[:2]
        pred = np.asarray(Image.open(out / f"{name}_trainIds.png"))
        label = next((data / "gtFine" / "val").rglob(f"{name.split('/')[-1].removesuffix('_leftImg8bit')}"
                                                     "_gtFine_labelIds.png"))
        target = CITYSCAPES.to_train_ids(np.asarray(Image.open(label)), str(label), "")
        valid = target != IGNORE_INDEX
        assert float(accuracy) == pytest.approx(100 * (pred[valid] == target[valid]).mean(), abs=0.006)
        side_by_side = np.asarray(Image.open(out / f"{name}_gt_error.png"))
        assert side_by_side.shape == (*pred.shape[:1], 2 * pred.shape[1], 3)
        wrong = (pred != target) & valid
        assert (side_by_side[:, pred.shape[1]:][wrong] == (255, 0, 0)).all()


def test_bad_inputs_fail_with_one_line(run_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="no png/jpg/jpeg/webp image"):
        find_images([str(tmp_path / "nothing*.png")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / sub / "x.png")
    with pytest.raises(UserError, match="both would write outputs named 'x'"):
        find_images([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")])
    for argv in (["CKPT", "x.png"], ["CKPT", "x.png", "--out", "o", "--crop", "8,8"],
                 ["CKPT", "x.png", "--out", "o", "--slide", "--crop", "8,0"]):
        with pytest.raises(SystemExit) as exit_info:
            predict.parse_args(argv)
        assert exit_info.value.code == EXIT_BAD_INPUT


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="requirements-export.txt not installed")
def test_export_round_trips_through_onnxruntime(run_dir, tmp_path, capsys):
    """The demo model exported (traced at 64x128), then run by onnxruntime on a 96x192 image (dynamic H, W)."""
    onnx_path = tmp_path / "model.onnx"
    assert predict.main([str(run_dir), "--export", str(onnx_path), "--export-size", "64,128"]) == 0
    assert "equal argmax 100.000 %" in " ".join(capsys.readouterr().out.split())
    import onnxruntime

    from engine.export import LogitsFromUint8

    _, _, model = load_checkpoint(resolve_checkpoint(run_dir))
    image = torch.randint(0, 256, (2, 3, 80, 112), dtype=torch.uint8)  # another batch size and size again
    (got,) = onnxruntime.InferenceSession(str(onnx_path)).run(["logits"], {"images": image.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, LogitsFromUint8(model).eval()(image).numpy(), atol=1e-3)


# ------------------------------------------------------------------ evaluate.py and aggregate.py under TTA (§4)
def test_evaluate_records_the_mode_and_aggregate_compares_without_mixing(run_dir, tmp_path, capsys):
    import csv
    import json
    import shutil

    import aggregate
    import evaluate
    from engine.results import read_results, results_path
    from metrics.per_image import read_per_image

    runs = tmp_path / "runs"
    for variant in ("C", "B"):
        shutil.copytree(run_dir, runs / f"{variant}_seed42")
    tag = "whole-flip-ms0.5,1"
    for variant in ("C", "B"):
        ckpt = runs / f"{variant}_seed42" / "checkpoints" / "epoch_0001"
        whole_before = results_path(ckpt).read_bytes()  # train.py's own (whole) evaluation
        assert evaluate.main([str(ckpt), "--flip", "--scales", "0.5,1", "--num-workers", "0"]) == 0
        assert results_path(ckpt).read_bytes() == whole_before  # the study's file is left alone
        tta = ckpt.with_name(f"epoch_0001.inference.{tag}.results.json")
        record = read_results(tta)
        assert record["inference"] == {"mode": "whole", "crop": None, "stride": None, "flip": True,
                                       "scales": [0.5, 1.0], "tag": tag}
        assert read_per_image(ckpt.with_name(f"epoch_0001.inference.{tag}.per_image.npz"))["names"].size == 2
        if variant == "B":  # a second variant, so that the tables have a pair
            for path in (results_path(ckpt), tta):
                path.write_text(json.dumps({**json.loads(path.read_text()), "variant": "B"}))
    capsys.readouterr()
    assert evaluate.main(["--all", str(runs), "--flip", "--scales", "0.5,1", "--num-workers", "0"]) == 0
    assert "2 already evaluated on their val split, 0 to evaluate" in " ".join(capsys.readouterr().out.split())
    assert aggregate.main([str(runs), "--out", str(tmp_path / "report"), "--bootstrap", "0",
                           "--compare-inference", tag]) == 0
    whole = {r.variant: r for r in load_runs_dir(runs)}
    table = (tmp_path / "report" / "table8_inference.csv").read_text().splitlines()
    rows = list(csv.reader(table))
    assert rows[0] == ["group", "metric", "single-scale (%)", "rank single-scale", f"{tag} (%)", f"rank {tag}",
                       "TTA gain (pp)", "seeds"]
    c_miou = next(row for row in csv.reader(table) if row[:2] == ["C", "miou"])
    c_tta = read_results(runs / "C_seed42" / "checkpoints" / f"epoch_0001.inference.{tag}.results.json")
    assert float(c_miou[2]) == pytest.approx(100 * whole["C"].metrics["miou"], abs=1e-6)
    assert float(c_miou[6]) == pytest.approx(100 * (c_tta["miou"] - whole["C"].metrics["miou"]), abs=1e-6)
    assert (tmp_path / "report" / "table8b_inference_pairs.csv").read_text().count("\n") == 1 + 3  # B - C, 3 metrics
    # a file of one mode posing as another's is refused: one table never mixes modes
    c_ckpt = runs / "C_seed42" / "checkpoints" / "epoch_0001"
    shutil.copy(c_ckpt.with_name(f"epoch_0001.inference.{tag}.results.json"), results_path(c_ckpt))
    with pytest.raises(UserError, match="never mixes modes"):
        aggregate.main([str(runs), "--out", str(tmp_path / "report2"), "--bootstrap", "0"])


def test_export_refuses_clearly_without_the_optional_packages(run_dir, tmp_path, monkeypatch):
    import engine.export

    monkeypatch.setattr(engine.export, "EXPORT_REQUIREMENTS", ("onnx", "onnxruntime_missing_for_this_test"))
    with pytest.raises(UserError, match="needs onnxruntime_missing_for_this_test .*requirements-export.txt"):
        predict.main([str(run_dir), "--export", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_two_processes_split_the_inputs_and_report_failures_once(run_dir, images, tmp_path):
    """CPU DDP as tests/test_train.py launches it: each image is written by one process, the failure summary
    (gathered from both) is printed once, and the exit code is 3."""
    import os
    import shutil
    import subprocess
    import sys

    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    (inputs / "broken.png").write_bytes(b"garbage")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = tmp_path / "preds"
    result = subprocess.run([*launch, "predict.py", str(run_dir), str(inputs), "--out", str(out), "--num-workers",
                             "0"], cwd=predict.Path(predict.__file__).parent, env=env, capture_output=True, text=True)
    # each process exits with 3; torchrun, under accelerate launch, turns any non-zero exit of its workers into 1
    assert result.returncode == 1 and "exitcode: 3" in result.stderr, result.stderr[-3000:]
    assert " ".join(result.stdout.split()).count("1 of 6 images failed") == 1
    for name in NAMES:
        assert all((out / f"{name}{suffix}").is_file() for suffix in OUTPUTS), name
