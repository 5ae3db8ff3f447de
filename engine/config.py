"""The run config: one dataclass whose defaults are the paper's recipe, its CLI, presets and JSON round trip.

Every field becomes a `--kebab-case` flag of train.py (booleans get `--x/--no-x`), so a W&B sweep or a
user only ever sets flags. The resolved config is saved as `RUN/config.json`, inside every checkpoint
folder, sent to W&B and copied into each results file; `load_config` reads it back.

Example:
    >>> cfg, resume = parse_args(["--preset", "demo", "--epochs", "2"])
    >>> cfg.backbone, cfg.epochs
    ('convnextv2_atto', 2)
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

import yaml

from data_utils.options import AUGMENT_PLACES, SDT_SOURCES
from data_utils.paths import check_data_paths
from engine.samples import DEFAULT_SAMPLES
from losses.registry import TERMS, needs_sdt, recipe_slug, term_params
from losses.schedule import SCHEDULE_KINDS, check_boundary_schedule
from losses.variants import (AUX_LOSS_KINDS, AUX_LOSS_WEIGHT, LAMBDA_BOUNDARY, LAMBDA_DICE, LOSS_WEIGHTS,
                             resolve_loss, variant_summary)
from metrics.keys import PROFILES
from models.heads import DEFAULT_HEAD, HEADS, head_summary
from utils.cli import ArgumentParser, Range, any_case, did_you_mean, shell_command
from utils.console import plural
from utils.fileio import UserError, atomic_write_json, read_yaml

VARIANTS = tuple(LOSS_WEIGHTS)  # ("A", "B", "C", "D")


# The --help groups, in their order; each field says its group by the factory that declares it (below).
FLAG_GROUPS = {
    "studied": "what is studied (the loss and the seed)",
    "model": "model",
    "data": "data",
    "optim": "optimisation",
    "eval": "evaluation and checkpoints",
    "logging": "logging (Weights & Biases)",
    "runtime": "runtime (how the run executes, not what it computes)",
}


def _group(key: str):
    """The field factory of --help group `key`: a dataclass field carrying its one-line help, optional choices,
    the group (`FLAG_GROUPS`) and, for a number (or a tuple of numbers), the `utils.cli.Range` of its values: the
    one declaration the flag's parser, a --config file, a sweep's values and `validate` all check."""
    def field_of(default, help: str, choices=None, bounds: Range | None = None):
        return field(default=default, metadata={"help": help, "choices": choices, "group": key, "bounds": bounds})
    return field_of


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(lo=0), Range(lo=1), Range(lo=0, lo_open=True)


_studied, _model, _data, _optim, _eval, _logging, _runtime = map(_group, FLAG_GROUPS)


@dataclass
class TrainConfig:
    # Defaults = the paper's recipe (§3.1-3.2) unless the help says otherwise.
    variant: str = _studied("C", f"loss variant: {variant_summary()}", VARIANTS)
    seed: int = _studied(42, "seed of init, data order, augmentation (study: 42, 123, 456)",
                         bounds=Range(0, 2**32, hi_open=True))
    lambda_dice: float = _studied(LAMBDA_DICE, "λ_d, weight of the Dice term in B and C", bounds=AT_LEAST_0)
    lambda_boundary: float = _studied(LAMBDA_BOUNDARY, "λ_b, weight of the Kervadec boundary term in C and D",
                                      bounds=AT_LEAST_0)
    loss: str = _studied("", f"recipe term=weight,... instead of --variant, e.g. 'ce=1,lovasz=0.5'; terms: "
                         f"{', '.join(TERMS)}")
    focal_gamma: float = _studied(TERMS["focal"].params["gamma"], "focal term: focusing parameter γ",
                                  bounds=AT_LEAST_0)
    tversky_alpha: float = _studied(TERMS["tversky"].params["alpha"], "tversky term: weight α of false positives",
                                    bounds=AT_LEAST_0)
    tversky_beta: float = _studied(TERMS["tversky"].params["beta"], "tversky term: weight β of false negatives",
                                   bounds=AT_LEAST_0)
    boundary_schedule: str = _studied("constant", "λ_b per epoch (beyond the paper)", SCHEDULE_KINDS)
    boundary_start: float = _studied(0.0, "linear schedule: λ_b in the first epoch", bounds=AT_LEAST_0)
    boundary_ramp_epochs: int = _studied(40, "linear schedule: epochs from --boundary-start to λ_b", bounds=AT_LEAST_0)
    steal_delta: float = _studied(0.01, "steal schedule: weight moved per epoch from each region term",
                                  bounds=AT_LEAST_0)
    steal_floor: float = _studied(0.01, "steal schedule: lowest weight of a region term", bounds=AT_LEAST_0)
    aux_weight: float = _studied(AUX_LOSS_WEIGHT, "weight of the auxiliary FCN head's loss (0 = no aux head)",
                                 bounds=AT_LEAST_0)
    aux_loss: str = _studied("composite", "aux head loss: the variant's composite (study's code) or CE",
                             AUX_LOSS_KINDS)
    backbone: str = _model("convnextv2_base", "timm backbone, strides 4-32 (not plain ViTs)")
    head: str = _model(DEFAULT_HEAD, f"decode head (models.heads): {head_summary()}", tuple(HEADS))
    pretrained: str = _model("timm:convnextv2_base.fcmae_ft_in22k_in1k_384",
                             "backbone weights: a .safetensors/.pth file or timm:<name> ('' = random init)")
    head_channels: int = _model(512, "width of the head (512: MMSegmentation's UPerNet)", bounds=AT_LEAST_1)
    drop_path_rate: float = _model(0.0, "stochastic depth in the backbone (not in the paper: off)",
                                   bounds=Range(0, 1, hi_open=True))
    data_root: str = _data("", "Cityscapes root with leftImg8bit/ and gtFine/ ('' = $CITYSCAPES_DATASET)")
    train_split: str = _data("train", "split trained on (2975 images)")
    val_split: str = _data("val", "split evaluated (500 images)")
    sdt_source: str = _data("gpu", "boundary-loss distance maps: on the device, workers or a cache", SDT_SOURCES)
    sdt_cache: str = _data("", "folder written by precompute_sdt.py (for --sdt-source cache)")
    augment: str = _data("gpu", "where photometric jitter + blur run (none: the flip only)", AUGMENT_PLACES)
    demo_data: bool = _data(False, "generate the synthetic demo data on first use")
    hf_dataset: str = _data("", "HF dataset (folder or hub name) instead of Cityscapes")
    image_column: str = _data("image", "--hf-dataset: the image column")
    label_column: str = _data("label", "--hf-dataset: the label column (class-index image or 2-D array)")
    reduce_labels: bool = _data(False, "--hf-dataset: ADE20K labels (0 = unlabelled)")
    classes: str = _data("", "classes file: JSON list of names or id2label.json ('' = the dataset's own)")
    class_names: tuple[str, ...] = _data((), "class names in train-id order (recorded by train.py)")
    class_palette: tuple[str, ...] = _data((), "class colours as #rrggbb, one per class name")
    crop_size: tuple[int, int] = _data((0, 0), "random training crop H W (0 0 = native frames)", bounds=AT_LEAST_0)
    epochs: int = _optim(160, "training epochs (more epochs extend a run: docs/training.md)", bounds=AT_LEAST_1)
    batch_size: int = _optim(2, "images per device per forward pass", bounds=AT_LEAST_1)
    grad_accum: int = _optim(4, "forward passes per optimizer step (effective batch 2 x 4 = 8)", bounds=AT_LEAST_1)
    lr: float = _optim(6e-5, "AdamW peak learning rate", bounds=POSITIVE)
    weight_decay: float = _optim(0.01, "AdamW decoupled weight decay", bounds=AT_LEAST_0)
    betas: tuple[float, float] = _optim((0.9, 0.999), "AdamW betas", bounds=Range(0, 1, hi_open=True))
    poly_power: float = _optim(1.0, "polynomial LR decay power, --lr to --min-lr over all steps", bounds=AT_LEAST_0)
    min_lr: float = _optim(0.0, "LR at the end of the decay", bounds=AT_LEAST_0)
    warmup_steps: int = _optim(0, "linear LR warm-up in optimizer steps (the paper has none)", bounds=AT_LEAST_0)
    grad_clip: float = _optim(0.0, "max global gradient norm (0 = none, as the paper)", bounds=AT_LEAST_0)
    max_nonfinite: int = _optim(0, "micro-batches with a non-finite loss skipped before the run stops",
                                bounds=AT_LEAST_0)
    eval_every: int = _eval(1, "evaluate on val every N epochs and at the last", bounds=AT_LEAST_1)
    metrics_profile: str = _eval("default", "Boundary F1 / Trimap IoU estimators (docs/metrics.md)", PROFILES)
    checkpoint_every: int = _eval(10, "checkpoint every N epochs and at the last", bounds=AT_LEAST_1)
    keep_states: int = _eval(1, "newest N checkpoints keep optimizer state, older weights only", bounds=AT_LEAST_1)
    out: str = _eval("", "run folder ('' = derived from the settings: docs/training.md)")
    samples: int = _eval(DEFAULT_SAMPLES, "val images whose predictions are kept beside each checkpoint's results "
                         "(0 = off; docs/evaluation.md)", bounds=AT_LEAST_0)
    log_images: int = _logging(4, "W&B: N of the --samples images, with masks, per evaluation (0 = off)",
                               bounds=AT_LEAST_0)
    log_every: int = _logging(50, "W&B: each loss term and the LR every N optimizer steps (0 = off)", bounds=AT_LEAST_0)
    log_grad_norms: int = _logging(0, "every K steps, log each loss term's gradient norms (0 = off)", bounds=AT_LEAST_0)
    wandb: bool = _logging(True, "log to Weights & Biases (offline unless logged in)")
    wandb_project: str = _logging("boundary-seg", "W&B project")
    wandb_entity: str = _logging("", "W&B entity, team or user ('' = your default)")
    wandb_artifacts: bool = _logging(False, "W&B: upload the final checkpoint as an artifact")
    mixed_precision: str = _runtime("bf16", "autocast precision", ("no", "bf16", "fp16"))
    num_workers: int = _runtime(8, "DataLoader worker processes per training process", bounds=AT_LEAST_0)
    grad_checkpointing: bool = _runtime(False, "recompute backbone activations (less memory)")
    deterministic: bool = _runtime(False, "deterministic cuDNN kernels (slower)")
    cpu_threads: int = _runtime(0, "torch CPU threads per process (0 = the usable cores: utils.threads)",
                                bounds=AT_LEAST_0)
    compile: bool = _runtime(True, "torch.compile on CUDA: two compiles, at the first step and evaluation "
                           "(docs/performance.md)")
    channels_last: bool = _runtime(True, "NHWC weights and batches (cuDNN's bf16 convs)")

    @property
    def loss_label(self) -> str:
        """What results, W&B and aggregate.py call the loss: the variant ("C"), or a --loss recipe's canonical
        text ("ce+0.5·lovasz"), followed by the term parameters off their defaults ("ce+0.5·focal gamma=1")."""
        label = resolve_loss(self.loss or self.variant)[0]
        return " ".join([label] + [f"{p}={v:g}" for p, v in self._changed_params()])

    def _changed_params(self) -> list[tuple[str, float]]:
        """(parameter, value) of the recipe's term parameters that differ from the registry defaults."""
        return [(p, v) for t, values in self.loss_params.items() for p, v in values.items()
                if v != TERMS[t].params[p]]

    @property
    def loss_weights(self) -> dict[str, float]:
        """The recipe {term: weight} the run trains with: --loss, else --variant with --lambda-dice/-boundary."""
        if self.loss:
            return resolve_loss(self.loss)[1]
        return resolve_loss(self.variant, self.lambda_dice, self.lambda_boundary)[1]

    @property
    def loss_params(self) -> dict[str, dict[str, float]]:
        """{term: {parameter: value}} for the recipe's terms that have parameters, from the fields
        `<term>_<parameter>` (focal_gamma, tversky_alpha, ...)."""
        given = {t: {p: getattr(self, f"{t}_{p}") for p in TERMS[t].params} for t in self.loss_weights}
        return term_params(given, self.loss_weights)

    @property
    def run_name(self) -> str:
        """The W&B run name and the run folder's last part: `<variant>_seed<seed>` for the study's grid, with
        what else differs from the recipe joined in (docs/training.md, "Run folders"): a λ off the paper's
        value (`C_lb0.1_seed42`), a --loss recipe by its terms and weights (`ce1_lovasz0.5_seed42`) and term
        parameters off their defaults (`..._gamma1_seed42`), a head other than the study's (`C_segformer_seed42`),
        a λ_b schedule (`C_steal_seed42`), a crop (`C_crop512x1024_seed42`), and any other setting that changes
        what is computed as a short hash of those settings (`C_x3fa1c2_seed42`)."""
        if self.loss:
            name = recipe_slug(self.loss_weights) + "".join(f"_{p}{v:g}" for p, v in self._changed_params())
        else:
            name = self.variant + "".join(f"_{tag}{getattr(self, attr):g}" for attr, tag in (
                ("lambda_dice", "ld"), ("lambda_boundary", "lb")) if getattr(self, attr) != _DEFAULTS[attr])
        head = "" if self.head == DEFAULT_HEAD else f"_{self.head}"
        schedule = "" if self.boundary_schedule == "constant" else f"_{self.boundary_schedule}"
        base = recipe_of(self)
        crop = "" if self.crop_size == base["crop_size"] else f"_crop{self.crop_size[0]}x{self.crop_size[1]}"
        others = {k: v for k, v in config_to_dict(self).items() if k not in _NAMED_FIELDS and v != _plain(base[k])}
        digest = f"_x{hashlib.sha1(json.dumps(others, sort_keys=True).encode()).hexdigest()[:6]}" if others else ""
        return f"{name}{head}{schedule}{crop}{digest}_seed{self.seed}"

    @property
    def dataset_name(self) -> str:
        """The run folder's first part: cityscapes, demo (the embedded demo), demo-hf, or the --hf-dataset as
        given, `/` as `_` (`data/ade` -> data_ade, `org/name` -> org_name)."""
        if self.demo_data:
            return "demo-hf" if self.hf_dataset else "demo"
        if self.hf_dataset:
            return os.path.normpath(self.hf_dataset).lstrip("/.").replace("/", "_") or "hf"
        return "cityscapes"

    @property
    def run_dir(self) -> Path:
        """--out, else runs/<dataset_name>/<backbone>/<run_name> (`runs/cityscapes/convnextv2_base/C_seed42`)."""
        if self.out:
            return Path(self.out)
        return Path("runs") / self.dataset_name / self.backbone / self.run_name


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = get_type_hints(TrainConfig)
_DEFAULTS = {name: f.default for name, f in _FIELDS.items()}
_TUPLE_FIELDS = {name for name, value in _DEFAULTS.items() if isinstance(value, tuple)}
# The numeric fields (ints, floats and tuples of them; not the booleans): each declares its Range (`_group`).
NUMBER_FIELDS = tuple(name for name, kind in _HINTS.items() if kind in (int, float, tuple[int, int],
                                                                        tuple[float, float]))

