"""Errors that reach the user as one line.

Every problem caused by the user's input or arguments is raised as :class:`InputError` (exit
code 2); the CLI prints its message as a single line, without a traceback unless ``--debug`` is
given. The message says what is wrong, where (file, line or row, column) and how to fix it, so a
user never has to read a stack trace to find a bad row. Anything else is an internal error (exit
code 1).
"""

from __future__ import annotations

import json
from pathlib import Path


class PrefcurateError(Exception):
    """Base class of the errors prefcurate reports as one clear line."""

    exit_code = 1


class InputError(PrefcurateError):
    """The user's data, arguments or paths are wrong; exit code 2.

    Build the message from three parts so that every error reads the same way::

        raise InputError("score is not a number", where=f"{path}, line {n}, column score_chosen",
                         fix="pass --score-chosen with a numeric column")
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.where = str(where) if where is not None else None
        self.fix = fix
        msg = what
        if self.where:
            msg = f"{self.where}: {msg}"
        if fix:
            msg = f"{msg} ({fix})"
        super().__init__(" ".join(msg.split()))  # one line, whatever the parts held


class MachineFault(PrefcurateError):
    """A fault of the machine (a full disk) told in the command's own words, which say what was
    kept: printed as ``error: …`` without "please report"."""

    def __init__(self, message: str, *, exit_code: int = 1):
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) is a full disk or quota."""
    return machine_fault(exc) is not None and machine_fault(exc)[0] == 1


def one_line(text: object, limit: int = 300) -> str:
    """Collapse a foreign message (DuckDB, Polars, OS) to one line of at most ``limit`` chars."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


_NO_SPACE = (28, 122)  # ENOSPC, EDQUOT
_DENIED = (1, 13, 30)  # EPERM, EACCES, EROFS


def machine_fault(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for a fault of the machine rather than of prefcurate, else None.

    A full disk or quota is exit 1 (nothing is wrong with the input; nothing was left half
    written, since outputs are swapped in whole); a permission or read-only file system is exit 2
    (choose another place). The exception chain is searched, as Polars and DuckDB wrap OS errors.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        errno = getattr(current, "errno", None)
        text = str(current)
        where = getattr(current, "filename", None)
        prefix = f"{where}: " if where else ""
        if errno in _NO_SPACE or "No space left on device" in text or "Disk quota" in text:
            return 1, (
                f"error: {prefix}no space left on device; nothing was written "
                "(free some space, or write the output elsewhere)"
            )
        if errno in _DENIED or "Permission denied" in text or "Read-only file system" in text:
            return 2, (
                f"error: {prefix}permission denied ({one_line(text, 120)}) "
                "(choose a place you can write to)"
            )
        current = current.__cause__ or current.__context__
    return None


def json_problem(exc: json.JSONDecodeError) -> str:
    """``unterminated string starting at column 62``: the decoder's message, read as a sentence.

    (``exc.msg`` alone ends in "starting at" or names no place; the column completes it.)
    """
    msg = exc.msg[:1].lower() + exc.msg[1:]
    return f"{msg} column {exc.colno}" if msg.endswith(" at") else f"{msg} at column {exc.colno}"
