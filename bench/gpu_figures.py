"""The GPU figures of bench/gpu_check.sh that are not a training step: GPU work first, one line per figure at once.

    python bench/gpu_figures.py sdt --data DIR        # compute_sdt_torch per 19-class label, then CPU compute_sdt
    python bench/gpu_figures.py metrics --data DIR    # segmentation_image_stats img/s, both profiles, C = 19
    python bench/gpu_figures.py evaluate --data DIR   # evaluate_model img/s: loader, forward (bf16) and metrics

Each figure is printed as one line `FIGURE <name>: <value> <unit> (<card>) ...` as soon as it is measured (a
timeout later in the step keeps it). Without CUDA each command does its CPU-side setup (imports, reading the
frames, building the model), prints "no CUDA" and exits 3: what tests/test_gpu_check.py times against the step's
limit. The CPU references of these figures have their own benchmarks (bench_sdt.py, bench_metrics.py); the one
CPU figure here is compute_sdt on the same labels, after the GPU's, as the issue asks for the ratio in one run.
--data: a Cityscapes-layout root with gtFine/val label maps (sdt, metrics) and leftImg8bit/train images
(evaluate: its train split, evaluated; the shared full-resolution frames have no val images).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from utils import run_main  # noqa: E402  (first: sets OpenMP's wait policy before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_metrics import DEFAULT_ROOT, NUM_CLASSES, load_pairs  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402

NO_CUDA = 3  # exit status without CUDA, after the CPU-side setup


def figure(name: str, value: float, unit: str, note: str = "") -> None:
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"FIGURE {name}: {value:.4g} {unit} ({card}){' ' + note if note else ''}", flush=True)


def cuda_seconds(fn, repeats: int) -> float:
    """Median seconds of fn() on the GPU (synchronised), after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def sdt_figures(args) -> int:
    from data_utils.sdt import compute_sdt, compute_sdt_torch

    labels = [target.astype(np.uint8) for _, target in load_pairs(args.data, args.images)]
    if not torch.cuda.is_available():
        return NO_CUDA
    import data_utils.sdt as sdt_module

    batches = [torch.from_numpy(label)[None].cuda() for label in labels]
    first = time.perf_counter()
    gpu_maps = [compute_sdt_torch(b, NUM_CLASSES, validate=False) for b in batches]  # self-check + Triton compile
    torch.cuda.synchronize()
    path = "torch (Triton unavailable)" if sdt_module._triton_error else "Triton"
    seconds = cuda_seconds(lambda: [compute_sdt_torch(b, NUM_CLASSES, validate=False) for b in batches],
                           args.repeats) / len(labels)
    figure("sdt_gpu_ms_per_label", 1e3 * seconds, "ms per 19-class 1024x2048 label",
           f"[{path}; first call with the self-check and compile {time.perf_counter() - first:.1f} s]")
    start = time.perf_counter()
    cpu_maps = [compute_sdt(label, NUM_CLASSES) for label in labels]
    cpu_s = (time.perf_counter() - start) / len(labels)
    same = all(np.array_equal(g[0].cpu().numpy(), c) for g, c in zip(gpu_maps, cpu_maps))
    figure("sdt_cpu_ms_per_label", 1e3 * cpu_s, "ms per label, CPU compute_sdt on this host, same labels",
           f"[GPU {cpu_s / seconds:.1f}x faster; maps equal: {same}]")
    return 0


def metrics_figures(args) -> int:
    from metrics.segmentation import segmentation_image_stats

    pairs = load_pairs(args.data, args.images)
    if not torch.cuda.is_available():
        return NO_CUDA
    preds = torch.stack([torch.as_tensor(p) for p, _ in pairs]).cuda()
    targets = torch.stack([torch.as_tensor(t) for _, t in pairs]).cuda()
    for profile in ("default", "study"):
        seconds = cuda_seconds(lambda: segmentation_image_stats(preds, targets, NUM_CLASSES, parts=(profile,)),
                               args.repeats)
        figure(f"metrics_gpu_{profile}_img_per_s", len(pairs) / seconds, "img/s",
               f"[{profile} profile, C = 19, batch {len(pairs)} of 1024x2048]")
    return 0


def evaluate_figures(args) -> int:
    from accelerate import Accelerator

    from engine.config import parse_args
    from engine.evaluation import evaluate_model
    from engine.setup import build_dataloader, build_model_from_config

    cfg, _ = parse_args(["--data-root", str(args.data), "--no-wandb", "--batch-size", str(args.batch_size)])
    loader = build_dataloader(cfg, "train", train=False)  # the train frames, in the evaluation setting
    model = build_model_from_config(cfg)
    if not torch.cuda.is_available():
        return NO_CUDA
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)  # as evaluate.py: bf16, eager
    model = accelerator.prepare_model(model, evaluation_mode=True)
    evaluate_model(model, loader, accelerator, show_progress=False)  # warm-up: cuDNN autotuning, workers
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = evaluate_model(model, loader, accelerator, show_progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    figure("evaluate_img_per_s", result["num_images"] / seconds, "img/s",
           f"[evaluate_model: loader ({cfg.num_workers} workers), {cfg.backbone} forward in {cfg.mixed_precision}, "
           f"metrics; {result['num_images']} frames at 1024x2048, batch {args.batch_size}; "
           f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB]")
    return 0


COMMANDS = {"sdt": sdt_figures, "metrics": metrics_figures, "evaluate": evaluate_figures}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="Cityscapes-layout root (see above)")
    parser.add_argument("--images", type=int, default=4, help="label maps (sdt, metrics)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, median (sdt, metrics)")
    parser.add_argument("--batch-size", type=int, default=2, help="evaluation batch size (evaluate)")
    args = parser.parse_args(argv)
    code = COMMANDS[args.command](args)
    if code == NO_CUDA:
        print(f"no CUDA: {args.command} stopped after its CPU-side setup", flush=True)
    return code


if __name__ == "__main__":
    run_main(main)
