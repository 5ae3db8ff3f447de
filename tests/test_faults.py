"""Faults a user meets (broken data files, a full disk, a read-only output folder) and the one line they get.

The table of faults and what happens is docs/faults.md; each row names the test here that proves it. The data
faults go through DataLoader workers as users run them (the demo preset's 2 workers), through run_main and
through real subprocesses of train.py, evaluate.py and precompute_sdt.py.
"""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

import precompute_sdt
from data_utils.cityscapes import load_split
from data_utils.dataset import SegmentationDataset, check_frame, check_frames, collate_batch
from data_utils.synthetic import generate_dataset
from engine.config import DEMO_PRESET
from utils.fileio import EXIT_BAD_INPUT, EXIT_PARTIAL_FAILURE, UserError, run_main

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 128
WORKERS = DEMO_PRESET["num_workers"]  # the demo preset's loader workers (train.py's own default is 8)


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("faults") / "clean", num_train=4, num_val=2, height=H,
                            width=W, progress=False)


@pytest.fixture
def data(clean_data, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    return Path(shutil.copytree(clean_data, tmp_path / "data"))


def frames(root: Path, split: str) -> list[dict]:
    return [dict(r) for r in load_split(root, split)]


def damage(frame: dict, fault: str) -> str:
    """Damage one frame's files as `fault` says; returns the path the error must name."""
    image, label = frame["image_path"], frame["label_path"]
    if fault == "truncated image":
        data = Path(image).read_bytes()
        Path(image).write_bytes(data[: len(data) // 2])
        return image
    if fault == "garbage image":
        Path(image).write_bytes(b"not a png" * 50)
        return image
    if fault == "label id 200":
        ids = np.array(Image.open(label))
        ids[3, 3] = 200
        Image.fromarray(ids).save(label)
        return label
    if fault == "_color as labelIds":
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(label)
        return label
    if fault == "_instanceIds as labelIds":
        shutil.copyfile(label.replace("_labelIds", "_instanceIds"), label)
        return label
    if fault == "size mismatch":
        Image.fromarray(np.full((H, W + 2), 7, np.uint8)).save(label)
        return label
    raise ValueError(fault)


DATA_FAULTS = ["truncated image", "garbage image", "label id 200", "_color as labelIds", "_instanceIds as labelIds",
               "size mismatch"]


def one_error_line(fn, capsys) -> str:
    """Run `fn` under utils.run_main; the single line it printed on stderr (asserted to be one line)."""
    capsys.readouterr()  # drop what came before (datasets' progress bars)
    with pytest.raises(SystemExit) as exit_info:
        run_main(fn)
    assert exit_info.value.code == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------- data faults from workers
def read_all(loader) -> int:
    iterator = iter(loader)
    try:
        return sum(1 for _ in iterator) and 0
    finally:  # stop the workers now, not when a later gc collects the error's frames (a 5 s join per worker)
        iterator._shutdown_workers()


@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_bad_frame_read_in_a_loader_worker_is_one_line(data, fault, capsys):
    records = frames(data, "train")
    path = damage(records[2], fault)
    loader = torch.utils.data.DataLoader(SegmentationDataset(records), batch_size=2, collate_fn=collate_batch,
                                         num_workers=WORKERS)
    line = one_error_line(lambda: read_all(loader), capsys)
    assert line.startswith(f"error: {path}: ") and "; " in line


def test_damaged_sdt_cache_file_read_in_a_loader_worker_is_one_line(data, tmp_path, capsys):
    cache = tmp_path / "sdt"
    assert precompute_sdt.main(["--data-root", str(data), "--split", "train", "--out", str(cache),
                                "--jobs", "1"]) == 0
    damaged = sorted(cache.rglob("*.sdt"))[1]
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated, as a full disk or a killed copy leaves it
    dataset = SegmentationDataset(frames(data, "train"), sdt_source="cache", sdt_cache_dir=cache)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_batch, num_workers=WORKERS)
    line = one_error_line(lambda: read_all(loader), capsys)
    assert line.startswith(f"error: {damaged}: ")


# --------------------------------------------------------------------------------- the check before training
@pytest.mark.parametrize("fault", ["_color as labelIds", "_instanceIds as labelIds", "size mismatch",
                                   "garbage image"])
def test_header_check_finds_mode_size_and_format_faults_without_decoding(data, fault):
    records = frames(data, "train")
    path = damage(records[1], fault)
    with pytest.raises(UserError, match=f"^{path}: "):
        check_frame(records[1]["image_path"], records[1]["label_path"])


def test_check_frames_decodes_val_labels_in_the_workers(data, capsys):
    records = frames(data, "val")
    path = damage(records[1], "label id 200")
    dataset = SegmentationDataset(records)
    assert check_frames(dataset, decode_labels=False, num_workers=WORKERS) == 2  # headers are fine
    line = one_error_line(lambda: check_frames(dataset, decode_labels=True, num_workers=WORKERS), capsys)
    assert line.startswith(f"error: {path}: label ids [200] are not in the Cityscapes table")


def run_script(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, the error line) of an entry script, asserting that the error is one line at the end
    of stderr (after datasets' progress bars) and that no traceback was printed."""
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and [line for line in lines if line.startswith("error:")] == lines[-1:]
    return result.returncode, result.stdout, lines[-1]


TRAIN = ("train.py", "--preset", "demo", "--no-demo-data", "--no-wandb", "--head-channels", "32", "--epochs", "1")


def test_train_py_bad_val_label_stops_before_training_in_one_line_and_leaves_no_run_dir(data, tmp_path):
    path = damage(frames(data, "val")[0], "label id 200")
    out = tmp_path / "run"
    code, stdout, error = run_script(*TRAIN, "--data-root", str(data), "--out", str(out))
    assert code == EXIT_BAD_INPUT and error.startswith(f"error: {path}: label ids [200]")
    assert "epoch 1/1" not in stdout  # found by the check before the first step, not after epoch 1
    assert not out.exists()  # an input error writes nothing


def test_train_py_truncated_train_image_is_one_line_from_the_workers(data, tmp_path):
    path = damage(frames(data, "train")[3], "truncated image")  # the header is intact: found when decoded
    code, _, error = run_script(*TRAIN, "--data-root", str(data), "--out", str(tmp_path / "run"))
    assert code == EXIT_BAD_INPUT and error.startswith(f"error: {path}: cannot decode PNG")


def test_evaluate_py_bad_label_is_one_line_from_the_workers(data, tmp_path):
    from engine.checkpoint import WEIGHTS_NAME
    from engine.config import parse_args, save_config
    from engine.setup import build_model_from_config
    from safetensors.torch import save_file

    cfg, _ = parse_args(["--preset", "demo", "--data-root", str(data), "--head-channels", "32"])
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_0001"
    ckpt.mkdir(parents=True)
    save_file(build_model_from_config(cfg).state_dict(), str(ckpt / WEIGHTS_NAME))
    save_config(cfg, ckpt / "config.json")
    (ckpt / "meta.json").write_text(json.dumps({"epoch": 1}))
    path = damage(frames(data, "val")[1], "label id 200")
    code, _, error = run_script("evaluate.py", str(ckpt))  # the config's 2 loader workers
    assert code == EXIT_BAD_INPUT and error.startswith(f"error: {path}: label ids [200]")


def test_precompute_sdt_py_bad_label_is_one_line_from_the_workers(data, tmp_path):
    path = damage(frames(data, "train")[2], "label id 200")
    code, _, error = run_script("precompute_sdt.py", "--data-root", str(data), "--split", "train", "--out",
                                str(tmp_path / "sdt"), "--jobs", "2")
    assert code == EXIT_BAD_INPUT and error.startswith(f"error: {path}: label ids [200]")


def test_a_partial_failure_and_a_crash_exit_with_different_codes(data, tmp_path):
    """utils.run_main: `precompute_sdt.py --verify` (a real process) finding one damaged cache file among valid
    ones exits with EXIT_PARTIAL_FAILURE (3), listing it; an unexpected error exits with 1 and its traceback."""
    import precompute_sdt

    assert EXIT_PARTIAL_FAILURE not in (0, 1, EXIT_BAD_INPUT)
    cache = tmp_path / "sdt"
    flags = ("--data-root", str(data), "--split", "train", "--out", str(cache), "--jobs", "1")
    assert precompute_sdt.main(list(flags)) == 0
    damaged = sorted(cache.rglob("*.sdt"))[1]
    damaged.write_bytes(damaged.read_bytes()[:-1])  # cut short: the others stay valid
    result = subprocess.run([sys.executable, "precompute_sdt.py", *flags, "--verify"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == EXIT_PARTIAL_FAILURE, result.stderr[-2000:]
    assert str(damaged) in result.stderr and "1 with problems" in result.stderr
    crash = subprocess.run([sys.executable, "-c", "from utils import run_main; run_main(lambda: 1 / 0)"], cwd=ROOT,
                           capture_output=True, text=True)
    assert crash.returncode == 1 and "Traceback" in crash.stderr and "ZeroDivisionError" in crash.stderr


# ------------------------------------------------------------------------------ full disk, read-only output
def _saved_state(tmp_path):
    from accelerate import Accelerator

    from engine.checkpoint import TrainingProgress, register_checkpoint_hooks
    from engine.config import TrainConfig

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = TrainingProgress(epoch=1, step=4)
    accelerator.register_for_checkpointing(progress)
    register_checkpoint_hooks(accelerator)
    return accelerator, TrainConfig(out=str(tmp_path / "run")), progress


@pytest.mark.parametrize("where", ["torch.save", "safetensors", "os"])
def test_checkpoint_on_a_full_disk_is_one_line_with_free_space_and_leaves_no_temp_folder(tmp_path, monkeypatch,
                                                                                       where):
    from engine import checkpoint

    accelerator, cfg, progress = _saved_state(tmp_path)
    if where == "torch.save":  # what torch 2.x raises when the disk fills during torch.save
        def full(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        monkeypatch.setattr(torch, "save", full)
    elif where == "safetensors":  # what safetensors raises then
        def full(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(checkpoint, "save_file", full)
    else:
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(checkpoint, "_fsync_tree", full)
    with pytest.raises(UserError) as error:
        checkpoint.save_checkpoint(accelerator, cfg, progress, cfg.run_dir, None)
    tmp = cfg.run_dir / "checkpoints" / ".tmp_epoch_0001"
    message = str(error.value)
    assert message.startswith(f"{tmp}: cannot write the checkpoint (")
    assert " free on that disk; free space there" in message and "resumes from the start" in message
    assert "\n" not in message
    assert not tmp.exists() and not (cfg.run_dir / "checkpoints" / "epoch_0001").exists()


def test_other_errors_during_a_checkpoint_save_keep_their_traceback(tmp_path, monkeypatch):
    from engine import checkpoint

    accelerator, cfg, progress = _saved_state(tmp_path)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA error: boom")))
    with pytest.raises(RuntimeError, match="CUDA error"):
        checkpoint.save_checkpoint(accelerator, cfg, progress, cfg.run_dir, None)


def test_a_full_disk_anywhere_else_is_one_line_naming_the_file_and_the_free_space(tmp_path, capsys):
    target = tmp_path / "run" / "metrics.jsonl"

    def write():
        raise OSError(errno.ENOSPC, "No space left on device", str(target))
    line = one_error_line(write, capsys)
    assert line.startswith(f"error: {target}: No space left on device; ") and " free on that disk" in line


def test_read_only_or_blocked_output_folder_is_one_line_in_train_py(data, tmp_path, monkeypatch):
    # Tests run as root, for whom chmod does not stop writes: a file in the way stands for a folder that
    # cannot be made, and a monkeypatched write stands for a read-only mount (EROFS).
    import train

    blocker = tmp_path / "file"
    blocker.write_text("")
    flags = ["--preset", "demo", "--no-demo-data", "--no-wandb", "--head-channels", "32", "--num-workers", "0",
             "--data-root", str(data)]
    with pytest.raises(UserError, match=rf"^{blocker / 'run'}: cannot write an output folder there: Not a directory"
                                        r".*; pass a writable folder as --out$"):
        train.main([*flags, "--out", str(blocker / "run")])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("utils.fileio.tempfile.TemporaryFile", read_only)
    with pytest.raises(UserError, match=r"cannot write an output folder there: Read-only file system; pass a "
                                        r"writable folder as --out"):
        train.main([*flags, "--out", str(tmp_path / "ro")])


def test_read_only_output_folder_is_one_line_in_precompute_sdt(data, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["--data-root", str(data), "--split", "val", "--jobs", "1"]
    with pytest.raises(UserError, match=rf"^{blocker}: cannot write an output folder there: File exists"):
        precompute_sdt.main([*argv, "--out", str(blocker)])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("utils.fileio.tempfile.TemporaryFile", read_only)
    with pytest.raises(UserError, match="Read-only file system; pass a writable folder as --out"):
        precompute_sdt.main([*argv, "--out", str(tmp_path / "sdt")])
