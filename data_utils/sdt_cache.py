"""The SDT cache files precompute_sdt.py writes and the Dataset reads: one per image, validated,
memory-mappable (or zlib-compressed). The maps themselves are `data_utils.sdt`'s.

File `<cache_dir>/<city>/<name>.sdt` (`sdt_cache_path`, `write_sdt_file`): a 64-byte header (magic, version,
flags, dtype, C, clip, H, W, payload length, payload CRC32, label fingerprint, header CRC32) followed by the
C*H*W int8 payload in C order, memory-mappable; or, with compression, a zlib stream of the row-delta encoded
payload (lossless, read fully into memory).

The label fingerprint (`label_fingerprint`) ties a file to the labels its map was computed from: a reader that
passes the frame's labels (`read_sdt_file(..., labels=)`, as the Dataset and precompute_sdt.py do) refuses a
file made from other labels of the same shape (another dataset's cache, labels edited since), naming it.
Version 1 files (no fingerprint) are refused with the command that remakes them (docs/sdt.md).
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_utils.layout import frame_city
from data_utils.sdt import as_label_map, check_clip, compute_sdt
from utils import UserError, atomic_write_bytes
from utils.console import plural
from utils.conventions import SDT_CLIP

SDT_SUFFIX = ".sdt"
SDT_MAGIC = b"BSEGSDT\n"  # the newline catches text-mode mangling, as PNG's signature does
SDT_VERSION = 2  # 2: + label fingerprint; version 1 files are refused (remade by precompute_sdt.py)
HEADER_SIZE = 64  # bytes; the payload starts here (aligned for the memory map)
FLAG_ZLIB = 1  # payload = zlib(row deltas mod 256) instead of raw int8
ZLIB_LEVEL = 6
# magic, version, flags, dtype, num_classes, clip, height, width, payload bytes, payload crc32, label fingerprint
_HEADER = struct.Struct("<8sHH2sHHIIQI16s")
_VERSION = struct.Struct("<H")  # at byte 8 in every version: read before the rest, whose layout it decides
FINGERPRINT_BYTES = 16
_HEADER_CRC = struct.Struct("<I")  # crc32 of the fields above, right after them


@dataclass(frozen=True)
class SdtFileInfo:
    """What the header of a cache file says (already validated)."""

    path: Path
    num_classes: int
    height: int
    width: int
    clip: int
    compressed: bool
    payload_bytes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_classes, self.height, self.width)


def label_fingerprint(labels: np.ndarray) -> bytes:
    """16 bytes that identify an (H, W) uint8 train-id map: the first 16 bytes of sha256(H, W as two little-endian
    uint32, then the map's bytes in C order). It is taken of exactly what `compute_sdt` reads (after the
    labelIds -> train-id mapping or --reduce-labels), so any change that changes the map changes it. Cost: ~1 ms
    for a 2048x1024 frame, ~12% of decoding its label PNG (docs/sdt.md)."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) train-id map, got shape {labels.shape}")
    digest = hashlib.sha256(struct.pack("<II", *labels.shape))
    digest.update(memoryview(labels).cast("B"))
    return digest.digest()[:FINGERPRINT_BYTES]


