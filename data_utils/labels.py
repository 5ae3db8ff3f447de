"""The official Cityscapes label table (cityscapesScripts `helpers/labels.py`), kept once for the project.

34 label ids (0..33, plus the license plate at -1) map to 19 train ids (0..18); everything else maps to
`IGNORE_INDEX` (255). The license plate's official train id is -1, which we also map to 255.
`CITYSCAPES` is this table as a `data_utils.classes.ClassTable`: the form every module outside data_utils/ uses.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from data_utils.classes import IGNORE_INDEX, ClassTable
from utils import UserError

NUM_CLASSES = 19


class Label(NamedTuple):
    name: str
    id: int  # value in *_gtFine_labelIds.png
    train_id: int  # 0..18, or 255 = ignored in training and evaluation
    category: str
    color: tuple[int, int, int]  # official RGB colour


LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", (0, 0, 0)),
    Label("rectification border", 2, 255, "void", (0, 0, 0)),
    Label("out of roi", 3, 255, "void", (0, 0, 0)),
    Label("static", 4, 255, "void", (0, 0, 0)),
    Label("dynamic", 5, 255, "void", (111, 74, 0)),
    Label("ground", 6, 255, "void", (81, 0, 81)),
    Label("road", 7, 0, "flat", (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", (244, 35, 232)),
    Label("parking", 9, 255, "flat", (250, 170, 160)),
    Label("rail track", 10, 255, "flat", (230, 150, 140)),
    Label("building", 11, 2, "construction", (70, 70, 70)),
    Label("wall", 12, 3, "construction", (102, 102, 156)),
    Label("fence", 13, 4, "construction", (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", (180, 165, 180)),
    Label("bridge", 15, 255, "construction", (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", (150, 120, 90)),
    Label("pole", 17, 5, "object", (153, 153, 153)),
    Label("polegroup", 18, 255, "object", (153, 153, 153)),
    Label("traffic light", 19, 6, "object", (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", (107, 142, 35)),
    Label("terrain", 22, 9, "nature", (152, 251, 152)),
    Label("sky", 23, 10, "sky", (70, 130, 180)),
    Label("person", 24, 11, "human", (220, 20, 60)),
    Label("rider", 25, 12, "human", (255, 0, 0)),
    Label("car", 26, 13, "vehicle", (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", (0, 0, 110)),
    Label("train", 31, 16, "vehicle", (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    Label("license plate", -1, 255, "vehicle", (0, 0, 142)),  # official train id -1 -> ignore
)

# The 19 evaluated classes in train-id order (road ... bicycle) and their colours.
CLASS_NAMES: tuple[str, ...] = tuple(
    lab.name for lab in sorted((l for l in LABELS if l.train_id != 255), key=lambda l: l.train_id)
)
PALETTE: np.ndarray = np.array(
    [lab.color for lab in sorted((l for l in LABELS if l.train_id != 255), key=lambda l: l.train_id)],
    dtype=np.uint8,
)  # (19, 3) RGB
assert len(CLASS_NAMES) == NUM_CLASSES and CLASS_NAMES[0] == "road" and CLASS_NAMES[-1] == "bicycle"

# The Cityscapes class table: what every module outside data_utils/ sees of Cityscapes (data_utils.classes).
CITYSCAPES = ClassTable(CLASS_NAMES, tuple(map(tuple, PALETTE.tolist())), IGNORE_INDEX,
                        id_to_train_id={lab.id: lab.train_id for lab in LABELS if lab.id >= 0}, source="Cityscapes")

# Lookup tables over all uint8 values. KNOWN_ID marks the ids a labelIds PNG may contain (0..33).
ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
KNOWN_ID = np.zeros(256, dtype=bool)
for _lab in LABELS:
    if _lab.id >= 0:
        ID_TO_TRAIN_ID[_lab.id] = _lab.train_id
        KNOWN_ID[_lab.id] = True


def label_ids_to_train_ids(label_ids: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Map a `_gtFine_labelIds` array (H, W) to train ids (uint8, 255 = ignore): `CITYSCAPES.to_train_ids`.

    Raises `UserError` naming `path` when the map holds a value outside the official table.
    """
    return CITYSCAPES.to_train_ids(label_ids, path, fix="pass the *_gtFine_labelIds.png file, not a colour, "
                                   "trainId or instance map")


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Inverse map for predictions (test-server format): train id -> label id, 255 -> 0 (unlabeled)."""
    return CITYSCAPES.to_label_ids(train_ids)


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 RGB with the official colours; ignore is black."""
    return CITYSCAPES.colorize(train_ids)
