"""Progress display shared by every command: rich, on stderr.

One module for all of it: :func:`status` and :func:`bar` for the data commands, and
:class:`RichReporter` for a training run (the events of :class:`trainers.reporter.Reporter`).

Anything that may take more than a second runs inside :func:`status` (an indeterminate task) or
:func:`bar` (a known number of steps), so stdout stays clean for ``--json`` and pipes. On a
terminal they draw a live bar; otherwise they are silent, except a ``bar(..., plain=True)``
(work that runs for minutes, like ``bench mixdpo``), which prints one plain line per update so a
log shows the run is alive, as ``train`` does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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
def bar(
    message: str, total: int | None, *, unit: str = "", plain: bool = False
) -> Iterator[Progress | _PlainLines]:
    """A progress bar with rate and ETA; call ``progress.advance(task_id, n)``: task id is 0.

    With ``plain=True`` and stderr not a terminal, each update prints one line instead
    (``bench mixdpo 2/9 arms: seed 0: arm filter; 41 s elapsed``).
    """
    if plain and not stderr.is_terminal:
        yield _PlainLines(message, total, unit)
        return
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([_Rate(unit)] if unit else []),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as p:
        p.add_task(message, total=total)
        yield p


class _PlainLines:
    """The part of :class:`rich.progress.Progress` that :func:`bar` callers use, as log lines."""

    def __init__(self, message: str, total: int | None, unit: str):
        self.message, self.total, self.unit = message, total, unit
        self.completed = 0.0
        self.started = time.monotonic()

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self.completed + advance)

    def update(self, task_id: int, *, completed: float | None = None, **fields: Any) -> None:
        self.completed = self.completed if completed is None else completed
        description = fields.get("description")
        of = f"/{self.total:,}" if self.total is not None else ""
        what = f": {description}" if description and description != self.message else ""
        unit = f" {self.unit}" if self.unit else ""
        elapsed = time.monotonic() - self.started
        stderr.print(
            f"{self.message} {self.completed:,.0f}{of}{unit}{what}; {elapsed:,.0f} s elapsed",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


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


def losses(metrics: dict[str, Any]) -> str:
    """``dpo 0.6931 sft 5.84``: each route's loss of the step, never their mix (``loss``)."""
    parts = [
        f"{route} {metrics[f'loss/{route}']:.4f}"
        for route in ("dpo", "sft")
        if metrics.get(f"loss/{route}") is not None
    ]
    return " ".join(parts) or f"{metrics['loss']:.4f}"


#: A phase shorter than this leaves no line behind; a piped one longer prints a heartbeat.
PHASE_QUIET_S = 3.0
#: Seconds between a piped phase's heartbeat lines.
PHASE_HEARTBEAT_S = 5.0


class _Phase:
    """A one-off phase of a run (tokenising, the reference pass, …): a live bar on a terminal,
    a heartbeat line every few seconds when piped, and one line at the end if it took long."""

    def __init__(self, console: Console, name: str, total: int | None, unit: str):
        self.console, self.name, self.total, self.unit = console, name, total, unit
        self.done = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def advance(self, n: int, total: int | None = None) -> None:
        self.done += n
        if total is not None:
            self.total = total

    def text(self) -> str:
        count = f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"
        shown = f" {count} {self.unit}".rstrip() if (self.total or self.done) else ""
        return f"{self.name}{shown}; {time.monotonic() - self.started:,.0f} s elapsed"

    def heartbeat(self) -> None:
        """Print :meth:`text` every few seconds (piped output) until the phase ends."""

        def beat() -> None:
            wait = PHASE_QUIET_S
            while not self._stop.wait(wait):
                self.console.print(self.text(), highlight=False, markup=False, soft_wrap=True)
                wait = PHASE_HEARTBEAT_S

        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seconds = time.monotonic() - self.started
        if seconds >= PHASE_QUIET_S:
            count = f" {self.done:,} {self.unit}".rstrip() if self.done else ""
            self.console.print(
                f"{self.name}:{count} in {seconds:,.1f} s",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


class RichReporter:
    """A training run's progress bar with loss and ETA on stderr; notices print above it.

    Implements :class:`trainers.reporter.Reporter`'s events (``start``, ``step``, ``message``,
    ``phase``, ``close``). When stderr is not a terminal (a log file, CI) it prints one plain line
    every tenth of the run instead, and a heartbeat line every few seconds of a long phase.
    """

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.total = 0
        self.started = 0.0
        self.first_step = 0

    def _bar(self, *, transient: bool) -> Progress:
        """The live display: a task per row (the training steps, a phase)."""
        return Progress(
            TextColumn("[bold]{task.description}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=transient,
        )

    def start(self, *, total_steps: int, first_step: int) -> None:
        self.total, self.first_step, self.started = total_steps, first_step, time.monotonic()
        if not self.console.is_terminal:
            return
        self.progress = self._bar(transient=False)
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=first_step, info="loss - acc -"
        )
        self.progress.start()

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Callable]:
        """A bar (terminal) or heartbeat lines (piped) while a one-off phase runs."""
        state = _Phase(self.console, name, total, unit)
        if not self.console.is_terminal:
            state.heartbeat()
            try:
                yield state.advance
            finally:
                state.finish()
            return
        live = self.progress
        display = live or self._bar(transient=True)
        task = display.add_task(name, total=total, info=unit)

        def advance(n: int, total: int | None = None) -> None:
            state.advance(n, total)
            display.update(task, advance=n, total=state.total)

        if live is None:
            display.start()
        try:
            yield advance
        finally:
            display.refresh()  # its last state, before the row goes
            display.remove_task(task)
            if live is None:
                display.stop()
            state.finish()

    def step(self, metrics: dict[str, Any]) -> None:
        acc = metrics.get("rewards/accuracies")
        if self.progress is None:
            self._log_line(metrics, acc)
            return
        shown = "-" if acc is None else f"{acc:.2f}"
        self.progress.update(
            self.task, completed=metrics["step"], info=f"loss {losses(metrics)} acc {shown}"
        )

    def _log_line(self, metrics: dict[str, Any], acc: float | None) -> None:
        step = metrics["step"]
        if step != self.total and step % max(1, self.total // 10):
            return
        done = step - self.first_step
        eta = (time.monotonic() - self.started) / done * (self.total - step) if done else 0.0
        shown = "" if acc is None else f" acc {acc:.2f}"
        evaluated = ""
        if metrics.get("eval/loss") is not None:
            evaluated = f" | eval loss {metrics['eval/loss']:.4f}"
            if metrics.get("eval/rewards/accuracies") is not None:
                evaluated += f" acc {metrics['eval/rewards/accuracies']:.2f}"
        self.message(
            f"train {step}/{self.total} loss {losses(metrics)}{shown}{evaluated} eta {eta:.0f}s"
        )

    def message(self, text: str) -> None:
        # a terminal shows the line wrapped at words; a pipe or a log file keeps it one line
        wrap = self.console.is_terminal
        self.console.print(text, highlight=False, markup=False, soft_wrap=not wrap)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
