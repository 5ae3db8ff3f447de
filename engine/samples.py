"""Prediction samples: the predictions of a fixed sample of K val images, kept beside each checkpoint's results so
runs compare image for image (the viewer's image panel and W&B's masks read them). Torch-free (numpy + PIL):
report/ imports it.

Files (every one written atomically; an `index.json` is written last, so its presence means a complete folder):

    RUN/samples/index.json                       the run's sample set, written once (again only if the names change)
        {"split": "val", "names": [K names, in selection order], "class_names": [...], "palette": [[r, g, b], ...],
         "ignore_index": 255, "num_frames": N (the split's size), "files": {name: {"image": "<stem>.jpg",
         "label": "<stem>_gt.png"}}, "sha256": {name: {"image": hex, "label": hex}}}
    RUN/samples/<stem>.jpg                       the image, JPEG quality 90, full size
    RUN/samples/<stem>_gt.png                    the ground truth: train ids as a P-mode PNG
    RUN/checkpoints/epoch_0010.samples/          beside epoch_0010.results.json (`samples_dir`); and
    RUN/checkpoints/epoch_0010.inference.<mode>.samples/   beside that mode's results file
        index.json  {"split", "names": [...], "files": {name: "<stem>.png"}, "sha256": {name: hex of the PNG}}
        <stem>.png  the prediction: train ids as a P-mode PNG

A label PNG (prediction or ground truth) is mode "P" at the label's full resolution: pixel value = train id
(class index), palette = the class table's colours, the ignore index (255) black; so it opens coloured in any
image viewer and decodes to train ids with `np.array(Image.open(path))`. A 1024x2048 Cityscapes frame takes
~15-20 KB as ground truth, ~60 KB with 1% of its pixels set to random classes (at most 150 KB:
tests/test_samples.py checks a real frame). `<stem>` is the name made safe for a file name (`safe_stem`: names
may contain '/').

The sample (`choose_samples`) is a pure function of the split's names and the classes each frame's label holds,
so every run of a study, trained or evaluated anywhere, keeps the same images. A checkpoint's names are the first
K of RUN/samples/'s names, in the same order (fewer when evaluated with a smaller --samples).

    names = choose_samples(val_names, presence, k=8)                    # presence: (N, C) bool
    write_sample_set(run_dir, "val", names, class_names, palette, read_frame)
    sink = SampleSink(names)   # engine.evaluation.evaluate_model(..., on_predictions=sink)
    write_predictions(results_path, "val", sink.predictions, palette)
    run = read_sample_set(run_dir); run.image(name), run.label(name)     # uint8 (H, W, 3), (H, W)
    ckpt = read_predictions(results_path); ckpt.pred(name)              # uint8 (H, W)

A missing or corrupt file makes the readers raise one UserError naming the file and the command that remakes it
(`python evaluate.py CKPT` fills in a checkpoint's samples and the run's sample set).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.results_format import RESULTS_SUFFIX
from utils.console import plural
from utils.conventions import IGNORE_INDEX
from utils.fileio import UserError, atomic_write_bytes, atomic_write_json

DEFAULT_SAMPLES = 8  # K, TrainConfig.samples and evaluate.py --samples
SAMPLES_SUFFIX = ".samples"  # <checkpoint>[.inference.<mode>].samples/ beside the results file
RUN_SAMPLES_DIR = "samples"  # RUN/samples/: the images and ground truth of the sample
INDEX_NAME = "index.json"
JPEG_QUALITY = 90

# ----------------------------------------------------------------------------------------------- paths


def samples_dir(results_path: str | Path) -> Path:
    """RUN/checkpoints/epoch_0010.results.json -> RUN/checkpoints/epoch_0010.samples (and
    epoch_0010.inference.<mode>.results.json -> epoch_0010.inference.<mode>.samples)."""
    results_path = Path(results_path)
    if not results_path.name.endswith(RESULTS_SUFFIX):
        raise ValueError(f"{results_path}: not a results file (*{RESULTS_SUFFIX})")
    return results_path.with_name(results_path.name[: -len(RESULTS_SUFFIX)] + SAMPLES_SUFFIX)


def run_samples_dir(run_dir: str | Path) -> Path:
    """RUN -> RUN/samples: the run's sample set (images and ground truth)."""
    return Path(run_dir) / RUN_SAMPLES_DIR


