"""Speed of SegmentationMetrics.update on real 1024x2048 Cityscapes label maps, against a scipy reference.

The reference is the usual CPU formulation (what the original study ran): per image, per present class,
scipy.ndimage binary erosion/dilation for Boundary F1, a dilated 4-neighbour contour for the trimap band, and
np.bincount confusion matrices. Both run in this process on the same maps; the script checks that they agree
and prints images/s for each and the ratio. A CUDA section runs when a GPU is present.

Predictions are synthetic but realistic: the label shifted by a few pixels, ignore pixels filled with road, and
random rectangles overwritten with other classes (new contours, absent classes, big errors).

    python bench/bench_metrics.py                      # CPU, one thread (the issue's setting)
    python bench/bench_metrics.py --ref-images 2 --cuda-batch 8
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from data_utils.labels import IGNORE_INDEX, NUM_CLASSES, label_ids_to_train_ids  # noqa: E402
from metrics import SegmentationMetrics  # noqa: E402
from metrics.per_image import boundary_f1_per_class  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes_fullres"


def load_pairs(root: Path, limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pred, target) int64 (1024, 2048) pairs from the val labelIds, predictions perturbed reproducibly."""
    paths = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[:limit]
    if not paths:
        raise SystemExit(f"error: no *_gtFine_labelIds.png under {root}/gtFine/val; pass --data DIR")
    rng = np.random.default_rng(0)
    pairs = []
    for path in paths:
        target = label_ids_to_train_ids(np.array(Image.open(path)), str(path)).astype(np.int64)
        pred = np.where(target == IGNORE_INDEX, 0, target)
        pred = np.roll(pred, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
        h, w = pred.shape
        for _ in range(30):
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
            pred[y:y + rng.integers(8, 120), x:x + rng.integers(8, 160)] = rng.integers(0, NUM_CLASSES)
        pairs.append((pred, target))
    return pairs


def reference_counts(pred: np.ndarray, target: np.ndarray, r: int = 3, C: int = NUM_CLASSES):
    """scipy/numpy per-image counts: confusion (C, C+1), trimap confusion (C, C+1), boundary F1 of the image."""
    valid = target != IGNORE_INDEX
    pred_cls = np.where((pred >= 0) & (pred < C), pred, C)
    confusion = np.bincount(target[valid] * (C + 1) + pred_cls[valid], minlength=C * (C + 1)).reshape(C, C + 1)

    # Trimap band: valid-valid 4-neighbour transitions, dilated by a (2r+1)^2 square.
    contour = np.zeros_like(valid)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        edge = valid[tuple(a)] & valid[tuple(b)] & (target[tuple(a)] != target[tuple(b)])
        contour[tuple(a)] |= edge
        contour[tuple(b)] |= edge
    square = np.ones((2 * r + 1, 2 * r + 1), bool)
    band = ndimage.binary_dilation(contour, square) & valid
    trimap = np.bincount(target[band] * (C + 1) + pred_cls[band], minlength=C * (C + 1)).reshape(C, C + 1)

    scores = []
    three = np.ones((3, 3), bool)
    for c in np.unique(target[valid]):
        gt, pr = target == c, (pred == c) & valid
        bg = gt & ~ndimage.binary_erosion(gt, three, border_value=1)
        bp = pr & ~ndimage.binary_erosion(pr, three, border_value=1)
        counts = np.array([(bp & ndimage.binary_dilation(bg, square)).sum(), bp.sum(),
                           (bg & ndimage.binary_dilation(bp, square)).sum(), bg.sum()])
        scores.append(float(boundary_f1_per_class(torch.as_tensor(counts)[None])[0]))
    return confusion, trimap, float(np.mean(scores)) if scores else None


def time_ours(pairs, device: str, batch: int, repeats: int) -> tuple[float, SegmentationMetrics]:
    preds = torch.as_tensor(np.stack([p for p, _ in pairs])).to(device)
    targets = torch.as_tensor(np.stack([t for _, t in pairs])).to(device)
    metric = SegmentationMetrics()
    metric.update(preds[:batch], targets[:batch])  # warm-up (allocator, CUDA kernels)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        metric.reset()
        sync()
        start = time.perf_counter()
        for i in range(0, len(pairs), batch):
            metric.update(preds[i:i + batch], targets[i:i + batch])
        sync()
        best = min(best, time.perf_counter() - start)
    return len(pairs) / best, metric


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="cityscapes_fullres root")
    parser.add_argument("--images", type=int, default=15, help="val maps timed for our implementation")
    parser.add_argument("--ref-images", type=int, default=3, help="maps timed for the (slow) reference")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (the issue: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes")
    parser.add_argument("--cuda-batch", type=int, default=8, help="batch size of the CUDA section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pairs = load_pairs(args.data, args.images)
    h, w = pairs[0][1].shape
    print(f"{len(pairs)} real val label maps at {h}x{w}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")

    # Reference: scipy morphology per class (single-threaded by nature).
    ref_pairs = pairs[:args.ref_images]
    start = time.perf_counter()
    ref = [reference_counts(p, t) for p, t in ref_pairs]
    ref_per_s = len(ref_pairs) / (time.perf_counter() - start)

    ours_per_s, _ = time_ours(pairs, "cpu", batch=1, repeats=args.repeats)

    # Same counts as the reference (a benchmark of a wrong answer is worthless).
    check = SegmentationMetrics()
    for (p, t), (confusion, trimap, f1) in zip(ref_pairs, ref):
        stats = check.image_stats(torch.as_tensor(p), torch.as_tensor(t))
        assert np.array_equal(stats["confusion"][0].numpy(), confusion), "confusion differs from the reference"
        assert np.array_equal(stats["trimap_confusion"][0].numpy(), trimap), "trimap differs from the reference"
        present = stats["confusion"][0].sum(-1) > 0
        ours_f1 = float(boundary_f1_per_class(stats["boundary"][0])[present].mean())
        assert abs(ours_f1 - f1) < 1e-12, f"boundary F1 {ours_f1} vs reference {f1}"
    print(f"agreement with the reference on {len(ref_pairs)} maps: confusion, trimap, boundary F1 identical")

    print(f"reference (scipy.ndimage per class):  {ref_per_s:8.2f} img/s  ({1 / ref_per_s:.2f} s/img)")
    print(f"SegmentationMetrics.update, CPU:      {ours_per_s:8.2f} img/s  ({1000 / ours_per_s:.1f} ms/img)")
    print(f"speed-up on CPU: {ours_per_s / ref_per_s:.1f}x (target >= 20x)")

    if torch.cuda.is_available():
        batch = args.cuda_batch
        gpu_per_s, gpu_metric = time_ours(pairs, "cuda", batch=batch, repeats=args.repeats)
        cpu_metric = SegmentationMetrics()
        for p, t in pairs:
            cpu_metric.update(torch.as_tensor(p)[None], torch.as_tensor(t)[None])
        a, b = cpu_metric.compute(), gpu_metric.compute()
        same = all(np.array_equal(np.asarray(a[k], float), np.asarray(b[k], float), equal_nan=True) for k in a)
        print(f"SegmentationMetrics.update, {torch.cuda.get_device_name()} (batch {batch}): "
              f"{gpu_per_s:8.1f} img/s  ({1000 / gpu_per_s:.2f} ms/img; goal >= 200 img/s); "
              f"results equal to CPU: {same}")
        print(f"speed-up on CUDA over the CPU reference: {gpu_per_s / ref_per_s:.0f}x")
    else:
        print("CUDA: not available, GPU section skipped")


if __name__ == "__main__":
    main()
