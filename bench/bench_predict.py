"""predict.py's inference modes, timed as ratios to whole-image inference in one run (engine/inference.py).

The model is the demo preset's (convnextv2_atto + UPerNet(128)) or, with --backbone/--head-channels, another
one, random init (speed does not depend on the weights). --images random images of --height x --width go
through `engine.inference.predict`, `--batch` at a time, under each mode: whole; slide (--crop at --stride);
flip + 3 scales (0.75, 1, 1.25: 6 passes); the modes interleaved per repeat, the best repeat reported. On CUDA
also the peak memory per mode (BF16 autocast as predict.py runs).

    taskset -c 1 env OMP_NUM_THREADS=1 python bench/bench_predict.py --images 10         # CPU row of BENCHMARKS.md
    python bench/bench_predict.py --device cuda --backbone convnextv2_base --head-channels 512 --images 20
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.config import DEMO_PRESET, TrainConfig  # noqa: E402
from engine.inference import Inference, predict  # noqa: E402
from engine.setup import build_model_from_config  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def modes(crop: tuple[int, int], stride: tuple[int, int]) -> dict[str, Inference]:
    return {"whole": Inference(),
            f"slide {crop[0]}x{crop[1]} / {stride[0]}x{stride[1]}": Inference(mode="slide", crop=crop, stride=stride),
            "flip + scales 0.75,1,1.25": Inference(flip=True, scales=(0.75, 1.0, 1.25))}


NO_CUDA = 3  # exit status without CUDA, after the CPU-side set-up (as bench/gpu_figures.py)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default=DEMO_PRESET["backbone"])
    parser.add_argument("--head-channels", type=int, default=DEMO_PRESET["head_channels"])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--crop", type=int, nargs=2, default=(512, 1024))
    parser.add_argument("--stride", type=int, nargs=2, default=(341, 683))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = dataclasses.replace(TrainConfig(), **{**DEMO_PRESET, "backbone": args.backbone,
                                                "head_channels": args.head_channels})
    model = build_model_from_config(cfg).eval()
    if device.type == "cuda" and not torch.cuda.is_available():  # the set-up only: what tests/test_gpu_check.py times
        print("no CUDA device: set-up done, nothing timed")
        return NO_CUDA
    model = model.to(device)
    images = torch.randint(0, 256, (args.batch, 3, args.height, args.width), dtype=torch.uint8, device=device)
    batches = -(-args.images // args.batch)
    seconds = {name: [] for name in modes(tuple(args.crop), tuple(args.stride))}
    peak = {}
    with torch.inference_mode():
        predict(model, images[:1, :, :64, :128])  # warm-up
        for _ in range(args.repeats):
            for name, inference in modes(tuple(args.crop), tuple(args.stride)).items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                for _ in range(batches):
                    predict(model, images, inference=inference).cpu()
                seconds[name].append(time.perf_counter() - start)
                if device.type == "cuda":
                    peak[name] = torch.cuda.max_memory_allocated() / 2**30
    whole = min(seconds["whole"])
    print(f"{args.backbone} + UPerNet({args.head_channels}), {batches * args.batch} images {args.height}x{args.width}, "
          f"batch {args.batch}, {device}, torch threads {torch.get_num_threads()}")
    print(f"{'mode':<34} {'s':>8} {'img/s':>8} {'x whole':>8}" + (f" {'peak GiB':>9}" if peak else ""))
    for name, values in seconds.items():
        best = min(values)
        line = f"{name:<34} {best:8.2f} {batches * args.batch / best:8.2f} {best / whole:8.2f}"
        print(line + (f" {peak[name]:9.2f}" if peak else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
