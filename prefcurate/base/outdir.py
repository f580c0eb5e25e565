"""Where a command may write: one guard for every ``--out``, and the proof of what prefcurate wrote.

Every command with an output (analyze, route, synth, plot, score, train, demo, bench) checks it
here before reading any data, so a wrong ``--out`` costs nothing and never costs the user a file:

- ``/``, the home directory, the working directory or any folder above it, anything under
  ``/proc``, ``/sys`` or ``/dev``, and a symbolic link are refused;
- an output that is, contains or lies inside an input is refused;
- an existing output needs ``--force``, and ``--force`` replaces only a folder prefcurate wrote:
  one that holds prefcurate's manifest (:data:`MANIFEST`, the tool's signature and the names of
  the entries it wrote) and nothing else. Anything else there is named and left alone.

Temporary siblings (``.NAME.tmp-PID``) carry a marker (:data:`TEMP_MARKER`) naming the tool and
the PID that made them; only those whose process is gone are cleaned up, never a folder that
merely looks like one. :func:`out_lock` keeps two processes from writing one ``--out`` at once.

Example::

    >>> from prefcurate.base.outdir import check_out_dir
    >>> check_out_dir("splits/uf", force=False, inputs=["pairs.jsonl"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from prefcurate.base import interrupt
from prefcurate.base.errors import InputError

TOOL = "prefcurate"
#: The manifest in every output folder prefcurate writes: its signature and entries.
MANIFEST = ".prefcurate-manifest.json"
#: The marker in every temporary folder prefcurate makes: the tool and the PID.
TEMP_MARKER = ".prefcurate-temp.json"
_SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


# --------------------------------------------------------------------------------------------------
# the guard


def check_out_dir(
    path: str | Path,
    *,
    force: bool,
    inputs: Iterable[str | Path] = (),
    flag: str = "--out",
) -> Path:
    """Refuse an output folder that is dangerous, or existing without ``force``; return it.

    An existing empty folder is fine; one holding anything its manifest does not claim is refused
    even with ``force``, naming what is there.
    """
    path = Path(path)
    check_place(path, inputs, flag)
    try:
        exists = path.exists()
        parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    except PermissionError as exc:
        raise InputError(
            "permission denied", where=path, fix="choose an output folder you can write to"
        ) from exc
    if exists and not path.is_dir():
        raise InputError(
            f"{flag} exists and is not a directory", where=path, fix="choose a folder name"
        )
    if exists:
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise InputError(
                f"{flag} holds files prefcurate did not write ({shown}); refusing to replace it",
                where=path,
                fix=f"choose a new or empty folder for {flag}",
            )
        if not force:
            raise InputError(
                "output directory exists",
                where=path,
                fix="pass --force (force=True from Python) to replace it, or choose another",
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(
                "permission denied", where=path, fix="choose an output folder you can write to"
            )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(
            "permission denied", where=parent, fix="choose an output folder you can write to"
        )
    return path


def check_out_file(
    path: str | Path, *, force: bool, inputs: Iterable[str | Path] = (), flag: str = "--out"
) -> Path:
    """The file counterpart of :func:`check_out_dir`: never an input, a folder or a link."""
    path = Path(path)
    check_place(path, inputs, flag)
    if path.exists() and path.is_dir():
        raise InputError(f"{flag} is a directory", where=path, fix="name a file")
    if path.exists() and not force:
        raise InputError("output file exists", where=path, fix="pass --force to replace it")
    parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(
            "permission denied", where=parent, fix="choose an output folder you can write to"
        )
    return path


def check_place(path: Path, inputs: Iterable[str | Path], flag: str) -> None:
    fix = f"choose a new folder for {flag}, e.g. {flag} out/run1"
    if not str(path).strip():
        raise InputError(f"{flag} is empty", fix=fix)
    if path.is_symlink():
        raise InputError(
            f"{flag} is a symbolic link", where=path, fix="point at the real folder, not the link"
        )
    try:
        target = path.resolve()
        cwd = Path.cwd().resolve()
        home = Path.home().resolve()
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{flag} cannot be resolved ({exc})", where=path, fix=fix) from exc
    if target == Path("/") or target == home or target == cwd or target in cwd.parents:
        what = "/" if target == Path("/") else "the home directory" if target == home else None
        what = what or "the working directory or a folder above it"
        raise InputError(f"{flag} is {what}; refusing to write there", where=path, fix=fix)
    if any(target == tree or tree in target.parents for tree in _SYSTEM_TREES):
        raise InputError(f"{flag} is inside a system folder", where=path, fix=fix)
    for item in inputs:
        data = Path(item)
        if not str(item) or any(ch in str(item) for ch in "*?["):
            data = Path(str(item).split("*")[0].split("?")[0].split("[")[0] or ".")
        try:
            source = data.resolve()
        except (OSError, RuntimeError):
            continue
        if source == target or target in source.parents:
            raise InputError(
                f"{flag} is or contains the input {item}; refusing to overwrite it",
                where=path,
                fix=fix,
            )
        if source.is_dir() and source in target.parents:
            raise InputError(f"{flag} lies inside the input folder {item}", where=path, fix=fix)


def foreign_entries(path: Path, *, allowed: Iterable[str] | None = None) -> list[str]:
    """Entries of ``path`` that prefcurate's manifest does not claim (sorted); [] if none."""
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return []
    claimed = _claimed(path, allowed)
    if claimed is None:
        return entries
    return [e for e in entries if not _is_claimed(e, claimed)]


