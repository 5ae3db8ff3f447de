"""aggregate.py and the report package: statistics against explicit formulas, loading and its errors, the
whole CLI on a results tree and on the original study's CSVs (its published numbers reproduced), figures, W&B."""
from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps

import aggregate
from report.load import Grouping, RunSetting, Study, load_csv, load_runs_dir, read_results_file
from report.stats import holm, intervals_overlap, paired_ttest, summarize
from utils import UserError, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
T975 = {1: 12.706204736174698, 2: 4.302652729749464, 3: 3.182446305284263, 4: 2.7764451051977934}  # tables
TABLES = ["table1_final_epoch", "table2_early_epoch", "table3_per_class_iou", "table3b_d_vs_b_extremes",
          "table4_class_volatility", "table5_significance", "crossover_summary", "crossover_rankings"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by(rows: list[dict], *keys: str) -> dict:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


def r2(x: str) -> float:
    """A CSV value rounded to two decimals, as the paper prints it."""
    return round(float(x), 2)


# ---------------------------------------------------------------------------------------------------- stats
def test_summarize_hand_made():
    s = summarize([0.80, 0.82, 0.84])  # mean 0.82, std 0.02 exactly
    assert s.n == 3 and s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    assert s.se == pytest.approx(0.02 / math.sqrt(3))
    assert s.half_normal == pytest.approx(1.96 * 0.02 / math.sqrt(3))
    assert s.half_t == pytest.approx(T975[2] * 0.02 / math.sqrt(3))
    one = summarize([0.5, float("nan")])  # NaN dropped -> 1 value: a mean but no interval
    assert one.n == 1 and one.mean == 0.5 and not one.has_ci and math.isnan(one.half_normal)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_summarize_matches_explicit_loops(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.uniform(0.3, 0.9, size=n).tolist()
        mean = sum(x) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
        s = summarize(x)
        assert s.mean == pytest.approx(mean, abs=1e-15)
        assert s.std == pytest.approx(std, rel=1e-12)
        assert s.half_normal == pytest.approx(1.96 * std / math.sqrt(n), rel=1e-12)
        assert s.half_t == pytest.approx(T975[n - 1] * std / math.sqrt(n), rel=1e-9)


def test_paired_ttest_matches_formula_and_sign():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        a, b = rng.uniform(0.7, 0.8, n), rng.uniform(0.7, 0.8, n)
        d = a - b
        t_ref = d.mean() / (d.std(ddof=1) / math.sqrt(n))
        delta, t, p = paired_ttest(a, b)
        assert delta == pytest.approx(d.mean()) and t == pytest.approx(t_ref)
        assert p == pytest.approx(2 * sps.t.sf(abs(t_ref), n - 1))
        assert paired_ttest(b, a)[1] == pytest.approx(-t)  # "A vs B" is A − B
    delta, t, p = paired_ttest([0.5], [0.4])  # one pair: a difference, no test
    assert delta == pytest.approx(0.1) and math.isnan(t) and math.isnan(p)
    assert paired_ttest([0.70, 0.72], [0.72, 0.74])[1:] == (-math.inf, 0.0)  # constant difference: the limit
    assert all(math.isnan(v) for v in paired_ttest([0.7, 0.8], [0.7, 0.8])[1:])


def _holm_reference(p):
    """Holm's sequential rule written out: walk the sorted p-values, multiplier m, m-1, ..., running max."""
    valid = [(v, i) for i, v in enumerate(p) if not math.isnan(v)]
    m, out, running = len(valid), [math.nan] * len(p), 0.0
    for rank, (v, i) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (m - rank) * v))
        out[i] = running
    return out


def test_holm_hand_made_and_random():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max keeps 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=6)
        p[rng.random(6) < 0.2] = np.nan  # untestable comparisons leave the family
        p[rng.random(6) < 0.2] = p[0]  # ties
        np.testing.assert_allclose(holm(p), _holm_reference(list(p)), equal_nan=True)


def test_intervals_overlap():
    a, b = summarize([0.80, 0.81, 0.82]), summarize([0.83, 0.84, 0.85])
    # means 3 pp apart; 1.96·SE half-widths 1.13 pp each (no overlap), t half-widths 2.48 pp each (overlap)
    assert intervals_overlap(a, b, "normal") is False and intervals_overlap(a, b, "t") is True
    assert intervals_overlap(a, summarize([0.9]), "normal") is None


# ---------------------------------------------------------------------------------------------------- loading
def write_result(runs: Path, variant: str, seed: int, epoch: int, miou: float, bf1: float = 0.7,
                 trimap: float = 0.5, iou: dict | None = None, lam: float = 0.2, config: dict | None = None,
                 profile: str | None = None, extra: dict | None = None) -> Path:
    """A results file as evaluate.py writes it; `config` (optional) is the run's config (schedule fields), a
    `profile` None leaves `metrics_profile` out (a file written before the profiles existed); `extra`: further
    keys (the other metrics, `classes`, `boundary_iou_per_class`, ...)."""
    path = runs / f"{variant}_s{seed}" / "checkpoints" / f"epoch_{epoch:04d}.results.json"
    atomic_write_json(path, {
        "variant": variant, "seed": seed, "epoch": epoch, "checkpoint": str(path).replace(".results.json", ""),
        "split": "val", "num_images": 500, "miou": miou, "boundary_f1": bf1, "trimap_iou": trimap,
        "iou": iou if iou is not None else {"road": miou + 0.1, "wall": miou - 0.2, "truck": float("nan")},
        "seconds": 12.5, "lambda_dice": 1.0, "lambda_boundary": lam, **({"config": config} if config else {}),
        **({"metrics_profile": profile} if profile else {}), **(extra or {})})
    return path


def test_results_of_two_metrics_profiles_are_not_pooled(tmp_path):
    write_result(tmp_path, "A", 1, 10, 0.8)  # no profile recorded: the default estimators
    write_result(tmp_path, "B", 1, 10, 0.8, profile="default")
    assert {r.metrics_profile for r in Study.from_records(load_runs_dir(tmp_path)).records} == {"default"}
    write_result(tmp_path, "C", 1, 10, 0.8, profile="study")
    with pytest.raises(UserError, match=r"results of several metrics profiles \(default, study\) are mixed, e\.g\. "
                                        r".*A_s1.*C_s1.*not comparable"):
        Study.from_records(load_runs_dir(tmp_path))


