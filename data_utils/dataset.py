"""The torch Dataset over `load_split` records: PNG decode, labelIds -> trainIds, SDT, joint horizontal flip.

Frames are returned at native resolution (no resize, no crop). One item:

    {"image": float32 (3, H, W) ImageNet-normalised   (uint8 (3, H, W) when image_dtype="uint8"),
     "label": uint8 (H, W) train ids, 255 = ignore   (call .long() on the device before a loss:
                                                      2 MB per 1024x2048 frame through the loader, not 16),
     "sdt":   int8 (19, H, W) signed distance map      (only when sdt_source is "cpu" or "cache"),
     "name":  str, e.g. "frankfurt_000000_000294"}

The horizontal flip (p = 0.5) is decided by a generator seeded with (seed, epoch, index), so it does not depend
on worker count, rank, or sampling order, and a run resumed at epoch e sees the flips it would have seen.
Image, label and SDT are flipped together. The epoch lives in shared memory, so `set_epoch` reaches
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_utils.augment import BatchAugment, normalize
from data_utils.labels import NUM_CLASSES, label_ids_to_train_ids
from utils import UserError

SDT_SOURCES = ("none", "cpu", "cache")
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
    im = _open_png(path)
    if im.mode != "RGB":
        _check_image_mode(path, im.mode)
        im = im.convert("RGB")
    return np.array(im)


def read_label_ids(path: str) -> np.ndarray:
    """A gtFine labelIds PNG -> (H, W) uint8 label ids (values not yet checked)."""
    im = _open_png(path)
    _check_label_mode(path, im.mode)
    return np.array(im)


def read_frame(image_path: str, label_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one frame: ((H, W, 3) uint8 RGB image, (H, W) uint8 train ids with 255 = ignore).

    Raises UserError (naming the file) for a corrupt PNG, an image/label size mismatch or an unknown label id.
    """
    image = read_image(image_path)
    label_ids = read_label_ids(label_path)
    _check_same_size(image_path, label_path, image.shape[1::-1], label_ids.shape[::-1])
    return image, label_ids_to_train_ids(label_ids, label_path)


def check_frame(image_path: str, label_path: str, decode_label: bool = False) -> None:
    """What `read_frame` would refuse, found without decoding the image: both PNG headers (mode, size),
    and with `decode_label` the label's ids too. Raises the same UserErrors as `read_frame`."""
    with _open_png(image_path, decode=False) as image, _open_png(label_path, decode=False) as label:
        _check_image_mode(image_path, image.mode)
        _check_label_mode(label_path, label.mode)
        _check_same_size(image_path, label_path, image.size, label.size)
    if decode_label:
        label_ids_to_train_ids(read_label_ids(label_path), label_path)


def _check_frame_task(task: tuple[str, str, bool]) -> None:
    check_frame(*task)


def check_frames(dataset: "SegmentationDataset", decode_labels: bool, num_workers: int) -> int:
    """`check_frame` on every frame of `dataset`; returns the number of frames. The first bad file raises its
    UserError (re-raised here as it is, one line).

    Headers only take ~0.1 ms a frame, so they are read in this process; decoding the labels (~60 ms a
    full-size frame) runs in `num_workers` worker processes (0: in this one). train.py runs it on both splits
    before the first step, with the val labels decoded, so a bad file stops the run at once instead of an
    epoch later. Timings on real frames: BENCHMARKS.md.
    """
    tasks = [(image, label, decode_labels) for image, label in zip(dataset.image_paths, dataset.label_paths)]
    if not decode_labels or num_workers == 0 or len(tasks) < 2:
        for task in tasks:
            _check_frame_task(task)
        return len(tasks)
    # fork, as the DataLoader does: the workers need no imports. Leaving the block (an error included)
    # terminates them at once.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(min(num_workers, len(tasks))) as pool:
        for _ in pool.imap_unordered(_check_frame_task, tasks, chunksize=8):
            pass
    return len(tasks)


def hflip_decision(seed: int, epoch: int, index: int) -> tuple[bool, int]:
    """(flip?, per-sample augmentation seed), a pure function of (seed, epoch, index)."""
    rng = np.random.default_rng([seed, epoch, index])
    return bool(rng.random() < 0.5), int(rng.integers(2**63 - 1))


