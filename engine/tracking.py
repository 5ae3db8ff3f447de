"""A run's W&B side: one W&B run per run dir (`init_wandb`, `finish_wandb`; a SIGTERM marks it preempting:
`utils.signals.sigterm_as_ctrl_c`), and what it logs: the per-epoch row (the same dict goes to `RUN/metrics.jsonl`
through `utils.jsonl.EpochJsonl`) against "epoch", the per-step loss terms and LR (--log-every) against "step"
(`define_axes`, `step_row`), at each evaluation the per-class table and the sample images with class-labelled masks
(`per_class_table`, `wandb_sample_images`), and the final checkpoint as an artifact
(`log_checkpoint_artifact`, --wandb-artifacts).
docs/training.md lists the keys.

W&B without an account (`utils.wandb_mode`): unless `WANDB_MODE` is set (then wandb obeys it), a run is
`online` when an API key is found (`WANDB_API_KEY`, or the netrc entry `wandb login` writes for the W&B host)
and `offline` otherwise; offline runs are written under `RUN/wandb/` and can be uploaded later with `wandb sync`.
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.config import TrainConfig, config_to_dict, wandb_group
from metrics.keys import METRIC_KEYS, val_iou_key, val_key
from metrics.registry import METRICS
from utils.fileio import UserError, atomic_write_text, json_safe
from utils.wandb_mode import TRAIN_JOB_TYPE, wandb_init_mode

WANDB_RUN_ID_FILE = "wandb_run_id.txt"  # in the run dir: the id of its W&B run, from its first start on


def init_wandb(accelerator, cfg: TrainConfig, run_dir: Path, run_id: str | None) -> str | None:
    """Start the W&B tracker (name = `cfg.run_name`, group = `wandb_group(cfg)`); returns the W&B run id.

    One run dir, one W&B run: the id is kept in `RUN/wandb_run_id.txt` from the first start on, and a later
    start in the same run dir continues that W&B run (`resume="allow"`) instead of adding a second run to the
    group: a resume from a checkpoint, or a requeued SLURM task preempted before its first checkpoint.
    `run_id` (a checkpoint's meta.json) takes precedence over the file. Under `wandb agent`, wandb ignores both
    and takes the run id from the agent's environment (a run requeued by the sweep keeps its id, see
    `utils.signals.sigterm_as_ctrl_c`); the file then records that id.
    """
    id_file = run_dir / WANDB_RUN_ID_FILE
    if not run_id and id_file.is_file():
        run_id = id_file.read_text().strip() or None
    init = {"name": cfg.run_name, "group": wandb_group(cfg), "dir": str(run_dir), "job_type": TRAIN_JOB_TYPE,
            "tags": [f"variant-{cfg.variant}" if not cfg.loss else f"loss-{cfg.loss_label}", f"seed-{cfg.seed}",
                     cfg.backbone]}
    mode = wandb_init_mode()
    if mode is not None:  # None: WANDB_MODE is set and wandb obeys it
        init["mode"] = mode
    if cfg.wandb_entity:
        init["entity"] = cfg.wandb_entity
    if run_id:
        init.update(id=run_id, resume="allow")
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(cfg.wandb_project, config=config_to_dict(cfg), init_kwargs={"wandb": init})
    if not accelerator.is_main_process:
        return None
    run = accelerator.get_tracker("wandb", unwrap=True)
    define_axes(run)
    run_id = getattr(run, "id", None)
    if run_id and not (id_file.is_file() and id_file.read_text().strip() == run_id):
        atomic_write_text(id_file, run_id + "\n")
    return run_id


def finish_wandb(accelerator, exit_code: int) -> None:
    """Close the W&B run with `exit_code` (non-zero: W&B shows the run as failed, not finished); the later
    `accelerator.end_training()` then finds it closed. No-op without a W&B tracker."""
    if accelerator.is_main_process and any(t.name == "wandb" for t in accelerator.trackers):
        accelerator.get_tracker("wandb", unwrap=True).finish(exit_code=exit_code)


def val_metrics_row(metrics: dict) -> dict:
    """evaluate_model's dict -> flat W&B keys: val/<metric> for METRIC_KEYS (val/miou, val/boundary_f1, ...),
    val/iou/<class> (the names of metrics["classes"])."""
    row = {val_key(key): float(metrics[key]) for key in METRIC_KEYS}
    row.update({val_iou_key(name): float(v) for name, v in zip(metrics["classes"], metrics["iou"])})
    return row


# W&B's x-axes (`define_axes`): the per-epoch row's series (metrics.jsonl's keys) against "epoch", the per-step
# rows' (`step_row`) against "step", the optimizer step that both kinds of row carry.
EPOCH_PREFIXES = ("train", "val", "grad_norm", "grad_cos")
STEP_PREFIX = "train_step"  # train_step/loss, train_step/<term> (unweighted), train_step/lr


def define_axes(run) -> None:
    """Declare the x-axis of every series of a train.py run (`wandb.Run.define_metric`), so that the per-epoch
    rows and the per-step rows (--log-every) both plot: rows are logged without an explicit W&B step, and each
    chart uses its series' own axis, "epoch" or "step"."""
    run.define_metric("epoch")
    run.define_metric("step")
    for prefix in EPOCH_PREFIXES:
        run.define_metric(f"{prefix}/*", step_metric="epoch")
    run.define_metric(f"{STEP_PREFIX}/*", step_metric="step")


