"""aggregate.py --wandb-report: the W&B Report built offline (panels, metric keys, grouping, runset filters), its
JSON definition, and the three endings: no entity and no login, no login, saved. Nothing here touches the network:
no API key, HOME in tmp, and the aggregate run's upload (report.wandb_log.push_report) is captured."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import aggregate
import report.wandb_log
import report.wandb_report
from metrics.keys import FRACTION_KEYS, METRIC_KEYS
from tests.test_cli import HEAVY
from utils import EXIT_BAD_INPUT, UserError, atomic_write_json

CLASSES = ["road", "wall", "truck"]  # the dataset's class names, as the results files record them


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """No W&B credentials anywhere: no API key, no netrc (HOME is tmp), no WANDB_MODE."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    pushed = {}
    monkeypatch.setattr(report.wandb_log, "push_report",
                        lambda tables, figures, headline, **k: pushed.update(k, tables=tables) or "captured")
    return pushed


@pytest.fixture
def runs(tmp_path) -> Path:
    """Variant A at the study's λ_b (W&B group "A") and C at λ_b = 0.05 (group "C_lb0.05"), two seeds, 2 epochs."""
    runs = tmp_path / "runs"
    for variant, lam, group in (("A", 0.2, "A"), ("C", 0.05, "C_lb0.05")):
        for seed in (1, 2):
            for epoch in (1, 2):
                path = runs / f"{group}_seed{seed}" / "checkpoints" / f"epoch_{epoch:04d}.results.json"
                miou = 0.5 + 0.1 * epoch + 0.01 * seed
                atomic_write_json(path, {
                    "variant": variant, "seed": seed, "epoch": epoch, "checkpoint": str(path)[:-len(".results.json")],
                    "split": "val", "num_images": 4, "miou": miou, "boundary_f1": 0.4, "trimap_iou": 0.3,
                    "iou": dict(zip(CLASSES, (0.9, 0.5, None))), "classes": CLASSES, "seconds": 1.0,
                    "lambda_dice": 1.0, "lambda_boundary": lam,
                    "config": {"variant": variant, "seed": seed, "lambda_boundary": lam}})
    return runs


