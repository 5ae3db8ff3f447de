"""Train ConvNeXt-V2 + UPerNet (or another --head) on Cityscapes with one loss variant; defaults are the paper's
recipe.

    accelerate launch train.py --variant B --seed 123        # the paper's recipe, 1..N GPUs
    accelerate launch train.py --loss "ce=1,lovasz=0.5"      # any recipe of the registered loss terms
    python train.py --preset demo                            # synthetic data, tiny model, 2 CPU cores, < 3 min

Reads top to bottom: config -> Accelerator -> resume checks -> data, model, loss, optimizer, prepare
(engine.setup.build_training) -> resume -> epoch loop (train, evaluate, log, checkpoint) -> end_training;
then the micro-step (`train_micro_step`: forward, loss, backward, optimizer step). The logic lives in the
packages; what is here is the order of things. Output: RUN/config.json, RUN/metrics.jsonl (one line per epoch),
RUN/checkpoints/epoch_XXXX/ (+ epoch_XXXX.results.json, epoch_XXXX.per_image.npz, epoch_XXXX.samples/: the
predictions of --samples val frames, whose images and ground truth are in RUN/samples/) with RUN = --out or
runs/<dataset>/<backbone>/<run name> (engine.config.TrainConfig.run_dir).
"""
from __future__ import annotations

import time
from contextlib import nullcontext

from engine.config import check_paths, extension_note, load_config, parse_args, save_config
from utils.fileio import EXIT_INTERRUPTED, UserError, make_output_dir, parse_args_first, run_main

if __name__ == "__main__":
    # --help, rejected flags and missing files answer here, before torch & co. load (~5 s, 30 s on a busy node)
    parse_args_first(parse_args, lambda parsed: check_paths(parsed[0]))

import torch
from rich.console import Console
from rich.table import Table

from engine.checkpoint import (TrainingProgress, checkpoint_path, find_resumable_checkpoint,
                               read_meta, register_checkpoint_hooks, resume_checkpoint, resume_from, save_checkpoint)
from engine.evaluation import evaluate_model
from engine.results import metrics_table, results_path, write_results
from engine.sample_eval import shared_sample_names, write_sample_predictions
from engine.samples import SampleSink
from engine.schedule import get_lr
from engine.setup import build_accelerator, build_training, configure_torch, ensure_demo_data, with_class_table
from engine.steps import LossReading, StepState, augmentation_seed, device_batch
from engine.tracking import (evaluation_media, finish_wandb, init_wandb, log_checkpoint_artifact, step_row,
                             val_metrics_row)
from losses.gradients import GradStatsLog, term_gradient_stats
from metrics.keys import val_key
from metrics.registry import METRICS
from utils.bars import Bars
from utils.console import plural, progress_columns
from utils.dirlock import discard_unused, folder_lock, missing_folders
from utils.jsonl import METRICS_JSONL, EpochJsonl
from utils.signals import sigterm_as_ctrl_c

# The loop's own bookkeeping does not make the host wait for the device each step: the loss terms and the
# non-finite check stay on the device (engine.steps.EpochLossLog, GradientMask), and the host reads them
# (progress bar, non-finite stop) every HOST_READ_EVERY micro-steps, at each W&B per-step row (--log-every)
# and at the end of each epoch, one transfer each time.
HOST_READ_EVERY = 20


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------------------------------------ config
    cfg, require_resume = parse_args(argv)
    check_paths(cfg)  # as parse_args_first does before the imports (main() may be called in-process)

    # ------------------------------------------------------------------------------------- accelerator
    accelerator = build_accelerator(cfg)  # + torch.compile on CUDA (cfg.compile), non-blocking batch copies
    # One run per run dir: the main process holds RUN/.lock until it ends (a kill -9 releases it too).
    created = missing_folders(cfg.run_dir)  # the run dir and the parents --out creates
    if accelerator.is_main_process:
        make_output_dir(cfg.run_dir, "--out")  # a read-only or blocked --out: one line, before any work
    try:
        with folder_lock(cfg.run_dir, "train.py", "wait for it to finish or stop it, or pass another --out") \
                if accelerator.is_main_process else nullcontext(), sigterm_as_ctrl_c():  # SLURM's stop: resumable
            return train(cfg, require_resume, accelerator)
    except BaseException:
        if created and accelerator.is_main_process:
            discard_unused(cfg.run_dir, created[1:])  # an input error leaves no run dir (nor its new parents)
        raise


