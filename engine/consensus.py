"""Evaluate the consensus filter "primary vetoed by veto" (`metrics.consensus.cc_veto`, which defines it) over a
split: both models run on each batch of one loader, the fused maps are made on the host, and the primary, veto
and fused maps go through the same SegmentationMetrics path as `engine.evaluation.evaluate_model`.

    results = evaluate_consensus(primary, veto, loader, accelerator, protect=(4, 5, 6, 7))
    results["fused"]["miou"], results["fused"]["fragments_per_image"], results["primary"]["miou"]

evaluate.py --consensus / --consensus-pairs writes `engine.results_format.consensus_path(primary, veto run)`:
a standard results file of the fused maps plus a "consensus" object (`consensus_record`).
"""
from __future__ import annotations

import numpy as np
import torch
from accelerate.utils import gather_object
from rich.progress import Progress

from data_utils.classes import ClassTable
from engine.evaluation import BAR_COLUMNS, _live, predict
from metrics.consensus import cc_veto
from metrics.keys import METRIC_KEYS
from metrics.segmentation import SegmentationMetrics, host_image_stats
from utils.fileio import UserError

DEFAULT_PROTECT = ("fence", "pole", "traffic light", "traffic sign")  # thin classes a veto would erase
MAPS = ("primary", "veto", "fused")
REASSIGN = ("veto", "ignore")


def protect_indices(classes: ClassTable, names: list[str] | None, where: str) -> tuple[int, ...]:
    """Class names -> train ids of `classes`; None: those of DEFAULT_PROTECT the table has (none for a table
    without them). An unknown name is a UserError naming `where` (the checkpoint)."""
    if names is None:
        return tuple(i for i, name in enumerate(classes.names) if name in DEFAULT_PROTECT)
    unknown = [n for n in names if n not in classes.names]
    if unknown:
        raise UserError(f"{where}: --protect names {', '.join(map(repr, unknown))}, not classes of its table; "
                        f"use some of {', '.join(classes.names)}")
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
    bar = Progress(*BAR_COLUMNS, transient=True, disable=not (show_progress and accelerator.is_main_process))
    task = bar.add_task(description, total=len(loader))
    try:
        with _live(bar), torch.no_grad():
            for index, batch in enumerate(loader):
                images = batch["image"].to(accelerator.device, non_blocking=True)
                labels = batch["label"].to(accelerator.device, non_blocking=True)
                preds = {m: predict(model, images, size=labels.shape[-2:]).to(torch.uint8)
                         for m, model in (("primary", primary), ("veto", veto))}
                host = {m: p.cpu().numpy() for m, p in preds.items()}
                fused = np.stack([cc_veto(p, v, C, protect, max_drop_size, reassign, classes.ignore_index)
                                  for p, v in zip(host["primary"], host["veto"])])
                preds["fused"] = torch.from_numpy(fused).to(accelerator.device)
                stats = {}
                for m, pred in preds.items():
                    counts = metrics[m].image_stats(pred, labels)
                    counts.update({k: v.to(labels.device) for k, v in host_image_stats(pred, C).items()})
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
