"""aggregate.py's viewer.html (report/viewer.py) opened in headless Chromium (tests/browser.py): it loads from
disk with no request and no error, and what it draws equals the numbers of the results files (computed here with
numpy and scipy, independently of report.stats): one mean line per group with both bands, the per-class bars
reordered by the Δ against the chosen reference, the report's tables as aggregate.py wrote them.

Fixtures are results files written without training (tests/test_aggregate.py's write_result): a one-variant,
one-seed demo-like study and a four-group study (3 seeds, 4 epochs, every registry metric, per-class IoU and
Boundary IoU). `VIEWER_SCREENSHOTS=docs/img pytest tests/test_viewer.py -k screenshots` also writes the small
panel screenshots shown in docs/report.md.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps

import aggregate
from metrics.registry import METRICS as RECORDS
from report.viewer import VIEWER_FILE, build_viewer
from tests.test_aggregate import write_result

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["road", "sidewalk", "building", "wall", "pole", "sky"]
PALETTE = ["#804080", "#f423e8", "#464646", "#66669c", "#999999", "#4682b4"]
GROUPS = ["A", "B", "C", "D"]
PANELS = ["curves", "per_class", "tables"]


def write_study(runs: Path, groups: list[str], seeds: list[int], epochs: list[int], seed: int = 0,
                classes: list[str] = CLASSES, palette: list[str] = PALETTE) -> dict:
    """Results files of every (group, seed, epoch): every registry metric and per-class IoU, Boundary IoU and HD95,
    random around a trend that improves with the epoch and differs per group and class (group A never sees
    "pole": NaN); returns {(group, seed, epoch): the values written}."""
    rng = np.random.default_rng(seed)
    base = {c: rng.uniform(0.3, 0.9) for c in classes}  # how hard each class is
    gain = {(g, c): rng.normal(0, 0.03) for g in groups for c in classes}  # what each group's loss does to it

    def frac(x):
        return float(np.clip(x + rng.normal(0, 0.01), 0.01, 0.99))

    written = {}
    for k, g in enumerate(groups):
        for s in seeds:
            for e in epochs:
                t = e / max(epochs)  # training progress
                iou = {c: frac(base[c] * (0.6 + 0.4 * t) + gain[(g, c)]) for c in classes}
                biou = {c: frac(0.6 * iou[c]) for c in classes}
                hd95 = {c: 4 + 80 * (1 - iou[c]) for c in classes}  # pixels: lower is better
                if g == "A" and "pole" in classes:
                    iou["pole"] = biou["pole"] = hd95["pole"] = float("nan")
                values = {"miou": frac(0.40 + 0.3 * t + 0.015 * k), "boundary_f1": frac(0.35 + 0.25 * t + 0.02 * k),
                          "trimap_iou": frac(0.30 + 0.25 * t + 0.01 * k), "boundary_iou": frac(0.2 + 0.2 * t),
                          "fragments_per_image": float(300 - 150 * t + rng.normal(0, 10)),
                          "hd95": float(60 - 40 * t + rng.normal(0, 2))}
                write_result(runs, g, s, e, values["miou"], values["boundary_f1"], values["trimap_iou"], iou=iou,
                             config={"class_names": classes, "class_palette": palette},
                             extra={"classes": classes, "boundary_iou": values["boundary_iou"],
                                    "fragments_per_image": values["fragments_per_image"], "hd95": values["hd95"],
                                    "boundary_iou_per_class": biou, "hd95_per_class": hd95})
                written[(g, s, e)] = {**values, "iou": iou, "boundary_iou_per_class": biou, "hd95_per_class": hd95}
    return written


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    """name -> {"out", "runs", "values", "groups", "seeds", "epochs"}: the demo-like and the four-group study,
    each through aggregate.py."""
    made = {}
    for name, groups, seeds, epochs in (("demo", ["C"], [0], [4, 8]), ("four", GROUPS, [1, 2, 3], [2, 4, 6, 8, 10])):
        base = tmp_path_factory.mktemp(name)
        values = write_study(base / "runs", groups, seeds, epochs)
        with contextlib.chdir(base):  # a relative RUNS_DIR, as users type it: the page's "Source: runs"
            assert aggregate.main(["runs", "--out", "report", "--bootstrap", "0"]) == 0
        made[name] = {"out": base / "report", "runs": base / "runs", "values": values, "groups": groups,
                      "seeds": seeds, "epochs": epochs}
    return made


def payload(html_path: Path) -> dict:
    html = html_path.read_text(encoding="utf-8")
    text = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S)[1]
    return json.loads(text)


def traces(page, plot_id: str, role: str) -> list[dict]:
    """The plotly traces of the chart `plot_id` whose meta.role is `role` (what the panel scripts tag)."""
    return page.evaluate(f"document.getElementById('{plot_id}').data"
                         f".filter(t => t.meta && t.meta.role === '{role}')"
                         ".map(t => ({group: t.meta.group, x: t.x, y: t.y, visible: t.visible}))")


def non_blank(path: Path) -> float:
    """The pixel standard deviation of a screenshot (0 for a blank one)."""
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float64).std())


# ---------------------------------------------------------------------------------------------------- the file
@pytest.mark.parametrize("name", ["demo", "four"])
def test_viewer_draws_every_panel_offline_without_errors(viewer_browser, reports, name, tmp_path):
    """Every tab drawn, a non-blank screenshot of each (saved under tmp_path), no request, no error."""
    page = viewer_browser.open_viewer(reports[name]["out"] / VIEWER_FILE)
    tabs = page.eval_on_selector_all("nav button", "bs => bs.map(b => b.dataset.panel)")
    assert tabs[:3] == PANELS and "images" in tabs
    for panel in PANELS:
        section = viewer_browser.show_panel(panel)
        shot = tmp_path / f"{name}_{panel}.png"
        section.screenshot(path=str(shot))
        assert non_blank(shot) > 10, f"{panel}: blank screenshot {shot}"
        leaked = re.findall(r"\b(?:null|undefined)\b", section.inner_text())  # a JS value printed as text
        assert not leaked, f"{panel}: {leaked} shown on the page"
    viewer_browser.check_clean()


def test_viewer_is_one_self_contained_file(reports):
    """No external script, style, image or link; plotly inlined once; the payload small beside plotly.js."""
    html = (reports["four"]["out"] / VIEWER_FILE).read_text(encoding="utf-8")
    assert re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", html, re.I) is None
    import plotly.offline

    plotly_js = plotly.offline.get_plotlyjs()
    assert html.count(plotly_js[:200]) == 1
    assert len(html.encode()) - len(plotly_js.encode()) < 300_000


def test_markup_in_the_data_reads_back_unchanged(viewer_browser, reports, tmp_path):
    """Names holding "</script>" or "<!--" neither end the payload's script element nor reach the page as HTML."""
    data = payload(reports["demo"]["out"] / VIEWER_FILE)
    tricky = "C </script><!--<script>alert(1)</script> & <b>x</b>"
    data["title"] = data["source"] = tricky
    page = viewer_browser.open_viewer(build_viewer(data, tmp_path / VIEWER_FILE))
    assert page.evaluate("VIEWER.data.title") == tricky and page.title() == tricky
    assert page.inner_text("header h1") == tricky
    viewer_browser.check_clean()


