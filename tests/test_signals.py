"""Signals as a terminal or a cluster sends them: to the whole process group, the entry script and its worker
processes alike (Ctrl-C: SIGINT; `timeout`, SLURM preemption, `docker stop`: SIGTERM). Each test starts the real
script in a process group of its own (conftest's `process_groups`), waits for the moment it names by watching
the script (a file it writes, the workers it starts), signals the group and checks the end: exit code 130, one
line, no traceback from any process (utils.signals)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time

import psutil  # accelerate's dependency
import pytest

from data_utils.synthetic import generate_dataset
from tests.test_evaluate import make_checkpoint, tiny_config
from utils.fileio import EXIT_INTERRUPTED

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# train.py as `python train.py ...` runs it, with W&B's mark_preempting recorded (the run id, one line) in the
# file $PREEMPTING_LOG before it does its work.
TRAIN_RECORDING_PREEMPTING = """
import os, runpy, sys, wandb
real = wandb.sdk.wandb_run.Run.mark_preempting
def mark_preempting(run):
    with open(os.environ["PREEMPTING_LOG"], "a") as log:
        log.write(run.id + "\\n")
    real(run)
wandb.sdk.wandb_run.Run.mark_preempting = mark_preempting
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def one_line_and_no_traceback(stdout: str, stderr: str, line: str) -> bool:
    """Of all the output, one line holds `line` (a regular expression), and none a traceback or an error."""
    lines = (stdout + "\n" + stderr).splitlines()
    return (sum(bool(re.fullmatch(line, text.strip())) for text in lines) == 1
            and not [text for text in lines if re.search(r"Traceback|Error|Exception|Interrupt|Terminated", text)])


def workers_started(proc, count: int, marker: str = ""):
    """`ready()` for ProcessGroups.wait_for: `proc` has `count` child processes whose command line holds
    `marker` (a pool's workers; spawned ones: "spawn_main")."""
    def ready() -> bool:
        try:
            children = psutil.Process(proc.pid).children()
            return sum(marker in " ".join(child.cmdline()) for child in children) >= count
        except psutil.Error:  # a child that ended meanwhile
            return False
    return ready


def test_sigterm_to_the_group_during_training_stops_in_one_line_marks_wandb_preempting_and_resumes(
        tiny_data, tmp_path, process_groups):
    """`timeout`, SLURM and `docker stop` send SIGTERM to every process of the job, the DataLoader workers (the
    demo preset's 2) included: train.py stops as on SIGTERM to it alone, exit code 130 with the line saying where
    it resumes, no traceback (it was torch's "DataLoader worker ... killed by signal: Terminated", exit 1), the
    W&B run marked preempting; the same command then resumes from the last checkpoint."""
    out = tmp_path / "run"
    env = {**ENV, "WANDB_MODE": "offline", "PREEMPTING_LOG": str(tmp_path / "preempting.log")}
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        env[var] = str(tmp_path / var.lower())
    flags = ["--preset", "demo", "--no-demo-data", "--data-root", str(tiny_data), "--head-channels", "32",
             "--wandb", "--epochs", "2", "--checkpoint-every", "1", "--out", str(out)]
    proc = process_groups.start([sys.executable, "-c", TRAIN_RECORDING_PREEMPTING, *flags], env=env)
    process_groups.wait_for(proc, (out / "checkpoints" / "epoch_0001").exists)  # epoch 2 is under way
    stdout, stderr = process_groups.send(proc, signal.SIGTERM)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert one_line_and_no_traceback(stdout, stderr, rf"interrupted at epoch \d, optimizer step \d+; the same "
                                     rf"command resumes from {re.escape(str(out))}/checkpoints/epoch_0001"), stderr
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    assert (tmp_path / "preempting.log").read_text().split() == [run_id]

    resumed = process_groups.start([sys.executable, "train.py", *flags], env=env)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert re.search(rf"^resumed from {re.escape(str(out))}/checkpoints/epoch_0001 ", stdout, re.M), stdout
    assert (out / "checkpoints" / "epoch_0002").is_dir()


