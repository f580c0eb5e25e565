"""The ``prefcurate`` command line: one thin function per command, one module per group.

Each command parses its flags, calls library functions and renders what they return. Errors are
translated here, at the edge: an :class:`~prefcurate.base.errors.InputError` becomes one line on
stderr and exit code 2; anything unexpected becomes one line with "please report" and exit code 1.
The traceback is shown only with ``--debug``, which never changes the exit code.

Modules: :mod:`~prefcurate.cli.common` (the app, shared options, the catalog record),
:mod:`~prefcurate.cli.data` (analyze, synth, route), :mod:`~prefcurate.cli.page` (inspect),
:mod:`~prefcurate.cli.score`,
:mod:`~prefcurate.cli.train` (train, plot), :mod:`~prefcurate.cli.catalog` (runs, sql),
:mod:`~prefcurate.cli.recipes` (bench, demo). Importing them registers their commands, in the
order ``--help`` lists them.
"""

from __future__ import annotations

import os
import sys

import typer

from prefcurate.base.errors import (
    InputError,
    MachineFault,
    PrefcurateError,
    machine_fault,
    one_line,
)
from prefcurate.cli import catalog, data, page, recipes, score, train  # noqa: F401 - registers
from prefcurate.cli.common import (
    STATE,
    _ClickException,
    _UsageError,
    app,
    reflow_all_help,
    show_traceback,
)

__all__ = ["app", "main", "run"]

reflow_all_help(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly).

    The exit code depends on what went wrong, never on ``--debug``: 2 for the user's input or
    arguments, 1 for an internal error, 130 for an interrupt. ``--debug`` only adds the traceback,
    printed before the one-line message, and lets the dependencies' own warnings and progress
    bars through (:func:`prefcurate.base.quiet.quiet_dependencies` keeps them off otherwise).
    """
    from prefcurate.base import interrupt
    from prefcurate.base.log import to_stderr
    from prefcurate.base.quiet import quiet_dependencies

    args = list(sys.argv[1:] if argv is None else argv)
    STATE.argv = args
    # --debug works before or after the command name: take it out before Typer parses.
    debug = "--debug" in args or os.environ.get("PREFCURATE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    STATE.debug = debug
    to_stderr()  # prefcurate's warnings, one line each
    try:
        with quiet_dependencies(enabled=not debug, env=True):
            result = app(args=args, prog_name="prefcurate", standalone_mode=False)
        return int(result or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the edge where every failure becomes one line
        interrupt.yield_to_stop()  # an interrupt in progress: its line and exit code win
        show_traceback()
        code, line = _one_line_for(exc)
        print(line, file=sys.stderr)
        return code


def _one_line_for(exc: BaseException) -> tuple[int, str]:
    """(exit code, the one line) for a failure that reached the edge."""
    if isinstance(exc, typer.Abort) and isinstance(exc.__context__, EOFError):
        exc = exc.__context__  # click turns any EOFError into Abort: a truncated file, not Ctrl-C
    if isinstance(exc, typer.Abort):
        return 130, "aborted"
    if isinstance(exc, _UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return 2, f"error: {one_line(exc.format_message())}{hint}"
    if isinstance(exc, _ClickException):
        return 2, f"error: {one_line(exc.format_message())}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, InputError | MachineFault):
        return exc.exit_code, f"error: {exc}"
    if isinstance(exc, PrefcurateError):
        return exc.exit_code, f"error: {one_line(exc)} (please report)"
    fault = machine_fault(exc)
    if fault is not None:
        return fault
    return 1, (
        f"internal error: {type(exc).__name__}: {one_line(exc)} "
        "(please report at the prefcurate issue tracker; rerun with --debug for the traceback)"
    )


def run() -> None:
    """Console-script entry point: Ctrl-C is one line and exit 130 (prefcurate.base.interrupt)."""
    from prefcurate.base import interrupt

    interrupt.install()
    code = main()
    interrupt.finish()
    sys.exit(code)
