"""The class table of a dataset as data: names, palette, ignore index, and (label-id datasets) the id -> train-id map.

A dataset carries its classes; the model head, the losses, the SDT (C x H x W), the metrics, results.json, W&B,
evaluate.py and aggregate.py take C and the names from it. Cityscapes is one instance (`data_utils.labels.CITYSCAPES`,
from the official table); any other comes from a classes file (`read_classes_file`), an HF dataset's features
or an `id2label.json` (`data_utils.hf`), or the names recorded in a run's config.

Labels travel as uint8 (H, W) maps of train ids 0..C-1 with `IGNORE_INDEX` (255) at unlabelled pixels, so C is
at most 255. `ClassTable.to_train_ids` turns a dataset's raw label map into that form and is the one place
that refuses a value which is neither a class nor ignore.

A classes file (`--classes FILE`) is JSON in one of three forms:

    ["wall", "building", "sky"]                                  a list of names, in train-id order
    {"0": "wall", "1": "building", "2": "sky"}                   transformers' id2label.json
    {"names": [...] or "id2label": {...}, "palette": [[120, 120, 120], "#b47878", ...]}   + colours (RGB or hex)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils import UserError
from utils.console import plural
from utils.conventions import IGNORE_INDEX  # re-exported: the class tables' ignore train id


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for classes without given ones: PASCAL VOC's bit-interleaved colormap (MMSegmentation and
    torchvision use it), skipping its black entry 0, so no class is drawn like ignore."""
    colours = []
    for index in range(1, num_classes + 1):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r, g, b = r | ((c & 1) << shift), g | (((c >> 1) & 1) << shift), b | (((c >> 2) & 1) << shift)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def _colour(value, where: str) -> tuple[int, int, int]:
    """[r, g, b] or "#rrggbb" -> (r, g, b) in 0..255."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            pass
    elif (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return tuple(value)
    raise UserError(f"{where}: palette entry {value!r} is not [r, g, b] (0..255) or '#rrggbb'; fix the palette")


@dataclass(frozen=True)
class ClassTable:
    """The classes of a dataset.

    Args:
        names: class names in train-id order (train id i is `names[i]`); unique, non-empty.
        palette: (r, g, b) per class, for overlays; default `default_palette`.
        ignore_index: the train id of unlabelled pixels (always `IGNORE_INDEX` in label maps).
        id_to_train_id: for label-id datasets (Cityscapes' labelIds), label id -> train id (or ignore) for every
            id a label map may hold; None when the label maps already hold train ids.
        source: where the table came from, for error messages ("Cityscapes", a file, a dataset).
    """

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = IGNORE_INDEX
    id_to_train_id: dict[int, int] | None = None
    source: str = "classes"
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        names = tuple(self.names)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise UserError(f"{self.source}: class names must be a non-empty list of non-empty strings")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"{self.source}: class names {duplicates} appear twice; give every class its own name")
        if len(names) >= IGNORE_INDEX:
            raise UserError(f"{self.source}: {plural(len(names), 'class', 'classes')}; at most {IGNORE_INDEX - 1} fit "
                            f"uint8 label maps with {IGNORE_INDEX} = ignore")
        palette = tuple(_colour(c, self.source) for c in self.palette) or default_palette(len(names))
        if len(palette) != len(names):
            raise UserError(f"{self.source}: {plural(len(palette), 'palette colour')} for "
                            f"{plural(len(names), 'class', 'classes')}; give one colour per class or none")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "palette", palette)
        # lut[v] = train id of raw value v; -1 = a value the dataset's label maps must not hold
        lut = np.full(256, -1, dtype=np.int16)
        if self.id_to_train_id is None:
            lut[: len(names)] = np.arange(len(names))
            lut[IGNORE_INDEX] = IGNORE_INDEX
        else:
            for label_id, train_id in self.id_to_train_id.items():
                lut[label_id] = train_id
        object.__setattr__(self, "_lut", lut)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def palette_hex(self) -> tuple[str, ...]:
        return tuple(f"#{r:02x}{g:02x}{b:02x}" for r, g, b in self.palette)

    def to_train_ids(self, label: np.ndarray, where: str, fix: str, shift: int = 0) -> np.ndarray:
        """A raw (H, W) label map -> uint8 train ids (ignore = 255).

        Raises UserError naming `where` (the file or dataset row) for a value that is neither a class nor ignore
        (after the id map, for label-id datasets); `fix` says what to do about it. `shift`: the map holds the
        stored values minus `shift` (--reduce-labels: 1, `data_utils.hf.reduce_labels_`); messages quote the
        values as stored, and the class indices they stand for (1..N with --reduce-labels).
        """
        label = np.asarray(label)
        if label.dtype != np.uint8:
            low, high = (int(label.min()), int(label.max())) if label.size else (0, 0)
            if low < 0 or high > 255:
                raise UserError(f"{where}: label value {(low if low < 0 else high) + shift} does not fit a uint8 "
                                f"label map ({self.num_classes} classes, {IGNORE_INDEX} = ignore); {fix}")
            label = label.astype(np.uint8)
        train_ids = self._lut[label]
        bad = train_ids < 0
        if bad.any():
            values = sorted(v + shift for v in set(np.unique(label[bad]).tolist()))[:5]
            if self.id_to_train_id is not None:
                raise UserError(f"{where}: label ids {values} are not in the {self.source} table; {fix}")
            unlabelled = " (0 = unlabelled: --reduce-labels)" if shift else ""
            raise UserError(f"{where}: label values {values} are neither class indices {shift}.."
                            f"{self.num_classes - 1 + shift}{unlabelled} ({self.num_classes} classes in {self.source}) "
                            f"nor ignore ({IGNORE_INDEX}); {fix}")
        return train_ids.astype(np.uint8)

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> (H, W, 3) uint8 RGB with the palette; ignore is black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return lut[np.asarray(train_ids, dtype=np.uint8)]

    def to_label_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """Predicted train ids -> the dataset's label values (Cityscapes: label ids for the test server, ignore ->
        the first id mapped to ignore); train ids unchanged for datasets without an id map."""
        if self.id_to_train_id is None:
            return np.asarray(train_ids, dtype=np.uint8)
        inverse = np.zeros(256, dtype=np.uint8)
        for label_id, train_id in sorted(self.id_to_train_id.items(), reverse=True):
            if label_id >= 0:
                inverse[train_id] = label_id  # the smallest label id of each train id wins
        return inverse[np.asarray(train_ids, dtype=np.uint8)]


def class_presence(train_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) bool: which classes 0..C-1 the label map `train_ids` (uint8 (H, W), 255 = ignore) holds."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.uint8).ravel(), minlength=256)
    return counts[:num_classes] > 0


def names_from_json(data, where: str) -> tuple[list[str], list]:
    """(names, palette) from a classes file's parsed JSON (the three forms of the module docstring)."""
    palette = []
    if isinstance(data, dict) and ("names" in data or "id2label" in data):
        palette = data.get("palette") or []
        if not isinstance(palette, list):
            raise UserError(f"{where}: `palette` must be a list of [r, g, b] or '#rrggbb', one per class")
        data = data["names"] if "names" in data else data["id2label"]
    if isinstance(data, list):
        return data, palette
    if isinstance(data, dict):  # id2label: {"0": "wall", ...}, ids 0..C-1 each once
        try:
            by_id = {int(k): v for k, v in data.items()}
        except ValueError:
            raise UserError(f"{where}: id2label keys must be class indices (\"0\", \"1\", ...), got "
                            f"{sorted(data)[:3]}") from None
        if sorted(by_id) != list(range(len(by_id))):
            missing = sorted(set(range(max(by_id, default=-1) + 1)) - set(by_id))[:5]
            raise UserError(f"{where}: id2label must number the classes 0..C-1 without gaps (missing {missing}); "
                            "fix the file")
        return [by_id[i] for i in range(len(by_id))], palette
    raise UserError(f"{where}: expected a JSON list of class names, an id2label object {{\"0\": \"wall\", ...}} "
                    "or {\"names\": [...], \"palette\": [...]}")


def read_classes_file(path: str | Path) -> ClassTable:
    """A classes file (`--classes FILE`, the module docstring's forms) -> ClassTable; UserError naming it."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: classes file not found; pass --classes FILE (a JSON list of names or "
                        "id2label.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON classes file ({e}); fix or replace it") from None
    names, palette = names_from_json(data, str(path))
    return ClassTable(tuple(names), tuple(palette), source=str(path))


def check_count(table: ClassTable, count: int, other: str) -> None:
    """Refuse a table whose class count disagrees with `other` (the data's own classes, a checkpoint)."""
    if table.num_classes != count:
        raise UserError(f"{table.source}: {table.num_classes} classes, but {other} has {count}; use a classes "
                        "file that lists exactly the dataset's classes")
