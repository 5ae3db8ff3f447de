"""slurm/*.sbatch: bash syntax, the commands each prints with DRY_RUN=1 for given SLURM_* variables (checked
against engine.sweep_local and by running the multi-node launch line through bash), the first-host fallback
without scontrol, and the requeue on SLURM's USR1."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import parse_args
from engine.sweep_local import grid_runs, load_sweep, main as sweep_local_main
from utils.fileio import EXIT_BAD_INPUT

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "slurm").glob("*.sbatch"))
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def sbatch(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script as SLURM would start it (from the submit dir), with `env` added to this environment."""
    env = {**os.environ, "SLURM_SUBMIT_DIR": str(ROOT), "SCONTROL": "no-scontrol-here", **env}
    return subprocess.run([BASH, str(ROOT / "slurm" / script), *args], cwd="/", env=env, capture_output=True,
                          text=True, timeout=120)


def test_every_template_parses_and_reads_its_settings_from_the_environment():
    assert {path.name for path in SCRIPTS} == {"grid_array.sbatch", "multinode.sbatch", "wandb_agent_array.sbatch"}
    for path in [*SCRIPTS, ROOT / "slurm" / "common.sh"]:
        subprocess.run([BASH, "-n", str(path)], check=True)
    for path in SCRIPTS:
        text = path.read_text()
        assert text.startswith("#!/bin/bash\n") and "\nset -euo pipefail\n" in text
        assert "#SBATCH --requeue" in text and "DRY_RUN=${DRY_RUN:-0}" in text