def test_harness_records_every_attempted_request(viewer_browser, reports):
    """The blocking is real: a fetch and an image URL injected into the page are recorded (and aborted)."""
    page = viewer_browser.open_viewer(reports["demo"]["out"] / VIEWER_FILE)
    page.evaluate("fetch('https://cdn.example.invalid/plotly.js').catch(() => 0);"
                  "document.body.append(Object.assign(new Image(), {src: 'http://example.invalid/a.png'}))")
    page.wait_for_timeout(200)
    assert set(viewer_browser.requests) == {"https://cdn.example.invalid/plotly.js", "http://example.invalid/a.png"}
    with pytest.raises(AssertionError, match="tried the network"):
        viewer_browser.check_clean()


def test_no_html_writes_none(reports, tmp_path):
    out = tmp_path / "report"
    shutil.copytree(reports["demo"]["out"], out)  # an earlier report, with its viewer
    assert (out / VIEWER_FILE).is_file()
    assert aggregate.main([str(reports["demo"]["runs"]), "--out", str(out), "--no-html"]) == 0
    assert (out / "summary.md").is_file() and not (out / VIEWER_FILE).exists()


# ---------------------------------------------------------------------------------------------------- curves
def test_curves_one_mean_line_per_group_with_both_bands(viewer_browser, reports):
    """mIoU's mean line per group equals the mean over seeds (percent); the 1.96·SE band and, switched, the
    Student-t band equal mean ± factor·std(ddof=1)/√n; the seed lines appear when asked; every registry metric
    with values is offered."""
    r = reports["four"]
    page = viewer_browser.open_viewer(r["out"] / VIEWER_FILE)
    assert page.input_value("#curves-band") == "normal"  # aggregate.py --band's default
    offered = page.eval_on_selector_all("#curves-metric option", "os => os.map(o => o.value)")
    assert offered == [m.key for m in RECORDS]  # the fixture holds every metric
    for band, factor in (("normal", 1.96), ("t", sps.t.ppf(0.975, len(r["seeds"]) - 1))):
        page.select_option("#curves-band", band)
        means, uppers = traces(page, "curves-plot", "mean"), traces(page, "curves-plot", "band")
        assert [t["group"] for t in means] == r["groups"] and [t["group"] for t in uppers] == r["groups"]
        for mean, upper in zip(means, uppers):
            assert mean["x"] == r["epochs"]
            x = np.array([[r["values"][(mean["group"], s, e)]["miou"] for s in r["seeds"]] for e in r["epochs"]])
            np.testing.assert_allclose(mean["y"], 100 * x.mean(1), atol=1e-4)
            half = factor * x.std(1, ddof=1) / math.sqrt(x.shape[1])
            np.testing.assert_allclose(upper["y"], 100 * (x.mean(1) + half), atol=2e-4)
    assert all(t["visible"] is False for t in traces(page, "curves-plot", "seed"))
    page.check("#curves-seeds")
    seeds = traces(page, "curves-plot", "seed")
    assert len(seeds) == len(r["groups"]) * len(r["seeds"]) and all(t["visible"] is True for t in seeds)
    page.select_option("#curves-metric", "fragments_per_image")  # a count: shown as it is, not in percent
    mean_a = traces(page, "curves-plot", "mean")[0]
    want = [np.mean([r["values"][("A", s, e)]["fragments_per_image"] for s in r["seeds"]]) for e in r["epochs"]]
    np.testing.assert_allclose(mean_a["y"], want, atol=1e-4)
    marks = page.evaluate("document.getElementById('curves-plot').layout.shapes.map(s => s.x0)")
    assert marks == [10]  # the final epoch (epoch 10 is also the early one: one mark)
    viewer_browser.check_clean()


