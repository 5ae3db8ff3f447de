"""The viewer's Images panel (`report/viewer_assets/40_images.js`): the sampled images of one epoch, each group's
predictions of them, their per-image metrics, and the per-image Δ that sorts them.

`image_panel_data` gathers, for the chosen epoch:
  - the run sample set (`engine.samples`: the same K val images for every run of a study): each image, its ground
    truth and its Trimap IoU band (`metrics.band.trimap_band`, the band the metrics count over, computed here once
    per image and shipped as a mask, so the browser never re-derives it);
  - per group and seed with samples, the predictions of those images (`engine.samples.read_predictions`); a run
    without them is left out, and `left_out` names it with the command that fills them in (None: every run has
    them);
  - from every run's `<ckpt>.per_image.npz` (`report.load.load_per_image`) each metric of each image alone
    (`metrics.per_image.image_values`): per seed for the sampled images (shown under each prediction), and per
    group the mean over its seeds for ALL images of the split (what the Δ sort and the Δ rank use).

Images travel as data URIs, twice: a thumbnail (longest side THUMB_PX) for display and the full size for the
click. Photos are JPEG (the full size: the sample set's own file). Label maps (ground truth, predictions) are
lossless grey WebPs whose grey levels are the train ids (255: ignore), nearest-neighbour downscaled, and the
band a 1-bit PNG: lossless, so a class stays a class, and the browser colours them from the palette (one lookup
per pixel) and computes the error view from the same ids. Pre-colourised RGB maps would be larger and would
have to be decoded back into ids for the error view. docs/report.md gives the size at the study's shape
(bench/bench_viewer.py).

The Δ order (`delta_order`, mirrored by the panel's JavaScript): for groups X, Y and a metric, Δ_i = m_X(i) −
m_Y(i), m_G(i) the mean over G's seeds (those with a finite value) of the metric on image i alone; the sampled
images sorted by Δ descending (X's largest gains over Y first for a higher-is-better metric, its largest losses
for a lower-is-better one: `Metric.higher_is_better`, which the panel's note names), NaN last, ties in sample order.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from engine.samples import read_predictions, read_sample_set, samples_dir
from metrics.band import trimap_band
from metrics.per_image import image_values
from metrics.registry import METRICS
from report.load import Study, load_per_image
from utils.cli import shell_command
from utils.console import plural
from utils.fileio import UserError

PANEL_ID = "images"
THUMB_PX = 512  # longest side of the displayed images; the full size opens on click
JPEG_QUALITY = 85  # the thumbnails of the photos
WEBP_METHOD = 2  # lossless WebP effort for label maps: 0.2 s and 28 KB for a 1024x2048 map (4: 0.34 s, 28 KB)


# ---------------------------------------------------------------------------------------------------- encoding
def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _encode(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def jpeg_uri(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 -> a JPEG data URI."""
    return data_uri(_encode(Image.fromarray(rgb), format="JPEG", quality=JPEG_QUALITY), "image/jpeg")


def ids_uri(ids: np.ndarray) -> str:
    """(H, W) uint8 train ids -> a lossless WebP data URI whose grey levels are the ids (R = G = B = id).

    Lossless WebP, not PNG: at 1024x2048 a prediction takes about half the bytes of the same map as a PNG
    (docs/report.md), and decodes exactly in every current browser."""
    image = Image.fromarray(np.ascontiguousarray(ids, np.uint8), "L")
    return data_uri(_encode(image, format="WEBP", lossless=True, method=WEBP_METHOD, quality=50), "image/webp")


def mask_uri(mask: np.ndarray) -> str:
    """(H, W) bool -> a 1-bit PNG data URI (white = True)."""
    return data_uri(_encode(Image.fromarray(np.ascontiguousarray(mask, bool)), format="PNG"), "image/png")


def thumb_index(height: int, width: int, longest: int = THUMB_PX) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): the pixel centres a nearest-neighbour downscale to longest side `longest` keeps (the identity
    for an image already that small). Label maps, band and predictions of an image share them, so the thumbnail's
    error view is the full-size one sampled at these pixels."""
    scale = min(1.0, longest / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return ((np.arange(h) + 0.5) * height / h).astype(int), ((np.arange(w) + 0.5) * width / w).astype(int)


# ---------------------------------------------------------------------------------------------------- Δ
def group_image_means(per_seed: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{seed: {metric: (n,) values}} -> {metric: (n,) mean over the seeds with a finite value (NaN if none)}."""
    out = {}
    for key in next(iter(per_seed.values())):
        stack = np.stack([values[key] for values in per_seed.values()])  # (seeds, n)
        finite = np.isfinite(stack)
        count = finite.sum(0)
        out[key] = np.divide(np.where(finite, stack, 0.0).sum(0), count, out=np.full(count.shape, np.nan),
                             where=count > 0)
    return out


