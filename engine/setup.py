"""Accelerator, model and data built from a TrainConfig: what train.py, evaluate.py and bench/ share;
`build_training` is everything train.py's loop runs on (bench/bench_train.py times the same).

The training data order is a pure function of (seed, epoch) (`EpochShuffleSampler`), the flips a pure
function of (seed, epoch, index) (`SegmentationDataset`), and the photometric augmentation a pure function
of (seed, rank, micro-step) (train.py), so a run resumed at an epoch boundary sees exactly the batches the
uninterrupted run would have seen. The loaders draw their workers' base seed from a generator of their own
(`loader_generator`), never from the global torch RNG: with persistent workers that draw happens at a
loader's first iter() in a process, which is epoch 1 in a fresh run but the resumed epoch after a resume,
so drawing it from the restored global RNG would shift the dropout stream of the resumed run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, Sampler

from data_utils.augment import BatchAugment
from data_utils.classes import ClassTable
from data_utils.dataset import (SegmentationDataset, check_crop_size, check_frames, check_labels, check_one_frame_size,
                                collate_batch, frame_sizes)
from data_utils.options import WORKER_SDT_SOURCES
from data_utils.source import DataSource
from engine.config import DEMO_DATA, DEMO_HF_DATA, TrainConfig
from engine.steps import EpochLossLog, GradientMask, StepState
from losses import build_aux_loss, build_loss
from losses.registry import needs_sdt
from losses.schedule import BoundaryWeightSchedule
from models import build_model, takes_input_size
from utils.console import plural
from utils.fileio import NO_FOLDER_THERE, UserError
from utils.signals import loader_worker_init
from utils.threads import set_torch_threads


def build_accelerator(cfg: TrainConfig, cpu: bool = False) -> Accelerator:
    """train.py's Accelerator for `cfg` (bench/bench_train.py times the step under the same one).

    Mixed precision and gradient accumulation from `cfg`, the W&B tracker when `cfg.wandb`, the run dir as
    project dir, and the fast path: torch.compile (inductor) through accelerate's dynamo backend when
    `cfg.compile` and CUDA is available (the backend is always passed, so `--no-compile` wins over an
    `accelerate config` that sets one), and non-blocking host-to-device copies of the prepared loaders'
    batches (the loaders pin memory on CUDA, so the copy of a batch overlaps the running step).
    `cpu=True` forces the CPU even where CUDA is available (and so no compile).
    """
    compile_model = cfg.compile and torch.cuda.is_available() and not cpu
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                       log_with="wandb" if cfg.wandb else None, project_dir=str(cfg.run_dir), cpu=cpu,
                       dynamo_backend="inductor" if compile_model else "no",
                       dataloader_config=DataLoaderConfiguration(non_blocking=True))


def configure_torch(cfg: TrainConfig) -> None:
    """Seeds (+ rank: dropout differs per process; DDP broadcasts the init), CPU threads and cuDNN's kernel
    choice for a run of `cfg` (train.py; bench/bench_train.py does the same before it builds the model)."""
    set_seed(cfg.seed, device_specific=True)
    set_torch_threads(threads=cfg.cpu_threads)  # 0: one per core this process may use (utils.threads)
    torch.backends.cudnn.benchmark = not cfg.deterministic  # fixed 1024x2048 input: autotuning pays off
    if cfg.deterministic:
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)  # bilinear upsampling backward has no such kernel


def ensure_demo_data(cfg: TrainConfig) -> None:
    """Generate the demo dataset `cfg` names (--data-root, or --hf-dataset for its HF form) on first use.

    Its default folder is relative to the working directory (data/demo): a read-only one, or a file in the way,
    is one line naming the folder and the flag that moves it."""
    from data_utils.synthetic import ensure_demo_dataset
    root, params = (cfg.hf_dataset, DEMO_HF_DATA) if cfg.hf_dataset else (cfg.data_root, DEMO_DATA)
    try:
        ensure_demo_dataset(root, **params)
    except OSError as e:
        if e.errno not in NO_FOLDER_THERE:
            raise
        flag = "--hf-dataset" if cfg.hf_dataset else "--data-root"
        raise UserError(f"{Path(root).absolute()}: cannot generate the demo data there ({e.filename}: {e.strerror}); "
                        f"pass a writable folder as {flag} (it is generated there once), or run from a writable "
                        "folder") from None


def data_source(cfg: TrainConfig) -> DataSource:
    """Where `cfg`'s frames and classes come from (its data fields)."""
    return DataSource(data_root=cfg.data_root, hf_dataset=cfg.hf_dataset, image_column=cfg.image_column,
                      label_column=cfg.label_column, reduce_labels=cfg.reduce_labels, classes_file=cfg.classes,
                      class_names=cfg.class_names, class_palette=cfg.class_palette)


