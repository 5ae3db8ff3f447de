"""Signed distance maps: exact equality with a scipy reference, torch == numpy, the cache format, precompute_sdt.py."""
from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

import precompute_sdt
from data_utils.dataset import read_train_ids
from data_utils.labels import CITYSCAPES
from data_utils.sdt import _self_check_labels, compute_sdt, compute_sdt_reference, compute_sdt_torch
from data_utils.sdt_cache import inspect_sdt_file, read_sdt_file, sdt_cache_path, write_sdt_file
from data_utils.synthetic import generate_dataset
from utils import EXIT_PARTIAL_FAILURE, UserError
from utils.dirlock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]


def blob_label(height: int, width: int, num_blob_classes: int, seed: int, ignore: bool = True) -> np.ndarray:
    """Smooth random regions of classes 0..num_blob_classes-1, plus an ignore rectangle and ignore specks."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(1.5, 10.0, size=2)
    noise = gaussian_filter(rng.standard_normal((num_blob_classes, height, width)), sigma=(0, *sigma))
    label = noise.argmax(0).astype(np.uint8)
    if ignore:
        y, x = rng.integers(0, height), rng.integers(0, width)
        label[y:y + rng.integers(1, height // 2 + 2), x:x + rng.integers(1, width // 2 + 2)] = 255
        label[rng.random((height, width)) < 0.01] = 255
    return label


# ----------------------------------------------------------------------------------------------------------
# Exactness


def test_hand_made_sign_convention():
    label = np.ones((3, 6), np.uint8)
    label[:, :2] = 0  # class 0 = the two left columns, class 1 the rest
    sdt = compute_sdt(label, num_classes=3)
    np.testing.assert_array_equal(sdt[0], np.tile([-2, -1, 1, 2, 3, 4], (3, 1)))  # negative inside
    np.testing.assert_array_equal(sdt[1], np.tile([2, 1, -1, -2, -3, -4], (3, 1)))
    np.testing.assert_array_equal(sdt[2], 0)  # absent class
    label[1, 5] = 255  # ignore: 0 in every map, and a boundary for class 1
    sdt = compute_sdt(label, num_classes=3)
    assert sdt[:, 1, 5].tolist() == [0, 0, 0]
    assert sdt[1, 1, 4] == -1 and sdt[1, 0, 5] == -1


def test_roundings_agree_on_every_needed_squared_distance():
    """The definition rounds sqrt(n) (float64) with np.rint; the CPU path rounds a float32 root, the torch and
    Triton paths use floor(root + 1/2). All equal the integer rule #{k >= 0 : k^2 + k < n} for every squared
    distance that survives the clip, because sqrt(n) is never k + 1/2."""
    n = np.arange(2 * 128**2 + 1)
    k = np.arange(200)
    exact = np.searchsorted(k * k + k, n, side="left")
    np.testing.assert_array_equal(np.rint(np.sqrt(n.astype(np.float64))), exact)
    np.testing.assert_array_equal(np.rint(np.sqrt(n.astype(np.float32))), exact)
    root = torch.from_numpy(n).float().sqrt()
    np.testing.assert_array_equal((root + 0.5).floor().numpy(), exact)


@pytest.mark.parametrize("seed", range(12))
def test_random_blobs_match_scipy_reference(seed):
    rng = np.random.default_rng(1000 + seed)
    height, width = int(rng.integers(1, 80)), int(rng.integers(1, 110))
    num_classes = int(rng.integers(2, 7))
    blob_classes = int(rng.integers(1, num_classes + 1))  # classes above blob_classes stay absent
    clip = int(rng.choice([1, 3, 7, 20, 127]))  # small clips: most distances lie beyond the clip
    label = blob_label(height, width, blob_classes, seed)
    np.testing.assert_array_equal(compute_sdt(label, num_classes, clip),
                                  compute_sdt_reference(label, num_classes, clip))


def test_far_distances_and_edge_cases_match_reference():
    # one tiny object in a large image: distances far beyond 127 px along both axes
    label = np.zeros((300, 420), np.uint8)
    label[5:9, 400:404] = 1
    label[250:, :30] = 255
    np.testing.assert_array_equal(compute_sdt(label, 3), compute_sdt_reference(label, 3, 127))
    # one class covering the whole image, all ignore, one class + ignore only, a single pixel, one row/column
    cases = [np.full((20, 30), 2, np.uint8), np.full((20, 30), 255, np.uint8), np.zeros((1, 1), np.uint8)]
    partial = np.full((20, 30), 1, np.uint8)
    partial[3:7, 4:9] = 255
    single = np.zeros((15, 17), np.uint8)
    single[7, 8] = 1
    cases += [partial, single, blob_label(1, 200, 3, 1), blob_label(150, 1, 3, 2)]
    for label in cases:
        np.testing.assert_array_equal(compute_sdt(label, 3), compute_sdt_reference(label, 3, 127))
    assert not compute_sdt(cases[0], 3).any()  # full coverage -> zero map


def test_real_labels_match_reference(cityscapes_sample, cityscapes_fullres):
    small = np.array(Image.open(next(cityscapes_sample.rglob("*_gtFine_labelTrainIds.png"))))
    C = CITYSCAPES.num_classes
    np.testing.assert_array_equal(compute_sdt(small, C), compute_sdt_reference(small, C, 127))
    path = sorted((cityscapes_fullres / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[0]
    label = read_train_ids(str(path))
    np.testing.assert_array_equal(compute_sdt(label, C), compute_sdt_reference(label, C, 127))


def test_input_types_and_bad_values():
    label = blob_label(20, 30, 3, 0)
    np.testing.assert_array_equal(compute_sdt(label.astype(np.int64), 3), compute_sdt(label, 3))
    bad = label.copy()
    bad[0, 0] = 19
    with pytest.raises(UserError, match=r"\[19\]"):
        compute_sdt(bad, num_classes=19)
    with pytest.raises(UserError):
        compute_sdt(np.full((4, 4), -1, np.int32), 19)
    with pytest.raises(UserError, match=r"\[3\]"):
        compute_sdt_torch(torch.from_numpy(label.astype(np.int64)).clamp(max=3)[None], num_classes=3)
    with pytest.raises(ValueError):
        compute_sdt(label.astype(np.float32), 3)
    with pytest.raises(ValueError):
        compute_sdt(label, 3, clip=128)
    with pytest.raises(ValueError):
        compute_sdt_torch(torch.from_numpy(label), 3)  # (H, W): the torch API takes a batch


# ----------------------------------------------------------------------------------------------------------
# Torch path == CPU path


def test_torch_matches_numpy_on_random_batches():
    rng = np.random.default_rng(7)
    for trial in range(6):
        height, width = int(rng.integers(1, 70)), int(rng.integers(1, 90))
        num_classes, clip = int(rng.integers(2, 6)), int(rng.choice([1, 2, 5, 16, 127]))
        labels = np.stack([blob_label(height, width, int(rng.integers(1, num_classes + 1)), 50 * trial + k)
                           for k in range(3)])
        labels[0] = labels[0, 0, 0]  # one image holds a single value (whole-image class or all ignore)
        out = compute_sdt_torch(torch.from_numpy(labels).long(), num_classes, clip)
        assert out.dtype == torch.int8 and out.shape == (3, num_classes, height, width)
        # train.py's call (labels already mapped by the loader) skips the value check, not the work
        assert torch.equal(compute_sdt_torch(torch.from_numpy(labels), num_classes, clip, validate=False), out)
        for k in range(3):
            np.testing.assert_array_equal(out[k].numpy(), compute_sdt(labels[k], num_classes, clip))


def test_torch_matches_numpy_with_far_distances():
    label = np.full((200, 330), 1, np.uint8)
    label[100:104, 10:12] = 0
    label[:40, 200:] = 255
    label[150:, 300:] = 2
    out = compute_sdt_torch(torch.from_numpy(label)[None], num_classes=4)
    np.testing.assert_array_equal(out[0].numpy(), compute_sdt(label, 4))


@pytest.mark.parametrize("failure", ["raises", "wrong maps"])
def test_triton_failure_falls_back_to_torch(monkeypatch, failure):
    """If the CUDA kernels fail or disagree with the self-check: one RuntimeWarning, then the pure-torch path."""
    import data_utils.sdt as sdt_module

    def broken(labels, num_classes, clip):
        if failure == "raises":
            raise RuntimeError("cannot compile")
        return torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=torch.int8)

    fake_kernels = types.ModuleType("data_utils.sdt_triton")
    fake_kernels.sdt_triton = broken
    monkeypatch.setitem(sys.modules, "data_utils.sdt_triton", fake_kernels)
    monkeypatch.setattr(sdt_module, "_triton_error", None)
    monkeypatch.setattr(sdt_module, "_triton_checked", set())
    monkeypatch.setattr(sdt_module, "_use_triton", lambda labels: sdt_module._triton_error is None)
    label = blob_label(30, 40, 3, 5)
    with pytest.warns(RuntimeWarning, match="cannot compile" if failure == "raises" else "disagree"):
        out = compute_sdt_torch(torch.from_numpy(label)[None], num_classes=3)
    np.testing.assert_array_equal(out[0].numpy(), compute_sdt(label, 3))
    assert sdt_module._triton_error is not None


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

_INTERPRETER_PRELUDE = """\
import numpy as np, torch
from tests.test_sdt import blob_label
from data_utils.dataset import read_train_ids
from data_utils.sdt import compute_sdt, _self_check_labels, _self_check_triton
from data_utils.sdt_triton import sdt_triton

