"""Benchmark the signed distance maps: scipy reference vs compute_sdt on real labels, torch (CPU/CUDA), cache sizes.

    python bench/bench_sdt.py                      # all real labels in ../shared/data/cityscapes_fullres
    python bench/bench_sdt.py --frames 5 --repeats 3

Single-threaded on the CPU (threads are pinned to 1 before numpy/torch load; CPU times of this process,
i.e. wall time on an idle core). For every real label
(train + val labelIds) it times the reference (`data_utils.sdt.compute_sdt_reference`: scipy's EDT twice per
present class, as the definition reads) and `compute_sdt` in the same run, checks that both are identical, and prints the
ratio per frame and overall. Then the pure-torch path on the CPU, the CUDA path when a GPU is present
(ms per 1024x2048 label for all 19 classes, CUDA events after a warm-up), and what the cache's lossless
compression saves on a real frame and on the synthetic demo data.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy / torch load: one core for every measurement

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_utils.classes import class_presence  # noqa: E402
from data_utils.dataset import read_train_ids  # noqa: E402
from data_utils.labels import CITYSCAPES  # noqa: E402
from data_utils.sdt import compute_sdt, compute_sdt_reference, compute_sdt_torch  # noqa: E402
from data_utils.sdt_cache import read_sdt_file, write_sdt_file  # noqa: E402
from utils.conventions import SDT_CLIP  # noqa: E402

C = CITYSCAPES.num_classes  # the real labels here are Cityscapes'
from data_utils.synthetic import generate_dataset  # noqa: E402
from utils import UserError, run_main  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def best_time(fn, repeats: int) -> tuple[float, object]:
    """(fastest of `repeats` CPU times in seconds, last result).

    CPU time of this process: everything here runs on one thread, so it equals the wall time on an idle
    core, and it does not count the time other processes on a shared machine hold the core.
    """
    times, result = [], None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return min(times), result


def wall_time(fn, repeats: int) -> tuple[float, object]:
    """(fastest of `repeats` wall times in seconds, last result): for file I/O, which waits on the disk."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_cpu(paths: list[Path], repeats: int) -> list[np.ndarray]:
    print(f"CPU, 1 thread, CPU seconds: scipy reference vs compute_sdt ({len(paths)} real labels, best of {repeats})")
    print(f"{'frame':34s} {'classes':>7s} {'scipy (s)':>10s} {'ours (s)':>9s} {'ratio':>6s}  exact")
    labels, total_ref, total_ours, exact = [], 0.0, 0.0, 0
    for path in paths:
        label = read_train_ids(str(path))
        t_ref, ref = best_time(lambda: compute_sdt_reference(label, C), repeats)
        t_ours, ours = best_time(lambda: compute_sdt(label, C), repeats)
        same = np.array_equal(ref, ours)
        total_ref, total_ours, exact = total_ref + t_ref, total_ours + t_ours, exact + same
        present = int(class_presence(label, C).sum())
        print(f"{path.name.replace('_gtFine_labelIds.png', ''):34s} {present:7d} {t_ref:10.3f} {t_ours:9.3f} "
              f"{t_ref / t_ours:6.1f}  {'yes' if same else 'NO'}")
        labels.append(label)
    print(f"{'overall':34s} {'':7s} {total_ref:10.2f} {total_ours:9.2f} {total_ref / total_ours:6.1f}  "
          f"{exact}/{len(paths)} identical")
    print(f"per frame: scipy {total_ref / len(paths):.3f} s, compute_sdt {total_ours / len(paths):.3f} s\n")
    return labels


def bench_torch_cpu(labels: list[np.ndarray], repeats: int) -> None:
    torch.set_num_threads(1)
    times, exact = [], 0
    for label in labels:
        t, out = best_time(lambda: compute_sdt_torch(torch.from_numpy(label)[None], C), repeats)
        t_np, ref = best_time(lambda: compute_sdt(label, C), repeats)
        times.append((t, t_np))
        exact += np.array_equal(out[0].numpy(), ref)
    t_torch, t_np = (sum(x) / len(times) for x in zip(*times))
    print(f"torch CPU path (pure torch, 1 thread), {len(labels)} frames: {t_torch:.3f} s/frame "
          f"(compute_sdt {t_np:.3f} s/frame in the same run), {exact}/{len(labels)} identical\n")


