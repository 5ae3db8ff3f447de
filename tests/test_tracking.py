"""engine.tracking (the W&B run of train.py) and utils.wandb_mode (the one credential check of train.py and
aggregate.py). Nothing here starts wandb: init_wandb is driven with a stand-in accelerator that records its call."""
from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from engine.config import TrainConfig, parse_args
from engine.tracking import init_wandb, wandb_group
from utils.wandb_mode import wandb_init_mode, wandb_logged_in


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """No WANDB_MODE, no API key, the default host, and a netrc path in tmp_path that does not exist yet."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


# ---------------------------------------------------------------------------------------------------- credentials
def test_logged_in_by_api_key_or_netrc_entry_for_the_wandb_host(no_login, monkeypatch):
    assert not wandb_logged_in() and wandb_init_mode() == "offline"  # no netrc file at all
    no_login.write_text("machine example.org login user password pw\n")  # another host only
    assert not wandb_logged_in() and wandb_init_mode() == "offline"
    no_login.write_text("machine example.org login user password pw\n"
                        "machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    assert wandb_logged_in() and wandb_init_mode() == "online"
    # a self-hosted server: the entry must be for the host of WANDB_BASE_URL
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com:8443")
    assert not wandb_logged_in()
    no_login.write_text("machine wandb.example.com login user password pw\n")
    assert wandb_logged_in()


def test_api_key_and_malformed_netrc(no_login, monkeypatch):
    no_login.write_text("machine api.wandb.ai login user password pw bogus\n")  # NetrcParseError
    assert not wandb_logged_in()  # a malformed file is no login, not a crash
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_logged_in() and wandb_init_mode() == "online"


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_explicit_wandb_mode_is_left_to_wandb(no_login, monkeypatch, mode):
    no_login.write_text("machine api.wandb.ai login user password pw\n")
    monkeypatch.setenv("WANDB_MODE", mode)
    assert wandb_init_mode() is None  # wandb.init(mode=None) reads WANDB_MODE itself


# ---------------------------------------------------------------------------------------------------- the W&B run
@pytest.mark.parametrize("flags, name, group", [
    ([], "C_seed42", "C"),
    (["--variant", "A", "--seed", "123"], "A_seed123", "A"),
    (["--lambda-boundary", "0.05"], "C_lb0.05_seed42", "C_lb0.05"),
    (["--variant", "D", "--lambda-dice", "0.5", "--lambda-boundary", "0.1", "--seed", "456"],
     "D_ld0.5_lb0.1_seed456", "D_ld0.5_lb0.1"),
    (["--boundary-schedule", "steal"], "C_steal_seed42", "C_steal"),
    (["--boundary-schedule", "linear", "--lambda-boundary", "0.5", "--seed", "7"], "C_lb0.5_linear_seed7",
     "C_lb0.5_linear"),
])
def test_group_is_the_run_name_without_the_seed(flags, name, group):
    cfg, _ = parse_args(flags)
    assert (cfg.run_name, wandb_group(cfg)) == (name, group)
    # the seeds of one setting share the group; another setting never does
    assert wandb_group(dataclasses.replace(cfg, seed=cfg.seed + 1)) == group
    assert wandb_group(dataclasses.replace(cfg, lambda_boundary=0.3)) != group


class FakeRun:
    """A wandb Run's id, and its define_metric calls recorded."""

    def __init__(self, run_id: str):
        self.id, self.defined = run_id, {}

    def define_metric(self, name, step_metric=None):
        self.defined[name] = step_metric


class RecordingAccelerator:
    """What init_wandb uses of an accelerate.Accelerator, recording the tracker arguments."""

    is_main_process = True

    def init_trackers(self, project, config, init_kwargs):
        self.project, self.config, self.init_kwargs = project, config, init_kwargs

    def get_tracker(self, name, unwrap):
        self.run = FakeRun("abc123")
        return self.run