def check(labels, num_classes, clip):
    out = sdt_triton(torch.from_numpy(labels).contiguous(), num_classes, clip).numpy()
    for k in range(len(labels)):
        np.testing.assert_array_equal(out[k], compute_sdt(labels[k], num_classes, clip))
"""


def run_in_triton_interpreter(tmp_path: Path, code: str) -> None:
    """Run `code` (after a prelude defining `check(labels, num_classes, clip)`: the kernels against
    `compute_sdt`) with the CUDA kernels on CPU tensors, through Triton's interpreter. In a fresh process:
    TRITON_INTERPRET must be set before triton first reads its settings."""
    script = tmp_path / "check_triton.py"
    script.write_text(_INTERPRETER_PRELUDE + code + "\nprint('ok')\n")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@needs_triton
def test_triton_kernels_match_numpy_in_interpreter(tmp_path):
    """One tile in every dimension, both clip extremes, the last class present."""
    run_in_triton_interpreter(tmp_path, (
        "for clip, num_classes, shape in ((3, 3, (12, 20)), (127, 3, (4, 24))):\n"
        "    labels = np.stack([blob_label(*shape, num_classes - 1, seed) for seed in range(2)])\n"
        "    labels[1, :, -3:] = 2\n"
        "    check(labels, num_classes, clip)\n"))


@needs_triton
def test_triton_kernels_cross_chunks_and_tiles_in_interpreter(tmp_path):
    """140x96: three 64-row scan chunks (the last partial), three 32-column strips, 18 x 2 row-pass tiles (the
    last of each partial); clip 127, so the row passes' early exits are the only bound."""
    run_in_triton_interpreter(tmp_path, "check(blob_label(140, 96, 2, 7)[None], 3, 127)\n")


