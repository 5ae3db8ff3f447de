"""Data loader throughput on CPU: images/s per worker for full-size frames, to size --num-workers.

What one training item costs in a DataLoader worker (`data_utils.dataset.SegmentationDataset`, the train
setting: random flip, uint8 image for augmentation on the device), per stage and in total, for each SDT
source: none (variants A/B, or SDT computed on the device), cpu (compute_sdt in the worker), cache (read
a precomputed file, memory-mapped) and cache-z (a `precompute_sdt.py --compress` file, decoded in memory).
Each stage runs in this process on one thread, over --passes passes of the frames after one warm-up pass
(files are in the page cache, as after the first epoch), timed in CPU seconds of this process (a busy host
does not inflate them; on a quiet core they equal wall time). A worker is one process with one thread, so its
rate is 1 / (time per item); then a real DataLoader with each --num-workers count measures what the machine
gives (collate and inter-process transfer included).

    python bench/bench_loader.py                               # the 8 real 2048x1024 frames (shared data)
    python bench/bench_loader.py --num-workers 1,2,4 --target 18   # workers needed for 18 img/s

Workers needed for a target rate R: ceil(R / per-worker rate), each on its own core, plus the cores the
training process itself uses (its main thread and the pin-memory thread).
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from data_utils import dataset as dataset_module  # noqa: E402
from data_utils.cityscapes import load_split  # noqa: E402
from data_utils.dataset import (SegmentationDataset, collate_batch, read_image, read_label_ids,  # noqa: E402
                                read_train_ids)
from data_utils.labels import CITYSCAPES  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.fileio import RenamedFlag, atomic_write_json, run_main  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes_fullres"
LABEL_FIX = "pass *_gtFine_labelIds.png files"  # what to do about a value outside the Cityscapes table
SOURCES = ("none", "cpu", "cache", "cache-z")  # cache-z: precompute_sdt.py --compress files


def prepare_sdt_cache(data_root: Path, cache_dir: Path, compress: bool = False) -> Path:
    """SDT cache files (data_utils.sdt_cache format, as precompute_sdt.py writes them, zlib row deltas with
    `compress`) for every train frame; identical labels (hard-linked PNGs) get hard-linked cache files, so
    the cache costs one compute_sdt per distinct label file."""
    from data_utils.sdt import compute_sdt
    from data_utils.sdt_cache import sdt_cache_path, write_sdt_file

    done: dict[int, Path] = {}  # label file inode -> its cache file
    for record in load_split(data_root, "train"):
        out = Path(sdt_cache_path(cache_dir, record["name"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        inode = os.stat(record["label_path"]).st_ino
        if inode in done:
            os.link(done[inode], out)
            continue
        train_ids = read_train_ids(record["label_path"])
        write_sdt_file(out, compute_sdt(train_ids, CITYSCAPES.num_classes), labels=train_ids, compress=compress)
        done[inode] = out
    return cache_dir


def mean_seconds(fn, items: list, passes: int) -> float:
    """Mean CPU seconds of this process per fn(item) over `passes` passes of `items`, after one untimed pass.

    CPU time, not wall time: what the item costs a worker that has its core to itself, which a busy host does
    not inflate by the time other processes hold the core (on a quiet core the two agree)."""
    for item in items:
        fn(item)
    start = time.process_time()
    for _ in range(passes):
        for item in items:
            fn(item)
    return (time.process_time() - start) / (passes * len(items))


def make_dataset(records, source: str, caches: dict[str, Path]) -> SegmentationDataset:
    """The training dataset (random flip, uint8 images) with one SDT source of this benchmark."""
    sdt_source = "cache" if source.startswith("cache") else source
    return SegmentationDataset(records, hflip=True, seed=0, image_dtype="uint8", sdt_source=sdt_source,
                               sdt_cache_dir=caches.get(source))


def stage_times(records: list[dict], passes: int, sources: list[str], caches: dict[str, Path]) -> dict[str, float]:
    """Seconds per frame of each stage of SegmentationDataset.__getitem__, one thread (each stage on
    inputs decoded beforehand, so the stages add up to about one item), and PIL's decode of the same files as
    the reference for the decoder `read_image` / `read_label_ids` use (pyspng where it can)."""
    from data_utils import sdt, sdt_cache

    label_ids = {r["name"]: read_label_ids(r["label_path"]) for r in records}
    train_ids = {name: CITYSCAPES.to_train_ids(ids, name, LABEL_FIX) for name, ids in label_ids.items()}
    images = {r["name"]: read_image(r["image_path"]) for r in records}
    stages = {
        "decode image PNG": lambda r: read_image(r["image_path"]),
        "decode image PNG, PIL only (reference)": lambda r: np.array(Image.open(r["image_path"])),
        "decode label PNG": lambda r: read_label_ids(r["label_path"]),
        "decode label PNG, PIL only (reference)": lambda r: np.array(Image.open(r["label_path"])),
        "label ids -> train ids": lambda r: CITYSCAPES.to_train_ids(label_ids[r["name"]], r["label_path"], LABEL_FIX),
        "to tensors (uint8 CHW image, uint8 label)": lambda r: (
            torch.from_numpy(np.ascontiguousarray(images[r["name"]].transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(train_ids[r["name"]], dtype=np.uint8))),
    }
    if "cpu" in sources:
        stages["compute_sdt (cpu source)"] = lambda r: sdt.compute_sdt(train_ids[r["name"]], CITYSCAPES.num_classes)
    for source, cache_dir in caches.items():
        def read(r, cache_dir=cache_dir):
            path = sdt_cache.sdt_cache_path(cache_dir, r["name"])
            shape = (CITYSCAPES.num_classes, *train_ids[r["name"]].shape)
            return np.array(sdt_cache.read_sdt_file(path, expected_shape=shape), dtype=np.int8)
        stages[f"read SDT file + copy ({source} source)"] = read
    return {name: mean_seconds(fn, records, passes) for name, fn in stages.items()}


@contextlib.contextmanager
def pil_only():
    """`read_image` / `read_label_ids` decode with PIL alone, as they do where pyspng is not installed."""
    saved, dataset_module.pyspng = dataset_module.pyspng, None
    try:
        yield
    finally:
        dataset_module.pyspng = saved


def item_seconds(records, source: str, caches: dict[str, Path], passes: int) -> float:
    """Seconds per SegmentationDataset item (train setting) in this process: one worker's cost per image."""
    dataset = make_dataset(records, source, caches)
    return mean_seconds(dataset.__getitem__, list(range(len(dataset))), passes)


