"""What every command shares: the Typer app, shared options, the catalog record, tables.

A command declares its flags as a small frozen dataclass and reads them as one value:
:func:`options` adds every field of the dataclass to the command (as sqlite-utils'
``@output_options`` does for a group), so a command's body is a few library calls, not a page of
signature. The eight column options (``--prompt``, ``--chosen``, ...) are one such dataclass,
:class:`Columns`, shared by every command that reads data; ``--catalog`` and the record every run
leaves in it are :func:`recorded`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from datetime import datetime, timezone
from typing import Annotated, Any, get_type_hints

import typer

from prefcurate.base.errors import InputError
from prefcurate.data.schema import Binarize, ColumnMap

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


def _flags_without_a_type() -> None:
    """Typer >= 0.29 writes ``<bool>`` beside plain flags (``--force <bool>``), which reads as if
    the flag took a value; a flag shows no type, as in every other CLI."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_prefcurate", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return shown(self, ctx)

    display_type_rich._prefcurate = True
    TyperOption.display_type_rich = display_type_rich


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    _flags_without_a_type()

_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


class _State:
    debug = False
    argv: list[str] = []  # the command line being run, recorded in the catalog


STATE = _State()


def _print_version(value: bool) -> None:
    if value:
        from prefcurate import __version__

        print(f"prefcurate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="PREFCURATE_DEBUG")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """prefcurate: analyze, route and train on preference data."""
    STATE.debug = STATE.debug or debug


# --------------------------------------------------------------------------------------------------
# options shared by several commands

DataArg = Annotated[
    str,
    typer.Argument(
        metavar="DATA", help="Preference data: a file, directory or glob.", show_default=False
    ),
]

_COLUMNS = "Columns (override detection)"
KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _column(flag: str, help: str) -> Any:
    return typer.Option(flag, help=help, rich_help_panel=_COLUMNS, show_default=False)


@dataclass(frozen=True)
class Columns:
    """The column flags of a command that reads data: which column holds what, how to pair."""

    prompt: Annotated[str | None, _column("--prompt", "Column or dotted path of the prompt.")] = (
        None
    )
    chosen: Annotated[str | None, _column("--chosen", "Column of the chosen response.")] = None
    rejected: Annotated[str | None, _column("--rejected", "Column of the rejected response.")] = (
        None
    )
    score_chosen: Annotated[
        str | None,
        _column(
            "--score-chosen",
            "Column or dotted path of the chosen rating, e.g. metadata.score_chosen.",
        ),
    ] = None
    score_rejected: Annotated[
        str | None, _column("--score-rejected", "Column of the rejected rating.")
    ] = None
    source: Annotated[str | None, _column("--source", "Column naming each pair's sub-dataset.")] = (
        None
    )
    binarize: Annotated[
        Binarize,
        typer.Option(
            "--binarize",
            help="How rows with several rated completions become pairs.",
            rich_help_panel=_COLUMNS,
        ),
    ] = Binarize.BEST_VS_WORST
    split: Annotated[
        str | None,
        _column("--split", "Split of a datasets folder or HF repository (default: train)."),
    ] = None

    def open(self, data: str, *, seed: int = 0):
        """The :class:`~prefcurate.data.io.PairSource` for a command's DATA argument."""
        from prefcurate.data.io import open_pairs

        columns = ColumnMap(
            self.prompt,
            self.chosen,
            self.rejected,
            self.score_chosen,
            self.score_rejected,
            self.source,
        )
        return open_pairs(
            data, columns=columns, binarize=self.binarize, seed=seed, split=self.split
        )


#: A command's columns when no column flag is given (all detected).
DEFAULT_COLUMNS = Columns()


def options(cls: type, name: str = "opts") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a flag per field of the dataclass ``cls`` to a command, which takes them as one value.

    Each field is ``Annotated[type, typer.Option(...)]`` with its default: the flag, its help and
    its default are written once, in the dataclass. The command's parameter ``name`` receives the
    built ``cls``; the flags are listed in ``--help`` in field order.
    """
    hints = get_type_hints(cls, include_extras=True)
    added = [
        inspect.Parameter(f.name, KEYWORD, default=f.default, annotation=hints[f.name])
        for f in fields(cls)
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return _with_value(command, name, added, cls)

    return decorate


#: Add the :class:`Columns` flags to a command, which takes them as one ``columns`` value.
column_options = options(Columns, "columns")


def config_options(
    config_class: type, helps: dict[str, str], *, argument: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one flag per field of the dataclass ``config_class`` named in ``helps``; the command
    takes them as one ``config`` value.

    Each default is read from the dataclass, never restated: ``--beta`` shows and uses
    ``TrainConfig.beta``. A field without a default is a required flag; ``argument`` names the
    field given as the positional argument; a bool is ``--flag/--no-flag``.
    """
    hints = get_type_hints(config_class)
    added = []
    for f in fields(config_class):
        if f.name not in helps:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == argument:
            declared = typer.Argument(
                metavar=f.name.upper(), help=helps[f.name], show_default=False
            )
        elif hints[f.name] is bool:  # --flag/--no-flag: a flag can undo a config file's true
            declared = typer.Option(f"{flag}/--no-{flag[2:]}", help=helps[f.name])
        else:
            declared = typer.Option(flag, help=helps[f.name])
        default = inspect.Parameter.empty if f.default is MISSING else f.default
        annotation = Annotated[hints[f.name], declared]
        added.append(inspect.Parameter(f.name, KEYWORD, default=default, annotation=annotation))

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return _with_value(command, "config", added, config_class)

    return decorate


def _with_value(
    command: Callable[..., Any], name: str, added: list[inspect.Parameter], make: Callable
) -> Callable[..., Any]:
    """``command`` with the parameter ``name`` replaced by ``added``, built into one value."""
    signature = inspect.signature(command, eval_str=True)
    own = [p.replace(kind=KEYWORD) for key, p in signature.parameters.items() if key != name]
    names = [p.name for p in added]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        value = make(**{key: kwargs.pop(key) for key in names})
        return command(**{name: value}, **kwargs)

    parameters = [*added, *own] if name == "config" else [*own, *added]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        "-t",
        help="τ: pairs with margin < τ (strict) go to SFT, the rest to DPO.",
        show_default=False,
    ),
]
SftFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--sft-fraction",
        "-q",
        help="Route about this share (0-1) of the hardest pairs to SFT; τ is picked to fit.",
        show_default=False,
    ),
]
ALLOW_PICKLE_HELP = (
    "Read pickle (.bin) weights when a model has no safetensors (trusted files only)."
)
AllowPickleOpt = Annotated[bool, typer.Option("--allow-pickle", help=ALLOW_PICKLE_HELP)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]


