"""How a training run talks while it runs: a silent default, and a rich progress bar for the CLI.

The library never prints; :func:`trainers.loop.train` calls a :class:`Reporter`. The CLI passes a
:class:`RichReporter`, which draws a progress bar with the loss and the ETA on stderr (and stays a
plain, non-animated bar when stderr is not a terminal).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter:
    """Receives a run's events; this base class ignores them."""

    def start(self, *, total_steps: int, first_step: int) -> None:
        """Training is about to run steps ``first_step + 1 .. total_steps``."""

    def step(self, metrics: dict[str, Any]) -> None:
        """One optimizer step finished with these metrics."""

    def message(self, text: str) -> None:
        """A one-line notice (a warning or a phase change)."""

    def close(self) -> None:
        """The run ended, normally or not."""


class RichReporter(Reporter):
    """A progress bar with loss and ETA on stderr; notices print above it."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def start(self, *, total_steps: int, first_step: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=first_step, loss="-", acc="-"
        )
        self.progress.start()

    def step(self, metrics: dict[str, Any]) -> None:
        if self.progress is None:
            return
        acc = metrics.get("rewards/accuracies")
        self.progress.update(
            self.task,
            completed=metrics["step"],
            loss=f"{metrics['loss']:.4f}",
            acc="-" if acc is None else f"{acc:.2f}",
        )

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
