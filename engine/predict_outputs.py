"""predict.py's files, per image `<name>` (data_utils.image_files), under the output folder:

    <name>_trainIds.png    8-bit class indices (train ids), the model's output
    <name>_labelIds.png    Cityscapes only: the label ids the test server wants (ClassTable.to_label_ids)
    <name>_color.png       the prediction in the dataset's palette
    <name>_overlay.jpg     the image blended 50/50 with the colours, and a legend of the classes present
    <name>_gt_error.png    with --gt: the ground truth in the palette | the error view (wrong pixels red over the
                           darkened image, ignore black), side by side

Every file is written atomically (utils.atomic_write_bytes): an interrupted run leaves no half-written file.
Ground truth for image `<stem>` is looked up in the --gt folder (recursively) as `<frame>_gtFine_labelIds.png`
(Cityscapes' frame = the stem without `_leftImg8bit`; the dataset's label values), then
`<frame>_gtFine_labelTrainIds.png` (train ids), then `<stem>.png` (the dataset's label values).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_utils.classes import ClassTable
from utils import UserError, atomic_write_bytes

LEGEND_ROW_PX = 16


def encode_image(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG or JPEG (quality 90) bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def with_legend(image: np.ndarray, classes: ClassTable, present: list[int]) -> np.ndarray:
    """(H, W, 3) uint8 -> the image with a white column on its right listing `present` classes (swatch + name)."""
    font = ImageFont.load_default()
    width = 24 + max((int(font.getlength(classes.names[c])) for c in present), default=0) + 8
    height = max(image.shape[0], LEGEND_ROW_PX * len(present) + 8)
    canvas = Image.new("RGB", (image.shape[1] + width, height), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, c in enumerate(present):
        x, y = image.shape[1] + 4, 4 + row * LEGEND_ROW_PX
        draw.rectangle((x, y, x + 14, y + 12), fill=tuple(classes.palette[c]), outline="black")
        draw.text((x + 20, y), classes.names[c], fill="black", font=font)
    return np.asarray(canvas)


def error_view(image: np.ndarray, pred: np.ndarray, target: np.ndarray, ignore_index: int) -> np.ndarray:
    """Correct pixels as the darkened image, wrong ones red, ignored ones black; (H, W, 3) uint8."""
    view = (image // 3).astype(np.uint8)
    view[(pred != target) & (target != ignore_index)] = (255, 0, 0)
    view[target == ignore_index] = 0
    return view


def find_ground_truth(gt_index: dict[str, Path], name: str) -> tuple[Path, bool] | None:
    """(label file, holds train ids) for the image `name` from `gt_index` (file name -> path), or None."""
    stem = Path(name).name
    frame = stem.removesuffix("_leftImg8bit")
    for candidate, train_ids in ((f"{frame}_gtFine_labelIds.png", False), (f"{frame}_gtFine_labelTrainIds.png", True),
                                 (f"{stem}.png", False)):
        if candidate in gt_index:
            return gt_index[candidate], train_ids
    return None


def read_ground_truth(path: Path, train_ids: bool, classes: ClassTable, shape: tuple[int, int]) -> np.ndarray:
    """A label PNG -> (H, W) uint8 train ids; UserError naming the file for bad values or another size."""
    with Image.open(path) as im:
        label = np.asarray(im)
    if label.shape != shape:
        raise UserError(f"{path}: label is {label.shape[1]}x{label.shape[0]}, its image {shape[1]}x{shape[0]} "
                        "(WxH); pass the labels of these images")
    if train_ids:
        return label.astype(np.uint8)
    return classes.to_train_ids(label, str(path), "pass the label maps of this model's dataset")


def write_outputs(out_dir: Path, name: str, image: np.ndarray, pred: np.ndarray, classes: ClassTable,
                  target: np.ndarray | None = None) -> None:
    """Write the module docstring's files for one image: (H, W, 3) uint8 image, (H, W) uint8 train ids."""
    base = out_dir / name
    colour = classes.colorize(pred)

    def put(suffix: str, array: np.ndarray, fmt: str = "PNG") -> None:
        atomic_write_bytes(base.with_name(base.name + suffix), encode_image(array, fmt))

    put("_trainIds.png", pred)
    if classes.id_to_train_id is not None:
        put("_labelIds.png", classes.to_label_ids(pred))
    put("_color.png", colour)
    blend = (0.5 * image + 0.5 * colour).astype(np.uint8)
    put("_overlay.jpg", with_legend(blend, classes, sorted(int(c) for c in np.unique(pred))), "JPEG")
    if target is not None:
        put("_gt_error.png", np.concatenate([classes.colorize(target),
                                             error_view(image, pred, target, classes.ignore_index)], axis=1))