def train(cfg, require_resume: bool, accelerator) -> int:
    """The run itself, under the run-dir lock taken by `main`."""
    run_dir = cfg.run_dir
    configure_torch(cfg)  # seeds, CPU threads, cuDNN kernel choice
    console = Console(soft_wrap=True, quiet=not accelerator.is_main_process)  # log lines are not cut at 80 columns
    with accelerator.main_process_first():  # the first process generates the demo data, the others reuse it
        if cfg.demo_data:
            ensure_demo_data(cfg)
        cfg = with_class_table(cfg)  # the dataset's class names and colours, recorded in every saved config

    # Resume from the run dir's newest complete state, if any; refuse to mix two different runs in one dir.
    resume_ckpt, finished = resume_checkpoint(cfg, accelerator.num_processes, require=require_resume)
    if finished:
        console.print(f"{run_dir}: already trained for {plural(cfg.epochs, 'epoch')} ({resume_ckpt.name}); nothing "
                      "to do")
        return 0
    if resume_ckpt is not None:  # another --epochs extends the run: say how
        note = extension_note(load_config(resume_ckpt / "config.json"), cfg, read_meta(resume_ckpt)["epoch"])
        if note:
            console.print(f"{run_dir}: {note}")

    # ------------------------------------------ data, model, loss, optimizer, prepare (engine.setup.build_training)
    training = build_training(cfg, accelerator, load_pretrained=resume_ckpt is None, check_data=True)
    state, train_loader, val_loader = training.step, training.train_loader, training.val_loader
    model, loss_fn = state.model, state.loss_fn
    train_dataset, val_dataset = train_loader.dataset, val_loader.dataset
    console.print(f"checked the {plural(training.frames_checked, 'frame')} of {cfg.train_split} and {cfg.val_split} "
                  f"(headers; val label ids) in {training.check_seconds:.1f} s")
    if accelerator.is_main_process:  # only now: an input error above leaves nothing in the run dir
        save_config(cfg, run_dir / "config.json")
    # the val frames whose predictions are kept with each checkpoint's results (RUN/samples/, engine.samples)
    sample_names = shared_sample_names(accelerator, run_dir, val_dataset, cfg.val_split, cfg.samples,
                                       presence=training.val_class_presence, num_workers=cfg.num_workers)

    # ------------------------------------------------------------------------------------------ resume
    progress = TrainingProgress()  # epoch and optimizer step, saved inside the accelerate state
    accelerator.register_for_checkpointing(progress)
    register_checkpoint_hooks(accelerator)
    wandb_run_id = None
    if resume_ckpt is not None:
        wandb_run_id = resume_from(accelerator, resume_ckpt, progress).get("wandb_run_id")
        console.print(f"resumed from {resume_ckpt} (epoch {progress.epoch}, optimizer step {progress.step})")
    history = EpochJsonl(run_dir / METRICS_JSONL, keep_through_epoch=progress.epoch) \
        if accelerator.is_main_process else None
    grad_log = GradStatsLog(run_dir / "grad_stats.jsonl", keep_through_epoch=progress.epoch) \
        if accelerator.is_main_process and cfg.log_grad_norms else None
    if cfg.wandb:
        wandb_run_id = init_wandb(accelerator, cfg, run_dir, wandb_run_id)
    console.print(f"{cfg.run_name}: {cfg.backbone} + {cfg.head}, loss {loss_fn}, {len(train_dataset)} train / "
                  f"{plural(len(val_dataset), 'val frame')}, "
                  f"{plural(accelerator.num_processes, 'process', 'processes')} on {accelerator.device.type}, "
                  f"{plural(training.steps_per_epoch, 'optimizer step')}/epoch, run dir {run_dir}")

    # ------------------------------------------------------------------------------------------- train
    bars = Bars(*progress_columns(info=True), console=console, disable=not accelerator.is_main_process)
    epoch_bar = bars.add_task("epochs", total=cfg.epochs, completed=progress.epoch, info="")
    step_bar = bars.add_task("steps", total=len(train_loader), info="")
    epoch = progress.epoch
    try:
        bars.start()
        for epoch in range(progress.epoch, cfg.epochs):  # 0-based; logged as epoch + 1 (epochs completed)
            model.train()
            train_loader.set_epoch(epoch)  # data order = f(seed, epoch)
            train_dataset.set_epoch(epoch)  # flips = f(seed, epoch, index)
            loss_fn.weights.update(training.loss_schedule.weights_at(epoch))  # λ_b schedule = f(epoch)
            bars.reset(step_bar, total=len(train_loader), description=f"epoch {epoch + 1}/{cfg.epochs}")
            if accelerator.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(accelerator.device)
            loss_log, num_images = state.new_epoch(), 0
            epoch_start = time.perf_counter()
            for batch_index, batch in enumerate(train_loader):
                micro_step = epoch * len(train_loader) + batch_index
                seed = augmentation_seed(cfg.seed, accelerator.process_index, micro_step)
                images, labels, sdt = device_batch(batch, state.augment, seed, state.sdt_classes, cfg.channels_last)
                lr = get_lr(progress.step, training.total_steps, cfg.lr, cfg.poly_power, cfg.min_lr, cfg.warmup_steps)
                # gradient statistics on the last micro-batch of every log_grad_norms-th optimizer step
                measure = bool(cfg.log_grad_norms) and progress.step % cfg.log_grad_norms == 0
                grad_stats = train_micro_step(state, images, labels, sdt, lr=lr,
                                              where=(progress.step, epoch + 1, batch_index), grad_stats=measure)
                if grad_log is not None and grad_stats:  # the main process's micro-batch
                    grad_log.append(grad_stats, epoch=epoch + 1, step=progress.step, variant=cfg.loss_label,
                                    seed=cfg.seed, lambda_boundary=cfg.lambda_boundary, weights=loss_fn.weights,
                                    boundary_schedule=cfg.boundary_schedule)
                if accelerator.sync_gradients:
                    progress.step += 1
                num_images += images.shape[0] * accelerator.num_processes
                bars.advance(step_bar)
                # W&B's per-step row every log_every optimizer steps: the terms' means since the previous one
                log_step = bool(cfg.wandb and cfg.log_every and accelerator.sync_gradients
                                and progress.step % cfg.log_every == 0)
                if (batch_index + 1) % HOST_READ_EVERY == 0 or batch_index + 1 == len(train_loader) or log_step:
                    reading = loss_log.read()  # the one host sync (HOST_READ_EVERY)
                    check_nonfinite(reading, progress, cfg, console)  # raises past --max-nonfinite
                    bars.update(step_bar, info=f"mean loss {reading.means['loss']:.4f}  lr {lr:.2e}")
                if log_step:
                    accelerator.log(step_row(progress.step, lr, loss_log.interval_means()))
            train_seconds = time.perf_counter() - epoch_start  # the last read waited for the device

            # One dict per epoch: appended to metrics.jsonl and sent unchanged to W&B.
            progress.epoch = epoch + 1
            row = {"epoch": progress.epoch, "step": progress.step, "train/lr": lr,
                   "train/images_per_s": num_images / train_seconds, "train/epoch_seconds": train_seconds,
                   "train/nonfinite_skipped": progress.nonfinite_skipped}
            weights = {**loss_fn.weights, "aux": cfg.aux_weight}
            row.update({f"train/loss_weight/{k}": w for k, w in loss_fn.weights.items()})
            for k, mean in reading.means.items():
                row[f"train/{k}"] = mean  # "train/loss" is the weighted total, the others are unweighted
                if k in weights:
                    row[f"train/weighted/{k}"] = weights[k] * mean
            if accelerator.device.type == "cuda":
                peak = torch.tensor(torch.cuda.max_memory_allocated(accelerator.device) / 2**30,
                                    device=accelerator.device)
                row["train/peak_memory_gib"] = accelerator.reduce(peak, "max").item()

            is_last = progress.epoch == cfg.epochs
            save_now = progress.epoch % cfg.checkpoint_every == 0 or is_last
            if progress.epoch % cfg.eval_every == 0 or is_last or save_now:
                eval_start = time.perf_counter()
                samples = SampleSink(sample_names)  # samples.predictions: {name: (H, W) uint8} of this process
                metrics = evaluate_model(model, val_loader, accelerator, metrics_profile=cfg.metrics_profile,
                                         on_predictions=samples if sample_names else None)
                row.update(val_metrics_row(metrics))  # val/miou, val/boundary_f1, ..., val/iou/<class>
                row[val_key("seconds")] = time.perf_counter() - eval_start
            media = {}  # W&B only: the per-class table and the sample images of this evaluation
            log_media = cfg.wandb and val_key("miou") in row
            predictions = samples.gather(accelerator) if log_media and cfg.log_images and sample_names else {}
            if accelerator.is_main_process:
                if grad_log is not None:
                    row.update(grad_log.epoch_means(progress.epoch))  # grad_norm/..., grad_cos/...: epoch means
                history.append(row)
                if log_media:
                    media = evaluation_media(metrics, run_dir, predictions, cfg.log_images, console)
            accelerator.log({**row, **media})  # W&B's x-axis: the row's "epoch" (engine.tracking.define_axes)
            console.print(epoch_summary(row, cfg.epochs))

            if save_now:
                ckpt = save_checkpoint(accelerator, cfg, progress, run_dir, wandb_run_id)
                if accelerator.is_main_process:
                    write_results(results_path(ckpt), metrics, cfg=cfg, epoch=progress.epoch, checkpoint=ckpt,
                                  split=cfg.val_split, seconds=row[val_key("seconds")])
                if sample_names:  # every process: the sample's predictions are gathered
                    write_sample_predictions(results_path(ckpt), cfg.val_split, samples, accelerator,
                                             val_dataset.classes.palette)
            bars.update(epoch_bar, completed=progress.epoch)
        if cfg.wandb and cfg.wandb_artifacts and accelerator.is_main_process:  # the final checkpoint, uploaded
            log_checkpoint_artifact(accelerator, cfg, checkpoint_path(run_dir, cfg.epochs))
    except KeyboardInterrupt:  # Ctrl-C: one line, the W&B run closed as failed, the shell's code for Ctrl-C
        bars.clear()
        finish_wandb(accelerator, exit_code=EXIT_INTERRUPTED)
        console.print(f"interrupted at epoch {epoch + 1}, optimizer step {progress.step}; the same command resumes "
                      f"from {find_resumable_checkpoint(run_dir) or 'the start (no checkpoint yet)'}")
        return EXIT_INTERRUPTED
    except BaseException:
        bars.clear()  # an error line follows: no stale bars above it
        raise
    finally:
        bars.stop()
        accelerator.end_training()
        # Drop the prepared loaders now: their persistent workers stop when main returns. Left to a later
        # garbage collection (in-process callers: tests, notebooks), each worker costs a 5 s join timeout.
        accelerator.free_memory()
    if accelerator.is_main_process:
        console.print(final_table(history.rows, cfg.run_name))
    console.print(f"done: {checkpoint_path(run_dir, cfg.epochs)}")
    return 0