# --------------------------------------------------------------------------------------------------
# the catalog: shared option and the recording helper every command that runs something calls

CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        help="Catalog file (default .prefcurate/catalog.duckdb; 'off' records nothing).",
        envvar="PREFCURATE_CATALOG",
        show_default=False,
    ),
]


def explicit_flags(ctx: typer.Context, **values: object) -> dict[str, object]:
    """The subset of ``values`` the user set (typed, or in a ``--config`` file; not left at
    their defaults): they beat a preset."""

    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "DEFAULT_MAP")

    return {k: v for k, v in values.items() if typed(k)}


def resolve_preset(command: str, preset: str | None, explicit: dict[str, object]) -> dict:
    """``--preset``'s settings for ``command``, typed flags on top (prefcurate.routing.presets)."""
    from prefcurate.routing.presets import resolve

    return resolve(command, preset, explicit)


@dataclass
class RunRecord:
    """What a command will leave in the catalog once its outputs are written (see
    :func:`recorded`); :meth:`record` fills it in."""

    kind: str
    catalog: str | None
    started_at: datetime
    fields: dict[str, Any] | None = None

    def record(self, **fields: Any) -> None:
        """The run's ``inputs``, ``params``, ``figures``, ``outputs``, ``summary``, ``metrics``."""
        self.fields = fields


@contextlib.contextmanager
def recorded(kind: str, catalog: str | None) -> Iterator[RunRecord]:
    """The catalog ritual of analyze, route, score and train, once.

    On entry: the start time, and a wrong ``--catalog`` (or timeout) refused before any work. On
    a normal exit, the run is recorded if the body called :meth:`RunRecord.record` (a process
    that is not rank 0 does not). A catalog that cannot be recorded into (locked for too long,
    unwritable) costs a warning line on stderr, never the run's result; ``catalog='off'`` records
    nothing; a failed command records nothing.
    """
    from prefcurate.catalog import store as cat

    run = RunRecord(kind, catalog, datetime.now(timezone.utc))  # noqa: UP017
    cat.check_catalog(catalog)
    yield run
    if run.fields is not None and cat.catalog_path(catalog) is not None:
        _record(run)


def _record(run: RunRecord) -> str | None:
    import shlex

    from prefcurate.catalog import store as cat

    try:
        return cat.record_run(
            run.kind,
            command=shlex.join(["prefcurate", *STATE.argv]),
            started_at=run.started_at,
            path=run.catalog,
            **run.fields,
        )
    except InputError as exc:
        print(f"warning: run not recorded in the catalog: {exc}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------------------------------
# tables


def reflow_help(doc: str) -> str:
    """A command's docstring as ``--help`` shows it: each paragraph one line, which the terminal
    wraps to its width (hard-wrapped source lines re-wrap raggedly at 80 columns), and every
    line of an ``Example:`` block kept whole, one command per line."""
    out = []
    examples = False
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines = paragraph.splitlines()
        examples = examples or lines[0].startswith("Example")
        if examples:  # the Example block runs to the end: its lines stay as they are
            out.append("\n".join(lines))
        else:
            out.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def reflow_all_help(typer_app: typer.Typer) -> None:
    """Set every command's help (and its sub-apps') from :func:`reflow_help` of its docstring."""
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = reflow_help(info.callback.__doc__)
    for group in typer_app.registered_groups:
        reflow_all_help(group.typer_instance)


def show_traceback() -> None:
    """With ``--debug``, print the traceback of the exception being handled, on stderr."""
    if STATE.debug:
        import traceback

        traceback.print_exc(file=sys.stderr)


def echo(text: str) -> None:
    """A result line on stdout: wrapped between words to the window on a terminal (a plain
    ``print`` breaks "curriculum" in two at column 80), exactly as is when piped."""
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(text, markup=False, highlight=False)
    else:
        print(text)


#: Below this many columns a six-column table squeezes each cell to a few letters.
WIDE_TABLE_COLUMNS = 120


def narrow_terminal() -> bool:
    """stdout is a terminal narrower than :data:`WIDE_TABLE_COLUMNS`."""
    from rich.console import Console

    console = Console()
    return console.is_terminal and console.width < WIDE_TABLE_COLUMNS


def cell(value: object, limit: int = 80) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_table(
    header: list[str],
    rows: list[list[str]],
    *,
    title: str | None = None,
    whole: tuple[str, ...] = (),
) -> None:
    """A rich table on a terminal; plain aligned columns when stdout is a pipe or file.

    Columns named in ``whole`` are never wrapped or cut (a run id must stay copyable).
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if console.is_terminal:
        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            keep = name in whole
            widest = max((len(str(row[i])) for row in rows), default=0) if keep else None
            table.add_column(name, no_wrap=keep, min_width=widest)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        console.print(table)
        return
    cells = [list(map(str, header)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n".join(lines))
