"""The two layers every head shares: bilinear resizing and conv → BatchNorm → ReLU (mmcv's `ConvModule`)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with align_corners=False (MMSegmentation's `resize` as its heads call it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """conv (no bias) → BatchNorm → ReLU, initialised as mmcv's ConvModule (Kaiming fan_out, BN 1/0)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


def init_classifier(conv: nn.Conv2d) -> nn.Conv2d:
    """A head's 1x1 classifier initialised as MMSegmentation's `BaseDecodeHead.cls_seg`: normal(std=0.01), bias 0."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv
