"""An output folder written as a whole or not at all: built in a temp folder beside it, then swapped in.

    with staged_folder(Path(args.out), "--out") as out:  # `out` is the temp folder: write out / name as usual
        ...
    # now args.out holds exactly this output; after an error, a full disk or Ctrl-C, it is as it was before

The temp folder `.NAME.staging-XXXX` is a sibling of the folder (the same filesystem, so `os.rename` moves it
in one step). At the end the old folder is renamed aside, the new one renamed to its name, and the old one
removed: the program's files of an earlier output that this one does not make are gone, so nothing stale is
left beside the new files. Files someone else put in the folder are kept: each output records its files in
`FOLDER/.staged_files`, and a file of the old folder missing from that list (or every file, in a folder
without the list, such as one written before this module existed: nothing in it can be told stale) is carried
into the new one (hard-linked, so an error before the swap leaves it where it was); a file of the same name in
the new output replaces it. A carried file is on no list: it stays until someone removes it.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from utils.fileio import UMASK, UserError, atomic_write_text, fsync_dir

FILE_LIST = ".staged_files"  # in the published folder: the files of its output, one relative path a line


@contextmanager
def staged_folder(folder: str | os.PathLike, flag: str, publish_on: tuple[type[BaseException], ...] = (),
                  keep: tuple[str, ...] = (), marker: str | None = None) -> Iterator[Path]:
    """Yield a temp folder to write the output in; publish it as `folder` when the block ends (module docstring).

    An exception discards it, `folder` untouched, except one of `publish_on` (raised once the output is
    complete, e.g. an upload that failed after the files were written): the folder is published, then the
    exception raised again; a UserError's message then names `folder`, not the temp folder. A `folder` that
    cannot be written (read-only, a file in its way, a mount point) is a UserError naming `flag`, at once.
    `keep` names entries of `folder` that are never stale: their files are always carried into the new output
    (what accumulates, such as W&B's offline runs, each in its own folder). A non-empty `folder` that is no
    earlier output (neither the list nor `marker`, a file every output has) is refused, and so is the current
    folder or one holding it: the swap would move them away (a project folder given by mistake).
    """
    folder = Path(folder).absolute()
    if folder.is_symlink():  # the folder it points to is the one replaced, not the link
        folder = folder.resolve()
    _check_replaceable(folder, flag, marker)
    stage = _make_stage(folder, flag)
    try:
        yield stage
    except publish_on as e:
        _publish(stage, folder, keep)
        if isinstance(e, UserError):
            raise UserError(str(e).replace(str(stage), str(folder))) from None
        raise
    except OSError as e:  # a full disk: name the file as the user knows it, not in the temp folder
        shutil.rmtree(stage, ignore_errors=True)
        if not (e.filename and str(e.filename).startswith(f"{stage}{os.sep}")):
            raise
        raise OSError(e.errno, e.strerror, str(e.filename).replace(str(stage), str(folder), 1)) from e
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _publish(stage, folder, keep)


def _check_replaceable(folder: Path, flag: str, marker: str | None) -> None:
    if not folder.is_dir():
        return
    if Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise UserError(f"{folder}: the current folder, or one holding it, which the output would replace as a "
                        f"whole; pass another folder as {flag}")
    if (folder / FILE_LIST).is_file() or (marker and (folder / marker).is_file()) or not any(folder.iterdir()):
        return
    raise UserError(f"{folder}: not empty and not an earlier output (no {FILE_LIST}"
                    f"{f' or {marker}' if marker else ''}), and the output replaces the folder as a whole; pass a "
                    f"new or empty folder as {flag}")


def _make_stage(folder: Path, flag: str) -> Path:
    fix = f"pass a writable folder as {flag}"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: not a folder; {fix}")
    if folder.is_dir() and is_mount_point(folder):
        raise UserError(f"{folder}: a mount point, which cannot be replaced by a rename; pass a folder inside it "
                        f"as {flag}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    except OSError as e:
        where = f" ({e.filename})" if e.filename and Path(e.filename).parent != folder.parent else ""
        raise UserError(f"{folder}: cannot write an output folder there: {e.strerror or e}{where}; {fix}") from None
    os.chmod(stage, 0o777 & ~UMASK)  # mkdtemp makes 0700; give it the mode mkdir would
    return stage


def is_mount_point(folder: Path) -> bool:
    """Whether `folder` is where a filesystem is mounted (renaming it fails with EBUSY): another device than its
    parent's (`os.path.ismount`), or listed in /proc/self/mountinfo, which also has bind mounts of a folder of the
    same filesystem (docker's `-v /host/dir:/out`, read-only or not), which st_dev cannot tell."""
    if os.path.ismount(folder):
        return True
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:  # not Linux
        return False
    return str(folder.resolve()) in {mountinfo_path(fields[4]) for fields in map(str.split, lines) if len(fields) > 4}


def mountinfo_path(field: str) -> str:
    """A mount point as /proc/self/mountinfo spells it (space, tab, newline and backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _files(folder: Path) -> set[str]:
    """The files (and symlinks) below `folder`, as paths relative to it."""
    return {str(Path(root, name).relative_to(folder)) for root, dirs, files in os.walk(folder)
            for name in files + [d for d in dirs if Path(root, d).is_symlink()]}


def _publish(stage: Path, folder: Path, keep: tuple[str, ...]) -> None:
    """Swap `stage` in as `folder` (module docstring); on any error `folder` is as it was and `stage` is gone."""
    old = stage.with_name(stage.name.replace(".staging-", ".old-"))
    try:
        staged = _files(stage)
        atomic_write_text(stage / FILE_LIST, "".join(f"{name}\n" for name in sorted(staged)))
        if folder.exists():
            _carry_foreign_files(folder, stage, staged, keep)
            os.rename(folder, old)
        try:
            os.rename(stage, folder)
        except BaseException:
            if old.exists():
                os.rename(old, folder)
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def _carry_foreign_files(folder: Path, stage: Path, staged: set[str], keep: tuple[str, ...]) -> None:
    """Hard-link into `stage` (holding the files `staged`) the files of `folder` that its last output did not
    make (FILE_LIST), and those below `keep`."""
    listed = folder / FILE_LIST
    ours = set(listed.read_text().splitlines()) if listed.is_file() else set()
    ours = {name for name in ours if Path(name).parts[0] not in keep}
    for name in sorted(_files(folder) - ours - staged - {FILE_LIST}):
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(folder / name, stage / name, follow_symlinks=False)
        except OSError:  # a filesystem without hard links
            shutil.copy2(folder / name, stage / name, follow_symlinks=False)
