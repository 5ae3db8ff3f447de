"""One process at a time per output folder: an exclusive `fcntl.flock` on `FOLDER/.lock`.

    with folder_lock(run_dir, "train.py", hint="wait for it to finish, or pass another --out"):
        ...  # only this process writes into run_dir

The kernel releases the lock when the holder's file descriptor closes, at the latest when the process
dies (also by SIGKILL), so a killed run never leaves a stale lock. The holder writes its PID and program
into the file, and a second process stops at once with one line naming the folder and that PID. The
`.lock` file itself stays (removing it would let a third process lock a fresh inode while the second
still holds the old one). Local filesystems only: flock on NFS is not reliable everywhere.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from utils.fileio import NO_FOLDER_THERE, UserError, named_os_errors

LOCK_NAME = ".lock"


@contextmanager
def folder_lock(folder: str | os.PathLike, program: str, hint: str) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) for the `with` block; yields the lock file.

    Raises UserError `<folder>: in use by <program> (PID <pid>); <hint>` when another process holds it, and
    one naming the folder when it cannot be written (read-only, or `.lock` is a folder).
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, where {program} keeps its lock file; move or remove it and "
                        "rerun") from None
    except OSError as e:
        if e.errno not in NO_FOLDER_THERE:  # read-only, forbidden, a file in the way
            raise
        raise UserError(f"{folder}: cannot write there ({e.filename}: {e.strerror}); {program} writes its "
                        "outputs into that folder: make it writable, or work on a writable copy") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process (PID unknown)"
            raise UserError(f"{folder}: in use by {holder}; {hint}") from None
        with named_os_errors(path):  # a full disk: run_main's one line names the lock file
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{program} (PID {os.getpid()})\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock



def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first: what creating `folder` creates."""
    missing = []
    for path in (Path(folder).absolute(), *Path(folder).absolute().parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def discard_unused(folder: str | os.PathLike, created_parents: list[Path] = ()) -> None:
    """Remove `folder` if it holds nothing but its `.lock` (a run that stopped on an input error before
    writing anything), then each of `created_parents` (deepest first: the parents this run created,
    `missing_folders`) that is empty, so a failed start leaves no folder behind. Called by the lock's holder."""
    folder = Path(folder)
    try:
        if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
            for parent in created_parents:
                parent.rmdir()  # not empty (another run's folder appeared): OSError, stop
    except OSError:
        pass  # not ours to clean after all (a file appeared, or no permission): leave it
