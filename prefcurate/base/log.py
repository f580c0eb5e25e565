"""prefcurate's messages go through :mod:`logging`, under the ``prefcurate`` logger.

A library call never prints a warning itself: it logs it, so a notebook or a service can raise,
lower or route prefcurate's messages like any other library's::

    >>> import logging
    >>> logging.getLogger("prefcurate").setLevel(logging.ERROR)   # silence prefcurate's warnings

With no handler configured, Python shows warnings on stderr as they are. The command line
installs :func:`to_stderr`, which prints each message as one line (``warning: …``) between its
own rich output.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

ROOT = "prefcurate"


def get_logger(name: str) -> logging.Logger:
    """The logger of one part of prefcurate, ``prefcurate.<name>`` (a child of :data:`ROOT`)."""
    return logging.getLogger(f"{ROOT}.{name}")


class _OneLine(logging.Handler):
    """Writes ``<level>: <message>`` to the current ``sys.stderr`` (looked up at each message,
    so a redirected stderr, as in tests, receives it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never fail the command
            self.handleError(record)


def to_stderr(level: int = logging.WARNING, *, debug: bool = False) -> None:
    """The CLI's handler for the ``prefcurate`` logger; installing it twice changes nothing.

    Unless ``debug``, what other libraries say on their own is kept off the terminal: Python
    warnings (numpy's and matplotlib's RuntimeWarnings, a model library's deprecations) and
    their loggers' records (torch, transformers, torchao ...), which would otherwise surround
    the command's one line. Anything that matters to the user is prefcurate's to say, once.
    """
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine())
    logger.setLevel(level)
    if debug:
        return
    warnings.simplefilter("ignore")
    root = logging.getLogger()
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())  # no "last resort" printing of foreign records
    os.environ.setdefault("TORCH_LOGS", "-all")  # torch's own handler, read when it is imported
    if "torch" in sys.modules:  # imported already: its loggers are set up, lower them directly
        logging.getLogger("torch").setLevel(logging.ERROR)
