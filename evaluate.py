"""Evaluate checkpoints: metrics into `<checkpoint>.results.json`, or predictions for the Cityscapes test server.

    python evaluate.py runs/cityscapes/convnextv2_base/C_seed42/checkpoints/epoch_0160   # one checkpoint on val
    python evaluate.py runs/cityscapes/convnextv2_base/C_seed42             # a run folder: its latest checkpoint
    accelerate launch evaluate.py RUN/checkpoints/epoch_0160               # the same over all GPUs
    python evaluate.py --all runs/ --jobs 4                                 # every checkpoint lacking valid results
    python evaluate.py CKPT --split test --save-predictions preds/          # test-server PNGs + colour overlays
    python evaluate.py --all runs/ --flip --scales 0.5,0.75,1,1.25,1.5,1.75  # TTA results beside the whole-image ones
    python evaluate.py --consensus RUNS/C_seed42 --veto RUNS/B_seed42       # RUNS = runs/cityscapes/convnextv2_base
    python evaluate.py --consensus-pairs C:B,D:B --all runs/               # every seed's final epoch (docs/report.md)

A checkpoint is a folder holding model.safetensors, config.json and meta.json (train.py writes them); the
model is rebuilt from its config.json (engine.checkpoint_eval). Full-resolution single-scale inference by
default, or --slide / --flip / --scales (engine/inference.py; the mode goes into the results, and into the file
names as <ckpt>.inference.<mode>.results.json + .per_image.npz, so the study's whole-image files stay); BF16
autocast on CUDA; metrics as defined in `metrics/segmentation.py`, in the checkpoint config's metrics profile
unless --metrics-profile says otherwise; the per-image statistics go to `<checkpoint>.per_image.npz`, the
predictions of --samples K val frames (default: the config's) to `<checkpoint>.samples/` (engine.samples;
their images and ground truth to RUN/samples/). Batch mode (engine.batch_eval) is resumable: a checkpoint whose
results file is valid, for the same split, the same save of the checkpoint and the profile asked for, with its
per-image file beside it, is skipped (its missing prediction samples are filled in, only the sample frames going
through the model); a corrupt one is redone.

Exit status: `utils.run_main`'s. 0: done; 3 (EXIT_PARTIAL_FAILURE): --all evaluated the others, but some
checkpoint could not be evaluated (corrupt weights, a config that does not match them: listed at the end);
2: bad input, one `error:` line naming the file and the fix; 130: interrupted.
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack, closing
from pathlib import Path

from data_utils.labels import THIN_CLASSES
from data_utils.options import UNLABELLED_SPLITS
from data_utils.paths import check_data_paths
from engine.checkpoint_paths import resolve_checkpoint
from engine.config import add_data_source_flags
from engine.inference_flags import add_inference_flags, inference_kwargs
from engine.samples import DEFAULT_SAMPLES, samples_dir
from metrics.consensus import REASSIGN_MODES
from metrics.keys import PROFILES
from utils.cli import ArgumentParser
from utils.fileio import (EXIT_PARTIAL_FAILURE, RenamedFlag, UserError, make_output_dir, parse_args_first, run_main,
                          user_message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", type=Path,
                        help="a checkpoint folder (RUN/checkpoints/epoch_XXXX), or a run folder: its latest checkpoint")
    parser.add_argument("--all", type=Path, metavar="RUNS_DIR",
                        help="evaluate every RUNS_DIR/**/checkpoints/epoch_XXXX that has no valid results file")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default: the config's val_split; test: predictions only)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="--all: checkpoints evaluated at once, spread round-robin over the visible GPUs")
    parser.add_argument("--workers", action=RenamedFlag, new="--jobs", dest="jobs", type=int)
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: config's)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader worker processes per evaluation (default: the config's num_workers)")
    parser.add_argument("--loader-workers", action=RenamedFlag, new="--num-workers", dest="num_workers", type=int)
    parser.add_argument("--save-predictions", type=Path, metavar="DIR", default=None,
                        help="write DIR/labelIds/<city>/<name>_labelIds.png (the test server's format) and "
                             "DIR/overlay/<city>/<name>_overlay.jpg (one checkpoint only)")
    parser.add_argument("--metrics-profile", choices=PROFILES, default=None,
                        help="estimators of Boundary F1 and Trimap IoU (docs/metrics.md; default: the checkpoint "
                             "config's metrics_profile)")
    parser.add_argument("--force", action="store_true", help="--all: re-evaluate checkpoints with valid results too")
    parser.add_argument("--samples", type=int, default=None, metavar="K",
                        help="keep the predictions of K val frames beside the results (<ckpt>.samples/; 0 = none; "
                             f"default: the checkpoint config's, {DEFAULT_SAMPLES}); --all fills in missing ones")
    add_data_source_flags(parser, ("data_root", "hf_dataset"), from_checkpoint=True)  # e.g. after moving the data
    add_inference_flags(parser)  # results of another mode than whole go to <ckpt>.inference.<mode>.results.json
    consensus = parser.add_argument_group("consensus filter (metrics.consensus.cc_veto; docs/report.md)")
    consensus.add_argument("--consensus", type=Path, metavar="PRIMARY_CKPT",
                           help="evaluate PRIMARY_CKPT vetoed by --veto: primary, veto and fused maps")
    consensus.add_argument("--veto", type=Path, metavar="VETO_CKPT", help="the veto checkpoint of --consensus")
    consensus.add_argument("--consensus-pairs", metavar="C:B,D:B", default=None,
                           help="with --all: primary variant C vetoed by B, seed by seed, at the final epoch")
    consensus.add_argument("--max-drop-size", type=int, default=None, metavar="N",
                           help="drop only unsupported components of at most N pixels (default: any size)")
    consensus.add_argument("--protect", default=None, metavar="NAMES",
                           help=f"comma-separated class names never dropped (default: {', '.join(THIN_CLASSES)}, "
                                "those of them the class table has)")
    consensus.add_argument("--reassign", choices=REASSIGN_MODES, default="veto",
                           help="dropped pixels take the veto's labels or the ignore index")
    args = parser.parse_args(argv)
    args.inference = inference_kwargs(parser, args)  # engine.inference.Inference(**...) in main
    if args.consensus is not None or args.consensus_pairs is not None:
        if args.slide or args.flip or tuple(args.scales) != (1.0,):
            parser.error("the consensus evaluation is whole-image single-scale: drop --slide/--flip/--scales")
        if (args.consensus is None) == (args.consensus_pairs is None) or args.checkpoint is not None:
            parser.error("give --consensus PRIMARY_CKPT --veto VETO_CKPT or --consensus-pairs C:B --all RUNS_DIR")
        if (args.consensus is None) != (args.veto is None) or (args.consensus_pairs is None) != (args.all is None):
            parser.error("--consensus needs --veto VETO_CKPT, --consensus-pairs needs --all RUNS_DIR")
        if args.split in UNLABELLED_SPLITS or args.save_predictions is not None:
            parser.error("the consensus evaluation needs labels and writes no predictions")
        if args.max_drop_size is not None and args.max_drop_size < 1:
            parser.error(f"--max-drop-size must be positive, got {args.max_drop_size}")
        if args.consensus_pairs is not None:
            args.pairs = [tuple(p.split(":")) for p in args.consensus_pairs.split(",")]
            if any(len(p) != 2 or not all(p) for p in args.pairs):
                parser.error(f"--consensus-pairs {args.consensus_pairs!r}: use PRIMARY:VETO[,PRIMARY:VETO...]")
        return args
    if args.veto is not None:
        parser.error("--veto goes with --consensus PRIMARY_CKPT")
    if (args.checkpoint is None) == (args.all is None):
        parser.error("give one checkpoint folder or --all RUNS_DIR (exactly one)")
    if args.all is not None and args.save_predictions is not None:
        parser.error("--save-predictions works on one checkpoint, not with --all")
    if args.split in UNLABELLED_SPLITS and args.save_predictions is None:
        parser.error(f"split {args.split!r} has no real labels, so no metrics: add --save-predictions DIR")
    for name in ("jobs", "batch_size", "num_workers"):
        value, lowest = getattr(args, name), 0 if name == "num_workers" else 1  # 0 workers: load in the main process
        if value is not None and value < lowest:
            parser.error(f"--{name.replace('_', '-')} must be >= {lowest}, got {value}")
    if args.samples is not None and args.samples < 0:
        parser.error(f"--samples must be >= 0 (0: none), got {args.samples}")
    return args


def check_paths(args: argparse.Namespace) -> None:
    """The checkpoints named exist (`resolve_checkpoint`), and so does the data folder given (torch-free: run by
    utils.fileio.parse_args_first before torch loads)."""
    for given in (args.checkpoint, args.consensus, args.veto):
        if given is not None:
            resolve_checkpoint(given)
    if args.data_root or args.hf_dataset:
        check_data_paths(args.data_root, args.hf_dataset)


if __name__ == "__main__":
    # --help, rejected flags and missing files answer here, before torch & co. load (~5 s, 30 s on a busy node)
    parse_args_first(parse_args, check_paths)

from rich.console import Console

from engine.batch_eval import evaluate_all, find_checkpoints, pending_reason
from engine.checkpoint_eval import EvalOptions, evaluate_checkpoint, fill_samples, samples_pending
from engine.consensus import consensus_pairings, consensus_table, evaluate_consensus_pair
from engine.inference import Inference
from engine.results import batch_table, checkpoint_table
from engine.results_format import consensus_path, inference_path
from metrics.per_image import PER_IMAGE_SUFFIX
from utils.bars import Bars
from utils.console import plural, progress_columns
from utils.dirlock import folder_lock
from utils.signals import sigterm_as_ctrl_c


def lock_runs(stack: ExitStack, checkpoints) -> None:
    """One evaluator per run: each RUN/checkpoints folder it writes results into stays locked until `stack` ends."""
    for folder in sorted({ckpt.parent for ckpt in checkpoints}):
        stack.enter_context(folder_lock(folder, "evaluate.py", "wait for it to finish or stop it"))


def run_one(args, options: EvalOptions, console: Console) -> int:
    """CHECKPOINT: evaluate it (1 process, or N under `accelerate launch`), print its table."""
    from accelerate import Accelerator
    accelerator = Accelerator()
    writes_results = accelerator.is_main_process and args.checkpoint.is_dir() and args.split not in UNLABELLED_SPLITS
    if accelerator.is_main_process and args.save_predictions is not None:  # read-only, a file: one line, before work
        make_output_dir(args.save_predictions, "--save-predictions")
    with ExitStack() as stack:
        if writes_results:
            lock_runs(stack, [args.checkpoint])  # the folder --all locks too
        record = evaluate_checkpoint(args.checkpoint, options, accelerator)
    if accelerator.is_main_process:
        if args.split in UNLABELLED_SPLITS:
            console.print(f"wrote {record['predictions']} predictions to {args.save_predictions} (labelIds/ for "
                          "the test server, overlay/ to look at)")
        else:
            console.print(checkpoint_table(record))
            tag = options.inference.tag
            results = inference_path(args.checkpoint, tag)
            samples = samples_dir(results)
            console.print(f"wrote {results} and "
                          f"{inference_path(args.checkpoint, tag, PER_IMAGE_SUFFIX).name}"
                          f"{f' and {samples.name}/' if samples.is_dir() else ''} (metrics profile "
                          f"{record['metrics_profile']}, inference {tag})", soft_wrap=True)
            if args.save_predictions:
                console.print(f"wrote predictions to {args.save_predictions}")
    return 0


def run_batch(args, options: EvalOptions, console: Console) -> int:
    """--all: evaluate what is pending, print a table, list the failures (EXIT_PARTIAL_FAILURE if any)."""
    checkpoints = find_checkpoints(args.all)
    todo = [c for c in checkpoints
            if args.force or pending_reason(c, args.split, args.metrics_profile, options.inference.tag,
                                                args.data_root, args.hf_dataset) is not None]
    console.print(f"{plural(len(checkpoints), 'checkpoint')} under {args.all}: {len(checkpoints) - len(todo)} "
                  f"already evaluated on {args.split or 'their val split'}, {len(todo)} to evaluate with "
                  f"{plural(args.jobs, 'job')}", soft_wrap=True)
    fill = [c for c in checkpoints if c not in todo and samples_pending(c, options)]
    if fill:
        console.print(f"{len(fill)} of the evaluated checkpoints lack their prediction samples: filling them in "
                      "(only the sample frames go through the model)", soft_wrap=True)
    done, failures = [], []
    with ExitStack() as stack:
        lock_runs(stack, todo + fill)
        bar = stack.enter_context(Bars(*progress_columns(), console=console))
        outcomes = stack.enter_context(closing(evaluate_all(todo, options, args.jobs)))  # closed on Ctrl-C
        task = bar.add_task("checkpoints", total=len(todo))
        for ckpt, record, error in outcomes:
            if error is None:
                done.append(record)
            else:
                failures.append((ckpt, error))
                bar.console.print(f"[red]failed[/red] {ckpt}: {error}", soft_wrap=True)
            bar.advance(task)
        failures += fill_all_samples(fill, options, bar)
    if done:
        console.print(batch_table(sorted(done, key=lambda r: r["checkpoint"]), args.all))
    if failures:
        console.print(f"[red]{plural(len(failures), 'checkpoint')} could not be evaluated:[/red]")
        for ckpt, error in failures:
            console.print(f"  {ckpt}: {error}", soft_wrap=True)
        return EXIT_PARTIAL_FAILURE
    return 0


def fill_all_samples(checkpoints, options: EvalOptions, bar: Bars) -> list[tuple]:
    """--all: write the missing prediction samples of checkpoints with valid results (engine.checkpoint_eval.
    fill_samples, in this process); returns the failures as (checkpoint, one-line error)."""
    if not checkpoints:
        return []
    from accelerate import Accelerator
    accelerator, failures = Accelerator(), []
    task = bar.add_task("prediction samples", total=len(checkpoints))
    for ckpt in checkpoints:
        try:
            fill_samples(ckpt, options, accelerator)
        except UserError as e:
            failures.append((ckpt, user_message(e)))
            bar.console.print(f"[red]failed[/red] {ckpt}: {user_message(e)}", soft_wrap=True)
        bar.advance(task)
    return failures


def run_consensus(args, options: EvalOptions, console: Console) -> int:
    """--consensus / --consensus-pairs: evaluate each pairing (one process), print the table."""
    from accelerate import Accelerator
    accelerator = Accelerator()
    pairings = ([(args.consensus, args.veto)] if args.consensus is not None
                else consensus_pairings(args.all, args.pairs))
    protect = None if args.protect is None else args.protect.split(",")
    with ExitStack() as stack:
        lock_runs(stack, [primary for primary, _ in pairings])
        records = [evaluate_consensus_pair(primary, veto, options, accelerator, protect, args.max_drop_size,
                                           args.reassign) for primary, veto in pairings]
    if accelerator.is_main_process:
        console.print(consensus_table(records))
        for primary, veto in pairings:
            console.print(f"wrote {consensus_path(primary, veto.parent.parent.name)}", soft_wrap=True)
    return 0


def resolve_checkpoint_args(args, console: Console) -> None:
    """CHECKPOINT, --consensus and --veto: a run folder means its latest checkpoint (one line says which)."""
    for name in ("checkpoint", "consensus", "veto"):
        given = getattr(args, name)
        if given is not None:
            setattr(args, name, resolve_checkpoint(given))
            if getattr(args, name) != given:
                console.print(f"{given}: a run folder; evaluating its latest checkpoint, {getattr(args, name).name}",
                              soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.inference = Inference(**args.inference)
    options = EvalOptions.from_namespace(args)
    console = Console()
    resolve_checkpoint_args(args, console)
    import datasets
    datasets.disable_progress_bars()  # listing a split is instant; our own bars show the work
    if args.consensus is not None or args.consensus_pairs is not None:
        return run_consensus(args, options, console)
    if args.all is not None:
        return run_batch(args, options, console)
    return run_one(args, options, console)


if __name__ == "__main__":
    with sigterm_as_ctrl_c():  # `timeout`, SLURM, `docker stop`: stop as on Ctrl-C, one line, exit code 130
        run_main(main)