def safe_stem(name: str) -> str:
    """A file stem for frame `name`: the name itself when it is made of [A-Za-z0-9._-] (Cityscapes'
    "frankfurt_000000_000294"), else those characters kept, the others as "_", and 8 hex digits of the name's
    sha256 appended, so two names never share a stem ("a/b" and "a_b" stay apart)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if stem == name and name and not name.startswith("."):
        return name
    return f"{stem.lstrip('.')}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def _checkpoint_of(results_path: Path) -> Path:
    """RUN/checkpoints/epoch_0010[.inference.<mode>].results.json -> RUN/checkpoints/epoch_0010."""
    return results_path.with_name(results_path.name.split(".", 1)[0])


def _remake_checkpoint(results_path: Path) -> str:
    mode = "" if ".inference." not in results_path.name else " with the same --slide/--flip/--scales flags"
    return f"remake it with `python evaluate.py {_checkpoint_of(results_path)}`{mode}"


def _remake_run(run_dir: Path) -> str:
    return (f"remake it with `python evaluate.py {run_dir}` (it evaluates the run's latest checkpoint and writes "
            f"{RUN_SAMPLES_DIR}/ when missing)")

# ------------------------------------------------------------------------------------------- the choice


def name_hash(name: str) -> str:
    """The tie-break of `choose_samples`: the hex sha256 of the name (UTF-8)."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def choose_samples(names: Sequence[str], presence: np.ndarray, k: int = DEFAULT_SAMPLES) -> list[str]:
    """The K sample names of a split, spread over the classes present: greedy set cover.

    Each pick is the frame adding the most classes not yet covered by the earlier picks; ties go to the smallest
    `name_hash`. When no remaining frame adds a class (all present classes covered), coverage starts again from
    empty, so the next picks spread over the classes again. A pure function of (names, presence): every run of a
    study keeps the same images, and the first K' < K names are the choice for K' (a smaller --samples reuses a
    prefix of the run's sample set).

    Args:
        names: the split's frame names (N, unique).
        presence: (N, C) bool, presence[i, c]: class c occurs in frame i's label
            (`data_utils.classes.class_presence`).
        k: how many (all N when N < k).
    Returns the chosen names in selection order.
    """
    presence = np.asarray(presence, dtype=bool)
    if presence.shape[0] != len(names):
        raise ValueError(f"presence has {plural(presence.shape[0], 'row')} for {plural(len(names), 'name')}")
    order = sorted(range(len(names)), key=lambda i: name_hash(names[i]))  # argmax's first max = smallest hash
    ranked = presence[order]
    available = np.ones(len(names), dtype=bool)
    covered = np.zeros(presence.shape[1], dtype=bool)
    chosen = []
    for _ in range(min(k, len(names))):
        gains = np.where(available, (ranked & ~covered).sum(axis=1), -1)
        if gains.max() == 0:  # every class the remaining frames hold is covered: a new round
            covered[:] = False
            gains = np.where(available, ranked.sum(axis=1), -1)
        pick = int(np.argmax(gains))
        chosen.append(names[order[pick]])
        available[pick] = False
        covered |= ranked[pick]
    return chosen

# ------------------------------------------------------------------------------------------- encoding


def encode_label_png(train_ids: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """uint8 (H, W) train ids -> P-mode PNG bytes, `palette` for the classes, every other value black."""
    train_ids = np.asarray(train_ids)
    if train_ids.ndim != 2 or train_ids.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) map of train ids, got {train_ids.dtype} {train_ids.shape}")
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    image = Image.fromarray(train_ids)  # mode L; putpalette makes it P with the same values
    image.putpalette(colours.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def encode_jpeg(image_rgb: np.ndarray) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes (quality JPEG_QUALITY, full size)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image_rgb, dtype=np.uint8)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

# -------------------------------------------------------------------------------------------- writing