def delta_order(panel: dict, x: str, y: str, metric: str) -> list[str]:
    """The sampled images' names sorted by the per-image Δ = m_X − m_Y of `metric` (module docstring), largest
    first, NaN last, ties in sample order."""
    deltas = image_deltas(panel, x, y, metric)
    keyed = [(math.isnan(d), -d if not math.isnan(d) else 0.0, i) for i, d in enumerate(deltas)]
    return [panel["names"][i] for *_, i in sorted(keyed)]


def image_deltas(panel: dict, x: str, y: str, metric: str) -> list[float]:
    """Per sampled image, Δ = m_X − m_Y of `metric` (NaN where either is undefined)."""
    means = panel["image_means"]
    return [_from_json(means[x][metric][i]) - _from_json(means[y][metric][i]) for i in panel["sampled_index"]]


def _from_json(value) -> float:
    """A payload value back to a float: null -> NaN."""
    return float("nan") if value is None else float(value)


def _json_values(values: np.ndarray) -> list[float | None]:
    """float64 values -> JSON numbers, NaN as null."""
    return [None if not math.isfinite(v) else float(v) for v in values.tolist()]


# ---------------------------------------------------------------------------------------------------- the panel
def run_dir_of(results_path: str | Path) -> Path:
    """RUN/checkpoints/epoch_0010.results.json -> RUN (where the run's sample set lives)."""
    return Path(results_path).parent.parent


def image_panel_data(study: Study | None, runs_dir: str | Path | None, epoch: int | None,
                     absent: dict[str, str], per_image: tuple | None = None) -> dict | None:
    """The Images panel's payload for `epoch` (module docstring), or None with the reason in absent[PANEL_ID]:
    a tidy CSV (no samples), no run with prediction samples at that epoch, or a sample or per-image file that
    cannot be read (the reader's one line naming the file and the command that remakes it). `per_image`:
    `load_per_image(study, epoch)` when the caller has read it already (None: read here)."""
    if runs_dir is None or study is None:
        absent[PANEL_ID] = ("a tidy CSV (--from-csv) holds no predictions: the Images panel needs a runs folder "
                            "whose evaluations kept prediction samples (evaluate.py --samples K)")
        return None
    records = sorted((r for r in study.records if r.epoch == epoch), key=lambda r: (study.groups.index(r.group),
                                                                                     r.seed))
    sampled = [r for r in records if not r.from_history and samples_dir(r.source).is_dir()]  # history: no files
    if not sampled:
        absent[PANEL_ID] = (f"no run at epoch {epoch} below {runs_dir} has prediction samples: evaluate with "
                            f"samples on (evaluate.py --all {runs_dir} fills them in)")
        return None
    lacking = [samples_dir(r.source) for r in records if not r.from_history and r not in sampled]
    try:
        return _panel(study, epoch, sampled, lacking, runs_dir, per_image)
    except UserError as e:
        absent[PANEL_ID] = str(e).splitlines()[0]
        return None


def _left_out(lacking: list[Path], runs_dir: str | Path, k: int) -> str | None:
    """The line naming the runs without prediction samples (left out of the panel) and the command that fills them
    in with the K of the run sample set (so the other runs keep theirs); None when there are none."""
    if not lacking:
        return None
    more = f" (and {plural(len(lacking) - 1, 'more run')})" if len(lacking) > 1 else ""
    return (f"{lacking[0]}: missing{more}, left out of the Images panel; "
            f"`{shell_command('python', 'evaluate.py', '--all', runs_dir, '--samples', k)}` fills them in")


