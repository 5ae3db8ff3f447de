"""Predictions as files, as the Cityscapes test server takes them: evaluate.py --save-predictions DIR.

    DIR/labelIds/<city>/<name>_labelIds.png   8-bit label values (Cityscapes' label ids, else class indices)
    DIR/overlay/<city>/<name>_overlay.jpg     the image blended 50/50 with the prediction in the classes' palette

`<city>` is `data_utils.layout.frame_city(name)`; a name without a city (an HF dataset's) goes straight
into labelIds/ and overlay/. Each file is written atomically.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data_utils.layout import frame_city
from data_utils.classes import ClassTable
from engine.predict_outputs import encode_image
from utils import atomic_write_bytes


class PredictionWriter:
    """`engine.evaluation.PredictionSink` writing the files of the module docstring, PNG/JPEG-encoded on a thread
    pool (at most 4 images per thread in flight, so a fast GPU cannot fill the RAM).

        >>> writer = PredictionWriter(Path("preds"), classes)
        >>> evaluate_model(model, loader, accelerator, on_predictions=writer)
        >>> writer.close()   # waits for the pending writes, re-raises a failed one; returns the count
    """

    def __init__(self, out_dir: Path, classes: ClassTable, threads: int = 4):
        self.out_dir, self.pool, self.threads = out_dir, ThreadPoolExecutor(threads), threads
        self.classes = classes
        self.pending, self.written = [], 0

    def __call__(self, names: list[str], images: torch.Tensor, pred_train_ids: torch.Tensor) -> None:
        for name, image, pred in zip(names, images, pred_train_ids):
            while len(self.pending) >= 4 * self.threads:  # back-pressure: a fast GPU must not fill the RAM
                self._finish_oldest()
            self.pending.append(self.pool.submit(self._write, name, image.numpy(), pred.numpy()))

    def _finish_oldest(self) -> None:
        self.pending.pop(0).result()  # re-raises a failed write
        self.written += 1

    def _write(self, name: str, image_chw: np.ndarray, pred: np.ndarray) -> None:
        city = frame_city(name) or ""
        atomic_write_bytes(self.out_dir / "labelIds" / city / f"{name}_labelIds.png",
                           encode_image(self.classes.to_label_ids(pred)))  # (H, W) uint8 -> mode L
        blend = 0.5 * image_chw.transpose(1, 2, 0) + 0.5 * self.classes.colorize(pred)  # uint8 (PredictionSink)
        atomic_write_bytes(self.out_dir / "overlay" / city / f"{name}_overlay.jpg",
                           encode_image(blend.astype(np.uint8), "JPEG"))

    def close(self) -> int:
        """Wait for the pending writes; returns the number of images written."""
        while self.pending:
            self._finish_oldest()
        self.pool.shutdown()
        return self.written
