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
import errno
import fnmatch
import glob as globlib
import json
import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prefcurate.base import interrupt
from prefcurate.base.errors import InputError, one_line
from prefcurate.base.log import get_logger

TOOL = "prefcurate"
#: The manifest in every output folder prefcurate writes: its signature and entries.
MANIFEST = ".prefcurate-manifest.json"
#: The marker in every temporary folder prefcurate makes: the tool and the PID.
TEMP_MARKER = ".prefcurate-temp.json"
_SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
_GLOB_CHARS = "*?["


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
        for named, source in input_paths(item):
            shown = str(item) if str(named) == str(item) else f"{item} ({named})"
            if source == target or target in source.parents:
                raise InputError(
                    f"{flag} is or contains the input {shown}; refusing to overwrite it",
                    where=path,
                    fix=fix,
                )
            if source.is_dir() and source in target.parents:
                raise InputError(f"{flag} lies inside the input folder {item}", where=path, fix=fix)


def expand_glob(spec: str | Path) -> list[Path] | None:
    """The paths a DATA glob matches (sorted), or None when ``spec`` is not a glob.

    A name that exists as typed is a path even if it holds ``*``, ``?`` or ``[``; ``**`` matches
    folders recursively. The loader (:func:`prefcurate.data.sources.resolve`) and the ``--out``
    guard both read a glob through this one function, so they agree on what it names.
    """
    text = str(spec)
    if not any(ch in text for ch in _GLOB_CHARS) or Path(text).exists():
        return None
    return sorted(Path(p) for p in globlib.glob(text, recursive=True))


def input_paths(item: str | Path) -> list[tuple[Path, Path]]:
    """Every path the input ``item`` reads, as named and resolved: the files a glob matches, a
    folder and the targets of the symbolic links inside it, or the file itself (links followed)."""
    text = str(item)
    if not text.strip():
        return []
    matches = expand_glob(text)
    found: list[tuple[Path, Path]] = []
    for named in matches if matches is not None else [Path(text)]:
        try:
            source = named.resolve()
        except (OSError, RuntimeError):
            continue
        found.append((named, source))
        if matches is None and source.is_dir():
            found += _linked_targets(named)
    return found


def _linked_targets(folder: Path) -> list[tuple[Path, Path]]:
    """The symbolic links under ``folder`` and where they point (the loader reads through them)."""
    targets = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(root) / name
            if entry.is_symlink():
                with contextlib.suppress(OSError, RuntimeError):
                    targets.append((entry, entry.resolve()))
    return targets


def foreign_entries(path: Path, *, allowed: Iterable[str] | None = None) -> list[str]:
    """Entries of ``path`` that prefcurate's manifest does not claim (sorted); [] if none.

    ``allowed`` (names or glob patterns a folder of this kind may hold, e.g. a run directory)
    replaces the manifest. Either way, a temporary folder carrying prefcurate's marker and a lock
    file carrying its signature are prefcurate's: they prove it themselves.
    """
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return []
    owns = _owner(path, allowed)
    if owns is None:
        return [e for e in entries if not _self_proven(path / e)]
    return [e for e in entries if not owns(e) and not _self_proven(path / e)]


def _owner(path: Path, allowed: Iterable[str] | None) -> Callable[[str], bool] | None:
    """Whether a name is prefcurate's in ``path``: one of the ``allowed`` patterns, else one of the
    exact names its manifest lists (a manifest lists what was written, never a pattern); None
    when there is neither."""
    if allowed is not None:
        patterns = {*allowed, MANIFEST}
        return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)
    manifest = read_manifest(path)
    if manifest is None:
        return None
    names = {*manifest["entries"], MANIFEST}
    return names.__contains__


