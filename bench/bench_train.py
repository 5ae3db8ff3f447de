"""Training-step speed and memory of ConvNeXt-V2 + UPerNet with the study's loss, and of the real data path.

Two parts, timed over --steps optimizer steps after --warmup steps:
  model  model + loss + backward + AdamW on random tensors already on the device (no data loading);
  data   the training data path of train.py: engine.setup.build_dataloader over a synthetic Cityscapes-layout
         dataset (data_utils.synthetic, generated at the requested size; PNG decode + label mapping in the
         workers, uint8 images), photometric augmentation (BatchAugment) on the device batch, the signed
         distance maps from each --sdt-source (gpu: compute_sdt_torch on the device batch; cache: files
         precomputed with data_utils.sdt; cpu: compute_sdt in the loader workers), then the same step.

The step is train.py's: `engine.steps.forward_loss` under train.py's Accelerator
(`engine.setup.build_accelerator`: autocast from --bf16, outputs converted to float32 by accelerate,
torch.compile from --compile, non-blocking batch copies), then `accelerator.backward`, set LR, fused AdamW
`step` and `zero_grad(set_to_none=True)`: what `engine.steps.accumulate_and_step` does
with grad_accum=1 and no clipping (split here so each phase can be timed). Every step is an optimizer
step (the recipe steps every 4th micro-batch, so the optimizer share here is an upper bound). The step
also does train.py's per-micro-step bookkeeping on the device, with no host sync: the loss terms into
`engine.steps.EpochLossLog` and its finite flag into `GradientMask` (one `torch.where` per parameter
gradient, the buffers copied before the forward and selected back after the backward, AdamW's
`found_inf` set). `--host-sync` adds the two host reads of the loss per step that train.py did before that.

Per part it prints images/s, ms per step split into data wait / augment+SDT / forward / backward /
optimizer (CUDA events read once at the end, so the step has no host syncs; perf_counter on CPU, where
ops run synchronously), peak memory (torch.cuda.max_memory_allocated over the timed steps on CUDA; peak
RSS of the main process on CPU), the model's FLOPs per training image (torch.utils.flop_counter on the
meta device, forward + backward, with the grouped-convolution backward corrected, see `count_train_flops`)
and the achieved TFLOP/s (model FLOPs x images/s; recomputation under checkpointing is not counted).

    python bench/bench_train.py                                   # CPU: --preset small (256x512, atto)
    python bench/bench_train.py --device cuda --preset full       # 1024x2048 ConvNeXt-V2-Base, bf16, compile
    python bench/bench_train.py --device cuda --preset full --matrix --json bench_full.json   # < 5 min, H100

--matrix runs one subprocess per configuration (clean peak memory each) and prints a table of the
fast-path options against the plain eager baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from data_utils.options import SDT_SOURCES  # noqa: E402
from engine.config import VARIANTS, TrainConfig, validate  # noqa: E402
from engine.setup import build_accelerator, build_dataloader, build_model_from_config, uses_sdt  # noqa: E402
from engine.steps import EpochLossLog, GradientMask, augmentation_seed, device_images, forward_loss  # noqa: E402
from losses import build_aux_loss, build_loss  # noqa: E402
from utils.fileio import UserError, atomic_write_json  # noqa: E402

CITYSCAPES_TRAIN_IMAGES = 2975  # one epoch of the study
PHASES = ("data", "augment_sdt", "forward", "backward", "optimizer")

# --preset: full = the study's setting (and the H100 measurement); small = what 2 CPU cores manage
# (UPerNet at 128 channels as in train.py's demo preset: at 512 its 3x3 fuse conv is ~10x the atto backbone).
PRESETS = {
    "full": {"height": 1024, "width": 2048, "backbone": "convnextv2_base", "batch_size": 2, "steps": 10,
             "warmup": 3, "bf16": True, "compile": True, "workers": 8, "head_channels": 512},
    "small": {"height": 256, "width": 512, "backbone": "convnextv2_atto", "batch_size": 2, "steps": 5,
              "warmup": 2, "bf16": False, "compile": False, "workers": 2, "head_channels": 128},
}

# The and the study's figures, printed beside ours for comparison (their measurements, not ours).
REFERENCE_FIGURES = [
    "study (RTX PRO 6000 Blackwell Max-Q, batch 2, 1024x2048): 4.78 img/s, 623 s/epoch, 32.8 GB peak, 113 GB SDT cache",
    "issue, plain PyTorch on one H100 (random tensors, bf16, variant C, fused AdamW): eager 7.4 img/s 27.5 GiB; "
    "compile 15.1 img/s 14.3 GiB (first step 122 s); eager + activation checkpointing 6.3 img/s 13.9 GiB",
    "issue goal on one H100, end to end: >= 18 img/s and <= 16 GiB (epoch of 2975 images < 3 min)",
]


# ----------------------------------------------------------------------------------------------- FLOPs
def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward: each requested gradient costs one forward convolution.

    A forward conv does 2 * prod(out) * prod(w[1:]) FLOPs (w[1] = C_in / groups); for a transposed conv the
    roles of input and output swap. grad_input (output_mask[0]) and grad_weight (output_mask[1]) each do
    the same multiply-adds. torch.utils.flop_counter's own formula (torch 2.14) drops the group division
    in the grad_weight term, so for ConvNeXt's depthwise 7x7 convs it counts C times the work (pytorch PR
    #183405 proposes the same fix).
    """
    one_pass = 2 * math.prod(x_shape if transposed else grad_out_shape) * math.prod(w_shape[1:])
    return one_pass * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter(corrected: bool = True) -> FlopCounterMode:
    """A FlopCounterMode (no display), with the grouped-conv backward fixed unless corrected=False."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop} if corrected else None
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_train_flops(model: torch.nn.Module, images: torch.Tensor, corrected: bool = True) -> dict[str, int]:
    """Matmul/conv FLOPs of one training forward + backward of `model` on `images` (inputs need no grad).

    `model(images)` returns a dict of tensors (our segmentor's training outputs); the backward is driven by
    the sum of their means, which costs no counted FLOPs (elementwise ops and the loss are not counted).
    Returns {"forward", "backward", "train"} totals for the whole batch.
    """
    with flop_counter(corrected) as counter:
        out = model(images)
        forward = counter.get_total_flops()
        sum(v.float().mean() for v in out.values()).backward()
        train = counter.get_total_flops()
    return {"forward": forward, "backward": train - forward, "train": train}


def model_flops_per_image(cfg: TrainConfig, height: int, width: int) -> dict[str, float]:
    """FLOPs per training image of cfg's model at height x width, counted on the meta device (no memory,
    seconds even at 1024x2048); checkpointing off (it only adds recomputation). Also the figure torch's own
    (uncorrected) counter gives, for comparison with numbers counted that way."""
    with torch.device("meta"):
        model = build_model_from_config(dataclasses.replace(cfg, grad_checkpointing=False))
        images = torch.empty(1, 3, height, width)
    model.train()
    fixed = count_train_flops(model, images, corrected=True)
    model.zero_grad(set_to_none=True)
    raw = count_train_flops(model, images, corrected=False)
    return {"forward": float(fixed["forward"]), "train": float(fixed["train"]),
            "train_uncorrected_counter": float(raw["train"])}


# ----------------------------------------------------------------------------------------------- timing
class PhaseTimer:
    """Consecutive phases of each step, without host syncs.

    CUDA: an event is recorded at each mark and all are read after one synchronize at the end, so the
    intervals are the device's timeline (a "data" interval is the time the device waited for the batch).
    CPU: perf_counter at each mark (CPU ops are synchronous).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[list[tuple[str, object]]] = []

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self.steps.append([("start", self._now())])

    def mark(self, phase: str) -> None:
        self.steps[-1].append((phase, self._now()))

    def mean_ms(self) -> dict[str, float]:
        """Mean milliseconds per step of each phase (phases never marked are absent)."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for marks in self.steps:
            for (_, a), (phase, b) in zip(marks, marks[1:]):
                ms = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
                totals[phase] = totals.get(phase, 0.0) + ms
        return {k: v / max(len(self.steps), 1) for k, v in totals.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux >= 4.0: "5" resets the process's peak RSS (VmHWM) to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # then the peak is the process's peak so far


def peak_memory_gib(device: torch.device) -> float:
    """CUDA: max allocated by tensors since the last reset. CPU: the main process's peak RSS (workers excluded)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def saved_for_backward_mib(fn, model: torch.nn.Module) -> float:
    """MiB of distinct tensor storages autograd keeps for backward while `fn()` runs (parameters excluded).

    A device-independent view of activation memory: what the fused loss and checkpointing change. Tensors
    saved inside a checkpointed region go through the checkpoint's own hooks and so are (rightly) not
    counted. `fn` runs for its side effects; the caller frees the graph (backward or dropping the loss).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


# ----------------------------------------------------------------------------------------------- data
def prepare_dataset(root: Path, height: int, width: int, num_frames: int, unique_frames: int) -> Path:
    """A synthetic Cityscapes-layout train split of `num_frames` frames at height x width under `root`.

    `unique_frames` are rendered (data_utils.synthetic, ~1 s per 1024x2048 frame); the rest are hard links
    to them under new names, so every frame is still a PNG to decode while the set takes seconds to make.
    """
    from data_utils.synthetic import frame_name, generate_dataset

    unique_frames = max(1, min(unique_frames, num_frames))
    generate_dataset(root, num_train=unique_frames, num_val=0, height=height, width=width, seed=0,
                     progress=sys.stderr.isatty())
    for index in range(unique_frames, num_frames):
        (city, source), (_, name) = frame_name("train", index % unique_frames), frame_name("train", index)
        for folder, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
            city_dir = root / folder / "train" / city
            os.link(city_dir / f"{source}{suffix}", city_dir / f"{name}{suffix}")
    return root


def prepare_sdt_cache(data_root: Path, cache_dir: Path, compress: bool = False) -> Path:
    """SDT cache files (data_utils.sdt format, as precompute_sdt.py writes them, zlib row deltas with
    `compress`) for every train frame; identical labels (hard-linked PNGs) get hard-linked cache files, so
    the cache costs one compute_sdt per distinct label file."""
    from data_utils.cityscapes import load_split
    from data_utils.dataset import read_label_ids
    from data_utils.labels import label_ids_to_train_ids
    from data_utils.sdt import compute_sdt, sdt_cache_path, write_sdt_file

    done: dict[int, Path] = {}  # label file inode -> its cache file
    for record in load_split(data_root, "train"):
        out = Path(sdt_cache_path(cache_dir, record["name"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        inode = os.stat(record["label_path"]).st_ino
        if inode in done:
            os.link(done[inode], out)
            continue
        train_ids = label_ids_to_train_ids(read_label_ids(record["label_path"]), record["label_path"])
        write_sdt_file(out, compute_sdt(train_ids), compress=compress)
        done[inode] = out
    return cache_dir


def frames_needed(args) -> int:
    """Frames for one epoch that covers warm-up + timed steps (no loader restart inside the measurement)."""
    return args.batch_size * (args.warmup + args.steps)


# ----------------------------------------------------------------------------------------------- one run
def train_config(args, sdt_source: str = "gpu", data_root: str = "", sdt_cache: str = "") -> TrainConfig:
    """The TrainConfig train.py would get for these bench options (model, loss, loader fields)."""
    return TrainConfig(
        variant=args.variant, loss=args.loss, backbone=args.backbone, pretrained="", head_channels=args.head_channels,
        grad_checkpointing=args.grad_checkpointing, batch_size=args.batch_size, grad_accum=1,
        mixed_precision="bf16" if args.bf16 else "no", num_workers=args.workers, data_root=data_root,
        sdt_source=sdt_source, sdt_cache=sdt_cache, augment="gpu", seed=0, wandb=False,
        compile=bool(args.compile), channels_last=args.channels_last)


def make_accelerator(args, device: torch.device):
    """train.py's Accelerator (`engine.setup.build_accelerator`) for these options: mixed precision from
    --bf16, torch.compile (inductor) from --compile on CUDA, non-blocking host->device batch copies."""
    return build_accelerator(train_config(args), cpu=device.type == "cpu")


class Trainer:
    """Model, loss, AdamW and Accelerator as train.py builds them, plus the bench-only fast-path switches."""

    def __init__(self, args, device: torch.device, accelerator=None):
        self.args, self.device = args, device
        self.cfg = train_config(args)
        torch.backends.cudnn.benchmark = True  # as train.py: fixed input size, autotuned conv kernels
        self.accelerator = accelerator or make_accelerator(args, device)
        model = build_model_from_config(self.cfg)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.gradient_mask = GradientMask(model)  # as train.py: undoes a non-finite batch on the device
        self.loss_fn = build_loss(self.cfg.loss_weights, fused=args.fused_loss, params=self.cfg.loss_params)
        self.aux_loss_fn = build_aux_loss(self.cfg.aux_loss, self.loss_fn)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas,
                                      weight_decay=self.cfg.weight_decay, fused=True)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.model.train()
        self.raw_model = model
        self.loss_log = EpochLossLog(self.accelerator)  # never read here: train.py reads it every 20 steps

    def step(self, images: torch.Tensor, labels: torch.Tensor, sdt: torch.Tensor | None,
             timer: PhaseTimer) -> torch.Tensor:
        """One training step (forward, loss, backward, AdamW); returns the detached loss (no host sync)."""
        if self.args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.gradient_mask.save_buffers()  # train.py's bookkeeping, on the device
        terms, _ = forward_loss(self.model, images, labels, sdt, self.loss_fn, self.aux_loss_fn, self.cfg.aux_weight)
        self.gradient_mask.set_keep(self.loss_log.update(terms))
        if self.args.host_sync:  # train.py before efb20b8 checked finiteness before backward: the host waited here
            bool(torch.isfinite(terms["loss"]))
        timer.mark("forward")
        self.accelerator.backward(terms["loss"])
        self.gradient_mask.restore_buffers()
        timer.mark("backward")
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr  # as accumulate_and_step (the LR is a function of the step there)
        self.gradient_mask.skip_step_unless_kept(self.optimizer)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.args.host_sync:  # ... and read the loss for the progress bar after each step
            terms["loss"].item()
        timer.mark("optimizer")
        return terms["loss"].detach()


def _timed_loop(trainer: Trainer, next_batch, args) -> dict:
    """Warm-up steps (the first one timed alone: compile / autotuning), then the timed steps."""
    device = trainer.device
    result: dict = {}
    for i in range(args.warmup):
        start = time.perf_counter()
        next_batch(PhaseTimer(device), i)
        synchronize(device)
        if i == 0:
            result["first_step_s"] = time.perf_counter() - start
    reset_peak_memory(device)
    timer = PhaseTimer(device)
    losses = []
    synchronize(device)
    start = time.perf_counter()
    for i in range(args.steps):
        losses.append(next_batch(timer, args.warmup + i))
    synchronize(device)
    wall = time.perf_counter() - start
    final_loss = torch.stack(losses).float().mean().item()  # the one host read of the losses
    images_per_s = args.batch_size * args.steps / wall
    result.update({
        "images_per_s": images_per_s, "ms_per_step": 1e3 * wall / args.steps, "phase_ms": timer.mean_ms(),
        "peak_memory_gib": peak_memory_gib(device), "epoch_s": CITYSCAPES_TRAIN_IMAGES / images_per_s,
        "mean_loss": final_loss, "loss_finite": math.isfinite(final_loss)})
    return result


def random_batch(args, device: torch.device, with_sdt: bool):
    """Fixed random (images (N, 3, H, W) float32, labels (N, H, W) int64, sdt (N, 19, H, W) int8 or None)."""
    n, h, w = args.batch_size, args.height, args.width
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(n, 3, h, w, generator=gen).to(device)
    labels = torch.randint(0, 19, (n, h, w), generator=gen).to(device)
    sdt = torch.randint(-127, 128, (n, 19, h, w), generator=gen, dtype=torch.int8).to(device) if with_sdt else None
    return images, labels, sdt


def time_model_part(trainer: Trainer, args) -> dict:
    """Model + loss + backward + optimizer on fixed random device tensors."""
    images, labels, sdt = random_batch(args, trainer.device, trainer.loss_fn.uses_sdt)

    def next_batch(timer: PhaseTimer, _i: int) -> torch.Tensor:
        timer.start()
        return trainer.step(images, labels, sdt, timer)

    saved = None
    if not args.compile:  # one extra (untimed) eager forward to count what autograd keeps
        kept = {}

        def forward():
            images_ = images.contiguous(memory_format=torch.channels_last) if args.channels_last else images
            kept["terms"], _ = forward_loss(trainer.model, images_, labels, sdt, trainer.loss_fn,
                                            trainer.aux_loss_fn, trainer.cfg.aux_weight)

        saved = saved_for_backward_mib(forward, trainer.raw_model)
        kept["terms"]["loss"].backward()  # frees the graph; the gradients are dropped, no optimizer step
        trainer.optimizer.zero_grad(set_to_none=True)
    result = _timed_loop(trainer, next_batch, args)
    result["saved_for_backward_mib"] = saved
    return result


def time_data_part(trainer: Trainer, args, sdt_source: str, data_root: Path, sdt_cache: Path | None) -> dict:
    """train.py's data path: prepared DataLoader -> BatchAugment (+ compute_sdt_torch) on the device -> step."""
    from data_utils.augment import BatchAugment

    cfg = train_config(args, sdt_source, str(data_root), str(sdt_cache or ""))
    loader = trainer.accelerator.prepare(build_dataloader(cfg, "train", train=True))
    augment = BatchAugment()
    on_device_sdt = uses_sdt(cfg) and sdt_source == "gpu"
    if on_device_sdt:
        from data_utils.sdt import compute_sdt_torch
    state = {"epoch": 0, "iterator": None, "host_wait_s": 0.0}

    def fetch():
        while True:
            if state["iterator"] is None:
                loader.set_epoch(state["epoch"])
                loader.dataset.set_epoch(state["epoch"])
                state["iterator"] = iter(loader)
            try:
                return next(state["iterator"])
            except StopIteration:  # only between warm-up and a short dataset; frames_needed avoids it
                state["epoch"] += 1
                state["iterator"] = None

    def next_batch(timer: PhaseTimer, i: int) -> torch.Tensor:
        timer.start()
        start = time.perf_counter()
        batch = fetch()
        if i >= args.warmup:
            state["host_wait_s"] += time.perf_counter() - start
        timer.mark("data")
        images = device_images(batch["image"], augment, augmentation_seed(cfg.seed, 0, i))
        labels = batch["label"]  # uint8 from the loader, as in train.py
        sdt = compute_sdt_torch(labels, validate=False) if on_device_sdt else batch.get("sdt")
        labels = labels.long()
        timer.mark("augment_sdt")
        return trainer.step(images, labels, sdt, timer)

    try:
        result = _timed_loop(trainer, next_batch, args)
    finally:
        state["iterator"] = None  # dropping the last iterator shuts the persistent workers down
        del loader
    # The host's own wait in next(loader): on CUDA the host runs ahead, so this can be > 0 while the
    # device never idles; the "data" phase is what the device waited.
    result["host_data_wait_ms"] = 1e3 * state["host_wait_s"] / args.steps
    return result


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {cpu})"


