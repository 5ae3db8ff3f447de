"""The inference loop shared by train.py (every epoch) and evaluate.py: model -> argmax -> SegmentationMetrics.

Single-scale, full-resolution inference. Each process computes the small per-image count tensors of its
batches (`SegmentationMetrics.image_stats`), `accelerator.gather_for_metrics` collects them (dropping the
samples a distributed sampler repeats at the tail) and every process adds the same counts, so the result is
identical on 1 or N GPUs and no 1024x2048 prediction map ever crosses processes.

    metrics = evaluate_model(model, val_loader, accelerator)
    metrics["miou"], metrics["boundary_f1"], metrics["trimap_iou"], metrics["iou"], metrics["num_images"]
    metrics["classes"]  # the names of metrics["iou"]'s entries: the loader's dataset's class table
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.errors import LiveError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from data_utils.augment import normalize
from metrics import SegmentationMetrics

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


BAR_COLUMNS = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())


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


def evaluate_model(model: torch.nn.Module, loader, accelerator, boundary_px: int = 3, with_metrics: bool = True,
                   on_predictions: PredictionSink | None = None, description: str = "evaluating",
                   show_progress: bool = True) -> dict:
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

    Returns:
        SegmentationMetrics.compute(): {"miou", "iou" (list of C, NaN = class absent), "boundary_f1",
        "trimap_iou", "num_images"} and "classes" (the C names); with_metrics=False gives {"num_images"} only
        (this process's count).
    The model's train/eval mode is restored afterwards.
    """
    classes = getattr(loader.dataset, "classes", None)  # None: an image-only loader (with_metrics=False)
    metric = SegmentationMetrics(classes.num_classes, classes.ignore_index, boundary_px) if with_metrics else None
    was_training = model.training
    model.eval()
    num_images = 0
    bar = Progress(*BAR_COLUMNS, transient=True,
                   disable=not (show_progress and accelerator.is_main_process))
    task = bar.add_task(description, total=len(loader))
    try:
        with _live(bar), torch.no_grad():  # not inference_mode: train.py trains this model again afterwards
            for batch in loader:
                images = batch["image"].to(accelerator.device, non_blocking=True)
                labels = batch["label"].to(accelerator.device, non_blocking=True) if with_metrics else None
                pred = predict(model, images, size=None if labels is None else labels.shape[-2:])
                if with_metrics:
                    stats = metric.image_stats(pred, labels)  # small per-image counts, on the device
                    metric.add_stats(accelerator.gather_for_metrics(stats))
                if on_predictions is not None:
                    on_predictions(list(batch["name"]), batch["image"].cpu(), pred.to(torch.uint8).cpu())
                num_images += images.shape[0]
                bar.advance(task)
            result = ({**metric.compute(), "classes": list(classes.names)} if with_metrics
                      else {"num_images": num_images})
    finally:
        model.train(was_training)
    return result
