"""Atomic writes (temp file in the same folder, fsync, rename), the one error type shown to users, and the
entry scripts' exits.

A reader never sees a half-written file: either the old content or the new one. Entry scripts run their
`main` under `run_main`, which prints a `UserError` as a single line (`error: ...`), so every message names
the file and says what to do; its docstring is the exit-code contract of every script.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


UMASK = os.umask(0)  # the process's umask (read once: os.umask can only read it by setting it): the mode bits
os.umask(UMASK)      # that temp files and folders made 0600/0700 then lose, as open() and mkdir would


class UserError(Exception):
    """Bad input from the user (a missing file, a wrong shape, an unknown option): one line, path + fix."""


def user_message(e: UserError) -> str:
    """The one-line message of a UserError, also when it was raised in a DataLoader worker.

    torch re-raises a worker's exception in the main process as the same type with the message
    "Caught UserError in DataLoader worker process N.\nOriginal Traceback ...", whose last line is
    `utils.fileio.UserError: <the original message>` (torch._utils.ExceptionWrapper.reraise).
    """
    message = str(e)
    if message.startswith(f"Caught {type(e).__name__} ") and "\nOriginal Traceback" in message:
        return message.rstrip("\n").rsplit("\n", 1)[-1].partition(": ")[2]
    return message


EXIT_BAD_INPUT = 2  # argparse's own code for a usage error: a bad flag and a bad file answer alike (run_main)
EXIT_PARTIAL_FAILURE = 3  # done, but some items failed (listed at the end) while the others succeeded
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def run_main(main) -> None:
    """Entry-script runner: `sys.exit(main())`, with one exit code per kind of end, the same in every script.

    - 0: done.
    - 3 (`EXIT_PARTIAL_FAILURE`): done, but some items failed while the others succeeded; the failures are
      listed at the end: `evaluate.py --all` with a checkpoint that could not be evaluated,
      `precompute_sdt.py --verify` with frames that differ from the cache, a failed run of `engine.sweep_local`.
      `main()` returns it; a rerun redoes only what failed.
    - 2 (`EXIT_BAD_INPUT`): bad input. A `UserError` (also one raised in a DataLoader worker), or a write that
      failed on a full disk or a read-only path (`write_error_line`), becomes one `error: <file>: <reason>;
      <fix>` line on stderr, no traceback;
      argparse exits with 2 for a bad flag too. Under a launcher, once per machine (`print_error`); through
      `python -m engine.launch` the launch exits with the same codes.
    - 130 (`EXIT_INTERRUPTED`): Ctrl-C, or SIGTERM in train.py, evaluate.py and precompute_sdt.py, also sent to the
      whole process group (`utils.signals`): one `interrupted` line (train.py prints where to resume first).
    - 1: an unexpected error (a crash), with Python's traceback (a bug to report); nothing else exits with 1.
    """
    with _exit_codes():
        sys.exit(main())


@contextlib.contextmanager
def _exit_codes():
    """run_main's one-line exits (its docstring); anything else propagates with its traceback."""
    try:
        yield
    except UserError as e:
        print_error(f"error: {user_message(e)}")
        sys.exit(EXIT_BAD_INPUT)
    except OSError as e:
        line = write_error_line(e)
        if line is None:
            raise
        print_error(f"error: {line}")
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # Ctrl-C outside a script's own handler: no traceback, the shell's code 130
        if is_local_main_process():  # Ctrl-C reaches every process of a launch: one line
            print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


# Under a launcher (accelerate launch, torchrun) every process of a machine meets the same bad flag or file at
# once; the first process (LOCAL_RANK 0) prints it. The others wait this long first: when the first one exits,
# the launcher stops them, so the line comes once; an error only they meet is still printed, this much later.
LAUNCHED_ERROR_DELAY_S = 5.0


def is_local_main_process() -> bool:
    """Whether this is the first process on its machine: LOCAL_RANK (set by torchrun and accelerate launch for
    each process they start) is 0, or unset (a plain `python script.py`)."""
    return os.environ.get("LOCAL_RANK", "0") in ("", "0")


