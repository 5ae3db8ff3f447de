"""engine.tracking (the W&B run of train.py) and utils.wandb_mode (the one credential check of train.py and
aggregate.py). Nothing here starts wandb: init_wandb is driven with a stand-in accelerator that records its call."""
from __future__ import annotations

import dataclasses
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


class RecordingAccelerator:
    """What init_wandb uses of an accelerate.Accelerator, recording the tracker arguments."""

    is_main_process = True

    def init_trackers(self, project, config, init_kwargs):
        self.project, self.config, self.init_kwargs = project, config, init_kwargs

    def get_tracker(self, name, unwrap):
        return type("Run", (), {"id": "abc123"})()


def test_init_wandb_arguments(no_login, tmp_path, monkeypatch):
    cfg = TrainConfig(lambda_boundary=0.05, seed=123, wandb_entity="team")
    accelerator = RecordingAccelerator()
    assert init_wandb(accelerator, cfg, tmp_path / "run", run_id="old1") == "abc123"
    init = accelerator.init_kwargs["wandb"]
    assert (init["name"], init["group"], init["mode"]) == ("C_lb0.05_seed123", "C_lb0.05", "offline")
    assert (init["entity"], init["id"], init["resume"]) == ("team", "old1", "allow")
    assert accelerator.project == cfg.wandb_project and accelerator.config["lambda_boundary"] == 0.05
    assert (tmp_path / "run").is_dir()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    init_wandb(accelerator, cfg, tmp_path / "another_run", run_id=None)  # a new run dir: no id to continue
    assert "mode" not in accelerator.init_kwargs["wandb"] and "id" not in accelerator.init_kwargs["wandb"]


def test_prediction_overlays_of_uint8_val_frames(monkeypatch):
    """The W&B overlays show the val dataset's uint8 image as is, the argmax of the model on the normalised
    image, and the label; a float image (not what the val dataset gives) is refused."""
    import numpy as np
    import torch
    import wandb

    from data_utils.augment import normalize
    from engine.tracking import prediction_overlays

    class ChannelArgmax(torch.nn.Module):
        """Logits = the normalised image's 3 channels + 16 constant ones: the prediction is checkable by hand."""

        def forward(self, images):
            self.seen = images
            n, _, h, w = images.shape
            return {"logits": torch.cat([images, torch.full((n, 16, h, w), -10.0)], 1)}

    monkeypatch.setattr(wandb, "Image", lambda rgb, masks, caption: {"rgb": rgb, "masks": masks, "caption": caption})
    gen = torch.Generator().manual_seed(0)
    dataset = [{"image": torch.randint(0, 256, (3, 4, 6), dtype=torch.uint8, generator=gen),
                "label": torch.randint(0, 19, (4, 6), generator=gen), "name": f"frame_{i}"} for i in range(3)]
    model = ChannelArgmax().train()
    images = prediction_overlays(model, dataset, num_images=2, device="cpu", class_names=[f"c{i}" for i in range(19)])
    assert [im["caption"] for im in images] == ["frame_0", "frame_1"] and model.training  # the mode is restored
    torch.testing.assert_close(model.seen, normalize(dataset[1]["image"])[None])
    for image, item in zip(images, dataset):
        np.testing.assert_array_equal(image["rgb"], item["image"].permute(1, 2, 0).numpy())
        masks = image["masks"]
        np.testing.assert_array_equal(masks["prediction"]["mask_data"], normalize(item["image"]).argmax(0).numpy())
        np.testing.assert_array_equal(masks["ground_truth"]["mask_data"], item["label"].numpy())
        assert masks["prediction"]["class_labels"][255] == "ignore"
    with pytest.raises(ValueError, match="uint8"):
        prediction_overlays(model, [{**dataset[0], "image": normalize(dataset[0]["image"])}], 1, "cpu", ["c0"])


# ---------------------------------------------------------------------------------------------------- requeue
class NewRunAccelerator(RecordingAccelerator):
    """As RecordingAccelerator, with the id wandb gives: the one asked for (resume="allow"), else a new one."""

    def get_tracker(self, name, unwrap):
        return type("Run", (), {"id": self.init_kwargs["wandb"].get("id", "new456")})()


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

    from engine.tracking import sigterm_as_ctrl_c

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

    from engine.tracking import sigterm_as_ctrl_c

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
