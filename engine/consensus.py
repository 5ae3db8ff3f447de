"""Evaluate the consensus filter "primary vetoed by veto" (`metrics.consensus.cc_veto`, which defines it) over a
split: both models run on each batch of one loader, the fused maps are made on the host, and the primary, veto
and fused maps go through the same SegmentationMetrics path as `engine.evaluation.evaluate_model`.

    results = evaluate_consensus(primary, veto, loader, accelerator, protect=protect_indices(classes, None, ckpt))
    results["fused"]["miou"], results["fused"]["fragments_per_image"], results["primary"]["miou"]

evaluate.py --consensus / --consensus-pairs (`evaluate_consensus_pair`, over `consensus_pairings`) writes
`engine.results_format.consensus_path(primary, veto run)`: a standard results file of the fused maps plus a
"consensus" object (`consensus_record`), and prints `consensus_table`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from rich.progress import Progress
from rich.table import Table

from data_utils.classes import ClassTable
from data_utils.labels import THIN_CLASSES
from engine.batch_eval import find_checkpoints
from engine.checkpoint_eval import EvalOptions, build_eval_loader, load_checkpoint
from engine.config import load_config
from engine.evaluation import _live
from engine.inference import predict
from engine.results import write_results
from engine.results_format import consensus_path
from engine.setup import class_table
from metrics.consensus import cc_veto
from metrics.keys import METRIC_KEYS
from metrics.per_image import PER_IMAGE_SUFFIX
from metrics.segmentation import SegmentationMetrics, host_image_stats
from utils.console import pct, progress_columns
from utils.cli import did_you_mean
from utils.fileio import UserError

MAPS = ("primary", "veto", "fused")


def protect_indices(classes: ClassTable, names: list[str] | None, where: str) -> tuple[int, ...]:
    """Class names -> train ids of `classes`; None: those of Cityscapes' THIN_CLASSES the table has (none for
    a table without them). An unknown name is a UserError naming `where` (the checkpoint)."""
    if names is None:
        return tuple(i for i, name in enumerate(classes.names) if name in THIN_CLASSES)
    unknown = [n for n in names if n not in classes.names]
    if unknown:
        raise UserError(f"{where}: --protect names {', '.join(map(repr, unknown))}, not classes of its table; "
                        f"use some of {', '.join(classes.names)}{did_you_mean(unknown[0], classes.names)}")
    return tuple(classes.names.index(n) for n in names)


def evaluate_consensus(primary: torch.nn.Module, veto: torch.nn.Module, loader, accelerator,
                       protect: tuple[int, ...], max_drop_size: int | None = None, reassign: str = "veto",
                       metrics_profile: str = "default", boundary_px: int = 3, description: str = "consensus",
                       show_progress: bool = True) -> dict[str, dict]:
    """Run both models over `loader` (as `evaluate_model` takes it) and return {"primary", "veto", "fused"}:
    each `evaluate_model`'s dict (SegmentationMetrics.compute() + "per_image" + "classes") of those maps, the
    fused being `cc_veto(primary, veto, C, protect, max_drop_size, reassign, ignore_index)` per image."""
    classes = loader.dataset.classes
    C = classes.num_classes
    metrics = {m: SegmentationMetrics(C, classes.ignore_index, boundary_px, profile=metrics_profile,
                                      class_names=classes.names) for m in MAPS}
    modes = (primary.training, veto.training)
    primary.eval(), veto.eval()
    bar = Progress(*progress_columns(), transient=True, disable=not (show_progress and accelerator.is_main_process))
    task = bar.add_task(description, total=len(loader))
    try:
        with _live(bar), torch.no_grad():
            for index, batch in enumerate(loader):
                images = batch["image"].to(accelerator.device, non_blocking=True)
                labels = batch["label"].to(accelerator.device, non_blocking=True)
                preds = {m: predict(model, images, size=labels.shape[-2:]).to(torch.uint8)
                         for m, model in (("primary", primary), ("veto", veto))}
                host = {m: p.cpu().numpy() for m, p in preds.items()}
                host["fused"] = np.stack([cc_veto(p, v, C, protect, max_drop_size, reassign, classes.ignore_index)
                                          for p, v in zip(host["primary"], host["veto"])])
                preds["fused"] = torch.from_numpy(host["fused"]).to(accelerator.device)
                stats = {}
                for m, pred in preds.items():
                    counts = metrics[m].image_stats(pred, labels)
                    # the host-side records from the maps already on the host: no second copy off the device
                    host_stats = host_image_stats(torch.from_numpy(host[m]), C)
                    counts.update({k: v.to(labels.device) for k, v in host_stats.items()})
                    stats.update({f"{m}/{k}": v for k, v in counts.items()})
                names = list(batch["name"])
                if index + 1 == len(loader):  # see engine.evaluation._add_batch: only the last batch has a tail
                    stats = accelerator.gather_for_metrics(stats)
                    names = accelerator.gather_for_metrics(names, use_gather_object=True)
                else:
                    stats, names = accelerator.gather(stats), gather_object(names)
                for m in MAPS:
                    metrics[m].add_stats({k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith(m + "/")},
                                         names)
                bar.advance(task)
    finally:
        primary.train(modes[0]), veto.train(modes[1])
    return {m: {**metric.compute(), "per_image": metric.per_image(), "classes": list(classes.names)}
            for m, metric in metrics.items()}


def consensus_record(primary_ckpt, veto_ckpt, results: dict[str, dict], protect_names: list[str],
                     max_drop_size: int | None, reassign: str, veto_variant: str, veto_seed: int) -> dict:
    """The "consensus" object of a consensus results file: the checkpoints (the veto's variant label and seed;
    the primary's are the record's own), the options, and the primary's and veto's dataset metrics (METRIC_KEYS)
    on the same images, so a reader pairs fused with primary directly (aggregate.py: with the primary's own
    per-image file)."""
    return {"primary": str(primary_ckpt), "veto": str(veto_ckpt), "veto_variant": veto_variant,
            "veto_seed": int(veto_seed), "protect": list(protect_names),
            "max_drop_size": max_drop_size, "reassign": reassign,
            **{f"{m}_metrics": {k: float(results[m][k]) for k in METRIC_KEYS} for m in ("primary", "veto")}}


def evaluate_consensus_pair(primary_ckpt: Path, veto_ckpt: Path, options: EvalOptions, accelerator,
                            protect: list[str] | None = None, max_drop_size: int | None = None,
                            reassign: str = "veto") -> dict:
    """Evaluate `primary_ckpt` vetoed by `veto_ckpt` (`evaluate_consensus`) on the primary's split (or
    `options.split`); the main process writes `consensus_path(primary, veto run)` and its per-image file;
    returns the record. `protect`: class names never dropped (None: `protect_indices`' default)."""
    cfg, meta, primary = load_checkpoint(primary_ckpt)
    veto_cfg, _, veto = load_checkpoint(veto_ckpt)
    classes = class_table(cfg)
    if tuple(class_table(veto_cfg).names) != tuple(classes.names):
        raise UserError(f"{veto_ckpt}: its class table differs from that of {primary_ckpt}; "
                        "veto with a model of the same classes")
    split = options.split or cfg.val_split
    if options.split is None and veto_cfg.val_split != cfg.val_split:
        raise UserError(f"{veto_ckpt}: validates on split {veto_cfg.val_split!r}, {primary_ckpt} on "
                        f"{cfg.val_split!r}; pass --split to evaluate both on one")
    protect_ids = protect_indices(classes, protect, str(primary_ckpt))
    protect_names = [classes.names[i] for i in protect_ids]
    loader = build_eval_loader(options.apply(cfg), split)
    primary = accelerator.prepare_model(primary, evaluation_mode=True)
    veto = accelerator.prepare_model(veto, evaluation_mode=True)
    loader = accelerator.prepare_data_loader(loader)
    veto_run = veto_ckpt.parent.parent.name
    start = time.perf_counter()
    try:
        results = evaluate_consensus(primary, veto, loader, accelerator, protect_ids, max_drop_size, reassign,
                                     metrics_profile=options.metrics_profile or cfg.metrics_profile,
                                     description=f"{primary_ckpt.parent.parent.name} vetoed by {veto_run}")
    finally:
        accelerator.free_memory()
    seconds = time.perf_counter() - start
    extra = {"consensus": consensus_record(primary_ckpt, veto_ckpt, results, protect_names, max_drop_size,
                                           reassign, veto_variant=veto_cfg.loss_label, veto_seed=veto_cfg.seed)}
    record = {"checkpoint": str(primary_ckpt), "seconds": seconds, **extra,
              **{k: v for k, v in results["fused"].items() if k != "per_image"}}
    if accelerator.is_main_process:
        record = write_results(consensus_path(primary_ckpt, veto_run), results["fused"], cfg=cfg, epoch=meta["epoch"],
                               checkpoint=primary_ckpt, split=split, seconds=seconds,
                               per_image_file=consensus_path(primary_ckpt, veto_run, PER_IMAGE_SUFFIX), extra=extra)
    return record


def consensus_pairings(runs_dir: Path, pairs: list[tuple[str, str]]) -> list[tuple[Path, Path]]:
    """(primary, veto) final-epoch checkpoints for each pair of variants and each seed both have, from the
    checkpoints' config.json (variant label = `loss_label`, seed); a variant without runs is a UserError."""
    finals: dict[tuple[str, int], Path] = {}
    for ckpt in find_checkpoints(runs_dir):
        if not (ckpt / "config.json").is_file():
            continue
        cfg = load_config(ckpt / "config.json")
        key = (cfg.loss_label, cfg.seed)
        if key in finals and finals[key].parent != ckpt.parent:
            raise UserError(f"{runs_dir}: two runs of variant {key[0]!r} seed {key[1]} "
                            f"({finals[key].parent.parent.name}, {ckpt.parent.parent.name}); pass a folder holding "
                            "one run per variant and seed")
        finals[key] = ckpt  # find_checkpoints is sorted: the run's last epoch comes last
    variants = sorted({v for v, _ in finals})
    out = []
    for primary, veto in pairs:
        for name in (primary, veto):
            if name not in variants:
                raise UserError(f"{runs_dir}: no runs of variant {name!r} (--consensus-pairs); it has "
                                f"{', '.join(variants) or 'no checkpoints'}")
        seeds = sorted({s for v, s in finals if v == primary} & {s for v, s in finals if v == veto})
        if not seeds:
            raise UserError(f"{runs_dir}: variants {primary!r} and {veto!r} share no seed; train both with one seed")
        out += [(finals[primary, s], finals[veto, s]) for s in seeds]
    return out


def consensus_table(records: list[dict]) -> Table:
    """One row per consensus evaluation: primary, veto, and fused vs primary mIoU and fragments per image."""
    table = Table(title="consensus: primary vetoed by veto")
    for column in ("primary", "veto", "mIoU primary", "mIoU fused", "fragments/img primary", "fragments/img fused"):
        table.add_column(column, justify="right", overflow="fold")
    for r in records:
        c = r["consensus"]
        table.add_row(*(f"{Path(c[k]).parent.parent.name}/{Path(c[k]).name}" for k in ("primary", "veto")),
                      pct(c["primary_metrics"]["miou"]), pct(r["miou"]),
                      f"{c['primary_metrics']['fragments_per_image']:.1f}", f"{r['fragments_per_image']:.1f}")
    return table