def _column(records, key: str) -> list[str]:
    if hasattr(records, "column_names"):  # a datasets.Dataset: read the column once, not row by row
        return [str(v) for v in records[key]]
    return [str(r[key]) for r in records]


class SegmentationDataset(torch.utils.data.Dataset):
    """Frames listed by `data_utils.cityscapes.load_split`, decoded and (optionally) augmented.

    Args:
        records: a `datasets.Dataset` from `load_split` (or a sequence of dicts with name/image_path/label_path).
        hflip: apply the random horizontal flip (training); False for evaluation.
        seed: the run seed; flips and per-sample augmentation derive from (seed, epoch, index).
        image_dtype: "float" (normalised float32) or "uint8" (for augmentation/normalisation on the device).
        sdt_source: "none" (no "sdt" key), "cpu" (compute_sdt in the worker) or "cache" (read the
            precomputed file `sdt_cache_path(sdt_cache_dir, name)`, memory-mapped).
        sdt_cache_dir: the cache folder written by precompute_sdt.py; required for sdt_source="cache".
        augment: a `BatchAugment` to apply per sample in the workers (needs image_dtype="float").
        num_classes, sdt_clip: passed to compute_sdt / used to check cached shapes.
    """

    def __init__(self, records, *, hflip: bool = False, seed: int = 0, image_dtype: str = "float",
                 sdt_source: str = "none", sdt_cache_dir: str | Path | None = None,
                 augment: BatchAugment | None = None, num_classes: int = NUM_CLASSES, sdt_clip: int = 127):
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {IMAGE_DTYPES}, got {image_dtype!r}")
        if sdt_source not in SDT_SOURCES:
            raise ValueError(f"sdt_source must be one of {SDT_SOURCES}, got {sdt_source!r}")
        if sdt_source == "cache" and sdt_cache_dir is None:
            raise ValueError("sdt_source='cache' needs sdt_cache_dir (the folder written by precompute_sdt.py)")
        if augment is not None and image_dtype != "float":
            raise ValueError("augment in the workers returns normalised floats: use image_dtype='float', or "
                             "image_dtype='uint8' and BatchAugment on the device batch")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.names = _column(records, "name")
        self.image_paths = _column(records, "image_path")
        self.label_paths = _column(records, "label_path")
        self.hflip, self.seed, self.image_dtype = hflip, int(seed), image_dtype
        self.sdt_source, self.augment = sdt_source, augment
        self.sdt_cache_dir = None if sdt_cache_dir is None else Path(sdt_cache_dir)
        self.num_classes, self.sdt_clip = num_classes, sdt_clip
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
        from data_utils import sdt  # lazy: only runs that use an SDT need it

        if self.sdt_source == "cpu":
            return sdt.compute_sdt(train_ids, num_classes=self.num_classes, clip=self.sdt_clip)
        path = sdt.sdt_cache_path(self.sdt_cache_dir, self.names[index])
        expected = (self.num_classes, *train_ids.shape)
        return sdt.read_sdt_file(path, expected_shape=expected, expected_clip=self.sdt_clip)

    def __getitem__(self, index: int) -> dict:
        image, train_ids = read_frame(self.image_paths[index], self.label_paths[index])
        sdt_int8 = None if self.sdt_source == "none" else self._sdt(index, train_ids)
        flip, sample_seed = hflip_decision(self.seed, self.epoch, index)
        if self.hflip and flip:  # the same mirror for all three; the SDT of a mirrored label is the mirrored SDT
            image, train_ids = image[:, ::-1], train_ids[:, ::-1]
            sdt_int8 = None if sdt_int8 is None else sdt_int8[:, :, ::-1]

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

    Frames are kept at native size, so all frames of a batch must share one size (Cityscapes: 2048x1024).
    """
    names = [it["name"] for it in items]
    sizes = {tuple(it["label"].shape) for it in items}
    if len(sizes) > 1:
        raise UserError(f"frames {names} have different sizes {sorted(sizes)}; frames are not resized, so a "
                        "dataset must hold one frame size (use batch size 1 or resize the data)")
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


__all__ = ["SegmentationDataset", "check_frame", "check_frames", "collate_batch", "hflip_decision", "read_frame",
           "read_image", "read_label_ids"]
