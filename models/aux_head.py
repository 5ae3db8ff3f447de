"""Auxiliary FCN head for every head (as MMSegmentation's `FCNHead` in its UPerNet configs: num_convs=1,
concat_input=False, channels=256) on the stride-16 features. Its logits are upsampled to the input size
and trained with weight 0.4 (`losses.AUX_LOSS_WEIGHT`); the segmentor runs it in training mode only.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import ConvModule, init_classifier


class FCNHead(nn.Module):
    """3x3 ConvModule (conv, BN, ReLU) to `channels` → Dropout2d → 1x1 classifier.

    Args:
        in_channels: channels of the stride-16 backbone level.
        num_classes: logits channels.
        channels: hidden width (256).
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.convs = ConvModule(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = init_classifier(nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H/16, W/16) -> logits (N, num_classes, H/16, W/16)."""
        return self.conv_seg(self.dropout(self.convs(x)))