def run_single(args) -> dict:
    """Both parts for one configuration; returns the JSON-able record."""
    device = torch.device(args.device)
    report = {
        "date": datetime.date.today().isoformat(), "device": describe_device(device), "torch": torch.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "parts": [],
    }
    cfg = train_config(args)
    report["flops_per_image"] = model_flops_per_image(cfg, args.height, args.width)
    print(header(args, report))
    if args.flops_only:
        return report
    trainer = Trainer(args, device)
    parts = args.parts.split(",")
    if "model" in parts:
        record = {"part": "model", **time_model_part(trainer, args)}
        report["parts"].append(finish(record, report))
        print(format_part(record))
    if "data" in parts:
        workdir = Path(tempfile.mkdtemp(prefix="bench_train_", dir=args.tmp_dir))
        try:
            data_root = args.data_root or prepare_dataset(workdir / "data", args.height, args.width,
                                                          frames_needed(args), args.frames)
            for source in args.sdt_source.split(","):
                cache = None
                if source == "cache" and uses_sdt(cfg):
                    cache = args.sdt_cache or prepare_sdt_cache(Path(data_root), workdir / "sdt_cache")
                record = {"part": f"data sdt={source}" if uses_sdt(cfg) else "data",
                          **time_data_part(trainer, args, source, Path(data_root), cache)}
                report["parts"].append(finish(record, report))
                print(format_part(record))
                if not uses_sdt(cfg):
                    break
        finally:
            if not args.keep_data:
                shutil.rmtree(workdir, ignore_errors=True)
    return report


