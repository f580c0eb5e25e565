"""How a training run talks while it runs: the events :func:`trainers.loop.train` reports.

The trainer never prints; it calls a :class:`Reporter`, silent by default. The CLI and recipes pass
:class:`prefcurate.base.progress.RichReporter` (a live progress bar on stderr), which implements the
same four methods; the trainer floor itself draws nothing.
"""

from __future__ import annotations

from typing import Any


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
