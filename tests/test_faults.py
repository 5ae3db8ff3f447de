"""Faults a user meets (broken data files, a full disk, a read-only output folder) and the one line they get.

The table of faults and what happens is docs/faults.md; each row names the test here that proves it. The data
faults go through DataLoader workers as users run them (the demo preset's 2 workers), through run_main and
through real subprocesses of train.py, evaluate.py and precompute_sdt.py.
"""
from __future__ import annotations

import errno
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
from tests.full_disk import failing_fsync
from tests.test_evaluate import make_checkpoint
from utils.dirlock import LOCK_NAME
from utils.fileio import EXIT_BAD_INPUT, EXIT_PARTIAL_FAILURE, UserError, run_main
from utils.staged_dir import FILE_LIST

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


def last_error_line(fn, capsys) -> str:
    """Run `fn` under utils.run_main; its `error:` line, asserted to be the last line on stderr and the only one,
    with no traceback (aggregate.py and train.py print their progress on stderr before it, datasets its
    "Generating ... split" text: issue 23 §5)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(fn)
    code = exit_info.value.code
    del exit_info  # its traceback holds a failed train.py's loader: collect it now, stopping its workers
    gc.collect()
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


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
    from engine.config import parse_args

    cfg, _ = parse_args(["--preset", "demo", "--data-root", str(data), "--head-channels", "32"])
    ckpt = make_checkpoint(tmp_path / "run", 1, cfg)
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


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM])
def test_run_main_turns_a_write_the_disk_refused_into_one_line_naming_the_file(code, tmp_path, capsys):
    target = tmp_path / "run" / "x.json"

    def refused():
        raise OSError(code, os.strerror(code), str(target))
    line = one_error_line(refused, capsys)
    assert line.startswith(f"error: {target}: {os.strerror(code)}; ")
    assert (" free on that disk" in line) == (code == errno.ENOSPC)
    for other in (OSError(code, os.strerror(code)), OSError(errno.ENOENT, "No such file", str(target))):
        with pytest.raises(OSError) as raised:  # no file named, or not a refused write: a bug, its traceback
            run_main(lambda: (_ for _ in ()).throw(other))
        assert raised.value is other


@pytest.fixture(scope="module")
def checkpoint(clean_data, tmp_path_factory) -> Path:
    """A checkpoint of the demo model (random weights, 32 head channels) on `clean_data`, as train.py lays it out."""
    from engine.config import parse_args

    cfg, _ = parse_args(["--preset", "demo", "--data-root", str(clean_data), "--head-channels", "32"])
    return make_checkpoint(tmp_path_factory.mktemp("faults") / "run", 1, cfg)


@pytest.fixture
def ckpt(checkpoint, tmp_path) -> Path:
    """A private copy of `checkpoint` in tmp_path/runs/run/checkpoints (results may be written beside it)."""
    return Path(shutil.copytree(checkpoint, tmp_path / "runs" / "run" / "checkpoints" / checkpoint.name))


def tidy_csv(path: Path, per_class: bool) -> Path:
    """A tidy CSV for aggregate.py --from-csv: variants B and D, seeds 1 and 2, epoch 1 (+ IoU of two classes)."""
    header = "variant,seed,epoch,mIoU,boundary_f1_mean,trimap_mIoU_mean" + (",road,car" if per_class else "")
    rows = [f"{v},{s},1,{0.5 + 0.01 * s + 0.1 * (v == 'D')},0.4,0.3" + (",0.9,0.6" if per_class else "")
            for v in "BD" for s in (1, 2)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def no_temp_files(folder: Path) -> bool:
    """Nothing half-written left: no atomic writer's temp file (.NAME.XXXX.tmp) and no staging folder in `folder`."""
    return not [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or ".staging-" in p.name]


@pytest.mark.parametrize("writer", ["evaluate.py per_image.npz", "aggregate.py summary.md",
                                    "train.py metrics.jsonl", "train.py metrics.jsonl appended"])