def sdt_cache_path(cache_dir: str | os.PathLike, name: str) -> Path:
    """`<cache_dir>/<city>/<name>.sdt` for a frame name such as "frankfurt_000000_000294" (the city:
    `data_utils.layout.frame_city`; a name without one goes straight into `cache_dir`)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"frame name must be a plain file stem, got {name!r}")
    return Path(cache_dir) / (frame_city(name) or "") / f"{name}{SDT_SUFFIX}"


def _encode_rows(sdt_int8: np.ndarray) -> bytes:
    """Lossless: differences between consecutive rows (mod 256), then zlib. Neighbouring rows of a distance
    map differ by -1, 0 or +1 almost everywhere, which zlib packs far better than the raw values."""
    rows = sdt_int8.view(np.uint8)
    delta = rows.copy()
    np.subtract(rows[:, 1:], rows[:, :-1], out=delta[:, 1:])
    return zlib.compress(memoryview(delta).cast("B"), ZLIB_LEVEL)


def _decode_rows(payload: bytes, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    try:
        raw = zlib.decompress(payload)
    except zlib.error as e:
        raise _corrupt(path, f"compressed payload does not decode ({e})") from None
    if len(raw) != shape[0] * shape[1] * shape[2]:
        raise _corrupt(path, f"payload decodes to {plural(len(raw), 'byte')}, header says {shape}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()
    for y in range(1, shape[1]):  # running sum down the rows, one vectorised add per row
        np.add(rows[:, y - 1], rows[:, y], out=rows[:, y])
    return rows.view(np.int8)


def write_sdt_file(path: str | os.PathLike, sdt_int8: np.ndarray, *, labels: np.ndarray, clip: int = SDT_CLIP,
                   compress: bool = False) -> int:
    """Write one (C, H, W) int8 map atomically (temp file in the same folder, fsync, rename).

    Args:
        path: destination, usually `sdt_cache_path(cache_dir, name)`; parent folders are created.
        sdt_int8: (C, H, W) int8 with values in [-clip, clip].
        labels: the (H, W) train-id map it was computed from; its `label_fingerprint` goes into the header.
        clip: the clip the map was computed with (stored in the header, checked on read).
        compress: store zlib-compressed row deltas (lossless; not memory-mappable) instead of raw int8.

    Returns the file size in bytes. A failure (e.g. disk full: OSError) leaves no file behind that could
    later be read as valid: the temp file is removed and `path` is untouched.
    """
    clip = check_clip(clip)
    sdt_int8 = np.ascontiguousarray(sdt_int8)
    if sdt_int8.dtype != np.int8 or sdt_int8.ndim != 3 or 0 in sdt_int8.shape:
        raise ValueError(f"expected a (C, H, W) int8 array, got {sdt_int8.dtype} {sdt_int8.shape}")
    if int(sdt_int8.min()) < -clip or int(sdt_int8.max()) > clip:
        raise ValueError(f"values outside [-{clip}, {clip}]: not a map computed with clip={clip}")
    num_classes, height, width = sdt_int8.shape
    if np.shape(labels) != (height, width):
        raise ValueError(f"labels of shape {np.shape(labels)} for a map of shape {sdt_int8.shape}")
    payload = _encode_rows(sdt_int8) if compress else memoryview(sdt_int8).cast("B")
    fields = _HEADER.pack(SDT_MAGIC, SDT_VERSION, FLAG_ZLIB if compress else 0, b"i1", num_classes, clip,
                          height, width, len(payload), zlib.crc32(payload), label_fingerprint(labels))
    header = fields + _HEADER_CRC.pack(zlib.crc32(fields))
    data = bytearray(HEADER_SIZE + len(payload))
    data[:len(header)] = header
    data[HEADER_SIZE:] = payload
    atomic_write_bytes(path, data)
    return len(data)


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{path}: {why}; delete it or rerun precompute_sdt.py (it redoes invalid files)")


def _open_checked(path: str | os.PathLike, expected_shape, expected_clip,
                  labels=None) -> tuple[SdtFileInfo, np.memmap]:
    """Validate a cache file and return its header info and its payload bytes (memory-mapped uint8)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_SIZE)
            file_bytes = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise UserError(f"{path}: SDT cache file not found; run precompute_sdt.py for this split with this "
                        "--out folder, or compute the maps on the fly (SDT source cpu)") from None
    if len(header) < 8 + _VERSION.size or header[:8] != SDT_MAGIC:
        raise _corrupt(path, "not an SDT cache file (bad or truncated header)")
    (version,) = _VERSION.unpack_from(header, 8)
    if version != SDT_VERSION:
        raise UserError(f"{path}: SDT cache format version {version}"
                        f"{' (not tied to its labels)' if version == 1 else ''}, this code reads version "
                        f"{SDT_VERSION}; remake the cache: rerun precompute_sdt.py with the same --out (it redoes "
                        "older files)")
    if len(header) < _HEADER.size + _HEADER_CRC.size:
        raise _corrupt(path, "not an SDT cache file (bad or truncated header)")
    fields = header[:_HEADER.size]
    (stored_header_crc,) = _HEADER_CRC.unpack_from(header, _HEADER.size)
    if zlib.crc32(fields) != stored_header_crc:
        raise _corrupt(path, "header checksum mismatch (corrupt file)")
    (_, _, flags, dtype, num_classes, clip, height, width, payload_bytes, payload_crc,
     fingerprint) = _HEADER.unpack(fields)
    if dtype != b"i1" or flags & ~FLAG_ZLIB:
        raise _corrupt(path, f"unsupported dtype {dtype!r} or flags {flags}")
    info = SdtFileInfo(path, num_classes, height, width, clip, bool(flags & FLAG_ZLIB), payload_bytes)
    if expected_shape is not None and tuple(expected_shape) != info.shape:
        raise UserError(f"{path}: cached SDT has shape (C, H, W) = {info.shape} but {tuple(expected_shape)} is "
                        "expected (made for another resolution or class count); rerun precompute_sdt.py "
                        "--overwrite, or point to the cache made for these labels")
    if expected_clip is not None and expected_clip != clip:
        raise UserError(f"{path}: cached SDT was clipped at {clip}, {expected_clip} is expected; rerun "
                        "precompute_sdt.py --overwrite with the same clip")
    if labels is not None and fingerprint != label_fingerprint(labels):
        raise UserError(f"{path}: made from other labels than this frame's (label fingerprint differs: a stale cache, "
                        "e.g. another dataset's or one made before the labels changed); remake it: rerun "
                        "precompute_sdt.py for this split with this --out and the run's data flags (it redoes stale "
                        "files)")
    if payload_bytes == 0 or (not info.compressed and payload_bytes != num_classes * height * width):
        raise _corrupt(path, f"header says {payload_bytes} payload bytes for shape {info.shape}")
    if file_bytes != HEADER_SIZE + payload_bytes:
        raise _corrupt(path, f"truncated or padded: {file_bytes - HEADER_SIZE} payload bytes, header says "
                             f"{payload_bytes}")
    payload = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_SIZE, shape=(payload_bytes,))
    if zlib.crc32(payload) != payload_crc:
        raise _corrupt(path, "payload checksum mismatch (corrupt file)")
    return info, payload