def finish(record: dict, report: dict) -> dict:
    record["tflops_per_s"] = report["flops_per_image"]["train"] * record["images_per_s"] / 1e12
    return record


def header(args, report: dict) -> str:
    flops = report["flops_per_image"]
    compiled = args.compile and args.device == "cuda"  # build_accelerator ignores compile on the CPU
    switches = [name for name, on in (("bf16", args.bf16), ("compile", compiled),
                                      ("channels_last", args.channels_last), ("fused loss", args.fused_loss),
                                      ("grad checkpointing", args.grad_checkpointing)) if on]
    return (f"bench_train {report['date']}: {args.backbone} + UPerNet({args.head_channels}), loss "
            f"{train_config(args).loss_label}, "
            f"batch {args.batch_size} at {args.height}x{args.width}, {report['device']}, torch {report['torch']}, "
            f"{', '.join(switches) or 'fp32 eager, plain loss'}; {args.workers} workers; "
            f"{args.warmup} warm-up + {args.steps} timed steps\n"
            f"model FLOPs per training image: {flops['forward'] / 1e12:.4g} TFLOP forward, "
            f"{flops['train'] / 1e12:.4g} TFLOP forward+backward (uncorrected torch counter: "
            f"{flops['train_uncorrected_counter'] / 1e12:.4g})")


