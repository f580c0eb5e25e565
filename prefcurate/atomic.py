"""Atomic file operations: a file or a directory appears complete or not at all.

Every command that writes (``analyze --out``, ``route``, ``score``, ``synth``, a training run's
model) goes through :func:`atomic_file` or :func:`atomic_dir`, so a run killed at any moment leaves
the old output or the new complete one, never a mix. The trainer imports this module too: it is
part of the split contract, and it needs nothing but the standard library and
:mod:`prefcurate.errors`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prefcurate.errors import InputError


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``path`` only when the block succeeds.

    An existing ``path`` needs ``force``; it is swapped for the new directory in one atomic
    exchange (``renameat2(RENAME_EXCHANGE)`` on Linux), so a reader, or a run killed at any
    moment, sees the old directory or the new complete one, never a mix. Leftovers of killed runs
    (hidden ``.NAME.tmp-PID`` siblings) are removed on the next run.
    """
    path = Path(path)
    check_new_dir(path, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                _fsync(child)
        if path.exists():
            if _exchange(tmp, path):
                shutil.rmtree(tmp)
            else:  # no atomic exchange here: the shortest possible window between two renames
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_new_dir(path: Path, *, force: bool) -> None:
    """Refuse to replace an existing output directory unless asked to, or to write where we can't.

    Runs before any data is read, so a wrong ``--out`` costs nothing.
    """
    path = Path(path)
    try:
        exists = path.exists()
        parent = next((p for p in path.parents if p.exists()), Path("."))
    except PermissionError as exc:
        raise InputError(
            "permission denied", where=path, fix="choose an output folder you can write to"
        ) from exc
    if exists and not force:
        raise InputError(
            "output directory exists",
            where=path,
            fix="pass --force to replace it, or choose another",
        )
    if exists and not path.is_dir():
        raise InputError("output path exists and is not a directory", where=path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(
            "permission denied", where=parent, fix="choose an output folder you can write to"
        )


def _remove_stale(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
