"""Backbone (any timm model with feature levels at strides 4/8/16/32) + a registered head (`models.heads`) +
aux FCN head, and loading ImageNet weights of the timm classification model into the features-only backbone.

The backbone follows timm's feature contract (`feature_info`: per level `num_chs`, `reduction`, `module`):
the four levels at reductions FEATURE_STRIDES are chosen from `feature_info.reduction()` of all the model's
levels, so a stride-2 stem level (ResNet, EfficientNet, RegNet, MobileNet) is skipped; NHWC feature maps
(Swin: `output_fmt` NHWC) are permuted to NCHW; a model built for one input size (a patch embedding with
a fixed `img_size`: Swin) gets the training frame size. A single-stride model (ViT) is refused.
"""
from __future__ import annotations

import functools
from pathlib import Path

import timm
import torch
import torch.nn as nn

from models.aux_head import FCNHead
from models.heads import DEFAULT_HEAD, head_class
from models.layers import resize_bilinear
from utils.cli import did_you_mean
from utils.console import plural
from utils.fileio import UserError

FEATURE_STRIDES = (4, 8, 16, 32)  # what every head expects from the backbone's four levels
AUX_LEVEL = 2  # the aux FCN head reads the stride-16 level
HUB_PREFIXES = ("timm:", "hf-hub:")  # pretrained=... names fetched by timm instead of read from a file


@functools.lru_cache(maxsize=4)
def _probe(name: str) -> nn.Module:
    """The features-only model on the meta device (no memory, ~0.1 s): its feature_info and modules."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, features_only=True, pretrained=False)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        raise UserError(f"unknown backbone {name!r}: pass a timm model name such as convnextv2_base (see "
                        f"timm.list_models()){did_you_mean(name, timm.list_models())}") from None


def takes_input_size(name: str) -> bool:
    """Whether timm builds `name` for one input size (a patch embedding with a fixed img_size, e.g. Swin)."""
    return any(getattr(m, "strict_img_size", False) and getattr(m, "img_size", None) is not None
               for m in _probe(name).modules())


def pyramid_indices(name: str) -> tuple[int, ...]:
    """Indices into the model's feature levels (`feature_info`) of the deepest level at each of FEATURE_STRIDES.

    Raises:
        UserError: the model has no level at one of these strides (the message names the strides it has).
    """
    strides = [info["reduction"] for info in _probe(name).feature_info.info]  # every level, stem included
    if any(s not in strides for s in FEATURE_STRIDES):
        raise UserError(
            f"backbone {name!r} has feature levels at strides {strides}, the heads need {list(FEATURE_STRIDES)}: "
            "choose a hierarchical backbone (ConvNeXt, ResNet, EfficientNet, RegNet, Swin, ...); single-stride "
            "ViTs cannot work"
        )
    return tuple(len(strides) - 1 - strides[::-1].index(s) for s in FEATURE_STRIDES)


def create_backbone(name: str, drop_path_rate: float = 0.0,
                    img_size: tuple[int, int] | None = None) -> nn.Module:
    """`timm.create_model(name, features_only=True, out_indices=...)` at random init: the levels at strides
    4/8/16/32 (`pyramid_indices`).

    The result is a timm features-only model: forward returns a list of four maps, (N, C_i, H/s_i, W/s_i), or
    (N, H/s_i, W/s_i, C_i) when its `output_fmt` is NHWC (Segmentor permutes those), and
    `feature_info.channels()` / `.reduction()` describe them.

    Args:
        img_size: (H, W) of the training frames, for a model built for one input size (`takes_input_size`);
            ignored by the others. Such a model is also built with `dynamic_img_size=True`, so evaluation
            on frames of another size (divisible by its patch size) works.
    """
    out_indices = pyramid_indices(name)  # first: a single-stride model is refused for its strides
    kwargs = {"drop_path_rate": drop_path_rate}
    if takes_input_size(name):
        if img_size is None:
            raise UserError(f"backbone {name!r} is built for one input size: pass img_size=(H, W) of the frames")
        kwargs.update(img_size=tuple(img_size), dynamic_img_size=True)
    return timm.create_model(name, features_only=True, out_indices=out_indices, pretrained=False, **kwargs)


def _is_nhwc(backbone: nn.Module) -> bool:
    fmt = getattr(backbone, "output_fmt", "NCHW")  # timm's Format enum (a str enum) or absent
    return getattr(fmt, "value", fmt) == "NHWC"


class Segmentor(nn.Module):
    """images (N, 3, H, W) -> {"logits": (N, num_classes, H, W), ...}: backbone -> a registered head (+ aux head).

    Training mode adds "aux_logits" (N, num_classes, H, W) from the FCN head on the stride-16 features
    (when built with one); eval mode returns "logits" only. `return_features=True` adds "features"
    (N, head_channels, H/4, W/4): the head's fused map, the last shared map before its classifier (the
    contract of `models.heads`). Logits are upsampled bilinearly (align_corners=False) to the input size,
    which may be any size (odd too).

    Args:
        backbone: a timm features-only model with levels at strides 4/8/16/32 (`create_backbone`).
        head: a name of `models.heads.HEADS` ("upernet", the study's). The head's parameters are named
            `decode_head.*` whatever the head, the aux head's `aux_head.*` (state dicts saved before the
            registry load unchanged).
        num_classes: logits channels.
        aux_head: add the auxiliary FCN head on the stride-16 features (used in training mode only).
        head_channels: the head's width (`--head-channels`).

    channels_last and bf16 autocast work as usual (`model.to(memory_format=torch.channels_last)`,
    `torch.autocast("cuda", torch.bfloat16)`): the forward has no dtype- or layout-specific code.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = DEFAULT_HEAD, aux_head: bool = True,
                 head_channels: int = 512):
        super().__init__()
        in_channels = list(backbone.feature_info.channels())
        self.backbone = backbone
        self.backbone_nhwc = _is_nhwc(backbone)
        self.head_name = head  # the HEADS name of decode_head
        self.decode_head = head_class(head)(in_channels, num_classes, channels=head_channels)
        self.aux_head = FCNHead(in_channels[AUX_LEVEL], num_classes) if aux_head else None
        self.num_classes = num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone stage activations in backward (timm's FeatureListNet: every stage except the
        first and the last) — less memory at 1024x2048 for extra compute."""
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor, return_features: bool = False) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)  # 4 maps, strides 4, 8, 16, 32
        if self.backbone_nhwc:  # (N, h, w, C) -> (N, C, h, w): a view with channels_last strides
            features = [f.permute(0, 3, 1, 2) for f in features]
        fused = self.decode_head.fuse(features)  # (N, head_channels, H/4, W/4)
        out = {"logits": resize_bilinear(self.decode_head.classify(fused), size)}
        if self.training and self.aux_head is not None:
            out["aux_logits"] = resize_bilinear(self.aux_head(features[AUX_LEVEL]), size)
        if return_features:
            out["features"] = fused
        return out


# ---------------------------------------------------------------------------------------------- pretrained
def _first_line(error: Exception) -> str:
    """'Type: first line of the message' (UserError messages are one line)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (optionally nested under "state_dict"/"model")."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / truncated / not a checkpoint: any reader error means the same to a user
        raise UserError(f"{path}: cannot read pretrained weights ({_first_line(e)}); re-download the file") from None
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _source_key(backbone_key: str, source: dict[str, torch.Tensor]) -> str | None:
    """The checkpoint key holding `backbone_key`'s weights, or None.

    timm's FeatureListNet flattens the classifier's top-level nn.Sequential children into its own
    namespace, joining the names with "_" (`stem.0` -> `stem_0`, `stages.2.blocks...` -> `stages_2.blocks...`;
    timm/models/_features.py `_module_list`). So a backbone key is found in a classification checkpoint
    with one "_" of its first component turned back into ".", or verbatim in a checkpoint saved from a
    features-only backbone.
    """
    if backbone_key in source:
        return backbone_key
    first, sep, rest = backbone_key.partition(".")
    for i, char in enumerate(first):
        if char == "_":
            candidate = first[:i] + "." + first[i + 1 :] + sep + rest
            if candidate in source:
                return candidate
    return None


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_backbone_state(backbone: nn.Module, source: dict[str, torch.Tensor], origin: str) -> None:
    """Copy a classification checkpoint's weights into the features-only `backbone`, all or nothing.

    Keys the backbone does not have (the classifier head: `head.norm.*`, `head.fc.*`) are dropped.
    Missing keys or wrong shapes raise a UserError naming them and `origin` (the file); the backbone is
    then left untouched.
    """
    target = backbone.state_dict()
    mapped, missing, mismatched = {}, [], []
    for key, value in target.items():
        src_key = _source_key(key, source)
        if src_key is None:
            missing.append(key)
        elif source[src_key].shape != value.shape:
            mismatched.append(f"{key} {tuple(source[src_key].shape)} vs {tuple(value.shape)}")
        else:
            mapped[key] = source[src_key]
    if missing or mismatched:
        problems = []
        if mismatched:
            problems.append(f"{plural(len(mismatched), 'key')} with wrong shapes (file vs model): "
                            f"{_describe(mismatched)}")
        if missing:
            problems.append(f"{plural(len(missing), 'key')} missing: {_describe(missing)}")
        raise UserError(
            f"{origin}: pretrained weights do not fit the backbone: {'; '.join(problems)}; "
            "pass a timm checkpoint of the same architecture as --backbone"
        )
    backbone.load_state_dict(mapped, strict=True)


