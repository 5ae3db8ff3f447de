"""Training speed and memory of the step train.py runs, on the configuration train.py's flags give.

    python bench/bench_train.py                                  # train.py's defaults: the paper's recipe, full size
    python bench/bench_train.py --preset demo                    # the demo's step on its data (CPU-sized)
    python bench/bench_train.py --configs all --json bench.json  # the comparison matrix (below)
    python bench/bench_train.py --flops-only                     # FLOPs per training image (meta device, no GPU)

Options: every train.py flag (`engine.config`: the same fields, names, presets and defaults) plus the benchmark's
own group (--steps, --warmup, --parts, --frames, --configs, --rounds, --guard-ratio, --flops-only, --json). The step is
train.py's: its Accelerator (`engine.setup.build_accelerator`: precision, accumulation, compile on CUDA,
non-blocking copies), `engine.setup.configure_torch`, `engine.setup.build_training` (loader, model, losses, fused
AdamW, the non-finite guard, `prepare`), the LR of `engine.schedule.get_lr`, and per micro-batch
`engine.steps.device_batch` (augmentation and SDT on the device) and `train.train_micro_step` (forward, loss,
backward, the optimizer step every --grad-accum micro-batches); tests/test_bench.py checks that its weights after
an epoch are train.py's. W&B is off, the backbone starts from random weights (the same speed), and the loss log
is read once per part (train.py reads it every 20 micro-steps). `--max-nonfinite 1` (the `guard` row of
--configs) turns the non-finite guard on, as in train.py; at train.py's default 0 it is off. `--guard-ratio`
times the step with the guard off and on in one process, micro-steps alternated: the ratio of two medians,
robust to a busy machine where separate processes are not.

Two parts, each --warmup micro-steps (the first one timed alone: compile, autotuning) then --steps timed ones:
  step    the loader's first batch, kept on the device and fed again each micro-step: no data wait;
  loader  the prepared DataLoader (workers, pinned memory) feeding the same step, as in train.py's epoch.
Data: the config's (--data-root or $CITYSCAPES_DATASET, --hf-dataset, --preset demo's data), else a synthetic
Cityscapes-layout train split at --crop-size (default: Cityscapes' 1024x2048) in a temporary folder: --frames
rendered frames, hard-linked under new names up to what the loader part needs.

Per part: images/s, ms per micro-step split into data wait / augment+SDT / step (CUDA events read once at the
end, so the step gains no host sync; perf_counter on the CPU), peak memory (max_memory_allocated on CUDA, the
main process's peak RSS on the CPU), MiB autograd saves for backward (eager step part), the model's FLOPs per
training image (`count_train_flops`) and the achieved TFLOP/s (recomputation under checkpointing not counted).

--configs NAMES (a comma list of CONFIGS, or all) runs each configuration in its own process (clean peak
memory, one compile each), its train.py flags added to the others given, and prints speed and memory ratios
against the first; --rounds R runs the list R times in turn and keeps each row's medians (on a busy CPU, drift
then hits every row alike).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from engine.config import TrainConfig, config_from_flags, config_to_dict  # noqa: E402
from engine.config import build_parser as build_train_parser  # noqa: E402
from engine.schedule import get_lr  # noqa: E402
from engine.setup import (build_accelerator, build_model_from_config, build_training, configure_torch,  # noqa: E402
                          ensure_demo_data, train_frame_size, uses_sdt)
from engine.steps import augmentation_seed, device_batch  # noqa: E402
from train import train_micro_step  # noqa: E402
from utils.fileio import UserError, atomic_write_json  # noqa: E402

CITYSCAPES_TRAIN_IMAGES = 2975  # one epoch of the study
CITYSCAPES_SIZE = (1024, 2048)
PHASES = ("data", "augment_sdt", "step")
PARTS = ("step", "loader")
# --configs: train.py flags added to the ones given; each name one row of the comparison.
CONFIGS = {
    "eager-nchw": ["--no-compile", "--no-channels-last"],     # the plain baseline
    "eager": ["--no-compile"],                                 # + channels_last
    "eager-checkpointing": ["--no-compile", "--grad-checkpointing"],
    "default": [],                                             # train.py's defaults: + compile on CUDA
    "sdt-workers": ["--sdt-source", "cpu"],                    # the SDT in the loader workers, not on the device
    "guard": ["--max-nonfinite", "1"],                         # the non-finite guard on (train.py: off at 0)
}
BENCH_FLAGS = ("steps", "warmup", "parts", "frames", "configs", "rounds", "guard_ratio", "flops_only", "json")


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
    """Consecutive phases of each micro-step, without host syncs.

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
        """Mean milliseconds per micro-step of each phase."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for marks in self.steps:
            for (_, a), (phase, b) in zip(marks, marks[1:]):
                totals[phase] = totals.get(phase, 0.0) + (a.elapsed_time(b) if self.cuda else (b - a) * 1e3)
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
def names_no_data(cfg: TrainConfig) -> bool:
    """Whether the config names no dataset (then the benchmark makes a synthetic one)."""
    return not (cfg.demo_data or cfg.data_root or cfg.hf_dataset or os.environ.get("CITYSCAPES_DATASET"))


def synthetic_size(cfg: TrainConfig) -> tuple[int, int]:
    """(H, W) of the synthetic frames: --crop-size, else Cityscapes' size."""
    return tuple(cfg.crop_size) if min(cfg.crop_size) > 0 else CITYSCAPES_SIZE


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


