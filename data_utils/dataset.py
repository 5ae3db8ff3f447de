"""The torch Dataset over a frame source: decode, labels -> train ids, SDT, joint horizontal flip and crop.

Two frame sources: `load_split` records of a Cityscapes-layout folder (PNG paths; `PathFrames`), or one split
of an HF dataset (`data_utils.hf.HFFrames`). Frames are returned at native resolution unless `crop_size` is
given (no resize). One item:

    {"image": float32 (3, H, W) ImageNet-normalised   (uint8 (3, H, W) when image_dtype="uint8"),
     "label": uint8 (H, W) train ids, 255 = ignore   (call .long() on the device before a loss:
                                                      2 MB per 1024x2048 frame through the loader, not 16),
     "sdt":   int8 (C, H, W) signed distance map       (only when sdt_source is "cpu" or "cache"),
     "name":  str, e.g. "frankfurt_000000_000294"}

The horizontal flip (p = 0.5) is decided by a generator seeded with (seed, epoch, index), so it does not depend
on worker count, rank, or sampling order, and a run resumed at epoch e sees the flips it would have seen.
The crop offset (`crop_offset`) is drawn the same way. Image, label and SDT are flipped and cropped together;
the SDT from the workers ("cpu", "cache") is the full frame's, cropped, while train.py's "gpu" SDT is computed on
the cropped label, so the two differ within `sdt_clip` pixels of a crop edge whose nearest boundary lies outside
the crop. The epoch lives in shared memory, so `set_epoch` reaches
persistent DataLoader workers too (call it before iterating the loader).

Image path choices:
  - image_dtype="uint8", augment=None (the fast path): ship uint8 and run `data_utils.augment.BatchAugment`
    on the device batch; it also normalises.
  - image_dtype="float", augment=BatchAugment(...): photometric jitter + blur per sample in the CPU workers,
    seeded from (seed, epoch, index).
  - image_dtype="float", augment=None: normalisation only (evaluation).
"""
from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:
    import pyspng  # libspng: about half of PIL's time on a Cityscapes frame (docs/performance.md)
except ImportError:  # requirements.txt installs it; without it PIL decodes everything, identically
    pyspng = None

from data_utils.augment import BatchAugment, normalize
from data_utils.classes import IGNORE_INDEX, ClassTable, class_presence
from data_utils.labels import CITYSCAPES
from data_utils.options import DATASET_SDT_SOURCES
from utils import UserError
from utils.console import plural
from utils.conventions import SDT_CLIP
from utils.signals import stoppable_pool

IMAGE_DTYPES = ("float", "uint8")


IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P")  # 8-bit modes read_image converts to RGB
LABEL_MODES = ("L", "P")  # 8-bit single-channel: a labelIds PNG


def _open_png(path: str, decode: bool = True) -> Image.Image:
    """Open a PNG (and fully decode it unless `decode=False`: header only); a missing or undecodable file
    becomes a UserError naming it."""
    try:
        im = Image.open(path)
        if decode:
            im.load()  # decode now: a truncated file raises here, not later inside np.asarray
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; the dataset folder changed after it was listed, "
                        "rebuild the file list (rerun) or restore the file") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise UserError(f"{path}: cannot decode PNG ({type(e).__name__}: {e}); the file is corrupt or "
                        "truncated, re-extract it from the Cityscapes zip") from None
    return im


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PIL mode -> (bit depth, colour type) of the PNGs `_decode_fast` hands to pyspng: 8-bit truecolour and 8-bit
# greyscale, what Cityscapes and the synthetic data ship. The rest (palette, alpha, 16-bit, 1-bit, interlaced) goes
# to PIL: pyspng returns palette PNGs as RGB, not as indices, and 16-bit ones in another layout.
_FAST_PNG_TYPES = {"RGB": (8, 2), "L": (8, 0)}


