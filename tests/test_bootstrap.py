"""report.bootstrap against explicit per-replicate loops, metrics.per_image's validation, and aggregate.py's table 5b
end to end on run dirs with results.json + per_image.npz."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aggregate
from bench import bench_bootstrap
from bench.bench_bootstrap import loop_deltas, synthetic_stats
from data_utils.labels import CITYSCAPES
from metrics.per_image import ARRAYS, dataset_metrics, read_per_image, subset
from metrics.reductions import iou_from_confusion
from metrics.registry import METRICS
from report.bootstrap import (BOOTSTRAP_METRICS, PROFILE_METRICS, bootstrap_metrics, full_set_values,
                              paired_image_bootstrap)
from tests.test_aggregate import read_csv
from utils import UserError, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def holm_loop(p: list[float]) -> list[float]:
    """Holm's sequential rule written out (NaN left out): sorted, multipliers m, m−1, ..., running max."""
    valid = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    out, running = [math.nan] * len(p), 0.0
    for rank, (v, i) in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - rank) * v))
        out[i] = running
    return out


@pytest.fixture(scope="module")
def small_stats() -> dict[str, list[dict]]:
    """Three groups (2, 2 and 1 seeds) over 9 images and 4 classes; image 0 of every run has no valid pixel."""
    rng = np.random.default_rng(7)
    return {g: [synthetic_stats(rng, 9, 4, quality=q, empty_image=True) for _ in range(k)]
            for g, q, k in (("A", 0.6, 2), ("B", 0.65, 2), ("C", 0.7, 1))}


# ---------------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("metric", list(BOOTSTRAP_METRICS))
def test_bootstrap_equals_explicit_loop(small_stats, metric):
    pairs = [("A", "B"), ("C", "A"), ("B", "C")]
    B, seed = 60, 11
    result = bootstrap_metrics(small_stats, pairs, [metric], B, seed)[metric]
    rows = np.random.default_rng(seed).integers(0, 9, size=(B, 9))  # the draws, row b = replicate b
    d = loop_deltas(small_stats, pairs, metric, rows)  # (B, P)
    full = loop_deltas(small_stats, pairs, metric, np.arange(9)[None])[0]
    expected_p = []
    for k, pair in enumerate(pairs):
        r = result[pair]
        np.testing.assert_allclose(r["samples"], d[:, k], rtol=1e-12, atol=1e-15)
        assert r["delta"] == pytest.approx(full[k], rel=1e-12, abs=1e-15)
        finite = sorted(v for v in d[:, k] if not math.isnan(v))
        # the 2.5 / 97.5 percentiles with linear interpolation between the order statistics
        for q, got in ((0.025, r["ci_low"]), (0.975, r["ci_high"])):
            h = (len(finite) - 1) * q
            lo = math.floor(h)
            want = finite[lo] + (h - lo) * (finite[min(lo + 1, len(finite) - 1)] - finite[lo])
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
        below, above = sum(v <= 0 for v in finite) / len(finite), sum(v >= 0 for v in finite) / len(finite)
        assert r["p"] == min(1.0, 2 * min(below, above))
        assert r["replicates"] == len(finite)
        expected_p.append(r["p"])
    assert [result[pair]["p_holm"] for pair in pairs] == pytest.approx(holm_loop(expected_p))
    # the group values on all images: the mean over seeds of each run's value
    a = np.mean([bench_bootstrap.run_value_loop(run, metric, np.arange(9)) for run in small_stats["A"]])
    assert result["C", "A"]["y"] == pytest.approx(a, rel=1e-12)


def test_blocks_of_replicates_change_nothing(small_stats):
    metrics = list(BOOTSTRAP_METRICS)
    whole = bootstrap_metrics(small_stats, [("A", "B"), ("A", "C")], metrics, 50, 3)
    blocks = bootstrap_metrics(small_stats, [("A", "B"), ("A", "C")], metrics, 50, 3, chunk_replicates=7)
    for m in metrics:
        for pair in whole[m]:  # counts sum exactly in float64; per-image scores up to the order of the sums
            if ARRAYS[BOOTSTRAP_METRICS[m].array][1] == "f":  # per-image scores, not counts
                np.testing.assert_allclose(whole[m][pair]["samples"], blocks[m][pair]["samples"], rtol=1e-13,
                                           atol=1e-13)  # Δ near 0: a difference of values up to ~100
            else:
                np.testing.assert_array_equal(whole[m][pair]["samples"], blocks[m][pair]["samples"])


