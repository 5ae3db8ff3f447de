"""Shared fixtures: a fresh accelerate state per test, the study's vendored CSVs (reference/), and paths to the
real Cityscapes frames in ../shared/data (skipped when absent: Cityscapes' license keeps them out of the repo)."""
import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_collection_finish(session):
    """Everything imported by now (torch, timm, datasets, wandb, the test modules: ~0.6 M objects) lives until the
    end: move it out of the garbage collector's sight. Each train.main / evaluate checkpoint ends with
    accelerate's free_memory, a full gc.collect that would otherwise walk all of it (~0.3 s of CPU, hundreds of
    times per suite); objects made by the tests are still collected.

    And torch computes on one thread in this process: the tests' tensors are small, and the 2 cores are shared
    with DataLoader workers and the scripts tests start; a second thread mostly spins (paired, near-idle
    2-core machine, OMP_NUM_THREADS=2 vs 1: test_real_val_maps_match_cityscapesscripts 7.8 -> 4.9 s wall,
    9.3 -> 4.9 s CPU; the small ones the same wall at half the CPU)."""
    gc.freeze()
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each Accelerator in this process starts from scratch (accelerate keeps process-wide singletons), and
    train.main's torch.set_num_threads (the demo preset's cpu_threads) does not leak into other tests."""
    threads = torch.get_num_threads()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.set_num_threads(threads)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs the real Cityscapes frames in {path} (absent; Cityscapes' license keeps them out of "
                    "the repo)")
    return path


@pytest.fixture
def cityscapes_sample() -> Path:
    """One real val frame, 8x downscaled (256x128): labelIds, labelTrainIds, instanceIds, image."""
    return _need(SHARED_DATA / "cityscapes_sample")


@pytest.fixture
def cityscapes_fullres() -> Path:
    """Real 2048x1024 frames: 8 train images with labels, 15 val label maps."""
    return _need(SHARED_DATA / "cityscapes_fullres")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """16 train / 5 val synthetic frames at 64x128 in the Cityscapes layout (5: a short last val batch)."""
    from data_utils.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data") / "tiny", num_train=16, num_val=5, height=64, width=128)


@pytest.fixture(scope="session")
def straight_runs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted 2-epoch runs (tiny_training.RESUMABLE: both checkpoints keep their training state) with 0 and
    with 2 DataLoader workers, trained once per session (tests/test_checkpoint.py, tests/test_samples.py); a test
    that changes a run works on a copy."""
    from tests.tiny_training import RESUMABLE, run_train
    root = tmp_path_factory.mktemp("straight")
    for workers in ("0", "2"):
        assert run_train(tiny_data, root / f"workers{workers}", *RESUMABLE, "--num-workers", workers) == 0
    return {workers: root / f"workers{workers}" for workers in ("0", "2")}


@pytest.fixture
def seed_metrics() -> Path:
    """The original study's per-run metric CSVs, vendored in the repo (reference/README.md)."""
    return ROOT / "reference"


@pytest.fixture
def lock_holder():
    """`hold(folder, program)`: another process takes `utils.dirlock.folder_lock(folder)` and keeps it;
    returns its Popen once it holds the lock. Held locks die with the test (SIGKILL)."""
    holders = []

    def hold(folder: Path, program: str) -> subprocess.Popen:
        code = ("import time; from utils.dirlock import folder_lock\n"
                f"with folder_lock({str(folder)!r}, {program!r}, 'wait'):\n"
                "    print('locked', flush=True); time.sleep(600)")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in holders:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()



class ProcessGroups:
    """Scripts started in a process group of their own, as a shell runs a command: Ctrl-C goes to the
    whole group (DataLoader and pool workers included). Whatever is still running at teardown is killed."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, command: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    @staticmethod
    def wait_for(proc: subprocess.Popen, ready, timeout_s: float = 180) -> None:
        """Poll `ready()` until true; fail if `proc` ends first or after `timeout_s` (a liveness bound)."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"ended with {proc.returncode} first: {proc.communicate()[1][-3000:]}")
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    @staticmethod
    def ctrl_c(proc: subprocess.Popen, timeout_s: float = 60) -> tuple[str, str]:
        """SIGINT to the group, as a terminal's Ctrl-C; returns (stdout, stderr) once the process ended."""
        return ProcessGroups.send(proc, signal.SIGINT, timeout_s)

    @staticmethod
    def send(proc: subprocess.Popen, signum: int, timeout_s: float = 60) -> tuple[str, str]:
        """`signum` to the group (SIGTERM: as `timeout`, SLURM and `docker stop` send it); returns (stdout,
        stderr) once the process ended."""
        os.killpg(proc.pid, signum)
        return proc.communicate(timeout=timeout_s)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.fixture
def process_groups():
    groups = ProcessGroups()
    yield groups
    groups.kill_all()


def _run_python(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime ARGV` from the repo root, as a user would: (the finished process, with its stderr
    less importtime's lines; the dotted name of every module it imported, parent packages included, so
    `"torch" in modules` holds whenever any part of torch was imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, capture_output=True, text=True)
    timing = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert timing, f"python -X importtime reported nothing: {result.stderr[-2000:]}"
    modules = {line.rsplit("|", 1)[1].strip() for line in timing} - {"imported package"}  # less the header
    result.stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                            if not line.startswith("import time:"))
    return result, modules


@pytest.fixture
def python_imports():
    """`python_imports(*argv)` -> (process, modules imported): a fresh interpreter, to check what a script or an
    import pulls in (e.g. that --help answers before torch)."""
    return _run_python


@pytest.fixture(scope="session")
def viewer_browser():
    """One headless Chromium page for every test of viewer.html (tests/browser.py: requests blocked and recorded,
    console and page errors collected). Skipped, saying why, without playwright or a Chromium binary."""
    from tests.browser import VIEWPORT, Browser, find_chromium

    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -r requirements.txt)")
    executable = find_chromium()
    if executable is None:
        pytest.skip("needs Chromium: none of /usr/bin/chromium, chromium, chromium-browser (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport=VIEWPORT, service_workers="block")
            yield Browser(context.new_page())
        finally:
            browser.close()