def _decode_fast(path: str, mode: str) -> np.ndarray | None:
    """`path` decoded by pyspng, bit-identical to `np.array(Image.open(path))`, when it is a non-interlaced PNG of
    `mode` ("RGB" or "L"); None otherwise or when pyspng cannot read it (PIL then decodes it or names the problem).
    pyspng skips an ancillary chunk (text, gamma, ...) whose checksum is wrong, which PIL refuses; the image data
    are checked by both."""
    if pyspng is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    header_ok = data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 28
    if not header_ok or (data[24], data[25]) != _FAST_PNG_TYPES[mode] or data[28] != 0:
        return None
    try:
        return pyspng.load(data, mode)
    except RuntimeError:  # damaged: let PIL report it in the project's words
        return None


def _check_image_mode(path: str, mode: str) -> None:
    if mode not in IMAGE_MODES:
        raise UserError(f"{path}: image mode {mode}, expected 8-bit RGB; pass the *_leftImg8bit.png file")


def _check_label_mode(path: str, mode: str) -> None:
    if mode not in LABEL_MODES:
        raise UserError(f"{path}: label mode {mode}, expected an 8-bit single-channel labelIds PNG; "
                        "pass *_gtFine_labelIds.png, not the _color or _instanceIds file")


def _check_same_size(image_path: str, label_path: str, image_wh: tuple[int, int], label_wh: tuple[int, int]):
    if tuple(image_wh) != tuple(label_wh):
        raise UserError(f"{label_path}: label is {label_wh[0]}x{label_wh[1]} but its image {image_path} is "
                        f"{image_wh[0]}x{image_wh[1]} (WxH); replace the mismatched file")


def read_image(path: str) -> np.ndarray:
    """A leftImg8bit PNG -> (H, W, 3) uint8 RGB."""
    fast = _decode_fast(path, "RGB")
    if fast is not None:
        return fast
    im = _open_png(path)
    if im.mode != "RGB":
        _check_image_mode(path, im.mode)
        im = im.convert("RGB")
    return np.array(im)


def read_label_ids(path: str) -> np.ndarray:
    """A gtFine labelIds PNG -> (H, W) uint8 label ids (values not yet checked)."""
    fast = _decode_fast(path, "L")
    if fast is not None:
        return fast
    im = _open_png(path)
    _check_label_mode(path, im.mode)
    return np.array(im)


def read_frame(image_path: str, label_path: str, classes: ClassTable = CITYSCAPES) -> tuple[np.ndarray, np.ndarray]:
    """Decode one frame: ((H, W, 3) uint8 RGB image, (H, W) uint8 train ids with 255 = ignore).

    The label PNG holds `classes`' label ids (Cityscapes: labelIds) or, for a table without an id map, class
    indices. Raises UserError (naming the file) for a corrupt PNG, an image/label size mismatch or a label value
    outside the table.
    """
    image = read_image(image_path)
    label_ids = read_label_ids(label_path)
    _check_same_size(image_path, label_path, image.shape[1::-1], label_ids.shape[::-1])
    return image, classes.to_train_ids(label_ids, label_path, fix=_label_fix(classes))


def read_train_ids(label_path: str, classes: ClassTable = CITYSCAPES) -> np.ndarray:
    """A label PNG alone -> (H, W) uint8 train ids (255 = ignore); UserError naming the file for a corrupt PNG
    or a value outside `classes` (for Cityscapes: a file that is not a *_gtFine_labelIds.png)."""
    return classes.to_train_ids(read_label_ids(label_path), label_path, fix=_label_fix(classes))


def _label_fix(classes: ClassTable) -> str:
    if classes.id_to_train_id is not None:
        return "pass the *_gtFine_labelIds.png file, not a colour, trainId or instance map"
    return f"list every class in the classes file ({classes.source}) or fix the label PNG"


