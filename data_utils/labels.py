"""The official Cityscapes label table (cityscapesScripts `helpers/labels.py`), kept once for the project.

34 label ids (0..33, plus the license plate at -1) map to 19 train ids (0..18); everything else maps to
`IGNORE_INDEX` (255). The license plate's official train id is -1, which we also map to 255.
`CITYSCAPES` is this table as a `data_utils.classes.ClassTable`, the one form every module uses: `.names`,
`.palette`, `.num_classes`, `.to_train_ids` (labelIds -> train ids), `.to_label_ids`, `.colorize`.
"""
from __future__ import annotations

from typing import NamedTuple

from data_utils.classes import IGNORE_INDEX, ClassTable


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

# The Cityscapes class table: the 19 evaluated classes in train-id order (road ... bicycle), their official
# colours and the label id -> train id map. What every module sees of Cityscapes (data_utils.classes).
_EVALUATED = sorted((lab for lab in LABELS if lab.train_id != IGNORE_INDEX), key=lambda lab: lab.train_id)
CITYSCAPES = ClassTable(tuple(lab.name for lab in _EVALUATED), tuple(lab.color for lab in _EVALUATED), IGNORE_INDEX,
                        id_to_train_id={lab.id: lab.train_id for lab in LABELS if lab.id >= 0}, source="Cityscapes")
assert CITYSCAPES.num_classes == 19 and CITYSCAPES.names[0] == "road" and CITYSCAPES.names[-1] == "bicycle"

# Thin classes a consensus veto would erase (metrics.consensus.cc_veto's `protect`; evaluate.py --protect's default)
THIN_CLASSES = ("fence", "pole", "traffic light", "traffic sign")
