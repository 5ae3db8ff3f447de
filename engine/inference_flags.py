"""The inference-mode flags predict.py and evaluate.py share (--slide --crop --stride --flip --scales), declared
once; no torch, so --help and bad flags answer before torch loads. The modes themselves: engine/inference.py.

    add_inference_flags(parser)
    args = parser.parse_args()
    kwargs = inference_kwargs(parser, args)      # Inference(**kwargs) once torch is loaded
"""
from __future__ import annotations

import argparse


def pair(text: str) -> tuple[int, int]:
    """'1024,768' -> (1024, 768); '512' -> (512, 512)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give H,W as two positive integers, e.g. 1024,1024")
    return values[0], values[1]


def scale_list(text: str) -> tuple[float, ...]:
    """'0.5,1,1.5' -> (0.5, 1.0, 1.5), every factor positive."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive factors, e.g. 0.5,0.75,1.0,1.25,1.5,1.75")
    return values


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference mode (engine/inference.py; default: whole image, single scale)")
    group.add_argument("--slide", action="store_true", help="sliding-window inference (needs --crop)")
    group.add_argument("--crop", type=pair, metavar="H,W", help="--slide: window size")
    group.add_argument("--stride", type=pair, metavar="H,W", help="--slide: window step (default 2/3 of --crop)")
    group.add_argument("--flip", action="store_true", help="add left-right flipped passes (mean softmax)")
    group.add_argument("--scales", type=scale_list, default=(1.0,), metavar="S,S,...",
                       help="image scale factors, e.g. 0.5,0.75,1.0,1.25,1.5,1.75 (mean softmax; default 1.0)")


def inference_kwargs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """engine.inference.Inference's arguments from the flags; parser.error for --crop/--stride without --slide."""
    if args.slide != (args.crop is not None) or (args.stride is not None and not args.slide):
        parser.error("--slide needs --crop H,W (and optionally --stride H,W); --crop and --stride go with --slide")
    return {"mode": "slide" if args.slide else "whole", "crop": args.crop, "stride": args.stride,
            "flip": args.flip, "scales": tuple(args.scales)}
