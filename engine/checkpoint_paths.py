"""Checkpoint folders by path, torch-free: their names, which are complete, and the folder a user means
(`resolve_checkpoint`). evaluate.py and predict.py resolve their checkpoint arguments with it before torch loads
(utils.fileio.parse_args_first), so a mistyped path answers at once; engine.checkpoint re-exports every name.

    RUN/checkpoints/epoch_XXXX/   model.safetensors, meta.json, config.json (+ the accelerate state)
"""
from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path

from utils.fileio import UserError
from utils.jsonl import METRICS_JSONL

CHECKPOINTS = "checkpoints"
WEIGHTS_NAME = "model.safetensors"
CHECKSUMS = "checksums"  # meta.json key: {file name: sha256 hex digest} of the checkpoint's other files
CHECKPOINT_NAME = re.compile(r"^epoch_(\d{4,})$")  # a checkpoint folder; the group is its epoch


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"epoch_{epoch:04d}"


# meta.json fields the code reads -> (what they must be, check); others (variant, loss, lambdas) are only shown
_META_FIELDS = {
    "epoch": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "step": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "num_processes": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "nonfinite_skipped": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "training_state": ("true or false", lambda v: isinstance(v, bool)),
    "saved_at": ("a date string", lambda v: isinstance(v, str)),
    "wandb_run_id": ("a string or null", lambda v: v is None or isinstance(v, str)),
    CHECKSUMS: ("an object of file name -> sha256 hex digest",
                lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values())),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_meta(ckpt: str | Path) -> tuple[dict | None, str | None]:
    """(meta.json's dict, None), or (None, why it cannot be used: absent, unreadable, no `epoch`, or a field the
    code reads (`_META_FIELDS`) of the wrong type)."""
    try:
        meta = json.loads((Path(ckpt) / "meta.json").read_text())
    except FileNotFoundError:
        return None, "no meta.json"
    except (OSError, ValueError) as e:
        return None, f"meta.json is unreadable ({type(e).__name__})"
    if not isinstance(meta, dict) or "epoch" not in meta:
        return None, "meta.json has no `epoch`"
    for key, (must_be, ok) in _META_FIELDS.items():
        if key in meta and not ok(meta[key]):
            return None, f"meta.json's `{key}` is {json.dumps(meta[key])}, not {must_be}"
    return meta, None


def meta_problem(ckpt: str | Path) -> str | None:
    """Why a checkpoint's meta.json cannot be used (e.g. 'meta.json's `epoch` is "x", not an integer >= 0'), or
    None when it can."""
    return _load_meta(ckpt)[1]


def read_meta(ckpt: str | Path) -> dict | None:
    """meta.json of a checkpoint folder, or None when absent, unreadable or with an invalid field (`meta_problem`
    says which): not a complete checkpoint."""
    return _load_meta(ckpt)[0]


def checkpoint_folders(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of every RUN/checkpoints/epoch_XXXX folder, complete or not, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), path) for path in folder.iterdir()
                  if (m := CHECKPOINT_NAME.match(path.name)) and path.is_dir())


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders (name epoch_XXXX, weights and meta present), oldest first."""
    return [path for _, path in checkpoint_folders(run_dir)
            if (path / WEIGHTS_NAME).is_file() and read_meta(path) is not None]


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder a user means by `path`: a checkpoint folder as is, a run folder (or its
    checkpoints/ folder) its latest complete checkpoint. A path that does not exist is a UserError listing the
    nearest existing checkpoints (difflib over those under its nearest existing parent folder)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint or run folder{_nearest_checkpoints(path)}")
    run = path.parent if path.name == CHECKPOINTS else path
    started = (run / CHECKPOINTS).is_dir() or (run / METRICS_JSONL).is_file()  # a run, before its first checkpoint too
    if path.is_dir() and not CHECKPOINT_NAME.match(path.name) and started:
        complete = list_checkpoints(run)
        folders = checkpoint_folders(run)
        if not complete and folders:  # trained, but its checkpoints are damaged: name the newest and why
            newest = folders[-1][1]
            why = meta_problem(newest) if (newest / WEIGHTS_NAME).is_file() else f"no {WEIGHTS_NAME}"
            raise UserError(f"{run}: a run folder without a complete checkpoint (the newest, {newest}: {why}); a "
                            f"checkpoint needs its {WEIGHTS_NAME} and a valid meta.json: copy it again, or evaluate "
                            "the run once training has saved a complete one")
        if not complete:
            raise UserError(f"{run}: a run folder without a complete checkpoint yet (RUN/{CHECKPOINTS}/epoch_XXXX "
                            "holding model.safetensors and meta.json); train it first")
        return complete[-1]
    return path


def _nearest_checkpoints(path: Path, count: int = 3) -> str:
    """'; nearest existing checkpoints: A, B' for a `path` that does not exist ('' if none is near). A complete
    checkpoint is as near as the closer of itself and its run folder (difflib's ratio), so a mistyped run folder
    finds it; within a run the newest comes first. Searched: runs up to 5 folders below the nearest existing
    parent folder of `path` (runs/<dataset>/<backbone>/<run> from the folder holding runs/)."""
    parent = next((p for p in path.absolute().parents if p.is_dir()), None)
    if parent is None or parent == Path("/"):
        return ""
    folders = sorted(f for depth in range(6) for f in parent.glob("/".join(["*"] * depth + [CHECKPOINTS])))
    found = [ckpt for folder in folders for ckpt in reversed(list_checkpoints(folder.parent))]
    given = str(path) if path.is_absolute() else os.path.normpath(path)
    shown = [str(c) if path.is_absolute() else os.path.relpath(c) for c in found]

    def nearness(text: str) -> float:
        run = str(Path(text).parent.parent)
        return max(difflib.SequenceMatcher(None, given, t).ratio() for t in (text, run))
    scored = sorted(((nearness(t), t) for t in shown), key=lambda st: -st[0])
    near = [t for score, t in scored[:count] if score >= 0.6]
    return f"; nearest existing checkpoints: {', '.join(near)}" if near else ""