# The demo preset: only the deltas from the paper's recipe, each with its reason. It trains on the embedded
# synthetic Cityscapes-layout scenes (generated into data/demo on first use) on 2 CPU cores in < 3 minutes.
DEMO_PRESET = {
    "data_root": "data/demo",         # the embedded synthetic scenes, DEMO_DATA below
    "demo_data": True,                 # generated there on first use (data_utils.synthetic)
    "backbone": "convnextv2_atto",     # 3.4 M backbone parameters instead of 88 M
    "pretrained": "",                  # no download: random init
    "batch_size": 4,                   # small images, so a larger batch still fits and steps are fewer
    "grad_accum": 1,                   # few images: one optimizer step per batch
    "lr": 1e-3,                        # random init and ~100 steps need a far larger LR than fine-tuning
    "weight_decay": 1e-4,
    "epochs": 8,
    "mixed_precision": "no",           # fp32: CPUs gain nothing from bf16 autocast here
    "compile": False,                  # a tiny model on small frames: compiling costs more than it saves on a GPU
    "num_workers": 2,                  # PNG decoding of small frames: light
    "cpu_threads": 1,                  # one compute thread: one per core oversubscribes 2 cores next to the workers
    "sdt_source": "cpu",               # on a CPU the workers' EDT is ~25x faster than the torch (GPU) path
    "checkpoint_every": 4,
    "log_every": 4,                    # 12 optimizer steps per epoch: W&B's per-step curves get 24 points, not 1
    "head_channels": 128,              # UPerNet at 512 channels costs 7x the whole atto backbone on a CPU
    "wandb_project": "boundary-seg-demo",
}
# What the demo generates into data/demo (data_utils.synthetic.ensure_demo_dataset arguments).
DEMO_DATA = {"num_train": 48, "num_val": 12, "height": 128, "width": 256, "seed": 0}
# The demo-hf preset: the demo on the same scenes written as an HF DatasetDict (data_utils.synthetic --format hf):
# 8 class groups, two frame sizes, hence a crop; the deltas from the demo preset.
DEMO_HF_PRESET = {
    **DEMO_PRESET,
    "data_root": "",
    "hf_dataset": "data/demo-hf",      # generated there on first use (demo_data), DEMO_HF_DATA below
    "reduce_labels": True,             # its labels follow the ADE20K convention (0 = unlabelled)
    "val_split": "validation",         # HF's split name
    "crop_size": (128, 192),           # frames are 128x256 and 160x192: one training size for the batch
}
DEMO_HF_DATA = {**DEMO_DATA, "format": "hf"}
PRESETS = {"demo": DEMO_PRESET, "demo-hf": DEMO_HF_PRESET}