def train_micro_step(state: StepState, images: torch.Tensor, labels: torch.Tensor, sdt: torch.Tensor | None,
                     lr: float, where=None, grad_stats: bool = False) -> dict[str, torch.Tensor]:
    """One micro-batch: forward, loss, backward, and at the end of an accumulation window the optimizer step.

    Args: `state` (engine.steps.StepState, from engine.setup.build_training); the tensors from
        `engine.steps.device_batch`: images (N, 3, H, W) normalised, labels (N, H, W) int64, sdt (N, C, H, W)
        int8 or None; lr: this optimizer step's LR; where: what the loss log reports for a bad micro-batch;
        grad_stats: measure each main-head term's gradient statistics if this micro-batch closes a window
        (`losses.gradients.term_gradient_stats`: one extra backward per term, the parameters untouched).
    Returns the gradient statistics ({} unless measured). Afterwards `accelerator.sync_gradients` says whether
    the optimizer stepped. bench/bench_train.py times this function.

    `accelerator.accumulate` decides whether this micro-step closes an accumulation window (then gradients
    are all-reduced and the optimizer steps) or only adds its gradient (DDP's sync skipped); it divides the
    loss by --grad-accum, so accum 4 x batch 1 gives the mean of the 4 per-batch gradients. The `mask` calls
    undo a micro-batch with a non-finite loss on the device (--max-nonfinite K > 0; no-ops when K = 0:
    engine.steps.GradientMask).
    """
    cfg, accelerator, model, optimizer, mask = state.cfg, state.accelerator, state.model, state.optimizer, state.mask
    with accelerator.accumulate(model):  # the forward inside too, as DDP's no_sync requires
        mask.save_buffers()  # BatchNorm statistics, put back if this micro-batch is bad
        measure = grad_stats and accelerator.sync_gradients
        # Always with the features (UPerNet's and SegFormer's: a ReLU output the backward keeps anyway), so a
        # compiled model runs one graph whether or not this step measures (a bool argument is a compile guard).
        out = model(images, return_features=True)  # {"logits", "aux_logits", "features"}
        terms = state.loss_fn(out["logits"], labels, sdt)  # {"loss": weighted total, <term>: each unweighted}
        stats = term_gradient_stats(terms, out["logits"], out["features"]) if measure else {}
        if "aux_logits" in out and state.aux_loss_fn is not None and cfg.aux_weight > 0:
            terms["aux"] = state.aux_loss_fn(out["aux_logits"], labels, sdt)["loss"]
            terms["loss"] = terms["loss"] + cfg.aux_weight * terms["aux"]
        # On the device, no host sync: the terms into the epoch's log; with the mask on, all processes' terms
        # gathered (they must agree on undoing a bad micro-batch) and keep = all finite.
        mask.set_keep(state.loss_log.update(terms, where=where))
        accelerator.backward(terms["loss"])
        mask.restore_buffers()
        if accelerator.sync_gradients:  # the window's last micro-batch: LR, clip, step
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            mask.skip_step_unless_kept(optimizer)  # a window that kept no micro-batch does not step
        optimizer.step()  # accelerate's wrapper skips it while gradients are still being accumulated
        optimizer.zero_grad(set_to_none=True)
    return stats


