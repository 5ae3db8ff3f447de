"""Size and load time of viewer.html at the study's shape (issue #26: <= 15 MB, drawn in Chromium in < 3 s).

The fixture: 4 groups (A-D) x 3 seeds = 12 runs, each with a results file at every epoch 1..160, and at the final
epoch the per-image file of a 500-image split and the prediction samples of 8 real 1024x2048 Cityscapes frames
(`../shared/data/cityscapes_fullres`: images and fine labels). Predictions are synthetic but no easier to
compress than a model's: the label shifted by a few pixels, ignore filled with road, 30 random rectangles of
other classes, and ragged contours (a third of the Trimap-band pixels take the class of a pixel 2-3 px away).
The other 492 images of the split are the val label maps at 1/8 size, perturbed the same way (their per-image
values only need to exist). aggregate.py then writes the report; the script prints viewer.html's size, what
the Images panel and plotly.js take of it, and with --render the times Chromium takes to draw the first panel
(alternately with and without the Images panel, in one browser), the Images tab and a full-size view.

    python bench/bench_viewer.py                   # ~2 min on one core; the fixture in a temporary folder
    python bench/bench_viewer.py --render --keep /tmp/viewer_bench
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
import aggregate  # noqa: E402
from data_utils.dataset import read_train_ids  # noqa: E402
from data_utils.labels import CITYSCAPES  # noqa: E402
from engine.config import TrainConfig  # noqa: E402
from engine.results import results_path, write_results  # noqa: E402
from engine.samples import write_predictions, write_sample_set  # noqa: E402
from metrics import SegmentationMetrics  # noqa: E402
from metrics.band import trimap_band  # noqa: E402
from metrics.registry import METRICS  # noqa: E402
from report.viewer import VIEWER_FILE, build_viewer  # noqa: E402
from utils import UserError, run_main  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.conventions import IGNORE_INDEX  # noqa: E402
from utils.fileio import atomic_write_json  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes_fullres"
GROUPS = {"A": 1.0, "B": 0.8, "C": 0.6, "D": 0.5}  # group -> error scale (fewer rectangles for the better ones)
SEEDS = (42, 123, 456)
EPOCHS = 160
SPLIT_SIZE = 500
C = CITYSCAPES.num_classes


def perturb(target: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A synthetic prediction of `target` (module docstring)."""
    pred = np.where(target == IGNORE_INDEX, 0, target).astype(np.uint8)
    pred = np.roll(pred, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
    h, w = pred.shape
    for _ in range(int(30 * scale)):
        y, x = rng.integers(0, h - h // 25), rng.integers(0, w - w // 12)
        pred[y:y + rng.integers(h // 128, h // 8), x:x + rng.integers(w // 256, w // 12)] = rng.integers(0, C)
    band = trimap_band(pred, C, 3) & (rng.random(pred.shape) < 0.33)
    near = np.roll(pred, tuple(rng.choice([-3, -2, 2, 3], 2)), axis=(0, 1))
    pred[band] = near[band]
    return pred


def build_runs(root: Path, data: Path) -> None:
    images = sorted((data / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    if len(images) < 8:
        raise UserError(f"{data}: needs 8 frames in leftImg8bit/train/<city>/; pass --data DIR")
    frames = {}
    for path in images[:8]:
        name = path.name.replace("_leftImg8bit.png", "")
        label = path.parents[2].parent / "gtFine" / "train" / path.parent.name / f"{name}_gtFine_labelIds.png"
        frames[name] = (np.array(Image.open(path).convert("RGB")), read_train_ids(str(label)))
    small = [read_train_ids(str(p))[::8, ::8] for p in sorted((data / "gtFine").glob("*/*/*_labelIds.png"))]
    names = list(frames)
    rng = np.random.default_rng(0)
    palette = [list(c) for c in CITYSCAPES.palette]
    for group, scale in GROUPS.items():
        for seed in SEEDS:
            run = root / f"{group}_seed{seed}"
            metric = SegmentationMetrics(C, class_names=CITYSCAPES.names)
            preds = {}
            for name in names:
                target = frames[name][1]
                preds[name] = perturb(target, rng, scale)
                metric.update(torch.from_numpy(preds[name][None]), torch.from_numpy(target[None]), [name])
            for i in range(SPLIT_SIZE - len(names)):
                target = small[i % len(small)]
                pred = perturb(target, rng, scale)
                metric.update(torch.from_numpy(pred[None]), torch.from_numpy(target[None]), [f"extra_{i:03d}"])
            metrics = {**metric.compute(), "per_image": metric.per_image(), "classes": list(CITYSCAPES.names)}
            ckpt = run / "checkpoints" / f"epoch_{EPOCHS:04d}"
            ckpt.mkdir(parents=True)
            final = results_path(ckpt)
            write_results(final, metrics, cfg=TrainConfig(seed=seed), epoch=EPOCHS, checkpoint=ckpt, split="val",
                          seconds=1.0)
            record = {**json.loads(final.read_text()), "variant": group}
            atomic_write_json(final, record)
            write_sample_set(run, "val", names, CITYSCAPES.names, palette, frames.__getitem__)
            write_predictions(final, "val", preds, palette)
            for epoch in range(1, EPOCHS):  # earlier epochs: the final values scaled down (no per-image file)
                f = 0.6 + 0.4 * epoch / EPOCHS
                scaled = dict(record)
                for m in METRICS:
                    if m.is_fraction and record.get(m.key) is not None:
                        scaled[m.key] = record[m.key] * f
                    if m.is_fraction and m.per_class:
                        scaled[m.per_class] = {c: (v * f if v is not None else None)
                                               for c, v in record[m.per_class].items()}
                atomic_write_json(run / "checkpoints" / f"epoch_{epoch:04d}.results.json",
                                  {**scaled, "epoch": epoch, "checkpoint": str(ckpt.with_name(f"epoch_{epoch:04d}"))})
        print(f"runs of group {group} written", flush=True)


def render_times(html: Path, without_images: Path) -> None:
    """Print the times Chromium takes to open `html` and to draw its first panel, alternately with the same page
    without the Images panel (the same browser: the first open is a cold start, reported apart), then to draw
    the Images tab and one full-size view."""
    from playwright.sync_api import sync_playwright

    from tests.browser import VIEWPORT, find_chromium

    def seconds(action, selector: str) -> float:
        start = time.perf_counter()
        action()
        page.wait_for_selector(selector, state="attached", timeout=120_000)
        return time.perf_counter() - start

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
        first_panel = "section.panel[data-ready='1']"
        for label, path in [("cold start", html)] + [("with images", html), ("without", without_images)] * 2:
            took = seconds(lambda: page.goto(path.resolve().as_uri(), wait_until="load", timeout=120_000),
                           first_panel)
            print(f"Chromium, {label}: first panel drawn {took:.2f} s after opening")
        page.goto(html.resolve().as_uri(), wait_until="load")
        page.wait_for_selector(first_panel, state="attached")
        took = seconds(lambda: page.click("nav button[data-panel='images']"), "#panel-images[data-ready='1']")
        print(f"Chromium: the Images tab drawn {took:.2f} s after its click")
        took = seconds(lambda: page.click("#images-rows .images-row canvas >> nth=3"), "#images-modal[data-ready='1']")
        print(f"Chromium: a full-size prediction drawn {took:.2f} s after its click")
        browser.close()


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the real frames (default ../shared/data/...)")
    p.add_argument("--keep", type=Path, default=None, help="build the runs and report here and keep them (the runs of "
                   "an earlier --keep DIR are reused)")
    p.add_argument("--render", action="store_true", help="also time the page in headless Chromium")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        runs, out = base / "runs", base / "report"
        if runs.is_dir():  # --keep DIR of an earlier run: the same fixture again
            print(f"fixture: reusing {runs}")
        else:
            start = time.perf_counter()
            build_runs(runs, args.data)
            print(f"fixture: {len(GROUPS) * len(SEEDS)} runs x {EPOCHS} epochs in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        aggregate.main([str(runs), "--out", str(out), "--bootstrap", "0"])
        print(f"aggregate.py: {time.perf_counter() - start:.1f} s")
        html = out / VIEWER_FILE
        text = html.read_text(encoding="utf-8")
        payload = json.loads(text.split('id="viewer-data">', 1)[1].split("</script>", 1)[0].replace("<\\/", "</"))
        import plotly.offline

        images = len(json.dumps(payload["images"], ensure_ascii=False, separators=(",", ":")).encode())
        plotly = len(plotly.offline.get_plotlyjs().encode())
        total = html.stat().st_size
        print(f"viewer.html: {total / 1e6:.2f} MB (images panel {images / 1e6:.2f} MB, plotly.js "
              f"{plotly / 1e6:.2f} MB, the rest {(total - images - plotly) / 1e6:.2f} MB)")
        if args.render:
            without = out / "viewer_without_images.html"
            build_viewer({**payload, "images": None, "absent": {**payload["absent"], "images": "left out"}}, without)
            render_times(html, without)
    return 0


if __name__ == "__main__":
    run_main(main)