def check_frame(image_path: str, label_path: str, classes: ClassTable = CITYSCAPES,
                decode_label: bool = False) -> np.ndarray | None:
    """What `read_frame` would refuse, found without decoding the image: both PNG headers (mode, size),
    and with `decode_label` the label's values too (then returned: (H, W) uint8 train ids). Raises the same
    UserErrors as `read_frame`."""
    with _open_png(image_path, decode=False) as image, _open_png(label_path, decode=False) as label:
        _check_image_mode(image_path, image.mode)
        _check_label_mode(label_path, label.mode)
        _check_same_size(image_path, label_path, image.size, label.size)
    return read_train_ids(label_path, classes) if decode_label else None


_CHECKED = None  # the frames check_frames' forked workers check (inherited, not pickled per task)


def _check_frame_task(task: tuple[int, bool]) -> tuple[int, np.ndarray | None]:
    """(index, the classes its label holds (`class_presence`) when decoded, else None)."""
    index, decode_labels = task
    train_ids = _CHECKED.check(index, decode_labels)
    return index, None if train_ids is None else class_presence(train_ids, _CHECKED.classes.num_classes)


def check_frames(dataset: "SegmentationDataset", decode_labels: bool, num_workers: int) -> int:
    """`frames.check(index, decode_labels)` on every frame of `dataset` (`PathFrames.check`: `check_frame`;
    `HFFrames.check`); returns the number of frames. The first bad file raises its UserError (re-raised here
    as it is, one line). `check_labels` is the same check with the labels decoded, returning what they hold.

    Headers only take ~0.1 ms a frame, so they are read in this process; decoding the labels (~60 ms a
    full-size frame) runs in `num_workers` worker processes (0: in this one). train.py runs it on both splits
    before the first step, with the val labels decoded, so a bad file stops the run at once instead of an
    epoch later. Timings on real frames: BENCHMARKS.md.
    """
    return len(_check_all(dataset, decode_labels, num_workers))


def check_labels(dataset: "SegmentationDataset", num_workers: int) -> np.ndarray:
    """`check_frames(dataset, decode_labels=True, num_workers)`, returning what the decoded labels hold: (N, C)
    bool, row i = `class_presence` of frame i's label. train.py's check of the val split; the presence picks
    the prediction samples (engine.samples.choose_samples) without decoding the split again."""
    presence = np.zeros((len(dataset.frames), dataset.frames.classes.num_classes), dtype=bool)
    for index, present in _check_all(dataset, True, num_workers):
        presence[index] = present
    return presence


def _check_all(dataset: "SegmentationDataset", decode_labels: bool, num_workers: int) -> list:
    """`_check_frame_task`'s result for every frame (in any order)."""
    global _CHECKED
    tasks = [(index, decode_labels) for index in range(len(dataset.frames))]
    _CHECKED = dataset.frames
    try:
        if not decode_labels or num_workers == 0 or len(tasks) < 2:
            return [_check_frame_task(task) for task in tasks]
        # fork, as the DataLoader does: the workers need no imports and inherit _CHECKED. Leaving the block
        # (an error or a stop included) stops them after their current frame (utils.signals.stoppable_pool).
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with stoppable_pool(context, min(num_workers, len(tasks))) as imap:
            return list(imap(_check_frame_task, tasks, chunksize=8))
    finally:
        _CHECKED = None


def hflip_decision(seed: int, epoch: int, index: int) -> tuple[bool, int]:
    """(flip?, per-sample augmentation seed), a pure function of (seed, epoch, index)."""
    rng = np.random.default_rng([seed, epoch, index])
    return bool(rng.random() < 0.5), int(rng.integers(2**63 - 1))


