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

from prefcurate.base.errors import InputError, PrefcurateError, machine_fault, one_line
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
    printed before the one-line message.
    """
    from prefcurate.base.log import to_stderr

    to_stderr()  # the library's logged warnings: one line each on stderr
    args = list(sys.argv[1:] if argv is None else argv)
    STATE.argv = args
    # --debug works before or after the command name: take it out before Typer parses.
    debug = "--debug" in args or os.environ.get("PREFCURATE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    STATE.debug = debug
    try:
        result = app(args=args, prog_name="prefcurate", standalone_mode=False)
        return int(result or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        show_traceback()
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
        return 2
    except _ClickException as exc:
        show_traceback()
        print(f"error: {one_line(exc.format_message())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        show_traceback()
        print("interrupted", file=sys.stderr)
        return 130
    except PrefcurateError as exc:
        show_traceback()
        if isinstance(exc, InputError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"error: {one_line(exc)} (please report)", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the edge where every failure becomes one line
        show_traceback()
        fault = machine_fault(exc)
        if fault is not None:
            print(fault[1], file=sys.stderr)
            return fault[0]
        print(
            f"internal error: {type(exc).__name__}: {one_line(exc)} "
            "(please report at the prefcurate issue tracker; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console-script entry point: Ctrl-C is one line and exit 130 (prefcurate.base.interrupt)."""
    from prefcurate.base import interrupt

    interrupt.install()
    code = main()
    interrupt.finish()
    sys.exit(code)
