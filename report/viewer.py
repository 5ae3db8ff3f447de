"""The study viewer: one self-contained HTML file (`viewer.html`) that opens from disk with no network at all.

Everything is inline: plotly.js (from the plotly Python package, `plotly.offline.get_plotlyjs()`), the styles and
scripts of `report/viewer_assets/`, and the data as one JSON payload. The page has one tab per panel; each
panel is a script `viewer_assets/NN_<panel>.js` that calls `VIEWER.register({id, title, render(el, data)})`,
and every `*.js` there is inlined in name order after plotly and `core.js`:

    10_curves.js     every metric of metrics.registry per epoch: the mean per group with its band (1.96·SE or
                     Student-t, switchable), each seed as a thin line, the crossover's early and final epochs
    20_per_class.js  per-class values (IoU, Boundary IoU, ...) at a chosen epoch, Δ against a chosen group
    30_tables.js     the report's tables as aggregate.py built them (report.tables.Table: md_header/md_rows)
    40_images.js     the sampled predictions (report.viewer_images)

The payload (`viewer_data`) holds numbers computed here by report.stats, never by the page: the page only draws.

    {"title", "source",
     "classes": {"names": [...], "palette": [[r, g, b], ...]},
     "groups": [group, ...], "colors": {group: "#rrggbb"}, "group_labels": {group: "C: ce+dice+0.2·boundary"},
     "curves": {...}, "per_class": {...} | null, "tables": [...], "images": {...} | null,
     "absent": {panel id: "why the panel has nothing to show"}}

Values are shown in a metric's display unit (report.load.metric_unit: fractions in percent, counts as they are).
"""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

from data_utils.classes import default_palette
from data_utils.labels import CITYSCAPES
from engine.results_format import read_results
from metrics.registry import METRICS as RECORDS
from report.figures import BAND_TEXT, VARIANT_NAMES, group_colors, per_class_pair
from report.load import Study, metric_unit
from report.stats import summarize
from report.tables import BOOTSTRAP_TABLE, CONSENSUS_TABLE, Table, shown
from report.viewer_images import image_panel_data
from utils import atomic_write_text
from utils.fileio import json_safe

ASSETS = Path(__file__).with_name("viewer_assets")
VIEWER_FILE = "viewer.html"
# The tables of the Tables panel, in this order, where aggregate.py built them: the final-epoch table with both
# intervals, the paired t-tests with Holm, the image bootstrap, the consensus filter, the crossover and λ_b sweep.
VIEWER_TABLES = ("table1_final_epoch", "table5_significance", BOOTSTRAP_TABLE, CONSENSUS_TABLE, "crossover_summary",
                 "table6_lambda_sweep")
_DIGITS = 4  # decimals kept of a displayed value (percent: 1e-4 pp), which keeps the payload small


def _num(x: float) -> float | None:
    """A displayed value rounded to _DIGITS decimals; NaN -> None (JSON null: a gap in a line, no bar)."""
    return round(x, _DIGITS) if math.isfinite(x) else None


def _unit(key: str) -> str:
    """The axis unit of a metric's values: "%" for a fraction, else the record's ("count", "px")."""
    unit, _ = metric_unit(key)
    return "%" if unit == "pp" else unit


# ---------------------------------------------------------------------------------------------------- panels' data
def curves_data(study: Study, early: int | None, final: int, band: str = "normal") -> dict:
    """Per metric of metrics.registry with a value in the input: per group, the mean over seeds at every epoch
    with the half-widths of both 95 % intervals (report.stats.summarize), the number of seeds, and each seed's
    values; aligned with `epochs` (null where a group or seed has no result). `band` ("normal" or "t", as
    aggregate.py --band) is the interval shown first."""
    metrics = []
    for m in RECORDS:
        if all(math.isnan(r.metrics.get(m.key, math.nan)) for r in study.records):
            continue  # no value in this input (a tidy CSV holds three metrics; older results lack the newer ones)
        _, factor = metric_unit(m.key)
        groups = {}
        for g in study.groups:
            per_epoch = [study.values(g, e, m.key) for e in study.epochs]
            summaries = [summarize(list(v.values())) for v in per_epoch]
            groups[g] = {
                "mean": [_num(factor * s.mean) for s in summaries],
                "normal": [_num(factor * s.half_normal) for s in summaries],
                "t": [_num(factor * s.half_t) for s in summaries],
                "n": [s.n for s in summaries],
                "seeds": {str(seed): [_num(factor * v[seed]) if seed in v else None for v in per_epoch]
                          for seed in study.seeds if any(seed in v for v in per_epoch)},
            }
        metrics.append({"key": m.key, "label": study.label(m.key), "unit": _unit(m.key), "groups": groups})
    if early is None or early == final:  # the crossover's epochs (aggregate.py's --early-epoch, --final-epoch)
        marks = [{"epoch": final, "label": f"{'early and ' if early == final else ''}final epoch {final}"}]
    else:
        marks = [{"epoch": early, "label": f"early epoch {early}"}, {"epoch": final, "label": f"final epoch {final}"}]
    return {"epochs": study.epochs, "metrics": metrics, "marks": marks, "band": band,
            "bands": BAND_TEXT}


def _class_label(key: str, label: str) -> str:
    """The per-class name of a metric: the mIoU's per-class values are IoUs."""
    return "IoU" if key == "miou" else label


