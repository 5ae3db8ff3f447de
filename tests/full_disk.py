"""A disk that fills when one named file is written, for the fault tests (tests/test_faults.py).

The file's `fsync` fails with ENOSPC and no file name, as `write`, `flush` and `fsync` do on a real full disk;
every other write goes through. It matches the file itself (an appended log) and the temp files the atomic
writers make for it (`.NAME.XXXX.tmp`). In a test: `monkeypatch.setattr(os, "fsync", failing_fsync(NAME))`;
for a real process of an entry script: `python tests/full_disk.py NAME SCRIPT ARGS...`.
"""
from __future__ import annotations

import errno
import os
import runpy
import sys
from pathlib import Path


def failing_fsync(name: str, temp_files: bool = True, fsync=os.fsync):
    """`os.fsync` that raises ENOSPC (no file name) for the file `name` and (`temp_files`) the atomic writers'
    temp files for it."""
    def full(fd: int) -> None:
        written = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if written == name or (temp_files and written.startswith(f".{name}.") and written.endswith(".tmp")):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)
    return full


if __name__ == "__main__":
    name, script, *args = sys.argv[1:]
    os.fsync = failing_fsync(name)
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` would have it
    runpy.run_path(script, run_name="__main__")