def test_curves_mark_the_early_and_the_final_epoch(reports, tmp_path):
    """aggregate.py --early-epoch 4: the curves' dotted lines at the crossover's early and final epochs."""
    out = tmp_path / "report"
    assert aggregate.main([str(reports["four"]["runs"]), "--out", str(out), "--early-epoch", "4", "--bootstrap",
                           "0"]) == 0
    marks = payload(out / VIEWER_FILE)["curves"]["marks"]
    assert marks == [{"epoch": 4, "label": "early epoch 4"}, {"epoch": 10, "label": "final epoch 10"}]


def test_curves_of_one_variant_one_seed(viewer_browser, reports):
    r = reports["demo"]
    page = viewer_browser.open_viewer(r["out"] / VIEWER_FILE)
    means = traces(page, "curves-plot", "mean")
    assert [t["group"] for t in means] == ["C"]
    np.testing.assert_allclose(means[0]["y"], [100 * r["values"][("C", 0, e)]["miou"] for e in r["epochs"]],
                               atol=1e-4)
    assert all(v is None for t in traces(page, "curves-plot", "band") for v in t["y"])  # one seed: no interval
    viewer_browser.check_clean()


# ---------------------------------------------------------------------------------------------------- per class
def expected_order(values: dict, groups_seeds: list[int], epoch: int, key: str, compare: str, reference: str,
                   ascending: bool = False) -> list:
    """Classes by Δ(compare − reference) of the mean over seeds, largest first (smallest if `ascending`), classes
    without a Δ last."""
    def mean(g, c):
        x = [values[(g, s, epoch)][key][c] for s in groups_seeds]
        x = [v for v in x if not math.isnan(v)]
        return sum(x) / len(x) if x else math.nan

    delta = {c: mean(compare, c) - mean(reference, c) for c in CLASSES}
    sign = 1 if ascending else -1
    return sorted(CLASSES, key=lambda c: (math.isnan(delta[c]), sign * delta[c] if not math.isnan(delta[c]) else 0,
                                          CLASSES.index(c)))