def test_a_full_disk_on_any_write_is_one_line_naming_the_file_and_the_free_space(writer, ckpt, data, tmp_path,
                                                                               monkeypatch, capsys):
    """write/flush/fsync name no file when the disk fills: the atomic writers and the jsonl appender name it."""
    import aggregate
    import evaluate
    import train

    if writer.startswith("evaluate.py"):
        target = ckpt.parent / f"{ckpt.name}.per_image.npz"
        run = lambda: evaluate.main([str(ckpt), "--data-root", str(data)])  # noqa: E731
    elif writer.startswith("aggregate.py"):
        target = tmp_path / "report" / "summary.md"
        run = lambda: aggregate.main(["--from-csv", str(tidy_csv(tmp_path / "t.csv", True)), "--out",  # noqa: E731
                                      str(target.parent), "--bootstrap", "0"])
    else:
        target = tmp_path / "run" / "metrics.jsonl"
        run = lambda: train.main([*TRAIN[1:], "--data-root", str(data), "--out", str(target.parent)])  # noqa: E731
    # the file written atomically (its temp file's fsync fails), or the epoch's row appended to it
    monkeypatch.setattr(os, "fsync", failing_fsync(target.name, temp_files=not writer.endswith("appended")))
    line = last_error_line(run, capsys)
    assert line.startswith(f"error: {target}: No space left on device; ") and " free on that disk" in line
    assert no_temp_files(tmp_path)


def test_a_full_disk_in_evaluate_all_names_the_file_and_the_free_space_among_the_failures(ckpt, data, monkeypatch,
                                                                                          capsys):
    import evaluate

    target = ckpt.parent / f"{ckpt.name}.per_image.npz"
    monkeypatch.setattr(os, "fsync", failing_fsync(target.name))
    assert evaluate.main(["--all", str(ckpt.parents[2]), "--data-root", str(data)]) == EXIT_PARTIAL_FAILURE
    listed = capsys.readouterr().out.split("could not be evaluated:")[-1]
    assert f"{ckpt}: {target}: No space left on device; " in listed and " free on that disk" in listed
    assert no_temp_files(ckpt.parent)