@needs_triton
@pytest.mark.slow
def test_triton_kernels_many_tiles_at_a_small_clip_in_interpreter(tmp_path):
    """Slow (~30 s of CPU in the interpreter): 150x200 at clip 20, 4 classes: 19 x 4 tiles whose row passes stop at
    the clip, not at the early exit."""
    run_in_triton_interpreter(tmp_path, "check(blob_label(150, 200, 3, 11)[None], 4, 20)\n")


@needs_triton
@pytest.mark.slow
def test_triton_kernels_far_distances_across_chunks_in_interpreter(tmp_path):
    """Slow (~25 s of CPU in the interpreter): nearest class pixels two scan chunks away, 100+ rows and columns."""
    run_in_triton_interpreter(tmp_path, (
        "far = np.ones((140, 96), np.uint8)\n"
        "far[3:5, 40:44] = 0\n"
        "far[135:, 70:] = 2\n"
        "far[60:70, :10] = 255\n"
        "check(far[None], 3, 127)\n"))


@needs_triton
@pytest.mark.slow
def test_triton_kernels_pass_the_runtime_self_check_in_interpreter(tmp_path):
    """Slow (~45 s of CPU in the interpreter): the batch every GPU checks the kernels on before it trusts them."""
    run_in_triton_interpreter(tmp_path, "_self_check_triton(sdt_triton, torch.device('cpu'), 20)\n")


