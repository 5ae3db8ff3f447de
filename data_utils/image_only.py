"""The images of a split that has no labels (Cityscapes' test split shipped without gtFine/test): image + name,
for predictions only (evaluate.py --split test --save-predictions DIR).

    >>> loader = DataLoader(ImageOnlyDataset(root, "test"), batch_size=2, collate_fn=collate_images)
    >>> batch = next(iter(loader))       # {"image": (2, 3, H, W) uint8, "name": ["berlin_000000_000019", ...]}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_utils.layout import IMAGE_DIR, IMAGE_SUFFIX
from data_utils.dataset import read_image
from utils import UserError


class ImageOnlyDataset(torch.utils.data.Dataset):
    """The `<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png` images, sorted: {"image": (3, H, W) uint8,
    "name": the frame name}."""

    def __init__(self, root: Path, split: str):
        image_dir = root / IMAGE_DIR / split
        self.paths = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not self.paths:
            raise UserError(f"{image_dir}: no <city>/*{IMAGE_SUFFIX} images; check --data-root and --split")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        image = torch.from_numpy(np.ascontiguousarray(read_image(str(path)).transpose(2, 0, 1)))
        return {"image": image, "name": path.name[: -len(IMAGE_SUFFIX)]}


def collate_images(items: list[dict]) -> dict:
    """Stack ImageOnlyDataset items into {"image": (N, 3, H, W) uint8, "name": [str]}."""
    return {"image": torch.stack([it["image"] for it in items]), "name": [it["name"] for it in items]}