def with_data(cfg: TrainConfig, opts, workdir: Path) -> TrainConfig:
    """`cfg` with its training frames in place: the demo data generated as train.py does, or a synthetic
    train split at --crop-size (Cityscapes' size without one) when the config names no dataset."""
    if cfg.demo_data:
        ensure_demo_data(cfg)
    if not names_no_data(cfg):
        return cfg
    frames_needed = cfg.batch_size * (opts.warmup + opts.steps)  # one epoch covers both parts' micro-steps
    root = prepare_dataset(workdir / "data", *synthetic_size(cfg), frames_needed, opts.frames)
    return dataclasses.replace(cfg, data_root=str(root))


# ----------------------------------------------------------------------------------------------- one run
def build_run(cfg: TrainConfig) -> SimpleNamespace:
    """What train.py builds before its loop: its Accelerator, seeds and `engine.setup.build_training` (no val
    loader, random init); `micro_step(batch, timer)` is its loop body (`engine.steps.device_batch`, the LR,
    `train.train_micro_step`). `cfg` must name existing data (`with_data`)."""
    accelerator = build_accelerator(cfg)
    configure_torch(cfg)
    training = build_training(cfg, accelerator, load_pretrained=False, val=False)  # the same speed as pretrained
    run = SimpleNamespace(cfg=cfg, accelerator=accelerator, state=training.step, model=training.step.model,
                          loader=training.train_loader, total_steps=training.total_steps, optimizer_step=0,
                          micro_steps=0)
    run.model.train()

    def micro_step(batch: dict, timer: PhaseTimer) -> None:
        state = run.state
        seed = augmentation_seed(cfg.seed, accelerator.process_index, run.micro_steps)
        images, labels, sdt = device_batch(batch, state.augment, seed, state.sdt_classes, cfg.channels_last)
        timer.mark("augment_sdt")
        lr = get_lr(run.optimizer_step, run.total_steps, cfg.lr, cfg.poly_power, cfg.min_lr, cfg.warmup_steps)
        measure = bool(cfg.log_grad_norms) and run.optimizer_step % cfg.log_grad_norms == 0  # as train.py
        train_micro_step(state, images, labels, sdt, lr=lr, where=run.micro_steps, grad_stats=measure)
        run.optimizer_step += int(accelerator.sync_gradients)
        run.micro_steps += 1
        timer.mark("step")

    run.micro_step = micro_step
    return run


def loader_batches(run: SimpleNamespace):
    """The prepared loader's batches, epoch after epoch (set_epoch as train.py does)."""
    for epoch in range(10**9):
        run.loader.set_epoch(epoch)
        run.loader.dataset.set_epoch(epoch)
        yield from run.loader


