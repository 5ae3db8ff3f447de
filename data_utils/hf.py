"""A second data source: an HF `datasets` dataset with an image column and a label column (transformers'
`examples/pytorch/semantic-segmentation` convention).

`--hf-dataset PATH_OR_NAME` is one of
  - a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (a single Dataset is the one split
    its info names, else "train");
  - a folder of parquet files (splits from the file names, as `datasets` infers them: train-*.parquet, ...);
  - a hub name (`load_dataset(name)`; offline it fails in one line saying so).
The image column holds `Image` features; the label column `Image` features (a single-channel map of class
indices) or a 2-D integer array (`Array2D`, or nested `Sequence`s, possibly of a `ClassLabel`).

Classes (`dataset_classes`): a `ClassLabel` inside the label feature, else an `id2label.json` in or beside a
local dataset folder. `reduce_labels` applies the ADE20K convention of transformers' `do_reduce_labels`:
0 -> ignore, every other value - 1 (a ClassLabel's first name, the background, is then dropped).

Frames are decoded one row at a time in the DataLoader workers (`HFFrames.read`): the dataset stays memory-mapped
Arrow on disk and is never materialised in memory.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from data_utils.classes import ClassTable, names_from_json
from data_utils.paths import hf_dataset_kind
from utils import UserError
from utils.bars import no_datasets_bars
from utils.conventions import IGNORE_INDEX

ID2LABEL = "id2label.json"
_CLASSES_FIX = "give a classes file listing every class (--classes FILE)"
_REDUCE_FIX = f"{_CLASSES_FIX}, or --reduce-labels if 0 marks unlabelled pixels (ADE20K)"


def open_hf_dataset(name_or_path: str) -> datasets.DatasetDict:
    """The dataset's splits as a DatasetDict (see the module docstring for the three forms); UserError naming it."""
    kind = hf_dataset_kind(name_or_path)  # a path that cannot be a dataset: UserError
    path = Path(name_or_path).expanduser()
    if kind == "saved":
        _refuse_empty_saved_splits(path)  # datasets' load_from_disk fails on one with an IndexError
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot load the saved dataset ({e}); save it again with save_to_disk") from None
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({str(loaded.split or "train"): loaded})
        return loaded
    if kind == "parquet":
        try:
            with no_datasets_bars():  # "Generating train split: ..." for local files
                return datasets.load_dataset("parquet", data_dir=str(path))
        except ValueError as e:  # 'Instruction "validation" corresponds to no data!': a split of 0 rows
            empty = re.match(r'Instruction "(.+)" corresponds to no data', str(e))
            if empty is None:
                raise
            raise UserError(_empty_split(path, empty.group(1))) from None
    if datasets.config.HF_HUB_OFFLINE:
        raise UserError(f"{name_or_path}: no such local folder, and hub dataset names cannot be loaded offline "
                        "(HF_HUB_OFFLINE is set); load it once online, or save_to_disk it and pass the folder")
    try:
        return datasets.load_dataset(name_or_path)
    except (ConnectionError, OSError) as e:  # requests' ConnectionError and the hub's offline errors are OSErrors
        raise UserError(f"{name_or_path}: cannot load the hub dataset ({type(e).__name__}); offline or unreachable: "
                        "load it once online, or save_to_disk it and pass the folder") from None
    except datasets.exceptions.DatasetNotFoundError:
        raise UserError(f"{name_or_path}: no such local folder nor hub dataset; check the name") from None


def _empty_split(where, split: str) -> str:
    return (f"{where}: split '{split}' has no rows; add frames to it, or leave it out of the dataset and train and "
            "evaluate on splits that have frames (--train-split / --val-split)")


