"""How a training run talks while it runs: the events :func:`trainers.loop.train` reports.

The trainer never prints; it calls a :class:`Reporter`, silent by default. The CLI and recipes pass
:class:`prefcurate.base.progress.RichReporter` (a live progress bar on stderr), which implements
the same methods; the trainer floor itself draws nothing.

Besides the steps, every one-off phase that can take more than a moment (loading the model,
tokenising, the reference pass, an evaluation) is a :meth:`Reporter.phase`: a name, a total when
one is known, and an ``advance(n)`` to call as work gets done, so the screen is never blank for
long between the command and the first step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

#: What :meth:`Reporter.phase` yields: ``advance(n)`` with the units just done, and
#: ``advance(0, total=N)`` when the total becomes known.
Advance = Callable[..., None]


def _ignore(n: int, total: int | None = None) -> None:
    """An ``advance`` that reports nowhere."""


class Reporter:
    """Receives a run's events; this base class ignores them."""

    def start(self, *, total_steps: int, first_step: int) -> None:
        """Training is about to run steps ``first_step + 1 .. total_steps``."""

    def step(self, metrics: dict[str, Any]) -> None:
        """One optimizer step finished with these metrics."""

    def message(self, text: str) -> None:
        """A one-line notice (a warning or a phase change)."""

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Advance]:
        """A one-off phase of ``total`` ``unit`` (None: unknown); yields ``advance(n)``."""
        yield _ignore

    def close(self) -> None:
        """The run ended, normally or not."""
