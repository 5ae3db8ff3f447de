"""Evaluate one saved checkpoint: rebuild the model from its config.json, load its weights, run
`engine.evaluation.evaluate_model` over a split and write `<checkpoint>.results.json` + `.per_image.npz`
(`<checkpoint>.inference.<mode>.results.json` + `.per_image.npz` for another mode than whole: engine.inference).

    ckpt = Path("runs/cityscapes/convnextv2_base/C_seed42/checkpoints/epoch_0160")
    record = evaluate_checkpoint(ckpt, EvalOptions(), accelerator)
    record["miou"], record["boundary_f1"]      # the results file's record (engine.results.write_results)

A checkpoint is a folder holding model.safetensors, config.json and meta.json (train.py writes them); anything
off (a missing file, corrupt weights, a config that does not match them) is a UserError naming the folder.
A split without labels (`data_utils.options.UNLABELLED_SPLITS`) gives predictions only, no metrics. The
predictions of the run's sample frames go beside the results file (`<checkpoint>.samples/`: engine.samples,
engine.sample_eval); `fill_samples` writes them for results computed without them, metrics untouched.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data_utils.cityscapes import LABEL_DIR, resolve_data_root
from data_utils.dataset import collate_batch
from data_utils.image_only import ImageOnlyDataset, collate_images
from data_utils.options import UNLABELLED_SPLITS
from engine.checkpoint import CHECKPOINT_NAME, WEIGHTS_NAME, load_weights_into, meta_problem, read_meta
from engine.config import TrainConfig, load_config
from engine.evaluation import evaluate_model
from engine.inference import WHOLE, Inference
from engine.predictions import PredictionWriter
from engine.results import write_results
from engine.results_format import inference_path
from engine.sample_eval import both, sample_names, shared_sample_names, write_sample_predictions
from engine.samples import SampleSink, read_predictions, read_sample_set, write_predictions
from metrics.per_image import PER_IMAGE_SUFFIX
from engine.setup import build_dataloader, build_model_from_config, class_table
from utils import UserError
from utils.signals import loader_worker_init


@dataclass(frozen=True)
class EvalOptions:
    """What evaluate.py's flags of the same names change in an evaluation; None: the checkpoint config's value."""

    split: str | None = None  # None: the config's val_split
    data_root: str | None = None
    hf_dataset: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    metrics_profile: str | None = None
    save_predictions: Path | None = None  # write test-server PNGs and overlays there (engine.predictions)
    inference: Inference = WHOLE  # engine.inference: whole, slide, flip, scales (--slide, --flip, --scales)
    samples: int | None = None  # predictions kept for K val images (engine.samples; 0: none); None: the config's

    @classmethod
    def from_namespace(cls, args) -> EvalOptions:
        """The options of an argparse namespace holding (at least) these names."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """`cfg` with the data and loader options given (data_root, hf_dataset, batch_size, num_workers)."""
        return dataclasses.replace(cfg, data_root=self.data_root or cfg.data_root,
                                   hf_dataset=self.hf_dataset or cfg.hf_dataset,
                                   batch_size=self.batch_size or cfg.batch_size,
                                   num_workers=cfg.num_workers if self.num_workers is None else self.num_workers)


def load_checkpoint(ckpt: Path):
    """(config, meta, model with the checkpoint's weights); a UserError naming the folder if anything is off."""
    if not ckpt.is_dir():
        raise UserError(f"{ckpt}: not a checkpoint folder; pass RUN/checkpoints/epoch_XXXX or a run folder")
    lacking = [name for name in (WEIGHTS_NAME, "config.json", "meta.json") if not (ckpt / name).is_file()]
    if len(lacking) == 3 and not CHECKPOINT_NAME.match(ckpt.name):
        raise UserError(f"{ckpt}: neither a checkpoint folder (RUN/checkpoints/epoch_XXXX) nor a run folder; "
                        "for every run below a folder use --all FOLDER")
    if lacking:
        raise UserError(f"{ckpt}: lacks {lacking[0]}; the checkpoint is incomplete (still being written, or copied "
                        "half-way): copy it again or evaluate another epoch")
    meta = read_meta(ckpt)
    if meta is None:
        raise UserError(f"{ckpt}: {meta_problem(ckpt)}; the checkpoint is corrupt: copy it again or evaluate "
                        "another epoch")
    cfg = load_config(ckpt / "config.json")
    try:
        model = build_model_from_config(cfg)
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. a backbone name this timm does not know
        raise UserError(f"{ckpt / 'config.json'}: cannot build the model ({e})") from None
    load_weights_into(model, ckpt / WEIGHTS_NAME)  # strict, and a truncated file or wrong shapes -> UserError
    return cfg, meta, model


def build_eval_loader(cfg: TrainConfig, split: str):
    """The split's loader in dataset order; a split without labels gets an image-only loader."""
    root = None if cfg.hf_dataset else resolve_data_root(cfg.data_root)
    if root is not None and split in UNLABELLED_SPLITS and not (root / LABEL_DIR / split).is_dir():
        return torch.utils.data.DataLoader(ImageOnlyDataset(root, split), batch_size=cfg.batch_size,
                                           num_workers=cfg.num_workers, collate_fn=collate_images,
                                           worker_init_fn=loader_worker_init)
    return build_dataloader(cfg, split, train=False)


def evaluate_checkpoint(ckpt: Path, options: EvalOptions, accelerator, show_progress: bool = True) -> dict:
    """Evaluate one checkpoint; returns the results record (or {"num_images", "predictions"} for a split without
    labels). The main process writes the results file (`inference_path(ckpt, tag)`) and its per-image file."""
    cfg, meta, model = load_checkpoint(ckpt)
    split = options.split or cfg.val_split
    loader = build_eval_loader(options.apply(cfg), split)
    samples = SampleSink(shared_sample_names(accelerator, ckpt.parent.parent, loader.dataset, split,
                                             sample_count(options, cfg, split), num_workers=loader.num_workers))
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = accelerator.prepare_data_loader(loader)
    writer = PredictionWriter(options.save_predictions, class_table(cfg)) if options.save_predictions else None
    start = time.perf_counter()
    try:
        metrics = evaluate_model(model, loader, accelerator, with_metrics=split not in UNLABELLED_SPLITS,
                                 on_predictions=both(writer, samples if samples.names else None),
                                 description=f"{ckpt.parent.parent.name}/{ckpt.name}",
                                 show_progress=show_progress,
                                 metrics_profile=options.metrics_profile or cfg.metrics_profile,
                                 inference=options.inference)
    finally:
        written = writer.close() if writer else 0
        accelerator.free_memory()  # drop the prepared model and loader before the next checkpoint
    seconds = time.perf_counter() - start
    if split in UNLABELLED_SPLITS:
        return {"num_images": metrics["num_images"], "predictions": written}
    record = {"checkpoint": str(ckpt), "seconds": seconds, **{k: v for k, v in metrics.items() if k != "per_image"}}
    if accelerator.is_main_process:
        tag = options.inference.tag  # "whole": the usual file names; else the mode is in both names
        record = write_results(inference_path(ckpt, tag), metrics, cfg=cfg, epoch=meta["epoch"], checkpoint=ckpt,
                               split=split, seconds=seconds, per_image_file=inference_path(ckpt, tag, PER_IMAGE_SUFFIX),
                               extra={"inference": options.inference.to_dict()})
    if samples.names:  # after the results: a kill in between leaves them to `evaluate.py --all` (fill_samples)
        write_sample_predictions(inference_path(ckpt, options.inference.tag), split, samples, accelerator,
                                 class_table(cfg).palette)
    return record


def sample_count(options: EvalOptions, cfg: TrainConfig, split: str) -> int:
    """How many prediction samples an evaluation of `cfg`'s checkpoint on `split` keeps: --samples, else the
    config's; none for another split than the run's val split (the sample set is of that split)."""
    if split != cfg.val_split or split in UNLABELLED_SPLITS:
        return 0
    return cfg.samples if options.samples is None else options.samples


def samples_pending(ckpt: Path, options: EvalOptions) -> bool:
    """Whether `ckpt`'s (valid) results of `options`' inference mode lack their prediction samples: none, damaged,
    or other than the first K (`sample_count`) of the run's sample set (RUN/samples/: missing, damaged or smaller
    counts as lacking too)."""
    try:
        cfg = load_config(ckpt / "config.json")
    except UserError:
        return False  # not evaluable again either: left as it is
    k = sample_count(options, cfg, options.split or cfg.val_split)
    if k == 0:
        return False
    try:
        run = read_sample_set(ckpt.parent.parent)
        kept = read_predictions(inference_path(ckpt, options.inference.tag))
    except UserError:
        return True
    wanted = min(k, run.num_frames)
    return len(run.names) < wanted or kept.names != run.names[:wanted]


def fill_samples(ckpt: Path, options: EvalOptions, accelerator) -> Path:
    """Write the prediction samples of `ckpt`'s results without recomputing its metrics: only the K sample
    images go through the model (one process); returns the samples folder."""
    cfg, _, model = load_checkpoint(ckpt)
    split = options.split or cfg.val_split
    eval_cfg = options.apply(cfg)
    dataset = build_eval_loader(eval_cfg, split).dataset
    names = sample_names(ckpt.parent.parent, dataset, split, sample_count(options, cfg, split),
                         num_workers=eval_cfg.num_workers)
    index = {name: i for i, name in enumerate(dataset.names)}
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [index[n] for n in names]),
                                         batch_size=1, collate_fn=collate_batch)  # frames may differ in size
    sink = SampleSink(names)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    try:
        evaluate_model(model, loader, accelerator, with_metrics=False, on_predictions=sink, show_progress=False,
                       inference=options.inference)
    finally:
        accelerator.free_memory()
    return write_predictions(inference_path(ckpt, options.inference.tag), split, sink.predictions,
                             class_table(cfg).palette, names=names)