def test_corrupt_results_file_names_it(tmp_path):
    write_result(tmp_path, "A", 1, 10, 0.8)
    bad = tmp_path / "A_s2" / "checkpoints" / "epoch_0010.results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"variant": "A", "seed": 2, "epo')  # a write cut short
    with pytest.raises(UserError, match=str(bad).replace(".", r"\.")):
        load_runs_dir(tmp_path)
    bad.write_text(json.dumps({"variant": "A", "seed": 2, "epoch": 10, "miou": 0.8}))
    with pytest.raises(UserError, match="lacks checkpoint, split, num_images, boundary_f1, trimap_iou, iou"):
        read_results_file(bad)


def test_results_files_read_by_the_reader_evaluate_uses(tmp_path):
    """aggregate.py reads results through engine.results_format.read_results (evaluate.py's reader), and
    refuses a null global metric by saying so (a null is valid JSON, not an empty value)."""
    path = write_result(tmp_path, "C", 1, 10, 0.8)
    record = read_results_file(path)
    assert list(record.iou) == ["road", "wall", "truck"]  # the file's order (it records no `classes`)
    assert record.iou["road"] == pytest.approx(0.9) and record.iou["wall"] == pytest.approx(0.6)
    assert math.isnan(record.iou["truck"])  # null -> NaN: the class never occurred
    assert (record.lambda_boundary, record.split) == (0.2, "val")
    obj = json.loads(path.read_text())
    for key, value, message in (("miou", None, r"`miou` is null \(undefined"),
                                ("boundary_f1", 81.2, r"`boundary_f1` = 81\.2 is not a fraction in \[0, 1\]"),
                                ("seed", "1", r"`seed` = '1' is not an integer"),
                                ("iou", {"roads": 0.5}, "unknown class names in `iou`: roads")):
        path.write_text(json.dumps({**obj, "classes": ["road", "wall", "truck"], key: value}))
        with pytest.raises(UserError, match=f"{path.name}: {message}"):
            read_results_file(path)


def test_report_imports_no_torch(python_imports):
    """aggregate.py only reads files: loading the report package must not import torch or the training code (it
    may use the torch-free vocabularies: losses.registry / losses.variants for term names and λ_b, metrics.keys)."""
    result, modules = python_imports("-c", "import aggregate, report.load, report.gradients")
    assert result.returncode == 0, result.stderr
    training = {"torch", "accelerate", "engine.config", "engine.results", "losses.loss", "losses.fused",
                "metrics.segmentation"}
    assert not modules & training, sorted(modules & training)


