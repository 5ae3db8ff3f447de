"""ConvNeXt-V2 (any timm backbone with levels at strides 4/8/16/32) + UPerNet + auxiliary FCN head.

Example:
    >>> model = build_model("convnextv2_base", num_classes=19, pretrained="weights/convnextv2_base.safetensors")
    >>> out = model(images)            # training: {"logits", "aux_logits"}, eval: {"logits"}
"""
from __future__ import annotations

from models.segmentor import UPerNetSegmentor, create_backbone, load_pretrained_backbone, takes_input_size

__all__ = ["UPerNetSegmentor", "build_model", "takes_input_size"]


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
) -> UPerNetSegmentor:
    """Build the segmentor; BatchNorm throughout (train.py converts it to SyncBatchNorm on several GPUs).

    Args:
        backbone: timm model name (features_only; its levels at strides 4/8/16/32, `models.segmentor`).
        num_classes: logits channels: the dataset's class count (19 for Cityscapes).
        pretrained: None (random init), a local .safetensors/.pth timm checkpoint of the classification
            model, or a hub name ("timm:convnextv2_base.fcmae_ft_in22k_in1k_384", "hf-hub:timm/...").
            Only the backbone is loaded; the heads keep their initialisation.
        aux_head: add the auxiliary FCN head on the stride-16 features (used in training mode only).
        drop_path_rate: stochastic depth of the backbone.
        grad_checkpointing: recompute backbone stage activations in backward (saves memory at 1024x2048).
        head_channels: width of UPerNet's PPM / FPN / fuse convs (512 as in MMSegmentation; the CPU demo
            uses a narrower head).
        img_size: (H, W) of the training frames, for backbones built for one input size (Swin; see
            `takes_input_size`); ignored by the others.
    Raises:
        UserError: unknown backbone, wrong strides, unreadable or non-matching pretrained weights.
    """
    net = create_backbone(backbone, drop_path_rate=drop_path_rate, img_size=img_size)
    if pretrained:
        load_pretrained_backbone(net, backbone, pretrained)
    model = UPerNetSegmentor(net, num_classes=num_classes, aux_head=aux_head, head_channels=head_channels)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
