"""SegFormer's all-MLP decoder (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation
with Transformers", NeurIPS 2021, §3.2), on any backbone's four levels:

    per level i: a linear projection C_i -> channels (a 1x1 conv with bias: the paper's Linear(C_i, C)),
                 bilinear upsampling to stride 4
    concatenate, deepest level first (4·channels)
    1x1 fuse conv (no bias) + BatchNorm + ReLU -> channels                       = "features"
    → Dropout2d(0.1) → 1x1 classifier                                          = logits at stride 4

Laid out as HF transformers' `SegformerDecodeHead` (modeling_segformer.py: per-level projections, `linear_fuse`, the
reversed concatenation), and equal to it output for output with copied weights (tests/test_heads.py); the
per-level Linear over the flattened tokens is the same map as a 1x1 conv, whose weight is the Linear's with
two unit dimensions. One difference: dropout before the classifier is channel-wise (Dropout2d, as in the
authors' MMSegmentation code and this project's other heads) where HF drops single elements; both are
identities in eval mode. Registered as `segformer` in `models.heads.HEADS`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import ConvModule, init_classifier, resize_bilinear


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder over four feature maps at strides 4, 8, 16, 32.

    Args:
        in_channels: channels of the four backbone levels (from `feature_info.channels()`).
        num_classes: logits channels.
        channels: the one width every level is projected to (the paper's C: 256 for MiT-B0/B1, 768 for B2-B5).
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, in_channels: list[int] | tuple[int, ...], num_classes: int, channels: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"SegFormerHead expects 4 feature levels, got in_channels={list(in_channels)}")
        self.linear_c = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        for proj in self.linear_c:  # HF's _init_weights for its Linear layers: normal(0.02), bias 0
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)
        self.linear_fuse = ConvModule(len(in_channels) * channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = init_classifier(nn.Conv2d(channels, num_classes, 1))

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Four maps (N, C_i, H/s_i, W/s_i), s = 4, 8, 16, 32 -> fused (N, channels, H/4, W/4)."""
        size = features[0].shape[-2:]
        projected = [resize_bilinear(proj(f), size) for proj, f in zip(self.linear_c, features)]
        return self.linear_fuse(torch.cat(projected[::-1], dim=1))  # deepest first, as HF concatenates

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """(N, channels, h, w) -> logits (N, num_classes, h, w)."""
        return self.conv_seg(self.dropout(fused))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fuse(features))
