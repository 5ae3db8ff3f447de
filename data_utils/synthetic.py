"""Synthetic street scenes written in the exact Cityscapes layout: the embedded demo dataset (writers and CLI).

The scenes come from `data_utils.scene.render_scene` (what a frame shows: the street, its 19 train classes and
void ids). Every frame holds all 19 train classes: it is redrawn with the next sub-seed until it does.

Files, as in the real dataset (`data_utils.cityscapes` reads them unchanged):

    <out>/leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png     RGB
    <out>/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_labelIds.png       8-bit label ids
    <out>/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_instanceIds.png    16-bit: id*1000+k for
                                                                              instance classes, else id
    <out>/synthetic.json                                                      generation parameters

Frame i of a split depends only on (seed, split, i), so more frames never change the first ones.

    python -m data_utils.synthetic --out data/demo --train 24 --val 8 --height 256 --width 512 --seed 0

`--format hf` writes the same scenes as an HF `DatasetDict` (`save_to_disk`; splits "train" and "validation",
Image columns "image" and "label") with another class table: the 19 classes merged into the 8 `GROUPS`, labels in
the ADE20K convention (0 = unlabelled, group g = g + 1: read it with --reduce-labels), the names in
`<out>/id2label.json`, and two frame sizes (even rows height x width, odd rows `second_size`):

    python -m data_utils.synthetic --format hf --out data/demo-hf --train 24 --val 8 --height 128 --width 256

`--num-classes N` (with --format hf) keeps the 19 classes apart, spread over a table of N (`hf_classes`), as
ADE20K's 150 are: `--format hf --num-classes 150` holds classes 0, 7, ..., 126 under their Cityscapes names.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from data_utils.classes import class_presence
from data_utils.labels import CITYSCAPES
from data_utils.layout import INSTANCE_SUFFIX, image_path, label_path
from data_utils.scene import render_scene
from utils import UserError, atomic_write_json, fsync_dir, run_main
from utils.cli import ArgumentParser, shell_command
from utils.console import progress_columns
from utils.fileio import named_os_errors
from utils.conventions import IGNORE_INDEX

NUM_CLASSES = CITYSCAPES.num_classes  # 19: every frame shows them all

SPLITS = {"train": ("synthtown", 0), "val": ("synthcity", 1)}  # split -> (city, stream index for seeding)
FRAME_ID = 19  # the annotated frame of each Cityscapes snippet is its 20th (_000019)
MAX_ATTEMPTS = 25  # redraws until a frame shows all 19 classes
FORMAT_VERSION = 1
FORMATS = ("cityscapes", "hf")
HF_SPLITS = {"train": "train", "validation": "val"}  # HF split name -> the scene stream it is drawn from

# --format hf: the 19 Cityscapes train classes merged into 8 groups (Cityscapes' categories, vehicles split).
GROUPS: dict[str, tuple[str, ...]] = {
    "flat": ("road", "sidewalk"),
    "construction": ("building", "wall", "fence"),
    "object": ("pole", "traffic light", "traffic sign"),
    "nature": ("vegetation", "terrain"),
    "sky": ("sky",),
    "human": ("person", "rider"),
    "vehicle": ("car", "truck", "bus", "train"),
    "two-wheeler": ("motorcycle", "bicycle"),
}
GROUP_OF_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # Cityscapes train id -> group index (ignore stays)
for _g, _members in enumerate(GROUPS.values()):
    for _name in _members:
        GROUP_OF_TRAIN_ID[CITYSCAPES.names.index(_name)] = _g
assert (GROUP_OF_TRAIN_ID[:NUM_CLASSES] < len(GROUPS)).all()  # every train class is in a group


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """A rendered frame's label ids -> Cityscapes train ids (the renderer writes official ids only)."""
    return CITYSCAPES.to_train_ids(label_ids, "data_utils.scene.render_scene", fix="a renderer bug: report it")


def render_frame(seed: int, split: str, index: int, height: int = 256, width: int = 512):
    """Frame `index` of `split`, redrawn with the next sub-seed until all 19 train classes are visible.

    Returns (image (H, W, 3) uint8, label ids (H, W) uint8, instance ids (H, W) uint16); a pure function of
    its arguments.
    """
    stream = SPLITS[split][1]
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, stream, index, attempt])
        image, label_ids, inst = render_scene(height, width, rng)
        if class_presence(train_ids(label_ids), NUM_CLASSES).all():
            break
    return image, label_ids, inst  # at tiny sizes a class may stay hidden; the last attempt is kept


def frame_name(split: str, index: int) -> tuple[str, str]:
    city = SPLITS[split][0]
    return city, f"{city}_{index:06d}_{FRAME_ID:06d}"