def print_error(line: str) -> None:
    """Print an error line on stderr, once per machine under a launcher (`LAUNCHED_ERROR_DELAY_S`)."""
    if not is_local_main_process():
        time.sleep(LAUNCHED_ERROR_DELAY_S)
    print(line, file=sys.stderr, flush=True)


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB" (binary units up to TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def free_space(path: str | os.PathLike) -> str:
    """Free space on the disk holding `path` (or its nearest existing parent), e.g. "12.3 MiB"."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return human_bytes(shutil.disk_usage(path).free)


def disk_full_advice(path: str | os.PathLike) -> str:
    """The fix for a write that failed for lack of space, with the free space there."""
    return f"{free_space(path)} free on that disk; free space there (or write elsewhere) and rerun"


# A write refused by the disk rather than by a bug: no space left, or no right to write there. run_main turns
# one that names its file (every atomic writer attaches it: `named_os_errors`) into one line.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
NO_FOLDER_THERE = (*NOT_WRITABLE, errno.ENOTDIR, errno.EEXIST)  # no folder made: read-only, forbidden, a file there


def write_error_line(e: OSError) -> str | None:
    """`<file>: <reason>; <fix>` for a full disk (with the free space there) or a read-only or forbidden path,
    when the error names its file; None for any other OSError (a bug, shown with its traceback)."""
    if not e.filename:
        return None
    if e.errno in DISK_FULL:
        return f"{e.filename}: {e.strerror}; {disk_full_advice(e.filename)}"
    if e.errno == errno.EROFS:
        return f"{e.filename}: {e.strerror}; choose a location on a writable disk and rerun"
    if e.errno in NOT_WRITABLE:
        return f"{e.filename}: {e.strerror}; fix its permissions or choose another location, and rerun"
    return None


@contextlib.contextmanager
def named_os_errors(path: str | os.PathLike):
    """Within: an OSError that names no file (what `write`, `flush` and `fsync` raise on a full disk) is raised
    again as the same OSError type and errno naming `path`, so run_main can say which file did not fit."""
    try:
        yield
    except OSError as e:
        if e.filename or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def make_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create the folder `path` (and its parents) and check that a file can be written in it.

    A read-only disk, a file in the way or a missing permission becomes a UserError naming the folder and
    `flag` (the option that chose it), before any work is done.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise UserError(f"{path}: cannot write an output folder there: {e.strerror or e}{where}; pass a writable "
                        f"folder as {flag}") from None
    return path


def parse_args_first(parse_args, check_paths=None) -> None:
    """For an entry script run as a program: parse and validate `sys.argv[1:]` before its heavy imports.

    Called between an entry script's light imports and `import torch`, so `--help` and every rejected flag
    answer at once, with `run_main`'s exit codes (argparse exits by itself; a UserError from validation
    becomes the one `error:` line). `check_paths(parsed)`, given what `parse_args` returned, checks that the
    files and folders named exist (cheap, torch-free checks; the full ones run where the files are read), so a
    mistyped path answers at once too. `main()` parses the same argv again, which takes milliseconds.
    """
    with _exit_codes():
        parsed = parse_args(sys.argv[1:])
        if check_paths is not None:
            check_paths(parsed)


class RenamedFlag(argparse.Action):
    """The old spelling of a renamed flag, kept working for one release: hidden from --help, it stores into
    the new flag's dest after one `warning:` line on stderr (once per process: entry scripts parse twice).

        parser.add_argument("--jobs", type=int, default=1, help="...")
        parser.add_argument("--workers", action=RenamedFlag, new="--jobs", dest="jobs", type=int)
    """
    warned: set[str] = set()

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string not in RenamedFlag.warned:
            RenamedFlag.warned.add(option_string)
            print(f"warning: {option_string} is now {self.new} (the old name goes in the next release)",
                  file=sys.stderr)
        setattr(namespace, self.dest, values)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (after a rename) so the rename survives a power cut; no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file asked for, not the random temp name
        raise OSError(e.errno, e.strerror, str(path)) from e
    try:
        with named_os_errors(path):  # a full disk fails in write/flush/fsync, which name no file
            os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the mode open() would
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def remove_temp_files(path: str | os.PathLike) -> int:
    """Delete the temp files `atomic_write_bytes(path, ...)` leaves when its process is killed mid-write
    (`.<name>.<random>.tmp` beside `path`); returns how many. Only for a path no live process is writing."""
    path = Path(path)
    stale = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for temp in stale:
        temp.unlink(missing_ok=True)
    return len(stale)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write `obj` as JSON atomically; NaN/inf (not valid JSON) are written as null."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, sort_keys=False) + "\n")


def json_safe(obj):
    """`obj` with every NaN/inf float replaced by None (JSON has no NaN), through dicts, lists and tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_yaml(path: str | os.PathLike, what: str):
    """The YAML file `path` (a sweep file, a --config file) as Python data; a missing or unreadable file or a
    YAML syntax error is one UserError line naming `what`, the file, and for a syntax error its line and column:
    `sweep.yaml: cannot read the sweep file at line 3, column 1: found character '\\t' that cannot start any
    token (YAML indents with spaces, not tabs)` (PyYAML's own message spans 5-8 lines quoting `<unicode string>`)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        tab = " (YAML indents with spaces, not tabs)" if "'\\t'" in str(e.problem) else ""
        raise UserError(f"{path}: cannot read the {what}{where}: {e.problem or e.context}{tab}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