@pytest.fixture(scope="module")
def sdt_data(tmp_path_factory):
    """16 frames at 384x768: two workers take ~1 s for their SDT maps, time enough to be signalled."""
    return generate_dataset(tmp_path_factory.mktemp("data") / "sdt", num_train=16, num_val=1, height=384,
                            width=768, progress=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_group_signal_during_precompute_sdt_jobs_stops_in_one_line(sdt_data, tmp_path, process_groups, signum):
    """Ctrl-C (or SIGTERM) to the group while `precompute_sdt.py --jobs 2` computes: `interrupted`, exit code 130,
    no worker traceback (it was two KeyboardInterrupt tracebacks; SIGTERM killed it silently, exit -15)."""
    out = tmp_path / "sdt"
    proc = process_groups.start([sys.executable, "precompute_sdt.py", "--data-root", str(sdt_data), "--split",
                                 "train", "--out", str(out), "--jobs", "2"], env=ENV)
    process_groups.wait_for(proc, workers_started(proc, 2, "precompute_sdt.py"))
    stdout, stderr = process_groups.send(proc, signum)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert one_line_and_no_traceback(stdout, stderr, "interrupted"), stderr[-3000:]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """12 checkpoints of one tiny run (hard links of one), evaluated with the demo preset's 2 loader workers."""
    root = tmp_path_factory.mktemp("eval")
    data = generate_dataset(root / "data", num_train=1, num_val=2, height=64, width=128, progress=False)
    first = make_checkpoint(root / "runs" / "A_seed1", 1, tiny_config(data, variant="A", seed=1, num_workers=2))
    for epoch in range(2, 13):
        shutil.copytree(first, first.with_name(f"epoch_{epoch:04d}"), copy_function=os.link)
    return root / "runs"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_group_signal_while_evaluate_all_starts_its_jobs_stops_in_one_line(checkpoints, tmp_path,
                                                                             process_groups, signum):
    """Ctrl-C (or SIGTERM) to the group while `evaluate.py --all --jobs 2` starts its spawned workers (they
    import torch for seconds before they can ignore it): `interrupted`, exit code 130, no worker traceback
    (it was a KeyboardInterrupt traceback per worker; SIGTERM killed it silently, exit -15)."""
    runs = tmp_path / "runs"
    shutil.copytree(checkpoints, runs, copy_function=os.link)
    proc = process_groups.start([sys.executable, "evaluate.py", "--all", str(runs), "--jobs", "2"], env=ENV)
    process_groups.wait_for(proc, workers_started(proc, 2, "spawn_main"))
    time.sleep(0.2)  # the workers are importing (seconds)
    stdout, stderr = process_groups.send(proc, signum)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert one_line_and_no_traceback(stdout, stderr, "interrupted"), stderr[-3000:]
    assert list(runs.rglob("*.results.json")) == [] and list(runs.rglob("*.tmp")) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_group_signal_during_evaluate_all_with_one_job_stops_the_batch(checkpoints, tmp_path, process_groups,
                                                                         signum):
    """`evaluate.py --all` with its default one job, once the first results file is written: the batch stops
    (`interrupted`, exit code 130), not only the running evaluation (it was reported as a failure, "not evaluated:
    interrupted", and the next checkpoints evaluated, exit code 3)."""
    runs = tmp_path / "runs"
    shutil.copytree(checkpoints, runs, copy_function=os.link)
    proc = process_groups.start([sys.executable, "evaluate.py", "--all", str(runs)], env=ENV)
    process_groups.wait_for(proc, lambda: any(runs.rglob("*.results.json")))
    stdout, stderr = process_groups.send(proc, signum)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert one_line_and_no_traceback(stdout, stderr, "interrupted"), stdout[-3000:] + stderr[-3000:]
    assert len(list(runs.rglob("*.results.json"))) < 12 and list(runs.rglob("*.tmp")) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_group_signal_during_predict_stops_in_one_line(checkpoints, tmp_path, process_groups, signum):
    """predict.py with its 2 default DataLoader workers, once the first outputs are written: `interrupted`, exit
    code 130, no traceback and no progress text (SIGTERM killed it silently, exit -15, or with its workers only,
torch's "DataLoader worker ... killed by signal: Terminated")."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    frame = next((checkpoints.parent / "data" / "leftImg8bit" / "val").rglob("*.png"))
    for i in range(400):
        os.link(frame, images / f"frame_{i:03d}.png")
    assert Image.open(frame).size == (128, 64)
    ckpt = next(checkpoints.rglob("epoch_0001"))
    out = tmp_path / "preds"
    proc = process_groups.start([sys.executable, "predict.py", str(ckpt), str(images), "--out", str(out)], env=ENV)
    process_groups.wait_for(proc, lambda: any(out.glob("*_overlay.jpg")))
    stdout, stderr = process_groups.send(proc, signum)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert one_line_and_no_traceback(stdout, stderr, "interrupted"), stdout[-3000:] + stderr[-3000:]
    assert "predicting" not in stdout, stdout  # the bar is cleared, not left above the line (utils.bars.Bars)
    assert len(list(out.glob("*_overlay.jpg"))) < 400


# aggregate.py as `python aggregate.py ...` runs it, its report held back before the swap (60 s) so that a signal
# lands while the report is built in its staging folder.
AGGREGATE_HELD_BEFORE_THE_SWAP = """
import runpy, sys, time
import utils.staged_dir
utils.staged_dir._publish = lambda *args, **kwargs: time.sleep(60)
sys.argv[0] = "aggregate.py"
runpy.run_path("aggregate.py", run_name="__main__")
"""


def test_sigterm_during_aggregate_stops_in_one_line_and_leaves_no_staging_folder(tmp_path, process_groups):
    """`timeout` or `docker stop` while aggregate.py builds its report: `interrupted`, exit code 130, `--out` as it
    was and no `.NAME.staging-*` folder left (SIGTERM killed it silently, exit -15, leaving the staging folder)."""
    from tests.test_faults import no_temp_files, tidy_csv

    out = tmp_path / "report"
    proc = process_groups.start([sys.executable, "-c", AGGREGATE_HELD_BEFORE_THE_SWAP, "--from-csv",
                                 str(tidy_csv(tmp_path / "t.csv", False)), "--bootstrap", "0", "--out", str(out)],
                                env=ENV)
    process_groups.wait_for(proc, lambda: any((p / "summary.md").exists() for p in tmp_path.glob(".report.staging-*")))
    stdout, stderr = process_groups.send(proc, signal.SIGTERM)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert one_line_and_no_traceback(stdout, stderr, "interrupted"), stdout[-3000:] + stderr[-3000:]
    assert not out.exists() and no_temp_files(tmp_path)