def test_a_full_disk_right_after_train_py_creates_the_run_dir_is_one_line(data, tmp_path, monkeypatch):
    """The W&B run id file, written as the W&B run starts (a real process: the W&B run ends with it)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    out = tmp_path / "run"
    code, _, error = run_script("tests/full_disk.py", "wandb_run_id.txt", *TRAIN[:4], *TRAIN[5:], "--wandb",
                                "--data-root", str(data), "--out", str(out))
    assert code == EXIT_BAD_INPUT and error.startswith(f"error: {out / 'wandb_run_id.txt'}: No space left on device")
    assert " free on that disk" in error and no_temp_files(out)


def test_aggregate_writes_its_report_whole_or_not_at_all_and_keeps_a_users_files(tmp_path, monkeypatch, capsys):
    import aggregate

    out = tmp_path / "report"
    flags = ["--out", str(out), "--bootstrap", "0"]
    with_classes, without = tidy_csv(tmp_path / "a.csv", per_class=True), tidy_csv(tmp_path / "b.csv", False)
    assert aggregate.main(["--from-csv", str(with_classes), *flags]) == 0
    (out / "notes.txt").write_text("mine")  # a user's file
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "per_class_iou.png" in before and "summary.md" in before
    with monkeypatch.context() as patch:  # the disk fills at the report's last file: the earlier report stays
        patch.setattr(os, "fsync", failing_fsync("summary.md"))
        line = last_error_line(lambda: aggregate.main(["--from-csv", str(without), *flags]), capsys)
    assert line.startswith(f"error: {out / 'summary.md'}: No space left on device; ")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and no_temp_files(tmp_path)
    assert aggregate.main(["--from-csv", str(without), *flags]) == 0  # no per-class IoU: no per_class_iou.png
    report = set((out / FILE_LIST).read_text().split())
    assert {p.name for p in out.iterdir()} == report | {"notes.txt", FILE_LIST}
    assert "per_class_iou.png" not in report and (out / "notes.txt").read_text() == "mine"
    assert "Source: `" + str(without) in (out / "summary.md").read_text() and no_temp_files(tmp_path)


def test_aggregate_read_only_or_blocked_out_is_one_line_before_any_work(tmp_path, monkeypatch):
    import aggregate

    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["--from-csv", str(tidy_csv(tmp_path / "t.csv", False)), "--bootstrap", "0", "--out"]
    with pytest.raises(UserError, match=rf"^{blocker}: not a folder; pass a writable folder as --out$"):
        aggregate.main([*argv, str(blocker)])
    with pytest.raises(UserError, match=rf"^{blocker / 'r'}: cannot write an output folder there: File exists "
                                        rf"\({blocker}\); pass a writable folder as --out$"):
        aggregate.main([*argv, str(blocker / "r")])
    with pytest.raises(UserError, match=rf"^{tmp_path}: not empty and not an earlier output .*; pass a new or empty "
                                        "folder as --out$"):  # the report replaces --out as a whole
        aggregate.main([*argv, str(tmp_path)])

    def read_only(*args, **kwargs):  # as mkdtemp fails on a read-only mount, naming the folder it tried
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(kwargs["dir"], kwargs["prefix"] + "x"))
    monkeypatch.setattr("utils.staged_dir.tempfile.mkdtemp", read_only)
    monkeypatch.setattr("aggregate.load_csv", lambda path: pytest.fail("read before --out was checked"))
    with pytest.raises(UserError, match=rf"^{tmp_path / 'r'}: cannot write an output folder there: Read-only file "
                                        "system; pass a writable folder as --out$"):
        aggregate.main([*argv, str(tmp_path / "r")])


@pytest.fixture
def bind_mount():
    """`bind_mount(source, target, read_only)`: `mount --bind` (as docker's `-v /host/dir:/out[:ro]`), undone at
    teardown; skips where this process may not mount (not root, or a container without the right)."""
    mounted = []

    def mount(source: Path, target: Path, read_only: bool) -> None:
        options = ["-o", "ro"] if read_only else []
        done = subprocess.run(["mount", "--bind", *options, str(source), str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
        mounted.append(target)
    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "writable"])
def test_aggregate_out_on_a_mount_point_is_one_line_before_any_work(tmp_path, bind_mount, monkeypatch, read_only):
    """`--out` where a folder is mounted (the same filesystem's, so st_dev does not tell): the report's swap
    renames --out, which fails with EBUSY on a mount point; it was a traceback after the whole report was built."""
    import aggregate

    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    bind_mount(source, out, read_only)
    monkeypatch.setattr("aggregate.load_csv", lambda path: pytest.fail("read before --out was checked"))
    with pytest.raises(UserError, match=rf"^{out}: a mount point, which cannot be replaced by a rename; pass a "
                                        "folder inside it as --out$"):
        aggregate.main(["--from-csv", str(tidy_csv(tmp_path / "t.csv", False)), "--bootstrap", "0", "--out", str(out)])
    assert not list(tmp_path.glob(".out.*"))


def test_mountinfo_paths_are_unescaped():
    from utils.staged_dir import mountinfo_path

    assert mountinfo_path(r"/mnt/my\040report\011x\134y") == "/mnt/my report\tx\\y"


@pytest.mark.parametrize("how", ["CKPT", "--all"])
def test_evaluate_py_on_a_read_only_runs_dir_is_one_line_naming_the_folder(how, ckpt, data, monkeypatch):
    import evaluate

    real_open = os.open

    def read_only_lock(path, *args, **kwargs):  # the lock file is evaluate.py's first write into the run
        if Path(path).name == LOCK_NAME:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only_lock)
    argv = [str(ckpt)] if how == "CKPT" else ["--all", str(ckpt.parents[2])]
    with pytest.raises(UserError, match=rf"^{ckpt.parent}: cannot write there \({ckpt.parent / LOCK_NAME}: Read-only "
                                        "file system\); evaluate.py writes its outputs into that folder: make it "
                                        "writable, or work on a writable copy$"):
        evaluate.main([*argv, "--data-root", str(data)])
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_a_folder_in_place_of_the_lock_file_is_one_line(script, ckpt, data, tmp_path):
    import evaluate
    import train

    if script == "train.py":
        lock = tmp_path / "run" / LOCK_NAME
        run = lambda: train.main([*TRAIN[1:], "--data-root", str(data), "--out", str(lock.parent)])  # noqa: E731
    else:
        lock = ckpt.parent / LOCK_NAME
        run = lambda: evaluate.main([str(ckpt), "--data-root", str(data)])  # noqa: E731
    lock.mkdir(parents=True)
    with pytest.raises(UserError, match=rf"^{lock}: a folder, where {script} keeps its lock file; move or remove it "
                                        "and rerun$"):
        run()


def test_save_predictions_into_a_read_only_folder_or_onto_a_file_is_one_line_before_the_work(ckpt, data, tmp_path,
                                                                                          monkeypatch):
    import evaluate

    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = [str(ckpt), "--data-root", str(data), "--save-predictions"]
    with pytest.raises(UserError, match=rf"^{blocker}: cannot write an output folder there: File exists; pass a "
                                        "writable folder as --save-predictions$"):
        evaluate.main([*argv, str(blocker)])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("utils.fileio.tempfile.TemporaryFile", read_only)
    with pytest.raises(UserError, match=rf"^{tmp_path / 'preds'}: cannot write an output folder there: Read-only "
                                        "file system; pass a writable folder as --save-predictions$"):
        evaluate.main([*argv, str(tmp_path / "preds")])
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]  # not evaluated: no results


def test_demo_preset_in_a_read_only_working_directory_is_one_line_naming_the_data_folder(tmp_path, monkeypatch):
    """The demo generates its data into ./data/demo on first use; a writable --out does not move it."""
    import train

    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["--preset", "demo", "--no-wandb", "--out", str(out)]
    (cwd / "data").write_text("")  # a file in the way of data/demo
    with pytest.raises(UserError, match=rf"^{cwd / 'data' / 'demo'}: cannot generate the demo data there "
                                        rf"\({cwd / 'data'}: File exists\); pass a writable folder as --data-root "):
        train.main(argv)
    (cwd / "data").unlink()
    real_mkdtemp = tempfile.mkdtemp

    def read_only(*args, **kwargs):
        if Path(kwargs.get("dir") or "").is_relative_to(cwd):
            raise OSError(errno.EROFS, "Read-only file system", kwargs["dir"])
        return real_mkdtemp(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(UserError, match=r"cannot generate the demo data there \(.*: Read-only file system\); pass a "
                                        "writable folder as --data-root"):
        train.main(argv)
    assert not out.exists()  # the run dir of a run that did not start is removed


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


@pytest.mark.parametrize("code, message", [
    (errno.ENOSPC, r"No space left on device\); [\d.]+ \w+ free: free disk space \(a raw file takes"),
    (errno.EROFS, r"Read-only file system\); pass a writable --out$"),
    (errno.EIO, None),  # not the disk refusing: a bug or a broken disk, its traceback kept
])
def test_precompute_sdt_write_refused_by_the_disk_is_one_line_naming_the_file(data, tmp_path, monkeypatch, code,
                                                                              message):
    def refused(path, *args, **kwargs):
        raise OSError(code, os.strerror(code))  # as write/fsync raise it: no file name
    monkeypatch.setattr(precompute_sdt, "write_sdt_file", refused)
    argv = ["--data-root", str(data), "--split", "val", "--jobs", "1", "--out", str(tmp_path / "sdt")]
    if message is None:
        with pytest.raises(OSError) as info:
            precompute_sdt.main(argv)
        assert not isinstance(info.value, UserError) and info.value.errno == code
    else:
        with pytest.raises(UserError, match=rf"^{tmp_path / 'sdt'}/\S+\.sdt: cannot write the SDT file \({message}"):
            precompute_sdt.main(argv)


def test_the_errno_groups_are_spelled_once_in_utils_fileio():
    """A full disk, a refused write, a folder that cannot be made there: utils.fileio's DISK_FULL, NOT_WRITABLE
    and NO_FOLDER_THERE, imported wherever they are meant (one owner per name)."""
    root = Path(__file__).resolve().parents[1]
    spelled = re.compile(r"errno\.(ENOSPC|EDQUOT|EROFS|EACCES|EPERM|ENOTDIR|EEXIST)\b")
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}"
             for path in sorted(root.glob("**/*.py"))
             if not {"tests", "bench", ".venv", "runs", "data"} & set(path.relative_to(root).parts)
             and path.relative_to(root) != Path("utils/fileio.py")
             for number, line in enumerate(path.read_text().splitlines(), 1) if spelled.search(line)]
    assert not found, "\n".join(found)


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