def test_user_errors_on_bad_input(tmp_path):
    pct = tmp_path / "pct.csv"
    pct.write_text("variant,seed,epoch,mIoU,boundary_f1_mean,trimap_mIoU_mean\nA,1,10,81.2,60.1,50.3\n")
    with pytest.raises(UserError, match=r"pct\.csv:2: `mIoU` = 81\.2 is outside \[0, 1\]"):
        load_csv(pct)
    short = tmp_path / "short.csv"
    short.write_text("variant,seed,epoch,mIoU\nA,1,10,0.8\n")
    with pytest.raises(UserError, match="lacks the column"):
        load_csv(short)
    write_result(tmp_path / "runs", "A", 1, 10, 0.8)
    write_result(tmp_path / "runs" / "copy", "A", 1, 10, 0.8)  # the same run twice
    with pytest.raises(UserError, match="a second result for variant A seed 1 epoch 10"):
        Study.from_records(load_runs_dir(tmp_path / "runs"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no \*\.results\.json below it"):
        load_runs_dir(tmp_path / "empty")
    with pytest.raises(UserError, match=re.escape(f"(`python evaluate.py --all {tmp_path / 'empty'}`)")):
        load_runs_dir(tmp_path / "empty")  # the folder itself, not a literal {runs_dir}


def test_curves_have_integer_epoch_ticks(tmp_path, monkeypatch):
    import report.figures as figures

    for seed in (1, 2):
        for epoch in (1, 2, 3):  # three evaluated epochs: matplotlib's default ticks would be 1.00, 1.25, ...
            write_result(tmp_path / "runs", "A", seed, epoch, 0.5 + 0.01 * epoch + 0.001 * seed)
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, formats=(): figs.append(fig))
    figures.plot_curves(Study.from_records(load_runs_dir(tmp_path / "runs")), tmp_path / "curves.png")
    ticks = [t for ax in figs[0].axes if ax.get_xlabel() == "epoch" for t in ax.get_xticks()]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_cli_error_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "runs" / "x.results.json"
    bad.parent.mkdir()
    bad.write_text("not json")
    proc = subprocess.run([sys.executable, "aggregate.py", str(tmp_path / "runs"), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()  # nothing half-written


# ---------------------------------------------------------------------------------------------------- end to end
def assert_png(path: Path) -> None:
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()


@pytest.fixture
def runs_tree(tmp_path) -> Path:
    """A (variant B, seed 3, epoch 10) hole, variant C with one seed only; A's epoch-20 mIoU 80/82/84 %."""
    runs = tmp_path / "runs"
    for seed, offset in ((1, 0.0), (2, 0.02), (3, 0.04)):
        write_result(runs, "A", seed, 10, 0.70 + offset)
        write_result(runs, "A", seed, 20, 0.80 + offset, bf1=0.60 + offset / 2)
        write_result(runs, "B", seed, 20, 0.75 + offset / 4, bf1=0.61)
        if seed != 3:
            write_result(runs, "B", seed, 10, 0.72 + offset)
    write_result(runs, "C", 1, 10, 0.71)
    write_result(runs, "C", 1, 20, 0.78)
    return runs


def test_one_variant_report_raises_no_library_warning(tmp_path):
    """A first report has one variant (no Δ, no pair to test): no matplotlib/numpy/scipy warning may reach the
    console (matplotlib's "No artists with labels found to put in legend" did, from the empty Δ panel)."""
    runs = tmp_path / "runs"
    for seed, offset in ((1, 0.0), (2, 0.02), (3, 0.04)):
        write_result(runs, "A", seed, 10, 0.70 + offset)
        write_result(runs, "A", seed, 20, 0.80 + offset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert aggregate.main([str(runs), "--out", str(tmp_path / "report")]) == 0
    assert [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught] == []
    assert_png(tmp_path / "report" / "per_class_iou.png")


def write_history(run_dir: Path, mious: dict[int, float], profile: str = "default") -> None:
    """A run's config.json and metrics.jsonl as train.py writes them: one row per epoch, val/<metric> and
    val/iou/<class> for the epochs in `mious` (the others trained but not evaluated)."""
    atomic_write_json(run_dir / "config.json", {"val_split": "val", "metrics_profile": profile})
    rows = []
    for epoch in range(1, max(mious) + 1):
        row = {"epoch": epoch, "train/loss": 1.0 / epoch}
        if epoch in mious:
            row.update({"val/miou": mious[epoch], "val/boundary_f1": 0.7, "val/trimap_iou": 0.5,
                        "val/iou/road": mious[epoch] + 0.1, "val/iou/wall": None, "val/iou/truck": None})
        rows.append(json.dumps(row))
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")


def test_curves_show_every_evaluated_epoch(tmp_path, monkeypatch):
    """train.py evaluates every epoch but writes a results file only beside a checkpoint (the demo: epochs 4 and
    8 of 8): the report reads the other evaluations from the run's metrics.jsonl, so the curves have all 8
    points; a results file wins where both exist, and a run whose config evaluated with another metrics profile
    than its results keeps its metrics.jsonl out."""
    import report.figures as figures

    runs = tmp_path / "runs"
    for epoch in (4, 8):
        write_result(runs, "C", 42, epoch, 0.30 + 0.01 * epoch)
    evaluated = {e: 0.20 + 0.01 * e for e in (1, 2, 3, 5, 6)} | {4: 0.0, 8: 0.0}  # 7: not evaluated (--eval-every)
    write_history(runs / "C_s42", evaluated)
    records = load_runs_dir(runs)
    study = Study.from_records(records)
    assert study.epochs == [1, 2, 3, 4, 5, 6, 8]
    assert sum(r.from_history for r in records) == 5
    assert study.values("C", 4, "miou") == {42: pytest.approx(0.34)}  # the results file, not metrics.jsonl's 0
    assert study.values("C", 2, "road") == {42: pytest.approx(0.32)} and math.isnan(study.values("C", 2, "wall")[42])
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, formats=(): figs.append(fig))
    figures.plot_curves(study, tmp_path / "curves.png")
    line = next(ax for ax in figs[0].axes if ax.get_title() == "mIoU").lines[0]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5, 6, 8]
    np.testing.assert_allclose(line.get_ydata(), [21, 22, 23, 34, 25, 26, 38])
    # another metrics profile in the run's config than in its results: only the results files count
    write_history(runs / "C_s42", evaluated, profile="study")
    assert Study.from_records(load_runs_dir(runs)).epochs == [4, 8]


def test_history_epochs_carry_their_own_per_class_values(tmp_path):
    """An epoch read from metrics.jsonl has the per-class IoU its row logged and no other per-class values (the row
    holds none), never those of the results file it takes its setting from (the viewer's per-class panel)."""
    runs = tmp_path / "runs"
    write_result(runs, "C", 42, 4, 0.34, extra={"classes": ["road", "wall", "truck"],
                                                "boundary_iou_per_class": {"road": 0.5, "wall": 0.2, "truck": None}})
    write_history(runs / "C_s42", {1: 0.21, 4: 0.0})
    study = Study.from_records(load_runs_dir(runs))
    (first,) = [r for r in study.records if r.epoch == 1]
    assert first.from_history and first.iou["road"] == pytest.approx(0.31)
    assert first.class_values == {"miou": first.iou}  # not epoch 4's IoU and Boundary IoU
    (fourth,) = [r for r in study.records if r.epoch == 4]
    assert set(fourth.class_values) == {"miou", "boundary_iou"}
    assert fourth.class_values["miou"]["road"] == pytest.approx(0.44)


def test_one_variant_report_shows_what_it_can(tmp_path, monkeypatch):
    """One variant, one seed (the demo): no table without rows in summary.md (a table comparing groups, or the
    inter-seed spread, is one line saying what it needs), and the per-class figure has no Δ(C−C) panel."""
    import report.figures as figures

    runs = tmp_path / "runs"
    for epoch in (4, 8):
        write_result(runs, "C", 42, epoch, 0.30 + 0.01 * epoch)
    texts = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path, formats=(): (
        texts.append([t.get_text() for ax in fig.axes for t in (ax.title, *ax.texts, ax.yaxis.label)]),
        save(fig, path, formats)))
    assert aggregate.main([str(runs), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    sections = summary.split("### ")[1:]
    for section in sections:  # each table has rows, or says why not
        body = section.split("\n", 1)[1]
        assert "|" in body or "\n- " in body, section
    assert "(no rows)" not in summary
    for title in ("Table 3b", "Table 5 ", "Table 5b", "Crossover", "Ranking"):
        section = next(s for s in sections if s.startswith(title))
        assert "needs ≥ 2 groups to compare; this report has one (C)" in section and "|" not in section
    assert "needs ≥ 2 seeds of a group" in next(s for s in sections if s.startswith("Table 4"))
    per_class = texts[1]
    assert not any("Δ" in t for t in per_class) and "IoU (%)" in per_class


def test_results_tree_end_to_end(runs_tree, tmp_path, capsys):
    out = tmp_path / "report"
    assert aggregate.main([str(runs_tree), "--out", str(out)]) == 0
    for name in TABLES:
        assert (out / f"{name}.csv").is_file()
    assert_png(out / "curves.png")
    assert_png(out / "per_class_iou.png")

    t1 = by(read_csv(out / "table1_final_epoch.csv"), "variant")
    a = t1["A"]  # 80, 82, 84 %: mean 82, std 2, SE 2/√3
    assert float(a["mIoU mean (%)"]) == pytest.approx(82.0)
    assert float(a["mIoU ±1.96·SE (%)"]) == pytest.approx(1.96 * 2 / math.sqrt(3))
    assert float(a["mIoU ±t·SE (%)"]) == pytest.approx(T975[2] * 2 / math.sqrt(3))
    assert t1["C"]["n_seeds"] == "1" and t1["C"]["mIoU ±1.96·SE (%)"] == ""  # one seed: no CI
    t2 = by(read_csv(out / "table2_early_epoch.csv"), "variant")
    assert t2["B"]["n_seeds"] == "2" and float(t2["B"]["mIoU mean (%)"]) == pytest.approx(73.0)

    summary = (out / "summary.md").read_text()
    assert "seed 3 of variant B: no result at epoch 10 (1 of 2)" in summary
    assert "seed 2 of variant C: no result at any epoch" in summary
    assert "C: 1 seed at epoch 20: no CI" in summary and "variant C has 1 seed in total" in summary
    assert "| A | 3 | 82.00 ± 2.26 | 82.00 ± 4.97 |" in summary  # percent with two decimals
    console = capsys.readouterr().err
    assert "seed 3 of variant B" in console  # holes are shown on the console too

    # per-class: NaN IoU (truck never occurred) stays out of the statistics; Δ columns need D and are absent
    t4 = by(read_csv(out / "table4_class_volatility.csv"), "class")
    assert float(t4["road"]["A std (pp)"]) == pytest.approx(2.0) and t4["truck"]["A std (pp)"] == ""
    t5 = read_csv(out / "table5_significance.csv")
    assert len(t5) == 3 * 3  # 3 metrics × C(3, 2) pairs
    ab = by(t5, "metric", "comparison")[("mIoU", "A vs B")]
    d = np.array([0.80, 0.82, 0.84]) - np.array([0.75, 0.755, 0.76])
    assert float(ab["t"]) == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(3)))
    assert by(t5, "metric", "comparison")[("mIoU", "A vs C")]["t"] == ""  # 1 common seed: no test


def test_figure_formats(runs_tree, tmp_path):
    """--format png,pdf,svg: every figure also as PDF and SVG (summary.md links the PNGs); a later report with
    fewer formats removes the copies it no longer makes; an unknown format is one line naming the valid ones."""
    out = tmp_path / "report"
    assert aggregate.main([str(runs_tree), "--out", str(out), "--format", "png,pdf,svg"]) == 0
    stems = ["curves", "per_class_iou"]
    for stem in stems:
        assert_png(out / f"{stem}.png")
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        svg = (out / f"{stem}.svg").read_text()
        assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    summary = (out / "summary.md").read_text()
    assert all(f"({stem}.png)" in summary for stem in stems) and ".pdf)" not in summary and ".svg)" not in summary
    first = (out / "curves.pdf").read_bytes()
    assert aggregate.main([str(runs_tree), "--out", str(out), "--format", "pdf"]) == 0
    assert (out / "curves.pdf").read_bytes() == first  # no creation date: the same report, the same bytes
    assert (out / "curves.png").is_file() and not list(out.glob("*.svg"))
    proc = subprocess.run([sys.executable, "aggregate.py", str(runs_tree), "--out", str(out), "--format", "png,eps"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "eps: not a figure format; valid: png, pdf, svg" in proc.stderr


def test_early_epoch_option_and_single_epoch(runs_tree, tmp_path):
    with pytest.raises(UserError, match="--early-epoch 15: no result at that epoch; evaluated epochs: 10, 20"):
        aggregate.main([str(runs_tree), "--out", str(tmp_path / "o"), "--early-epoch", "15"])
    aggregate.main([str(runs_tree), "--out", str(tmp_path / "o"), "--final-epoch", "10"])
    assert set(by(read_csv(tmp_path / "o" / "crossover_rankings.csv"), "epoch")) == {"10"}
    # at epoch 10, A − B is 0.02 below on both common seeds: a constant difference, t = −inf, p = 0
    ab = by(read_csv(tmp_path / "o" / "table5_significance.csv"), "metric", "comparison")[("mIoU", "A vs B")]
    assert (ab["n_pairs"], ab["t"], ab["p"]) == ("2", "-inf", "0")


# ---------------------------------------------------------------------------------------------------- real numbers
_REPORTS: dict[Path, Path] = {}


def report_of(csv_path: Path, tmp_path_factory) -> Path:
    """Run aggregate.py once per CSV for the whole module (each run draws figures: ~1 s)."""
    if csv_path not in _REPORTS:
        out = tmp_path_factory.mktemp(csv_path.stem)
        assert aggregate.main(["--from-csv", str(csv_path), "--out", str(out)]) == 0
        _REPORTS[csv_path] = out
    return _REPORTS[csv_path]


@pytest.fixture
def pilot(seed_metrics, tmp_path_factory) -> Path:
    return report_of(seed_metrics / "pilot_results.csv", tmp_path_factory)


@pytest.fixture
def official(seed_metrics, tmp_path_factory) -> Path:
    return report_of(seed_metrics / "pilot_results_official.csv", tmp_path_factory)


def test_pilot_reproduces_published_miou(pilot):
    t1 = by(read_csv(pilot / "table1_final_epoch.csv"), "variant")
    published_160 = {"A": (81.28, 0.24), "B": (81.09, 0.34), "C": (81.23, 0.10), "D": (81.69, 0.12)}
    for v, (mean, ci) in published_160.items():
        assert (r2(t1[v]["mIoU mean (%)"]), r2(t1[v]["mIoU ±1.96·SE (%)"])) == (mean, ci), v
        # the Student-t interval is t(0.975, 2) / 1.96 = 2.2× wider
        ratio = float(t1[v]["mIoU ±t·SE (%)"]) / float(t1[v]["mIoU ±1.96·SE (%)"])
        assert ratio == pytest.approx(T975[2] / 1.96)
    t2 = by(read_csv(pilot / "table2_early_epoch.csv"), "variant")
    assert {v: r2(t2[v]["mIoU mean (%)"]) for v in "ABCD"} == {"A": 75.75, "B": 75.91, "C": 78.17, "D": 76.25}


def test_pilot_missing_seed_and_crossover(pilot):
    summary = (pilot / "summary.md").read_text()
    # seed 456 was evaluated every 10 epochs only: reported, and the means there use 2 seeds
    assert "seed 456 of variants A, B, C, D: no result at epochs 2, 4, 6, 8, 15, 25, 35, 45 (8 of 24)" in summary
    ranks = read_csv(pilot / "crossover_rankings.csv")
    assert len(ranks) == 3 * 24
    miou = [r for r in ranks if r["metric"] == "mIoU"]
    assert {r["epoch"]: r["min_seeds"] for r in miou}["15"] == "2"
    assert miou[-1]["ranking"] == "D > A > C > B"
    # last leader change: recomputed here from the ranking rows
    changes = [int(r["epoch"]) for prev, r in zip(miou, miou[1:]) if r["leader"] != prev["leader"]]
    cross = by(read_csv(pilot / "crossover_summary.csv"), "metric")
    assert int(cross["mIoU"]["last leader change (epoch)"]) == changes[-1]
    # the C−B gap at epoch 10 equals the table-2 means' difference (78.17 − 75.91 = +2.26 in the paper)
    assert r2(cross["mIoU"]["C−B gap at epoch 10 (pp)"]) == 2.26


V010 = "(study's v0.1.0 estimator)"


def test_pilot_boundary_columns_carry_the_v010_caveat(seed_metrics, tmp_path, monkeypatch, capsys):
    """pilot_results.csv's Boundary F1 / Trimap IoU come from the study's retracted v0.1.0 estimator
    (reference/README.md): every place a report shows them says so; mIoU, and the official file, do not."""
    import report.figures

    figures, save = [], report.figures._save
    monkeypatch.setattr(report.figures, "_save", lambda fig, path, formats=(): (figures.append(fig), save(fig, path)))
    assert aggregate.main(["--from-csv", str(seed_metrics / "pilot_results.csv"), "--out", str(tmp_path)]) == 0
    console = capsys.readouterr().err
    summary = (tmp_path / "summary.md").read_text()
    headers = [line for line in summary.splitlines() if line.startswith("| variant | n |")]  # tables 1 and 2
    assert len(headers) == 2
    for header in headers:
        assert f"Boundary F1 {V010} ± 1.96·SE" in header and f"Trimap IoU {V010} ± t·SE" in header
        assert "mIoU ± 1.96·SE" in header  # mIoU is the toolkit's definition: unmarked
    assert f"| Trimap IoU {V010} | A vs B |" in summary  # table 5 rows
    assert "**Caveat.** Boundary F1, Trimap IoU: computed by the original study's first (v0.1.0) estimator" in summary
    assert "caveat: Boundary F1, Trimap IoU: computed by the original study's first (v0.1.0)" in console
    assert "v0.1.0" in console[console.index("Table 1"):]  # the printed table's header (wrapped by rich)
    titles = [ax.get_title() for fig in figures for ax in fig.axes]
    assert f"Boundary F1 {V010}" in titles and f"Trimap IoU {V010}, epochs ≥ 80" in titles and "mIoU" in titles
    notes = [t.get_text() for fig in figures for t in fig.texts]
    assert any("v0.1.0" in n and "retracted" in n for n in notes)
    # known by its content, not its name: a copy elsewhere, with Windows line ends, is still v0.1.0's
    copy = tmp_path / "mine.csv"
    copy.write_bytes((seed_metrics / "pilot_results.csv").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert Study.from_records(load_csv(copy)).label("trimap_iou") == f"Trimap IoU {V010}"
    official = Study.from_records(load_csv(seed_metrics / "pilot_results_official.csv"))
    assert official.caveats == [] and official.label("boundary_f1") == "Boundary F1"


def test_official_per_class_deltas(official):
    t3 = by(read_csv(official / "table3_per_class_iou.csv"), "class")
    assert r2(t3["truck"]["Δ(D−B) (pp)"]) == 5.29
    assert r2(t3["wall"]["Δ(D−A) (pp)"]) == 3.88
    assert r2(t3["traffic light"]["Δ(D−B) (pp)"]) == -2.10
    rows = read_csv(official / "table3_per_class_iou.csv")
    largest = [float(r["max |Δ| (pp)"]) for r in rows]
    assert largest == sorted(largest, reverse=True) and rows[0]["class"] == "truck"
    extremes = by(read_csv(official / "table3b_d_vs_b_extremes.csv"), "rank")
    assert extremes["top-1"]["class"] == "truck" and extremes["bottom-1"]["class"] == "traffic light"
    vol = (official / "summary.md").read_text()
    assert "most volatile overall: truck in B" in vol  # B's truck IoU spans 4.4 pp over seeds


def test_per_class_chart_starts_at_zero(seed_metrics, tmp_path, monkeypatch):
    """The official file's per-class IoUs lie in 52-98 %: bars from 52 % would make a 2 pp gap look like a 2×
    one. The IoU axis starts at 0; the Δ panel below shows the gaps at their own scale."""
    import report.figures

    figures, save = [], report.figures._save
    monkeypatch.setattr(report.figures, "_save", lambda fig, path, formats=(): (figures.append(fig), save(fig, path)))
    study = Study.from_records(load_csv(seed_metrics / "pilot_results_official.csv"))
    assert min(v for r in study.records for v in r.iou.values()) > 0.5  # the data are far from 0
    report.figures.plot_per_class(study, 160, tmp_path / "per_class_iou.png")
    ax_iou, ax_delta = figures[0].axes
    assert ax_iou.get_ylim() == (0.0, 100.0)
    bottom, top = ax_delta.get_ylim()
    assert top - bottom < 20  # the zoom: Δs of a few pp fill their panel


def test_official_significance(official):
    t5 = by(read_csv(official / "table5_significance.csv"), "metric", "comparison")
    assert len(t5) == 18
    expected = {("mIoU", "C vs D"): (-11.85, 0.0070, 0.0423), ("mIoU", "A vs B"): (3.55, 0.0712, 0.3558),
                ("Boundary F1", "A vs B"): (24.58, 0.0017, 0.0099)}
    for key, (t, p, p_holm) in expected.items():
        row = t5[key]
        assert (r2(row["t"]), round(float(row["p"]), 4), round(float(row["Holm p"]), 4)) == (t, p, p_holm), key
    assert t5[("mIoU", "C vs D")]["significant (Holm p < 0.05)"] == "True"
    assert t5[("mIoU", "A vs B")]["significant (Holm p < 0.05)"] == "False"
    # the paper's argument: C and D's 1.96·SE intervals do not overlap, their t intervals do
    assert t5[("mIoU", "C vs D")]["1.96·SE CIs overlap"] == "False"
    assert t5[("mIoU", "C vs D")]["t CIs overlap"] == "True"
    for name in ("curves", "per_class_iou"):
        assert_png(official / f"{name}.png")
    assert "epoch 10 was not evaluated" in (official / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------------- W&B
def test_wandb_offline_run(runs_tree, tmp_path, monkeypatch):
    """--wandb writes its W&B files under --out (not the current folder): one offline run holding every table
    and figure, and the final means in its summary."""
    from tests.wandb_files import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    assert aggregate.main([str(runs_tree), "--out", str(out), "--wandb"]) == 0
    assert not (tmp_path / "wandb").exists()
    (run,) = offline_runs(out / "wandb")
    (row,) = run.history
    assert row["tables/table1_final_epoch"]["_type"] == "table-file" and row["figures/curves"]["_type"] == "image-file"
    assert run.summary["final/A/miou"] == pytest.approx(0.82)


def test_v010_metrics_carry_the_caveat_in_the_csv_and_wandb(seed_metrics, tmp_path, monkeypatch):
    """The study's v0.1.0 Boundary F1 / Trimap IoU (pilot_results.csv) are marked in the CSV tables' column names
    and metric cells, and in the W&B run's table columns and summary keys (report.load.Study.label / .key), so
    no file or chart shows them under the toolkit's names; mIoU stays unmarked."""
    from tests.wandb_files import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "o"
    assert aggregate.main(["--from-csv", str(seed_metrics / "pilot_results.csv"), "--out", str(out), "--bootstrap",
                           "0", "--wandb"]) == 0
    header = read_csv(out / "table1_final_epoch.csv")[0].keys()
    assert f"Boundary F1 {V010} mean (%)" in header and f"Trimap IoU {V010} ±t·SE (%)" in header
    assert "mIoU mean (%)" in header and "Boundary F1 mean (%)" not in header
    for name in ("table5_significance", "crossover_summary", "crossover_rankings"):
        assert {r["metric"] for r in read_csv(out / f"{name}.csv")} == {"mIoU", f"Boundary F1 {V010}",
                                                                         f"Trimap IoU {V010}"}, name
    (run,) = offline_runs(out / "wandb")
    t1 = by(read_csv(out / "table1_final_epoch.csv"), "variant")
    assert run.summary["final/A/boundary_f1_study_v0_1_0"] == pytest.approx(
        float(t1["A"][f"Boundary F1 {V010} mean (%)"]) / 100)
    assert "final/A/miou" in run.summary and "final/A/boundary_f1" not in run.summary
    table = json.loads((run.path.parent / "files" / run.history[0]["tables/table1_final_epoch"]["path"]).read_text())
    assert f"Boundary F1 {V010} mean (%)" in table["columns"]


# ---------------------------------------------------------------------------------------------------- λ_b sweep
LAMBDA_MIOU = {("C", 0.05): 0.70, ("C", 0.1): 0.74, ("C", 0.2): 0.72, ("C", 0.5): 0.66, ("D", 0.1): 0.71,
               ("D", 0.2): 0.73}


@pytest.fixture
def sweep_tree(tmp_path) -> Path:
    """The study's A (λ_b 0.2, not swept) + C at four λ_b and D at two, seeds 1-3 (seed 3 of D λb=0.1 missing);
    mIoU = base + 0.01·seed at epoch 20, base − 0.1 at epoch 10."""
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        for epoch, shift in ((10, -0.1), (20, 0.0)):
            write_result(runs, "A", seed, epoch, 0.69 + shift + 0.01 * seed)
            for (v, lam), base in LAMBDA_MIOU.items():
                if (v, lam, seed) != ("D", 0.1, 3):
                    write_result(runs / f"lb{lam:g}", v, seed, epoch, base + shift + 0.01 * seed,
                                 bf1=0.6 + lam / 10, lam=lam)
    return runs


def test_lambda_sweep_groups_table_and_figure(sweep_tree, tmp_path):
    out = tmp_path / "report"
    assert aggregate.main([str(sweep_tree), "--out", str(out)]) == 0
    t1 = read_csv(out / "table1_final_epoch.csv")
    assert [r["variant"] for r in t1] == ["A", "C λb=0.05", "C λb=0.1", "C λb=0.2", "C λb=0.5", "D λb=0.1",
                                          "D λb=0.2"]  # ordered by variant, then λ_b numerically
    t6 = read_csv(out / "table6_lambda_sweep.csv")
    assert [(r["variant"], float(r["lambda_boundary"])) for r in t6] == list(LAMBDA_MIOU)
    for r in t6:
        key = (r["variant"], float(r["lambda_boundary"]))
        seeds = [1, 2] if key == ("D", 0.1) else [1, 2, 3]
        x = [100 * (LAMBDA_MIOU[key] + 0.01 * s) for s in seeds]
        se = np.std(x, ddof=1) / math.sqrt(len(x))
        assert int(r["n_seeds"]) == len(seeds)
        assert float(r["mIoU mean (%)"]) == pytest.approx(np.mean(x))
        assert float(r["mIoU ±1.96·SE (%)"]) == pytest.approx(1.96 * se)
        assert float(r["mIoU ±t·SE (%)"]) == pytest.approx(T975[len(x) - 1] * se)
        assert float(r["Boundary F1 mean (%)"]) == pytest.approx(100 * (0.6 + key[1] / 10))
    assert_png(out / "lambda_sweep.png")
    summary = (out / "summary.md").read_text()
    assert "## λ_b sweep" in summary and "C: highest mean at mIoU λ_b = 0.1 (76.00)" in summary
    assert "seed 3 of variant D λb=0.1: no result at any epoch" in summary
    # the study's comparisons use the swept variants' λ_b = 0.2 groups
    t3 = read_csv(out / "table3_per_class_iou.csv")
    assert "Δ(D λb=0.2−A) (pp)" in t3[0] and "Δ(C λb=0.2−B) (pp)" not in t3[0]  # no B in this tree
    road = by(t3, "class")["road"]
    assert float(road["Δ(D λb=0.2−A) (pp)"]) == pytest.approx(100 * (0.73 - 0.69))
    assert "λ_b sweep: in the variant comparisons" in summary

    # the same folder without the sweep: the λ_b outputs of the previous report do not linger
    aggregate.main([str(sweep_tree / "lb0.1"), "--out", str(out)])
    assert not (out / "lambda_sweep.png").exists() and not (out / "table6_lambda_sweep.csv").exists()
    assert [r["variant"] for r in read_csv(out / "table1_final_epoch.csv")] == ["C", "D"]


# ---------------------------------------------------------------------------------------------------- λ_b schedules
STEAL = {"boundary_schedule": "steal", "steal_delta": 0.01, "steal_floor": 0.01, "boundary_start": 0.0,
         "boundary_ramp_epochs": 0}
LINEAR = {"boundary_schedule": "linear", "boundary_start": 0.0, "boundary_ramp_epochs": 10, "steal_delta": 0.01,
          "steal_floor": 0.01}


def test_grouping_labels_hand_made():
    steal = (("steal_delta", 0.01), ("steal_floor", 0.01))
    linear = (("boundary_start", 0.0), ("boundary_ramp_epochs", 10.0))
    linear_from_01 = (("boundary_start", 0.1), ("boundary_ramp_epochs", 10.0))
    settings = [RunSetting("A", 0.2), RunSetting("C", 0.2), RunSetting("C", 0.2, "steal", steal), RunSetting("C", 0.05),
                RunSetting("D", 0.2, "linear", linear), RunSetting("D", 0.2, "linear", linear_from_01),
                RunSetting("D", 0.1, "steal", None), RunSetting("D", 0.2, "steal", None), RunSetting("B")]
    grouping = Grouping.of(settings)
    assert [grouping.label(s) for s in settings] == [
        "A", "C λb=0.2", "C steal", "C λb=0.05",  # C's constant runs are a λ_b sweep; its steal run is apart
        "D linear start=0 ramp=10", "D linear start=0.1 ramp=10",  # the parameters differ: they join the label
        "D steal λb=0.1", "D steal λb=0.2",  # unknown parameters (None) take no part
        "B"]  # the tidy CSV: no λ_b, constant
    # only the constant groups of a λ_b sweep carry their λ_b (the λ_b-sweep table and figure)
    assert [grouping.key(s) for s in settings[:4]] == [("A", None), ("C", 0.2), ("C", None), ("C", 0.05)]
    order = sorted(settings, key=grouping.order)
    assert [grouping.label(s) for s in order][:5] == ["A", "B", "C λb=0.05", "C λb=0.2", "C steal"]
    # a base grouping (the results') is kept: a log-only setting joins the label the tables use
    assert Grouping.of([RunSetting("C", 0.2)], base=grouping).label(RunSetting("C", 0.2)) == "C λb=0.2"
    assert Grouping.of([RunSetting("D", 0.2, "steal", None)], base=grouping).label(
        RunSetting("D", 0.2, "linear", None)) == "D linear params n/a"


def test_schedule_params_follow_the_training_side():
    """losses.schedule names each schedule's parameters as TrainConfig fields (so the results side reads them
    without importing the training code); they must be fields its config has."""
    import dataclasses

    from engine.config import TrainConfig
    from losses.schedule import SCHEDULE_PARAMS

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {name for params in SCHEDULE_PARAMS.values() for name in params} <= fields


@pytest.fixture
def schedule_tree(tmp_path) -> Path:
    """B, C (constant λ_b 0.2) and C with the steal and the linear schedule, seeds 1-3, epochs 10 and 20, in the
    run directories train.py names (C_seed1, C_steal_seed1, C_linear_seed1): without the schedule in the group
    the three C runs of a seed would collide."""
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        for epoch, shift in ((10, -0.1), (20, 0.0)):
            write_result(runs, "B", seed, epoch, 0.70 + shift + 0.01 * seed)
            write_result(runs, "C", seed, epoch, 0.72 + shift + 0.01 * seed, config={"boundary_schedule": "constant"})
            write_result(runs / "steal", "C", seed, epoch, 0.74 + shift + 0.01 * seed, config=STEAL)
            write_result(runs / "linear", "C", seed, epoch, 0.76 + shift + 0.01 * seed, config=LINEAR)
    return runs


def test_schedule_runs_are_their_own_groups(schedule_tree, tmp_path):
    study = Study.from_records(load_runs_dir(schedule_tree))
    assert study.groups == ["B", "C", "C linear", "C steal"]
    assert study.group_of("C") == "C" and not study.lambda_sweep  # the study's C is the constant run
    out = tmp_path / "report"
    assert aggregate.main([str(schedule_tree), "--out", str(out)]) == 0
    t1 = by(read_csv(out / "table1_final_epoch.csv"), "variant")
    for group, base in (("B", 0.70), ("C", 0.72), ("C steal", 0.74), ("C linear", 0.76)):
        assert float(t1[group]["mIoU mean (%)"]) == pytest.approx(100 * (base + 0.02)), group
    road = by(read_csv(out / "table3_per_class_iou.csv"), "class")["road"]
    assert float(road["Δ(C−B) (pp)"]) == pytest.approx(100 * (0.72 - 0.70))  # constant C, not a schedule
    assert not (out / "table6_lambda_sweep.csv").exists()

    # two steal settings of C: their parameters join the labels; a λ_b sweep of C keeps the schedules apart
    for seed in (1, 2, 3):
        write_result(schedule_tree / "steal2", "C", seed, 20, 0.75, config={**STEAL, "steal_delta": 0.02})
        write_result(schedule_tree / "lb0.1", "C", seed, 20, 0.73, lam=0.1)
    study = Study.from_records(load_runs_dir(schedule_tree))
    assert study.groups == ["B", "C λb=0.1", "C λb=0.2", "C linear", "C steal δ=0.01 floor=0.01",
                            "C steal δ=0.02 floor=0.01"]
    assert study.lambda_sweep == {"C": [(0.1, "C λb=0.1"), (0.2, "C λb=0.2")]}
    assert study.group_of("C") == "C λb=0.2"


def test_schedule_in_results_config_is_validated(tmp_path):
    path = write_result(tmp_path, "C", 1, 10, 0.8, config={"boundary_schedule": "cosine"})
    with pytest.raises(UserError, match=r"unknown λ_b schedule 'cosine'.*newer version"):
        read_results_file(path)
    path = write_result(tmp_path, "C", 1, 10, 0.8, config={"boundary_schedule": "steal", "steal_delta": 0.01})
    with pytest.raises(UserError, match="steal λ_b schedule needs a number `steal_floor`"):
        read_results_file(path)
    path = write_result(tmp_path, "C", 1, 10, 0.8)  # a file without config: constant
    assert (read_results_file(path).boundary_schedule, read_results_file(path).schedule_params) == ("constant", ())


# ---------------------------------------------------------------------------------------------------- gradients
def write_grad_log(run_dir: Path, variant: str, seed: int, lam: float, rows: list[tuple[int, int, dict]],
                   schedule: str | None = None) -> Path:
    """grad_stats.jsonl written by the training side's own writer (the format is the contract); schedule None:
    the call train.py makes today, without the keyword."""
    import torch

    from losses.gradients import GradStatsLog

    log = GradStatsLog(run_dir / "grad_stats.jsonl", keep_through_epoch=0)
    extra = {} if schedule is None else {"boundary_schedule": schedule}
    for epoch, step, stats in rows:
        log.append({k: torch.tensor(v) for k, v in stats.items()}, epoch=epoch, step=step, variant=variant,
                   seed=seed, lambda_boundary=lam, weights={"ce": 1.0, "boundary": lam * epoch / 3}, **extra)
    return run_dir / "grad_stats.jsonl"


def grad_rows(base: float, seed: int) -> list[tuple[int, int, dict]]:
    """Two logging steps per epoch, epochs 1-3; the second step's cosine is NaN in epoch 1."""
    rows = []
    for epoch in (1, 2, 3):
        for k in (0, 1):
            dice = base * seed * (k + 1) / epoch
            rows.append((epoch, 10 * epoch + k, {
                "grad_norm/logits/ce": dice * 2, "grad_norm/logits/dice": dice,
                "grad_norm/logits/boundary": dice / 3, "grad_norm/features/dice": dice / 7,
                "grad_cos/logits/dice_boundary": math.nan if (epoch, k) == (1, 1) else -0.1 * seed}))
    return rows


def test_grad_trajectories_from_run_dirs(sweep_tree, tmp_path):
    for lam in (0.1, 0.5):
        for seed in (1, 2, 3):
            write_grad_log(sweep_tree / f"lb{lam:g}" / f"C_s{seed}", "C", seed, lam, grad_rows(lam, seed))
    log = sweep_tree / "lb0.1" / "C_s3" / "grad_stats.jsonl"
    with log.open("a") as f:
        f.write('{"epoch": 3, "step": 3')  # a kill while writing: skipped
    out = tmp_path / "report"
    assert aggregate.main([str(sweep_tree), "--out", str(out)]) == 0
    assert_png(out / "grad_trajectories.png")
    rows = by(read_csv(out / "grad_trajectories.csv"), "group", "statistic", "epoch")
    assert {g for g, _, _ in rows} == {"C λb=0.1", "C λb=0.5"}  # the same groups as the tables
    r = rows[("C λb=0.1", "grad_norm/logits/dice", "2")]
    per_seed = [np.mean([0.1 * s * 1 / 2, 0.1 * s * 2 / 2]) for s in (1, 2, 3)]  # mean over steps, then seeds
    assert (r["n_seeds"], r["n_steps"]) == ("3", "6")
    assert float(r["mean"]) == pytest.approx(np.mean(per_seed))
    assert float(r["±1.96·SE"]) == pytest.approx(1.96 * np.std(per_seed, ddof=1) / math.sqrt(3))
    cos = rows[("C λb=0.5", "grad_cos/logits/dice_boundary", "1")]  # the NaN step is left out
    assert (cos["n_steps"], float(cos["mean"])) == ("3", pytest.approx(-0.2))
    assert ("C λb=0.1", "grad_norm/features/ce", "1") not in rows  # only the statistics logged
    assert "## Gradient trajectories" in (out / "summary.md").read_text()

    # a malformed line that is not the last, and a second log for one run: one-line errors naming the file
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(UserError, match=r"C_s3/grad_stats\.jsonl:2: not a JSON line"):
        aggregate.main([str(sweep_tree), "--out", str(tmp_path / "o2")])
    log.write_text("\n".join(lines) + "\n")
    write_grad_log(sweep_tree / "copy", "C", 1, 0.1, grad_rows(0.1, 1))
    with pytest.raises(UserError, match="a second gradient log for variant C λb=0.1 seed 1"):
        aggregate.main([str(sweep_tree), "--out", str(tmp_path / "o3")])
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_grad_trajectories_grouped_by_schedule(schedule_tree, tmp_path):
    """The gradient logs of C, C steal and C linear land in the tables' groups: the row's boundary_schedule,
    or for a log written before that field existed the run's config.json beside it."""
    for seed in (1, 2, 3):
        write_grad_log(schedule_tree / f"C_s{seed}", "C", seed, 0.2, grad_rows(0.2, seed), schedule="constant")
        write_grad_log(schedule_tree / "steal" / f"C_s{seed}", "C", seed, 0.2, grad_rows(0.4, seed), schedule="steal")
        old_format = write_grad_log(schedule_tree / "linear" / f"C_s{seed}", "C", seed, 0.2, grad_rows(0.6, seed))
        rows = [json.loads(line) for line in old_format.read_text().splitlines()]
        old_format.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "boundary_schedule"}) + "\n"
                                      for r in rows))
        atomic_write_json(old_format.parent / "config.json", {"variant": "C", **LINEAR})
    out = tmp_path / "report"
    assert aggregate.main([str(schedule_tree), "--out", str(out)]) == 0
    rows = by(read_csv(out / "grad_trajectories.csv"), "group", "statistic", "epoch")
    assert {g for g, _, _ in rows} == {"C", "C steal", "C linear"}
    for group, base in (("C", 0.2), ("C steal", 0.4), ("C linear", 0.6)):
        per_seed = [np.mean([base * s * 1 / 2, base * s * 2 / 2]) for s in (1, 2, 3)]
        assert float(rows[(group, "grad_norm/logits/dice", "2")]["mean"]) == pytest.approx(np.mean(per_seed))

    # without config.json, a log without the field is "constant" and meets the constant run's log
    (schedule_tree / "linear" / "C_s1" / "config.json").unlink()
    with pytest.raises(UserError, match="a second gradient log for variant C seed 1"):
        aggregate.main([str(schedule_tree), "--out", str(tmp_path / "o2")])