def per_class_data(study: Study, final: int) -> dict | None:
    """Per metric of metrics.registry with per-class values in the input: at every epoch, per group, the mean and
    the inter-seed std (ddof = 1) of each class's value over seeds (report.stats.summarize); None without any."""
    if not study.classes:
        return None
    metrics = []
    for m in RECORDS:
        if m.per_class is None or not any(m.key in r.class_values for r in study.records):
            continue
        _, factor = metric_unit(m.key)
        index = {(r.group, r.epoch, r.seed): r.class_values.get(m.key, {}) for r in study.records}
        values = {}
        for e in study.epochs:
            at_epoch = {}
            for g in study.groups:
                seeds = [index[(g, e, s)] for s in study.seeds_at(g, e)]
                summaries = [summarize([v.get(c, float("nan")) for v in seeds]) for c in study.classes]
                at_epoch[g] = {"mean": [_num(factor * s.mean) for s in summaries],
                               "std": [_num(factor * s.std) for s in summaries]}
            values[str(e)] = at_epoch
        metrics.append({"key": m.key, "label": _class_label(m.key, m.label), "unit": _unit(m.key),
                        "higher_is_better": m.higher_is_better, "values": values})
    if not metrics:
        return None
    reference, compare = per_class_pair(study)  # as per_class_iou.png: Δ against A, sorted by Δ(D−A)
    return {"classes": study.classes, "epochs": study.epochs, "epoch": final, "metrics": metrics,
            "reference": reference, "compare": compare}


def tables_data(tables: list[Table], study: Study) -> list[dict]:
    """The tables of VIEWER_TABLES among `tables` as summary.md shows them (report.tables.shown: a comparison of
    one group is a line saying what it needs): title, the Markdown view's header and cells (percent, 2 decimals;
    "**x**" marks a significant cell) and the notes."""
    by_name = {t.name: shown(t, study) for t in tables}
    return [{"name": t.name, "title": t.title, "header": t.md_header, "rows": t.md_rows, "notes": t.notes}
            for t in (by_name.get(name) for name in VIEWER_TABLES) if t is not None]


def class_table(study: Study, runs_dir: str | Path | None) -> dict:
    """The classes' names (the study's: results' `classes` or the CSV's columns) and palette: the run's recorded
    `class_palette` (train.py's config in the results), Cityscapes' for Cityscapes' names, else
    data_utils.classes.default_palette."""
    names = list(study.classes)
    palette = None
    if runs_dir is not None and study.records:
        config = read_results(study.records[0].source).get("config") or {}
        recorded = config.get("class_palette") or ()
        if list(config.get("class_names") or ()) == names and len(recorded) == len(names):
            palette = [[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in recorded]
    if palette is None:
        table = list(CITYSCAPES.palette) if names == list(CITYSCAPES.names) else default_palette(len(names))
        palette = [list(map(int, rgb)) for rgb in table]
    return {"names": names, "palette": palette}


def viewer_data(study: Study, tables: list[Table], *, early: int | None, final: int, source: str,
                runs_dir: str | Path | None = None, band: str = "normal", title: str = "Loss-ablation report",
                per_image: tuple | None = None) -> dict:
    """The viewer's JSON payload (module docstring) for `study`: `tables` are aggregate.py's report.tables Tables,
    `early`/`final` the crossover's epochs, `runs_dir` None for a tidy CSV (no images, the default palette),
    `band` the curves' interval shown first, `per_image` the runs' per-image statistics at `final` when already
    read (`report.load.load_per_image`; None: the Images panel reads them)."""
    colors = group_colors(study.groups, study.group_keys)
    per_class = per_class_data(study, final)
    absent = {}
    if per_class is None:
        absent["per_class"] = ("the tidy CSV has no per-class columns (named by class: road, ..., bicycle)"
                               if runs_dir is None else f"no results file below {runs_dir} holds per-class values")
    images = image_panel_data(study, runs_dir, final, absent, per_image)  # None: absent["images"] says why
    return {
        "title": title,
        "source": str(source),
        "classes": class_table(study, runs_dir),
        "groups": study.groups,
        "colors": {g: colors[g] for g in study.groups},
        "group_labels": {g: VARIANT_NAMES.get(g, g) for g in study.groups},
        "curves": curves_data(study, early, final, band),
        "per_class": per_class,
        "tables": tables_data(tables, study),
        "images": images,
        "absent": absent,
    }


# ---------------------------------------------------------------------------------------------------- the file
def _inline_script(js: str) -> str:
    """A script's text made safe inside <script>…</script>: no "</script" can end it early."""
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)


def render_html(data: dict) -> str:
    """The viewer page: the template of viewer_assets with its {{PLACEHOLDERS}} filled in one pass (so text in the
    data can never be taken for a placeholder)."""
    import plotly.offline  # the package carries plotly.min.js (~4.6 MB), inlined once

    scripts = [plotly.offline.get_plotlyjs(), (ASSETS / "core.js").read_text(encoding="utf-8")]
    scripts += [p.read_text(encoding="utf-8") for p in sorted(ASSETS.glob("*.js")) if p.name != "core.js"]
    payload = json.dumps(json_safe(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    parts = {
        "TITLE": html.escape(data.get("title", "viewer"), quote=False),
        "STYLE": (ASSETS / "viewer.css").read_text(encoding="utf-8"),
        # "<" only occurs inside JSON strings, where \u003c reads back as "<": no "</script>" or "<!--" can end or
        # confuse the script element, whatever the class or group names hold
        "DATA": payload.replace("<", "\\u003c"),
        "SCRIPTS": "\n".join(f"<script>{_inline_script(js)}</script>" for js in scripts),
    }
    template = (ASSETS / "viewer.html").read_text(encoding="utf-8")
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda match: parts[match[1]], template)


def build_viewer(data: dict, out_path: str | Path) -> Path:
    """Write the viewer page for the payload `data` (viewer_data) to `out_path`, atomically; return the path."""
    out_path = Path(out_path)
    atomic_write_text(out_path, render_html(data))
    return out_path
