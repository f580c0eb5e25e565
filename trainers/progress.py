"""How a training run talks while it runs: a silent default, and a rich progress bar for the CLI.

The library never prints; :func:`trainers.loop.train` calls a :class:`Reporter`. The CLI passes a
:class:`RichReporter`, which draws a live progress bar with the loss and the ETA on stderr, or,
when stderr is not a terminal (a log file, CI), prints one plain line every tenth of the run.
"""

from __future__ import annotations

import time
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


def losses(metrics: dict[str, Any]) -> str:
    """``dpo 0.6931 sft 5.84``: each route's loss of the step, never their mix (``loss``)."""
    parts = [
        f"{route} {metrics[f'loss/{route}']:.4f}"
        for route in ("dpo", "sft")
        if metrics.get(f"loss/{route}") is not None
    ]
    return " ".join(parts) or f"{metrics['loss']:.4f}"


class Reporter:
    """Receives a run's events; this base class ignores them."""

    def start(self, *, total_steps: int, first_step: int) -> None:
        """Training is about to run steps ``first_step + 1 .. total_steps``."""

    def step(self, metrics: dict[str, Any]) -> None:
        """One optimizer step finished with these metrics."""

    def _log_line(self, metrics: dict[str, Any], acc: float | None) -> None:
        step = metrics["step"]
        if step != self.total and step % max(1, self.total // 10):
            return
        done = step - self.first_step
        eta = (time.monotonic() - self.started) / done * (self.total - step) if done else 0.0
        shown = "" if acc is None else f" acc {acc:.2f}"
        self.message(f"train {step}/{self.total} loss {losses(metrics)}{shown} eta {eta:.0f}s")

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
        self.total = 0
        self.started = 0.0
        self.first_step = 0

    def start(self, *, total_steps: int, first_step: int) -> None:
        self.total, self.first_step, self.started = total_steps, first_step, time.monotonic()
        if not self.console.is_terminal:
            return
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
        acc = metrics.get("rewards/accuracies")
        if self.progress is None:
            self._log_line(metrics, acc)
            return
        self.progress.update(
            self.task,
            completed=metrics["step"],
            loss=losses(metrics),
            acc="-" if acc is None else f"{acc:.2f}",
        )

    def _log_line(self, metrics: dict[str, Any], acc: float | None) -> None:
        step = metrics["step"]
        if step != self.total and step % max(1, self.total // 10):
            return
        done = step - self.first_step
        eta = (time.monotonic() - self.started) / done * (self.total - step) if done else 0.0
        shown = "" if acc is None else f" acc {acc:.2f}"
        self.message(f"train {step}/{self.total} loss {losses(metrics)}{shown} eta {eta:.0f}s")

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
