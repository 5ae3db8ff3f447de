"""Panoptic FPN's semantic segmentation branch (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019,
§3 and Fig. 3) on an FPN (Lin et al., CVPR 2017) over any backbone's four levels:

    FPN:     a 1x1 lateral conv per level -> channels; top-down, each level adds the nearest-upsampled coarser
             one; a 3x3 output conv per level                                  = P2..P5 at strides 4..32
    branch:  per level, stages of 3x3 conv + norm + ReLU + 2x bilinear upsampling until stride 4: 3 stages at
             stride 32, 2 at 16, 1 at 8; stride 4 gets one conv stage without upsampling
    the four stride-4 maps are summed                                          = "features"
    → Dropout2d(0.1) → 1x1 classifier                                          = logits at stride 4

The paper: "starting from the deepest FPN level (at 1/32 scale), we perform three upsampling stages to yield a
feature map at 1/4 scale, where each upsampling stage consists of 3×3 convolution, group norm, ReLU, and 2×
bilinear upsampling. This strategy is repeated for FPN scales 1/16, 1/8, and 1/4 (with progressively fewer
upsampling stages). The result is a set of feature maps at the same 1/4 scale, which are then element-wise
summed. A final 1×1 convolution, 4× bilinear upsampling, and softmax are used to generate the per-pixel class
labels" (the 4x upsampling is the segmentor's, to the input size). tests/test_heads.py checks this description.

Choices beside the paper, as MMSegmentation's `FPNHead` makes them: BatchNorm instead of GroupNorm in the
branch (every head of this project normalises alike, and train.py turns it into SyncBatchNorm on several
GPUs), one width for the FPN and the branch (`channels`; the paper: 256 and 128), Dropout2d before the
classifier. "2x upsampling" resizes to the next finer level's size, which is exactly 2x when the sizes are
even and matches the backbone's levels when they are not (odd input sizes). The FPN convs have a bias and no
normalisation, as in Lin et al. Registered as `fpn` in `models.heads.HEADS`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import ConvModule, init_classifier, resize_bilinear


class FPNHead(nn.Module):
    """FPN + Panoptic FPN's semantic branch over four feature maps at strides 4, 8, 16, 32.

    Args:
        in_channels: channels of the four backbone levels (from `feature_info.channels()`).
        num_classes: logits channels.
        channels: width of the FPN and of the semantic branch (the paper: 256 and 128).
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, in_channels: list[int] | tuple[int, ...], num_classes: int, channels: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"FPNHead expects 4 feature levels, got in_channels={list(in_channels)}")
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        # level i (stride 4·2^i) climbs to stride 4 in i upsampling stages; stride 4 gets one stage without
        self.scale_heads = nn.ModuleList(
            nn.ModuleList(ConvModule(channels, channels, 3) for _ in range(max(1, level)))
            for level in range(len(in_channels)))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = init_classifier(nn.Conv2d(channels, num_classes, 1))

    def pyramid(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Four maps (N, C_i, H/s_i, W/s_i) -> the FPN's P2..P5, (N, channels, H/s_i, W/s_i)."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level adds the coarser one
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Four maps (N, C_i, H/s_i, W/s_i), s = 4, 8, 16, 32 -> fused (N, channels, H/4, W/4)."""
        pyramid = self.pyramid(features)
        fused = None
        for level, (x, stages) in enumerate(zip(pyramid, self.scale_heads)):
            for k, stage in enumerate(stages):
                x = stage(x)
                if level - k > 0:  # 2x up, to the next finer level's size
                    x = resize_bilinear(x, pyramid[level - k - 1].shape[-2:])
            fused = x if fused is None else fused + x
        return fused

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """(N, channels, h, w) -> logits (N, num_classes, h, w)."""
        return self.conv_seg(self.dropout(fused))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fuse(features))