def test_paired_image_bootstrap_api(small_stats):
    """The issue's API: {group: [confusion per seed]} -> {(X, Y): delta, ci_low, ci_high, p} for mIoU."""
    confusions = {g: [run["confusion"] for run in runs] for g, runs in small_stats.items()}
    out = paired_image_bootstrap(confusions, [("B", "A")], num_replicates=40, seed=2)
    ref = bootstrap_metrics(small_stats, [("B", "A")], ["miou"], 40, 2)["miou"]
    assert set(out) == {("B", "A")} and {"delta", "ci_low", "ci_high", "p"} <= set(out["B", "A"])
    for key in ("delta", "ci_low", "ci_high", "p", "p_holm"):
        assert out["B", "A"][key] == ref["B", "A"][key]
    # the full-set mIoU equals metrics.per_image's reduction of the summed confusion
    miou = [float(np.nanmean(iou_from_confusion(c.sum(0)))) for c in confusions["B"]]
    assert out["B", "A"]["x"] == pytest.approx(np.mean(miou), rel=1e-12)


def test_identical_runs_give_zero_and_p_one(small_stats):
    runs = small_stats["A"]
    result = bootstrap_metrics({"X": runs, "Y": [dict(r) for r in runs]}, [("X", "Y")], list(BOOTSTRAP_METRICS),
                               200, 0)
    for m, res in result.items():
        r = res["X", "Y"]
        assert (r["delta"], r["ci_low"], r["ci_high"], r["p"], r["p_holm"]) == (0.0, 0.0, 0.0, 1.0, 1.0), m


def test_strictly_better_run_is_significant():
    """X predicts every image's pixels better than Y (more on the diagonal, taken from the errors): Δ_b > 0 in
    every replicate, so p = 0 and the interval excludes 0; Y vs X mirrors it."""
    y = synthetic_stats(np.random.default_rng(0), 40, 5, quality=0.6)["confusion"]  # (n, C, C+1)
    diagonal = np.arange(5)
    moved = y // 2
    moved[:, diagonal, diagonal] = 0  # half of every wrong cell ...
    x = y - moved
    x[:, diagonal, diagonal] += moved.sum(-1)  # ... predicted right instead: same targets, fewer errors
    out = paired_image_bootstrap({"X": [x], "Y": [y]}, [("X", "Y"), ("Y", "X")], 500, 1)
    assert out["X", "Y"]["delta"] > 0 and out["X", "Y"]["ci_low"] > 0 and out["X", "Y"]["p"] == 0.0
    assert out["Y", "X"]["delta"] == -out["X", "Y"]["delta"] and out["Y", "X"]["ci_high"] < 0
    assert out["Y", "X"]["p"] == 0.0


def test_module_example():
    import doctest

    import report.bootstrap

    result = doctest.testmod(report.bootstrap)
    assert result.attempted > 0 and result.failed == 0


def test_bench_runs_and_agrees_at_tiny_size(capsys):
    assert bench_bootstrap.main(["--replicates", "30", "--groups", "2", "--seeds", "2", "--images", "12",
                                 "--classes", "3", "--loop-replicates", "5"]) == 0
    out = capsys.readouterr().out
    assert "replicates/s" in out and "Δ_b equal on those 5 replicates" in out


@pytest.mark.parametrize("profile", ["default", "study"])
def test_full_set_values_equal_the_evaluations_reduction(profile):
    """The bootstrap's vectorised reductions on the full image set equal metrics.per_image.dataset_metrics, the
    reduction results.json is written with (two implementations of one definition, held together here)."""
    stats = synthetic_stats(np.random.default_rng(3), 12, 5, empty_image=True)
    names = PROFILE_METRICS[profile]
    ours = full_set_values(stats, list(names.values()))
    reference = dataset_metrics(stats, profile)
    for key, bootstrap_key in names.items():
        assert ours[bootstrap_key] == pytest.approx(reference[key], rel=1e-12, abs=1e-12), key