def format_part(r: dict) -> str:
    phases = "  ".join(f"{k} {r['phase_ms'][k]:.1f}" for k in PHASES if k in r["phase_ms"])
    line = (f"  {r['part']:<15} {r['images_per_s']:8.2f} img/s  {r['ms_per_step']:8.1f} ms/step ({phases})  "
            f"peak {r['peak_memory_gib']:.2f} GiB  {r['tflops_per_s']:.4g} TFLOP/s  epoch {r['epoch_s']:.0f} s")
    if "first_step_s" in r:
        line += f"  first step {r['first_step_s']:.1f} s"
    if r.get("saved_for_backward_mib") is not None:
        line += f"  saved for backward {r['saved_for_backward_mib']:.0f} MiB"
    if not r["loss_finite"]:
        line += "  NON-FINITE LOSS"
    return line


# ----------------------------------------------------------------------------------------------- matrix
def matrix_rows(args) -> list[tuple[str, list[str], str]]:
    """(label, flags, parts): each fast-path option added to the plain eager baseline, then the default."""
    plain = ["--no-compile", "--no-channels-last", "--no-fused-loss", "--no-grad-checkpointing"]
    default = ["--compile" if args.compile else "--no-compile", "--channels-last", "--fused-loss",
               "--no-grad-checkpointing"]
    return [
        ("plain eager (NCHW, autograd loss)", plain, "model"),
        ("+ channels_last", plain[:1] + ["--channels-last", "--no-fused-loss", "--no-grad-checkpointing"], "model"),
        ("+ channels_last + fused loss", plain[:1] + ["--channels-last", "--fused-loss", "--no-grad-checkpointing"],
         "model"),
        ("+ grad checkpointing", plain[:1] + ["--channels-last", "--fused-loss", "--grad-checkpointing"], "model"),
        (f"default ({'compile, ' if args.compile else 'eager, '}channels_last, fused loss)", default, "model,data"),
    ]