def write_predictions(results_path: str | Path, split: str, predictions: dict[str, np.ndarray],
                      palette: Sequence[Sequence[int]], names: Sequence[str] | None = None) -> Path:
    """Write `predictions` ({name: uint8 (H, W) train ids}) to `samples_dir(results_path)`; returns the folder.

    `names` gives their order (default: the dict's); the PNGs first, index.json last. PNGs of names no longer
    in the sample are removed."""
    folder = samples_dir(results_path)
    names = list(predictions if names is None else names)
    files, digests = {}, {}
    for name in names:
        data = encode_label_png(predictions[name], palette)
        files[name], digests[name] = f"{safe_stem(name)}.png", sha256_hex(data)
        atomic_write_bytes(folder / files[name], data)
    atomic_write_json(folder / INDEX_NAME, {"split": split, "names": names, "files": files, "sha256": digests})
    _remove_others(folder, set(files.values()))
    return folder


def _remove_others(folder: Path, keep: set[str]) -> None:
    """Delete the image files of `folder` not in `keep` (left from an earlier, different sample)."""
    for path in folder.iterdir():
        if path.suffix in (".png", ".jpg") and path.name not in keep:
            path.unlink(missing_ok=True)


def write_sample_set(run_dir: str | Path, split: str, names: Sequence[str], class_names: Sequence[str],
                     palette: Sequence[Sequence[int]], read_frame: Callable[[str], tuple[np.ndarray, np.ndarray]],
                     ignore_index: int = IGNORE_INDEX, num_frames: int | None = None) -> bool:
    """Write RUN/samples/ for `names` unless it already holds exactly them (split, names and classes as given,
    every file intact); returns whether it wrote.

    `read_frame(name)` gives ((H, W, 3) uint8 RGB image, (H, W) uint8 train ids) of a frame (called only when
    writing); `num_frames`: the split's size (default len(names)), so a reader knows a sample of fewer than K
    names is the whole split."""
    folder = run_samples_dir(run_dir)
    names, class_names = list(names), list(class_names)
    palette = [list(map(int, c)) for c in palette]
    try:
        current = read_sample_set(run_dir)
        if (current.split, current.names, current.class_names, current.palette) == (split, names, class_names,
                                                                                     palette):
            return False
    except UserError:
        pass  # missing or corrupt: (re)write
    files, digests = {}, {}
    for name in names:
        image, label = read_frame(name)
        stem = safe_stem(name)
        files[name] = {"image": f"{stem}.jpg", "label": f"{stem}_gt.png"}
        encoded = {"image": encode_jpeg(image), "label": encode_label_png(label, palette)}
        digests[name] = {kind: sha256_hex(data) for kind, data in encoded.items()}
        for kind, data in encoded.items():
            atomic_write_bytes(folder / files[name][kind], data)
    atomic_write_json(folder / INDEX_NAME, {"split": split, "names": names, "class_names": class_names,
                                            "palette": palette, "ignore_index": int(ignore_index),
                                            "num_frames": int(num_frames or len(names)), "files": files,
                                            "sha256": digests})
    _remove_others(folder, {f for entry in files.values() for f in entry.values()})
    return True


class SampleSink:
    """An `engine.evaluation.PredictionSink` keeping the predictions of the sample's names only.

        >>> sink = SampleSink(names)
        >>> evaluate_model(model, loader, accelerator, on_predictions=sink)
        >>> write_predictions(results_path, split, sink.gather(accelerator), palette, names)

    Each process keeps the sample frames of its own batches (`predictions`: {name: uint8 (H, W)});
    `gather(accelerator)` (called on every process) returns all of them on every process.
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._wanted = set(self.names)
        self.predictions: dict[str, np.ndarray] = {}

    def __call__(self, names: list[str], images, pred_train_ids) -> None:
        for index, name in enumerate(names):
            if name in self._wanted:
                self.predictions[name] = np.array(pred_train_ids[index], dtype=np.uint8)  # a copy, off the batch

    def gather(self, accelerator) -> dict[str, np.ndarray]:
        """Every process's predictions, on every process (one gather_object; a no-op on one process)."""
        if accelerator.num_processes == 1:
            return dict(self.predictions)
        from accelerate.utils import gather_object  # lazy: this module stays torch-free
        gathered = gather_object([list(self.predictions.items())])
        return {name: pred for part in gathered for name, pred in part}


# -------------------------------------------------------------------------------------------- reading

