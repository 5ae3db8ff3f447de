"""Prediction samples in train.py's and evaluate.py's evaluations: which frames (the run's sample set, chosen once),
and their predictions written beside a results file. The format and its readers: engine.samples.

    names = shared_sample_names(accelerator, run_dir, val_dataset, "val", k=cfg.samples, presence=presence)
    sink = SampleSink(names)            # evaluate_model(..., on_predictions=sink)
    write_sample_predictions(results_path(ckpt), "val", sink, accelerator, classes.palette)

The names come from RUN/samples/index.json when it holds at least K names of the split (its first K: the choice is
prefix-stable), else from `engine.samples.choose_samples` over the classes each label holds, and RUN/samples/ is
(re)written. train.py passes the presence its check of the val labels already computed
(`data_utils.dataset.check_labels`); evaluate.py decodes the labels here when the run has no sample set yet,
once per process and split (`split_presence` caches it), so `evaluate.py --all` over many old runs decodes the
split once.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_utils.dataset import SegmentationDataset, check_labels
from engine.samples import SampleSink, choose_samples, read_sample_set, write_predictions, write_sample_set
from utils.fileio import UserError

_PRESENCE: dict[tuple, np.ndarray] = {}  # split_presence's cache: (the split's frames and classes) -> (N, C) bool


def split_presence(dataset: SegmentationDataset, num_workers: int = 0) -> np.ndarray:
    """(N, C) bool, the classes each of `dataset`'s labels holds (`check_labels`), decoded once per process for
    the same frames and classes."""
    frames, classes = dataset.frames, dataset.classes
    key = (tuple(dataset.names), tuple(getattr(frames, "label_paths", ())), classes.source, tuple(classes.names))
    if key not in _PRESENCE:
        _PRESENCE[key] = check_labels(dataset, num_workers)
    return _PRESENCE[key]


def sample_names(run_dir: Path, dataset: SegmentationDataset, split: str, k: int,
                 presence: np.ndarray | None = None, num_workers: int = 0) -> list[str]:
    """The K sample names of `run_dir` on `split` (main process: it may write RUN/samples/).

    RUN/samples/ is kept when it is intact and holds at least K names (or the whole split) of this split and class
    table, all frames of `dataset`; else the K are chosen (`choose_samples` over `presence`, or the labels decoded now:
    `split_presence`) and RUN/samples/ is written (`write_sample_set`: the images and ground truth)."""
    if k <= 0:
        return []
    classes = dataset.classes
    try:
        current = read_sample_set(run_dir)
        if (current.split == split and len(current.names) >= min(k, len(dataset.names))
                and current.class_names == list(classes.names)
                and set(current.names) <= set(dataset.names)):
            return current.names[:k]
    except UserError:
        pass  # none yet, or damaged: chosen and written again
    if presence is None:
        presence = split_presence(dataset, num_workers)
    names = choose_samples(dataset.names, presence, k)
    index = {name: i for i, name in enumerate(dataset.names)}
    write_sample_set(run_dir, split, names, classes.names, classes.palette,
                     lambda name: dataset.frames.read(index[name]), classes.ignore_index, len(dataset.names))
    return names


def shared_sample_names(accelerator, run_dir: Path, dataset: SegmentationDataset, split: str, k: int,
                        presence: np.ndarray | None = None, num_workers: int = 0) -> list[str]:
    """`sample_names` on the main process, sent to the others (each keeps the sample frames of its own batches)."""
    names = sample_names(run_dir, dataset, split, k, presence, num_workers) if accelerator.is_main_process else None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        names = broadcast_object_list([names])[0]
    return names


def write_sample_predictions(results_file: Path, split: str, sink: SampleSink, accelerator,
                             palette) -> Path | None:
    """Gather `sink`'s predictions (call on every process) and write them beside `results_file` (main process:
    `engine.samples.write_predictions`); returns the folder (None on the other processes)."""
    predictions = sink.gather(accelerator)
    if not accelerator.is_main_process:
        return None
    return write_predictions(results_file, split, predictions, palette,
                             names=[name for name in sink.names if name in predictions])


def both(*sinks: Callable | None) -> Callable | None:
    """One PredictionSink calling each of `sinks` that is not None (None if none is left)."""
    sinks = [s for s in sinks if s is not None]
    if len(sinks) <= 1:
        return sinks[0] if sinks else None

    def each(*args) -> None:
        for sink in sinks:
            sink(*args)
    return each