def recipe_of(cfg: TrainConfig) -> dict:
    """The recipe `cfg`'s run name is measured against: the demo preset's on the demo data, else the paper's."""
    if cfg.demo_data:
        return {**_DEFAULTS, **(DEMO_HF_PRESET if cfg.hf_dataset else DEMO_PRESET)}
    return _DEFAULTS


def _plain(value):
    """A field value as config_to_dict writes it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


# Fields that may differ when a run is resumed (where/how it runs, not what it computes).
RESUMABLE_CHANGES = {"data_root", "sdt_source", "sdt_cache", "num_workers", "eval_every", "checkpoint_every",
                     "keep_states", "samples", "log_images", "wandb", "wandb_project", "wandb_entity", "out",
                     "pretrained", "max_nonfinite", "deterministic", "cpu_threads", "log_grad_norms", "compile",
                     "channels_last", "hf_dataset", "classes",  # the resolved class_names are compared
                     "log_every", "wandb_artifacts"}

# Fields that may change when a run is resumed, beyond RESUMABLE_CHANGES: a longer (or shorter) schedule
# extends the run from its newest checkpoint (docs/training.md, "Resume").
EXTENDABLE_CHANGES = {"epochs"}
# Fields the run folder spells out (or that do not change what is computed): the others join its name as a hash.
_NAMED_FIELDS = RESUMABLE_CHANGES - {"pretrained"} | EXTENDABLE_CHANGES | {
    "variant", "seed", "loss", "lambda_dice", "lambda_boundary", "focal_gamma", "tversky_alpha", "tversky_beta",
    "head", "boundary_schedule", "crop_size", "backbone", "demo_data", "hf_dataset", "class_names", "class_palette"}



def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """argparse parser with one flag per TrainConfig field, in the field's --help group (`FLAG_GROUPS`), plus
    --preset, --config, --print-config and --resume.

    Field defaults are NOT set on the parser (they are `SUPPRESS`ed), so `parse_args` can tell which flags
    the user gave and apply them on top of a preset and a config file.
    """
    parser = ArgumentParser(
        description="Train ConvNeXt-V2 + UPerNet (or another --head) on Cityscapes with one loss variant (defaults: "
                    "the paper's recipe).",
        usage="%(prog)s [--preset NAME] [--config FILE] [--print-config] [--resume] [--FLAG VALUE ...]",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=38),
        argument_default=argparse.SUPPRESS)
    start = parser.add_argument_group("where the settings come from")
    start.add_argument("--preset", choices=sorted(PRESETS), type=any_case(PRESETS),
                       help="start from a preset instead of the paper's recipe")
    start.add_argument("--config", metavar="FILE", help="YAML/JSON settings (e.g. a run's config.json); flags given "
                       "override it")
    start.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    start.add_argument("--resume", action="store_true",
                       help="require resuming from the run folder's latest checkpoint (else resumed if there)")
    groups = {key: parser.add_argument_group(title) for key, title in FLAG_GROUPS.items()}
    for f in dataclasses.fields(TrainConfig):
        _add_field_flag(groups[f.metadata["group"]], f.name)
    return parser


# The fields that say where a split's frames and classes come from (data_utils.source.DataSource's).
DATA_SOURCE_FIELDS = ("data_root", "hf_dataset", "image_column", "label_column", "reduce_labels", "classes")


def add_data_source_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = DATA_SOURCE_FIELDS,
                          from_checkpoint: bool = False) -> None:
    """Add train.py's flags of the DATA_SOURCE_FIELDS `names`, as one "data source" group, to another script's
    parser (precompute_sdt.py, evaluate.py): one declaration, the field's, for the flag, its type and its help.

    Defaults are TrainConfig's, or None with `from_checkpoint` (evaluate.py: None = the checkpoint config's).
    """
    group = parser.add_argument_group("data source (as train.py's flags)")
    for name in names:
        if name not in DATA_SOURCE_FIELDS:
            raise ValueError(f"{name!r} is not a data source field: use some of {', '.join(DATA_SOURCE_FIELDS)}")
        if from_checkpoint:
            _add_field_flag(group, name, default=None, default_text="the checkpoint config's")
        else:
            _add_field_flag(group, name, default=_DEFAULTS[name])


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _add_field_flag(parser, name: str, default=argparse.SUPPRESS, default_text: str | None = None) -> None:
    """The flag of TrainConfig field `name`: `--kebab-case`, its type, choices and help from the field. The help
    ends with "(default: ...)": `default_text`, else the field's default (none shown for '' and ())."""
    f = _FIELDS[name]
    kind, help_text, choices = _HINTS[name], f.metadata["help"], f.metadata["choices"]
    bounds = f.metadata["bounds"]
    number = {tuple[float, float]: float, tuple[int, int]: int}.get(kind, kind)  # a tuple's elements
    if bounds is not None:
        number = bounds.parser(number)  # out of range: argparse's one line, exit 2
    if default_text is None and f.default not in ("", ()):
        default_text = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else \
            ("on" if f.default else "off") if isinstance(f.default, bool) else f.default
    if default_text is not None:
        help_text += f" (default: {default_text})"
    if kind is bool:
        parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif kind == tuple[float, float]:
        parser.add_argument(_flag(name), type=number, nargs=2, metavar=("B1", "B2"), default=default, help=help_text)
    elif kind == tuple[int, int]:
        parser.add_argument(_flag(name), type=number, nargs=2, metavar=("H", "W"), default=default, help=help_text)
    elif kind == tuple[str, ...]:
        parser.add_argument(_flag(name), nargs="+", metavar=name.split("_")[-1].upper().rstrip("S"), default=default,
                            help=help_text)
    else:
        convert = any_case(choices) if choices and kind is str else number  # --variant c is C
        parser.add_argument(_flag(name), type=convert, choices=choices, default=default, help=help_text,
                            metavar=None if choices else _METAVARS[kind])


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """(config, resume): paper defaults, then the preset's deltas, then the --config file's settings, then the
    flags given; and --resume. --print-config prints the resolved config as YAML and exits (SystemExit 0)."""
    return config_from_flags(vars(build_parser().parse_args(argv)))