def test_switching_the_reference_reorders_the_per_class_bars(viewer_browser, reports):
    r = reports["four"]
    page = viewer_browser.open_viewer(r["out"] / VIEWER_FILE)
    viewer_browser.show_panel("per_class")
    final = r["epochs"][-1]
    # default: Δ against A sorted by D's Δ (report.figures.plot_per_class's choice)
    assert page.input_value("#per-class-reference") == "A" and page.input_value("#per-class-compare") == "D"
    steps = [("B", "D"), ("D", "C"), ("A", "C")]  # choosing D as the reference moves the sorting to C
    for reference, compare in steps:
        page.select_option("#per-class-reference", reference)
        assert page.input_value("#per-class-compare") == compare
        want = expected_order(r["values"], r["seeds"], final, "iou", compare, reference)
        bars = traces(page, "per-class-values", "value")
        assert [t["group"] for t in bars] == r["groups"] and all(t["x"] == want for t in bars)
        deltas = {t["group"]: t for t in traces(page, "per-class-deltas", "delta")}
        assert sorted(deltas) == sorted(set(r["groups"]) - {reference})
        d = np.array(deltas[compare]["y"], dtype=float)  # null (no Δ) -> NaN
        finite = d[np.isfinite(d)]
        assert list(finite) == sorted(finite, reverse=True)
    # Boundary IoU per class at another epoch, sorted by Δ(B − A)
    page.select_option("#per-class-metric", "boundary_iou")
    page.select_option("#per-class-epoch", "4")
    page.select_option("#per-class-compare", "B")
    page.select_option("#per-class-reference", "A")
    want = expected_order(r["values"], r["seeds"], 4, "boundary_iou_per_class", "B", "A")
    assert traces(page, "per-class-values", "value")[0]["x"] == want
    assert want[-1] == "pole"  # A has no pole: no Δ, sorted last
    assert page.evaluate("document.getElementById('per-class-values').layout.yaxis.range") == [0, 100]
    viewer_browser.check_clean()