def write_frame(root: Path, split: str, index: int, image, label_ids, inst) -> None:
    city, name = frame_name(split, index)
    paths = (image_path(root, split, city, name), label_path(root, split, city, name),
             label_path(root, split, city, name, INSTANCE_SUFFIX))
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(paths[0])
    Image.fromarray(label_ids, "L").save(paths[1])
    Image.fromarray(inst.astype(np.uint16)).save(paths[2])  # 16-bit PNG


def second_size(height: int, width: int) -> tuple[int, int]:
    """--format hf: the size of the odd rows, (1.25 height, 0.75 width) rounded to multiples of 8."""
    return 8 * round(1.25 * height / 8), 8 * round(0.75 * width / 8)


def hf_classes(num_classes: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The --format hf class table: (Cityscapes train id -> class index, 256 entries, 255 stays ignore; names).

    Without `num_classes`: the 8 GROUPS. With it (19..254): train id t -> class t * (num_classes // 19) under
    its Cityscapes name, the other classes named "unused k" (in no frame).
    """
    if num_classes is None:
        return GROUP_OF_TRAIN_ID, list(GROUPS)
    step = num_classes // NUM_CLASSES
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[:NUM_CLASSES] = np.arange(NUM_CLASSES) * step
    names = [f"unused {k}" for k in range(num_classes)]
    for train_id, name in enumerate(CITYSCAPES.names):
        names[train_id * step] = name
    return lut, names


def hf_label(label_ids: np.ndarray, class_of_train_id: np.ndarray = GROUP_OF_TRAIN_ID) -> np.ndarray:
    """Cityscapes label ids -> --format hf labels: class index + 1, 0 where the train id is ignore."""
    return class_of_train_id[train_ids(label_ids)] + np.uint8(1)  # 255 + 1 wraps to 0 (unlabelled)


def write_hf_dataset(root: Path, num_train: int, num_val: int, height: int, width: int, seed: int, bar, task,
                     num_classes: int | None = None) -> None:
    """The --format hf DatasetDict (see the module docstring) saved into `root`, plus id2label.json."""
    import datasets

    from utils.bars import no_datasets_bars

    class_of_train_id, names = hf_classes(num_classes)

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    splits = {}
    for split, count in (("train", num_train), ("validation", num_val)):
        rows = {"image": [], "label": []}
        for index in range(count):
            h, w = (height, width) if index % 2 == 0 else second_size(height, width)
            image, label_ids, _ = render_frame(seed, HF_SPLITS[split], index, h, w)
            rows["image"].append(Image.fromarray(image, "RGB"))
            rows["label"].append(Image.fromarray(hf_label(label_ids, class_of_train_id), "L"))
            bar.advance(task)
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    with no_datasets_bars():  # "Saving the dataset (1/1 shards)": our own bar counts the frames
        datasets.DatasetDict(splits).save_to_disk(str(root))
    atomic_write_json(root / "id2label.json", {str(i): name for i, name in enumerate(names)})


def _params(num_train, num_val, height, width, seed, format="cityscapes", num_classes=None) -> dict:
    params = {"generator": "data_utils.synthetic", "format_version": FORMAT_VERSION, "num_train": num_train,
              "num_val": num_val, "height": height, "width": width, "seed": seed}
    if format == "cityscapes":
        return params  # Cityscapes' file stays as it was
    return {**params, "format": format, **({"num_classes": num_classes} if num_classes is not None else {})}


def generate_dataset(out_root: str | os.PathLike, num_train: int, num_val: int, height: int = 256,
                     width: int = 512, seed: int = 0, progress: bool = True, format: str = "cityscapes",
                     num_classes: int | None = None) -> Path:
    """Write a synthetic dataset in the Cityscapes layout (or, format="hf", the HF DatasetDict of the module
    docstring) to `out_root` (which must not exist or be empty).

    Frames go to a temporary sibling folder that is renamed to `out_root` at the end, so `out_root` is
    either absent or complete. Returns `out_root` as a resolved Path.
    """
    if format not in FORMATS:
        raise UserError(f"unknown synthetic dataset format {format!r}; use one of {', '.join(FORMATS)}")
    out_root = Path(out_root).expanduser().resolve()
    if num_classes is not None and not (format == "hf" and NUM_CLASSES <= num_classes <= 254):
        raise UserError(f"{out_root}: --num-classes {num_classes} needs --format hf and {NUM_CLASSES}..254 (uint8 "
                        "labels, 0 = unlabelled, 255 = ignore); drop it or choose one in that range")
    if out_root.exists() and (not out_root.is_dir() or any(out_root.iterdir())):
        raise UserError(f"{out_root}: already exists and is not empty; choose a new --out folder or delete it")
    if min(height, width) < 64 or num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise UserError(f"{out_root}: need height, width >= 64 and at least one frame "
                        f"(got {num_train} train, {num_val} val, {height}x{width})")
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.tmp-", dir=out_root.parent))
    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    try:
        from rich.progress import Progress

        # a full disk fails in PIL's writes, which name no file: name the folder being made (its temp is removed)
        with named_os_errors(out_root), Progress(*progress_columns(), disable=not progress, transient=False) as bar:
            task = bar.add_task(f"synthetic {'HF dataset' if format == 'hf' else 'Cityscapes'} -> {out_root.name}",
                                total=len(jobs))
            if format == "hf":
                write_hf_dataset(tmp, num_train, num_val, height, width, seed, bar, task, num_classes)
            for split, index in jobs if format == "cityscapes" else ():
                write_frame(tmp, split, index, *render_frame(seed, split, index, height, width))
                bar.advance(task)
        atomic_write_json(tmp / "synthetic.json", _params(num_train, num_val, height, width, seed, format, num_classes))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        os.rename(tmp, out_root)  # atomic; fails if another process finished first (then out_root is not empty)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out_root.parent)
    return out_root


def ensure_demo_dataset(root: str | os.PathLike, num_train: int = 24, num_val: int = 8, height: int = 256,
                        width: int = 512, seed: int = 0, format: str = "cityscapes") -> Path:
    """Return `root` holding the demo dataset with these parameters, generating it once if absent.

    Safe when several processes (DDP ranks) call it at once: each generates into its own temp folder and
    only the first rename wins. A folder made with other parameters, or not by this generator, is an error.
    """
    root = Path(root).expanduser().resolve()
    wanted = _params(num_train, num_val, height, width, seed, format)

    def existing() -> Path | None:
        marker = root / "synthetic.json"
        if not marker.is_file():
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise UserError(f"{root}: exists but is not a generated demo dataset (no synthetic.json); "
                                "delete it or choose another folder")
            return None
        found = json.loads(marker.read_text())
        if found != wanted:
            raise UserError(f"{marker}: demo dataset was generated with {found}, not {wanted}; "
                            "delete the folder to regenerate or choose another one")
        return root

    if existing() is not None:
        return root
    try:
        return generate_dataset(root, num_train, num_val, height, width, seed, progress=sys.stderr.isatty(),
                                format=format)
    except OSError:
        if existing() is not None:  # lost the race to another process that wrote the same dataset
            return root
        raise


def hf_train_command(out: Path, height: int, width: int) -> str:
    """The train.py command, as printed, that trains on the --format hf dataset just written to `out` whatever its
    sizes and class table: the demo-hf preset on these data as they are (--no-demo-data: without it the preset
    insists on its own 48 + 12 frames at 128x256), cropped to a size both frame sizes hold."""
    second = second_size(height, width)
    return shell_command("python", "train.py", "--preset", "demo-hf", "--no-demo-data", "--hf-dataset", out,
                         "--crop-size", min(height, second[0]), min(width, second[1]))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m data_utils.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--train", type=int, default=24, help="number of train frames")
    parser.add_argument("--val", type=int, default=8, help="number of val frames")
    parser.add_argument("--height", type=int, default=256, help="frame height in pixels (Cityscapes: 1024)")
    parser.add_argument("--width", type=int, default=512, help="frame width in pixels (Cityscapes: 2048)")
    parser.add_argument("--seed", type=int, default=0, help="frames are a pure function of (seed, split, index)")
    parser.add_argument("--format", choices=FORMATS, default="cityscapes",
                        help="the Cityscapes folder layout (19 classes), or an HF DatasetDict with 8 class groups and "
                             "two frame sizes (train.py --hf-dataset OUT --reduce-labels)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="--format hf: the 19 classes spread over a table of this many (19..254) instead of "
                             "merged into 8 groups, e.g. 150 as ADE20K")
    args = parser.parse_args(argv)
    out = generate_dataset(args.out, args.train, args.val, args.height, args.width, args.seed, format=args.format,
                           num_classes=args.num_classes)
    if args.format == "hf":
        print(f"wrote {args.train} train + {args.val} validation frames to {out}\n"
              f"train on them: {hf_train_command(out, args.height, args.width)}")
        return 0
    look = shell_command("python", "-m", "data_utils.inspect", "--data-root", out, "--split", "val", "--out",
                         f"{out}_overlays")
    print(f"wrote {args.train} train + {args.val} val frames to {out}\nlook at them: {look}")
    return 0


if __name__ == "__main__":
    run_main(main)
