"""evaluate.py, engine.evaluation and engine.results on synthetic Cityscapes-layout data with a tiny model.

Checkpoints are written in the contract layout (model.safetensors + config.json + meta.json, what train.py's
pruned checkpoints hold) from a random-init convnextv2_atto + 32-channel UPerNet.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import save_file
from scipy import ndimage

import aggregate
import evaluate
from data_utils.dataset import read_train_ids
from data_utils.labels import CITYSCAPES, THIN_CLASSES
from data_utils.synthetic import generate_dataset
from engine.batch_eval import pending_reason
from engine.checkpoint import WEIGHTS_NAME
from engine.config import DEMO_PRESET, TrainConfig, save_config
from engine.results import batch_table, checkpoint_table, read_results, results_path, write_results
from engine.results_format import consensus_path
from engine.setup import build_model_from_config
from metrics import SegmentationMetrics
from metrics.consensus import cc_veto
from metrics.keys import METRIC_KEYS, METRIC_LABELS
from metrics.per_image import PER_IMAGE_SUFFIX, dataset_metrics, per_image_path, read_per_image, subset
from metrics.registry import METRICS
from utils.conventions import IGNORE_INDEX
from utils.fileio import EXIT_PARTIAL_FAILURE, UserError, atomic_write_json

CLASS_NAMES, NUM_CLASSES = CITYSCAPES.names, CITYSCAPES.num_classes  # the demo data's classes
KNOWN_IDS = sorted(CITYSCAPES.id_to_train_id)  # the label ids a labelIds PNG may hold (0..33)
LABEL_FIX = "pass *_labelIds.png files"

NUM_VAL = 3


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data") / "demo", num_train=1, num_val=NUM_VAL, height=64,
                            width=128, progress=False)


def tiny_config(data_root: Path, **changes) -> TrainConfig:
    fields = {**DEMO_PRESET, "data_root": str(data_root), "demo_data": False, "head_channels": 32,
              "num_workers": 0, "batch_size": 2, **changes}
    return dataclasses.replace(TrainConfig(), **fields)


def make_checkpoint(run_dir: Path, epoch: int, cfg: TrainConfig, weights_seed: int = 0) -> Path:
    """RUN/checkpoints/epoch_XXXX with random-init weights, the config and meta.json."""
    torch.manual_seed(weights_seed)
    model = build_model_from_config(cfg)
    ckpt = run_dir / "checkpoints" / f"epoch_{epoch:04d}"
    ckpt.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(ckpt / WEIGHTS_NAME))
    save_config(cfg, ckpt / "config.json")
    atomic_write_json(ckpt / "meta.json", {"epoch": epoch, "step": 10 * epoch, "variant": cfg.variant,
                                           "seed": cfg.seed, "saved_at": f"2025-01-01T00:00:{epoch:02d}"})
    return ckpt


def confusion_iou(pairs) -> np.ndarray:
    """Independent per-class IoU from (pred, target) train-id arrays via a numpy confusion matrix."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for pred, target in pairs:
        valid = target != IGNORE_INDEX
        np.add.at(confusion, (target[valid].astype(int), pred[valid].astype(int)), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


# ------------------------------------------------------------------------------------------ one checkpoint
def test_single_checkpoint_results_match_its_saved_predictions(data_root, tmp_path, capsys):
    cfg = tiny_config(data_root, variant="B", seed=7)
    ckpt = make_checkpoint(tmp_path / "runs" / "B_seed7", 4, cfg)
    preds = tmp_path / "preds"
    assert evaluate.main([str(ckpt), "--save-predictions", str(preds)]) == 0

    record = read_results(results_path(ckpt))
    assert (record["variant"], record["seed"], record["epoch"], record["split"]) == ("B", 7, 4, "val")
    assert record["num_images"] == NUM_VAL and record["checkpoint"] == str(ckpt)
    assert record["checkpoint_saved_at"] == "2025-01-01T00:00:04" and record["config"]["head_channels"] == 32
    assert (record["lambda_dice"], record["lambda_boundary"]) == (cfg.lambda_dice, cfg.lambda_boundary)

    # The written labelIds PNGs, mapped back to train ids, give the recorded IoUs (numpy confusion matrix).
    pairs = []
    for gt_path in sorted((data_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png")):
        name = gt_path.name.replace("_gtFine_labelIds.png", "")
        city = gt_path.parent.name
        png = Image.open(preds / "labelIds" / city / f"{name}_labelIds.png")
        pred_ids = np.array(png)
        assert png.mode == "L" and np.isin(pred_ids, KNOWN_IDS).all()  # 8-bit label ids, as the test server wants
        overlay = Image.open(preds / "overlay" / city / f"{name}_overlay.jpg")
        assert overlay.size == (128, 64)
        pairs.append((CITYSCAPES.to_train_ids(pred_ids, name, LABEL_FIX), read_train_ids(str(gt_path))))
    assert len(pairs) == NUM_VAL
    expected = confusion_iou(pairs)
    np.testing.assert_allclose([record["iou"][n] for n in CLASS_NAMES], expected, atol=1e-12)
    assert record["miou"] == pytest.approx(np.nanmean(expected), abs=1e-12)
    out = capsys.readouterr().out
    assert "mIoU" in out and "Boundary F1" in out and str(results_path(ckpt).name) in out

    # The per-image file: the frames in dataset order, their confusions and fragments from the same PNGs, and
    # every value of results.json recomputed from it.
    stats = read_per_image(per_image_path(ckpt))
    frames = sorted((data_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    assert list(stats["names"]) == [p.name.replace("_gtFine_labelIds.png", "") for p in frames]
    for (pred, target), confusion, fragments in zip(pairs, stats["confusion"], stats["fragments"]):
        np.testing.assert_array_equal(confusion[:, :NUM_CLASSES], confusion_matrix(pred, target))
        assert fragments == sum(ndimage.label(pred == c, np.ones((3, 3)))[1] for c in range(NUM_CLASSES))
    assert_record_equals(record, dataset_metrics(stats, record["metrics_profile"]))


def confusion_matrix(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    valid = target != IGNORE_INDEX
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (target[valid].astype(int), pred[valid].astype(int)), 1)
    return confusion


def assert_record_equals(record: dict, metrics: dict) -> None:
    """A results record (read_results) holds exactly these dataset metrics."""
    assert (record["num_images"], record["metrics_profile"]) == (metrics["num_images"], metrics["metrics_profile"])
    for key in METRIC_KEYS:
        assert record[key] == pytest.approx(metrics[key], abs=1e-12, nan_ok=True), key
    for key, values in (("iou", metrics["iou"]), ("boundary_iou_per_class", metrics["boundary_iou_per_class"])):
        np.testing.assert_allclose([record[key][name] for name in CLASS_NAMES], values, atol=1e-12, err_msg=key)


def test_subset_of_the_per_image_statistics_equals_evaluating_the_subset(data_root, tmp_path):
    """What a bootstrap relies on: the rows of some images reduce to the evaluation of those images alone."""
    ckpt = make_checkpoint(tmp_path / "runs" / "C_seed1", 1, tiny_config(data_root))
    assert evaluate.main([str(ckpt), "--metrics-profile", "study", "--batch-size", "1"]) == 0
    stats = read_per_image(per_image_path(ckpt))
    assert read_results(results_path(ckpt))["metrics_profile"] == "study"

    fewer = tmp_path / "two_frames"  # the same dataset without its first val frame
    for part in ("leftImg8bit", "gtFine"):
        shutil.copytree(data_root / part / "val", fewer / part / "val")
    for path in (fewer / "leftImg8bit" / "val").glob(f"*/{stats['names'][0]}_*"):
        path.unlink()
    for path in (fewer / "gtFine" / "val").glob(f"*/{stats['names'][0]}_*"):
        path.unlink()
    alone = make_checkpoint(tmp_path / "runs" / "C_seed2", 1, tiny_config(data_root))  # the same weights
    assert evaluate.main([str(alone), "--data-root", str(fewer), "--metrics-profile", "study",
                          "--batch-size", "1"]) == 0
    assert list(read_per_image(per_image_path(alone))["names"]) == list(stats["names"][1:])
    assert_record_equals(read_results(results_path(alone)), dataset_metrics(subset(stats, [1, 2]), "study"))


def test_test_split_without_labels_writes_predictions_only(data_root, tmp_path):
    root = tmp_path / "no_labels"
    shutil.copytree(data_root / "leftImg8bit" / "val", root / "leftImg8bit" / "test")
    (root / "gtFine").mkdir()  # a Cityscapes root without gtFine/test
    ckpt = make_checkpoint(tmp_path / "runs" / "C_seed1", 2, tiny_config(data_root))
    out = tmp_path / "test_preds"
    assert evaluate.main([str(ckpt), "--data-root", str(root), "--split", "test", "--save-predictions", str(out)]) == 0
    written = sorted(out.glob("labelIds/*/*_labelIds.png"))
    images = sorted((root / "leftImg8bit" / "test").glob("*/*_leftImg8bit.png"))
    assert [p.name.replace("_labelIds", "") for p in written] == [p.name.replace("_leftImg8bit", "") for p in images]
    assert all(np.isin(np.array(Image.open(p)), KNOWN_IDS).all() for p in written)
    assert not results_path(ckpt).exists()  # no labels, no metrics


def test_broken_checkpoint_is_a_one_line_user_error(data_root, tmp_path):
    ckpt = make_checkpoint(tmp_path / "runs" / "A_seed1", 1, tiny_config(data_root))
    (ckpt / WEIGHTS_NAME).unlink()
    with pytest.raises(UserError, match=f"{ckpt}: lacks {WEIGHTS_NAME}"):
        evaluate.main([str(ckpt)])
    with pytest.raises(SystemExit):  # --split test without --save-predictions has nothing to produce
        evaluate.parse_args([str(ckpt), "--split", "test"])


# ----------------------------------------------------------------------------------------------- batch mode
def _results_state(ckpts):
    return {c: results_path(c).read_bytes() if results_path(c).exists() else None for c in ckpts}


def test_a_run_folder_means_its_latest_checkpoint_and_a_missing_path_lists_the_nearest(data_root, tmp_path,
                                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(data_root, variant="C", seed=42)
    run = Path("runs") / "demo" / "C_seed42"
    older, latest = (make_checkpoint(run, e, cfg) for e in (4, 8))
    (run / "checkpoints" / "epoch_0012").mkdir()  # incomplete (being written): not the latest checkpoint
    assert evaluate.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: a run folder; evaluating its latest checkpoint, epoch_0008" in out
    assert results_path(latest).is_file() and not results_path(older).exists()
    assert "delete" not in out

    with pytest.raises(UserError, match=rf"^runs/demo/C_seed43: no such checkpoint or run folder; nearest existing "
                                        rf"checkpoints: {latest}, {older}$"):
        evaluate.main(["runs/demo/C_seed43"])
    with pytest.raises(UserError, match=rf"^rnus/demo/C_seed42: no such .*; nearest existing checkpoints: {latest}, "):
        evaluate.main(["rnus/demo/C_seed42"])  # searched from the working folder
    with pytest.raises(UserError, match="^runs: neither a checkpoint folder .* use --all FOLDER$"):
        evaluate.main(["runs"])  # a folder of runs
    Path("runs/empty/checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="^runs/empty: a run folder without a complete checkpoint yet"):
        evaluate.main(["runs/empty"])


def test_batch_mode_is_resumable_and_reports_failures(data_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    cfg = tiny_config(data_root, variant="A", seed=1)
    good = [make_checkpoint(runs / "A_seed1", e, cfg, weights_seed=e) for e in (1, 2)]
    good.append(make_checkpoint(runs / "D_seed3", 1, tiny_config(data_root, variant="D", seed=3)))
    corrupt = make_checkpoint(runs / "B_seed2", 1, tiny_config(data_root, variant="B", seed=2))
    (corrupt / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    mismatched = make_checkpoint(runs / "B_seed2", 2, tiny_config(data_root, variant="B", seed=2))
    save_config(tiny_config(data_root, variant="B", seed=2, head_channels=48), mismatched / "config.json")
    incomplete = runs / "C_seed4" / "checkpoints" / "epoch_0001"
    incomplete.mkdir(parents=True)  # a folder without files, e.g. copied half-way

    assert evaluate.main(["--all", str(runs)]) == EXIT_PARTIAL_FAILURE  # the others done, the failures listed
    out = capsys.readouterr().out
    assert all(read_results(results_path(c))["num_images"] == NUM_VAL for c in good)
    for bad, why in ((corrupt, "cannot read the weights"), (mismatched, "do not fit the model"),
                     (incomplete, "lacks model.safetensors")):
        assert not results_path(bad).exists()
        assert f"{bad}: " in out and why in out
    assert "3 checkpoints could not be evaluated" in out

    # Second pass: valid results are skipped, a corrupt results file and a re-saved checkpoint are redone.
    before = _results_state(good)
    results_path(good[0]).write_text('{"variant": "A", "miou":')
    meta = json.loads((good[1] / "meta.json").read_text())
    atomic_write_json(good[1] / "meta.json", {**meta, "saved_at": "2025-02-02T00:00:00"})
    shutil.rmtree(incomplete)
    assert evaluate.main(["--all", str(runs)]) == EXIT_PARTIAL_FAILURE  # the two broken checkpoints still fail
    out = capsys.readouterr().out
    assert "5 checkpoints under" in out and "2 to evaluate" not in out and "4 to evaluate" in out
    after = _results_state(good)
    assert after[good[2]] == before[good[2]]  # untouched
    assert read_results(results_path(good[0]))["epoch"] == 1  # redone
    assert read_results(results_path(good[1]))["checkpoint_saved_at"] == "2025-02-02T00:00:00"

    shutil.rmtree(corrupt)
    shutil.rmtree(mismatched)
    assert evaluate.main(["--all", str(runs)]) == 0
    assert "0 to evaluate" in capsys.readouterr().out


def test_batch_mode_redoes_results_without_per_image_file_or_of_another_profile(data_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    ckpts = [make_checkpoint(runs / "A_seed1", e, tiny_config(data_root), weights_seed=e) for e in (1, 2)]
    assert evaluate.main(["--all", str(runs)]) == 0
    per_image_path(ckpts[0]).unlink()  # e.g. results written before per-image files existed
    assert pending_reason(ckpts[0], "val") == "no per-image statistics beside the results"
    per_image_path(ckpts[1]).write_bytes(b"PK\x03\x04 cut short")
    assert pending_reason(ckpts[1], "val") == "corrupt per-image statistics, redoing"
    capsys.readouterr()
    assert evaluate.main(["--all", str(runs)]) == 0
    assert "2 to evaluate" in capsys.readouterr().out
    assert all(read_per_image(per_image_path(c))["names"].shape == (NUM_VAL,) for c in ckpts)
    assert pending_reason(ckpts[0], "val", "study") == "results are for metrics profile 'default'"
    assert evaluate.main(["--all", str(runs), "--metrics-profile", "study"]) == 0
    assert {read_results(results_path(c))["metrics_profile"] for c in ckpts} == {"study"}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two worker processes need two cores")
def test_batch_mode_with_two_worker_processes(data_root, tmp_path):
    runs = tmp_path / "runs"
    ckpts = [make_checkpoint(runs / "A_seed1", e, tiny_config(data_root), weights_seed=e) for e in (1, 2)]
    assert evaluate.main(["--all", str(runs), "--jobs", "2"]) == 0
    in_workers = [read_results(results_path(c)) for c in ckpts]
    AcceleratorState._reset_state(True)
    assert evaluate.main(["--all", str(runs), "--jobs", "1", "--force"]) == 0
    in_process = [read_results(results_path(c)) for c in ckpts]
    for a, b in zip(in_workers, in_process):
        assert all(a[key] == b[key] for key in METRIC_KEYS)


# --------------------------------------------------------------------------------------------- results files
def test_two_evaluators_never_write_one_run_at_once(data_root, tmp_path, lock_holder):
    """Another evaluator holds RUN/checkpoints (a real process): --all and the one-checkpoint mode stop with
    one line naming the folder and its PID, and write nothing; a run nobody holds is evaluated meanwhile."""
    cfg = tiny_config(data_root, variant="B", seed=1)
    busy, free = (make_checkpoint(tmp_path / "runs" / name, 1, cfg) for name in ("busy", "free"))
    holder = lock_holder(busy.parent, "evaluate.py")
    for argv in (["--all", str(tmp_path / "runs")], [str(busy)]):
        with pytest.raises(UserError) as err:
            evaluate.main(argv)
        assert str(err.value) == (f"{busy.parent}: in use by evaluate.py (PID {holder.pid}); wait for it to finish or "
                                  "stop it")
        assert not results_path(busy).exists()
    assert evaluate.main(["--all", str(tmp_path / "runs" / "free")]) == 0
    assert results_path(free).exists()


def test_ctrl_c_stops_parallel_evaluation_at_once_leaving_no_temp_files(data_root, tmp_path, process_groups):
    """SIGINT to the process group (a terminal's Ctrl-C) of `evaluate.py --all --jobs 2` once the first
    results file is written: exit code 130 with one line, the queued checkpoints are not evaluated, and no
    temp file is left."""
    import sys

    runs = tmp_path / "runs"
    first = make_checkpoint(runs / "A_seed1", 1, tiny_config(data_root, variant="A", seed=1))
    checkpoints = [first] + [first.with_name(f"epoch_{epoch:04d}") for epoch in range(2, 41)]
    for ckpt in checkpoints[1:]:
        shutil.copytree(first, ckpt, copy_function=os.link)
    proc = process_groups.start([sys.executable, "evaluate.py", "--all", str(runs), "--jobs", "2"],
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    process_groups.wait_for(proc, lambda: any(results_path(c).exists() for c in checkpoints))
    stdout, stderr = process_groups.ctrl_c(proc)
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr, stderr[-2000:]
    evaluated = sum(results_path(c).exists() for c in checkpoints)
    assert 1 <= evaluated < len(checkpoints) // 2
    assert [p.name for p in runs.rglob("*.tmp")] == []


def test_results_round_trip_nan_and_validation(tmp_path):
    cfg = TrainConfig()
    iou = [0.5] * NUM_CLASSES
    iou[3] = float("nan")  # a class absent from the split
    metrics = {"miou": 0.5, "boundary_f1": 0.25, "trimap_iou": 0.125, "boundary_iou": 0.375,
               "fragments_per_image": 212.5, "iou": iou, "boundary_iou_per_class": iou, "num_images": 500,
               "metrics_profile": "study",
               "per_image": SegmentationMetrics(NUM_CLASSES, class_names=CLASS_NAMES).per_image()}
    for m in METRICS:  # every other record: a plain value, valid in any unit
        metrics.setdefault(m.key, 0.5)
        if m.per_class is not None:
            metrics.setdefault(m.per_class, iou)
    path = tmp_path / "epoch_0160.results.json"
    write_results(path, metrics, cfg=cfg, epoch=160, checkpoint=tmp_path / "epoch_0160", split="val", seconds=12.5)
    assert json.loads(path.read_text())["iou"]["wall"] is None  # JSON has no NaN
    record = read_results(path)
    assert np.isnan(record["iou"]["wall"]) and record["iou"]["road"] == 0.5 and record["miou"] == 0.5
    assert (record["metrics_profile"], record["fragments_per_image"]) == ("study", 212.5)
    assert np.isnan(record["boundary_iou_per_class"]["wall"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["epoch_0160.per_image.npz", path.name]  # no temp file

    # a file written before the profiles, Boundary IoU and fragments: the default profile, NaN for those
    written = path.read_text()
    path.write_text(json.dumps({k: v for k, v in json.loads(written).items() if k not in (
        "metrics_profile", "boundary_iou", "fragments_per_image", "boundary_iou_per_class")}))
    record = read_results(path)
    assert record["metrics_profile"] == "default" and np.isnan(record["boundary_iou"])
    path.write_text(written)

    from report.load import read_results_file  # aggregate.py's reader accepts the same file
    assert read_results_file(path).metrics["boundary_f1"] == 0.25

    good = json.loads(path.read_text())
    for broken in ('{"variant": "C"', json.dumps({**good, "miou": 81.2}), json.dumps({**good, "seed": 4.5}),
                   json.dumps({k: v for k, v in good.items() if k != "seed"}),
                   json.dumps({**good, "iou": {**good["iou"], "sky ": 0.5}}), "[]",
                   json.dumps({**good, "metrics_profile": "paper"}), json.dumps({**good, "fragments_per_image": -1}),
                   json.dumps({**good, "boundary_iou": 45.6})):
        path.write_text(broken)
        for reader in (read_results, read_results_file):  # evaluate.py and aggregate.py refuse it alike
            with pytest.raises(UserError, match=str(path)):
                reader(path)
        assert pending_reason(path.parent / "epoch_0160", "val") == "corrupt results file, redoing"


def render(table) -> list[list[str]]:
    """A rich table as rows of cell strings (wide console, no wrapping)."""
    from rich.console import Console

    console = Console(width=300, record=True, file=open(os.devnull, "w"))
    console.print(table)
    return [[c.strip() for c in line.strip("│┃ ").split("│")] for line in console.export_text().splitlines()
            if "│" in line]


def test_metrics_table_rows_and_missing_values():
    """One table for train.py's final summary (flat "val/..." rows) and evaluate.py's results: percent, n/a for a
    value that is missing, None or NaN."""
    from engine.results import metrics_table

    last = {"epoch": 8, "val/miou": 0.5, "val/boundary_f1": 0.25, "val/trimap_iou": None, "val/boundary_iou": 0.125,
            "val/fragments_per_image": 212.5,
            **{f"val/iou/{name}": i / 100 for i, name in enumerate(CLASS_NAMES)}}
    best = {**last, "val/miou": 0.61234, "val/iou/road": float("nan")}
    del best["val/iou/bicycle"]
    rows = render(metrics_table({"last": last, "best": best}, "run: validation metrics (%)", prefix="val/"))
    assert rows[0] == ["mIoU", "50.00", "61.23"] and rows[1] == ["Boundary F1", "25.00", "25.00"]
    assert rows[2] == ["Trimap IoU", "n/a", "n/a"] and rows[3] == ["Boundary IoU", "12.50", "12.50"]
    assert rows[4] == ["Fragments / image (count)", "212.50", "212.50"]  # a count, not percent
    n = len(METRICS)  # one row per record (those not in `last` show n/a), then the classes
    assert [r[0] for r in rows[n:]] == [f"IoU {name}" for name in CLASS_NAMES]
    assert rows[n][1:] == ["0.00", "n/a"] and rows[n + 1][1:] == ["1.00", "1.00"] and rows[-1][1:] == ["18.00", "n/a"]

    # evaluate.py's one-checkpoint table from a results record
    record = {"checkpoint": "runs/C_seed42/checkpoints/epoch_0160", "split": "val", "num_images": 500,
              "seconds": 41.25, "miou": 0.8, "boundary_f1": 0.7, "trimap_iou": 0.6, "boundary_iou": 0.5,
              "fragments_per_image": 99.0, "metrics_profile": "study",
              "iou": {name: 0.5 for name in CLASS_NAMES} | {"train": float("nan")}}
    table = checkpoint_table(record)
    assert table.title == "C_seed42/epoch_0160 on val"
    assert table.caption == "500 images, 41.2 s, metrics profile study"
    rows = render(table)
    assert rows[:3] == [["mIoU", "80.00"], ["Boundary F1", "70.00"], ["Trimap IoU", "60.00"]]
    assert dict(rows[n:])["IoU train"] == "n/a" and dict(rows[n:])["IoU road"] == "50.00"


def test_checkpoint_folder_names():
    """evaluate.py --all and the checkpoint module recognise checkpoint folders by one pattern."""
    from engine import batch_eval
    from engine.checkpoint import CHECKPOINT_NAME

    assert batch_eval.CHECKPOINT_NAME is CHECKPOINT_NAME
    assert [bool(CHECKPOINT_NAME.match(n)) for n in ("epoch_0010", "epoch_12345", "epoch_010", ".tmp_epoch_0010",
                                                     "epoch_0010.results.json")] == [True, True, False, False, False]


def test_batch_table_shows_the_whole_run_name_at_80_columns(tmp_path):
    """evaluate --all's table in an 80-column terminal: the run name wraps, it is never cut to `good/check…`."""
    from rich.console import Console

    runs = tmp_path / "runs"
    names = ["lambda_sweep/C_lb0.05_steal_seed456", "lambda_sweep/D_lb0.5_linear_seed123"]
    records = [{"checkpoint": str(runs / name / "checkpoints" / "epoch_0160"), "variant": name[13], "seed": 456,
                "epoch": 160, "miou": 0.8, "boundary_f1": 0.7, "trimap_iou": 0.6, "boundary_iou": 0.5,
                "seconds": 41.2} for name in names]
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(batch_table(records, runs))
    text = console.export_text()
    assert "…" not in text
    lines = [line for line in text.splitlines() if "│" in line]
    first_cells = "".join(line.strip("│┃ ").split("│")[0].strip() for line in lines)
    assert all(name in first_cells for name in names)
    assert all(len(line) <= 80 for line in text.splitlines())


# ------------------------------------------------------------------------------------------- consensus
def saved_train_ids(preds: Path, data_root: Path) -> list[np.ndarray]:
    """The labelIds PNGs written by --save-predictions, in dataset order, as train ids."""
    frames = sorted((data_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    return [read_train_ids(str(preds / "labelIds" / p.parent.name / p.name.replace("_gtFine_labelIds.png",
                                                                                    "_labelIds.png"))) for p in frames]


@pytest.fixture(scope="module")
def evaluated_pair(data_root, tmp_path_factory) -> Path:
    """ROOT/runs/{C,B}_seed1/checkpoints/epoch_0002 (a primary and a veto), each evaluated with its predictions
    saved in ROOT/{C,B}_seed1; made once for the module, copied by each test (the consensus writes beside them)."""
    root = tmp_path_factory.mktemp("pair")
    primary = make_checkpoint(root / "runs" / "C_seed1", 2, tiny_config(data_root, variant="C", seed=1), weights_seed=1)
    veto = make_checkpoint(root / "runs" / "B_seed1", 2, tiny_config(data_root, variant="B", seed=1), weights_seed=2)
    for ckpt in (primary, veto):
        assert evaluate.main([str(ckpt), "--save-predictions", str(root / ckpt.parent.parent.name)]) == 0
    return root


@pytest.mark.parametrize("options", [[], ["--reassign", "ignore", "--max-drop-size", "40", "--protect", "pole,road"]])
def test_consensus_results_equal_cc_veto_of_the_saved_predictions(evaluated_pair, data_root, tmp_path, options):
    shutil.copytree(evaluated_pair, tmp_path, dirs_exist_ok=True)
    runs = tmp_path / "runs"
    primary, veto = (runs / name / "checkpoints" / "epoch_0002" for name in ("C_seed1", "B_seed1"))
    assert evaluate.main(["--consensus", str(primary), "--veto", str(veto), *options]) == 0

    path = consensus_path(primary, "B_seed1")
    record = read_results(path)  # the standard results format
    stats = read_per_image(consensus_path(primary, "B_seed1", PER_IMAGE_SUFFIX))
    protect = tuple(CLASS_NAMES.index(n) for n in (("pole", "road") if options else THIN_CLASSES))
    kwargs = {"reassign": "ignore", "max_drop_size": 40} if options else {}
    targets = [read_train_ids(str(p))
               for p in sorted((data_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))]
    primary_preds = saved_train_ids(tmp_path / "C_seed1", data_root)
    fused = [cc_veto(p, v, NUM_CLASSES, protect, **kwargs)
             for p, v in zip(primary_preds, saved_train_ids(tmp_path / "B_seed1", data_root))]
    assert any((f != p).any() for f, p in zip(fused, primary_preds))  # the veto drops something here
    for pred, target, confusion, fragments in zip(fused, targets, stats["confusion"], stats["fragments"]):
        valid = target != IGNORE_INDEX
        np.testing.assert_array_equal(confusion[:, :NUM_CLASSES], confusion_matrix(pred, target))
        assert confusion[:, NUM_CLASSES].sum() == (pred[valid] >= NUM_CLASSES).sum()  # "ignore" pixels
        assert fragments == sum(ndimage.label(pred == c, np.ones((3, 3)))[1] for c in range(NUM_CLASSES))
    assert record["miou"] == pytest.approx(np.nanmean(confusion_iou(zip(fused, targets))), abs=1e-12)
    assert_record_equals(record, dataset_metrics(stats, record["metrics_profile"]))
    consensus = record["consensus"]
    assert (consensus["primary"], consensus["veto"]) == (str(primary), str(veto))
    assert consensus["protect"] == [CLASS_NAMES[i] for i in protect] and consensus["reassign"] == (kwargs.get(
        "reassign", "veto"))
    for role, ckpt in (("primary", primary), ("veto", veto)):
        own = read_results(results_path(ckpt))
        assert consensus[f"{role}_metrics"] == {k: pytest.approx(own[k], abs=1e-12) for k in METRIC_KEYS}


def test_consensus_pairs_vetoes_each_seed_at_the_final_epoch(data_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    for variant in ("B", "C", "D"):
        for seed in (1, 2):
            cfg = tiny_config(data_root, variant=variant, seed=seed)
            for epoch in (1, 3):
                make_checkpoint(runs / f"{variant}_seed{seed}", epoch, cfg, weights_seed=seed + epoch)
    assert evaluate.main(["--consensus-pairs", "C:B,D:B", "--all", str(runs)]) == 0
    written = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*.consensus.*.results.json"))
    assert written == [f"{v}_seed{s}/checkpoints/epoch_0003.consensus.B_seed{s}.results.json"
                       for v in ("C", "D") for s in (1, 2)]
    for v in ("C", "D"):
        for s in (1, 2):
            record = read_results(runs / written[(v == "D") * 2 + s - 1])
            assert record["consensus"]["veto"] == str(runs / f"B_seed{s}" / "checkpoints" / "epoch_0003")
            assert (record["variant"], record["seed"], record["epoch"]) == (v, s, 3)
    assert "vetoed by veto" in capsys.readouterr().out

    # aggregate.py's table 7: the Δs (fused − primary, mean over seeds) equal those of the files directly.
    for early in runs.glob("*/checkpoints/epoch_0001"):  # table 7 is of the final epoch: evaluate that one only
        shutil.rmtree(early)
    assert evaluate.main(["--all", str(runs)]) == 0  # the runs' own results (aggregate reads those as the study)
    assert aggregate.main([str(runs), "--out", str(tmp_path / "report"), "--bootstrap", "50"]) == 0
    with open(tmp_path / "report" / "table7_consensus.csv", newline="") as f:
        rows = {(r["pairing"], r["metric"]): r for r in csv.DictReader(f)}
    for v in ("C", "D"):
        fused = [read_results(runs / f"{v}_seed{s}/checkpoints/epoch_0003.consensus.B_seed{s}.results.json")
                 for s in (1, 2)]
        own = [read_results(results_path(runs / f"{v}_seed{s}/checkpoints/epoch_0003")) for s in (1, 2)]
        for key, factor in (("miou", 100), ("boundary_f1", 100), ("trimap_iou", 100), ("boundary_iou", 100),
                            ("fragments_per_image", 1)):
            row = rows[f"{v} vetoed by B", METRIC_LABELS[key]]
            delta = np.mean([f[key] - o[key] for f, o in zip(fused, own)])
            assert float(row["Δ mean over seeds"]) == pytest.approx(factor * delta, abs=1e-9)
            assert float(row["bootstrap Δ"]) == pytest.approx(factor * delta, abs=1e-9)  # on the full image set
            assert row["n_seeds"] == "2"
            if key == "fragments_per_image":
                base = np.mean([o[key] for o in own])
                assert float(row["Δ %"]) == pytest.approx(100 * delta / base, abs=1e-9)


def test_consensus_bad_input_is_one_line(data_root, tmp_path):
    runs = tmp_path / "runs"
    primary = make_checkpoint(runs / "C_seed1", 1, tiny_config(data_root, variant="C", seed=1))
    other_split = make_checkpoint(runs / "B_seed1", 1, tiny_config(data_root, variant="B", seed=1, val_split="train"))
    other_table = make_checkpoint(runs / "D_seed1", 1, tiny_config(
        data_root, variant="D", seed=1, class_names=tuple(f"c{i}" for i in range(NUM_CLASSES))))
    with pytest.raises(UserError, match=r"B_seed1.*validates on split 'train'.*pass --split"):
        evaluate.main(["--consensus", str(primary), "--veto", str(other_split)])
    with pytest.raises(UserError, match=r"D_seed1.*class table differs"):
        evaluate.main(["--consensus", str(primary), "--veto", str(other_table)])
    with pytest.raises(UserError, match=r"--protect names 'nope'"):
        evaluate.main(["--consensus", str(primary), "--veto", str(other_split), "--split", "val", "--protect", "nope"])
    with pytest.raises(UserError, match=r"no runs of variant 'A'"):
        evaluate.main(["--consensus-pairs", "C:A", "--all", str(runs)])
    assert not list(runs.rglob("*.consensus.*"))
