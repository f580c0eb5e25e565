"""Ctrl-C: one line, exit code 130, the temporary files of the run removed, no traceback.

Python delivers SIGINT to the main thread only between bytecodes, so a command inside a long
Polars or DuckDB call would not stop until it returns, and background threads (progress bars,
the split writer's gather thread) print tracebacks when the exception unwinds them. Instead, the
console entry point routes SIGINT to a small watcher thread (``signal.set_wakeup_fd``): it removes
the temporary folders and lock files registered here, prints ``interrupted`` once and ends the
process with exit code 130 at once. Outputs are swapped in atomically, so what remains is the
old output or the new complete one, exactly as after a kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

_TEMPORARY: set[Path] = set()
_LOCK = threading.Lock()


def register(path: Path) -> None:
    """Remove ``path`` (a temporary folder or file of this process) if the run is interrupted."""
    with _LOCK:
        _TEMPORARY.add(Path(path))


def unregister(path: Path) -> None:
    with _LOCK:
        _TEMPORARY.discard(Path(path))


def install() -> None:
    """Route SIGINT (and SIGTERM) to the watcher; call once from the main thread at start."""
    if threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _ignore)  # the byte on the wakeup fd is what counts
    except (ValueError, OSError):  # not the main thread of the main interpreter
        return
    threading.Thread(
        target=_watch, args=(read_fd,), name="prefcurate-interrupt", daemon=True
    ).start()


def _ignore(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    return None


def _watch(read_fd: int) -> None:
    wanted = {int(signal.SIGINT), int(signal.SIGTERM)}
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if wanted & set(data):
            stop(130 if signal.SIGINT in set(data) else 143)


def stop(code: int = 130) -> None:
    """Remove the registered temporaries, say ``interrupted`` once and exit with ``code``."""
    with _LOCK:
        paths = sorted(_TEMPORARY, key=lambda p: len(p.parts), reverse=True)
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        os.write(2, b"\ninterrupted\n" if code == 130 else b"\nterminated\n")
    os._exit(code)