def time_part(run: SimpleNamespace, part: str, opts) -> dict:
    """--warmup then --steps micro-steps of `part` (step: the first batch again and again; loader: the loader)."""
    device = run.accelerator.device
    from_loader = loader_batches(run)
    if part == "step":
        first = next(from_loader)
        from_loader.close()
    batches = itertools.repeat(first) if part == "step" else from_loader
    loss_log = run.state.new_epoch()  # read once, at the end
    record: dict = {"part": part}
    for i in range(opts.warmup):
        start, timer = time.perf_counter(), PhaseTimer(device)
        timer.start()
        run.micro_step(next(batches), timer)
        synchronize(device)
        if i == 0:
            record["first_step_s"] = time.perf_counter() - start
    reset_peak_memory(device)
    timer = PhaseTimer(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(opts.steps):
        timer.start()
        batch = next(batches)
        timer.mark("data")
        run.micro_step(batch, timer)
    synchronize(device)
    wall = time.perf_counter() - start
    from_loader.close()  # ends the loader's iterator
    reading = loss_log.read()  # the one host read of the losses (warm-up and timed micro-steps)
    images_per_s = run.cfg.batch_size * run.accelerator.num_processes * opts.steps / wall
    record.update({"images_per_s": images_per_s, "ms_per_step": 1e3 * wall / opts.steps,
                   "phase_ms": timer.mean_ms(), "peak_memory_gib": peak_memory_gib(device),
                   "epoch_s": CITYSCAPES_TRAIN_IMAGES / images_per_s, "mean_loss": reading.means["loss"],
                   "loss_finite": reading.num_bad == 0})
    if part == "step" and not (run.cfg.compile and device.type == "cuda"):  # the hooks see eager tensors
        record["saved_for_backward_mib"] = measure_saved(run, first)
    return record


def measure_saved(run: SimpleNamespace, batch: dict) -> float:
    """saved_for_backward_mib of one extra (untimed) eager micro-step on `batch` (it updates the weights too)."""
    timer = PhaseTimer(run.accelerator.device)
    timer.start()
    return saved_for_backward_mib(lambda: run.micro_step(batch, timer), run.accelerator.unwrap_model(run.model))


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {cpu})"


def run_single(cfg: TrainConfig, opts) -> dict:
    """Every part of --parts for one configuration; returns the JSON-able record."""
    workdir = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        if opts.flops_only and names_no_data(cfg):
            size = synthetic_size(cfg)  # without making the frames
        else:
            cfg = with_data(cfg, opts, workdir)
            size = train_frame_size(cfg)
        report = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "size": list(size),
                  "config": config_to_dict(cfg),
                  "flops_per_image": model_flops_per_image(cfg, *size), "parts": []}
        if opts.flops_only:
            print(header(cfg, opts, report))
            return report
        run = build_run(cfg)
        report["device"] = describe_device(run.accelerator.device)
        print(header(cfg, opts, report))
        for part in opts.parts.split(","):
            record = time_part(run, part, opts)
            record["tflops_per_s"] = report["flops_per_image"]["train"] * record["images_per_s"] / 1e12
            report["parts"].append(record)
            print(format_part(record))
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def header(cfg: TrainConfig, opts, report: dict) -> str:
    flops, (height, width) = report["flops_per_image"], report["size"]
    compiled = cfg.compile and torch.cuda.is_available()  # build_accelerator ignores compile on the CPU
    switches = [name for name, on in (("compile", compiled), ("channels_last", cfg.channels_last),
                                      ("grad checkpointing", cfg.grad_checkpointing)) if on]
    return (f"bench_train {report['date']}: {cfg.backbone} + {cfg.head}({cfg.head_channels}), loss {cfg.loss_label}, "
            f"batch {cfg.batch_size} x accum {cfg.grad_accum} at {height}x{width}, {report.get('device', '-')}, "
            f"torch {report['torch']}, precision {cfg.mixed_precision}, {', '.join(switches) or 'eager, NCHW'}; "
            f"{cfg.num_workers} workers, SDT {cfg.sdt_source if uses_sdt(cfg) else 'not needed'}, augment "
            f"{cfg.augment}; {opts.warmup} warm-up + {opts.steps} timed micro-steps\n"
            f"model FLOPs per training image: {flops['forward'] / 1e12:.4g} TFLOP forward, "
            f"{flops['train'] / 1e12:.4g} TFLOP forward+backward (uncorrected torch counter: "
            f"{flops['train_uncorrected_counter'] / 1e12:.4g})")


def format_part(r: dict) -> str:
    phases = "  ".join(f"{k} {r['phase_ms'][k]:.1f}" for k in PHASES)
    line = (f"  {r['part']:<7} {r['images_per_s']:8.2f} img/s  {r['ms_per_step']:8.1f} ms/step ({phases})  "
            f"peak {r['peak_memory_gib']:.2f} GiB  {r['tflops_per_s']:.4g} TFLOP/s  epoch {r['epoch_s']:.0f} s  "
            f"first step {r['first_step_s']:.1f} s")
    if "saved_for_backward_mib" in r:
        line += f"  saved for backward {r['saved_for_backward_mib']:.0f} MiB"
    return line + ("" if r["loss_finite"] else "  NON-FINITE LOSS")


