"""Which dataset a run reads and what its classes are: a Cityscapes-layout folder or an HF dataset (`DataSource`).

train.py, evaluate.py (through `engine.setup.data_source`) and precompute_sdt.py build one `DataSource` from
their flags; `classes()` resolves the class table and `frames(split, classes)` lists a split's frames for
`SegmentationDataset`. The class table comes from, in this order:
  1. `class_names` (+ `class_palette`): the names a run's config recorded (or given on the command line);
  2. `classes_file` (`--classes FILE`, `data_utils.classes.read_classes_file`);
  3. the HF dataset's own (`data_utils.hf.dataset_classes`: a ClassLabel, or id2label.json beside it);
  4. Cityscapes' official table, for a Cityscapes-layout folder.
A Cityscapes-layout folder uses the official labelIds -> train-id map unless a classes file or other names are
given; then its label PNGs hold class indices, as an HF dataset's labels do.
"""
from __future__ import annotations

from dataclasses import dataclass

from data_utils.classes import ClassTable, check_count, read_classes_file
from data_utils.dataset import PathFrames
from data_utils.labels import CITYSCAPES
from utils import UserError


@dataclass(frozen=True)
class DataSource:
    """The dataset flags of train.py (`TrainConfig`'s data group) that say where frames and classes come from."""

    data_root: str = ""  # Cityscapes-layout root ('' = $CITYSCAPES_DATASET); unused with hf_dataset
    hf_dataset: str = ""  # save_to_disk folder, parquet folder or hub name ('' = the Cityscapes folder)
    image_column: str = "image"
    label_column: str = "label"
    reduce_labels: bool = False
    classes_file: str = ""
    class_names: tuple[str, ...] = ()
    class_palette: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return self.hf_dataset or self.data_root or "$CITYSCAPES_DATASET"

    @property
    def one_frame_size(self) -> bool:
        """Whether every frame has one size (a Cityscapes folder); an HF dataset's frames may differ."""
        return not self.hf_dataset

    def _hf_split(self, split: str):
        from data_utils.hf import open_hf_dataset, select_split

        return select_split(open_hf_dataset(self.hf_dataset), split, self.hf_dataset)

    def classes(self, split: str = "train") -> ClassTable:
        """The class table (see the module docstring); `split` is the one whose features are read."""
        if not self.hf_dataset and not self.classes_file and self.class_names in ((), CITYSCAPES.names):
            return CITYSCAPES
        own = None
        if self.hf_dataset:
            from data_utils.hf import check_columns, dataset_classes

            ds = self._hf_split(split)
            check_columns(ds, self.image_column, self.label_column, f"{self.hf_dataset} [{split}]")
            own = dataset_classes(self.hf_dataset, ds, self.label_column, self.reduce_labels)
        if self.class_names:
            table = ClassTable(tuple(self.class_names), tuple(self.class_palette), source="the config's class_names")
        elif self.classes_file:
            table = read_classes_file(self.classes_file)
        elif own is not None:
            return own
        else:
            raise UserError(f"{self.hf_dataset}: the dataset names no classes (no ClassLabel in column "
                            f"'{self.label_column}', no id2label.json beside it); pass --classes FILE (a JSON list "
                            "of names or id2label.json)")
        if own is not None:
            check_count(table, own.num_classes, f"the dataset ({own.source})")
        return table

    def frames(self, split: str, classes: ClassTable):
        """The frames of `split` for `SegmentationDataset`: `PathFrames` or `data_utils.hf.HFFrames`."""
        if self.hf_dataset:
            from data_utils.hf import HFFrames

            return HFFrames(self._hf_split(split), self.image_column, self.label_column, classes,
                            self.reduce_labels, split, f"{self.hf_dataset} [{split}]")
        from data_utils.cityscapes import load_split, resolve_data_root

        return PathFrames(load_split(resolve_data_root(self.data_root or None), split), classes)
