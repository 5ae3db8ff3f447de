"""Cityscapes through HF `datasets`: a builder that lists frames (paths, not pixels) in a stable order.

The folder layout is the official one, spelled once in `data_utils.layout` (also what `data_utils.synthetic`
writes): <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png, and the labels under <root>/gtFine/.

`datasets` 5.x has no loading scripts, so `CityscapesBuilder` is used by direct instantiation:

    >>> builder = CityscapesBuilder(data_root="/data/cityscapes", splits=("train",), cache_dir="/tmp/hf")
    >>> builder.download_and_prepare()
    >>> ds = builder.as_dataset("train")      # columns: name, city, image_path, label_path
    >>> ds = load_split("/data/cityscapes", "train")   # the same in one call

The builder scans the folders when it is constructed, so a missing root, a missing split or an image
without its label (and vice versa) is reported at once as a `UserError` naming the path. The cache key
contains the resolved root and a hash of the file list it found, so adding, removing or renaming frames
(or pointing at another root) builds a fresh table instead of returning a stale one. Only paths are
cached: the PNGs themselves are decoded by `data_utils.dataset.SegmentationDataset`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from data_utils.layout import IMAGE_DIR, IMAGE_SUFFIX, LABEL_DIR, LABEL_SUFFIX, image_path, label_path
from data_utils.paths import resolve_data_root  # noqa: F401 (re-exported)
from utils import UserError
from utils.bars import no_datasets_bars

FEATURES = datasets.Features(
    {
        "name": datasets.Value("string"),  # e.g. "frankfurt_000000_000294"
        "city": datasets.Value("string"),
        "image_path": datasets.Value("string"),  # absolute path of the *_leftImg8bit.png
        "label_path": datasets.Value("string"),  # absolute path of the *_gtFine_labelIds.png
    }
)


def _available_splits(root: Path) -> list[str]:
    return sorted(p.name for p in (root / IMAGE_DIR).iterdir() if p.is_dir())


def _scan_pngs(split_dir: Path, suffix: str) -> dict[str, tuple[str, Path]]:
    """name -> (city, path) for every `<city>/<name><suffix>` below `split_dir` (other files are ignored)."""
    found: dict[str, tuple[str, Path]] = {}
    for city_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        with os.scandir(city_dir) as entries:
            for entry in entries:
                if entry.name.endswith(suffix) and entry.is_file():
                    found[entry.name[: -len(suffix)]] = (city_dir.name, Path(entry.path))
    return found


def list_frames(root: Path, split: str) -> list[dict[str, str]]:
    """Pair every image of `split` with its labelIds file; sorted by name (city, sequence, frame).

    Raises `UserError` for a missing split folder, an empty split, or an image/label without its partner.
    """
    image_dir, label_dir = root / IMAGE_DIR / split, root / LABEL_DIR / split
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: split '{split}' not found; available splits: "
                        f"{', '.join(_available_splits(root)) or 'none'}")
    if not label_dir.is_dir():
        raise UserError(f"{label_dir}: labels for split '{split}' not found; unpack gtFine_trainvaltest.zip "
                        "into the dataset root")
    images, labels = _scan_pngs(image_dir, IMAGE_SUFFIX), _scan_pngs(label_dir, LABEL_SUFFIX)
    for name in sorted(images.keys() - labels.keys())[:1]:
        city, path = images[name]
        raise UserError(f"{path}: image has no label (expected {label_path(root, split, city, name)}); "
                        "restore the gtFine file or remove the image")
    for name in sorted(labels.keys() - images.keys())[:1]:
        city, path = labels[name]
        raise UserError(f"{path}: label has no image (expected {image_path(root, split, city, name)}); "
                        "restore the leftImg8bit file or remove the label")
    if not images:
        raise UserError(f"{image_dir}: split '{split}' holds no <city>/*{IMAGE_SUFFIX} files")
    return [
        {"name": name, "city": images[name][0], "image_path": str(images[name][1]),
         "label_path": str(labels[name][1])}
        for name in sorted(images)
    ]


def _file_list_hash(frames_by_split: dict[str, list[dict[str, str]]]) -> str:
    """Hash of exactly what the table stores: a changed file list gives a new cache entry."""
    h = hashlib.sha256()
    for split in sorted(frames_by_split):
        h.update(split.encode() + b"\0")
        for f in frames_by_split[split]:
            h.update(f["image_path"].encode() + b"\0" + f["label_path"].encode() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class CityscapesConfig(datasets.BuilderConfig):
    """Builder options. `file_list_hash` is filled in by the builder; it is part of the cache key."""

    data_root: str = ""
    splits: tuple[str, ...] = ()
    file_list_hash: str = ""


class CityscapesBuilder(datasets.GeneratorBasedBuilder):
    """`datasets` builder over a Cityscapes-layout folder; one example per frame, paths only.

    Args:
        data_root: the dataset root (None: `$CITYSCAPES_DATASET`).
        splits: the splits to prepare (default: every folder under leftImg8bit/). Only these are scanned and
            checked, so a root whose test split lacks labels can still serve train and val.
        cache_dir: where the Arrow tables go (default: the HF datasets cache, `$HF_DATASETS_CACHE`).
    """

    BUILDER_CONFIG_CLASS = CityscapesConfig
    VERSION = datasets.Version("1.0.0")

    def __init__(self, data_root: str | os.PathLike | None = None, splits: tuple[str, ...] | list[str] | None = None,
                 cache_dir: str | os.PathLike | None = None, **kwargs):
        root = resolve_data_root(data_root)
        splits = tuple(splits) if splits else tuple(_available_splits(root))
        if not splits:
            raise UserError(f"{root / IMAGE_DIR}: holds no split folders (train/, val/, test/)")
        # Scanning here (not in _split_generators) makes bad input fail with a plain UserError instead of
        # a DatasetGenerationError, and gives the file-list hash that keys the cache.
        self._frames = {split: list_frames(root, split) for split in splits}
        super().__init__(cache_dir=None if cache_dir is None else str(cache_dir), data_root=str(root),
                         splits=splits, file_list_hash=_file_list_hash(self._frames), version=self.VERSION,
                         **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Cityscapes frames (paths to leftImg8bit image and gtFine labelIds)",
            features=FEATURES,
            homepage="https://www.cityscapes-dataset.com",
        )

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=split, gen_kwargs={"split": split}) for split in self.config.splits]

    def _generate_examples(self, split: str):
        for index, frame in enumerate(self._frames[split]):
            yield index, frame


def load_split(data_root: str | os.PathLike | None, split: str,
               cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """One split as a `datasets.Dataset` with columns name, city, image_path, label_path (sorted by name).

    Example:
        >>> ds = load_split(None, "val")            # root from $CITYSCAPES_DATASET
        >>> ds[0]["name"], len(ds)
        ('frankfurt_000000_000294', 500)
    """
    builder = CityscapesBuilder(data_root=data_root, splits=(split,), cache_dir=cache_dir)
    with no_datasets_bars():  # "Generating val split: ..." for a file list built in a second
        builder.download_and_prepare()
    return builder.as_dataset(split=split)
