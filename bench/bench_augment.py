"""Speed of the photometric augmentation (BatchAugment) on 1024x2048 frames, against torchvision.

Ours: `BatchAugment` on an (N, 3, 1024, 2048) uint8 batch: jitter as one composed 3x3 colour map per image,
separable blur, normalisation. Reference, on the same device and the same images: torchvision.transforms.v2
ColorJitter(0.25, 0.25, 0.25, 0.05) + RandomApply(GaussianBlur(17, (0.1, 2.0)), p=0.5) + Normalize applied
per image, the usual way of writing this pipeline. The issue's bar is >= 10 images/s at 1024x2048 on a GPU.

    python bench/bench_augment.py                  # CPU with one thread (a DataLoader worker's budget)
    python bench/bench_augment.py --device cuda --batch 8
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from data_utils.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes_fullres"


def load_images(root: Path, n: int) -> torch.Tensor:
    """(n, 3, 1024, 2048) uint8: real frames when present, else random pixels of that size."""
    paths = sorted((root / "leftImg8bit").glob("*/*/*_leftImg8bit.png"))
    if not paths:
        print(f"note: no frames under {root}; using random 1024x2048 images")
        return torch.randint(0, 256, (n, 3, 1024, 2048), dtype=torch.uint8)
    frames = [np.array(Image.open(paths[i % len(paths)]).convert("RGB")) for i in range(n)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Mean wall time of fn(seed) over seeds 0..repeats-1 (after one warm-up), in seconds.

    The mean over seeds, not the best call: with blur_prob=0.5 the best call would be one that blurs nothing.
    """
    fn(10**6)  # warm-up (allocations, kernels) with a seed outside the timed ones
    total = 0.0
    for seed in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        total += time.perf_counter() - start
    return total / repeats


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6, help="timed calls (seeds 0..repeats-1), averaged")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a DataLoader worker has one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torchvision.transforms import v2

    device = torch.device(args.device)
    images = load_images(args.data, args.batch).to(device)
    ours = BatchAugment(blur_prob=0.5)
    reference = v2.Compose([
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.05),
        v2.RandomApply([v2.GaussianBlur(kernel_size=17, sigma=(0.1, 2.0))], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    # Blur on every image for the worst case of ours too (p=0.5 halves the blur cost on average).
    ours_all_blur = BatchAugment(blur_prob=1.0)
    torch.manual_seed(0)  # torchvision draws from the global generator
    t_ours = timed(lambda seed: ours(images, seed=seed), device, args.repeats)
    t_ours_blur = timed(lambda seed: ours_all_blur(images, seed=seed), device, args.repeats)
    t_ref = timed(lambda seed: torch.stack([reference(img) for img in images]), device, args.repeats)
    n = args.batch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"device: {name}; batch {n} x 3 x {images.shape[2]} x {images.shape[3]} uint8")
    print(f"BatchAugment (blur p=0.5)        {n / t_ours:8.2f} img/s  ({1000 * t_ours / n:7.1f} ms/img)")
    print(f"BatchAugment (blur on every img) {n / t_ours_blur:8.2f} img/s  ({1000 * t_ours_blur / n:7.1f} ms/img)")
    print(f"torchvision v2 per image         {n / t_ref:8.2f} img/s  ({1000 * t_ref / n:7.1f} ms/img)")
    print(f"ratio torchvision / ours (p=0.5): {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
