"""bench/bench_train.py and bench/bench_loader.py at tiny size on CPU, and the FLOP counting they report.

No timing is asserted (speed claims live in BENCHMARKS.md); these check that the scripts run end to end,
report consistent records, that bench_train's step is train.py's (same weights after an epoch), and that the
FLOP and saved-memory counts match hand counts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile

import pytest
import torch

from bench import bench_loader, bench_train
from engine.config import parse_args


class DictModel(torch.nn.Module):
    """Wraps layers so that forward returns a dict, like the segmentor in training mode."""

    def __init__(self, *layers: torch.nn.Module):
        super().__init__()
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        return {"out": self.body(x)}


def conv_flops(n, c_in, c_out, k, h_out, w_out, groups=1) -> int:
    """Hand count of one forward convolution: 2 FLOPs (multiply + add) per weight tap per output pixel."""
    return 2 * n * (c_in // groups) * c_out * k * k * h_out * w_out


def test_flop_counter_matches_hand_count_for_one_conv():
    # 3 -> 8 channels, 3x3, stride 2, padding 1 on 17x20: output 9x10.
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
    images = torch.randn(2, 3, 17, 20)
    forward = conv_flops(2, 3, 8, 3, 9, 10)
    assert forward == 2 * 3 * 8 * 9 * 9 * 10 * 2
    with bench_train.flop_counter() as counter:
        conv(images)
    assert counter.get_total_flops() == forward
    # Training: the input needs no gradient, so backward computes the weight gradient only (one more conv).
    counts = bench_train.count_train_flops(DictModel(conv), images)
    assert counts == {"forward": forward, "backward": forward, "train": 2 * forward}


def test_grouped_conv_backward_is_counted_per_group():
    # 1x1 conv 4 -> 6, then a depthwise 5x5 (groups = 6) with padding 2, on 11x13 (sizes kept).
    pointwise = torch.nn.Conv2d(4, 6, 1)
    depthwise = torch.nn.Conv2d(6, 6, 5, padding=2, groups=6)
    images = torch.randn(3, 4, 11, 13)
    f1 = conv_flops(3, 4, 6, 1, 11, 13)
    f2 = conv_flops(3, 6, 6, 5, 11, 13, groups=6)
    counts = bench_train.count_train_flops(DictModel(pointwise, depthwise), images)
    # forward f1 + f2; backward: depthwise grad_input + grad_weight (2 f2), pointwise grad_weight only (f1).
    assert counts["forward"] == f1 + f2
    assert counts["backward"] == f1 + 2 * f2
    assert counts["train"] == 2 * f1 + 3 * f2


def test_saved_for_backward_matches_hand_count():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    model = DictModel(linear, torch.nn.ReLU())
    x = torch.randn(32, 16)
    out = {}

    def forward():
        out["y"] = model(x)["out"]

    mib = bench_train.saved_for_backward_mib(forward, model)
    # addmm keeps its input (32x16 float32) for the weight gradient (the weight itself is a parameter);
    # relu keeps its output (32x8 float32).
    assert mib * 2**20 == 32 * 16 * 4 + 32 * 8 * 4
    out["y"].sum().backward()


TINY = ["--preset", "demo", "--no-demo-data", "--num-workers", "0", "--head-channels", "16", "--batch-size", "2"]


def test_configs_rows_are_train_py_flags_that_set_what_they_name():
    base, _ = bench_train.parse_args([])
    assert base == dataclasses.replace(parse_args([])[0], wandb=False)  # train.py's defaults: the paper's recipe
    switches = {name: bench_train.parse_args(flags)[0] for name, flags in bench_train.CONFIGS.items()}
    assert {name: (c.compile, c.channels_last, c.grad_checkpointing, c.sdt_source, c.max_nonfinite)
            for name, c in switches.items()} \
        == {"eager-nchw": (False, False, False, "gpu", 0), "eager": (False, True, False, "gpu", 0),
            "eager-checkpointing": (False, True, True, "gpu", 0), "default": (True, True, False, "gpu", 0),
            "sdt-workers": (True, True, False, "cpu", 0), "guard": (True, True, False, "gpu", 1)}
    for bad in (["--configs", "eager,nope"], ["--parts", "model"], ["--loss", "ce=1,nope=1"], ["--warmup-step", "1"]):
        with pytest.raises(SystemExit):
            bench_train.parse_args(bad)


def test_bench_train_runs_at_tiny_size(tmp_path, monkeypatch):
    """Both parts on a synthetic split it makes itself (no data named), with a recipe that needs the SDT on
    the device; the phases add up to the step and the temporary data set is removed."""
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "bench.json"
    assert bench_train.main([*TINY, "--data-root", "", "--crop-size", "64", "128", "--batch-size", "1", "--steps", "2",
                             "--warmup", "1", "--frames", "2", "--loss", "ce=1,lovasz=0.5,boundary=0.2",
                             "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["size"] == [64, 128] and report["config"]["loss"] == "ce=1,lovasz=0.5,boundary=0.2"
    assert [p["part"] for p in report["parts"]] == ["step", "loader"]
    flops = report["flops_per_image"]
    assert 0 < flops["forward"] < flops["train"] <= flops["train_uncorrected_counter"]
    for part in report["parts"]:
        assert part["loss_finite"] and part["images_per_s"] > 0 and part["peak_memory_gib"] > 0
        assert part["tflops_per_s"] == pytest.approx(flops["train"] * part["images_per_s"] / 1e12)
        assert part["epoch_s"] == pytest.approx(2975 / part["images_per_s"])
        assert set(part["phase_ms"]) == set(bench_train.PHASES)
        # CPU phases are consecutive perf_counter intervals: they add up to the micro-step.
        assert sum(part["phase_ms"].values()) == pytest.approx(part["ms_per_step"], rel=0.05)
    assert report["parts"][0]["saved_for_backward_mib"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_bench_step_is_the_step_train_py_runs(tmp_path):
    """One epoch (3 micro-batches, accumulated 2 + 1: two optimizer steps on the poly LR) of train.py and of
    the benchmark's loader part with the same flags: the same mean loss and bit-identical weights. Both
    build with engine.setup.build_training and step with train.train_micro_step."""
    from accelerate.state import AcceleratorState, GradientState
    from safetensors.torch import load_file

    import engine.setup
    import train
    from data_utils.synthetic import generate_dataset

    assert bench_train.build_training is train.build_training is engine.setup.build_training
    assert bench_train.train_micro_step is train.train_micro_step

    data = generate_dataset(tmp_path / "data", num_train=6, num_val=1, height=64, width=128, progress=False)
    flags = [*TINY, "--data-root", str(data), "--epochs", "1", "--grad-accum", "2", "--variant", "C",
             "--sdt-source", "gpu"]
    assert train.main([*flags, "--no-wandb", "--out", str(tmp_path / "run")]) == 0
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg, opts = bench_train.parse_args([*flags, "--warmup", "1", "--steps", "2"])
    run = bench_train.build_run(cfg)
    record = bench_train.time_part(run, "loader", opts)
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert (run.micro_steps, run.optimizer_step) == (3, row["step"]) == (3, 2)
    assert record["mean_loss"] == pytest.approx(row["train/loss"], rel=1e-12)
    trained = load_file(tmp_path / "run" / "checkpoints" / "epoch_0001" / "model.safetensors")
    benched = run.accelerator.unwrap_model(run.model).state_dict()
    assert trained.keys() == benched.keys()
    assert [k for k in trained if not torch.equal(trained[k], benched[k])] == []


def test_guard_ratio_times_the_step_with_the_guard_off_and_on(tmp_path, monkeypatch):
    """--guard-ratio at tiny size: two medians and their ratio, both runs built by build_training with the guard
    off and on (hooks only on the second), and their weights still bit-identical after the alternated steps."""
    import train

    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    built = []
    monkeypatch.setattr(bench_train, "build_training", lambda *a, **k: built.append(train.build_training(*a, **k))
                        or built[-1])
    out = tmp_path / "guard.json"
    assert bench_train.main([*TINY, "--data-root", "", "--crop-size", "64", "128", "--batch-size", "1", "--steps", "2",
                             "--warmup", "1", "--frames", "1", "--guard-ratio", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    ms = report["ms_per_step"]
    pairs = sorted(on / off for on, off in zip(report["ms"]["on"], report["ms"]["off"]))
    assert ms["off"] > 0 and len(pairs) == 2 and report["ratio_on_off"] == pytest.approx((pairs[0] + pairs[1]) / 2)
    assert report["identical_weights"] is True
    assert [(b.step.cfg.max_nonfinite, b.step.mask.active, bool(b.step.mask.handles)) for b in built] == [
        (0, False, False), (1, True, True)]
    assert [p.name for p in tmp_path.iterdir()] == ["guard.json"]


def test_bench_loader_at_tiny_size(tmp_path):
    from data_utils.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "data", num_train=2, num_val=0, height=64, width=128, progress=False)
    out = tmp_path / "loader.json"
    assert bench_loader.main(["--data-root", str(root), "--sources", "none,cpu,cache,cache-z", "--passes", "1",
                              "--num-workers", "0", "--batches", "2", "--batch-size", "1", "--target", "18",
                              "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["size"] == [64, 128] and report["frames"] == 2
    assert {"decode image PNG", "compute_sdt (cpu source)", "read SDT file + copy (cache source)",
            "read SDT file + copy (cache-z source)"} <= set(report["stage_ms"])
    for source in ("none", "cpu", "cache", "cache-z"):
        entry = report["per_worker"][source]
        assert entry["images_per_s_per_worker"] == pytest.approx(1e3 / entry["ms_per_item"])
        assert entry["workers_for_target"] == math.ceil(18 / entry["images_per_s_per_worker"])
        assert entry["dataloader_images_per_s"]["0"] > 0


@pytest.mark.slow
def test_configs_at_tiny_size(tmp_path, monkeypatch):
    """--configs end to end: two rows, two rounds (four subprocesses, ~1 min on 2 cores), on data made once."""
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "configs.json"
    assert bench_train.main([*TINY, "--data-root", "", "--crop-size", "64", "128", "--steps", "1", "--warmup", "1",
                             "--frames", "2", "--configs", "eager-nchw,eager-checkpointing", "--rounds", "2",
                             "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["configs"]
    assert [r["name"] for r in rows] == ["eager-nchw", "eager-checkpointing"]
    for row in rows:
        assert len(row["runs"]) == 2 and all("parts" in r for r in row["runs"])
        assert [p["part"] for p in row["parts"]] == ["step", "loader"]
    # Each row's flags, on top of the common ones: eager-nchw turns channels_last off, the other checkpoints.
    assert [(r["runs"][0]["config"]["channels_last"], r["runs"][0]["config"]["grad_checkpointing"])
            for r in rows] == [(False, False), (True, True)]
    assert [p.name for p in tmp_path.iterdir()] == ["configs.json"]