def class_table(cfg: TrainConfig) -> ClassTable:
    """The class table of `cfg`'s dataset (`DataSource.classes`: the recorded names first, so a checkpoint's
    config alone gives it)."""
    return data_source(cfg).classes(cfg.train_split)


def with_class_table(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its dataset's class names and colours recorded (train.py saves this config everywhere)."""
    table = class_table(cfg)
    return dataclasses.replace(cfg, class_names=table.names, class_palette=table.palette_hex)


def build_model_from_config(cfg: TrainConfig, load_pretrained: bool = False) -> torch.nn.Module:
    """The segmentor of `cfg` (random init; ImageNet backbone weights only when `load_pretrained`), with one
    output channel per class of `class_table(cfg)`.

    evaluate.py calls it with the default (the weights come from the checkpoint); train.py loads the
    pretrained backbone only when it starts a run, not when it resumes one. A backbone built for one input
    size (Swin) gets the size of the training frames (`train_frame_size`).
    """
    img_size = train_frame_size(cfg) if takes_input_size(cfg.backbone) else None
    num_classes = len(cfg.class_names) or class_table(cfg).num_classes  # recorded names: no data needed
    model = build_model(backbone=cfg.backbone, num_classes=num_classes,
                        pretrained=(cfg.pretrained or None) if load_pretrained else None,
                        aux_head=cfg.aux_weight > 0, drop_path_rate=cfg.drop_path_rate,
                        grad_checkpointing=cfg.grad_checkpointing, head=cfg.head,
                        head_channels=cfg.head_channels, img_size=img_size)
    return model


@dataclass
class Training:
    """What train.py's loop runs on (`build_training`).

    step: the micro-step's state (engine.steps.StepState: prepared model and optimizer, losses, guard);
    train_loader / val_loader: the prepared loaders (val_loader None when not asked for);
    loss_schedule: the λ_b schedule, `weights_at(epoch)` for `step.loss_fn.weights`;
    steps_per_epoch, total_steps: optimizer steps (the LR schedule's length, `engine.schedule.get_lr`);
    frames_checked, check_seconds: what `check_data` checked (0 when not asked for);
    val_class_presence: (N, C) bool, the classes each val label holds (`data_utils.dataset.check_labels`; on the
    main process with `check_data`, else None).
    """
    step: StepState
    train_loader: DataLoader
    val_loader: DataLoader | None
    loss_schedule: BoundaryWeightSchedule
    steps_per_epoch: int
    total_steps: int
    frames_checked: int = 0
    check_seconds: float = 0.0
    val_class_presence: np.ndarray | None = None


def build_training(cfg: TrainConfig, accelerator: Accelerator, load_pretrained: bool = False, val: bool = True,
                   check_data: bool = False) -> Training:
    """Data, model, losses, optimizer and guard of a run of `cfg`, prepared by `accelerator`, in train.py's
    order (the global RNG draws, e.g. the model's init, come in the same order wherever it is called).

    Call after `configure_torch(cfg)` (the seeds) and with `cfg`'s data in place. The loaders
    (`build_dataloader`; with `check_data`, every frame checked by the main process first,
    `data_utils.dataset.check_frames`, so a bad file stops the run before any training); the model
    (`build_model_from_config`: ImageNet weights when `load_pretrained`; SyncBatchNorm under multi-GPU DDP;
    channels_last when cfg.channels_last); the loss, the aux loss and the λ_b schedule; fused AdamW; the
    non-finite guard (`GradientMask`, active when cfg.max_nonfinite > 0, and `EpochLossLog`); one
    `accelerator.prepare`. `val=False` builds no val loader (bench/bench_train.py).
    """
    rank = accelerator.process_index
    checked, check_seconds, val_presence = 0, 0.0, None
    with accelerator.main_process_first():  # the first process builds the datasets caches, the others reuse them
        train_loader = build_dataloader(cfg, cfg.train_split, train=True, rank=rank)
        val_loader = build_dataloader(cfg, cfg.val_split, train=False, rank=rank) if val else None
        if check_data and accelerator.is_main_process:  # a bad file stops the run now, not after an epoch
            start = time.perf_counter()
            checked = check_frames(train_loader.dataset, decode_labels=False, num_workers=cfg.num_workers)
            if val_loader is not None:  # the labels decoded: what they hold picks the prediction samples
                val_presence = check_labels(val_loader.dataset, num_workers=cfg.num_workers)
                checked += len(val_presence)
            check_seconds = time.perf_counter() - start
    augment = BatchAugment() if cfg.augment == "gpu" else None  # the workers do it for --augment cpu
    on_device_sdt = uses_sdt(cfg) and cfg.sdt_source == "gpu"  # the SDT computed on the device, per batch
    sdt_classes = train_loader.dataset.num_classes if on_device_sdt else 0

    with accelerator.main_process_first():  # a hub download of the pretrained backbone happens once
        model = build_model_from_config(cfg, load_pretrained=load_pretrained)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch 2 per GPU: BN stats over all GPUs
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # NHWC weights; device_images sends NHWC batches
    # --max-nonfinite K > 0: undo a non-finite micro-batch on the device (gradient, BN stats, step); K = 0: off
    mask = GradientMask(model, active=cfg.max_nonfinite > 0)
    loss_fn = build_loss(cfg.loss_weights, params=cfg.loss_params)  # --loss, or --variant with its λs
    aux_loss_fn = build_aux_loss(cfg.aux_loss, loss_fn)  # "composite" shares loss_fn, so its weights too
    loss_schedule = BoundaryWeightSchedule(cfg.boundary_schedule, loss_fn.weights, start=cfg.boundary_start,
                                           ramp_epochs=cfg.boundary_ramp_epochs, delta=cfg.steal_delta,
                                           floor=cfg.steal_floor)  # "constant" (the paper) keeps the weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=True)  # fused: can skip an update on a device-side flag (GradientMask)

    if val_loader is None:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    else:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)  # accumulate() syncs at the loader's end
    step = StepState(cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, loss_fn=loss_fn,
                     aux_loss_fn=aux_loss_fn, mask=mask, loss_log=EpochLossLog(accelerator, each_step=mask.active),
                     augment=augment, sdt_classes=sdt_classes)
    return Training(step=step, train_loader=train_loader, val_loader=val_loader, loss_schedule=loss_schedule,
                    steps_per_epoch=steps_per_epoch, total_steps=cfg.epochs * steps_per_epoch,
                    frames_checked=checked, check_seconds=check_seconds, val_class_presence=val_presence)