@needs_triton
@pytest.mark.slow
def test_triton_kernels_match_numpy_on_a_real_crop_in_interpreter(tmp_path, cityscapes_fullres):
    """Slow (~1 min of CPU in the interpreter): an 80x136 crop of a real label (11 of the 19 classes present) at the
    default clip."""
    label_path = cityscapes_fullres / "gtFine/train/aachen/aachen_000006_000019_gtFine_labelIds.png"
    run_in_triton_interpreter(tmp_path, (
        f"train_ids = read_train_ids({str(label_path)!r})\n"
        "crop = np.ascontiguousarray(train_ids[360:440, 1020:1156])\n"
        "assert len(set(np.unique(crop).tolist()) - {255}) == 11\n"
        "check(crop[None], 19, 127)\n"))


def test_self_check_batch_crosses_a_scan_chunk():
    """The runtime self-check (run once per GPU before the kernels are trusted) must reach the code that carries
    the column scans from one 64-row chunk to the next, in both directions."""
    pytest.importorskip("triton")
    from data_utils.sdt_triton import COLUMN_BLOCK_H, COLUMN_BLOCK_W, ROW_BLOCK_W

    labels = _self_check_labels().numpy()
    assert labels.shape[1] > COLUMN_BLOCK_H and labels.shape[2] > 2 * max(COLUMN_BLOCK_W, ROW_BLOCK_W)

    def class_columns(rows: np.ndarray) -> set[tuple[int, int]]:
        return {(c, x) for x in range(rows.shape[1]) for c in np.unique(rows[:, x]).tolist() if c != 255}

    above, below = class_columns(labels[0, :COLUMN_BLOCK_H]), class_columns(labels[0, COLUMN_BLOCK_H:])
    assert above - below, "a column whose class pixels lie above the boundary only (carried down)"
    assert below - above, "a column whose class pixels lie below the boundary only (carried up)"


# ----------------------------------------------------------------------------------------------------------
# Cache files


@pytest.fixture
def small_labels() -> np.ndarray:
    return blob_label(40, 60, 4, 3)


@pytest.fixture
def small_sdt(small_labels) -> np.ndarray:
    return compute_sdt(small_labels, num_classes=5)