def test_per_class_delta_of_a_lower_is_better_metric_sorts_gains_first(viewer_browser, reports):
    """HD95 (pixels, lower is better: metrics.registry's higher_is_better): the classes sort by Δ smallest first,
    so the compared group's gains still come first, and the note and the Δ axis say that lower is better; IoU
    keeps largest first."""
    r = reports["four"]
    page = viewer_browser.open_viewer(r["out"] / VIEWER_FILE)
    viewer_browser.show_panel("per_class")
    final = r["epochs"][-1]
    page.select_option("#per-class-metric", "hd95")
    want = expected_order(r["values"], r["seeds"], final, "hd95_per_class", "D", "A", ascending=True)
    assert traces(page, "per-class-values", "value")[0]["x"] == want
    d = np.array({t["group"]: t for t in traces(page, "per-class-deltas", "delta")}["D"]["y"], dtype=float)
    finite = d[np.isfinite(d)]
    assert list(finite) == sorted(finite) and finite[0] < finite[-1]
    note = page.inner_text("#per-class-note")
    assert "lower is better" in note and "a negative Δ is a gain over A" in note and "smallest first" in note
    assert "lower is better" in page.evaluate("document.getElementById('per-class-deltas').layout.yaxis.title.text")
    page.select_option("#per-class-metric", "miou")
    assert traces(page, "per-class-values", "value")[0]["x"] == expected_order(r["values"], r["seeds"], final, "iou",
                                                                               "D", "A")
    assert "higher is better" in page.inner_text("#per-class-note")
    viewer_browser.check_clean()


def test_one_variant_per_class_has_no_delta_and_says_why(viewer_browser, reports):
    r = reports["demo"]
    page = viewer_browser.open_viewer(r["out"] / VIEWER_FILE)
    viewer_browser.show_panel("per_class")
    assert page.query_selector("#per-class-reference") is None and page.query_selector("#per-class-deltas") is None
    assert "no Δ against a reference" in page.inner_text("#per-class-note")
    iou = r["values"][("C", 0, r["epochs"][-1])]["iou"]
    assert traces(page, "per-class-values", "value")[0]["x"] == sorted(CLASSES, key=lambda c: -iou[c])
    viewer_browser.show_panel("tables")  # a comparison of one group: a line saying what it needs, as in summary.md
    significance = page.inner_text(".table-block[data-table='table5_significance']")
    assert "(no rows)" not in significance and "needs ≥ 2 groups" in significance  # a line, no empty table
    viewer_browser.check_clean()


# ---------------------------------------------------------------------------------------------------- tables
def markdown_table(summary: str, title: str) -> list[list[str]]:
    """The cells of the Markdown table under "### {title}" in summary.md (header first)."""
    block = summary.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if not line.startswith("|-")]


def test_tables_panel_shows_the_report_tables(viewer_browser, reports):
    """The rendered tables hold the cells summary.md holds (aggregate.py's Table objects, not recomputed)."""
    r = reports["four"]
    summary = (r["out"] / "summary.md").read_text(encoding="utf-8")
    page = viewer_browser.open_viewer(r["out"] / VIEWER_FILE)
    viewer_browser.show_panel("tables")
    names = page.eval_on_selector_all(".table-block", "bs => bs.map(b => b.dataset.table)")
    assert names[:3] == ["table1_final_epoch", "table5_significance", "table5b_image_bootstrap"]
    for name in ("table1_final_epoch", "table5_significance"):
        title = page.inner_text(f".table-block[data-table='{name}'] h3")
        cells = page.eval_on_selector_all(f".table-block[data-table='{name}'] tr",
                                          "rs => rs.map(r => [...r.children].map(c => c.textContent))")
        want = [[c.replace("**", "") for c in row] for row in markdown_table(summary, title)]
        assert cells == want
    boot = page.inner_text(".table-block[data-table='table5b_image_bootstrap']")
    assert "(no rows)" not in boot and "--bootstrap 0" in boot  # the skipped table is the line saying why
    viewer_browser.check_clean()


