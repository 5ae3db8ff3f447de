"""UPerNet decode head (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018),
laid out as MMSegmentation's `UPerHead` (mmseg/models/decode_heads/uper_head.py) so that parameter names
and counts line up with the configs the study used:

    stride-32 features ── PPM (pool scales 1, 2, 3, 6) ─ 3x3 bottleneck ──────────────┐ lateral 4
    stride-4/8/16 features ── 1x1 lateral convs to `channels` ─────────────────────────┤ laterals 1..3
    top-down: lateral[i-1] += upsample(lateral[i]), then a 3x3 FPN conv on levels 1..3
    all four levels upsampled to stride 4 → concat (4·channels) → 3x3 fuse to channels  = "features"
    → Dropout2d(0.1) → 1x1 classifier                                                   = logits at stride 4

`channels` is 512 in MMSegmentation's configs and the study (`--head-channels`; the CPU demo uses fewer).

Every conv is a `ConvModule` (conv without bias, BatchNorm, ReLU) except one: the PPM branch with pool
scale 1. Its input is a 1x1 map, so with batch size 1 per device BatchNorm in training mode sees one
value per channel and raises ("Expected more than 1 value per channel"); with batch 2 its statistics
come from two numbers. That branch is therefore a 1x1 conv WITH bias + ReLU and no normalisation; the
PPM bottleneck that follows (BatchNorm over the concatenation at full stride-32 resolution) normalises
its output. Every other layer matches MMSegmentation exactly. BatchNorm becomes SyncBatchNorm in
multi-GPU training via `torch.nn.SyncBatchNorm.convert_sync_batchnorm` (train.py).

The study's head (`--head upernet`, the default); registered in `models.heads.HEADS`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import ConvModule, init_classifier, resize_bilinear


class PoolingBranch(nn.Sequential):
    """One PPM branch: adaptive average pool to (scale x scale), then 1x1 conv to `channels`.

    Scale 1 has no BatchNorm (see the module docstring): conv with bias + ReLU.
    """

    def __init__(self, scale: int, in_channels: int, channels: int):
        if scale == 1:
            conv = nn.Conv2d(in_channels, channels, 1, bias=True)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers = [nn.AdaptiveAvgPool2d(1), conv, nn.ReLU(inplace=True)]
        else:
            layers = [nn.AdaptiveAvgPool2d(scale), ConvModule(in_channels, channels, 1)]
        super().__init__(*layers)
        self.scale = scale


class UPerHead(nn.Module):
    """UPerNet head over four feature maps at strides 4, 8, 16, 32.

    Args:
        in_channels: channels of the four backbone levels (from `feature_info.channels()`).
        num_classes: logits channels.
        channels: width of every PPM / FPN / fuse conv (512 in MMSegmentation's UPerNet configs).
        pool_scales: PPM output sizes on the stride-32 map.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: list[int] | tuple[int, ...],
        num_classes: int,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"UPerHead expects 4 feature levels, got in_channels={list(in_channels)}")
        self.in_channels = list(in_channels)
        self.channels = channels
        # Pyramid pooling on the deepest level.
        self.psp_modules = nn.ModuleList(PoolingBranch(s, in_channels[-1], channels) for s in pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        # FPN on the three shallower levels.
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        # Classifier (mmseg's BaseDecodeHead.cls_seg: Dropout2d then a 1x1 conv, normal(std=0.01) init).
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = init_classifier(nn.Conv2d(channels, num_classes, 1))

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C32, h, w) -> (N, channels, h, w): x concatenated with its upsampled pooled branches."""
        size = x.shape[-2:]
        outs = [x] + [resize_bilinear(branch(x), size) for branch in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Four maps (N, C_i, H/s_i, W/s_i), s = 4, 8, 16, 32 -> fused (N, channels, H/4, W/4)."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.psp_forward(features[-1]))
        # Top-down pathway: each level adds the (upsampled) coarser one.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [resize_bilinear(o, size) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))  # (N, channels, H/4, W/4)

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """(N, channels, h, w) -> logits (N, num_classes, h, w)."""
        return self.conv_seg(self.dropout(fused))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fuse(features))