def test_init_wandb_arguments(no_login, tmp_path, monkeypatch):
    cfg = TrainConfig(lambda_boundary=0.05, seed=123, wandb_entity="team")
    accelerator = RecordingAccelerator()
    assert init_wandb(accelerator, cfg, tmp_path / "run", run_id="old1") == "abc123"
    init = accelerator.init_kwargs["wandb"]
    assert (init["name"], init["group"], init["mode"]) == ("C_lb0.05_seed123", "C_lb0.05", "offline")
    assert (init["entity"], init["id"], init["resume"]) == ("team", "old1", "allow")
    assert accelerator.project == cfg.wandb_project and accelerator.config["lambda_boundary"] == 0.05
    assert accelerator.run.defined["train_step/*"] == "step" and accelerator.run.defined["val/*"] == "epoch"
    assert (tmp_path / "run").is_dir()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    init_wandb(accelerator, cfg, tmp_path / "another_run", run_id=None)  # a new run dir: no id to continue
    assert "mode" not in accelerator.init_kwargs["wandb"] and "id" not in accelerator.init_kwargs["wandb"]


@pytest.fixture(scope="module")
def offline_run(tiny_data, tmp_path_factory):
    """One 2-epoch tiny training with W&B offline (--log-every 3, --wandb-artifacts, the sample images at their
    default 4): (run dir, the offline run read from its .wandb file). No network: WANDB_MODE=offline, wandb's
    folders in tmp."""
    from tests.tiny_training import run_train
    from tests.wandb_files import offline_runs

    tmp = tmp_path_factory.mktemp("wandb_run")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **{var: str(tmp / var.lower()) for var in (
        "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.setenv("NETRC", str(tmp / "netrc"))
        out = tmp / "runs" / "A_seed42"
        assert run_train(tiny_data, out, "--wandb", "--variant", "A", "--epochs", "2", "--checkpoint-every", "2",
                         "--log-every", "3", "--wandb-artifacts") == 0
    (run,) = offline_runs(out / "wandb")
    return out, run


def test_offline_run_has_per_step_rows_on_their_own_axis(offline_run):
    """Every --log-every optimizer steps a row of each loss term and the LR, plotted against "step"; the per-epoch
    rows against "epoch" (define_metric), both logged without an explicit W&B step."""
    from engine.config import load_config
    from engine.schedule import get_lr

    out, run = offline_run
    cfg = load_config(out / "config.json")
    assert run.metrics["train_step/*"] == {"step_metric": "step"}
    assert all(run.metrics[f"{p}/*"] == {"step_metric": "epoch"} for p in ("train", "val", "grad_norm", "grad_cos"))
    steps = [row for row in run.history if "train_step/loss" in row]
    epochs = [row for row in run.history if "epoch" in row]
    total = 2 * 4  # 16 frames, batch 4: 4 optimizer steps per epoch
    assert [row["step"] for row in steps] == [3, 6] and [row["epoch"] for row in epochs] == [1, 2]
    for row in steps:
        assert set(row) >= {"train_step/ce", "train_step/aux", "train_step/lr"}
        assert all(isinstance(row[f"train_step/{k}"], float) and row[f"train_step/{k}"] > 0 for k in ("loss", "ce"))
        assert row["train_step/lr"] == pytest.approx(get_lr(row["step"] - 1, total, cfg.lr, cfg.poly_power,
                                                            cfg.min_lr, cfg.warmup_steps))
    assert [row["_step"] for row in run.history] == list(range(len(run.history)))  # W&B's own counter
    assert run.history.index(epochs[0]) > run.history.index(steps[0])  # in the order they happened


def test_offline_run_has_per_class_tables_and_sample_images(offline_run):
    """At each evaluation: the per-class values as a wandb.Table (its numbers are the results file's) and the first
    4 sample images, with the ground truth and the prediction as masks labelled with the class names; the
    prediction masks are the sample predictions kept beside the results (engine.samples)."""
    import numpy as np
    from PIL import Image

    from engine.results_format import read_results
    from engine.samples import read_predictions, read_sample_set

    out, run = offline_run
    files = run.path.parent / "files"
    final = [row for row in run.history if row.get("epoch") == 2][0]
    table = json.loads((files / final["val/per_class"]["path"]).read_text())
    assert final["val/per_class"]["_type"] == "table-file"
    assert table["columns"][:3] == ["class", "iou", "boundary_iou_per_class"]
    results = read_results(out / "checkpoints" / "epoch_0002.results.json")
    assert [row[0] for row in table["data"]] == results["classes"]
    for column in table["columns"][1:]:  # results.json writes NaN (class absent) as null, W&B's table as empty too
        j = table["columns"].index(column)
        assert [math.nan if row[j] is None else row[j] for row in table["data"]] == pytest.approx(
            [results[column][c] for c in results["classes"]], abs=1e-12, nan_ok=True)
    images = final["val/samples"]
    assert images["_type"] == "images/separated" and images["count"] == 4
    sample_set = read_sample_set(out)
    names = sample_set.names[:4]
    assert images["captions"] == names
    labels = run.config["_wandb"]["mask/class_labels"]
    for mask in ("prediction", "ground_truth"):
        class_labels = labels[f"val/samples_wandb_delimeter_{mask}"]["value"]
        assert class_labels["0"] == sample_set.class_names[0] and class_labels["255"] == "ignore"
    predictions = read_predictions(out / "checkpoints" / "epoch_0002.results.json")
    for name, masks in zip(names, images["all_masks"]):
        pred = np.array(Image.open(files / masks["prediction"]["path"]))
        np.testing.assert_array_equal(pred, predictions.pred(name))
        np.testing.assert_array_equal(np.array(Image.open(files / masks["ground_truth"]["path"])),
                                      sample_set.label(name))


def test_offline_run_holds_the_final_checkpoint_as_an_artifact(offline_run):
    out, run = offline_run
    (artifact,) = [a for a in run.artifacts if a.type == "model"]  # wandb logs each wandb.Table as one too
    from engine.config import load_config

    run_name = load_config(out / "config.json").run_name  # A_x<hash>_seed42: the demo's deltas show in it
    assert (artifact.type, artifact.name) == ("model", f"model-{run_name}")
    assert {"final", "epoch-2"} <= set(artifact.aliases)
    entries = {entry.path: entry.size for entry in artifact.manifest.contents}
    ckpt = out / "checkpoints" / "epoch_0002"
    assert entries == {"model.safetensors": (ckpt / "model.safetensors").stat().st_size,
                       "config.json": (ckpt / "config.json").stat().st_size,
                       "meta.json": (ckpt / "meta.json").stat().st_size,
                       "epoch_0002.results.json": (ckpt.parent / "epoch_0002.results.json").stat().st_size}


def test_the_report_of_a_run_has_every_evaluated_epoch(offline_run):
    """train.py wrote a results file at epoch 2 only (--checkpoint-every 2); the report reads epoch 1 from the
    run's metrics.jsonl (report.load.load_history), with the values train.py logged."""
    from report.load import Study, load_runs_dir

    out, run = offline_run
    study = Study.from_records(load_runs_dir(out.parent))
    assert study.epochs == [1, 2]
    first = next(row for row in run.history if row.get("epoch") == 1)
    assert study.values("A", 1, "miou") == {42: pytest.approx(first["val/miou"], abs=1e-12)}


def test_a_corrupt_sample_set_costs_the_wandb_images_only(tmp_path):
    """RUN/samples/ damaged during a run (a file edited): train.py's W&B row keeps its per-class table, the images
    are skipped with one line naming the file and the command that remakes it, and training goes on."""
    import io

    import numpy as np
    from rich.console import Console

    from engine.samples import run_samples_dir, write_sample_set
    from engine.tracking import evaluation_media

    rng = np.random.default_rng(0)
    frames = {f"f{i}": (rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), rng.integers(0, 3, (8, 12), dtype=np.uint8))
              for i in range(3)}
    write_sample_set(tmp_path, "val", list(frames), ["a", "b", "c"], [[0, 0, 0], [9, 9, 9], [200, 0, 0]],
                     frames.__getitem__)
    metrics = {"classes": ["a", "b", "c"], "iou": [0.5, float("nan"), 0.25]}
    predictions = {name: label for name, (_, label) in frames.items()}
    console = Console(file=io.StringIO(), width=300)
    media = evaluation_media(metrics, tmp_path, predictions, 2, console)
    assert len(media["val/samples"]) == 2 and media["val/per_class"].data == [["a", 0.5], ["b", None], ["c", 0.25]]
    gt = run_samples_dir(tmp_path) / "f0_gt.png"
    gt.write_bytes(gt.read_bytes()[:-8])  # a damaged ground-truth PNG
    media = evaluation_media(metrics, tmp_path, predictions, 2, console)
    assert set(media) == {"val/per_class"}
    (line,) = console.file.getvalue().splitlines()
    assert line.startswith(f"W&B sample images skipped: {gt}: corrupt") and "python evaluate.py" in line


# ---------------------------------------------------------------------------------------------------- requeue
class NewRunAccelerator(RecordingAccelerator):
    """As RecordingAccelerator, with the id wandb gives: the one asked for (resume="allow"), else a new one."""

    def get_tracker(self, name, unwrap):
        return FakeRun(self.init_kwargs["wandb"].get("id", "new456"))


def test_a_restart_in_the_same_run_dir_continues_its_wandb_run(no_login, tmp_path):
    """A requeued task preempted before its first checkpoint (no meta.json to take the id from) continues the
    W&B run of its first start; a checkpoint's id takes precedence; another run dir gets another run."""
    cfg, accelerator, run_dir = TrainConfig(seed=7), NewRunAccelerator(), tmp_path / "C_seed7"
    assert init_wandb(accelerator, cfg, run_dir, run_id=None) == "new456"
    assert "id" not in accelerator.init_kwargs["wandb"]  # the first start: wandb picks the id
    assert (run_dir / "wandb_run_id.txt").read_text() == "new456\n"
    assert init_wandb(accelerator, cfg, run_dir, run_id=None) == "new456"  # the rerun, same command
    assert (accelerator.init_kwargs["wandb"]["id"], accelerator.init_kwargs["wandb"]["resume"]) == ("new456", "allow")
    assert init_wandb(accelerator, cfg, run_dir, run_id="fromckpt") == "fromckpt"
    assert (run_dir / "wandb_run_id.txt").read_text() == "fromckpt\n"
    assert init_wandb(accelerator, cfg, tmp_path / "C_seed8", run_id=None) == "new456"
    assert "id" not in accelerator.init_kwargs["wandb"]


def test_a_real_offline_restart_writes_to_the_same_wandb_run(no_login, tmp_path, monkeypatch):
    """The same with wandb itself (offline): both starts write to the same run id."""
    from accelerate import Accelerator

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    cfg, run_dir = TrainConfig(), tmp_path / "run"
    ids = []
    for _ in range(2):
        accelerator = Accelerator(log_with="wandb", cpu=True)
        ids.append(init_wandb(accelerator, cfg, run_dir, run_id=None))
        accelerator.end_training()
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert ids[0] and ids[0] == ids[1] and len(offline_runs) == 2
    # offline-run-<time>-<id>, with -1 added by wandb when both starts fall in the same second
    assert all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{ids[0]}(-\d+)?", path.name) for path in offline_runs)


def test_sigterm_marks_the_wandb_run_preempting_and_stops_as_ctrl_c(monkeypatch):
    import os
    import signal
    import sys
    import types

    from utils.signals import sigterm_as_ctrl_c

    marked = []
    run = types.SimpleNamespace(mark_preempting=lambda: marked.append(True))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=run))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the block")
    assert marked == [True] and signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=None))  # no active run: stops all the same
    with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the block")
    assert marked == [True]


def test_a_worker_forked_under_the_sigterm_handler_still_dies_by_sigterm():
    """A multiprocessing.Pool's terminate() (check_frames' pool when train.py stops) sends its workers SIGTERM:
    they must die of it, not raise KeyboardInterrupt with a traceback."""
    import multiprocessing
    import signal

    from utils.signals import sigterm_as_ctrl_c

    context = multiprocessing.get_context("fork")
    ready = context.Event()  # set by the worker: a signal before the child's after-fork reset would be lost
    with sigterm_as_ctrl_c():
        worker = context.Process(target=_set_then_pause, args=(ready,), daemon=True)
        worker.start()
        assert ready.wait(60)
        worker.terminate()  # SIGTERM
        worker.join(60)
    if worker.is_alive():
        worker.kill()
    assert worker.exitcode == -signal.SIGTERM


def _set_then_pause(ready) -> None:
    import signal

    ready.set()
    signal.pause()
