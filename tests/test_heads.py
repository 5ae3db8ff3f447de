"""The decode heads (models/heads/): the contract every registered head keeps, each head against its reference
(SegFormer: HF transformers' SegformerDecodeHead with copied weights; FPN: its paper's description), the
registry's refusal, and state dicts saved before the registry.

The contract tests run over every name of `models.heads.HEADS` (as timm's tests run over every model), on a
tiny random-init backbone (convnextv2_atto) and a narrow head, so a new head is tested by registering it.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from losses import AUX_LOSS_WEIGHT, build_loss
from losses.gradients import term_gradient_stats
from models import HEADS, build_model
from models.heads import head_class
from models.layers import resize_bilinear
from models.segmentor import FEATURE_STRIDES
from utils.fileio import UserError

TINY = "convnextv2_atto"
WIDTH = 16  # head channels: the layers are the real ones, narrow enough for a CPU
CLASSES = 5


@pytest.fixture(scope="module", params=list(HEADS))
def head_model(request):
    torch.manual_seed(0)
    return build_model(TINY, num_classes=CLASSES, head=request.param, head_channels=WIDTH)


def test_builds_the_registered_class_on_the_levels_at_strides_4_to_32(head_model):
    assert tuple(head_model.backbone.feature_info.reduction()) == FEATURE_STRIDES
    assert isinstance(head_model.decode_head, head_class(head_model.head_name))


@pytest.mark.parametrize("training", [True, False])
def test_output_shapes_at_odd_size(head_model, training):
    head_model.train(training)
    x = torch.randn(2, 3, 67, 99)
    with torch.no_grad():
        out = head_model(x, return_features=True)
    assert set(out) == {"logits", "features"} | ({"aux_logits"} if training else set())
    assert out["logits"].shape == (2, CLASSES, 67, 99)
    if training:
        assert out["aux_logits"].shape == (2, CLASSES, 67, 99)
    stride4 = head_model.backbone(x)[0].shape[-2:]  # convnext's 4x4 stem: floor(67 / 4) x floor(99 / 4)
    assert out["features"].shape == (2, WIDTH, *stride4)
    with torch.no_grad():
        assert set(head_model.eval()(x[:1])) == {"logits"}  # features only when asked


@pytest.mark.parametrize("head", list(HEADS))
def test_levels_whose_sizes_do_not_halve(head):
    """resnet18 at 66x98: levels 17x25, 9x13, 5x7, 3x4 (each stride-2 conv rounds up), so no level is exactly
    twice the next; every head still fuses at the stride-4 level's size and returns logits at the input size."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=CLASSES, head=head, head_channels=WIDTH).eval()
    x = torch.randn(1, 3, 66, 98)
    with torch.no_grad():
        sizes = [tuple(f.shape[-2:]) for f in model.backbone(x)]
        out = model(x, return_features=True)
    assert sizes == [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert out["features"].shape == (1, WIDTH, 17, 25) and out["logits"].shape == (1, CLASSES, 66, 98)


def test_aux_head_is_optional_for_every_head(head_model):
    model = build_model(TINY, num_classes=CLASSES, head=head_model.head_name, head_channels=WIDTH, aux_head=False)
    assert model.aux_head is None
    with torch.no_grad():
        assert set(model.train()(torch.randn(2, 3, 64, 64))) == {"logits"}


def test_features_are_the_map_the_classifier_reads(head_model):
    head_model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = head_model(x, return_features=True)
        logits = resize_bilinear(head_model.decode_head.classify(out["features"]), (64, 96))
    torch.testing.assert_close(out["logits"], logits)


def test_batch_one_training_step_reaches_every_parameter(head_model):
    head_model.train()
    images, target = torch.randn(1, 3, 66, 98), torch.randint(0, CLASSES, (1, 66, 98))
    head_model.zero_grad()
    out = head_model(images)
    loss_fn = build_loss("B")
    loss = loss_fn(out["logits"], target)["loss"] + AUX_LOSS_WEIGHT * loss_fn(out["aux_logits"], target)["loss"]
    loss.backward()
    for name, p in head_model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name  # every parameter is used


def test_gradient_statistics_reach_the_features(head_model):
    """The --log-grad-norms path (engine.steps): each term's gradient w.r.t. the logits and the head's features."""
    head_model.train()
    out = head_model(torch.randn(2, 3, 64, 64), return_features=True)
    target = torch.randint(0, CLASSES, (2, 64, 64))
    stats = term_gradient_stats(build_loss("B")(out["logits"], target), out["logits"], out["features"])
    for where in ("logits", "features"):
        for term in ("ce", "dice"):
            assert float(stats[f"grad_norm/{where}/{term}"]) > 0
        assert -1 <= float(stats[f"grad_cos/{where}/ce_dice"]) <= 1


def test_channels_last_bf16_autocast(head_model):
    head_model.train().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, CLASSES, (2, 64, 96))
    head_model.zero_grad()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head_model(images, return_features=True)
            assert out["logits"].dtype == out["features"].dtype == torch.bfloat16
            loss = build_loss("B")(out["logits"], target)["loss"]
        assert loss.dtype == torch.float32
        loss.backward()
        grads = [p.grad for p in head_model.decode_head.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    finally:
        head_model.to(memory_format=torch.contiguous_format)


def test_sync_batchnorm_conversion(head_model):
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(build_model(TINY, num_classes=CLASSES, head=head_model.head_name,
                                                                 head_channels=WIDTH))
    assert not any(type(m) is nn.BatchNorm2d for m in synced.decode_head.modules())


def test_unknown_head_is_one_line_listing_the_registered_ones():
    with pytest.raises(UserError) as err:
        build_model(TINY, num_classes=CLASSES, head="mask2former")
    message = str(err.value)
    assert "'mask2former'" in message and all(name in message for name in HEADS) and "\n" not in message


# ---------------------------------------------------------------------------------------------- UPerNet
def test_upernet_state_dict_saved_before_the_registry_loads():
    """tests/data/upernet_state_dict_shapes.json holds every key and shape of the state dict the segmentor had
    before heads were registered (commit 779b558): the build with head="upernet" (the default) has the same
    ones, so checkpoints of existing runs load with strict=True."""
    saved = json.loads((Path(__file__).parent / "data" / "upernet_state_dict_shapes.json").read_text())["shapes"]
    for model in (build_model(TINY, num_classes=19, head_channels=32),
                  build_model(TINY, num_classes=19, head_channels=32, head="upernet")):
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == saved
    state = {k: torch.randn(shape) if shape else torch.tensor(3) for k, shape in saved.items()}
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------- SegFormer
@pytest.mark.parametrize("size", [(64, 96), (67, 99)])
def test_segformer_head_equals_hf_segformer_decode_head(size):
    """Output for output equal to transformers' SegformerDecodeHead with copied weights, on random features of
    a four-level pyramid (HF concatenates the levels deepest first; so does SegFormerHead, so the fuse conv's
    weight copies unchanged; HF's per-level Linear is a 1x1 conv's weight with two unit dimensions)."""
    from transformers import SegformerConfig
    from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

    hidden_sizes, width = [8, 12, 20, 24], 16
    config = SegformerConfig(num_encoder_blocks=4, hidden_sizes=hidden_sizes, decoder_hidden_size=width,
                             num_labels=CLASSES, classifier_dropout_prob=0.1)
    torch.manual_seed(1)
    hf = SegformerDecodeHead(config)
    ours = head_class("segformer")(hidden_sizes, CLASSES, channels=width)
    for module in (hf.batch_norm, ours.linear_fuse[1]):  # BN statistics off their initial values
        module.running_mean.normal_(), module.running_var.uniform_(0.5, 2.0)
        module.weight.data.normal_(), module.bias.data.normal_()
    projections = hf.linear_projections if hasattr(hf, "linear_projections") else hf.linear_c  # transformers 5 / 4
    with torch.no_grad():
        for mlp, conv in zip(projections, ours.linear_c):
            conv.weight.copy_(mlp.proj.weight[:, :, None, None])
            conv.bias.copy_(mlp.proj.bias)
        ours.linear_fuse[0].weight.copy_(hf.linear_fuse.weight)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(ours.linear_fuse[1], name).copy_(getattr(hf.batch_norm, name))
        ours.conv_seg.weight.copy_(hf.classifier.weight)
        ours.conv_seg.bias.copy_(hf.classifier.bias)
    h, w = size
    features = [torch.randn(2, c, -(-h // s), -(-w // s)) for c, s in zip(hidden_sizes, FEATURE_STRIDES)]
    with torch.no_grad():
        expected = hf.eval()(features)
        actual = ours.eval()(features)
    assert actual.shape == expected.shape == (2, CLASSES, *features[0].shape[-2:])
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    hf.dropout.p = ours.dropout.p = 0.0  # training mode: BatchNorm on the batch's statistics (dropouts differ: off)
    with torch.no_grad():
        torch.testing.assert_close(ours.train()(features), hf.train()(features), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


# ---------------------------------------------------------------------------------------------- FPN
def test_fpn_head_follows_panoptic_fpn_semantic_branch():
    """Kirillov et al. 2019, §3: "starting from the deepest FPN level (at 1/32 scale), we perform three upsampling
    stages to yield a feature map at 1/4 scale, where each upsampling stage consists of 3×3 convolution, group
    norm, ReLU, and 2× bilinear upsampling. This strategy is repeated for FPN scales 1/16, 1/8, and 1/4 (with
    progressively fewer upsampling stages). The result is a set of feature maps at the same 1/4 scale, which are
    then element-wise summed. A final 1×1 convolution ..." (BatchNorm in place of group norm: models/heads/fpn.py).

    Checked here by recording every stage's output: 3 / 2 / 1 / 1 conv stages on levels at strides 32 / 16 / 8
    / 4, each a 3x3 conv + norm + ReLU whose output is upsampled 2x (all but stride 4's), each level ending at
    stride 4; the fused map is the sum of the four; the classifier is a 1x1 conv on it; the FPN's levels P2-P5
    keep the backbone's strides.
    """
    in_channels, width, n, h, w = [8, 12, 20, 24], 16, 2, 64, 128
    torch.manual_seed(2)
    head = head_class("fpn")(in_channels, CLASSES, channels=width).eval()
    features = [torch.randn(n, c, h // s, w // s) for c, s in zip(in_channels, FEATURE_STRIDES)]
    assert [len(stages) for stages in head.scale_heads] == [1, 1, 2, 3]  # strides 4, 8, 16, 32
    for stages in head.scale_heads:
        for stage in stages:
            conv, norm, relu = stage
            assert conv.kernel_size == (3, 3) and isinstance(norm, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    stage_outputs = {}
    for level, stages in enumerate(head.scale_heads):
        for k, stage in enumerate(stages):
            stage.register_forward_hook(lambda m, i, o, key=(level, k): stage_outputs.__setitem__(key, o))
    with torch.no_grad():
        pyramid = head.pyramid(features)
        fused = head.fuse(features)
        logits = head.classify(fused)
    for level, (p, s) in enumerate(zip(pyramid, FEATURE_STRIDES)):
        assert p.shape == (n, width, h // s, w // s)  # P2..P5
        for k in range(len(head.scale_heads[level])):  # a stage keeps its input's size; the 2x follows it
            assert stage_outputs[level, k].shape == (n, width, h // (s >> k), w // (s >> k))
    # FPN (Lin et al.): 1x1 laterals, top-down nearest 2x upsampling and sum, a 3x3 output conv per level
    laterals = [conv(f) for conv, f in zip(head.lateral_convs, features)]
    top_down = laterals[3]
    for level in (3, 2, 1, 0):
        if level < 3:
            top_down = laterals[level] + nn.functional.interpolate(top_down, scale_factor=2, mode="nearest")
        torch.testing.assert_close(pyramid[level], head.fpn_convs[level](top_down))
    # each level ends at stride 4: re-apply each chain and the 2x upsamplings by hand, then sum
    total = torch.zeros_like(fused)
    for level, p in enumerate(pyramid):
        x = p
        for k, stage in enumerate(head.scale_heads[level]):
            x = stage(x)
            if level > 0:
                x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        assert x.shape == (n, width, h // 4, w // 4)
        total = total + x
    torch.testing.assert_close(fused, total)
    assert head.conv_seg.kernel_size == (1, 1) and logits.shape == (n, CLASSES, h // 4, w // 4)


# ---------------------------------------------------------------------------------------------- the run config
def test_head_flag_choices_come_from_the_registry_and_join_the_run_name(capsys):
    from engine.config import build_parser, parse_args, wandb_group

    action = next(a for a in build_parser()._actions if a.dest == "head")
    assert tuple(action.choices) == tuple(HEADS)
    cfg, _ = parse_args([])
    assert (cfg.head, cfg.run_name) == ("upernet", "C_seed42")  # the study's runs keep their names
    for name in HEADS:
        cfg, _ = parse_args(["--head", name, "--variant", "D"])
        assert cfg.head == name and cfg.run_name == ("D_seed42" if name == "upernet" else f"D_{name}_seed42")
        assert wandb_group(cfg) == cfg.run_name.removesuffix("_seed42")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--head", "mask2former"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and all(name in err for name in HEADS), err


def test_config_saved_before_the_head_flag_means_upernet(tmp_path):
    import dataclasses

    from engine.config import config_to_dict, load_config, parse_args, validate
    from engine.setup import build_model_from_config

    cfg, _ = parse_args(["--preset", "demo", "--head-channels", "16"])
    old = {k: v for k, v in config_to_dict(cfg).items() if k != "head"}
    old["class_names"] = [f"c{i}" for i in range(CLASSES)]  # recorded classes: no dataset needed to rebuild
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = load_config(tmp_path / "config.json")
    assert loaded.head == "upernet"
    assert isinstance(build_model_from_config(loaded).decode_head, head_class("upernet"))
    fpn = build_model_from_config(dataclasses.replace(loaded, head="fpn"))
    assert isinstance(fpn.decode_head, head_class("fpn")) and fpn.num_classes == CLASSES
    with pytest.raises(UserError, match="unknown --head 'mask2former': use one of upernet, segformer, fpn"):
        validate(dataclasses.replace(loaded, head="mask2former"))


def test_unknown_head_flag_is_refused_before_the_heavy_imports(python_imports):
    result, modules = python_imports("train.py", "--head", "mask2former")
    assert result.returncode == 2 and "invalid choice: 'mask2former'" in result.stderr.splitlines()[-1]
    assert not modules & {"torch", "timm", "accelerate"}, sorted(modules & {"torch", "timm", "accelerate"})


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    """4 train / 2 val synthetic frames at 64x128 in the Cityscapes layout: the smallest demo that trains."""
    from data_utils.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data") / "demo", num_train=4, num_val=2, height=64, width=128,
                            progress=False)


@pytest.mark.parametrize("head", [name for name in HEADS if name != "upernet"])  # upernet: tests/test_train.py
def test_head_trains_evaluates_from_its_checkpoint_and_aggregates(small_demo, tmp_path, head, capsys):
    """The demo preset with --head: one epoch trains (with the gradient statistics, which read the head's
    features), evaluate.py rebuilds the model from the checkpoint's config alone (the same metrics as train.py's
    evaluation), and aggregate.py reports the run, and its gradient log, as a group of its own."""
    import aggregate
    import evaluate
    import train

    runs = tmp_path / "runs"
    assert train.main(["--preset", "demo", "--no-demo-data", "--no-wandb", "--num-workers", "0", "--epochs", "1",
                       "--batch-size", "2", "--head-channels", "16", "--head", head, "--data-root", str(small_demo),
                       "--log-grad-norms", "1", "--out", str(runs / "run")]) == 0
    assert f"convnextv2_atto + {head}," in capsys.readouterr().out
    ckpt = runs / "run" / "checkpoints" / "epoch_0001"
    results = ckpt.with_name("epoch_0001.results.json")
    written = json.loads(results.read_text())
    assert written["config"]["head"] == head
    results.unlink()
    assert evaluate.main([str(ckpt)]) == 0
    assert json.loads(results.read_text())["miou"] == pytest.approx(written["miou"])
    assert aggregate.main([str(runs), "--out", str(tmp_path / "report"), "--bootstrap", "100"]) == 0
    table = (tmp_path / "report" / "table1_final_epoch.csv").read_text()
    assert f"C {head}," in table
    # the same run as the study's head would have written it before --head existed (no `head` in its config):
    # one runs tree holds both, grouped apart ("C" and "C <head>") instead of refused as a second result for C
    from report.gradients import load_grad_logs
    from report.load import Study, load_runs_dir

    (points,) = load_grad_logs(runs)
    assert {p.variant for p in points} == {f"C {head}"} and points[0].values["grad_norm/features/dice"] > 0

    old = json.loads(results.read_text())
    del old["config"]["head"]
    (runs / "old" / "checkpoints").mkdir(parents=True)
    (runs / "old" / "checkpoints" / "epoch_0001.results.json").write_text(json.dumps(old))
    assert Study.from_records(load_runs_dir(runs)).groups == ["C", f"C {head}"]