def config_from_flags(given: dict) -> tuple[TrainConfig, bool]:
    """`parse_args` on flags already parsed by `build_parser()`'s parser (bench/bench_train.py adds its own)."""
    given = dict(given)
    resume = given.pop("resume", False)
    print_config = given.pop("print_config", False)
    from_file = read_config_file(given.pop("config")) if "config" in given else {}
    file_preset = from_file.pop("preset", None)
    preset = PRESETS.get(given.pop("preset", None) or file_preset, {})  # --preset wins over the file's
    cfg = dataclasses.replace(TrainConfig(), **{**preset, **from_file, **_tuples(given)})
    validate(cfg)
    if print_config:
        print(config_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg, resume


def read_config_file(path: str | Path) -> dict:
    """The settings of a --config file: a YAML or JSON mapping of field names (`lambda_boundary` or
    `lambda-boundary`) to values, e.g. a run's config.json as is; `preset` may name a preset. Each value goes
    through its flag's parser, so a file is checked exactly as the same flags would be (UserError naming the
    file and the setting)."""
    path = Path(path)
    if path.suffix != ".json":
        data = read_yaml(path, "config file (--config)")
    else:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file (--config)") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"{path}: cannot read the config file ({type(e).__name__}: {e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file is a mapping of settings (lambda_boundary: 0.1, ...)")
    parser = build_parser()
    parser.exit_on_error = False
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "preset":
            if value not in PRESETS:
                raise UserError(f"{path}: preset {value!r} is not one of {', '.join(PRESETS)}"
                                f"{did_you_mean(str(value), PRESETS)}")
            settings[name] = value
            continue
        if name in _TUPLE_FIELDS and value in ([], ()):
            settings[name] = ()  # no flag spells an empty list
            continue
        if name not in _FIELDS:
            raise UserError(f"{path}: unknown setting {key!r}{did_you_mean(name, _FIELDS)}; the settings are "
                            "train.py's flags (python train.py --help)")
        try:
            parsed = vars(parser.parse_known_args(_as_flags(name, value))[0])
        except argparse.ArgumentError as e:
            raise UserError(f"{path}: {key}: {e}") from None
        settings.update(_tuples(parsed))
    return settings


def _as_flags(name: str, value) -> list[str]:
    """The command-line form of one setting (`_as_flags("crop_size", [128, 192])` -> --crop-size 128 192)."""
    if isinstance(value, bool):
        return [_flag(name) if value else "--no-" + _flag(name)[2:]]
    if isinstance(value, (list, tuple)):
        return [_flag(name), *map(str, value)]
    return [f"{_flag(name)}={value}"]


def config_yaml(cfg: TrainConfig) -> str:
    """The config as YAML (--print-config): a --config file that gives back `cfg`."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def _tuples(values: dict) -> dict:
    """Lists (argparse's nargs, JSON) of the tuple-typed fields as tuples."""
    return {k: tuple(v) if isinstance(v, list) and k in _TUPLE_FIELDS else v for k, v in values.items()}


def validate(cfg: TrainConfig) -> None:
    """Reject values that would fail late (after minutes of data loading) with one clear line: each number out of
    its field's declared range (the flags' parser checks the same range), then what depends on several fields."""
    for name in NUMBER_FIELDS:
        values = getattr(cfg, name)
        for value in values if isinstance(values, tuple) else (values,):
            refusal = _FIELDS[name].metadata["bounds"].refusal(value)
            if refusal:
                raise UserError(f"{_flag(name)} {refusal}")
    if cfg.variant not in VARIANTS:
        raise UserError(f"unknown --variant {cfg.variant!r}: use one of {', '.join(VARIANTS)}"
                        f"{did_you_mean(cfg.variant, VARIANTS)}")
    if cfg.head not in HEADS:
        raise UserError(f"unknown --head {cfg.head!r}: use one of {', '.join(HEADS)}{did_you_mean(cfg.head, HEADS)}")
    if cfg.loss:
        fixed = [_flag(name) for name in ("variant", "lambda_dice", "lambda_boundary")
                 if getattr(cfg, name) != _DEFAULTS[name]]
        if fixed:
            raise UserError(f"--loss {cfg.loss!r} sets every term's weight: drop {', '.join(fixed)}")
    cfg.loss_label  # noqa: B018  (resolving it checks the recipe and its term parameters: UserError if bad)
    check_boundary_schedule(cfg.boundary_schedule, cfg.loss_weights, cfg.loss_label)
    if cfg.sdt_source == "cache" and not cfg.sdt_cache:
        raise UserError("--sdt-source cache needs --sdt-cache DIR (the folder written by precompute_sdt.py)")
    if cfg.min_lr > cfg.lr:
        raise UserError(f"--min-lr must be <= --lr, got lr={cfg.lr} min_lr={cfg.min_lr}")
    if 0 in cfg.crop_size and max(cfg.crop_size) > 0:
        raise UserError(f"--crop-size needs H W >= 1 (or 0 0 for native frames), got "
                        f"{' '.join(map(str, cfg.crop_size))}")
    if cfg.reduce_labels and not cfg.hf_dataset:
        raise UserError("--reduce-labels applies to --hf-dataset datasets; pass --hf-dataset PATH_OR_NAME or drop it")
    if cfg.class_palette and len(cfg.class_palette) != len(cfg.class_names):
        raise UserError(f"--class-palette has {plural(len(cfg.class_palette), 'colour')} for {len(cfg.class_names)} "
                        "--class-names; give one per class")


def check_paths(cfg: TrainConfig) -> None:
    """The files and folders `cfg` reads exist (torch-free: train.py runs it before its heavy imports, through
    utils.fileio.parse_args_first, so a mistyped path answers at once): the dataset's folder (unless the demo
    makes it on first use) and classes file (data_utils.paths.check_data_paths), and the SDT cache folder when
    the loss reads one. Their contents are checked where they are read."""
    classes_file = "" if cfg.class_names else cfg.classes  # recorded names win: the file is not read (DataSource)
    check_data_paths(cfg.data_root, cfg.hf_dataset, classes_file, generated=cfg.demo_data)
    cache = Path(cfg.sdt_cache).expanduser()
    if cfg.sdt_source == "cache" and needs_sdt(cfg.loss_weights) and not cache.is_dir():
        write = shell_command("python", "precompute_sdt.py", "--split", cfg.train_split, "--out", cfg.sdt_cache)
        raise UserError(f"{cache}: no such SDT cache folder (--sdt-cache); write it first: {write} with this run's "
                        "data flags")


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as JSON, atomically."""
    atomic_write_json(path, config_to_dict(cfg))


def load_config(path: str | Path) -> TrainConfig:
    """Read a config written by `save_config` (a run's or a checkpoint's config.json).

    Keys this version does not know raise a UserError (a config from a newer version); keys it lacks take
    the paper's defaults (a config from an older version).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file; point to a run dir's or checkpoint's config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); the file is corrupt, restore it from a checkpoint") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of config fields")
    return config_from_dict(data, path)


def config_from_dict(data: dict, where: str | Path) -> TrainConfig:
    """A TrainConfig from a `config_to_dict` dict (a config.json, a results file's `config`), read at `where`.

    Keys this version does not know raise a UserError naming `where`; keys it lacks take the paper's defaults.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown config keys {unknown}; was it written by a newer version of train.py?")
    return TrainConfig(**_tuples(data))


def wandb_group(cfg: TrainConfig) -> str:
    """The W&B group of a run: its run name without the seed (`C_seed42` -> `C`, `C_lb0.05_seed42` -> `C_lb0.05`,
    `C_steal_seed42` -> `C_steal`), so a group holds exactly the seeds of one setting and the runs of a λ_b
    sweep or a schedule do not fall into the study's variant group; on other data or another backbone than the
    paper's, the run folder's dataset and backbone lead it (`demo/convnextv2_atto/C`)."""
    name, suffix = cfg.run_name, f"_seed{cfg.seed}"
    name = name[: -len(suffix)] if name.endswith(suffix) else name
    if (cfg.dataset_name, cfg.backbone) == ("cityscapes", _DEFAULTS["backbone"]):
        return name
    return f"{cfg.dataset_name}/{cfg.backbone}/{name}"


def config_differences(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """The settings (outside RESUMABLE_CHANGES and EXTENDABLE_CHANGES) whose values differ, as `--flag old -> new`:
    a resume must not silently change the study."""
    a, b = config_to_dict(saved), config_to_dict(requested)
    unrecorded = {k for k in ("class_names", "class_palette") if not a[k]}  # saved before classes were recorded
    return [f"{_flag(k)} {_shown(a[k])} -> {_shown(b[k])}" for k in a
            if k not in RESUMABLE_CHANGES | EXTENDABLE_CHANGES | unrecorded and a[k] != b[k]]


def _shown(value, width: int = 40) -> str:
    """A setting's value as a flag takes it ('' for empty text), cut to `width` characters."""
    text = " ".join(map(str, value)) if isinstance(value, list) else repr(value) if value == "" else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def resume_refusal(saved: TrainConfig, requested: TrainConfig, shown: int = 4) -> str | None:
    """Why a run folder made with `saved` cannot be resumed with `requested` (one line: the first `shown`
    differing settings, old -> new, and how many more), or None when it can."""
    differences = config_differences(saved, requested)
    if not differences:
        return None
    more = f" and {len(differences) - shown} more" if len(differences) > shown else ""
    return (f"this run was made with other settings ({'; '.join(differences[:shown])}{more}); pass the same flags "
            "to resume it, or another --out for a new run")


def extension_note(saved: TrainConfig, requested: TrainConfig, done: int) -> str | None:
    """The line train.py prints when a run resumed after `done` epochs gets another --epochs (None if the same):
    the LR schedule (a function of the total step count) is recomputed for the new length."""
    if saved.epochs == requested.epochs:
        return None
    return (f"--epochs {saved.epochs} -> {requested.epochs}: continuing from epoch {done} with the LR schedule "
            f"of a {requested.epochs}-epoch run (not identical to a fresh {requested.epochs}-epoch run)")
