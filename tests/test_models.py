"""ConvNeXt-V2 + UPerNet: output contract, batch-1 training, parameter count, state dicts, pretrained loading,
and timm's feature contract for other backbones (levels chosen by stride, NHWC, fixed input size, refusals).

A tiny backbone (convnextv2_atto, random init) stands in for convnextv2_base except in the parameter
count, which builds the base model on the meta device (no weights allocated).
"""
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import pytest
from losses import AUX_LOSS_WEIGHT, build_loss
from models import build_model
from models.segmentor import FEATURE_STRIDES
from utils.fileio import UserError

TINY = "convnextv2_atto"
C = 19  # classes of the models built here (Cityscapes' count; any count works)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY, num_classes=C)


def test_backbone_levels_match_feature_info(tiny_model):
    info = tiny_model.backbone.feature_info
    assert tuple(info.reduction()) == FEATURE_STRIDES
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        feats = tiny_model.backbone(x)
    for f, channels, stride in zip(feats, info.channels(), info.reduction()):
        assert f.shape == (1, channels, 64 // stride, 128 // stride)


# Output shapes at odd sizes, aux and features: tests/test_heads.py, for every registered head.


def test_batch_one_training_step():
    # PPM's pool-scale-1 branch is a 1x1 map: with plain BatchNorm a batch of 1 would fail in training.
    torch.manual_seed(1)
    model = build_model(TINY, num_classes=5).train()
    scale1 = model.decode_head.psp_modules[0]
    assert scale1.scale == 1 and not any(isinstance(m, nn.BatchNorm2d) for m in scale1.modules())
    loss_fn = build_loss("C")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(1, 3, 66, 98)
    target = torch.randint(0, 5, (1, 66, 98))
    target[:, :5] = 255
    sdt = torch.randint(-127, 128, (1, 5, 66, 98), dtype=torch.int8)
    before = model.decode_head.conv_seg.weight.detach().clone()
    out = model(images)
    main_loss = loss_fn(out["logits"], target, sdt)["loss"]
    loss = main_loss + AUX_LOSS_WEIGHT * loss_fn(out["aux_logits"], target, sdt)["loss"]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)  # every parameter is used
    optimizer.step()
    assert not torch.equal(before, model.decode_head.conv_seg.weight)


def test_channels_last_bf16_autocast_and_sync_bn_conversion():
    torch.manual_seed(2)
    # the demo preset's head width: bf16 backward on a CPU without native bf16 takes ~40 s at the default 512
    model = build_model(TINY, head_channels=128, num_classes=C).train().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, C, (2, 64, 96))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        assert out["logits"].dtype == torch.bfloat16
        loss = build_loss("B")(out["logits"], target)["loss"]
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(model.backbone.stem_0.weight.grad).all()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(build_model(TINY, num_classes=C))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())


def test_grad_checkpointing_gives_same_gradients():
    images = torch.randn(2, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(3)
        model = build_model(TINY, aux_head=False, grad_checkpointing=checkpointing, num_classes=C).train()
        torch.manual_seed(4)  # same dropout masks
        model(images)["logits"].square().mean().backward()
        grads.append(model.backbone.stages_1.blocks[0].conv_dw.weight.grad)
    assert build_model(TINY, grad_checkpointing=True, num_classes=C).backbone.grad_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def _conv_bn(cin, cout, k):
    return cin * cout * k * k + 2 * cout  # conv without bias + BN affine


def test_parameter_count_of_base_configuration():
    # Built on the meta device: shapes only, no weights allocated.
    with torch.device("meta"):
        model = build_model("convnextv2_base", num_classes=C)
        classifier = timm.create_model("convnextv2_base", pretrained=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Backbone = the ImageNet classifier minus its head (LayerNorm 1024 + Linear 1024 -> 1000).
    head_params = 2 * 1024 + 1024 * 1000 + 1000
    assert count(model.backbone) == count(classifier) - head_params
    assert 87e6 < count(model.backbone) < 89e6  # ConvNeXt-V2-Base, ~88 M
    # UPerNet head from its layer list (channels 512, in_channels 128/256/512/1024, 19 classes).
    c, cls = 512, 19
    ppm = (1024 * c + c) + 3 * _conv_bn(1024, c, 1)  # scale 1: conv + bias, no BN; scales 2, 3, 6
    expected_head = (
        ppm
        + _conv_bn(1024 + 4 * c, c, 3)  # PPM bottleneck
        + sum(_conv_bn(cin, c, 1) for cin in (128, 256, 512))  # laterals
        + 3 * _conv_bn(c, c, 3)  # FPN convs
        + _conv_bn(4 * c, c, 3)  # fuse
        + c * cls + cls  # classifier
    )
    expected_aux = _conv_bn(512, 256, 3) + 256 * cls + cls
    assert count(model.decode_head) == expected_head
    assert count(model.aux_head) == expected_aux
    total = count(model)
    assert total == count(model.backbone) + expected_head + expected_aux
    print(f"convnextv2_base + UPerNet + aux: {total:,} parameters (backbone {count(model.backbone):,})")


def test_state_dict_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(5)
    model = build_model(TINY, num_classes=C).train()
    model(torch.randn(2, 3, 64, 64))  # move BN running statistics off their initial values
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    torch.manual_seed(6)
    restored = build_model(TINY, num_classes=C)
    restored.load_state_dict(load_file(str(path)), strict=True)
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["logits"], restored.eval()(x)["logits"])


@pytest.fixture(scope="module")
def classifier_state():
    """State dict of a randomly initialised timm ImageNet classifier (stands in for real weights)."""
    torch.manual_seed(7)
    return timm.create_model(TINY, pretrained=False).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_loads_into_backbone(tmp_path, classifier_state, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(classifier_state, str(path))
    else:
        torch.save({"state_dict": classifier_state}, path)  # a wrapped training checkpoint
    model = build_model(TINY, pretrained=str(path), num_classes=C)
    backbone_state = model.backbone.state_dict()
    assert len(backbone_state) == len(classifier_state) - 4  # all but head.norm.* / head.fc.*
    for key, value in backbone_state.items():
        # FeatureListNet names: stem_0.weight <- stem.0.weight, stages_2.blocks... <- stages.2.blocks...
        first, _, rest = key.partition(".")
        source_key = first.replace("_", ".", 1) + "." + rest
        assert torch.equal(value, classifier_state[source_key]), key


def test_wrong_pretrained_file_names_mismatched_keys(tmp_path, classifier_state):
    state = dict(classifier_state)
    state["stages.3.blocks.1.mlp.fc2.weight"] = torch.zeros(7, 7)
    del state["stem.1.bias"]
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError) as err:
        build_model(TINY, pretrained=str(path), num_classes=C)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    model_shape = tuple(classifier_state["stages.3.blocks.1.mlp.fc2.weight"].shape)
    assert f"stages_3.blocks.1.mlp.fc2.weight (7, 7) vs {model_shape}" in message
    assert "1 key missing: stem_1.bias" in message


def test_pretrained_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_model(TINY, pretrained=str(tmp_path / "absent.safetensors"), num_classes=C)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read") as err:
        build_model(TINY, pretrained=str(corrupt), num_classes=C)
    assert "\n" not in str(err.value)
    torch_corrupt = tmp_path / "corrupt.pth"
    torch_corrupt.write_bytes(b"\x80\x02 truncated pickle")
    with pytest.raises(UserError, match="cannot read") as err:
        build_model(TINY, pretrained=str(torch_corrupt), num_classes=C)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="another architecture"):
        build_model(TINY, pretrained="timm:convnextv2_base.fcmae_ft_in22k_in1k_384", num_classes=C)
    with pytest.raises(UserError, match="unknown backbone"):
        build_model("no_such_net", num_classes=C)


