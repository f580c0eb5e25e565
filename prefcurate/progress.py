"""Progress display shared by every command: rich, on stderr, silent when stderr is not a terminal.

Anything that may take more than a second runs inside :func:`status` (an indeterminate task) or
:func:`bar` (a known number of steps), so stdout stays clean for ``--json`` and pipes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

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


class _Rate(ProgressColumn):
    """``12.3 pairs/s``, or a dash before the first update."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


@contextlib.contextmanager
def bars(*, unit: str) -> Iterator[Callable[[str, float, float], None]]:
    """Bars that appear one per name as work reports in: call ``update(name, done, total)``.

    For work that runs in phases with their own totals (``score`` runs one model after another).
    """
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"),
        _Rate(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as p:
        tasks: dict[str, int] = {}

        def update(name: str, done: float, total: float) -> None:
            if name not in tasks:
                tasks[name] = p.add_task(name, total=total)
            p.update(tasks[name], completed=done, total=total)

        yield update