# ---------------------------------------------------------------------------------------------------- the reader
def test_read_per_image_refuses_bad_files(tmp_path):
    good = synthetic_stats(np.random.default_rng(0), 5, 3)
    path = tmp_path / "epoch_0003.per_image.npz"
    np.savez_compressed(path, **good)
    arrays = read_per_image(path)
    assert arrays["confusion"].dtype == np.int64 and arrays["names"].tolist() == good["names"].tolist()
    cases = [({k: v for k, v in good.items() if k != "fragments"}, "per-image file lacks fragments"),
             ({**good, "confusion": good["confusion"][:, :, :3]},
              r"`confusion` has shape \(5, 3, 3\), expected \(5, 3, 4\)"),
             ({**good, "boundary_f1": good["boundary_f1"].astype(np.int64)}, "`boundary_f1` has dtype int64"),
             ({**good, "names": np.array(["a", "b", "a", "c", "d"])}, "image names are not unique"),
             ({**good, "fragments": -good["fragments"]}, "`fragments` holds negative counts"),
             ({**good, "names": np.array(list("abcde"), dtype=object)}, "corrupt per-image file")]  # a pickle
    for arrays, message in cases:
        np.savez(path, **arrays)
        with pytest.raises(UserError, match=f"{path.name}: (per-image file )?{message}"):
            read_per_image(path)
    np.savez_compressed(path, **good)
    path.write_bytes(path.read_bytes()[:100])  # a write cut short
    with pytest.raises(UserError, match="corrupt per-image file"):
        read_per_image(path)
    with pytest.raises(UserError, match="no such per-image file"):
        read_per_image(tmp_path / "absent.per_image.npz")


# ---------------------------------------------------------------------------------------------------- aggregate.py
def write_run(runs: Path, variant: str, seed: int, epoch: int, stats: dict, shuffle: int | None = None,
              profile: str = "default") -> Path:
    """RUN/checkpoints/epoch_N.results.json with its values computed from `stats` by metrics.per_image (
    independent of report.bootstrap) for the metrics `profile`, and the per-image file beside it (images in a
    shuffled order: `shuffle`)."""
    ckpt = runs / f"{variant}_seed{seed}" / "checkpoints" / f"epoch_{epoch:04d}"
    iou = iou_from_confusion(stats["confusion"].sum(0))
    if profile == "default":
        bf1 = np.nanmean(stats["boundary_f1"])
        trimap = np.nanmean(iou_from_confusion(stats["trimap_confusion"].sum(0)))
    else:  # the study profile: means of the per-image scores over all images
        bf1, trimap = stats["study_boundary_f1"].mean(), stats["study_trimap_iou"].mean()
    C = len(stats["class_names"])
    atomic_write_json(ckpt.with_name(ckpt.name + ".results.json"), {
        "variant": variant, "seed": seed, "epoch": epoch, "checkpoint": str(ckpt), "split": "val",
        "num_images": len(stats["names"]), "miou": float(np.nanmean(iou)), "boundary_f1": float(bf1),
        "trimap_iou": float(trimap), "iou": dict(zip(CITYSCAPES.names[:C], iou.tolist())), "seconds": 1.0,
        "lambda_dice": 1.0, "lambda_boundary": 0.2, "metrics_profile": profile})
    order = np.random.default_rng(shuffle).permutation(len(stats["names"])) if shuffle is not None \
        else np.arange(len(stats["names"]))
    np.savez_compressed(ckpt.with_name(ckpt.name + ".per_image.npz"), **subset(stats, order))
    return ckpt


@pytest.fixture
def bootstrap_runs(tmp_path) -> tuple[Path, dict[str, list[dict]]]:
    """Groups A, B, C (C best), seeds 1 and 2, 16 images, 4 classes (Cityscapes' first four), epoch 3 only; the
    image order of C seed 2's per-image file is shuffled (the reader aligns it by name)."""
    rng = np.random.default_rng(3)
    runs = tmp_path / "runs"
    stats = {}
    for g, q in (("A", 0.6), ("B", 0.62), ("C", 0.8)):
        stats[g] = [synthetic_stats(rng, 16, 4, quality=q) for _ in (1, 2)]
        for seed, s in zip((1, 2), stats[g]):
            s["class_names"] = np.array(CITYSCAPES.names[:4])
            write_run(runs, g, seed, 3, s, shuffle=5 if (g, seed) == ("C", 2) else None)
    return runs, stats


