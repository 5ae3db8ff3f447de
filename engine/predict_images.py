"""predict.py's work: a checkpoint over any images, same-size images batched, every output written per image.

    ckpt = resolve_checkpoint(Path("runs/demo/convnextv2_atto/C_seed42"))  # engine.checkpoint: a run folder -> its newest checkpoint
    report = predict_images(ckpt, find_images(["photos/"]), Path("preds"), Inference(flip=True), accelerator)
    report.failures     # [(path, one-line error)]: unreadable images; the others were written

Images are read by DataLoader workers (data_utils.image_files), collected by size and run through
`engine.inference.predict` `batch_size` at a time (a partial batch of each size at the end); under
`accelerate launch` each process takes its share of the inputs. Outputs: engine.predict_outputs.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.markup import escape

from data_utils.image_files import ImageFileDataset, ImageInput
from engine.checkpoint_eval import load_checkpoint
from engine.inference import Inference, predict
from engine.predict_outputs import find_ground_truth, read_ground_truth, write_outputs
from engine.setup import class_table
from metrics.segmentation import SegmentationMetrics
from utils import UserError, atomic_write_text, user_message
from utils.bars import Bars
from utils.console import progress_columns
from utils.signals import loader_worker_init

METRICS_FILE = "metrics.csv"  # --gt: one row per image with ground truth


@dataclass
class PredictReport:
    written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line error)
    metrics: list[dict] = field(default_factory=list)  # --gt: per-image rows
    without_gt: list[str] = field(default_factory=list)  # --gt: images without a label file there


def _image_row(name: str, pred: torch.Tensor, target: torch.Tensor, classes) -> dict:
    """One image's metrics (SegmentationMetrics on it alone; docs/metrics.md), in percent."""
    metric = SegmentationMetrics(classes.num_classes, classes.ignore_index, class_names=classes.names)
    metric.update(pred[None], target[None], [name])
    scores = metric.compute()
    valid = target != classes.ignore_index
    accuracy = (pred[valid] == target[valid]).float().mean().item() if valid.any() else math.nan
    return {"image": name, "pixel_accuracy": 100 * accuracy,
            **{key: 100 * scores[key] for key in ("miou", "boundary_f1", "boundary_iou")}}


def predict_images(ckpt: Path, inputs: list[ImageInput], out_dir: Path, inference: Inference, accelerator,
                   batch_size: int = 1, num_workers: int = 2, gt_dir: Path | None = None,
                   console=None) -> PredictReport:
    """Predict this process's share of `inputs` into `out_dir`; returns its PredictReport (see module docstring).

    Unreadable images are reported (one line each, on `console`) and skipped; every other image gets all its
    outputs. With `gt_dir`, images with a label file there also get the error view and a metrics row.
    """
    cfg, _, model = load_checkpoint(ckpt)
    classes = class_table(cfg)
    model = accelerator.prepare_model(model, evaluation_mode=True).eval()
    gt_index = {p.name: p for p in gt_dir.rglob("*.png")} if gt_dir is not None else None
    report = PredictReport()
    with accelerator.split_between_processes(inputs) as mine:
        loader = torch.utils.data.DataLoader(ImageFileDataset(mine), batch_size=None, num_workers=num_workers,
                                             worker_init_fn=loader_worker_init)  # a group SIGTERM: no traceback
        pending: dict[tuple, list[dict]] = {}  # image size -> items waiting for a full batch
        bar = Bars(*progress_columns(), console=console, disable=not accelerator.is_main_process)
        task = bar.add_task("predicting", total=len(mine))

        def run(batch: list[dict]) -> None:
            images = torch.stack([item["image"] for item in batch]).to(accelerator.device)
            with torch.inference_mode():
                preds = predict(model, images, inference=inference).to(torch.uint8).cpu()
            for item, pred in zip(batch, preds):
                image_input = mine[item["index"]]
                target = None
                found = None if gt_index is None else find_ground_truth(gt_index, image_input.name)
                if gt_index is not None and found is None:
                    report.without_gt.append(str(image_input.path))
                if found is not None:
                    try:
                        target = torch.from_numpy(read_ground_truth(*found, classes, tuple(pred.shape)))
                    except UserError as e:  # the prediction is still written, without the error view
                        report.failures.append((str(found[0]), user_message(e)))
                        bar.console.print(f"unusable ground truth: {user_message(e)}", soft_wrap=True, markup=False)
                    else:
                        report.metrics.append(_image_row(image_input.name, pred.long(), target.long(), classes))
                write_outputs(out_dir, image_input.name, item["image"].permute(1, 2, 0).numpy(), pred.numpy(),
                              classes, None if target is None else target.numpy())
                report.written += 1
                bar.advance(task)

        with bar:
            for item in loader:
                if item["error"] is not None:
                    report.failures.append((str(mine[item["index"]].path), item["error"]))
                    bar.console.print(f"[red]unreadable[/red] {escape(str(mine[item['index']].path))}: "
                                      f"{escape(item['error'])}", soft_wrap=True)
                    bar.advance(task)
                    continue
                if item["note"] is not None:
                    bar.console.print(f"note: {mine[item['index']].path}: {item['note']}", soft_wrap=True,
                                      markup=False)
                size_batch = pending.setdefault(tuple(item["image"].shape), [])
                size_batch.append(item)
                if len(size_batch) == batch_size:
                    run(pending.pop(tuple(item["image"].shape)))
            for size_batch in pending.values():
                run(size_batch)
    return report


def write_metrics(rows: list[dict], path: Path) -> None:
    """--gt's per-image metrics (percent), sorted by image name, as CSV (atomically)."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["image"]):
        writer.writerow({k: f"{v:.2f}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())