def load_pretrained_backbone(backbone: nn.Module, backbone_name: str, pretrained: str) -> None:
    """Load ImageNet weights into `backbone` from a local .safetensors/.pth file (a timm checkpoint of the
    classification model, e.g. the `model.safetensors` of `timm/convnextv2_base.fcmae_ft_in22k_in1k_384`)
    or, when online, from a timm hub name: "timm:convnextv2_base.fcmae_ft_in22k_in1k_384" or
    "hf-hub:timm/convnextv2_base.fcmae_ft_in22k_in1k_384".
    """
    if pretrained.startswith(HUB_PREFIXES):
        hub_name = pretrained.removeprefix("timm:")
        if pretrained.startswith("timm:") and hub_name.split(".")[0] != backbone_name.split(".")[0]:
            raise UserError(
                f"pretrained weights {pretrained!r} are for another architecture than backbone {backbone_name!r}"
            )
        try:  # timm downloads the file and applies its own key conversion into the classification model
            source = timm.create_model(hub_name, pretrained=True).state_dict()
        except Exception as e:  # offline, unknown tag, ...
            raise UserError(
                f"cannot fetch pretrained weights {pretrained!r} ({_first_line(e)}); "
                "download the model.safetensors file and pass its path"
            ) from None
        load_backbone_state(backbone, source, pretrained)
        return
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise UserError(
            f"{path}: pretrained weights file not found; pass a .safetensors/.pth file or a hub name "
            f"such as timm:{backbone_name}.fcmae_ft_in22k_in1k_384"
        )
    load_backbone_state(backbone, _read_state_dict(path), str(path))