# ---------------------------------------------------------------- other backbones: timm's feature contract
# (as timm's tests/test_models.py: channels and strides from feature_info, no magic numbers)
BACKBONES = ["convnextv2_atto", "resnet18", "efficientnet_b0", "swin_tiny_patch4_window7_224"]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_feature_contract_forward_and_backward(name):
    torch.manual_seed(0)
    size = (64, 96)
    model = build_model(name, num_classes=5, head_channels=16, img_size=size).train()
    info = model.backbone.feature_info
    assert tuple(info.reduction()) == FEATURE_STRIDES  # a stride-2 stem level (resnet, efficientnet) is skipped
    images = torch.randn(2, 3, *size)
    features = model.backbone(images)
    if model.backbone_nhwc:  # swin: timm's output_fmt NHWC
        features = [f.permute(0, 3, 1, 2) for f in features]
    for f, channels, stride in zip(features, info.channels(), info.reduction()):
        assert f.shape == (2, channels, size[0] // stride, size[1] // stride)
    assert model.backbone_nhwc == name.startswith("swin")
    out = model(images)
    assert out["logits"].shape == out["aux_logits"].shape == (2, 5, *size)
    (out["logits"].mean() + out["aux_logits"].mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_fixed_input_size_backbone_needs_the_frame_size_and_evaluates_other_sizes():
    from models import takes_input_size

    assert takes_input_size("swin_tiny_patch4_window7_224") and not takes_input_size("resnet18")
    with pytest.raises(UserError, match="built for one input size"):
        build_model("swin_tiny_patch4_window7_224", num_classes=C)
    model = build_model("swin_tiny_patch4_window7_224", num_classes=5, head_channels=16, img_size=(64, 96)).eval()
    with torch.no_grad():  # built for 64x96 (the training frames), evaluated at another size
        assert model(torch.randn(1, 3, 96, 128))["logits"].shape == (1, 5, 96, 128)


def test_single_stride_backbone_is_refused_naming_its_strides():
    with pytest.raises(UserError) as err:
        build_model("vit_tiny_patch16_224", num_classes=C)
    message = str(err.value)
    assert "strides [16, 16," in message and "[4, 8, 16, 32]" in message and "\n" not in message


@pytest.mark.parametrize("name", ["resnet18", "swin_tiny_patch4_window7_224"])
def test_pretrained_file_loads_into_a_stride_chosen_backbone(tmp_path, name):
    torch.manual_seed(8)
    state = timm.create_model(name, pretrained=False).state_dict()
    path = tmp_path / "classifier.safetensors"
    save_file(state, str(path))
    model = build_model(name, pretrained=str(path), img_size=(224, 224), num_classes=C)
    for key, value in model.backbone.state_dict().items():  # resnet: the same names; swin: layers_0 <- layers.0
        first, dot, rest = key.partition(".")
        source = key if key in state else first.replace("_", ".", 1) + dot + rest
        assert torch.equal(value, state[source]), key