def train_frame_size(cfg: TrainConfig) -> tuple[int, int]:
    """(H, W) of what the model sees in training: the crop (--crop-size), else the first training frame."""
    if min(cfg.crop_size) > 0:
        return tuple(cfg.crop_size)
    source = data_source(cfg)
    return tuple(source.frames(cfg.train_split, source.classes(cfg.train_split)).label_size(0))


def uses_sdt(cfg: TrainConfig) -> bool:
    """Whether the run's loss recipe needs signed distance maps (C, D, any recipe with the boundary term)."""
    return needs_sdt(cfg.loss_weights)


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of range(n) that depends only on (seed, epoch).

    Every process draws the same permutation (accelerate's BatchSamplerShard then gives each its slice),
    and `set_epoch(e)` makes epoch e reproducible after a resume with no RNG state to restore.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)  # distinct stream per (seed, epoch)
        return iter(torch.randperm(self.num_samples, generator=gen).tolist())

    def __len__(self) -> int:
        return self.num_samples


def loader_generator(seed: int, rank: int) -> torch.Generator:
    """The DataLoader's own generator, a pure function of (run seed, rank).

    torch draws each loader iterator's worker base seed from it (workers are seeded base + worker id), so
    the draw leaves the global torch RNG (dropout) alone, and the worker seeds are the same in a fresh and
    a resumed process. Nothing in the workers draws from their RNGs anyway (flips and augmentation are
    seeded explicitly), but a transform that did would still be seeded per (seed, rank, worker).
    """
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, rank, 0x10ADE5]).integers(2**63 - 1)))


