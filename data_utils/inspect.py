"""Look at a Cityscapes-layout dataset: colour overlays of the labels the loader produces, and class shares.

    python -m data_utils.inspect --data-root data/demo --split val --num 4 --out overlays/

For each of the first `--num` frames (sorted by name) it writes `<out>/<name>_overlay.png`: the image on top,
below it the image blended 50/50 with the official class colours of the mapped train ids (ignored pixels
keep the plain image), and a legend of the classes present. It reads frames exactly as training does
(`list_frames` + `read_frame`), so bad files fail here with the same message, and it prints the share of
pixels per class over the inspected frames.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_utils.cityscapes import list_frames, resolve_data_root
from data_utils.classes import class_presence
from data_utils.dataset import read_frame
from data_utils.labels import CITYSCAPES
from utils import atomic_write_bytes, run_main
from utils.cli import ArgumentParser
from utils.console import plural
from utils.conventions import IGNORE_INDEX


def overlay(image: np.ndarray, train_ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image + (H, W) train ids -> (2H + legend, W, 3) uint8: image above, blend below."""
    colours = CITYSCAPES.colorize(train_ids).astype(np.float32)
    blend = image.astype(np.float32)
    valid = train_ids != IGNORE_INDEX
    blend[valid] = (1 - alpha) * blend[valid] + alpha * colours[valid]
    stacked = np.concatenate([image, blend.astype(np.uint8)], axis=0)
    present = np.flatnonzero(class_presence(train_ids, CITYSCAPES.num_classes))
    legend = Image.new("RGB", (image.shape[1], 14 * ((len(present) + 3) // 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    column_w = image.shape[1] // 4
    for k, c in enumerate(present):
        x, y = (k % 4) * column_w + 4, (k // 4) * 14 + 3
        draw.rectangle([x, y, x + 10, y + 10], fill=CITYSCAPES.palette[c])
        draw.text((x + 14, y - 1), CITYSCAPES.names[c], fill=(0, 0, 0))
    return np.concatenate([stacked, np.asarray(legend)], axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m data_utils.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None, help="dataset root (default: $CITYSCAPES_DATASET)")
    parser.add_argument("--split", default="val", help="split to inspect (default: val)")
    parser.add_argument("--num", type=int, default=4, help="how many frames (the first by name)")
    parser.add_argument("--out", required=True, help="folder for the overlay PNGs")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    frames = list_frames(resolve_data_root(args.data_root), args.split)[: max(args.num, 0)]
    out = Path(args.out)
    counts = np.zeros(256, np.int64)
    for frame in frames:
        image, train_ids = read_frame(frame["image_path"], frame["label_path"])
        counts += np.bincount(train_ids.ravel(), minlength=256)
        path = out / f"{frame['name']}_overlay.png"
        buffer = io.BytesIO()
        Image.fromarray(overlay(image, train_ids)).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
    table = Table(title=f"{plural(len(frames), args.split + ' frame')}: share of pixels per class")
    table.add_column("train id", justify="right")
    table.add_column("class")
    table.add_column("pixels %", justify="right")
    total = max(int(counts.sum()), 1)
    for c, name in enumerate(CITYSCAPES.names):
        table.add_row(str(c), name, f"{100 * counts[c] / total:.2f}")
    table.add_row(str(IGNORE_INDEX), "(ignored)", f"{100 * counts[IGNORE_INDEX] / total:.2f}")
    Console().print(table)
    print(f"wrote {plural(len(frames), 'overlay')} to {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    run_main(main)