def test_grid_task_5_prints_the_command_of_cell_5(capsys):
    config = load_sweep(ROOT / "sweep.yaml")
    cell = {name: spec["value"] for name, spec in grid_runs(config)[5].items()}
    assert sweep_local_main([str(ROOT / "sweep.yaml"), "--dry-run", "--index", "5", "--", "--epochs", "1"]) == 0
    expected = capsys.readouterr().out.splitlines()

    result = sbatch("grid_array.sbatch", "--epochs", "1", DRY_RUN="1", SLURM_ARRAY_TASK_ID="5", PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    task, *train = result.stdout.splitlines()
    assert shlex.split(task) == [sys.executable, "-m", "engine.sweep_local", "sweep.yaml", "--index", "5", "--",
                                 "--epochs", "1"]
    assert train == expected  # sweep_local's own line for cell 5: [5/12] ... accelerate launch train.py ...
    argv = shlex.split(train[0].split("] ", 1)[1])
    cfg, _ = parse_args(argv[argv.index("train.py") + 1:])
    assert (cfg.variant, cfg.seed, cfg.epochs) == (cell["variant"], cell["seed"], 1)


def test_grid_outside_an_array_task_stops_with_one_line():
    result = sbatch("grid_array.sbatch", DRY_RUN="1")
    assert result.returncode == EXIT_BAD_INPUT and result.stdout == ""
    assert result.stderr.splitlines() == ["error: slurm/grid_array.sbatch: not an array task (no "
                                          "SLURM_ARRAY_TASK_ID); submit it with sbatch, or set SLURM_ARRAY_TASK_ID=I "
                                          "with DRY_RUN=1"]


def test_wandb_agent_task_prints_one_agent_for_one_run():
    result = sbatch("wandb_agent_array.sbatch", DRY_RUN="1", SWEEP_ID="team/boundary-seg/ab12cd34",
                    SLURM_ARRAY_TASK_ID="3")
    assert (result.returncode, result.stdout) == (0, "wandb agent --count 1 team/boundary-seg/ab12cd34\n")
    missing = sbatch("wandb_agent_array.sbatch", DRY_RUN="1", SWEEP_ID="")
    assert missing.returncode == EXIT_BAD_INPUT and missing.stderr.startswith(
        "error: slurm/wandb_agent_array.sbatch: SWEEP_ID is not set; run wandb sweep sweep.yaml, then")


def _launch_line(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    argv = shlex.split(line)
    assert argv[:5] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c"] and len(argv) == 6
    return argv


def test_multinode_prints_one_launcher_per_node_each_expanding_its_own_rank(tmp_path):
    flags = ("--variant", "C", "--out", "runs/C seed 42")  # a space: the quoting must survive bash -c
    result = sbatch("multinode.sbatch", *flags, DRY_RUN="1", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu[07-08]")
    inner = _launch_line(result)[5]
    assert '--machine_rank "$SLURM_NODEID"' in inner  # literal: expanded by each node's bash, not by the script
    # Run the bash -c line as srun would on each node, with a stand-in accelerate that prints its argv.
    (tmp_path / "accelerate").write_text(f"#!/bin/bash\nexec {shlex.quote(sys.executable)} -c "
                                         "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    (tmp_path / "accelerate").chmod(0o755)
    for node in ("0", "1"):
        env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_NODEID": node}
        ran = subprocess.run([BASH, "-c", inner], env=env, capture_output=True, text=True, check=True)
        assert json.loads(ran.stdout) == [
            "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "16", "--main_process_ip", "gpu07",
            "--main_process_port", "29500", "--rdzv_backend", "c10d", "--machine_rank", node, "train.py", *flags]


def test_multinode_main_node_from_scontrol_or_override(tmp_path):
    scontrol = tmp_path / "scontrol"  # a stand-in answering `scontrol show hostnames LIST` as SLURM does
    scontrol.write_text('#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && printf "%s\\n" hostA hostB\n')
    scontrol.chmod(0o755)
    env = {"DRY_RUN": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "host[A-B]", "GPUS_PER_NODE": "4"}
    inner = shlex.split(_launch_line(sbatch("multinode.sbatch", SCONTROL=str(scontrol), **env))[5])
    assert inner[inner.index("--main_process_ip") + 1] == "hostA"
    assert inner[inner.index("--num_processes") + 1] == "8"
    inner = shlex.split(_launch_line(sbatch("multinode.sbatch", MAIN_NODE="10.0.0.5", MAIN_PORT="29600", **env))[5])
    assert inner[inner.index("--main_process_ip") + 1: inner.index("--main_process_port") + 2] == [
        "10.0.0.5", "--main_process_port", "29600"]
    missing = sbatch("multinode.sbatch", DRY_RUN="1")
    assert missing.returncode == EXIT_BAD_INPUT
    assert missing.stderr.startswith("error: slurm/multinode.sbatch: not in a SLURM job")
    scontrol.write_text("#!/bin/bash\n")  # answers nothing
    empty = sbatch("multinode.sbatch", SCONTROL=str(scontrol), **env)
    assert empty.returncode == EXIT_BAD_INPUT and empty.stderr == ("error: slurm/multinode.sbatch: no first host in "
                                                      "SLURM_JOB_NODELIST=host[A-B]; set MAIN_NODE=HOST\n")


@pytest.mark.parametrize("nodelist, first", [
    ("node01", "node01"), ("node[01-04]", "node01"), ("gpu[7,9-10]", "gpu7"), ("a[3-4]-ib,b1", "a3-ib"),
    ("x1,y[2-3]", "x1"), ("n[001-002],m[5-6]", "n001"),
])
def test_first_host_without_scontrol(nodelist, first):
    """The fallback the scripts use where scontrol is missing (SCONTROL names a command that does not exist)."""
    result = subprocess.run([BASH, "-c", 'source slurm/common.sh && first_host "$1"', "_", nodelist], cwd=ROOT,
                            env={**os.environ, "SCONTROL": "no-scontrol-here"}, capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, f"{first}\n")


def test_usr1_before_the_time_limit_requeues_the_task_and_waits_for_the_command(tmp_path):
    """SLURM's USR1 (--signal=B:USR1@300) reaches the batch shell: `run` asks `scontrol requeue JOBID`, which
    stops the job (here: the stand-in scontrol sends the command SIGTERM, as SLURM does); the shell waits for
    the command and exits with its status."""
    started, requeued = tmp_path / "started", tmp_path / "requeued"
    (tmp_path / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {requeued}\nkill -TERM "$(cat {started})"\n')
    (tmp_path / "scontrol").chmod(0o755)
    command = (f'echo $$ > {started}.tmp && mv {started}.tmp {started}; trap "exit 143" TERM; '
               'while :; do sleep 0.05; done')
    script = f'source slurm/common.sh; run bash -c {shlex.quote(command)}'
    env = {**os.environ, "SCONTROL": str(tmp_path / "scontrol"), "SLURM_JOB_ID": "4242"}
    shell = subprocess.Popen([BASH, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        while not started.exists():
            assert shell.poll() is None, "the command did not start"
            time.sleep(0.01)
        shell.send_signal(signal.SIGUSR1)
        stdout, _ = shell.communicate(timeout=60)
    finally:
        shell.kill()
    assert requeued.read_text() == "requeue 4242\n"
    assert shell.returncode == 143  # the command's status, after it ended
    assert stdout.splitlines()[-1] == "time limit near: requeue job 4242"