def test_aggregate_bootstrap_table_end_to_end(bootstrap_runs, tmp_path, monkeypatch):
    runs, stats = bootstrap_runs
    pushed = {}
    import report.wandb_log

    monkeypatch.setattr(report.wandb_log, "push_report",
                        lambda tables, figures, *a, **k: pushed.update(tables=tables, figures=figures) or "captured")
    out = tmp_path / "report"
    assert aggregate.main([str(runs), "--out", str(out), "--wandb"]) == 0  # the default: 10 000 replicates, seed 0
    rows = {(r["metric"], r["comparison"]): r for r in read_csv(out / "table5b_image_bootstrap.csv")}
    assert len(rows) == len(METRICS) * 3  # every metric record (mIoU, Boundary F1, ...) × 3 pairs
    confusions = {g: [s["confusion"] for s in v] for g, v in stats.items()}
    ref = paired_image_bootstrap(confusions, list(itertools.combinations("ABC", 2)), 10_000, 0)
    for (a, b), r in ref.items():
        row = rows["mIoU", f"{a} vs {b}"]
        assert (row["unit"], row["n_seeds X"], row["n_seeds Y"]) == ("pp", "2", "2")
        for column, key in (("Δ", "delta"), ("bootstrap 95% CI low", "ci_low"), ("bootstrap 95% CI high", "ci_high")):
            assert float(row[column]) == pytest.approx(100 * r[key], rel=1e-9)
        assert float(row["bootstrap p"]) == pytest.approx(r["p"]) and float(row["bootstrap Holm p"]) == pytest.approx(
            r["p_holm"])
    assert rows["mIoU", "A vs C"]["bootstrap significant (Holm p < 0.05)"] == "True"  # C is far better
    assert rows["Fragments / image", "A vs B"]["unit"] == "count"
    # the t-test columns are table 5's test of the same per-seed values
    t5 = {(r["metric"], r["comparison"]): r for r in read_csv(out / "table5_significance.csv")}
    for key in (("mIoU", "A vs C"), ("Boundary F1", "B vs C"), ("Trimap IoU", "A vs B")):
        assert float(rows[key]["t"]) == pytest.approx(float(t5[key]["t"]), rel=1e-9)
        assert float(rows[key]["t-test Holm p"]) == pytest.approx(float(t5[key]["Holm p"]), rel=1e-9)
    summary = (out / "summary.md").read_text()
    assert "Table 5b — paired image bootstrap vs paired-by-seed t-test at epoch 3" in summary
    assert "image-sampling variance" in summary and "training-seed variance" in summary
    png = out / "bootstrap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![bootstrap](bootstrap.png)" in summary
    assert "table5b_image_bootstrap" in [t.name for t in pushed["tables"]] and "bootstrap" in pushed["figures"]

    # the options: other replicates and seed
    assert aggregate.main([str(runs), "--out", str(out), "--bootstrap", "300", "--bootstrap-seed", "5"]) == 0
    row = {(r["metric"], r["comparison"]): r for r in read_csv(out / "table5b_image_bootstrap.csv")}["mIoU", "B vs C"]
    r = paired_image_bootstrap(confusions, [("B", "C")], 300, 5)["B", "C"]
    assert (float(row["bootstrap 95% CI low"]), float(row["bootstrap 95% CI high"])) == pytest.approx(
        (100 * r["ci_low"], 100 * r["ci_high"]), rel=1e-9)
    assert "300 replicates of the 16 images drawn with replacement, seed 5" in (out / "summary.md").read_text()

    # --bootstrap 0: a table without rows saying so, and no stale figure
    assert aggregate.main([str(runs), "--out", str(out), "--bootstrap", "0"]) == 0
    assert read_csv(out / "table5b_image_bootstrap.csv") == [] and not png.exists()
    assert "off (--bootstrap 0)" in (out / "summary.md").read_text()