def crop_offset(seed: int, epoch: int, index: int, size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a random crop of `crop` = (h, w) from a frame of `size` = (H, W), uniform over the valid
    offsets (0 along a side where the frame is not larger); a pure function of (seed, epoch, index) like the
    flip (its own stream: the flips do not change when a crop is added)."""
    rng = np.random.default_rng([seed, epoch, index, 1])
    return tuple(int(rng.integers(max(n - c, 0) + 1)) for n, c in zip(size, crop))


def crop_pad(array: np.ndarray, top: int, left: int, crop: tuple[int, int], fill: int) -> np.ndarray:
    """The (..., h, w) window at (top, left) of a (..., H, W) array; where the frame is smaller than the crop,
    the rest is `fill` (padding at the bottom and right, as MMSegmentation pads)."""
    out = np.full((*array.shape[:-2], *crop), fill, dtype=array.dtype)
    window = array[..., top: top + crop[0], left: left + crop[1]]
    out[..., : window.shape[-2], : window.shape[-1]] = window
    return out


HF_SIZE_SAMPLE = 32  # rows whose size `check_crop_size` reads in an HF dataset (each one decoded)


def frame_sizes(frames, sample: int | None = None) -> Counter:
    """{(H, W): number of frames} of a frame source, from `frames.label_size`: `PathFrames` read the PNG header
    only (~0.03 ms a frame once cached), `HFFrames` decode the label, so give those a `sample`: that many rows,
    evenly spaced, are read instead of all."""
    n = len(frames)
    indices = range(n) if sample is None or n <= sample else np.linspace(0, n - 1, sample).round().astype(int)
    return Counter(tuple(frames.label_size(int(i))) for i in indices)


def check_crop_size(crop: tuple[int, int], frames, where: str) -> None:
    """Refuse a crop taller or wider than every frame (all but padding, and at --crop-size 100000 100000 a
    MemoryError in a loader worker): a UserError saying the largest frame size. The sizes: `frame_sizes` of all
    frames of a Cityscapes-layout split (headers), of `HF_SIZE_SAMPLE` rows of an HF dataset."""
    sizes = frame_sizes(frames, sample=None if isinstance(frames, PathFrames) else HF_SIZE_SAMPLE)
    largest = (max(h for h, _ in sizes), max(w for _, w in sizes))
    if crop[0] > largest[0] or crop[1] > largest[1]:
        raise UserError(f"--crop-size {crop[0]} {crop[1]}: larger than every frame of {where} (the largest is "
                        f"{largest[0]}x{largest[1]}, HxW), so it would crop nothing and pad the rest; pass a crop of "
                        f"at most {largest[0]} {largest[1]}, or 0 0 for native frames")


def check_one_frame_size(frames, where: str) -> None:
    """Refuse training batches of native frames (no crop, batch size > 1) over frames of several sizes (they
    cannot be stacked): a UserError listing the sizes, before any work rather than at the first batch."""
    sizes = frame_sizes(frames)
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w} ({plural(n, 'frame')})" for (h, w), n in sizes.most_common(3))
        raise UserError(f"{where} holds frames of {plural(len(sizes), 'size')} (HxW: {listed}"
                        f"{', ...' if len(sizes) > 3 else ''}"
                        "); frames are not resized, so a training batch needs one size: pass --crop-size H W or "
                        "--batch-size 1")


def _column(records, key: str) -> list[str]:
    if hasattr(records, "column_names"):  # a datasets.Dataset: read the column once, not row by row
        return [str(v) for v in records[key]]
    return [str(r[key]) for r in records]


class PathFrames:
    """The frames of `load_split` records (a `datasets.Dataset` of paths, or a sequence of dicts with
    name/image_path/label_path), decoded by `read_frame` with `classes`."""

    def __init__(self, records, classes: ClassTable = CITYSCAPES):
        self.names = _column(records, "name")
        self.image_paths = _column(records, "image_path")
        self.label_paths = _column(records, "label_path")
        self.classes = classes

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_frame(self.image_paths[index], self.label_paths[index], self.classes)

    def check(self, index: int, decode_label: bool = False) -> np.ndarray | None:
        """`check_frame` on frame `index`: PNG headers, and the label's values with `decode_label` (then
        returned: (H, W) uint8 train ids)."""
        return check_frame(self.image_paths[index], self.label_paths[index], self.classes, decode_label)

    def read_label(self, index: int) -> np.ndarray:
        """(H, W) uint8 train ids of frame `index` (its label PNG only)."""
        return read_train_ids(self.label_paths[index], self.classes)

    def label_size(self, index: int) -> tuple[int, int]:
        """(H, W) of frame `index`'s label, from the PNG header only (no decoding)."""
        path = self.label_paths[index]
        try:
            with Image.open(path) as im:
                return im.size[1], im.size[0]
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{path}: cannot open label PNG ({e}); re-extract it from the dataset zip") from None


