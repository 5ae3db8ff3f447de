"""The decode heads by name (`--head`); no torch here (engine.config imports it for the flag's choices).

A head is one file of this folder holding one `nn.Module` class, registered by ONE line of `HEADS` below: its
name, where the class is ("module:Class", imported on first use, as `losses.registry.TERMS` does) and one line
for --help. Every head keeps one contract, which `models.segmentor.Segmentor` relies on and
tests/test_heads.py checks for every registered head:

    Head(in_channels, num_classes, channels)
        in_channels: the four backbone levels' channels at strides 4, 8, 16, 32 (`feature_info.channels()`)
        num_classes: logits channels; channels: the head's width (`--head-channels`, shared by all heads)
    head.fuse(features) -> (N, channels, H/4, W/4)
        features: four maps (N, C_i, H/s_i, W/s_i), s_i = 4, 8, 16, 32; the result is the head's last map
        before the classifier (the segmentor's `return_features=True` output, losses/gradients.py)
    head.classify(fused) -> logits (N, num_classes, H/4, W/4)
        dropout, then a 1x1 classifier (`models.layers.init_classifier`)

Example:
    >>> head_class("segformer")(in_channels=[40, 80, 160, 320], num_classes=19, channels=256)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from utils.fileio import UserError


@dataclass(frozen=True)
class HeadEntry:
    """One registered head (see the module docstring)."""

    name: str
    cls: str  # "module:Class"
    summary: str  # one line for --help and docs/model.md

    def load(self) -> type:
        """The head's class (imports its module, and so torch, on first use)."""
        module, name = self.cls.split(":")
        return getattr(importlib.import_module(module), name)


HEADS = {head.name: head for head in (
    HeadEntry("upernet", "models.heads.upernet:UPerHead", "UPerNet, Xiao et al. 2018, the study's"),
    HeadEntry("segformer", "models.heads.segformer:SegFormerHead", "SegFormer's all-MLP decoder, Xie et al. 2021"),
    HeadEntry("fpn", "models.heads.fpn:FPNHead", "Panoptic FPN's semantic branch, Kirillov et al. 2019"),
)}
DEFAULT_HEAD = "upernet"  # the study's; a saved config without a `head` key means it


def head_class(name: str) -> type:
    """The class registered as `name`.

    Raises:
        UserError: an unknown name (the message lists the registered ones).
    """
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}: use one of {', '.join(HEADS)}")
    return HEADS[name].load()


def head_summary() -> str:
    """"upernet: UPerNet, ...; segformer: ...; ..." for --help."""
    return "; ".join(f"{h.name}: {h.summary}" for h in HEADS.values())
