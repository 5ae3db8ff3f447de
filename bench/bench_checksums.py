"""Time the integrity checks of issue 23 §3: the checkpoint checksum and the SDT cache's label fingerprint.

    taskset -c 1 python bench/bench_checksums.py          # real labels in ../shared/data/cityscapes_fullres

One thread (pinned before numpy loads), best of `--repeats` wall times:
  1. a checkpoint checksum: sha256 against blake2b (and md5, crc32 for scale) of a `--megabytes` in-memory buffer,
     ConvNeXt-V2-Base's ~350 MB of weights by default (`engine.checkpoint.file_sha256` uses sha256);
  2. the label fingerprint (`data_utils.sdt_cache.label_fingerprint`, sha256 of the train-id map) per real
     2048x1024 frame, against decoding that label (`read_train_ids`) and against hashing the PNG file's bytes.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads: one core for every measurement

import hashlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_utils.dataset import read_train_ids  # noqa: E402
from data_utils.sdt_cache import label_fingerprint  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def best(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=350, help="buffer size for the checkpoint hash (MiB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cityscapes_fullres"))
    args = parser.parse_args(argv)

    buffer = os.urandom(args.megabytes * 2**20)
    print(f"checkpoint checksum of {args.megabytes} MiB (best of {args.repeats}):")
    for name, fn in (("sha256", lambda: hashlib.sha256(buffer).digest()),
                     ("blake2b", lambda: hashlib.blake2b(buffer).digest()),
                     ("md5", lambda: hashlib.md5(buffer).digest()), ("crc32", lambda: zlib.crc32(buffer))):
        seconds = best(fn, args.repeats)
        print(f"  {name:8s} {seconds:6.3f} s  {args.megabytes / seconds:7.0f} MiB/s")

    paths = sorted(Path(args.data_root).glob("gtFine/*/*/*_labelIds.png"))
    if not paths:
        print(f"no labels under {args.data_root}: label fingerprint not timed")
        return 0
    maps = {p: read_train_ids(str(p)) for p in paths}  # warm the page cache first

    def per_frame(fn) -> float:
        return best(lambda: [fn(p) for p in paths], args.repeats) / len(paths) * 1e3

    decode = per_frame(lambda p: read_train_ids(str(p)))
    fingerprint = per_frame(lambda p: label_fingerprint(maps[p]))
    file_bytes = per_frame(lambda p: hashlib.sha256(p.read_bytes()).digest())
    shape = next(iter(maps.values())).shape
    print(f"label fingerprint, {len(paths)} real {shape[1]}x{shape[0]} labels (ms per frame, best of {args.repeats}):")
    print(f"  decode the label PNG to train ids  {decode:7.3f}")
    print(f"  label_fingerprint (sha256 of ids)  {fingerprint:7.3f}  ({100 * fingerprint / decode:.0f}% of the decode)")
    print(f"  sha256 of the PNG file's bytes     {file_bytes:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