def bench_cuda(labels: list[np.ndarray], iters: int) -> None:
    if not torch.cuda.is_available():
        print("CUDA: no GPU here, skipped (on a GPU this prints ms per 1024x2048 label for all 19 classes)\n")
        return
    from data_utils import sdt as sdt_module

    device = torch.device("cuda")
    print(f"CUDA on {torch.cuda.get_device_name(device)}:")
    batch = torch.from_numpy(np.stack(labels[:2])).to(device)
    paths = {"compute_sdt_torch": lambda x: compute_sdt_torch(x, C),  # Triton kernels when triton is installed
             "pure torch fallback": lambda x: sdt_module._sdt_torch(x.to(torch.uint8), C, SDT_CLIP)}
    for name, fn in paths.items():
        for n in (1, 2):
            x = batch[:n]
            out = fn(x)  # warm-up: Triton compiles (and self-checks) here
            torch.cuda.synchronize()
            if name == "compute_sdt_torch" and sdt_module._triton_error:
                print(f"  Triton path unavailable ({sdt_module._triton_error}): timings are the pure-torch path")
            exact = all(np.array_equal(out[k].cpu().numpy(), compute_sdt(labels[k], C)) for k in range(n))
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            runs = iters if name == "compute_sdt_torch" else max(iters // 10, 1)
            start.record()
            for _ in range(runs):
                fn(x)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / runs
            print(f"  {name:22s} batch {n}: {ms:8.2f} ms per batch, {ms / n:8.2f} ms per label "
                  f"(target <= 5 ms), identical to compute_sdt: {exact}")
    print()


def bench_cache(label: np.ndarray, demo_frames: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sdt = compute_sdt(label, C)
        print(f"cache files, one real {label.shape[0]}x{label.shape[1]} frame (raw int8 {sdt.nbytes / 2**20:.1f} MiB):")
        for compress in (False, True):
            path = tmp / f"frame_{compress}.sdt"
            t_write, size = wall_time(lambda: write_sdt_file(path, sdt, labels=label, compress=compress), 1)
            t_read, loaded = wall_time(lambda: np.array(read_sdt_file(path, expected_shape=sdt.shape)), 3)
            assert np.array_equal(loaded, sdt)
            print(f"  {'zlib row deltas' if compress else 'raw (memory-mapped)':22s} {size / 2**20:8.2f} MiB "
                  f"({sdt.nbytes / size:5.1f}x smaller)  write {t_write:.3f} s  read+check+copy {t_read:.3f} s (wall)")
        root = generate_dataset(tmp / "demo", num_train=demo_frames, num_val=0, progress=False)
        raw = packed = 0
        for png in sorted(root.rglob("*_gtFine_labelIds.png")):
            train_ids = read_train_ids(str(png))
            sdt = compute_sdt(train_ids, C)
            raw += sdt.nbytes
            packed += write_sdt_file(tmp / "demo.sdt", sdt, labels=train_ids, compress=True)
        print(f"  synthetic demo data ({demo_frames} frames 256x512): raw {raw / 2**20:.1f} MiB, "
              f"compressed {packed / 2**20:.2f} MiB ({raw / packed:.1f}x smaller)\n")


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cityscapes_fullres"),
                        help="folder with gtFine/<split>/<city>/*_gtFine_labelIds.png (real labels)")
    parser.add_argument("--frames", type=int, default=0, help="use only the first N labels (0 = all)")
    parser.add_argument("--repeats", type=int, default=1, help="time each measurement this often, keep the best")
    parser.add_argument("--torch-frames", type=int, default=3, help="labels timed on the pure-torch CPU path")
    parser.add_argument("--cuda-iters", type=int, default=20, help="timed iterations per CUDA measurement")
    args = parser.parse_args()

    paths = sorted(Path(args.data).glob("gtFine/*/*/*_gtFine_labelIds.png"))
    if not paths:
        raise UserError(f"{args.data}: no gtFine/<split>/<city>/*_gtFine_labelIds.png found; pass --data DIR")
    if args.frames:
        paths = paths[: args.frames]
    labels = bench_cpu(paths, args.repeats)
    if args.torch_frames:
        bench_torch_cpu(labels[: args.torch_frames], args.repeats)
    bench_cuda(labels, args.cuda_iters)
    bench_cache(labels[0], demo_frames=8)


if __name__ == "__main__":
    run_main(main)
