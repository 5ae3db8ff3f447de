"""A run's W&B side: one W&B run per run dir (`init_wandb`, `finish_wandb`), SIGTERM handled as Ctrl-C with
the run marked preempting (`utils.signals.sigterm_as_ctrl_c`, re-exported here), and the validation row and
prediction overlays it logs; the same per-epoch dict goes to `RUN/metrics.jsonl` through `utils.jsonl.EpochJsonl`.

W&B without an account (`utils.wandb_mode`): unless `WANDB_MODE` is set (then wandb obeys it), a run is
`online` when an API key is found (`WANDB_API_KEY`, or the netrc entry `wandb login` writes for the W&B host)
and `offline` otherwise; offline runs are written under `RUN/wandb/` and can be uploaded later with `wandb sync`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.config import TrainConfig, config_to_dict, wandb_group
from metrics.keys import METRIC_KEYS, val_iou_key, val_key
from utils.fileio import atomic_write_text
from utils.signals import sigterm_as_ctrl_c  # noqa: F401  (re-exported: train.py marks preempted runs)
from utils.wandb_mode import TRAIN_JOB_TYPE, wandb_init_mode
from utils.wandb_mode import wandb_logged_in  # noqa: F401  (re-exported)

WANDB_RUN_ID_FILE = "wandb_run_id.txt"  # in the run dir: the id of its W&B run, from its first start on


def init_wandb(accelerator, cfg: TrainConfig, run_dir: Path, run_id: str | None) -> str | None:
    """Start the W&B tracker (name = `cfg.run_name`, group = `wandb_group(cfg)`); returns the W&B run id.

    One run dir, one W&B run: the id is kept in `RUN/wandb_run_id.txt` from the first start on, and a later
    start in the same run dir continues that W&B run (`resume="allow"`) instead of adding a second run to the
    group: a resume from a checkpoint, or a requeued SLURM task preempted before its first checkpoint.
    `run_id` (a checkpoint's meta.json) takes precedence over the file. Under `wandb agent`, wandb ignores both
    and takes the run id from the agent's environment (a run requeued by the sweep keeps its id, see
    `sigterm_as_ctrl_c`); the file then records that id.
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


@torch.no_grad()
def prediction_overlays(model, dataset, num_images: int, device, class_names=None) -> list:
    """W&B images of the first `num_images` val frames with prediction and ground-truth masks.

    `dataset` is the val split's `SegmentationDataset` (`build_dataloader(cfg, split, train=False).dataset`),
    whose items carry uint8 (3, H, W) images; `class_names` name the mask values (default: the dataset's
    `classes`).
    """
    import wandb

    from data_utils.classes import IGNORE_INDEX
    from engine.inference import predict

    names = dataset.classes.names if class_names is None else class_names
    class_labels = dict(enumerate(names)) | {IGNORE_INDEX: "ignore"}
    was_training = model.training
    model.eval()
    images = []
    for index in range(min(num_images, len(dataset))):
        item = dataset[index]
        image = item["image"]  # (3, H, W) uint8
        if image.dtype != torch.uint8:
            raise ValueError(f"prediction_overlays needs uint8 images (the val dataset's), got {image.dtype}")
        rgb = image.permute(1, 2, 0).numpy()  # (H, W, 3)
        pred = predict(model, image[None].to(device))[0].byte().cpu().numpy()  # engine.inference: the eval path
        masks = {"prediction": {"mask_data": pred, "class_labels": class_labels},
                 "ground_truth": {"mask_data": item["label"].byte().numpy(), "class_labels": class_labels}}
        images.append(wandb.Image(rgb, masks=masks, caption=item["name"]))
    model.train(was_training)
    return images
