"""Atomic file operations: a file or a directory appears complete or not at all.

Every command that writes (``analyze --out``, ``route``, ``score``, ``synth``, a training run's
model) goes through :func:`atomic_file` or :func:`atomic_dir`, so a run killed at any moment leaves
the old output or the new complete one, never a mix. An output folder is checked by
:mod:`prefcurate.base.outdir` first (only a folder prefcurate wrote may be replaced) and signed with
its manifest. The trainer imports this module too: it is part of the split contract, and it needs
nothing but the standard library and prefcurate's torch-free :mod:`~prefcurate.base.outdir`,
:mod:`~prefcurate.base.interrupt` and :mod:`~prefcurate.base.errors`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from prefcurate.base import interrupt
from prefcurate.base.errors import InputError
from prefcurate.base.log import get_logger
from prefcurate.base.outdir import (
    TEMP_MARKER,
    check_out_dir,
    clear_own,
    foreign_entries,
    make_temp_dir,
    remove_stale,
    write_manifest,
)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    interrupt.register(tmp)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        interrupt.unregister(tmp)


@contextlib.contextmanager
def atomic_dir(
    path: str | Path,
    *,
    force: bool = False,
    kind: str = "output",
    inputs: Iterable[str | Path] = (),
) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``path`` only when the block succeeds.

    ``path`` is checked by :func:`prefcurate.base.outdir.check_out_dir` (an existing one needs
    ``force`` and must be a folder prefcurate wrote); the new folder is signed with prefcurate's
    manifest (``kind`` names the command) and swapped for the old one in one atomic exchange
    (``renameat2(RENAME_EXCHANGE)`` on Linux), so a reader, or a run killed at any moment, sees
    the old directory or the new complete one, never a mix. Temporary siblings of killed runs
    (marked ``.NAME.tmp-PID`` folders whose process is gone) are removed on the next run.
    """
    path = Path(path)
    check_out_dir(path, force=force, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = make_temp_dir(path)  # registered for Ctrl-C before it is created
    swapped = False
    try:
        yield tmp
        write_manifest(tmp, kind=kind)
        for child in tmp.rglob("*"):
            if child.is_file():
                _fsync(child)
        _swap_in(tmp, path)
        swapped = True
        _fsync_dir(path.parent)
    finally:
        if not swapped and tmp.is_dir() and not tmp.is_symlink():  # the new output, unused
            shutil.rmtree(tmp, ignore_errors=True)
        interrupt.unregister(tmp)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path``; the old output is discarded, never a file
    prefcurate did not write.

    Runs as one critical section: an interrupt waits for it, so it never lands between the two
    renames of the fallback, nor renames ``tmp`` away just before the exchange. The old folder is
    checked again just before: a file saved into it while the command ran is named and the swap
    refused.
    """
    with interrupt.critical():
        exists = path.exists() or path.is_symlink()
        if exists:
            _check_still_ours(path)
        (tmp / TEMP_MARKER).unlink()  # the marker is of the temporary folder, not the output
        if not exists:
            os.replace(tmp, path)
        elif _exchange(tmp, path):
            _discard_old(tmp, path)
        else:  # no atomic exchange here: two renames, the first undone if the second fails
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _discard_old(old, path)


def _check_still_ours(path: Path) -> None:
    foreign = foreign_entries(path) if path.is_dir() and not path.is_symlink() else [path.name]
    if foreign:
        raise InputError(
            f"files prefcurate did not write appeared in --out while this command ran "
            f"({', '.join(foreign[:5])}); left --out as it was",
            where=path,
            fix="move those files elsewhere, then run the command again",
        )


def _discard_old(old: Path, path: Path) -> None:
    """Delete the replaced output ``old``: what its manifest lists. Anything else (saved there in
    the instant before the swap), or anything that could not be deleted, is kept in
    ``.NAME.kept-PID`` and named in a warning; that folder carries no marker, so no later run
    removes it."""
    with contextlib.suppress(OSError):
        clear_own(old)
    left = sorted(p.name for p in old.iterdir()) if old.is_dir() else []
    if not left:
        with contextlib.suppress(OSError):
            old.rmdir()
        return
    kept = path.with_name(f".{path.name}.kept-{os.getpid()}")
    os.replace(old, kept)
    get_logger("outdir").warning(
        "%s: %s appeared in the old output while it was replaced; kept in %s",
        path,
        ", ".join(left[:5]),
        kept,
    )


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system can't.

    Only "this system has no exchange" is False (ENOSYS, EINVAL: no renameat2 or a file system
    without RENAME_EXCHANGE); any other failure (a path that vanished) is raised, never answered
    with the two-rename fallback.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)