def common_flags(args) -> list[str]:
    """The resolved options every matrix row shares, as flags."""
    return ["--device", args.device, "--height", str(args.height), "--width", str(args.width),
            "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--variant", args.variant, "--loss", args.loss, "--backbone", args.backbone,
            "--head-channels", str(args.head_channels),
            "--workers", str(args.workers), "--sdt-source", args.sdt_source, "--bf16" if args.bf16 else "--no-bf16",
            *(["--host-sync"] if args.host_sync else [])]


def run_matrix(args) -> dict:
    """Each row in its own process (clean peak memory, one compile at most); the data set and SDT cache are
    prepared once here (in the background while the model-only rows run, when the machine has the cores)."""
    common = common_flags(args)
    workdir = Path(tempfile.mkdtemp(prefix="bench_matrix_", dir=args.tmp_dir))
    prepared: dict = {}

    def prepare():
        try:
            root = args.data_root or prepare_dataset(workdir / "data", args.height, args.width,
                                                     frames_needed(args), args.frames)
            prepared["data_root"] = root
            if "cache" in args.sdt_source.split(",") and uses_sdt(train_config(args)):
                prepared["sdt_cache"] = args.sdt_cache or prepare_sdt_cache(Path(root), workdir / "sdt_cache")
        except Exception as e:  # reported with the data rows
            prepared["error"] = f"{type(e).__name__}: {e}"

    background = (os.cpu_count() or 1) >= 8  # on a 2-core box it would slow the rows it runs beside
    preparer = threading.Thread(target=prepare, daemon=True)
    if background:
        preparer.start()
    else:
        prepare()
    rows = []
    try:
        for label, flags, parts in matrix_rows(args):
            extra = []
            if "data" in parts:
                if background:
                    preparer.join()
                if "error" in prepared:
                    print(f"data set preparation failed: {prepared['error']}; timing the model part only")
                    parts = "model"
                else:
                    extra = ["--data-root", str(prepared["data_root"])]
                    if "sdt_cache" in prepared:
                        extra += ["--sdt-cache", str(prepared["sdt_cache"])]
            out = workdir / f"row{len(rows)}.json"
            command = [sys.executable, str(Path(__file__).resolve()), *common, *flags, "--parts", parts,
                       *extra, "--json", str(out)]
            print(f"\n== {label}: {' '.join(flags)}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(command)
            row = {"label": label, "flags": flags, "seconds": time.perf_counter() - start}
            if proc.returncode == 0 and out.exists():
                import json

                row["report"] = json.loads(out.read_text())
            else:
                row["error"] = f"exit status {proc.returncode}"
            rows.append(row)
    finally:
        if background and preparer.is_alive():
            preparer.join()
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"matrix": rows}


