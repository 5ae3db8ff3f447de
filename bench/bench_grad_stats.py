"""Cost of the per-term gradient statistics (`losses.gradients.term_gradient_stats`) relative to a training step.

Reference: one plain training micro-step of variant C, forward (main + aux head) + composite loss + backward,
as train.py runs it. Ours: the same step with `term_gradient_stats` called between the loss and the backward
(one extra backward per term from the loss to the fused feature map, plus the norms and the cosine), which
is what a logging step costs. Both are timed alternately on the same model and batch; printed: both times,
the overhead ratio r = (t_logging − t_plain) / t_plain of one logging step and the amortised overhead r / K
when statistics are logged every K optimizer steps (K x grad_accum micro-steps), and on CUDA the peak memory
of each.

    python bench/bench_grad_stats.py                       # CPU, 1 thread: convnextv2_atto, 2 x 128 x 256
    python bench/bench_grad_stats.py --device cuda --backbone convnextv2_base --head-channels 512 \
        --height 1024 --width 2048 --batch 2 --amp bf16     # the paper's setting on one GPU
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo packages are top-level
from losses import AUX_LOSS_WEIGHT, build_loss  # noqa: E402
from losses.gradients import term_gradient_stats  # noqa: E402
from models import build_model  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def make_batch(n: int, h: int, w: int, num_classes: int, device: torch.device):
    """Random images, blocky labels with some ignore pixels, and an int8 SDT of the right shape (the loss's
    cost does not depend on the SDT's values)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, h, w, generator=g)
    coarse = torch.randint(0, num_classes, (n, h // 32 + 1, w // 32 + 1), generator=g)
    labels = coarse.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :h, :w].contiguous()
    labels[:, : h // 16] = 255
    sdt = torch.randint(-127, 128, (n, num_classes, h, w), generator=g, dtype=torch.int8)
    return images.to(device), labels.to(device), sdt.to(device)


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="convnextv2_atto")
    parser.add_argument("--head-channels", type=int, default=128, help="UPerNet width (512 in the paper)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--amp", choices=("no", "bf16"), default="no", help="autocast precision of the forward")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each kind (alternating)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--every", type=int, default=50, help="K of --log-grad-norms, for the amortised figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=19, aux_head=True, head_channels=args.head_channels)
    model.to(device).train()
    loss_fn = build_loss("C")
    images, labels, sdt = make_batch(args.batch, args.height, args.width, 19, device)

    def step(with_stats: bool) -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=args.amp == "bf16"):
            out = model(images, return_features=True)
        terms = loss_fn(out["logits"], labels, sdt)
        loss = terms["loss"] + AUX_LOSS_WEIGHT * loss_fn(out["aux_logits"], labels, sdt)["loss"]
        if with_stats:
            stats = term_gradient_stats(terms, out["logits"], out["features"])
        loss.backward()
        if with_stats:
            torch.stack(list(stats.values())).tolist()  # the values reach the host, as the log writes them
        model.zero_grad(set_to_none=True)

    def timed(with_stats: bool) -> tuple[float, float]:
        """(seconds, peak GiB on CUDA else NaN) of one step."""
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        step(with_stats)
        if device.type == "cuda":
            torch.cuda.synchronize()
            return time.perf_counter() - start, torch.cuda.max_memory_allocated(device) / 2**30
        return time.perf_counter() - start, float("nan")

    step(False), step(True)  # warm-up: allocations, cuDNN autotuning, lazy init
    plain, logging = [], []
    for _ in range(args.repeats):  # alternate, so drift (clocks, other jobs) hits both equally
        plain.append(timed(False))
        logging.append(timed(True))
    t_plain = sorted(t for t, _ in plain)[len(plain) // 2]  # medians
    t_log = sorted(t for t, _ in logging)[len(logging) // 2]
    ratio = (t_log - t_plain) / t_plain

    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{args.threads} thread(s)'}), "
          f"{args.backbone} + UPerNet({args.head_channels}), batch {args.batch} x {args.height}x{args.width}, "
          f"autocast {args.amp}, variant C (3 terms), median of {args.repeats}")
    print(f"reference  plain step (forward + loss + backward)   {1000 * t_plain:9.1f} ms")
    print(f"ours       step + term_gradient_stats             {1000 * t_log:9.1f} ms")
    print(f"overhead of one logging step  (t_ours − t_ref)/t_ref = {ratio:.3f}  ({100 * ratio:.1f} %)")
    print(f"amortised with --log-grad-norms {args.every} (one logging micro-step per {args.every} optimizer steps, "
          f"grad_accum 1): {100 * ratio / args.every:.3f} % of training time; with grad_accum 4: "
          f"{100 * ratio / (4 * args.every):.3f} %")
    if device.type == "cuda":
        print(f"peak memory: plain {max(m for _, m in plain):.2f} GiB, logging step {max(m for _, m in logging):.2f} GiB")


if __name__ == "__main__":
    main()