# ---------------------------------------------------------------------------------------------------- --from-csv
def test_from_csv_gives_curves_and_tables_and_says_why_no_images(viewer_browser, seed_metrics, tmp_path, capsys):
    out = tmp_path / "paper"
    assert aggregate.main(["--from-csv", str(seed_metrics / "pilot_results.csv"), "--out", str(out)]) == 0
    console = capsys.readouterr().err  # the console names the page and the panel left out, with its reason
    assert f"viewer: {out / VIEWER_FILE}" in console and "no images panel:" in console
    data = payload(out / VIEWER_FILE)
    assert data["images"] is None and "--from-csv" in data["absent"]["images"]
    assert data["absent"]["per_class"].startswith("the tidy CSV has no per-class columns")
    assert [m["key"] for m in data["curves"]["metrics"]] == ["miou", "boundary_f1", "trimap_iou"]  # the CSV's
    page = viewer_browser.open_viewer(out / VIEWER_FILE)
    assert len(traces(page, "curves-plot", "mean")) == len(data["groups"])
    viewer_browser.show_panel("images")
    assert "--from-csv" in page.inner_text("#panel-images")
    viewer_browser.show_panel("tables")
    viewer_browser.check_clean()


def test_per_class_from_a_csv_and_lambda_sweep_groups(viewer_browser, seed_metrics, tmp_path):
    """The study's 160-epoch CSV (per-class IoU columns, Cityscapes' palette for its names), and a λ_b sweep whose
    groups ("C λb=0.05") are the curves' lines and the per-class reference (with --band t shown first)."""
    out = tmp_path / "paper-160"
    assert aggregate.main(["--from-csv", str(seed_metrics / "pilot_results_official.csv"), "--out", str(out)]) == 0
    data = payload(out / VIEWER_FILE)
    assert [m["key"] for m in data["per_class"]["metrics"]] == ["miou"]
    assert data["classes"]["palette"][0] == [128, 64, 128]  # road
    viewer_browser.open_viewer(out / VIEWER_FILE)
    viewer_browser.show_panel("per_class")
    viewer_browser.check_clean()

    runs = tmp_path / "sweep"
    for seed in (1, 2):
        for epoch in (5, 10):
            write_result(runs, "A", seed, epoch, 0.6 + 0.01 * seed)
            for lam in (0.05, 0.2):
                write_result(runs / f"lb{lam:g}", "C", seed, epoch, 0.62 + lam / 10 + 0.01 * seed, lam=lam)
    assert aggregate.main([str(runs), "--out", str(tmp_path / "sweep_report"), "--bootstrap", "0", "--band", "t"]) == 0
    page = viewer_browser.open_viewer(tmp_path / "sweep_report" / VIEWER_FILE)
    assert page.input_value("#curves-band") == "t"  # --band t: the Student-t band first
    groups = ["A", "C λb=0.05", "C λb=0.2"]
    assert [t["group"] for t in traces(page, "curves-plot", "mean")] == groups
    viewer_browser.show_panel("per_class")
    page.select_option("#per-class-reference", "C λb=0.05")
    assert sorted(t["group"] for t in traces(page, "per-class-deltas", "delta")) == ["A", "C λb=0.2"]
    viewer_browser.check_clean()