def check_nonfinite(reading: LossReading, progress: TrainingProgress, cfg, console: Console) -> None:
    """Count the micro-batches with a non-finite loss since the last read; stop past --max-nonfinite.

    Their gradients were already dropped on the device (GradientMask). The stop comes at the first read
    after the bad micro-batch (at most HOST_READ_EVERY - 1 micro-steps later, and always before the
    epoch's evaluation and checkpoint), so nothing is saved after a bad step; the message names the first
    bad micro-batch since the previous read.
    """
    if not reading.num_bad:
        return
    progress.nonfinite_skipped += reading.num_bad
    (step, epoch, batch_index), values = reading.first_bad
    where = f"optimizer step {step} (epoch {epoch}, batch {batch_index})"
    report = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    if progress.nonfinite_skipped > cfg.max_nonfinite:
        raise UserError(f"non-finite loss at {where}: {report} ("
                        f"{plural(progress.nonfinite_skipped, 'non-finite micro-batch', 'non-finite micro-batches')} "
                        f"so far); last good checkpoint: "
                        f"{find_resumable_checkpoint(cfg.run_dir) or 'none'}. Lower --lr, or allow skipping "
                        f"with --max-nonfinite K ({cfg.max_nonfinite} now)")
    console.print(f"[yellow]skipped {plural(reading.num_bad, 'micro-batch', 'micro-batches')} with a non-finite loss, "
                  f"the first at "
                  f"{where}: {report} ({progress.nonfinite_skipped}/{cfg.max_nonfinite})")


