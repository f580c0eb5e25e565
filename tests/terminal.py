"""Run a command under a real pseudo-terminal and read back the screen a person would see.

The rest of the suite runs commands with stdout and stderr redirected, so everything that only
happens on a terminal (live progress bars, rich tables sized to the window, colour) went untested:
``synth`` and ``bench mixdpo`` once crashed at once on a terminal and passed every test.
:func:`run_in_terminal` gives the child a pty as stdin, stdout and stderr, with the window size
set by ``TIOCSWINSZ`` and ``TERM=xterm-256color``; :class:`Screen` replays the bytes it wrote
(carriage returns, erased lines, cursor moves, wrapping at the window's width) into the lines
left on the screen at the end, without the ANSI colours.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

#: What a dependency prints when it is let through (prefcurate itself prints none of these):
#: torchao's and torch's import-time lines, Python warnings, transformers' advice, and the
#: progress bars of transformers (loading and writing weights) and datasets (splits, maps).
DEPENDENCY_NOISE = (
    "Failed to load",
    "_pytree",
    "Warning:",
    "warnings.warn",
    "deprecated",
    "Token indices sequence length",
    "[RANK 0]",
    "Loading weights",
    "Writing model shards",
    "Generating train split",
    "examples/s",
    "Map",
)

#: Variables that would make rich ignore the pty's real size or colour support.
_OVERRIDES = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")

_ESCAPE = re.compile(
    rb"\x1b\[(?P<params>[0-9;?]*)(?P<final>[@-~])"  # CSI: colour, erase, cursor moves
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles and hyperlinks
    rb"|\x1b[()][0-9A-Za-z]"  # character set choice
    rb"|\x1b[=>78DEM]"  # keypad modes, save/restore cursor, index
)


class Screen:
    """A minimal terminal: enough of VT100 for what rich and Python print."""

    def __init__(self, columns: int):
        self.columns = columns
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        self._wrap_pending = False

    def feed(self, data: bytes) -> None:
        pos = 0
        for match in _ESCAPE.finditer(data):
            self._text(data[pos : match.start()])
            if match.group("final"):
                self._csi(match.group("params").decode(), match.group("final").decode())
            pos = match.end()
        self._text(data[pos:])

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def _text(self, raw: bytes) -> None:
        for ch in raw.decode("utf-8", errors="replace"):
            if ch == "\r":
                self.col, self._wrap_pending = 0, False
            elif ch == "\n":
                self.row, self._wrap_pending = self.row + 1, False
                self._line()
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch == "\t":
                self.col = min(self.columns - 1, (self.col // 8 + 1) * 8)
            elif ch >= " ":
                if self._wrap_pending:  # xterm wraps when the character after the last column comes
                    self.row, self.col, self._wrap_pending = self.row + 1, 0, False
                line = self._line()
                line.extend(" " * (self.col - len(line)))
                if self.col < len(line):
                    line[self.col] = ch
                else:
                    line.append(ch)
                if self.col == self.columns - 1:
                    self._wrap_pending = True
                else:
                    self.col += 1

    def _csi(self, params: str, final: str) -> None:
        numbers = [int(p) for p in params.lstrip("?").split(";") if p.isdigit()]
        n = numbers[0] if numbers else 0
        line = self._line()
        self._wrap_pending = False
        if final == "K":  # erase in line: 0 to the end, 1 to the start, 2 all
            if n == 0:
                del line[self.col :]
            elif n == 1:
                line[: self.col + 1] = " " * min(len(line), self.col + 1)
            else:
                line.clear()
        elif final == "A":
            self.row = max(0, self.row - max(1, n))
        elif final == "B":
            self.row += max(1, n)
        elif final == "C":
            self.col = min(self.columns - 1, self.col + max(1, n))
        elif final == "D":
            self.col = max(0, self.col - max(1, n))
        elif final == "G":
            self.col = max(0, min(self.columns - 1, n - 1))
        elif final == "J" and n in (0, 2):  # erase below (the transient bars' clean-up)
            del line[self.col :]
            del self.lines[self.row + 1 :]

    def text(self) -> str:
        rows = ["".join(line).rstrip() for line in self.lines]
        while rows and not rows[-1]:
            rows.pop()
        return "\n".join(rows) + "\n" if rows else ""


@dataclass
class TerminalRun:
    """What a person at the terminal got: the exit code and the screen, as plain text."""

    args: list[str]
    columns: int
    code: int
    raw: bytes
    screen: str
    seconds: float

    def check(self) -> TerminalRun:
        """Exit 0, and nothing on the screen that reads like a crash."""
        shown = f"$ prefcurate {' '.join(self.args)}  ({self.columns} columns)\n{self.screen}"
        assert self.code == 0, f"exit {self.code}\n{shown}"
        for sign in ("internal error", "Traceback", "please report"):
            assert sign not in self.screen, f"{sign!r} on the screen\n{shown}"
        return self


def run_in_terminal(
    args: list[str],
    *,
    columns: int = 80,
    rows: int = 40,
    cwd: Path | None = None,
    env: dict[str, str | None] | None = None,
    timeout: float = 300.0,
    program: list[str] | None = None,
) -> TerminalRun:
    """Run ``prefcurate ARGS`` with a pseudo-terminal of ``columns`` × ``rows`` as its tty.

    ``program`` runs something else the way a user would type it (``["python",
    "train_mixdpo.py"]``), ``python`` being this interpreter; ARGS follow it.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    merged = {**os.environ, **(env or {})}  # a value of None unsets the variable
    child_env = {k: v for k, v in merged.items() if k not in _OVERRIDES and v is not None}
    child_env["TERM"] = "xterm-256color"
    child_env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    started = time.monotonic()
    if program is None:
        program = [sys.executable, "-m", "prefcurate"]
    elif program[0] == "python":
        program = [sys.executable, *program[1:]]
    proc = subprocess.Popen(
        [*program, *map(str, args)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=child_env,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            left = started + timeout - time.monotonic()
            if left <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"prefcurate {' '.join(map(str, args))} ran over {timeout} s")
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: every holder of the slave side has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=max(1.0, started + timeout - time.monotonic()))
    finally:
        os.close(master)
    raw = b"".join(chunks)
    screen = Screen(columns)
    screen.feed(raw)
    return TerminalRun(
        [str(a) for a in args], columns, code, raw, screen.text(), time.monotonic() - started
    )