def test_palette_and_classes_come_from_the_results(reports):
    data = payload(reports["four"]["out"] / VIEWER_FILE)
    assert data["classes"]["names"] == CLASSES
    assert data["classes"]["palette"] == [[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in PALETTE]
    assert data["groups"] == GROUPS and data["colors"]["A"] == "#1f77b4"  # report.figures' colours


# ---------------------------------------------------------------------------------------------------- screenshots
def test_screenshots_of_each_panel(viewer_browser, reports, tmp_path):
    """Each panel of the four-group viewer as a small PNG: under tmp_path, and under $VIEWER_SCREENSHOTS when set
    (docs/img, the screenshots docs/report.md shows)."""
    target = Path(os.environ.get("VIEWER_SCREENSHOTS") or tmp_path)
    page = viewer_browser.open_viewer(reports["four"]["out"] / VIEWER_FILE)
    for panel in PANELS:
        viewer_browser.show_panel(panel)
        if panel == "curves":
            page.check("#curves-seeds")
        full = tmp_path / f"full_{panel}.png"
        page.screenshot(path=str(full))
        image = Image.open(full).convert("RGB")
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
        image = image.quantize(256, Image.Quantize.FASTOCTREE)  # a palette PNG: ~40 KB instead of ~150 KB
        path = target / f"viewer_{panel}.png"
        image.save(path, optimize=True)
        assert non_blank(path) > 10 and path.stat().st_size < 80_000
    viewer_browser.check_clean()


# ---------------------------------------------------------------------------------------------------- W&B
def test_wandb_run_holds_the_viewer_page(reports, tmp_path, monkeypatch):
    """aggregate.py --wandb logs viewer.html as a wandb.Html (key "viewer"): the offline run under --out logs it,
    and its media holds the page unchanged (no W&B stylesheet injected: that would be a link to the network)."""
    import wandb

    from tests.wandb_files import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "report"
    wandb.teardown()  # wandb keeps process-wide settings from an earlier run: start from this test's
    try:
        assert aggregate.main([str(reports["demo"]["runs"]), "--out", str(out), "--wandb"]) == 0
    finally:
        wandb.teardown()  # and leave none of this test's settings to the next test
    (run,) = offline_runs(out / "wandb")
    (row,) = run.history
    assert row["viewer"]["_type"] == "html-file"
    (page,) = (out / "wandb").rglob(row["viewer"]["path"])
    assert page.read_text(encoding="utf-8") == (out / VIEWER_FILE).read_text(encoding="utf-8")
    # a one-group report: every logged table has rows; a comparison of one group is not logged, its line is
    logged = {k: json.loads((run.path.parent / "files" / v["path"]).read_text()) for k, v in row.items()
              if k.startswith("tables/")}
    assert "tables/table1_final_epoch" in logged and all(t["data"] for t in logged.values())
    assert "tables/table5_significance" not in logged
    assert "needs ≥ 2 groups" in run.summary["table_notes/table5_significance"]


# ---------------------------------------------------------------------------------------------------- size, speed
@pytest.mark.slow
def test_study_shape_size_and_render_time(viewer_browser, tmp_path):
    """The study's shape (4 groups x 3 seeds x 160 epochs, Cityscapes' 19 classes, every metric): the page beside
    plotly.js stays small; the time to draw each panel is printed (`pytest -s`), not asserted."""
    import time

    import plotly.offline

    from data_utils.labels import CITYSCAPES

    names = list(CITYSCAPES.names)
    palette = ["#%02x%02x%02x" % tuple(rgb) for rgb in CITYSCAPES.palette]
    write_study(tmp_path / "runs", GROUPS, [1, 2, 3], list(range(1, 161)), classes=names, palette=palette)
    start = time.perf_counter()
    assert aggregate.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--bootstrap", "0"]) == 0
    aggregate_s = time.perf_counter() - start
    html = tmp_path / "report" / VIEWER_FILE
    size, plotly_size = html.stat().st_size, len(plotly.offline.get_plotlyjs().encode())
    assert size - plotly_size < 3_000_000
    reference = tmp_path / "plotly_only.html"  # the floor: parsing plotly.js alone, timed in the same run
    reference.write_text(f"<!DOCTYPE html><html><body><script>{plotly.offline.get_plotlyjs()}</script></body></html>")
    times = {}
    for _ in range(2):  # the second open: Chromium's code cache warm, as when a user reopens the file
        start = time.perf_counter()
        viewer_browser.open(reference)
        times["plotly.js alone"] = time.perf_counter() - start
        start = time.perf_counter()
        viewer_browser.open_viewer(html)  # until the first tab (curves) is drawn
        times["open + curves"] = time.perf_counter() - start
        print(", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    for panel in PANELS[1:]:
        start = time.perf_counter()
        viewer_browser.show_panel(panel)
        times[panel] = time.perf_counter() - start
    viewer_browser.check_clean()
    print(f"\nstudy shape: aggregate.py {aggregate_s:.1f} s; viewer.html {size / 1e6:.2f} MB "
          f"({(size - plotly_size) / 1e6:.2f} MB besides plotly.js); Chromium: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
