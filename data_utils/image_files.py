"""Any user's images, for predict.py: find them (files, folders searched recursively, globs) and read each as RGB.

    inputs = find_images(["photos/", "more/*.jpg", "one.webp"])    # [ImageInput(path, name), ...] sorted
    image, note = read_rgb(inputs[0].path)    # (H, W, 3) uint8; note: "RGBA -> RGB (alpha dropped)" or None

`name` is where the outputs go: the path below the folder given (without its suffix), or the file's stem for a
file or glob, so that images of the same name in two sub-folders stay apart.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class ImageInput:
    path: Path
    name: str  # relative output name without suffix, e.g. "berlin/berlin_000000_000019_leftImg8bit"


def find_images(inputs: list[str]) -> list[ImageInput]:
    """The images named by `inputs` (files, folders searched recursively, glob patterns), each once, sorted.

    Raises UserError naming the input that matched nothing, or two images that would share an output name.
    """
    found: dict[Path, ImageInput] = {}
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            matches = [ImageInput(p, p.relative_to(path).with_suffix("").as_posix()) for p in sorted(path.rglob("*"))
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif path.is_file():
            matches = [ImageInput(path, path.stem)]
        else:
            matches = [ImageInput(Path(p), Path(p).stem) for p in sorted(glob.glob(entry, recursive=True))
                       if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file()]
        if not matches:
            raise UserError(f"{entry}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} image there; pass image "
                            "files, folders holding them, or a quoted glob such as 'photos/*.jpg'")
        for item in matches:
            found.setdefault(item.path.resolve(), item)
    by_name: dict[str, Path] = {}
    for item in found.values():
        if item.name in by_name:
            raise UserError(f"{item.path} and {by_name[item.name]}: both would write outputs named {item.name!r}; "
                            "pass their common folder instead, so the outputs keep the sub-folders")
        by_name[item.name] = item.path
    return sorted(found.values(), key=lambda item: item.name)


def read_rgb(path: str | Path) -> tuple[np.ndarray, str | None]:
    """An image file -> ((H, W, 3) uint8 RGB, a one-line note on a conversion or None).

    RGBA/LA/P/CMYK are converted by PIL (alpha dropped); grayscale is repeated over three channels; 16- and
    32-bit integer images are scaled to 8 bits (value * 255 / 65535, rounded). Raises OSError or ValueError for
    a file that cannot be decoded.
    """
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "RGB":
            return np.asarray(im), None
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            gray = np.asarray(im).astype(np.float64) * 255 / 65535
            gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2), f"{mode} (16-bit grayscale) scaled to 8-bit RGB"
        if mode == "L":
            return np.asarray(im.convert("RGB")), "grayscale repeated over RGB"
        if mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
            dropped = " (alpha dropped)" if "A" in mode else ""
            return np.asarray(im.convert("RGB")), f"{mode} converted to RGB{dropped}"
        raise ValueError(f"image mode {mode} is not supported (RGB, RGBA, grayscale, palette, 16-bit)")


class ImageFileDataset(torch.utils.data.Dataset):
    """{"index", "image": (3, H, W) uint8 or None, "note": str | None, "error": str | None} per input: an
    unreadable file yields its error instead of raising, so one bad image never stops the others."""

    def __init__(self, items: list[ImageInput]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        try:
            image, note = read_rgb(self.items[index].path)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
            return {"index": index, "image": None, "note": None, "error": f"{type(e).__name__}: {e}"}
        return {"index": index, "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "note": note, "error": None}