def inspect_sdt_file(path: str | os.PathLike, expected_shape: tuple[int, int, int] | None = None,
                     expected_clip: int | None = None, labels: np.ndarray | None = None) -> SdtFileInfo:
    """Validate a cache file without decoding it: header fields and their CRC, file length, payload CRC32,
    and optionally the (C, H, W) shape and clip the caller expects and the fingerprint of the (H, W) train-id map
    `labels` it must have been made from. Raises UserError naming the file."""
    return _open_checked(path, expected_shape, expected_clip, labels)[0]


def read_sdt_file(path: str | os.PathLike, expected_shape: tuple[int, int, int] | None = None, *,
                  expected_clip: int | None = None, labels: np.ndarray | None = None) -> np.ndarray:
    """Read one cache file as a read-only (C, H, W) int8 array, after `inspect_sdt_file`'s checks (with `labels`,
    the frame's train ids: refused when it was made from other labels).

    Raw files come back memory-mapped (np.memmap: pages are shared between DataLoader workers through the
    OS page cache); compressed ones are decoded into memory. Raises UserError on any mismatch or corruption.
    """
    info, payload = _open_checked(path, expected_shape, expected_clip, labels)
    if not info.compressed:
        return payload.view(np.int8).reshape(info.shape)  # still the memory map, no copy
    sdt = _decode_rows(payload, info.shape, info.path)
    sdt.flags.writeable = False
    return sdt


def verify_sdt_file(path: str | os.PathLike, label, num_classes: int,
                    clip: int = SDT_CLIP) -> str | None:
    """Recompute the map of `label` ((H, W) train ids) and compare it with the cache file at `path`.

    Returns None when the file is valid and identical, else a one-line description of the problem (missing,
    corrupt, wrong shape or clip, or how many values differ). Bad labels raise UserError as in compute_sdt.
    """
    label = as_label_map(label, num_classes)
    try:
        cached = read_sdt_file(path, expected_shape=(num_classes, *label.shape), expected_clip=clip, labels=label)
    except UserError as e:
        return str(e)
    fresh = compute_sdt(label, num_classes=num_classes, clip=clip)
    differing = int(np.count_nonzero(cached != fresh))
    if differing:
        return (f"{path}: {differing} of {fresh.size} values differ from the map recomputed from its labels; "
                "rerun precompute_sdt.py --overwrite")
    return None
