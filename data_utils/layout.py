"""The Cityscapes folder layout, spelled once: `data_utils.cityscapes` reads it, `data_utils.synthetic` writes it,
evaluate.py finds test images in it. No imports beyond pathlib (the synthetic generator needs no `datasets`).

    <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png          RGB image
    <root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png           8-bit label ids (0..33)
    <root>/gtFine/<split>/<city>/<name>_gtFine_instanceIds.png        16-bit: id*1000+k for instance classes, else id

with <name> = <city>_<seq>_<frame>, e.g. frankfurt_000000_000294.
"""
from __future__ import annotations

from pathlib import Path

IMAGE_DIR, LABEL_DIR = "leftImg8bit", "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"


def image_path(root: str | Path, split: str, city: str, name: str) -> Path:
    """<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png"""
    return Path(root) / IMAGE_DIR / split / city / f"{name}{IMAGE_SUFFIX}"


def label_path(root: str | Path, split: str, city: str, name: str, suffix: str = LABEL_SUFFIX) -> Path:
    """<root>/gtFine/<split>/<city>/<name><suffix>: the labelIds file, or with INSTANCE_SUFFIX the instance ids."""
    return Path(root) / LABEL_DIR / split / city / f"{name}{suffix}"


def frame_city(name: str) -> str | None:
    """The city of a frame named `<city>_<sequence>_<frame>` ("frankfurt_000000_000294" -> "frankfurt": the part
    before the last two "_" fields), the folder its files sit in; None for a name without those two fields (an
    HF dataset's `<split>_<row>`), whose files go straight into the folder above."""
    parts = name.rsplit("_", 2)
    return parts[0] if len(parts) == 3 else None