class SegmentationDataset(torch.utils.data.Dataset):
    """The frames of a source, decoded and (optionally) augmented and cropped; `classes` is the source's table.

    Args:
        records: a frame source (`PathFrames`, `data_utils.hf.HFFrames`: `names`, `classes`, `read(index)`), or
            `load_split` records (a `datasets.Dataset`, or a sequence of dicts with name/image_path/label_path)
            of Cityscapes, wrapped in `PathFrames`.
        hflip: apply the random horizontal flip (training); False for evaluation.
        seed: the run seed; flips and per-sample augmentation derive from (seed, epoch, index).
        image_dtype: "float" (normalised float32) or "uint8" (for augmentation/normalisation on the device).
        sdt_source: "none" (no "sdt" key), "cpu" (compute_sdt in the worker) or "cache" (read the
            precomputed file `sdt_cache_path(sdt_cache_dir, name)`, memory-mapped).
        sdt_cache_dir: the cache folder written by precompute_sdt.py; required for sdt_source="cache".
        augment: a `BatchAugment` to apply per sample in the workers (needs image_dtype="float").
        crop_size: (h, w) random crop of image, label and SDT (`crop_offset`; padding: image 0, label ignore,
            SDT 0), or None for the native frame.
        sdt_clip: passed to compute_sdt / used to check cached files. The SDT has one channel per class.
    """

    def __init__(self, records, *, hflip: bool = False, seed: int = 0, image_dtype: str = "float",
                 sdt_source: str = "none", sdt_cache_dir: str | Path | None = None,
                 augment: BatchAugment | None = None, crop_size: tuple[int, int] | None = None,
                 sdt_clip: int = SDT_CLIP):
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {IMAGE_DTYPES}, got {image_dtype!r}")
        if sdt_source not in DATASET_SDT_SOURCES:
            raise ValueError(f"sdt_source must be one of {DATASET_SDT_SOURCES}, got {sdt_source!r}")
        if sdt_source == "cache" and sdt_cache_dir is None:
            raise ValueError("sdt_source='cache' needs sdt_cache_dir (the folder written by precompute_sdt.py)")
        if augment is not None and image_dtype != "float":
            raise ValueError("augment in the workers returns normalised floats: use image_dtype='float', or "
                             "image_dtype='uint8' and BatchAugment on the device batch")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if crop_size is not None and (len(crop_size) != 2 or min(crop_size) < 1):
            raise ValueError(f"crop_size must be (h, w) >= 1, got {crop_size}")
        self.frames = records if hasattr(records, "read") else PathFrames(records)
        self.names, self.classes = self.frames.names, self.frames.classes
        self.crop_size = None if crop_size is None else (int(crop_size[0]), int(crop_size[1]))
        self.hflip, self.seed, self.image_dtype = hflip, int(seed), image_dtype
        self.sdt_source, self.augment = sdt_source, augment
        self.sdt_cache_dir = None if sdt_cache_dir is None else Path(sdt_cache_dir)
        self.num_classes, self.sdt_clip = self.classes.num_classes, sdt_clip
        # Shared memory: forked or spawned DataLoader workers (persistent ones too) see set_epoch().
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def _sdt(self, index: int, train_ids: np.ndarray) -> np.ndarray:
        """(C, H, W) int8 signed distance map of the unflipped label."""
        from data_utils import sdt, sdt_cache  # lazy: only runs that use an SDT need them

        if self.sdt_source == "cpu":
            return sdt.compute_sdt(train_ids, num_classes=self.num_classes, clip=self.sdt_clip)
        path = sdt_cache.sdt_cache_path(self.sdt_cache_dir, self.names[index])
        expected = (self.num_classes, *train_ids.shape)
        # labels: refused when made from other labels (a stale cache); the fingerprint costs ~1 ms a full frame
        return sdt_cache.read_sdt_file(path, expected_shape=expected, expected_clip=self.sdt_clip, labels=train_ids)

    def __getitem__(self, index: int) -> dict:
        image, train_ids = self.frames.read(index)
        sdt_int8 = None if self.sdt_source == "none" else self._sdt(index, train_ids)
        flip, sample_seed = hflip_decision(self.seed, self.epoch, index)
        if self.hflip and flip:  # the same mirror for all three; the SDT of a mirrored label is the mirrored SDT
            image, train_ids = image[:, ::-1], train_ids[:, ::-1]
            sdt_int8 = None if sdt_int8 is None else sdt_int8[:, :, ::-1]
        if self.crop_size is not None:  # the same window of all three; padding is ignore (SDT 0 there, as at ignore)
            top, left = crop_offset(self.seed, self.epoch, index, train_ids.shape, self.crop_size)
            image = crop_pad(image.transpose(2, 0, 1), top, left, self.crop_size, 0).transpose(1, 2, 0)
            train_ids = crop_pad(train_ids, top, left, self.crop_size, IGNORE_INDEX)
            sdt_int8 = None if sdt_int8 is None else crop_pad(sdt_int8, top, left, self.crop_size, 0)

        image_chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W) uint8
        if self.augment is not None:
            image_chw = self.augment.augment_one(image_chw, seed=sample_seed)
        elif self.image_dtype == "float":
            image_chw = normalize(image_chw)
        item = {
            "image": image_chw,
            # uint8: 1/8 of int64's bytes through worker IPC, pinning and the host-to-device copy
            "label": torch.from_numpy(np.ascontiguousarray(train_ids, dtype=np.uint8)),
            "name": self.names[index],
        }
        if sdt_int8 is not None:
            item["sdt"] = torch.from_numpy(np.array(sdt_int8, dtype=np.int8))  # copy out of the memory map
        return item