def loader_rate(records, source: str, caches: dict[str, Path], workers: int, batches: int, batch_size: int) -> float:
    """Images/s of a real DataLoader (workers processes, persistent, prefetch 2) after its first batch."""
    dataset = make_dataset(records, source, caches)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch_size * (batches + 1),
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_batch,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         prefetch_factor=2 if workers > 0 else None)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    count = sum(len(batch["name"]) for batch in it)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="Cityscapes-layout root (train split)")
    parser.add_argument("--sources", default="none,cpu,cache,cache-z", help=f"comma list of {', '.join(SOURCES)}")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the frames (after one warm-up)")
    parser.add_argument("--num-workers", default="1,2",
                        help="comma list of DataLoader worker counts to run ('' = none)")
    parser.add_argument("--workers", action=RenamedFlag, new="--num-workers", dest="num_workers")
    parser.add_argument("--batches", type=int, default=8, help="batches per DataLoader measurement")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--target", type=float, default=18.0, help="images/s the training loop needs")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sources = args.sources.split(",")
    if not set(sources) <= set(SOURCES):
        parser.error(f"--sources: use a comma list of {', '.join(SOURCES)}")
    torch.set_num_threads(1)  # what a DataLoader worker gets
    import datasets

    datasets.disable_progress_bars()  # the file-list builder's bar would interleave with the results

    records = list(load_split(args.data_root, "train"))
    height, width = read_label_ids(records[0]["label_path"]).shape
    report = {"date": datetime.date.today().isoformat(), "data_root": str(args.data_root), "frames": len(records),
              "size": [height, width], "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "torch": torch.__version__}
    print(f"bench_loader {report['date']}: {len(records)} frames {width}x{height} from {args.data_root}, "
          f"{os.cpu_count()} cores, load average {report['load_average'][0]:.2f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        caches = {source: prepare_sdt_cache(args.data_root, workdir / source, compress=source == "cache-z")
                  for source in sources if source.startswith("cache")}
        stages = stage_times(records, args.passes, sources, caches)
        report["stage_ms"] = {k: 1e3 * v for k, v in stages.items()}
        print("stage (one thread)                          CPU ms/frame")
        for name, seconds in stages.items():
            print(f"  {name:<42} {1e3 * seconds:8.1f}")

        report["per_worker"] = {}
        print(f"\nSDT source  ms/item  img/s per worker  workers for {args.target:g} img/s   "
              "DataLoader img/s (workers)")
        for source in sources:
            seconds = item_seconds(records, source, caches, args.passes)
            rate = 1.0 / seconds
            needed = math.ceil(args.target / rate)
            measured = {}
            for w in [int(x) for x in args.num_workers.split(",") if x]:
                measured[w] = loader_rate(records, source, caches, w, args.batches, args.batch_size)
            report["per_worker"][source] = {"ms_per_item": 1e3 * seconds, "images_per_s_per_worker": rate,
                                            "workers_for_target": needed, "dataloader_images_per_s": measured}
            shown = "  ".join(f"{v:.2f} ({w})" for w, v in measured.items())
            print(f"  {source:<9} {1e3 * seconds:8.1f} {rate:12.2f} {needed:16d}            {shown}")
        if "none" in sources:  # the same item with PIL decoding every PNG: the decoder's gain, same run
            with pil_only():
                seconds = item_seconds(records, "none", caches, args.passes)
            report["per_worker"]["none, PIL only (reference)"] = {"ms_per_item": 1e3 * seconds,
                                                                  "images_per_s_per_worker": 1.0 / seconds}
            print(f"  none, PIL only (reference) {1e3 * seconds:8.1f} ms/item, {1.0 / seconds:.2f} img/s per worker")
        report["target_images_per_s"] = args.target
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    run_main(main)
