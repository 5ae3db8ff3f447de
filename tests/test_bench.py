"""bench/bench_train.py and bench/bench_loader.py at tiny size on CPU, and the FLOP counting they report.

No timing is asserted (speed claims live in BENCHMARKS.md); these check that the scripts run end to end,
report consistent records, and that the FLOP and saved-memory counts match hand counts.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench import bench_loader, bench_train


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


def test_matrix_rows_parse_to_the_switches_they_name():
    args = bench_train.parse_args(["--device", "cpu"])
    rows = bench_train.matrix_rows(args)
    parsed = [bench_train.parse_args(["--device", "cpu", *flags]) for _, flags, _ in rows]
    switches = [(a.compile, a.channels_last, a.fused_loss, a.grad_checkpointing) for a in parsed]
    assert switches == [(False, False, False, False), (False, True, False, False), (False, True, True, False),
                        (False, True, True, True), (False, True, True, False)]
    assert [parts for _, _, parts in rows] == ["model"] * 4 + ["model,data"]
    # On CUDA the default row compiles; the preset gives the study's size.
    assert bench_train.PRESETS["full"]["compile"] and bench_train.PRESETS["full"]["height"] == 1024


def test_bench_train_runs_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--height", "64", "--width", "128", "--batch-size", "1", "--steps", "2",
            "--warmup", "1", "--head-channels", "16", "--workers", "0", "--frames", "2",
            "--sdt-source", "gpu,cache", "--tmp-dir", str(tmp_path), "--json", str(out)]
    assert bench_train.main(argv) == 0
    report = json.loads(out.read_text())
    assert [p["part"] for p in report["parts"]] == ["model", "data sdt=gpu", "data sdt=cache"]
    flops = report["flops_per_image"]
    assert 0 < flops["forward"] < flops["train"] <= flops["train_uncorrected_counter"]
    for part in report["parts"]:
        assert part["loss_finite"] and part["images_per_s"] > 0 and part["peak_memory_gib"] > 0
        assert part["tflops_per_s"] == pytest.approx(flops["train"] * part["images_per_s"] / 1e12)
        assert part["epoch_s"] == pytest.approx(2975 / part["images_per_s"])
        expected = {"forward", "backward", "optimizer"} | ({"data", "augment_sdt"} if "data" in part["part"] else set())
        assert set(part["phase_ms"]) == expected
        # CPU phases are consecutive perf_counter intervals: they add up to the step.
        assert sum(part["phase_ms"].values()) == pytest.approx(part["ms_per_step"], rel=0.05)
    assert report["parts"][0]["saved_for_backward_mib"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # the temporary data set is removed


def test_bench_train_times_any_loss_recipe(tmp_path, capsys):
    argv = ["--device", "cpu", "--height", "32", "--width", "64", "--batch-size", "1", "--steps", "1",
            "--warmup", "1", "--head-channels", "16", "--workers", "0", "--parts", "model",
            "--loss", "ce=1,lovasz=0.5,boundary=0.2", "--json", str(tmp_path / "bench.json")]
    assert bench_train.main(argv) == 0
    assert "loss ce+0.2·boundary+0.5·lovasz" in capsys.readouterr().out
    assert json.loads((tmp_path / "bench.json").read_text())["parts"][0]["loss_finite"]
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--device", "cpu", "--loss", "ce=1,nope=1"])


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


def test_interleaved_compare_at_tiny_size(tmp_path):
    out = tmp_path / "compare.json"
    assert bench_train.main(["--device", "cpu", "--height", "64", "--width", "128", "--batch-size", "1",
                             "--warmup", "1", "--head-channels", "16", "--compare", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["compare"]["rows"]
    # The eager model-only rows of the matrix, the default row (a repeat of row 3 on CPU) dropped.
    assert [r["label"] for r in rows] == [label for label, _, _ in bench_train.matrix_rows(
        bench_train.parse_args(["--device", "cpu"]))][:4]
    assert rows[0]["ratio"] == 1.0
    for r in rows:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["ratio"] == pytest.approx(rows[0]["median_ms"] / r["median_ms"])
        assert r["ratio_of_minima"] == pytest.approx(rows[0]["min_ms"] / r["min_ms"])


@pytest.mark.slow
def test_matrix_at_tiny_size(tmp_path):
    """The --matrix command end to end (five subprocesses, ~1 min on 2 cores), with the full preset's switches
    except compile (minutes on a CPU)."""
    out = tmp_path / "matrix.json"
    assert bench_train.main(["--device", "cpu", "--preset", "full", "--no-compile", "--backbone", "convnextv2_atto",
                             "--height", "64", "--width", "128", "--head-channels", "16", "--steps", "1",
                             "--warmup", "1", "--workers", "0", "--frames", "2", "--matrix", "--tmp-dir", str(tmp_path),
                             "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["matrix"]
    assert [r["label"] for r in rows] == [label for label, _, _ in bench_train.matrix_rows(
        bench_train.parse_args(["--device", "cpu", "--no-compile"]))]
    assert all("report" in r for r in rows)
    assert [p["part"] for p in rows[-1]["report"]["parts"]] == ["model", "data sdt=gpu", "data sdt=cache"]
    assert all(r["report"]["options"]["bf16"] for r in rows)
    assert [p.name for p in tmp_path.iterdir()] == ["matrix.json"]
