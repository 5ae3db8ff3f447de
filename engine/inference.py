"""Images -> class scores -> predictions: the one forward path of evaluate.py, train.py's evaluation and predict.py.

Modes (MMSegmentation's `test_cfg` and `aug_test`, mmseg/models/segmentors/encoder_decoder.py):
- whole: one forward pass over the full image (the study's protocol; what evaluate.py did before these modes);
- slide: windows of `crop` (H, W) every `stride` (H, W) pixels, the last window of a row or column shifted back
  to end at the image border; each pixel's logits are the sum over the windows holding it divided by their
  count (`slide_windows`, mmseg's `slide_inference`). A window larger than the image is clipped to it;
- test-time augmentation (`flip`, `scales`): the image is resized by each scale (bilinear, size rounded to the
  nearest pixel), optionally flipped left-right, predicted (whole or slide), flipped back and resized to the
  output size; the scores are the mean softmax over all those passes (mmseg's aug_test).

    inference = Inference(mode="slide", crop=(512, 1024), stride=(341, 683), flip=True, scales=(0.75, 1.0, 1.25))
    pred = predict(model, images, inference=inference)       # (N, H, W) int64 train ids
    inference.tag                                            # "slide512x1024s341x683-flip-ms0.75,1,1.25"

One pass (scales (1.0,), no flip) returns the logits themselves, so `whole` is bit-for-bit the single-scale path.
BF16 autocast on CUDA for every forward pass; the caller sets eval mode and the grad mode.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data_utils.augment import normalize

MODES = ("whole", "slide")


@dataclass(frozen=True)
class Inference:
    """How images become scores; the default is single-scale whole-image inference (see the module docstring)."""

    mode: str = "whole"  # whole | slide
    crop: tuple[int, int] | None = None  # slide: window (H, W)
    stride: tuple[int, int] | None = None  # slide: step (H, W); default two thirds of the window
    flip: bool = False  # add left-right flipped passes
    scales: tuple[float, ...] = (1.0,)  # image size factors of the passes

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown inference mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.mode == "slide":
            if self.crop is None or min(self.crop) < 1:
                raise ValueError(f"slide inference needs a positive window (crop), got {self.crop}")
            if self.stride is None:
                object.__setattr__(self, "stride", tuple(max(1, 2 * c // 3) for c in self.crop))
            if min(self.stride) < 1:
                raise ValueError(f"slide inference needs a positive stride, got {self.stride}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive factors, got {self.scales}")

    @property
    def single_pass(self) -> bool:
        return not self.flip and tuple(self.scales) == (1.0,)

    @property
    def tag(self) -> str:
        """A short file-name-safe name: "whole", "slide512x512s384x384", "whole-flip-ms0.5,1,1.5"."""
        tag = self.mode if self.mode == "whole" else "slide{}x{}s{}x{}".format(*self.crop, *self.stride)
        if self.flip:
            tag += "-flip"
        if tuple(self.scales) != (1.0,):
            tag += "-ms" + ",".join(f"{s:g}" for s in self.scales)
        return tag

    def to_dict(self) -> dict:
        return {"mode": self.mode, "crop": self.crop, "stride": self.stride, "flip": self.flip,
                "scales": list(self.scales), "tag": self.tag}


WHOLE = Inference()


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def slide_windows(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple]:
    """The (y1, y2, x1, x2) windows of slide inference over an image of `height` x `width`, row by row.

    As mmseg's slide_inference: ceil((size - crop) / stride) + 1 windows per axis, each starting at
    index * stride, the ones passing the border shifted back to end on it, windows larger than the image clipped.
    """
    def starts(size: int, c: int, s: int) -> list[tuple[int, int]]:
        grids = max(size - c + s - 1, 0) // s + 1
        spans = []
        for i in range(grids):
            end = min(i * s + c, size)
            spans.append((max(end - c, 0), end))
        return spans

    return [(y1, y2, x1, x2) for y1, y2 in starts(height, crop[0], stride[0])
            for x1, x2 in starts(width, crop[1], stride[1])]


def _logits(model: torch.nn.Module, images: torch.Tensor, inference: Inference) -> torch.Tensor:
    """Normalised (N, 3, H, W) -> (N, C, H, W) logits by whole or slide inference (module docstring)."""
    with _autocast(images.device):
        if inference.mode == "whole":
            return model(images)["logits"]
        height, width = images.shape[-2:]
        total = count = None
        for y1, y2, x1, x2 in slide_windows(height, width, inference.crop, inference.stride):
            window = model(images[:, :, y1:y2, x1:x2])["logits"].float()
            if total is None:
                total = window.new_zeros((*window.shape[:2], height, width))
                count = window.new_zeros((1, 1, height, width))
            total[:, :, y1:y2, x1:x2] += window
            count[:, :, y1:y2, x1:x2] += 1
        return total / count


def class_scores(model: torch.nn.Module, images: torch.Tensor, inference: Inference = WHOLE,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, 3, H, W) uint8 or normalised float images on the model's device -> (N, C, H', W') class scores.

    One pass: the logits, upsampled (bilinear) to `size` (default: the image size) when they differ; several
    passes (flip, scales): the mean softmax of the passes, each resized to `size` (module docstring).
    The argmax over C is the prediction.
    """
    if images.dtype == torch.uint8:
        images = normalize(images)
    size = tuple(size or images.shape[-2:])
    if inference.single_pass:
        logits = _logits(model, images, inference)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        return logits
    total, passes = None, 0
    height, width = images.shape[-2:]
    for scale in inference.scales:
        scaled_size = (max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5)))
        scaled = (images if scaled_size == (height, width)
                  else F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False))
        for flip in (False, True) if inference.flip else (False,):
            logits = _logits(model, scaled.flip(-1) if flip else scaled, inference).float()
            if flip:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
            passes += 1
    return total / passes


def predict(model: torch.nn.Module, images: torch.Tensor, size: tuple[int, int] | None = None,
            inference: Inference = WHOLE) -> torch.Tensor:
    """(N, 3, H, W) uint8 or normalised float images -> (N, H', W') int64 train ids: `class_scores`' argmax."""
    return class_scores(model, images, inference, size).argmax(1)