def build_dataloader(cfg: TrainConfig, split: str, train: bool, rank: int = 0) -> DataLoader:
    """DataLoader over one split of `cfg`'s dataset (`data_source`; not yet `accelerator.prepare`d).

    train=True: shuffled per (seed, epoch), random horizontal flip and crop (cfg.crop_size), full batches
        only; images stay uint8 when augmentation runs on the device (cfg.augment == "gpu"), else they are
        augmented and normalised in the workers; "sdt" is in the batch when the loss needs it and cfg.sdt_source is
        "cpu" or "cache" (with "gpu", train.py computes it on the device).
    train=False: dataset order, no flip, no crop, no augmentation, uint8 images (evaluate_model normalises on
        the device), no SDT, workers that do not persist between evaluations, the last batch may be short; one
        frame per batch when the frames may differ in size (an HF dataset, or a Cityscapes-layout split whose
        PNG headers show several sizes), so every frame is evaluated at its native size.
    A crop (train=True) taller or wider than every frame is refused (`check_crop_size`), and so are native frames
    of several sizes in batches of more than one (`check_one_frame_size`).
    Call `loader.dataset.set_epoch(epoch)` and `loader.sampler.set_epoch(epoch)` (or the prepared loader's
    `set_epoch`) before each training epoch. `rank` (the process index) seeds `loader_generator`.
    """
    source = data_source(cfg)
    frames = source.frames(split, source.classes(cfg.train_split))
    # frame sizes before any work (PNG headers): a huge crop fails in a worker out of memory, mixed sizes at a batch
    if train and min(cfg.crop_size) > 0:
        check_crop_size(tuple(cfg.crop_size), frames, f"split '{split}' of {source.where}")
    elif train and cfg.batch_size > 1 and source.one_frame_size:
        check_one_frame_size(frames, f"split '{split}' of {source.where}")
    if train:
        sdt_source = cfg.sdt_source if uses_sdt(cfg) and cfg.sdt_source in WORKER_SDT_SOURCES else "none"
        dataset = SegmentationDataset(
            frames, hflip=True, seed=cfg.seed, image_dtype="float" if cfg.augment == "cpu" else "uint8",
            sdt_source=sdt_source, sdt_cache_dir=cfg.sdt_cache or None,
            augment=BatchAugment() if cfg.augment == "cpu" else None,
            crop_size=tuple(cfg.crop_size) if min(cfg.crop_size) > 0 else None)
        if len(dataset) < cfg.batch_size:
            raise UserError(f"{source.where}: split {split!r} has {plural(len(dataset), 'frame')}, "
                            f"fewer than --batch-size {cfg.batch_size}; lower the batch size")
    else:
        dataset = SegmentationDataset(frames, hflip=False, seed=cfg.seed, image_dtype="uint8")
    workers = cfg.num_workers
    # evaluation: one frame per batch unless all frames have one size (PNG headers), as frames are not resized
    batch_size = cfg.batch_size if train or (source.one_frame_size and len(frame_sizes(frames)) == 1) else 1
    # Training workers persist across epochs; evaluation's start at each evaluation and stop after it, rather
    # than sit idle (memory, processes) through the training between two evaluations. Workers end quietly on
    # Ctrl-C and SIGTERM sent to the process group; the main process stops on them (utils.signals).
    return DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate_batch, drop_last=train,
        sampler=EpochShuffleSampler(len(dataset), cfg.seed) if train else None,
        num_workers=workers, persistent_workers=train and workers > 0, pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if workers > 0 else None, generator=loader_generator(cfg.seed, rank),
        worker_init_fn=loader_worker_init)
