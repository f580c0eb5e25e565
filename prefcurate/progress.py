"""Progress display shared by every command: rich, on stderr, silent when stderr is not a terminal.

Anything that may take more than a second runs inside :func:`status` (an indeterminate task) or
:func:`bar` (a known number of steps), so stdout stays clean for ``--json`` and pipes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Diagnostics and progress go to stderr; results go to stdout.
stderr = Console(stderr=True)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with elapsed time while a single slow step (a scan, a sort) runs."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    ) as progress:
        progress.add_task(message, total=None)
        yield


@contextlib.contextmanager
def bar(message: str, total: int | None, *, unit: str = "") -> Iterator[Progress]:
    """A progress bar with rate and ETA; call ``progress.advance(task_id, n)``: task id is 0."""
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{{task.speed:>7.1f}} {unit}/s" if unit else ""),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as p:
        p.add_task(message, total=total)
        yield p
