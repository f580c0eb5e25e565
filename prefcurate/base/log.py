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
import sys

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


def to_stderr(level: int = logging.WARNING) -> None:
    """The CLI's handler for the ``prefcurate`` logger; installing it twice changes nothing.

    What other libraries say on their own is :mod:`prefcurate.base.quiet`'s business: the CLI
    wraps each command in :func:`~prefcurate.base.quiet.quiet_dependencies`.
    """
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine())
    logger.setLevel(level)