def _refuse_empty_saved_splits(path: Path) -> None:
    """A UserError naming the first split of a save_to_disk folder that holds no rows (its state.json lists no
    data files), which `datasets.load_from_disk` cannot load."""
    try:
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        names = None  # a single Dataset, or a broken file that load_from_disk reports
    for folder, split in ((path / n, n) for n in names) if isinstance(names, list) else ((path, "train"),):
        try:
            state = json.loads((folder / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("_data_files") == []:
            raise UserError(_empty_split(path, str(state.get("_split") or split)))


def select_split(splits: datasets.DatasetDict, split: str, where: str) -> datasets.Dataset:
    if split not in splits:
        raise UserError(f"{where}: split '{split}' not found; available splits: {', '.join(splits) or 'none'} "
                        "(--train-split / --val-split)")
    if len(splits[split]) == 0:
        raise UserError(_empty_split(where, split))
    return splits[split]


def _find_class_label(feature) -> datasets.ClassLabel | None:
    """A ClassLabel inside a (nested Sequence / list) label feature."""
    while True:
        if isinstance(feature, datasets.ClassLabel):
            return feature
        if isinstance(feature, datasets.Sequence):
            feature = feature.feature
        elif isinstance(feature, list) and len(feature) == 1:
            feature = feature[0]
        elif hasattr(feature, "feature"):  # datasets' List / LargeList
            feature = feature.feature
        else:
            return None


def check_columns(ds: datasets.Dataset, image_column: str, label_column: str, where: str) -> None:
    """Both columns present, the image an Image, the label an Image or a 2-D array; UserError naming the fix."""
    for column, flag in ((image_column, "--image-column"), (label_column, "--label-column")):
        if column not in ds.column_names:
            raise UserError(f"{where}: no column '{column}' (columns: {', '.join(ds.column_names)}); pass "
                            f"{flag} NAME")
    if not isinstance(ds.features[image_column], datasets.Image):
        raise UserError(f"{where}: column '{image_column}' holds {type(ds.features[image_column]).__name__}, not "
                        "images; pass the image column with --image-column")
    label = ds.features[label_column]
    if isinstance(label, datasets.ClassLabel) or isinstance(label, datasets.Value):
        raise UserError(f"{where}: column '{label_column}' holds one {type(label).__name__} per row, not a label "
                        "map; pass the segmentation-map column with --label-column")


def dataset_classes(name_or_path: str, ds: datasets.Dataset, label_column: str,
                    reduce_labels: bool) -> ClassTable | None:
    """The classes the dataset itself names: a ClassLabel in the label feature, else `id2label.json` in or beside
    the local folder; None when it names none."""
    class_label = _find_class_label(ds.features.get(label_column))
    if class_label is not None:
        names = class_label.names[1:] if reduce_labels else class_label.names
        return ClassTable(tuple(names), source=f"{name_or_path} (ClassLabel of column '{label_column}')")
    path = Path(name_or_path).expanduser()
    for candidate in (path / ID2LABEL, path.parent / ID2LABEL) if path.is_dir() else ():
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{candidate}: not a readable JSON id2label file ({e}); fix or replace it") from None
            names, palette = names_from_json(data, str(candidate))
            return ClassTable(tuple(names), tuple(palette), source=str(candidate))
    return None


def reduce_labels_(label: np.ndarray) -> np.ndarray:
    """transformers' do_reduce_labels: 0 -> 255 (ignore), v -> v - 1, 255 stays 255. In place for uint8."""
    label[label == 0] = IGNORE_INDEX
    label -= 1
    label[label == IGNORE_INDEX - 1] = IGNORE_INDEX  # what ignore became
    return label


class HFFrames:
    """The frames of one split of an HF dataset, decoded by row: the `read` that `SegmentationDataset` calls.

    Args:
        ds: the split (a memory-mapped `datasets.Dataset`; pickled by reference into the workers).
        image_column, label_column: the columns (checked by `check_columns`).
        classes: the class table; a label value that is neither a class nor ignore is a UserError.
        reduce_labels: the ADE20K convention (`reduce_labels_`).
        where: "<dataset> [<split>]", for messages. Frame names are "<split>_<row:06d>".
    """

    def __init__(self, ds: datasets.Dataset, image_column: str, label_column: str, classes: ClassTable,
                 reduce_labels: bool, split: str, where: str):
        check_columns(ds, image_column, label_column, where)
        self.ds = ds.select_columns([image_column, label_column])
        self.image_column, self.label_column = image_column, label_column
        self.classes, self.reduce_labels, self.where = classes, reduce_labels, where
        self.names = [f"{split}_{i:06d}" for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.names)

    def _where(self, index: int, column: str) -> str:
        return f"{self.where} row {index}, column '{column}'"

    def read_label(self, index: int, row: dict | None = None) -> np.ndarray:
        """(H, W) uint8 train ids of row `index`."""
        row = self.ds[index] if row is None else row
        value, where = row[self.label_column], self._where(index, self.label_column)
        if isinstance(value, Image.Image):
            if value.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise UserError(f"{where}: label image mode {value.mode}, expected a single-channel map of class "
                                "indices; an RGB (colour-coded) label must be converted to class indices first")
            label = np.array(value)
        else:
            label = np.asarray(value)
            if label.ndim != 2 or label.dtype.kind not in "iu":
                raise UserError(f"{where}: label is a {label.ndim}-D {label.dtype} array, expected a 2-D integer map "
                                "of class indices; pass the segmentation-map column with --label-column")
        if self.reduce_labels:
            label = reduce_labels_(label if label.dtype == np.uint8 else label.astype(np.int64))
        return self.classes.to_train_ids(label, where, fix=_CLASSES_FIX if self.reduce_labels else _REDUCE_FIX,
                                         shift=int(self.reduce_labels))

    def check(self, index: int, decode_label: bool = False) -> np.ndarray | None:
        """What `read` would refuse in row `index`'s label, with `decode_label` (an HF row has no header to read
        apart from its data: without it, nothing is checked here); returns the decoded train ids, or None."""
        return self.read_label(index) if decode_label else None

    def label_size(self, index: int) -> tuple[int, int]:
        """(H, W) of row `index`'s label (decodes it)."""
        return self.read_label(index).shape

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, 3) uint8 RGB image, (H, W) uint8 train ids, 255 = ignore) of row `index`."""
        row = self.ds[index]
        image = row[self.image_column]
        if image.mode != "RGB":
            if image.mode not in ("RGBA", "L", "LA", "P", "CMYK", "YCbCr"):
                raise UserError(f"{self._where(index, self.image_column)}: image mode {image.mode}, expected RGB")
            image = image.convert("RGB")
        image = np.array(image)
        train_ids = self.read_label(index, row)
        if image.shape[:2] != train_ids.shape:
            raise UserError(f"{self._where(index, self.label_column)}: label is {train_ids.shape[1]}x"
                            f"{train_ids.shape[0]} but its image is {image.shape[1]}x{image.shape[0]} (WxH); fix "
                            "the dataset row")
        return image, train_ids
