"""The ``prefcurate`` command line: one thin function per command.

Each command parses its flags, calls one library function and renders what it returns. Errors are
translated here, at the edge: an :class:`~prefcurate.errors.InputError` becomes one line on stderr
and exit code 2; anything unexpected becomes one line with "please report" and exit code 1. The
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from prefcurate.errors import InputError, PrefcurateError, one_line
from prefcurate.schema import Binarize, ColumnMap

app = typer.Typer(
    name="prefcurate",
    help="Curate preference data by margin and train MixDPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _click_class(name: str) -> type[Exception]:
    """Typer >= 0.29 vendors click; find its exception classes whichever click is in use."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


class _State:
    debug = False


STATE = _State()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="PREFCURATE_DEBUG")
    ] = False,
) -> None:
    """prefcurate: analyze, route and train on preference data."""
    STATE.debug = debug


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("PREFCURATE_DEBUG", "") not in ("", "0")
    try:
        result = app(args=args, prog_name="prefcurate", standalone_mode=False)
        return int(result or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        if debug:
            raise
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
        return 2
    except _ClickException as exc:
        if debug:
            raise
        print(f"error: {one_line(exc.format_message())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PrefcurateError as exc:
        if debug:
            raise
        if isinstance(exc, InputError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"error: {one_line(exc)} (please report)", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the edge where every failure becomes one line
        if debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {one_line(exc)} "
            "(please report at the prefcurate issue tracker; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


# --------------------------------------------------------------------------------------------------
# options shared by every command that reads data

_COLUMNS = "Columns (override detection)"

DataArg = Annotated[
    str, typer.Argument(help="Preference data: a file, directory or glob.", show_default=False)
]
PromptOpt = Annotated[
    str | None,
    typer.Option("--prompt", help="Column or dotted path of the prompt.", rich_help_panel=_COLUMNS),
]
ChosenOpt = Annotated[
    str | None,
    typer.Option("--chosen", help="Column of the chosen response.", rich_help_panel=_COLUMNS),
]
RejectedOpt = Annotated[
    str | None,
    typer.Option("--rejected", help="Column of the rejected response.", rich_help_panel=_COLUMNS),
]
ScoreChosenOpt = Annotated[
    str | None,
    typer.Option(
        "--score-chosen",
        help="Column or dotted path of the chosen rating, e.g. metadata.score_chosen.",
        rich_help_panel=_COLUMNS,
    ),
]
ScoreRejectedOpt = Annotated[
    str | None,
    typer.Option(
        "--score-rejected", help="Column of the rejected rating.", rich_help_panel=_COLUMNS
    ),
]
SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source", help="Column naming each pair's sub-dataset.", rich_help_panel=_COLUMNS
    ),
]
BinarizeOpt = Annotated[
    Binarize,
    typer.Option(
        "--binarize",
        help="How rows with several rated completions become pairs.",
        rich_help_panel=_COLUMNS,
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Split of a datasets folder or HF repository (default: train).",
        rich_help_panel=_COLUMNS,
    ),
]


def open_source(
    data: str,
    *,
    prompt: str | None = None,
    chosen: str | None = None,
    rejected: str | None = None,
    score_chosen: str | None = None,
    score_rejected: str | None = None,
    source: str | None = None,
    binarize: Binarize = Binarize.BEST_VS_WORST,
    split: str | None = None,
    seed: int = 0,
):
    """The :class:`~prefcurate.io.PairSource` for a command's DATA argument and column flags."""
    from prefcurate.io import open_pairs

    columns = ColumnMap(prompt, chosen, rejected, score_chosen, score_rejected, source)
    return open_pairs(data, columns=columns, binarize=binarize, seed=seed, split=split)