def build(runs: Path, out: Path, monkeypatch, *flags: str):
    """Run aggregate.main with --wandb-report: (the Report it built or None, its exit code, its UserError or None)."""
    built = []
    real = report.wandb_report.build_report
    monkeypatch.setattr(report.wandb_report, "build_report", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    argv = [str(runs), "--out", str(out), "--bootstrap", "0", "--wandb-report", "--wandb-project", "proj", *flags]
    try:
        code, error = aggregate.main(argv), None
    except UserError as e:
        code, error = None, e
    return (built[0] if built else None), code, error


def test_report_offline_panels_keys_grouping_filters(runs, tmp_path, monkeypatch, no_login):
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    from engine.tracking import val_metrics_row

    out = tmp_path / "report"
    rep, code, error = build(runs, out, monkeypatch, "--wandb-entity", "ent")
    path = out / report.wandb_report.REPORT_FILE
    assert code is None and str(error).startswith(f"{path}: ") and "no W&B login" in str(error)
    assert "`wandb login`" in str(error) and "\n" not in str(error)
    assert (rep.entity, rep.project) == ("ent", "proj")
    assert no_login["entity"] == "ent" and no_login["run_id"]  # the aggregate run goes where the report looks

    # the JSON definition: valid, written whole, the report's public fields
    assert json.loads(path.read_text()) == json.loads(json.dumps(report.wandb_report.report_definition(rep)))
    assert not list(out.glob(".*.tmp"))
    definition = json.loads(path.read_text())
    assert definition["type"] == "Report" and definition["entity"] == "ent"
    assert [b["type"] for b in definition["blocks"]].count("PanelGrid") == 2

    train, aggregate_grid = [b for b in rep.blocks if isinstance(b, wr.PanelGrid)]
    # training runs: the project's train runs of the aggregate's W&B groups, grouped by run group
    (runset,) = train.runsets
    assert (runset.entity, runset.project, runset.groupby) == ("ent", "proj", ["group"])
    assert expr.groupby_str_to_key(runset.groupby[0]) == expr.Key(section="run", name="group")
    filters = {(f.key.name, f.op): f.value for f in expr.expr_to_filters(runset.filters).filters}
    assert filters == {("jobType", "="): "train", ("group", "IN"): ["A", "C_lb0.05"]}

    # one line plot per fraction metric, against epoch, mean ± stderr per group; the keys train.py logs
    logged = val_metrics_row({**{k: 0.5 for k in METRIC_KEYS}, "classes": CLASSES, "iou": [0.9, 0.5, 0.1]})
    lines = [p for p in train.panels if isinstance(p, wr.LinePlot)]
    assert [p.y for p in lines] == [[f"val/{k}"] for k in FRACTION_KEYS]
    assert all(p.y[0] in logged for p in lines)
    for p in lines:
        config = p._to_model().config  # what W&B receives
        assert (config.x_axis, config.group_by, config.group_agg, config.group_area, config.aggregate) == \
            ("epoch", "group", "mean", "stderr", True)
    # the per-class bar plot: one bar per class of the results, mean ± stderr per group
    (bars,) = [p for p in train.panels if isinstance(p, wr.BarPlot)]
    assert bars.metrics == [f"val/iou/{c}" for c in CLASSES] == [k for k in logged if k.startswith("val/iou/")]
    config = bars._to_model().config
    assert (config.group_by, config.group_agg, config.group_area) == ("group", "mean", "stderr")

    # the aggregate run (the id it was logged with), its tables and figures: what aggregate wrote and logged
    (runset,) = aggregate_grid.runsets
    filters = {(f.key.name, f.op): f.value for f in expr.expr_to_filters(runset.filters).filters}
    assert filters == {("jobType", "="): "aggregate", ("name", "="): no_login["run_id"]}
    tables = {p.table_name for p in aggregate_grid.panels if isinstance(p, wr.WeavePanelSummaryTable)}
    with_rows = {f"tables/{p.stem}" for p in out.glob("*.csv") if len(p.read_text().splitlines()) > 1}
    assert tables == {f"tables/{t.name}" for t in no_login["tables"]} == with_rows  # no panel of an empty table
    assert set(no_login["notes"]) == {p.stem for p in out.glob("*.csv")} - {t.name for t in no_login["tables"]}
    media = {k for p in aggregate_grid.panels if isinstance(p, wr.MediaBrowser) for k in p.media_keys}
    assert media == {f"figures/{p.stem}" for p in out.glob("*.png")} and media

    # the headline: table 1 of the aggregate, as in summary.md
    (headline,) = [b for b in rep.blocks if isinstance(b, wr.MarkdownBlock)]
    assert headline.text.startswith("### Table 1") and headline.text in (out / "summary.md").read_text()


def test_csv_input_groups_are_the_variants(tmp_path, monkeypatch, no_login):
    csv_path = tmp_path / "tidy.csv"
    csv_path.write_text("variant,seed,epoch,mIoU,boundary_f1_mean,trimap_mIoU_mean\n"
                        "B,1,1,0.5,0.4,0.3\nB,2,1,0.52,0.41,0.31\nD,1,1,0.55,0.45,0.35\nD,2,1,0.56,0.46,0.36\n")
    monkeypatch.setenv("WANDB_MODE", "offline")  # logged in or not, an offline run saves no report
    built = []
    real = report.wandb_report.build_report
    monkeypatch.setattr(report.wandb_report, "build_report", lambda *a, **k: built.append(k) or real(*a, **k))
    with pytest.raises(UserError, match="WANDB_MODE=offline"):
        aggregate.main(["--from-csv", str(csv_path), "--out", str(tmp_path / "o"), "--bootstrap", "0",
                        "--wandb-report", "--wandb-entity", "ent"])
    assert built[0]["groups"] == ["B", "D"] and built[0]["classes"] == []  # no per-class columns: no bar plot
    assert (tmp_path / "o" / report.wandb_report.REPORT_FILE).is_file()


def test_no_entity_and_no_login_is_one_line_before_any_work(tmp_path, no_login, python_imports):
    result, modules = python_imports("aggregate.py", "--from-csv", str(tmp_path / "x.csv"), "--out",
                                     str(tmp_path / "o"), "--wandb-report")
    errors = result.stderr.splitlines()
    assert result.returncode == EXIT_BAD_INPUT and len(errors) == 1
    assert errors[0].startswith("error: --wandb-report: no W&B entity") and "`wandb login`" in errors[0]
    assert not modules & {*HEAVY, "wandb", "wandb_workspaces", "matplotlib"}
    assert not (tmp_path / "o").exists()


def test_saved_when_logged_in(tmp_path, monkeypatch, no_login):
    import wandb_workspaces.reports.v2 as wr

    from report.tables import Table

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a login; the save itself is captured: no network
    saved = []
    monkeypatch.setattr(wr.Report, "save", lambda self, **k: saved.append(self) or self)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.ai/{self.entity}/{self.project}/r"))
    path = tmp_path / "o" / report.wandb_report.REPORT_FILE
    rep = report.wandb_report.build_report(
        "ent", "proj", groups=["A"], classes=CLASSES, headline=Table("t1", "Table 1", [], [], [], []),
        tables=["t1"], figures=["curves"], aggregate_run_id="abc", title="t", description="d")
    assert report.wandb_report.publish_report(rep, path) == "https://wandb.ai/ent/proj/r" and saved == [rep]
    assert json.loads(path.read_text()) == report.wandb_report.report_definition(rep)
