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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_TEMPORARY: set[Path] = set()
_LOCK = threading.Lock()
_STOPPING = threading.Event()
_FINISHED = threading.Event()
#: Held while an output is swapped into place: stop() waits for it, so an interrupt never lands
#: between the renames of a swap (it would leave neither the old output nor the new one).
_CRITICAL = threading.RLock()
#: Called by stop() before the process ends (e.g. a training run records how it ended).
_AT_STOP: list[Callable[[int], None]] = []
_REMOVE_FOR_S = 5.0  # how long stop() keeps removing a folder that other threads still write into


def register(path: Path) -> None:
    """Remove ``path`` (a temporary folder or file of this process) if the run is interrupted.

    Register a path *before* creating it: once :func:`stop` has begun, this call never returns
    (the process is about to exit), so nothing can be created that stop() would not see.
    """
    with _LOCK:
        if not _STOPPING.is_set():
            _TEMPORARY.add(Path(path))
            return
    _wait_for_exit()  # stop() is ending the process; create nothing more


def unregister(path: Path) -> None:
    with _LOCK:
        _TEMPORARY.discard(Path(path))


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A block an interrupt waits for (an output's swap); none begins once stop() has begun."""
    with _CRITICAL:
        if _STOPPING.is_set():
            _wait_for_exit()
        yield


def at_stop(callback: Callable[[int], None]) -> Callable[[], None]:
    """Run ``callback(exit_code)`` when an interrupt ends the process; returns its undo.

    The callback runs on the watcher thread while the command's other threads may still run; it
    must be quick, and its errors are ignored.
    """
    with _LOCK:
        _AT_STOP.append(callback)

    def undo() -> None:
        with _LOCK, contextlib.suppress(ValueError):
            _AT_STOP.remove(callback)

    return undo


def yield_to_stop() -> None:
    """Block for good if an interrupt is ending the process, else return at once.

    Called where the command ends, by success or by an error: once stop() has begun, what the
    main thread sees (a file the watcher removed under it, say) is a consequence of the
    interrupt, and the interrupt's line and exit code must win.
    """
    if _STOPPING.is_set():
        _wait_for_exit()


def _wait_for_exit() -> None:
    """Block this thread for good: stop() is ending the process with its own exit code."""
    threading.Event().wait()


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
    threading.excepthook = _quiet_while_stopping(threading.excepthook)
    threading.Thread(
        target=_watch, args=(read_fd,), name="prefcurate-interrupt", daemon=True
    ).start()


def _quiet_while_stopping(hook: Callable) -> Callable:
    """A thread that fails because stop() removed its folder under it prints no traceback."""

    def excepthook(args) -> None:
        if not _STOPPING.is_set():
            hook(args)

    return excepthook


def finish() -> None:
    """The command is done: a Ctrl-C from now on changes nothing (its work is complete).

    Python puts back the default action of a signal with a Python handler while it shuts down
    (an ignored one stays ignored), so without this a Ctrl-C in the last milliseconds would kill
    a finished run with signal 2 instead of its exit code.
    """
    yield_to_stop()
    with _LOCK:
        _FINISHED.set()
    with contextlib.suppress(ValueError, OSError):  # not the main thread: nothing was installed
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


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
    """Remove the registered temporaries, say ``interrupted`` once and exit with ``code``.

    The command's other threads run on while this one removes their folders (a Parquet sink may
    open its next file in one), so a folder is removed again until it stays gone.
    """
    with _LOCK:
        if _FINISHED.is_set():  # the command's work is complete: its exit code stands
            return
        _STOPPING.set()
    with _CRITICAL:  # a swap in progress completes first; none starts after this
        with _LOCK:
            paths = sorted(_TEMPORARY, key=lambda p: len(p.parts), reverse=True)
            callbacks = list(_AT_STOP)
    for callback in callbacks:
        with contextlib.suppress(Exception):
            callback(code)
    deadline = time.monotonic() + _REMOVE_FOR_S
    for path in paths:
        while _remove(path) and time.monotonic() < deadline:
            time.sleep(0.01)
    with contextlib.suppress(OSError):
        os.write(2, b"\ninterrupted\n" if code == 130 else b"\nterminated\n")
    os._exit(code)


def _remove(path: Path) -> bool:
    """Remove a file or folder; True while something is still there.

    A folder is first renamed aside in one step: threads that still write into it by path then
    find no folder (they cannot add entries), and the renamed one is removed until it is empty.
    """
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            aside = path.with_name(f"{path.name}.removing")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            for target in (aside, path):
                for _ in range(100):
                    shutil.rmtree(target, ignore_errors=True)
                    if not os.path.lexists(target):
                        break
        else:
            path.unlink(missing_ok=True)
    return os.path.lexists(path) or os.path.lexists(path.with_name(f"{path.name}.removing"))