@pytest.mark.parametrize("compress", [False, True])
def test_cache_roundtrip(tmp_path, small_sdt, small_labels, compress):
    path = sdt_cache_path(tmp_path, "berlin_000001_000019")
    assert path == tmp_path / "berlin" / "berlin_000001_000019.sdt"
    size = write_sdt_file(path, small_sdt, labels=small_labels, compress=compress)
    assert size == path.stat().st_size and (size < small_sdt.nbytes) == compress
    loaded = read_sdt_file(path, expected_shape=small_sdt.shape, expected_clip=127)
    np.testing.assert_array_equal(loaded, small_sdt)
    assert loaded.dtype == np.int8 and not loaded.flags.writeable
    assert isinstance(loaded, np.memmap) != compress  # raw files are memory-mapped
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_cache_rejects_mismatch_and_corruption(tmp_path, small_sdt, small_labels):
    path = tmp_path / "a.sdt"
    write_sdt_file(path, small_sdt, labels=small_labels)
    good = path.read_bytes()
    with pytest.raises(UserError, match="another resolution or class count"):
        read_sdt_file(path, expected_shape=(19, 40, 60))
    with pytest.raises(UserError, match="clipped at 127"):
        read_sdt_file(path, expected_clip=64)
    for name, data in [("truncated", good[:-10]), ("empty", b""), ("header only", good[:64]),
                       ("flipped payload byte", good[:500] + bytes([good[500] ^ 1]) + good[501:]),
                       ("flipped header byte", good[:20] + bytes([good[20] ^ 1]) + good[21:]),
                       ("not ours", b"\x89PNG\r\n\x1a\n" + good[8:])]:
        path.write_bytes(data)
        with pytest.raises(UserError) as err:
            read_sdt_file(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(UserError, match="not found"):
        read_sdt_file(tmp_path / "missing.sdt")
    with pytest.raises(ValueError):
        write_sdt_file(path, small_sdt.astype(np.int16), labels=small_labels)


def _fail_mid_write(monkeypatch):
    """Make every file opened by the atomic writer accept half of the data, then fail with ENOSPC."""
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2]))
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(real_fdopen(fd, mode, *a, **k)))


def test_disk_full_leaves_no_file(tmp_path, small_sdt, small_labels, monkeypatch):
    _fail_mid_write(monkeypatch)
    with pytest.raises(OSError):
        write_sdt_file(tmp_path / "x" / "a.sdt", small_sdt, labels=small_labels)
    assert list((tmp_path / "x").iterdir()) == []


# ----------------------------------------------------------------------------------------------------------
# precompute_sdt.py


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("sdt") / "demo", num_train=4, num_val=1, height=64, width=128,
                            seed=3, progress=False)


def _expected(demo_root: Path, out: Path) -> dict[Path, np.ndarray]:
    labels = sorted((demo_root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))
    return {sdt_cache_path(out, p.name.replace("_gtFine_labelIds.png", "")):
            compute_sdt(read_train_ids(str(p)), CITYSCAPES.num_classes) for p in labels}


