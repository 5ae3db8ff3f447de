"""Run a trained checkpoint on your own images, or export it to ONNX.

    python predict.py runs/demo/convnextv2_atto/C_seed42 photos/ --out preds/   # a run folder: its newest checkpoint
    python predict.py CKPT frames/*.png one.jpg --out preds/ --flip --scales 0.75,1,1.25
    python predict.py CKPT big/ --out preds/ --slide --crop 1024,1024 --stride 768,768
    python predict.py CKPT val_images/ --out preds/ --gt gtFine/val/          # + ground truth, error view, metrics.csv
    accelerate launch predict.py CKPT photos/ --out preds/                    # the inputs split over the GPUs
    python predict.py CKPT --export model.onnx                                # ONNX, checked with onnxruntime

INPUT: image files, folders (searched recursively) or globs; PNG, JPEG or WebP of any size; RGBA, grayscale and
16-bit images are converted (one note line each). Per image, --out gets the class-index map, Cityscapes' label
ids (a Cityscapes model), a colour map and an overlay with a legend (engine/predict_outputs.py); the inference
modes (whole, --slide, --flip, --scales) are engine/inference.py's, as in evaluate.py. docs/inference.md.

Exit status: 0 done; 3 (EXIT_PARTIAL_FAILURE): some images could not be read (each named, the others written,
a summary at the end); 2: bad input, one `error:` line naming the file or flag and the fix; 130: interrupted (Ctrl-C or SIGTERM).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.checkpoint_paths import resolve_checkpoint
from engine.inference_flags import add_inference_flags, inference_kwargs, pair
from utils.cli import ArgumentParser
from utils.console import plural
from utils.fileio import EXIT_PARTIAL_FAILURE, parse_args_first, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders (recursive) or globs")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where the outputs go (mirrors input sub-folders)")
    parser.add_argument("--gt", type=Path, metavar="LABEL_DIR", help="ground-truth label PNGs (searched "
                        "recursively): adds <name>_gt_error.png and DIR/metrics.csv")
    parser.add_argument("--batch-size", type=int, default=1, help="same-size images per forward pass")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes reading the images")
    parser.add_argument("--export", type=Path, metavar="MODEL.onnx", help="write the model as ONNX instead "
                        "(dynamic H, W; checked with onnxruntime; needs requirements-export.txt)")
    parser.add_argument("--export-size", type=pair, default=None, metavar="H,W",
                        help="--export: the image size traced (default: the checkpoint's training frame size)")
    add_inference_flags(parser)
    args = parser.parse_args(argv)
    if args.export is not None:
        if args.inputs or args.out is not None:
            parser.error("--export writes the model only: give CKPT --export MODEL.onnx, no INPUT or --out")
    elif not args.inputs or args.out is None:
        parser.error("give INPUT... and --out DIR (or --export MODEL.onnx)")
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch-size must be >= 1 and --num-workers >= 0")
    if args.gt is not None and not args.gt.is_dir():
        parser.error(f"--gt {args.gt}: not a folder; pass the folder holding the label PNGs")
    args.inference = inference_kwargs(parser, args)  # engine.inference.Inference(**...) in main
    return args


if __name__ == "__main__":
    # --help, rejected flags and a missing checkpoint answer here, before torch & co. load
    parse_args_first(parse_args, lambda args: resolve_checkpoint(args.checkpoint))

import torch
from rich.console import Console
from rich.markup import escape

from data_utils.image_files import find_images
from engine.checkpoint_eval import load_checkpoint
from engine.inference import Inference
from engine.predict_images import METRICS_FILE, predict_images, write_metrics
from utils import make_output_dir
from utils.signals import sigterm_as_ctrl_c


def run_export(args, console: Console) -> int:
    """--export: write the ONNX file and compare it with torch on one image of another size than the traced one."""
    from engine.export import ExportMismatch, check_onnx, export_onnx, require_export_packages

    require_export_packages()  # before loading anything: the refusal is instant
    ckpt = resolve_checkpoint(args.checkpoint)
    cfg, _, model = load_checkpoint(ckpt)
    height, width = args.export_size or (tuple(cfg.crop_size) if min(cfg.crop_size) > 0 else (256, 512))
    console.print(f"exporting {ckpt} traced at {height}x{width} ...", soft_wrap=True)
    opset = export_onnx(model, args.export, (height, width))
    image = torch.randint(0, 256, (3, height + 32, width + 64), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    try:
        check = check_onnx(model, args.export, image)
    except ExportMismatch as e:  # the file stays, for a look; the exit status says it is not to be used
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        return 1
    console.print(f"wrote {args.export} (opset {opset}); onnxruntime vs torch on a {width + 64}x{height + 32} "
                  f"image: max |Δlogit| {check['max_abs_diff']:.2e}, equal argmax "
                  f"{100 * check['argmax_agreement']:.3f} %", soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.inference = Inference(**args.inference)
    console = Console()
    if args.export is not None:
        return run_export(args, console)
    from accelerate import Accelerator

    accelerator = Accelerator()
    inputs = find_images(args.inputs)
    ckpt = resolve_checkpoint(args.checkpoint)
    if accelerator.is_main_process:
        make_output_dir(args.out, "--out")
        console.print(f"{plural(len(inputs), 'image')}, {ckpt}, inference {args.inference.tag}", soft_wrap=True)
    accelerator.wait_for_everyone()
    report = predict_images(ckpt, inputs, args.out, args.inference, accelerator, batch_size=args.batch_size,
                            num_workers=args.num_workers, gt_dir=args.gt, console=console)
    from accelerate.utils import gather_object

    failures = gather_object(report.failures)
    metrics = gather_object(report.metrics)
    without_gt = gather_object(report.without_gt)
    written = sum(gather_object([report.written]))
    if not accelerator.is_main_process:
        return EXIT_PARTIAL_FAILURE if failures else 0  # every process exits alike
    if args.gt is not None:
        write_metrics(metrics, args.out / METRICS_FILE)
        console.print(f"{plural(len(metrics), 'image')} had ground truth: metrics in {args.out / METRICS_FILE}")
        if without_gt:
            console.print(f"note: no label in {args.gt} for {plural(len(without_gt), 'image')}, e.g. {without_gt[0]} "
                          "(looked for <frame>_gtFine_labelIds.png, <frame>_gtFine_labelTrainIds.png, <stem>.png)",
                          soft_wrap=True)
    console.print(f"wrote the outputs of {plural(written, 'image')} to {args.out}")
    if failures:
        listed = "; ".join(f"{path}: {error}" for path, error in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        console.print(f"[red]{len(failures)} of {plural(len(inputs), 'image')} failed:[/red] {escape(listed)}{more}",
                      soft_wrap=True)
        return EXIT_PARTIAL_FAILURE
    return 0


if __name__ == "__main__":
    with sigterm_as_ctrl_c():  # `timeout`, SLURM, `docker stop`: stop as on Ctrl-C, one line, exit code 130
        run_main(main)