def _claimed(path: Path, allowed: Iterable[str] | None) -> set[str] | None:
    """What prefcurate may own in ``path`` (names or glob patterns, its manifest included):
    ``allowed`` (the names a folder of this kind may hold, e.g. a run directory), else the
    entries its manifest claims; None when there is neither."""
    if allowed is not None:
        names = set(allowed)
    else:
        manifest = read_manifest(path)
        if manifest is None:
            return None
        names = set(manifest.get("entries", []))
    return names | {MANIFEST}


def _is_claimed(name: str, claimed: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in claimed)


def read_manifest(path: Path) -> dict | None:
    """The manifest of a folder prefcurate wrote, or None (missing, unreadable, not ours)."""
    try:
        document = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("tool") != TOOL:
        return None
    return document


def write_manifest(path: Path, *, kind: str, entries: Iterable[str] | None = None) -> None:
    """Sign ``path`` as prefcurate's: the tool, the command, and the entries it wrote."""
    path = Path(path)
    names = (
        sorted(entries)
        if entries is not None
        else sorted(p.name for p in path.iterdir() if p.name not in (MANIFEST, TEMP_MARKER))
    )
    document = {"tool": TOOL, "kind": kind, "entries": names}
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path / MANIFEST)


def clear_own(path: Path, *, allowed: Iterable[str] | None = None) -> None:
    """Delete what prefcurate wrote in ``path`` (checked by :func:`check_out_dir`), keep the rest.

    ``allowed`` (names or glob patterns) defaults to the entries the manifest claims.
    """
    path = Path(path)
    claimed = _claimed(path, allowed) or {MANIFEST}
    for target in sorted(path.iterdir()):
        if not _is_claimed(target.name, claimed):
            continue
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)


def open_dir(
    path: str | Path,
    *,
    force: bool,
    kind: str,
    entries: Iterable[str],
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Make ``path`` ready for a command that writes a folder step by step (demo, bench).

    The folder is checked as :func:`check_out_dir` does, emptied of what prefcurate wrote there
    before (with ``force``), and signed at once with the ``entries`` (names or glob patterns) the
    command may write, so a run killed half-way can still be replaced with ``--force``. Call
    :func:`write_manifest` at the end to list what was actually written.
    """
    path = check_out_dir(path, force=force, inputs=inputs)
    if path.exists():
        clear_own(path)
    path.mkdir(parents=True, exist_ok=True)
    write_manifest(path, kind=kind, entries=entries)
    return path


# --------------------------------------------------------------------------------------------------
# temporary siblings


def make_temp_dir(path: Path) -> Path:
    """An empty hidden sibling ``.NAME.tmp-PID`` marked as this process's temporary folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    interrupt.register(tmp)  # before it exists, so Ctrl-C at any moment removes it
    if tmp.exists() and is_own_temp(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    mark_temp(tmp)
    return tmp


def mark_temp(directory: Path) -> None:
    document = {"tool": TOOL, "pid": os.getpid(), "host": socket.gethostname()}
    (directory / TEMP_MARKER).write_text(json.dumps(document) + "\n", encoding="utf-8")


def is_own_temp(directory: Path, *, dead_only: bool = False) -> bool:
    """Whether ``directory`` holds prefcurate's temp marker (and, with ``dead_only``, its
    process is gone from this machine)."""
    try:
        marker = json.loads((directory / TEMP_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("tool") != TOOL:
        return False
    if not dead_only:
        return True
    pid = marker.get("pid")
    if not isinstance(pid, int) or marker.get("host") != socket.gethostname():
        return False
    return not _alive(pid)


def remove_stale(path: Path) -> list[Path]:
    """Remove temporary siblings of ``path`` left by killed prefcurate runs; return them.

    Only folders with prefcurate's marker and a PID that is no longer alive go; a user's
    ``.results.bak-2024`` or any unmarked look-alike stays.
    """
    removed = []
    for stale in Path(path).parent.glob(f".{Path(path).name}.*-*"):
        if stale.is_dir() and not stale.is_symlink() and is_own_temp(stale, dead_only=True):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------------
# one writer per output


@contextlib.contextmanager
def out_lock(path: str | Path, *, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, or refuse: "in use by PID N" (exit 2).

    The lock is a POSIX ``flock`` on a hidden sibling ``.NAME.lock`` holding the owner's PID, so
    a killed process never leaves it held (the kernel releases it); the file is removed on exit.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    lock = path.absolute().with_name(f".{path.name}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield  # an unwritable folder is reported by the write itself
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(
                f"{flag} is in use by PID {owner}",
                where=path,
                fix="wait for that process to finish, or choose another --out",
            ) from None
        try:  # the file may have been removed by its last owner between open and flock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    interrupt.register(lock)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
        interrupt.unregister(lock)