def test_precompute_writes_resumes_and_verifies(demo_root, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["--data-root", str(demo_root), "--split", "train", "--out", str(out)]
    assert precompute_sdt.main(args + ["--jobs", "2"]) == 0
    expected = _expected(demo_root, out)
    for path, sdt in expected.items():
        np.testing.assert_array_equal(read_sdt_file(path, expected_shape=sdt.shape), sdt)

    # Simulated crash: a stale temp file, a partial (truncated) file, a corrupt file, a missing file.
    truncated, corrupt, missing, untouched = list(expected)
    stale = truncated.parent / f".{truncated.name}.abc123.tmp"
    stale.write_bytes(b"half a file")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    data = bytearray(corrupt.read_bytes())
    data[-7] ^= 0x10
    corrupt.write_bytes(bytes(data))
    missing.unlink()
    before = untouched.stat()
    capsys.readouterr()
    assert precompute_sdt.main(args + ["--jobs", "1", "--compress"]) == 0
    assert "3 written, 1 already valid, 1 stale temp file removed" in capsys.readouterr().err
    after = untouched.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # valid file skipped
    assert not stale.exists()
    for path, sdt in expected.items():
        np.testing.assert_array_equal(read_sdt_file(path), sdt)
    assert inspect_sdt_file(corrupt).compressed and not inspect_sdt_file(untouched).compressed

    # --verify: clean cache passes; a flipped byte (CRC) and a wrong-but-well-formed file are both reported.
    assert precompute_sdt.main(args + ["--verify", "--jobs", "1"]) == 0
    data = bytearray(untouched.read_bytes())
    data[100] ^= 0x01
    untouched.write_bytes(bytes(data))
    wrong = expected[corrupt].copy()
    wrong[0, 0, 0] = -wrong[0, 0, 0] if wrong[0, 0, 0] else 1
    label_png = next(demo_root.rglob(corrupt.name.replace(".sdt", "_gtFine_labelIds.png")))
    write_sdt_file(corrupt, wrong, labels=read_train_ids(str(label_png)))
    capsys.readouterr()
    assert precompute_sdt.main(args + ["--verify", "--jobs", "1"]) == EXIT_PARTIAL_FAILURE  # 2 differ, 2 match
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "1 of" in err and "2 with problems" in err


def test_second_precompute_on_one_cache_folder_stops_naming_the_first(demo_root, tmp_path, lock_holder):
    """Another precompute holds the cache folder (a real process): this one stops with one line and touches
    nothing, not even the temp files that look stale to it (they may be the other's)."""
    out = tmp_path / "cache"
    holder = lock_holder(out, "precompute_sdt.py")
    in_flight = out / "city" / ".frame.sdt.abc123.tmp"
    in_flight.parent.mkdir()
    in_flight.write_bytes(b"being written by the other process")
    with pytest.raises(UserError) as err:
        precompute_sdt.main(["--data-root", str(demo_root), "--split", "train", "--out", str(out), "--jobs", "1"])
    assert str(err.value) == f"{out}: in use by precompute_sdt.py (PID {holder.pid}); wait for it to finish or stop it"
    assert in_flight.exists() and list(out.rglob("*.sdt")) == []


def test_precompute_bad_inputs(demo_root, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    args = ["--data-root", str(demo_root), "--split", "train", "--out", str(out), "--jobs", "1"]
    # a cache made at another resolution is redone (never read as valid) ...
    first = sorted(_expected(demo_root, out))[0]
    write_sdt_file(first, np.zeros((19, 32, 64), np.int8), labels=np.zeros((32, 64), np.uint8))
    with pytest.raises(UserError, match="another resolution"):
        read_sdt_file(first, expected_shape=(19, 64, 128))
    # ... but a full disk stops the run with one clear line and no half-written file
    _fail_mid_write(monkeypatch)
    with pytest.raises(UserError, match="free disk space") as err:
        precompute_sdt.main(args)
    assert "\n" not in str(err.value)
    assert not [p for p in out.rglob("*") if p.is_file() and p not in (first, out / LOCK_NAME)]
    monkeypatch.undo()
    assert precompute_sdt.main(args) == 0  # the rerun redoes the wrong-resolution file
    assert read_sdt_file(first, expected_shape=(19, 64, 128)).shape == (19, 64, 128)

    # unknown label values: the error names the label file
    bad_root = tmp_path / "bad"
    generate_dataset(bad_root, num_train=1, num_val=0, height=64, width=64, seed=0, progress=False)
    label_path = next(bad_root.rglob("*_gtFine_labelIds.png"))
    ids = np.array(Image.open(label_path))
    ids[0, 0] = 200
    Image.fromarray(ids).save(label_path)
    with pytest.raises(UserError, match=str(label_path)):
        precompute_sdt.main(["--data-root", str(bad_root), "--split", "train", "--out", str(tmp_path / "c2"),
                             "--jobs", "1"])
    assert not list((tmp_path / "c2").rglob("*.sdt"))


@pytest.mark.parametrize("crop", [None, (32, 48)], ids=["native", "crop"])
def test_sdt_sources_agree_on_native_frames_and_differ_under_a_crop(demo_root, tmp_path, crop):
    """docs/sdt.md: the maps of --sdt-source cpu (workers), cache (precompute_sdt.py's files) and gpu (the
    device batch's labels, as engine.steps.device_batch computes them) are equal on native frames (flipped or
    not); under a crop, cpu and cache crop the whole frame's map, gpu maps the cropped label: they differ."""
    from data_utils.cityscapes import load_split
    from data_utils.dataset import SegmentationDataset

    cache = tmp_path / "cache"
    assert precompute_sdt.main(["--data-root", str(demo_root), "--split", "train", "--out", str(cache),
                                "--jobs", "1"]) == 0
    records = load_split(demo_root, "train")
    common = {"hflip": True, "seed": 5, "image_dtype": "uint8", "crop_size": crop}
    cpu = SegmentationDataset(records, sdt_source="cpu", **common)
    cached = SegmentationDataset(records, sdt_source="cache", sdt_cache_dir=cache, **common)
    gpu = SegmentationDataset(records, sdt_source="none", **common)  # labels only: the SDT is made on the device
    differ = []
    for i in range(len(cpu)):
        worker_sdt = cpu[i]["sdt"]
        assert torch.equal(cached[i]["sdt"], worker_sdt)
        label = gpu[i]["label"]
        assert torch.equal(label, cpu[i]["label"])  # the same flip and window
        device_sdt = compute_sdt_torch(label[None].long(), cpu.num_classes, validate=False)[0]
        differ.append(not torch.equal(device_sdt, worker_sdt))
    assert any(differ) if crop else not any(differ), differ


def _liviaets_one_hot2dist(label: np.ndarray, num_classes: int) -> np.ndarray:
    """LIVIAETS boundary-loss's one_hot2dist, written out: per present class, edt(~M) on ~M, -(edt(M) - 1) on M."""
    from scipy.ndimage import distance_transform_edt as edt

    res = np.zeros((num_classes, *label.shape))
    for c in range(num_classes):
        pos = label == c
        if pos.any():
            res[c] = edt(~pos) * ~pos - (edt(pos) - 1) * pos
    return res


def _study_readme_sdt(label: np.ndarray, num_classes: int) -> np.ndarray:
    """The study README's signed_distance_transform, written out: edt(~M) - edt(M) for a present, not full class
    (else 0), divided per class by its largest |value| + 1e-7."""
    from scipy.ndimage import distance_transform_edt as edt

    res = np.zeros((num_classes, *label.shape))
    for c in range(num_classes):
        m = label == c
        if m.any() and not m.all():
            res[c] = edt(~m) - edt(m)
    return res / (np.abs(res).reshape(num_classes, -1).max(1) + 1e-7)[:, None, None]


def test_differences_from_liviaets_and_the_study_readme():
    """docs/sdt.md's table, cell by cell: inside offset of 1, rounding, clip, ignore, absent and full classes,
    per-class-maximum normalisation."""
    C = 4
    label = blob_label(40, 52, 3, seed=5, ignore=False)  # classes 0..2 present, 3 absent, no ignore
    ours = compute_sdt(label, C).astype(np.float64)
    inside = np.stack([label == c for c in range(C)])
    livi = _liviaets_one_hot2dist(label, C)
    np.testing.assert_array_equal(ours, np.rint(livi - inside))  # LIVIAETS is ours + 1 inside, then rounding
    assert np.any(livi != np.rint(livi))  # ... which they don't do
    phi = livi - inside  # the unrounded signed distance, the study README's before normalisation
    readme = _study_readme_sdt(label, C)
    scale = np.abs(phi).reshape(C, -1).max(1) + 1e-7
    np.testing.assert_allclose(readme * scale[:, None, None], phi, rtol=1e-12, atol=1e-12)
    assert scale[0] != scale[1]  # a different scale per class, against our fixed 127
    assert np.allclose(np.abs(readme[:3]).reshape(3, -1).max(1), 1.0) and not readme[3].any()
    assert not ours[3].any() and not livi[3].any()  # absent class: 0 for all three

    far = np.ones((3, 300), np.uint8)
    far[:, 0] = 0  # class 1 reaches 299 px from class 0
    assert compute_sdt(far, 2)[0].max() == 127 and _liviaets_one_hot2dist(far, 2)[0].max() == 299

    full = np.zeros((6, 7), np.uint8)
    assert not compute_sdt(full, 2).any() and not _study_readme_sdt(full, 2).any()
    assert _liviaets_one_hot2dist(full, 2)[0].any()  # not guarded there

    ignored = blob_label(30, 30, 3, seed=6)
    assert not compute_sdt(ignored, 3)[:, ignored == 255].any()  # 0 at ignore here; no ignore label there