def epoch_summary(row: dict, epochs: int) -> str:
    """One console line per epoch: the total, each unweighted term (the row's train/weighted/<term> keys)."""
    terms = " ".join(f"{k} {row[f'train/{k}']:.4f}" for k in
                     (key.removeprefix("train/weighted/") for key in row if key.startswith("train/weighted/")))
    line = (f"epoch {row['epoch']}/{epochs} | loss {row['train/loss']:.4f} ({terms}) | lr {row['train/lr']:.2e} | "
            f"{row['train/images_per_s']:.2f} img/s | {row['train/epoch_seconds']:.0f} s")
    if "train/peak_memory_gib" in row:
        line += f" | {row['train/peak_memory_gib']:.1f} GiB"
    if val_key("miou") in row:
        line += " | val " + " ".join(f"{m.short} {m.show(row[val_key(m.key)])}" for m in METRICS)
    return line


def final_table(rows: list[dict], title: str) -> Table:
    """Final table: each val metric (percent) at the last evaluated epoch and at its best epoch."""
    evaluated = [r for r in rows if r.get(val_key("miou")) is not None]
    last, best = evaluated[-1], max(evaluated, key=lambda r: r[val_key("miou")])
    return metrics_table({f"last (epoch {last['epoch']})": last, f"best mIoU (epoch {best['epoch']})": best},
                         f"{title}: validation metrics (%)", prefix=val_key(""))


if __name__ == "__main__":
    run_main(main)
