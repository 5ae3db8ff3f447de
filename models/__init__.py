"""A timm backbone (levels at strides 4/8/16/32) + a registered decode head (`models.heads.HEADS`: UPerNet,
SegFormer, FPN) + auxiliary FCN head.

Example:
    >>> model = build_model("convnextv2_base", num_classes=19, head="upernet", pretrained="weights/convnextv2_base.safetensors")
    >>> out = model(images)            # training: {"logits", "aux_logits"}, eval: {"logits"}

This package is importable without torch (engine.config imports `models.heads` for the --head choices): the
names below that need torch and timm are imported on first access.
"""
from __future__ import annotations

import importlib

from models.heads import DEFAULT_HEAD, HEADS

_LAZY = {"Segmentor": "models.segmentor", "create_backbone": "models.segmentor",
         "load_pretrained_backbone": "models.segmentor", "takes_input_size": "models.segmentor"}

__all__ = ["DEFAULT_HEAD", "HEADS", "Segmentor", "build_model", "takes_input_size"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def build_model(
    backbone: str = "convnextv2_base",
    *,
    num_classes: int,
    pretrained: str | None = None,
    aux_head: bool = True,
    drop_path_rate: float = 0.0,
    grad_checkpointing: bool = False,
    head_channels: int = 512,
    img_size: tuple[int, int] | None = None,
    head: str = DEFAULT_HEAD,
):
    """Build the segmentor (`models.segmentor.Segmentor`); BatchNorm throughout (train.py converts it to
    SyncBatchNorm on several GPUs).

    Args:
        backbone: timm model name (features_only; its levels at strides 4/8/16/32, `models.segmentor`).
        num_classes: logits channels: the dataset's class count (19 for Cityscapes).
        pretrained: None (random init), a local .safetensors/.pth timm checkpoint of the classification
            model, or a hub name ("timm:convnextv2_base.fcmae_ft_in22k_in1k_384", "hf-hub:timm/...").
            Only the backbone is loaded; the heads keep their initialisation.
        aux_head: add the auxiliary FCN head on the stride-16 features (used in training mode only).
        drop_path_rate: stochastic depth of the backbone.
        grad_checkpointing: recompute backbone stage activations in backward (saves memory at 1024x2048).
        head_channels: the head's width (UPerNet's PPM / FPN / fuse convs: 512 as in MMSegmentation; the CPU
            demo uses a narrower head).
        img_size: (H, W) of the training frames, for backbones built for one input size (Swin; see
            `takes_input_size`); ignored by the others.
        head: a name of `models.heads.HEADS` ("upernet", the study's; "segformer"; "fpn").
    Raises:
        UserError: unknown backbone or head, wrong strides, unreadable or non-matching pretrained weights.
    """
    from models.heads import head_class
    from models.segmentor import Segmentor, create_backbone, load_pretrained_backbone

    head_class(head)  # an unknown head fails before the backbone is built
    net = create_backbone(backbone, drop_path_rate=drop_path_rate, img_size=img_size)
    if pretrained:
        load_pretrained_backbone(net, backbone, pretrained)
    model = Segmentor(net, head=head, num_classes=num_classes, aux_head=aux_head, head_channels=head_channels)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