def _self_proven(entry: Path) -> bool:
    """A temporary folder with prefcurate's marker, or a lock file with its signature."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return is_own_temp(entry)
    return entry.name.endswith(".lock") and _lock_owner(entry) is not None


def read_manifest(path: Path) -> dict | None:
    """The manifest of a folder prefcurate wrote, or None (missing, unreadable, not ours, or
    malformed: its ``entries`` must be a list of plain names, as :func:`write_manifest` writes)."""
    try:
        document = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("tool") != TOOL:
        return None
    entries = document.get("entries")
    if not isinstance(entries, list) or not all(_plain_name(e) for e in entries):
        return None
    return document


def _plain_name(name: object) -> bool:
    """A name inside one folder: no path separator, not '.' or '..', not empty."""
    return isinstance(name, str) and name not in ("", ".", "..") and not {"/", "\x00"} & set(name)


def write_manifest(path: Path, *, kind: str, entries: Iterable[str] | None = None) -> None:
    """Sign ``path`` as prefcurate's: the tool, the command, and the names of the entries it wrote
    (default: everything in the folder now)."""
    path = Path(path)
    names = (
        sorted(set(entries))
        if entries is not None
        else sorted(p.name for p in path.iterdir() if p.name not in (MANIFEST, TEMP_MARKER))
    )
    bad = [n for n in names if not _plain_name(n)]
    if bad:
        msg = f"a manifest lists plain names, not {bad[0]!r}"
        raise ValueError(msg)
    document = {"tool": TOOL, "kind": kind, "entries": names}
    tmp = path / f".{MANIFEST}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path / MANIFEST)


def clear_own(path: Path, *, allowed: Iterable[str] | None = None) -> None:
    """Delete what prefcurate wrote in ``path`` (checked by :func:`check_out_dir`), keep the rest.

    ``allowed`` (names or glob patterns) defaults to the names the manifest lists; temporary
    folders of prefcurate processes that are gone go too, a running one's stay.
    """
    path = Path(path)
    owns = _owner(path, allowed) or {MANIFEST}.__contains__
    for target in sorted(path.iterdir()):
        if target.is_dir() and not target.is_symlink() and is_own_temp(target, dead_only=True):
            shutil.rmtree(target)
        elif not owns(target.name):
            continue
        elif target.is_symlink() or not target.is_dir():
            target.unlink()
        else:
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
    before (with ``force``), and signed at once with the names of the ``entries`` the command
    may write, so a run killed half-way can still be replaced with ``--force``. Call
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
    ``.results.bak-2024`` or any unmarked look-alike stays. An output a killed run had moved
    aside (``.NAME.old-PID``, where no exchange of folders exists) while ``NAME`` is missing is
    put back first.
    """
    path = Path(path)
    pattern = f".{globlib.escape(path.name)}"
    _restore_moved_aside(path, pattern)
    removed = []
    for stale in path.parent.glob(f"{pattern}.*-*"):
        if stale.is_dir() and not stale.is_symlink() and is_own_temp(stale, dead_only=True):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _restore_moved_aside(path: Path, pattern: str) -> None:
    if path.exists() or path.is_symlink():
        return
    for old in sorted(path.parent.glob(f"{pattern}.old-*")):
        pid = old.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and old.is_dir() and not old.is_symlink()):
            continue
        if read_manifest(old) is None or is_own_temp(old) or _alive(int(pid)):
            continue
        os.replace(old, path)
        get_logger("outdir").warning(
            "%s: put back the output a killed run had moved aside to %s", path, old.name
        )
        return


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

    The lock is a POSIX ``flock`` on a hidden sibling ``.NAME.lock`` holding prefcurate's
    signature and the owner's PID, so a killed process never leaves it held (the kernel releases
    it); the file is removed on exit. No lock, no run: a lock file that cannot be opened (a
    folder or a symbolic link at its name, another user's file) is an :class:`InputError`, and
    the file is never opened through a link, so nothing it points to is written.
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
    except OSError as exc:
        raise InputError(
            f"cannot create the folder of {flag} ({one_line(exc, 120)})",
            where=lock.parent,
            fix="choose an output folder you can write to",
        ) from exc
    fd = _take_lock(lock, path, flag, fcntl, shown=path.with_name(lock.name))
    interrupt.register(lock)
    try:
        payload = json.dumps({"tool": TOOL, "pid": os.getpid()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload.encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(lock)
        os.close(fd)
        interrupt.unregister(lock)


def _take_lock(lock: Path, path: Path, flag: str, fcntl, *, shown: Path) -> int:
    """An open descriptor of ``lock`` (a plain file of ours, one link), exclusively flocked;
    ``shown`` is the lock's name as the user's --out spells it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(lock, flags, 0o644)
        except OSError as exc:
            raise _lock_error(shown, flag, exc) from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            what = "is not a plain file" if not stat.S_ISREG(info.st_mode) else "has other links"
            raise InputError(
                f"the lock file of {flag} {what}; refusing to use it",
                where=shown,
                fix=f"remove it (it is not prefcurate's: rm {shown}), then run again",
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner_fd(fd)
            os.close(fd)
            raise InputError(
                f"{flag} is in use by PID {owner if owner is not None else '?'}",
                where=path,
                fix=f"wait for that process to finish, or choose another {flag}",
            ) from None
        try:  # the file may have been removed by its last owner between open and flock
            same = os.stat(lock, follow_symlinks=False).st_ino == info.st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _lock_error(lock: Path, flag: str, exc: OSError) -> InputError:
    if exc.errno == errno.ELOOP:
        what = "is a symbolic link"
    elif exc.errno == errno.EISDIR:
        what = "is a folder"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        what = "cannot be opened (permission denied)"
    else:
        what = f"cannot be opened ({one_line(exc, 80)})"
    return InputError(
        f"the lock file of {flag} {what}; refusing to run without a lock",
        where=lock,
        fix=f"remove it if no prefcurate is running on {flag} (rm -r {lock}), then run again",
    )


def _lock_owner_fd(fd: int) -> int | None:
    return _parse_lock(os.pread(fd, 256, 0))


def _lock_owner(lock: Path) -> int | None:
    """The PID a prefcurate lock file names, or None when it is not one (a user's ``x.lock``)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return _lock_owner_fd(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def _parse_lock(data: bytes) -> int | None:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("tool") != TOOL:
        return None
    pid = document.get("pid")
    return pid if isinstance(pid, int) else None
