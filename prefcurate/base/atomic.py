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
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from prefcurate.base import interrupt
from prefcurate.base.outdir import (
    TEMP_MARKER,
    check_out_dir,
    make_temp_dir,
    mark_temp,
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
    try:
        yield tmp
        write_manifest(tmp, kind=kind)
        for child in tmp.rglob("*"):
            if child.is_file():
                _fsync(child)
        (tmp / TEMP_MARKER).unlink()  # the marker is of the temporary folder, not the output
        if path.exists():
            if _exchange(tmp, path):
                mark_temp(tmp)
                shutil.rmtree(tmp)
            else:  # no atomic exchange here: the shortest possible window between two renames
                mark_temp(path)
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        interrupt.unregister(tmp)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system can't."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)