def _read_index(path: Path, remake: str, keys: tuple[str, ...]) -> dict:
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {remake}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); {remake}") from None
    if not isinstance(index, dict) or any(key not in index for key in keys):
        raise UserError(f"{path}: not a samples index (needs {', '.join(keys)}); {remake}")
    names = index["names"]
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
            and all(n in index["files"] and n in index["sha256"] for n in names)):
        raise UserError(f"{path}: `names` must list unique names, each with its file and sha256; {remake}")
    return index


def _checked_file(path: Path, digest: str, remake: str) -> Path:
    """`path` if it exists with sha256 `digest`, else a UserError naming it."""
    try:
        data = path.read_bytes()
    except OSError:
        raise UserError(f"{path}: missing or unreadable; {remake}") from None
    if sha256_hex(data) != digest:
        raise UserError(f"{path}: corrupt (its sha256 differs from {path.parent / INDEX_NAME}'s); {remake}")
    return path


def _decode(path: Path, mode: str, remake: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode != mode:
                raise UserError(f"{path}: image mode {image.mode}, expected {mode}; {remake}")
            return np.array(image)
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot decode ({e}); {remake}") from None


@dataclass(frozen=True)
class RunSamples:
    """A run's sample set (`read_sample_set`): the images and ground truth of `names`.

    paths[name] = {"image": Path of the JPEG, "label": Path of the ground-truth PNG}."""
    dir: Path
    split: str
    names: list[str]
    class_names: list[str]
    palette: list[list[int]]
    ignore_index: int
    num_frames: int  # the split's size: fewer names than K means the whole split
    paths: dict[str, dict[str, Path]]
    remake: str

    def image(self, name: str) -> np.ndarray:
        """uint8 (H, W, 3) RGB."""
        return _decode(self.paths[name]["image"], "RGB", self.remake)

    def label(self, name: str) -> np.ndarray:
        """uint8 (H, W) train ids (ignore = `ignore_index`)."""
        return _decode(self.paths[name]["label"], "P", self.remake)


@dataclass(frozen=True)
class CheckpointSamples:
    """One evaluation's sample predictions (`read_predictions`); paths[name] = Path of the PNG."""
    dir: Path
    split: str
    names: list[str]
    paths: dict[str, Path]
    remake: str

    def pred(self, name: str) -> np.ndarray:
        """uint8 (H, W) predicted train ids."""
        return _decode(self.paths[name], "P", self.remake)


def read_sample_set(run_dir: str | Path) -> RunSamples:
    """RUN/samples/, every file checked against index.json's sha256; UserError (file + remake command) if
    anything is missing or corrupt."""
    run_dir = Path(run_dir)
    folder, remake = run_samples_dir(run_dir), _remake_run(run_dir)
    index_path = folder / INDEX_NAME
    index = _read_index(index_path, remake, ("split", "names", "class_names", "palette", "ignore_index", "files",
                                             "sha256"))
    paths = {}
    try:
        for name in index["names"]:
            paths[name] = {kind: _checked_file(folder / index["files"][name][kind], index["sha256"][name][kind],
                                               remake) for kind in ("image", "label")}
        palette = [[int(v) for v in colour] for colour in index["palette"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{index_path}: malformed `files`, `sha256` or `palette`; {remake}") from None
    return RunSamples(dir=folder, split=str(index["split"]), names=list(index["names"]),
                      class_names=list(index["class_names"]), palette=palette,
                      ignore_index=int(index["ignore_index"]),
                      num_frames=int(index.get("num_frames", len(index["names"]))), paths=paths, remake=remake)


def read_predictions(results_path: str | Path) -> CheckpointSamples:
    """The sample predictions beside `results_path` (`samples_dir`), every PNG checked against index.json's
    sha256; UserError (file + remake command) if anything is missing or corrupt."""
    results_path = Path(results_path)
    folder, remake = samples_dir(results_path), _remake_checkpoint(results_path)
    index_path = folder / INDEX_NAME
    index = _read_index(index_path, remake, ("split", "names", "files", "sha256"))
    try:
        paths = {name: _checked_file(folder / index["files"][name], index["sha256"][name], remake)
                 for name in index["names"]}
    except (KeyError, TypeError):
        raise UserError(f"{index_path}: malformed `files` or `sha256`; {remake}") from None
    return CheckpointSamples(dir=folder, split=str(index["split"]), names=list(index["names"]), paths=paths,
                             remake=remake)