def run_compare(args) -> dict:
    """Step time of the matrix's eager model-only configurations, interleaved in one process.

    Each round times one step of every configuration (the order rotated each round), and the median per
    configuration is reported: on a machine shared with other work, slow drifts of the available CPU hit
    all configurations alike, so the ratios stay meaningful where separate runs are not. Memory is not
    measured here (all models live in one process): use --matrix for that.
    """
    device = torch.device(args.device)
    rows, seen = [], set()
    for label, flags, _ in matrix_rows(args):
        if "--compile" not in flags and tuple(flags) not in seen:  # one process cannot mix compiled and eager
            seen.add(tuple(flags))
            rows.append((label, flags))
    accelerator = make_accelerator(argparse.Namespace(**{**vars(args), "compile": False}), device)
    trainers = [Trainer(parse_args(common_flags(args) + flags), device, accelerator) for _, flags in rows]
    images, labels, sdt = random_batch(args, device, trainers[0].loss_fn.uses_sdt)

    def one_step(trainer: Trainer) -> None:
        timer = PhaseTimer(device)  # phases are not needed here, only the wall time around the step
        timer.start()
        trainer.step(images, labels, sdt, timer)

    for trainer in trainers:
        for _ in range(args.warmup):
            one_step(trainer)
    times = [[] for _ in rows]
    for r in range(args.compare):
        for k in range(len(rows)):
            index = (k + r) % len(rows)
            synchronize(device)
            start = time.perf_counter()
            one_step(trainers[index])
            synchronize(device)
            times[index].append(time.perf_counter() - start)
    medians = [sorted(t)[len(t) // 2] for t in times]
    fastest = [min(t) for t in times]  # noise from other work only adds time: the minimum is a second estimate
    result = {"rounds": args.compare, "device": describe_device(device),
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "rows": []}
    print(f"\ninterleaved step times, {args.compare} rounds, {result['device']}:")
    for (label, flags), t, median in zip(rows, times, medians):
        result["rows"].append({"label": label, "flags": flags, "median_ms": 1e3 * median,
                               "min_ms": 1e3 * min(t), "max_ms": 1e3 * max(t), "ratio": medians[0] / median,
                               "ratio_of_minima": fastest[0] / min(t)})
        print(f"  {label:<50} median {1e3 * median:8.1f} ms/step (min {1e3 * min(t):.1f}, max {1e3 * max(t):.1f})"
              f"  speed x {medians[0] / median:.2f} (of minima: {fastest[0] / min(t):.2f})")
    return result


def format_matrix(matrix: dict) -> str:
    """Table of all rows and parts, with speed and peak-memory ratios against the first row's model part."""
    rows = matrix["matrix"]
    base = next((r["report"]["parts"][0] for r in rows if "report" in r), None)
    lines = ["", f"{'configuration':<50} {'part':<15} {'img/s':>7} {'ms/step':>8} {'peak GiB':>8} "
                 f"{'saved MiB':>9} {'TFLOP/s':>8} {'1st step s':>10} {'speed x':>7} {'memory x':>8}"]
    for row in rows:
        if "report" not in row:
            lines.append(f"{row['label']:<50} failed ({row['error']})")
            continue
        for part in row["report"]["parts"]:
            saved = part.get("saved_for_backward_mib")
            lines.append(
                f"{row['label']:<50} {part['part']:<15} {part['images_per_s']:7.2f} {part['ms_per_step']:8.1f} "
                f"{part['peak_memory_gib']:8.2f} {'' if saved is None else f'{saved:.0f}':>9} "
                f"{part['tflops_per_s']:8.3f} {part.get('first_step_s', float('nan')):10.1f} "
                f"{part['images_per_s'] / base['images_per_s']:7.2f} "
                f"{part['peak_memory_gib'] / base['peak_memory_gib']:8.2f}")
    if base is not None:
        lines.append(f"(speed x / memory x: against '{rows[0]['label']}', model part, measured in this run)")
    lines += ["", "for comparison (not measured here):"] + [f"  {line}" for line in REFERENCE_FIGURES]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="defaults for the options below (full on cuda, small on cpu); explicit flags win")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, help="untimed steps first (>= 1; the first one is reported alone)")
    parser.add_argument("--variant", default="C", choices=VARIANTS)
    parser.add_argument("--loss", default="", help="a loss recipe instead of --variant, as train.py's --loss "
                        "(e.g. 'ce=1,lovasz=0.5')")
    parser.add_argument("--backbone")
    parser.add_argument("--head-channels", type=int, help="UPerNet width (the study: 512)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="torch.compile the model through accelerate (inductor), on CUDA only (ignored on "
                             "the CPU, as in train.py); the first step reports the compile time")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (train.py's default)")
    parser.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=True,
                        help="losses' fused autograd Function (default) or plain autograd")
    parser.add_argument("--workers", type=int, help="DataLoader workers for the data part")
    parser.add_argument("--host-sync", action="store_true",
                        help="read the loss on the host twice per step, as train.py's finiteness check and "
                             "progress bar did before efb20b8 (measures what those syncs cost; off = no host "
                             "sync in the step, as train.py now)")
    parser.add_argument("--sdt-source", default="gpu,cache",
                        help=f"comma list of {', '.join(SDT_SOURCES)} for the data part (losses with the boundary term)")
    parser.add_argument("--parts", default="model,data", help="comma list of model, data")
    parser.add_argument("--data-root", type=Path, help="an existing Cityscapes-layout root at --height x --width "
                        "(default: generate a synthetic one in a temporary folder)")
    parser.add_argument("--sdt-cache", type=Path, help="an existing SDT cache for --data-root (default: precompute)")
    parser.add_argument("--frames", type=int, default=8, help="distinct synthetic frames to render (the rest "
                        "of the frames the steps need are hard links to them)")
    parser.add_argument("--tmp-dir", help="where the temporary data set goes (default: the system's)")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated data set and SDT cache")
    parser.add_argument("--matrix", action="store_true", help="run the comparison matrix (one process per row)")
    parser.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                        help="time the matrix's eager model-only rows interleaved in one process for ROUNDS rounds "
                             "(speed ratios on a busy machine)")
    parser.add_argument("--flops-only", action="store_true", help="print the FLOP count per image and stop")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset or ("full" if args.device == "cuda" else "small")]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    for source in args.sdt_source.split(","):
        if source not in SDT_SOURCES:
            parser.error(f"--sdt-source: unknown {source!r}, use a comma list of {', '.join(SDT_SOURCES)}")
    for part in args.parts.split(","):
        if part not in ("model", "data"):
            parser.error(f"--parts: unknown {part!r}, use a comma list of model, data")
    if min(args.steps, args.warmup, args.batch_size) < 1:
        parser.error("--steps, --warmup and --batch-size must be >= 1")
    try:
        validate(train_config(args))  # the loss recipe, as train.py checks it
    except UserError as e:
        parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import datasets

    datasets.disable_progress_bars()  # the file-list builder's bar would interleave with the results
    if args.matrix or args.compare:
        result = {}
        if args.matrix:
            result = run_matrix(args)
            print(format_matrix(result))
        if args.compare:
            result["compare"] = run_compare(args)
    else:
        result = run_single(args)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