def _panel(study: Study, epoch: int, sampled: list, lacking: list[Path], runs_dir: str | Path,
           per_image: tuple | None) -> dict:
    if per_image is None:
        per_image = load_per_image(study, epoch)
    if per_image is None:
        raise UserError(f"{sampled[0].source}: no per-image statistics beside the results at epoch {epoch}; re-run "
                        "`python evaluate.py CHECKPOINT` (it writes them with the samples)")
    stats, profile = per_image
    first = next(iter(next(iter(stats.values())).values()))
    all_names, boundary_px = first["names"].tolist(), int(first["boundary_px"])
    position = {name: i for i, name in enumerate(all_names)}
    values = {g: {s: image_values(arrays, profile) for s, arrays in seeds.items()} for g, seeds in stats.items()}

    sample_set = read_sample_set(run_dir_of(sampled[0].source))
    checkpoints = {(r.group, r.seed): read_predictions(r.source) for r in sampled}
    # the images every checkpoint kept (a smaller --samples keeps a prefix of the run's sample set)
    names = [n for n in sample_set.names if all(n in c.paths for c in checkpoints.values())]
    if not names:
        raise UserError(f"{sample_set.dir}: none of its images has a prediction in every checkpoint at epoch {epoch} "
                        f"(e.g. {checkpoints[sampled[0].group, sampled[0].seed].dir}); re-run evaluate.py --all on "
                        "the runs folder")
    missing = [n for n in names if n not in position]
    if missing:
        raise UserError(f"{sample_set.dir}: sampled image {missing[0]} is not among the "
                        f"{plural(len(all_names), 'image')} of the per-image statistics; sample and evaluate the same "
                        "split")

    images, indexes = image_payloads(sample_set, names, boundary_px)
    preds: dict[str, dict[str, list]] = {}
    seed_values: dict[str, dict[str, dict]] = {}
    rows = [position[n] for n in names]
    for (group, seed), checkpoint in checkpoints.items():
        preds.setdefault(group, {})[str(seed)] = [_prediction(checkpoint, name, image["size"], index)
                                                  for name, image, index in zip(names, images, indexes)]
        seed_values.setdefault(group, {})[str(seed)] = {key: _json_values(v[rows])
                                                         for key, v in values[group][seed].items()}
    return {
        "epoch": epoch,
        "split": sample_set.split,
        "profile": profile,
        "boundary_px": boundary_px,
        "classes": {"names": list(sample_set.class_names), "palette": [list(map(int, c)) for c in sample_set.palette],
                    "ignore_index": sample_set.ignore_index},
        "metrics": [{"key": m.key, "label": m.label, "short": m.short, "unit": m.display[0], "factor": m.display[1],
                     "higher_is_better": m.higher_is_better} for m in METRICS],
        "groups": [g for g in study.groups if g in preds],  # those with samples; seeds: the keys of preds[group]
        "delta_groups": [g for g in study.groups if g in values],  # those with per-image files: the Δ's choices
        "names": names,
        "images": images,
        "preds": preds,
        "values": seed_values,
        "image_means": {g: {k: _json_values(v) for k, v in group_image_means(seeds).items()}
                        for g, seeds in values.items()},
        "sampled_index": rows,
        "num_images": len(all_names),
        "left_out": _left_out(lacking, runs_dir, len(sample_set.names)),
    }


def image_payloads(sample_set, names: list[str], boundary_px: int) -> tuple[list[dict], list[tuple]]:
    """Per sampled image {"name", "size": [H, W], "thumb" / "full": {"image", "label", "band"} data URIs}, and
    its `thumb_index`."""
    images, indexes = [], []
    for name in names:
        photo, label = sample_set.image(name), sample_set.label(name)
        rows, cols = index = thumb_index(*label.shape)
        band = trimap_band(label, len(sample_set.class_names), boundary_px, sample_set.ignore_index)
        images.append({"name": name, "size": list(label.shape),
                       "thumb": {"image": jpeg_uri(_resize(photo, len(rows), len(cols))),
                                 "label": ids_uri(label[np.ix_(rows, cols)]),
                                 "band": mask_uri(band[np.ix_(rows, cols)])},
                       "full": {"image": data_uri(sample_set.paths[name]["image"].read_bytes(), "image/jpeg"),
                                "label": ids_uri(label), "band": mask_uri(band)}})
        indexes.append(index)
    return images, indexes


def _prediction(checkpoint, name: str, size: list[int], index) -> dict[str, str]:
    """A checkpoint's prediction of `name` as {"thumb", "full"} id-PNG data URIs, checked against the image size."""
    pred = checkpoint.pred(name)
    if list(pred.shape) != size:
        raise UserError(f"{checkpoint.paths[name]}: the prediction is {pred.shape[1]}x{pred.shape[0]}, its image "
                        f"{size[1]}x{size[0]}; {checkpoint.remake}")
    rows, cols = index
    return {"thumb": ids_uri(pred[np.ix_(rows, cols)]), "full": ids_uri(pred)}


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