# ----------------------------------------------------------------------------------------------- guard
def compare_guard(cfg: TrainConfig, opts) -> dict:
    """--guard-ratio: the step with the non-finite guard off (--max-nonfinite 0, train.py's default) and on (1),
    both built here side by side from the same seed, fed the same batch with the same dropout draws, their
    micro-steps alternated (the order swapped each time, so drift on a busy machine hits both alike); the
    median ms of each over --steps after --warmup, the median of the --steps ratios on/off of the two
    micro-steps run back to back, and whether the two models' weights are still bit-identical (they must be on
    finite data: the guard only undoes non-finite micro-batches)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench_guard_"))
    try:
        cfg = with_data(cfg, opts, workdir)
        runs = {name: build_run(dataclasses.replace(cfg, max_nonfinite=k)) for name, k in (("off", 0), ("on", 1))}
        device = runs["off"].accelerator.device
        batches = loader_batches(runs["off"])
        batch = next(batches)
        batches.close()
        times: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(opts.warmup + opts.steps):
            for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                torch.manual_seed(cfg.seed + i)  # the same dropout draws for both at micro-step i
                timer = PhaseTimer(device)
                timer.start()
                synchronize(device)
                start = time.perf_counter()
                runs[name].micro_step(batch, timer)
                synchronize(device)
                if i >= opts.warmup:
                    times[name].append(1e3 * (time.perf_counter() - start))
        weights = [run.accelerator.unwrap_model(run.model).state_dict() for run in runs.values()]
        report = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                  "device": describe_device(device), "config": config_to_dict(cfg),
                  "ms_per_step": {name: median(t) for name, t in times.items()}, "ms": times,
                  "ratio_on_off": median(on / off for on, off in zip(times["on"], times["off"])),
                  "identical_weights": all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])}
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def format_guard(report: dict) -> str:
    ms = report["ms_per_step"]
    return (f"non-finite guard, {report['device']}: off (--max-nonfinite 0) {ms['off']:.1f} ms/micro-step, on "
            f"(--max-nonfinite 1) {ms['on']:.1f} ms/micro-step (medians); on/off = {report['ratio_on_off']:.3f} "
            f"(median of {len(report['ms']['on'])} back-to-back pairs); "
            f"weights {'bit-identical' if report['identical_weights'] else 'DIFFER'}")


# ----------------------------------------------------------------------------------------------- matrix
def run_configs(cfg: TrainConfig, opts, argv: list[str]) -> dict:
    """Each --configs row in its own process, --rounds times in turn, on data prepared once here."""
    names = list(CONFIGS) if opts.configs == "all" else opts.configs.split(",")
    common = [token for i, token in enumerate(argv) if not _bench_only(argv, i)]
    workdir = Path(tempfile.mkdtemp(prefix="bench_configs_"))
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        data = with_data(cfg, opts, workdir)
        common += ["--data-root", data.data_root] if data.data_root != cfg.data_root else []
        for round_index in range(opts.rounds):
            for name in names:
                out = workdir / f"{name}.{round_index}.json"
                command = [sys.executable, str(Path(__file__).resolve()), *common, *CONFIGS[name], "--json", str(out)]
                print(f"\n== {name} (round {round_index + 1}/{opts.rounds}): {' '.join(CONFIGS[name]) or '-'}",
                      flush=True)
                code = subprocess.run(command).returncode
                runs[name].append(json.loads(out.read_text()) if code == 0 and out.exists() else
                                  {"error": f"exit status {code}"})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"configs": [{"name": name, "flags": CONFIGS[name], "runs": runs[name], "parts": medians(runs[name])}
                        for name in names]}


def _bench_only(argv: list[str], i: int) -> bool:
    """Whether argv[i] is --configs/--rounds/--json or the value after one (rows get their own)."""
    flags = ("--configs", "--rounds", "--json")
    return argv[i].split("=")[0] in flags or (i > 0 and argv[i - 1] in flags)


def medians(runs: list[dict]) -> list[dict]:
    """Per part over the rounds that ran: median img/s and ms/step, the highest peak, the first saved MiB."""
    done = [r for r in runs if "parts" in r]
    rows = []
    for k, part in enumerate(done[0]["parts"] if done else []):
        records = [r["parts"][k] for r in done]
        row = {key: median(p[key] for p in records) for key in ("images_per_s", "ms_per_step", "tflops_per_s")}
        rows.append({"part": part["part"], **row, "peak_memory_gib": max(p["peak_memory_gib"] for p in records),
                     "saved_for_backward_mib": part.get("saved_for_backward_mib"),
                     "first_step_s": part["first_step_s"]})
    return rows


def format_configs(result: dict) -> str:
    """The rows and parts, with speed and peak-memory ratios against the first row's same part."""
    rows = result["configs"]
    base = {p["part"]: p for p in rows[0]["parts"]}
    lines = ["", f"{'configuration':<20} {'part':<7} {'img/s':>8} {'ms/step':>8} {'peak GiB':>8} {'saved MiB':>9} "
                 f"{'TFLOP/s':>8} {'1st step s':>10} {'speed x':>7} {'memory x':>8}"]
    for row in rows:
        if not row["parts"]:
            lines.append(f"{row['name']:<20} failed ({row['runs'][0].get('error')})")
        for p in row["parts"]:
            saved, ref = p["saved_for_backward_mib"], base.get(p["part"])
            speed, memory = (p["images_per_s"] / ref["images_per_s"], p["peak_memory_gib"] / ref["peak_memory_gib"]) \
                if ref else (math.nan, math.nan)
            lines.append(f"{row['name']:<20} {p['part']:<7} {p['images_per_s']:8.2f} {p['ms_per_step']:8.1f} "
                         f"{p['peak_memory_gib']:8.2f} {'' if saved is None else f'{saved:.0f}':>9} "
                         f"{p['tflops_per_s']:8.3f} {p['first_step_s']:10.1f} {speed:7.2f} {memory:8.2f}")
    lines.append(f"(speed x / memory x: against '{rows[0]['name']}', same part, measured in this run)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """train.py's parser (engine.config: every TrainConfig field, --preset) plus the benchmark's own flags."""
    parser = build_train_parser()
    parser.description = __doc__.split("\n")[0]
    parser.allow_abbrev = False  # exact names: --warmup is the benchmark's, --warmup-steps train.py's
    bench = parser.add_argument_group("benchmark (the other flags are train.py's)")
    bench.add_argument("--steps", type=int, default=12, help="timed micro-steps per part (a multiple of "
                       "--grad-accum times whole optimizer steps)")
    bench.add_argument("--warmup", type=int, default=4, help="untimed micro-steps first (the first is reported alone)")
    bench.add_argument("--parts", default="step,loader", help=f"comma list of {', '.join(PARTS)}")
    bench.add_argument("--frames", type=int, default=8, help="distinct synthetic frames rendered (the rest of the "
                       "frames the loader part needs are hard links to them)")
    bench.add_argument("--configs", default=None, help=f"comma list of {', '.join(CONFIGS)}, or all: one process "
                       "per configuration, with speed and memory ratios against the first")
    bench.add_argument("--rounds", type=int, default=1, help="with --configs: run the list this many times in turn")
    bench.add_argument("--guard-ratio", action="store_true", default=False, help="time the step with the non-finite "
                       "guard off (--max-nonfinite 0) and on (1) in this process, alternating, and print the ratio")
    bench.add_argument("--flops-only", action="store_true", default=False, help="print the FLOPs per image and stop")
    bench.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """(train.py's config for these flags, with W&B off; the benchmark's options)."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    opts = argparse.Namespace(**{k: given.pop(k) for k in BENCH_FLAGS})
    for names, known, flag in ((opts.parts, PARTS, "--parts"), (opts.configs or "all", (*CONFIGS, "all"), "--configs")):
        unknown = [n for n in names.split(",") if n not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; use a comma list of {', '.join(known)}")
    if min(opts.steps, opts.warmup, opts.rounds, opts.frames) < 1:
        parser.error("--steps, --warmup, --rounds and --frames must be >= 1")
    try:
        cfg, _ = config_from_flags(given)  # as train.py resolves and checks them
    except UserError as e:
        parser.error(str(e))
    return dataclasses.replace(cfg, wandb=False), opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, opts = parse_args(argv)
    import datasets

    datasets.disable_progress_bars()  # the file-list builder's bar would interleave with the results
    if opts.guard_ratio:
        result = compare_guard(cfg, opts)
        print(format_guard(result))
    elif opts.configs:
        result = run_configs(cfg, opts, argv)
        print(format_configs(result))
    else:
        result = run_single(cfg, opts)
    if opts.json:
        atomic_write_json(opts.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