def step_row(step: int, lr: float, means: dict[str, float]) -> dict:
    """The per-step W&B row: the optimizer step, its LR, and each loss term's mean over the micro-batches since the
    previous per-step row (`engine.steps.EpochLossLog.interval_means`; "loss" is the weighted total)."""
    return {"step": step, f"{STEP_PREFIX}/lr": lr, **{f"{STEP_PREFIX}/{k}": v for k, v in means.items()}}


def per_class_table(metrics: dict):
    """evaluate_model's per-class values as a `wandb.Table`: one row per class (`metrics["classes"]`), one column
    per per-class metric of the registry (`metrics.registry`), named as in results.json ("iou",
    "boundary_iou_per_class", "hd95_per_class"), values as there (fractions; HD95 in pixels); an undefined value
    (the class absent) is empty."""
    import wandb

    keys = [m.per_class for m in METRICS if m.per_class is not None and m.per_class in metrics]
    data = [[name, *(json_safe(float(metrics[k][i])) for k in keys)] for i, name in enumerate(metrics["classes"])]
    return wandb.Table(columns=["class", *keys], data=data)


def wandb_sample_images(run_dir: Path, predictions: dict, count: int) -> list:
    """W&B images of the first `count` frames of the run's prediction sample (`engine.samples`: RUN/samples/ holds
    the image and ground truth; `predictions`, {name: (H, W) uint8 train ids}, this evaluation's), each with the
    ground truth and the prediction as masks labelled with the sample set's class names (255: "ignore").
    Raises UserError when RUN/samples/ is missing or corrupt (`engine.samples.read_sample_set`)."""
    import wandb

    from engine.samples import read_sample_set

    sample_set = read_sample_set(run_dir)
    class_labels = dict(enumerate(sample_set.class_names)) | {sample_set.ignore_index: "ignore"}
    images = []
    for name in [n for n in sample_set.names if n in predictions][:count]:
        masks = {"prediction": {"mask_data": predictions[name], "class_labels": class_labels},
                 "ground_truth": {"mask_data": sample_set.label(name), "class_labels": class_labels}}
        images.append(wandb.Image(sample_set.image(name), masks=masks, caption=name))
    return images


def evaluation_media(metrics: dict, run_dir: Path, predictions: dict, num_images: int, console) -> dict:
    """What train.py logs to W&B at an evaluation beside its row: the per-class table (`per_class_table`) and the
    first `num_images` sample images (`wandb_sample_images`; none when 0 or without predictions). A missing or corrupt
    RUN/samples/ costs the images only, said in one line on `console` (a rich Console)."""
    media = {val_key("per_class"): per_class_table(metrics)}
    if num_images and predictions:
        try:
            media[val_key("samples")] = wandb_sample_images(run_dir, predictions, num_images)
        except UserError as e:
            console.print(f"[yellow]W&B sample images skipped: {e}", soft_wrap=True)
    return media


def log_checkpoint_artifact(accelerator, cfg: TrainConfig, ckpt: Path) -> None:
    """Upload checkpoint `ckpt`'s weights, config and meta (`engine.checkpoint.WEIGHTS_ONLY_FILES`: what evaluate.py
    and predict.py need) and its results file to the W&B run as an artifact of type "model", named
    `checkpoint_artifact_name(cfg)`, aliased "final" and "epoch-N" (train.py --wandb-artifacts)."""
    import wandb

    from engine.checkpoint import WEIGHTS_ONLY_FILES, read_meta
    from engine.results_format import results_path

    meta = read_meta(ckpt)  # train.py just saved it
    artifact = wandb.Artifact(checkpoint_artifact_name(cfg), type="model",
                              metadata={"epoch": meta["epoch"], "run_name": cfg.run_name, "variant": cfg.loss_label,
                                        "seed": cfg.seed, "backbone": cfg.backbone, "head": cfg.head})
    for name in sorted(WEIGHTS_ONLY_FILES):
        artifact.add_file(str(ckpt / name), name=name)
    if results_path(ckpt).is_file():
        artifact.add_file(str(results_path(ckpt)), name=results_path(ckpt).name)
    accelerator.get_tracker("wandb", unwrap=True).log_artifact(artifact, aliases=["final", f"epoch-{meta['epoch']}"])


def checkpoint_artifact_name(cfg: TrainConfig) -> str:
    """"model-C_seed42": W&B artifact names allow letters, digits, "-", "_" and "." only."""
    return "model-" + re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.run_name)
