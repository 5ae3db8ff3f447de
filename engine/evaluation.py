"""The inference loop shared by train.py (every epoch) and evaluate.py: model -> argmax -> SegmentationMetrics.

Single-scale, full-resolution inference. Each process computes the small per-image count tensors of its
batches (`SegmentationMetrics.image_stats`), `accelerator.gather_for_metrics` collects them with the image
names (dropping the samples a distributed sampler repeats at the tail) and every process adds the same counts,
so the result is identical on 1 or N GPUs and no 1024x2048 prediction map ever crosses processes.

The records computed on the host (`metrics.registry`, host=True: fragments, connected components by cc3d) have
no GPU kernel: each batch's prediction is copied to the host as uint8 (2 MB per 1024x2048 frame,
asynchronously) and counted on a background thread while the device runs the next batch's forward pass; a
batch's stats are gathered one iteration later, when its host stats are in, so the loop never waits for the
host except after the last batch.

    metrics = evaluate_model(model, val_loader, accelerator, metrics_profile="study")
    metrics["miou"], metrics["boundary_f1"], metrics["boundary_iou"], metrics["fragments_per_image"]
    metrics["per_image"]  # the per-image statistics (metrics.per_image layout) for <checkpoint>.per_image.npz
    metrics["classes"]  # the names of metrics["iou"]'s entries: the loader's dataset's class table
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from rich.errors import LiveError
from rich.progress import Progress

from data_utils.augment import normalize
from metrics.segmentation import SegmentationMetrics, host_image_stats
from utils.console import progress_columns

# Called with (names, images uint8 (N, 3, H, W) on the CPU, predicted train ids uint8 (N, H, W) on the CPU).
PredictionSink = Callable[[list[str], torch.Tensor, torch.Tensor], None]


def predict(model: torch.nn.Module, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, 3, H, W) uint8 or normalised float images on the model's device -> (N, H', W') int64 train ids.

    Logits are upsampled (bilinear) to `size` (default: the image size) before the argmax; BF16 autocast on
    CUDA. The caller sets eval mode and the grad mode.
    """
    if images.dtype == torch.uint8:
        images = normalize(images)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if images.device.type == "cuda"
                else contextlib.nullcontext())
    with autocast:
        logits = model(images)["logits"]  # (N, C, h, w)
    size = tuple(size or images.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


@contextlib.contextmanager
def _live(bar: Progress):
    """Show `bar` while the block runs; nested inside train.py's bars (rich >= 14), else silently hidden."""
    try:
        bar.start()
    except LiveError:  # rich < 14 cannot nest live displays
        bar.disable = True
    try:
        yield bar
    finally:
        bar.stop()


class HostStats:
    """Computes the host-side statistics (`metrics.segmentation.host_image_stats`) of prediction batches on one
    background thread.

    `submit(pred)` starts the uint8 copy to the host without waiting for the device (a CUDA event marks its
    end) and returns a Future of the {name: (N, ...) tensor} statistics, computed on the thread once the copy
    is done.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="host-stats")

    def submit(self, pred: torch.Tensor) -> Future:
        host = pred.to(torch.uint8).to("cpu", non_blocking=True)  # ids < MAX_CLASSES = 255 fit a byte; pinned
        copied = None
        if pred.device.type == "cuda":
            copied = torch.cuda.Event()
            copied.record()
        return self.pool.submit(self._count, host, copied)

    def _count(self, host: torch.Tensor, copied) -> dict[str, torch.Tensor]:
        if copied is not None:
            copied.synchronize()
        return host_image_stats(host, self.num_classes)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _add_batch(metric: SegmentationMetrics, accelerator, stats: dict, host_stats: Future, names: list[str],
               last: bool) -> None:
    """Gather one batch's stats and names over the processes and add them. Only the loader's last batch goes
    through `gather_for_metrics` (it drops the tail a distributed sampler repeats, and it must be called while
    that batch is the current one); earlier batches have nothing to drop."""
    device = stats["confusion"].device
    stats = {**stats, **{k: v.to(device) for k, v in host_stats.result().items()}}
    if last:
        stats = accelerator.gather_for_metrics(stats)
        names = accelerator.gather_for_metrics(names, use_gather_object=True)
    else:
        stats, names = accelerator.gather(stats), gather_object(names)
    metric.add_stats(stats, names)


def evaluate_model(model: torch.nn.Module, loader, accelerator, boundary_px: int = 3, with_metrics: bool = True,
                   on_predictions: PredictionSink | None = None, description: str = "evaluating",
                   show_progress: bool = True, metrics_profile: str = "default") -> dict:
    """Run `model` over `loader` and return the metrics of all processes together.

    Args:
        model: returns {"logits": (N, C, H, W)} (prepared by accelerate or not).
        loader: yields {"image": (N, 3, H, W) uint8 or normalised float, "label": (N, H, W) integer train
            ids (uint8 from `SegmentationDataset`; the metrics take any integer dtype), "name"}; prepare it
            with accelerate for multi-process evaluation. Its dataset's `classes` (a ClassTable) gives the
            number of classes, their names and the ignore index.
        accelerator: an `accelerate.Accelerator` (device, gather_for_metrics, main process).
        with_metrics: False for splits without real labels (the Cityscapes test split): only predictions.
        on_predictions: optional PredictionSink, called on every process for its own batches (e.g. to
            write PNGs; a sample repeated at a distributed tail is simply written twice, identically).
        description, show_progress: the rich progress bar (main process only).
        metrics_profile: "default" or "study" (SegmentationMetrics).

    Returns:
        SegmentationMetrics.compute() (every record's value and per-class values, num_images, metrics_profile)
        plus "per_image": SegmentationMetrics.per_image() and
        "classes" (the C names); with_metrics=False gives {"num_images"} only (this process's count).
    The model's train/eval mode is restored afterwards.
    """
    classes = getattr(loader.dataset, "classes", None)  # None: an image-only loader (with_metrics=False)
    metric = host_stats = None
    if with_metrics:
        metric = SegmentationMetrics(classes.num_classes, classes.ignore_index, boundary_px, profile=metrics_profile,
                                     class_names=classes.names)
        host_stats = HostStats(classes.num_classes)
    was_training = model.training
    model.eval()
    num_images = 0
    bar = Progress(*progress_columns(), transient=True,
                   disable=not (show_progress and accelerator.is_main_process))
    task = bar.add_task(description, total=len(loader))
    pending = None  # the previous batch: (stats, host stats future, names), added once its host stats are in
    try:
        with _live(bar), torch.no_grad():  # not inference_mode: train.py trains this model again afterwards
            for index, batch in enumerate(loader):
                images = batch["image"].to(accelerator.device, non_blocking=True)
                labels = batch["label"].to(accelerator.device, non_blocking=True) if with_metrics else None
                pred = predict(model, images, size=None if labels is None else labels.shape[-2:])
                if with_metrics:
                    stats = metric.image_stats(pred, labels)  # small per-image counts, on the device
                    current = (stats, host_stats.submit(pred), list(batch["name"]))
                    if pending is not None:
                        _add_batch(metric, accelerator, *pending, last=False)
                    pending = current
                    if index + 1 == len(loader):
                        _add_batch(metric, accelerator, *pending, last=True)
                        pending = None
                if on_predictions is not None:
                    on_predictions(list(batch["name"]), batch["image"].cpu(), pred.to(torch.uint8).cpu())
                num_images += images.shape[0]
                bar.advance(task)
            result = ({**metric.compute(), "per_image": metric.per_image(), "classes": list(classes.names)}
                      if with_metrics
                      else {"num_images": num_images})
    finally:
        if host_stats is not None:
            host_stats.close()
        model.train(was_training)
    return result