def collate_batch(items: Sequence[dict]) -> dict:
    """Stack items into {"image": (N, 3, H, W), "label": (N, H, W) uint8, "sdt"?: (N, C, H, W), "name": [str]}.

    Frames are kept at native size (or cropped), so all frames of a batch must share one size (Cityscapes:
    2048x1024).
    """
    names = [it["name"] for it in items]
    sizes = {tuple(it["label"].shape) for it in items}
    if len(sizes) > 1:
        raise UserError(f"frames {names} have different sizes {sorted(sizes)}; frames are not resized, so train "
                        "on frames of several sizes with --crop-size H W (or batch size 1)")
    with_sdt = ["sdt" in it for it in items]
    if any(with_sdt) and not all(with_sdt):
        raise ValueError("some items carry an 'sdt' and some do not; use one sdt_source for the whole dataset")
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.stack([it["label"] for it in items]),
        "name": names,
    }
    if all(with_sdt) and items:
        batch["sdt"] = torch.stack([it["sdt"] for it in items])
    return batch


__all__ = ["PathFrames", "SegmentationDataset", "check_crop_size", "check_frame", "check_frames", "check_labels",
           "check_one_frame_size", "collate_batch", "crop_offset", "crop_pad", "frame_sizes", "hflip_decision",
           "read_frame", "read_image", "read_label_ids"]
