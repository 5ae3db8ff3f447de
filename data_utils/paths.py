"""Where the data flags point, checked without torch or `datasets`: the Cityscapes root, an HF dataset folder and a
classes file. Entry scripts run `check_data_paths` before their heavy imports (utils.fileio.parse_args_first), so
a mistyped path answers in a second; the loaders (data_utils.cityscapes, data_utils.hf, data_utils.source) call the
same functions, so the message is the same whichever stage finds the problem.
"""
from __future__ import annotations

import os
from pathlib import Path

from data_utils.layout import IMAGE_DIR, LABEL_DIR
from utils.fileio import UserError

ENV_VAR = "CITYSCAPES_DATASET"  # cityscapesScripts' convention for the dataset root


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The dataset root: the argument if given, else `$CITYSCAPES_DATASET`, else a `UserError`.

    The folder must exist and hold `leftImg8bit/` and `gtFine/`. Returns the resolved absolute path.
    """
    if data_root is None or str(data_root) == "":
        env = os.environ.get(ENV_VAR, "")
        if not env:
            raise UserError(f"no Cityscapes root given: pass --data-root DIR or set {ENV_VAR}=DIR "
                            "(the folder holding leftImg8bit/ and gtFine/)")
        data_root = env
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: Cityscapes root does not exist; pass --data-root DIR or set {ENV_VAR} "
                        "to the folder holding leftImg8bit/ and gtFine/")
    for sub in (IMAGE_DIR, LABEL_DIR):
        if not (root / sub).is_dir():
            raise UserError(f"{root / sub}: missing; a Cityscapes root holds leftImg8bit/ and gtFine/ "
                            "(unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there)")
    return root


def hf_dataset_kind(name_or_path: str) -> str:
    """What `--hf-dataset name_or_path` is: "saved" (a save_to_disk folder), "parquet" (a folder of parquet files)
    or "hub" (a hub dataset name: no such local path, and not spelled as a path). Anything else is a UserError."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: not a folder; pass a folder written by save_to_disk or holding parquet files")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "saved"
        if next(path.rglob("*.parquet"), None) is not None:
            return "parquet"
        raise UserError(f"{path}: holds neither a save_to_disk dataset (dataset_dict.json, state.json) nor parquet "
                        "files; pass such a folder or a hub dataset name")
    if name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path:
        raise UserError(f"{path}: no such folder; pass an existing dataset folder or a hub dataset name")
    return "hub"


def check_data_paths(data_root: str = "", hf_dataset: str = "", classes_file: str = "",
                     generated: bool = False) -> None:
    """The cheap part of loading the data flags: the dataset's folder (`--hf-dataset`, else `--data-root` or
    $CITYSCAPES_DATASET; not with `generated`, a demo dataset made on first use) and the classes file (read
    whole: a small JSON file). What needs the data itself (the splits, the frames, the class count of an HF
    dataset) is checked when it is loaded."""
    if hf_dataset and not generated:
        hf_dataset_kind(hf_dataset)
    elif not generated:
        resolve_data_root(data_root)
    if classes_file:
        from data_utils.classes import read_classes_file  # numpy only

        read_classes_file(classes_file)