def test_aggregate_bootstrap_refuses_incomplete_or_stale_statistics(bootstrap_runs, tmp_path):
    runs, stats = bootstrap_runs
    out = tmp_path / "o"
    npz = runs / "B_seed2" / "checkpoints" / "epoch_0003.per_image.npz"
    npz.unlink()
    with pytest.raises(UserError, match=r"epoch_0003\.per_image\.npz: no per-image statistics for B seed 2 \(1 of 6 "
                                        r"runs at epoch 3 lack them\)"):
        aggregate.main([str(runs), "--out", str(out)])
    fewer = subset(stats["B"][1], np.arange(15))
    np.savez_compressed(npz, **fewer)
    with pytest.raises(UserError, match=r"B_seed2/checkpoints/epoch_0003\.per_image\.npz: per-image statistics over 15 "
                                        r"images, .*A_seed1/checkpoints/epoch_0003\.per_image\.npz over 16, not the "
                                        r"same images \(e\.g\. city_000015_000019 only in"):
        aggregate.main([str(runs), "--out", str(out)])
    stale = dict(stats["B"][1], confusion=stats["A"][0]["confusion"])
    np.savez_compressed(npz, **stale)
    with pytest.raises(UserError, match=r"its mIoU over all images is .* but .*B_seed2.*results\.json says .* \(a "
                                        r"stale per-image file\?\)"):
        aggregate.main([str(runs), "--out", str(out)])
    assert not out.exists()  # nothing written
    npz.write_bytes(b"not an npz")  # through the CLI: one line naming the file, exit 2
    proc = subprocess.run([sys.executable, "aggregate.py", str(runs), "--out", str(out), "--bootstrap", "10"],
                          cwd=ROOT, capture_output=True, text=True)
    last = proc.stderr.strip().splitlines()[-1]  # after the "6 results from ..." summary: the error, one line
    assert proc.returncode == 2 and last.startswith(f"error: {npz}: corrupt per-image file (not an .npz")


def test_aggregate_bootstrap_skipped_without_per_image_statistics(tmp_path):
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for g in "AB":
        for seed in (1, 2):
            s = synthetic_stats(rng, 6, 3)
            s["class_names"] = np.array(CITYSCAPES.names[:3])
            write_run(runs, g, seed, 2, s)
            next(runs.rglob(f"{g}_seed{seed}/checkpoints/*.per_image.npz")).unlink()
    assert aggregate.main([str(runs), "--out", str(tmp_path / "o")]) == 0
    assert ("image bootstrap skipped: no *.per_image.npz beside the epoch-2 results"
            in (tmp_path / "o" / "summary.md").read_text())
    table = tmp_path / "t.csv"
    table.write_text("variant,seed,epoch,mIoU,boundary_f1_mean,trimap_mIoU_mean\nA,1,1,0.5,0.5,0.5\n"
                     "B,1,1,0.6,0.5,0.5\n")
    assert aggregate.main(["--from-csv", str(table), "--out", str(tmp_path / "c")]) == 0
    assert "image bootstrap skipped: a tidy CSV holds no per-image statistics" in (
        tmp_path / "c" / "summary.md").read_text()
    proc = subprocess.run([sys.executable, "aggregate.py", str(runs), "--out", str(tmp_path / "x"), "--bootstrap",
                           "-1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--bootstrap and --bootstrap-seed take integers >= 0" in proc.stderr


def test_aggregate_bootstrap_follows_the_metrics_profile(tmp_path):
    """Runs evaluated with the study profile: table 5b's Boundary F1 and Trimap IoU are that profile's (the mean
    of the per-image scores); runs of both profiles are refused."""
    rng = np.random.default_rng(4)
    runs = tmp_path / "runs"
    stats = {}
    for g, q in (("A", 0.6), ("B", 0.7)):
        stats[g] = [synthetic_stats(rng, 10, 3, quality=q) for _ in (1, 2)]
        for seed, s in zip((1, 2), stats[g]):
            s["class_names"] = np.array(CITYSCAPES.names[:3])
            write_run(runs, g, seed, 4, s, profile="study")
    out = tmp_path / "o"
    assert aggregate.main([str(runs), "--out", str(out), "--bootstrap", "100"]) == 0
    rows = {r["metric"]: r for r in read_csv(out / "table5b_image_bootstrap.csv")}
    ref = bootstrap_metrics(stats, [("A", "B")], ["study_boundary_f1", "study_trimap_iou"], 100, 0)
    for label, name in (("Boundary F1", "study_boundary_f1"), ("Trimap IoU", "study_trimap_iou")):
        assert float(rows[label]["Δ"]) == pytest.approx(100 * ref[name]["A", "B"]["delta"], rel=1e-9)
        assert float(rows[label]["bootstrap 95% CI low"]) == pytest.approx(100 * ref[name]["A", "B"]["ci_low"],
                                                                          rel=1e-9)
    assert "metrics profile: study" in (out / "summary.md").read_text()
    write_run(runs, "B", 2, 4, stats["B"][1], profile="default")
    with pytest.raises(UserError, match=r"results of several metrics profiles \(default, study\) are mixed, "
                                        r"e\.g\. .*B_seed2/checkpoints/epoch_0004\.results\.json"):
        aggregate.main([str(runs), "--out", str(tmp_path / "x")])
