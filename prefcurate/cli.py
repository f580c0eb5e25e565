"""The ``prefcurate`` command line: one thin function per command.

Each command parses its flags, calls one library function and renders what it returns. Errors are
translated here, at the edge: an :class:`~prefcurate.errors.InputError` becomes one line on stderr
and exit code 2; anything unexpected becomes one line with "please report" and exit code 1. The
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
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
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click.UsageError as exc:
        if debug:
            raise
        hint = (
            f" (see 'prefcurate {exc.ctx.command_path.split(' ', 1)[-1]} --help')"
            if exc.ctx
            else ""
        )
        print(f"error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
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


# --------------------------------------------------------------------------------------------------
# analyze, synth

ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        "-t",
        help="τ: show what routing pairs with margin < τ to SFT (the rest to DPO) would do.",
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
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]


@app.command("analyze")
def analyze_command(
    data: DataArg,
    threshold: ThresholdOpt = None,
    sft_fraction: SftFractionOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write report.json and PNG plots into this new folder."),
    ] = None,
    force: ForceOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print report.json to stdout, and nothing else.")
    ] = False,
    prompt: PromptOpt = None,
    chosen: ChosenOpt = None,
    rejected: RejectedOpt = None,
    score_chosen: ScoreChosenOpt = None,
    score_rejected: ScoreRejectedOpt = None,
    source: SourceOpt = None,
    binarize: BinarizeOpt = Binarize.BEST_VS_WORST,
    split: SplitOpt = None,
) -> None:
    """Show what is in a preference dataset and what a margin threshold would route.

    Margins (quantiles, histogram, ties, inversions), lengths and length bias, flags, sources.

    With --threshold τ or --sft-fraction q: the pairs going to SFT (margin < τ) and to DPO.

    Every key of report.json is documented in docs/report.md.

    Example:
        prefcurate analyze ../shared/data/ultrafeedback_1k.jsonl --threshold 0.5 --out report/
    """
    from prefcurate.analyze import analyze, check_routing_args
    from prefcurate.io import check_new_dir
    from prefcurate.progress import status
    from prefcurate.report import print_json, render_report

    check_routing_args(threshold, sft_fraction)
    if out is not None:
        check_new_dir(out, force=force)
    pairs = open_source(
        data,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=score_chosen,
        score_rejected=score_rejected,
        source=source,
        binarize=binarize,
        split=split,
    )
    with status(f"analyzing {pairs.raw.display}"):
        report = analyze(pairs, threshold=threshold, sft_fraction=sft_fraction)
    if json_out:
        print_json(report)
    else:
        from rich.console import Console

        render_report(report, Console(), description=pairs.describe())
    if out is not None:
        _write_report_dir(report, out, force=force, quiet=json_out)


def _write_report_dir(report, out: Path, *, force: bool, quiet: bool) -> None:
    """report.json and the PNGs, all or nothing (an atomic directory)."""
    from prefcurate.io import atomic_dir
    from prefcurate.plots import PLOT_FILES, write_plots
    from prefcurate.progress import bar, stderr

    with atomic_dir(out, force=force) as tmp, bar("writing plots", len(PLOT_FILES)) as progress:
        (tmp / "report.json").write_text(report.to_json(), encoding="utf-8")
        written = write_plots(report, tmp, on_written=lambda _: progress.advance(0))
    if not quiet:
        names = ", ".join(["report.json", *(p.name for p in written)])
        stderr.print(f"wrote {out}/: {names}", highlight=False)


@app.command("synth")
def synth_command(
    out: Annotated[
        Path, typer.Argument(help="Output file: .jsonl or .parquet.", show_default=False)
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of pairs.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 0,
    flaw_rate: Annotated[
        float,
        typer.Option(
            "--flaw-rate",
            help="Share of rows given each flaw (inverted, identical, duplicate prompt or pair).",
        ),
    ] = 0.001,
    force: ForceOpt = False,
) -> None:
    """Write synthetic preference pairs with UltraFeedback-like ratings and realistic lengths.

    Ratings 1-10 in steps of 0.5, about 12% ties, a long tail of large margins, seven sources.

    A few planted flaws (--flaw-rate) give analyze something to find. The model: docs/synth.md.

    Example:
        prefcurate synth pairs.parquet --n 100000 --seed 0
    """
    import time

    from prefcurate.progress import bar, stderr
    from prefcurate.synth import output_format, write_synth

    output_format(out)  # a bad suffix fails before any work
    started = time.perf_counter()
    with bar("synthesising pairs", n, unit="pairs") as progress:
        write_synth(
            out,
            n=n,
            seed=seed,
            flaw_rate=flaw_rate,
            force=force,
            progress=lambda rows: progress.advance(0, rows),
        )
    size = out.stat().st_size / 1e6
    stderr.print(
        f"wrote {n:,} pairs to {out} ({size:,.1f} MB) in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )
