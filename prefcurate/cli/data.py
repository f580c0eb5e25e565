"""The data commands: ``analyze``, ``synth`` and ``route``.

Each command reads its flags as one small dataclass (:class:`AnalyzeOptions`,
:class:`RouteOptions`) and calls the library: :mod:`prefcurate.commands` writes the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from prefcurate.base.errors import InputError
from prefcurate.cli.common import (
    DEFAULT_COLUMNS,
    CatalogOpt,
    Columns,
    DataArg,
    ForceOpt,
    SftFractionOpt,
    ThresholdOpt,
    app,
    column_options,
    echo,
    explicit_flags,
    options,
    recorded,
    resolve_preset,
)
from prefcurate.cli.configfile import ConfigFileOpt


@dataclass(frozen=True)
class AnalyzeOptions:
    """``prefcurate analyze``'s flags."""

    threshold: ThresholdOpt = None
    sft_fraction: SftFractionOpt = None
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write report.json, the PNG plots and index.html into this folder."
        ),
    ] = None
    force: ForceOpt = False
    as_json: Annotated[
        bool, typer.Option("--json", help="Print report.json to stdout, and nothing else.")
    ] = False
    catalog: CatalogOpt = None


@app.command("analyze")
@options(AnalyzeOptions)
@column_options
def analyze_command(
    data: DataArg, opts: AnalyzeOptions, columns: Columns = DEFAULT_COLUMNS
) -> None:
    """Show what is in a preference dataset and what a margin threshold would route.

    Margins (quantiles, histogram, ties, inversions), lengths and length bias, flags, sources.

    With --threshold τ or --sft-fraction q: the pairs going to SFT (margin < τ) and to DPO.

    Every key of report.json is documented in docs/report.md.

    Example:
        prefcurate analyze pairs.jsonl --threshold 0.5 --out report/
    """
    from prefcurate.base.outdir import check_out_dir
    from prefcurate.base.progress import status
    from prefcurate.data.margins import check_routing_args
    from prefcurate.reporting.terminal import print_json, render_report

    with recorded("analyze", opts.catalog) as run:
        check_routing_args(opts.threshold, opts.sft_fraction)
        if opts.out is not None:
            check_out_dir(opts.out, force=opts.force, inputs=[data])
        pairs = columns.open(data)
        with status(f"analyzing {pairs.raw.display}"):
            report, seen = _analyze(pairs, opts)
        if opts.as_json:
            print_json(report)
        else:
            from rich.console import Console

            render_report(report, Console(), description=pairs.describe())
        if opts.out is not None:
            _write_report(report, seen, opts)
        core = report.to_dict()
        run.record(
            inputs=[{**report.input, "rows": report.rows}],
            params={
                "threshold": opts.threshold,
                "sft_fraction": opts.sft_fraction,
                "layout": report.layout,
            },  # fmt: skip
            figures={k: core.get(k) for k in ("rows", "margin", "routing", "lengths", "flags")},
            outputs={"dir": str(opts.out.resolve())} if opts.out is not None else {},
            summary=report.summary(),
        )


def _analyze(pairs, opts: AnalyzeOptions):
    """analyze's report, with the page's pair samples when a folder is written (one pass)."""
    if opts.out is None:
        from prefcurate.reporting.analyze import analyze

        return analyze(pairs, threshold=opts.threshold, sft_fraction=opts.sft_fraction), None
    from prefcurate.reporting.inspection import inspect_source

    seen = inspect_source(pairs, threshold=opts.threshold, sft_fraction=opts.sft_fraction)
    return seen.report, seen


def _write_report(report, seen, opts: AnalyzeOptions) -> None:
    from prefcurate.base.progress import bar, stderr
    from prefcurate.commands.analyze import write_report_dir
    from prefcurate.reporting.plots import PLOT_FILES

    with bar("writing plots", len(PLOT_FILES)) as progress:
        names = write_report_dir(
            report,
            opts.out,
            force=opts.force,
            threshold=opts.threshold,
            on_written=lambda _: progress.advance(0),
            inspection=seen,
        )
    if not opts.as_json:
        stderr.print(f"wrote {opts.out}/: {', '.join(names)}", highlight=False)


@app.command("synth")
def synth_command(
    out: Annotated[
        Path,
        typer.Argument(metavar="OUT", help="Output file: .jsonl or .parquet.", show_default=False),
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

    from prefcurate.base.progress import bar, stderr
    from prefcurate.data.synth import output_format, write_synth

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


@dataclass(frozen=True)
class RouteOptions:
    """``prefcurate route``'s flags (the columns come as :class:`Columns`)."""

    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output directory (written atomically).", show_default=False
        ),
    ] = None
    threshold: ThresholdOpt = None
    sft_fraction: SftFractionOpt = None
    mode: Annotated[
        str, typer.Option("--mode", help="mixdpo | dpo | filter | sft (baselines from the data).")
    ] = "mixdpo"
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            help="curriculum (margin descending) | random | as-is. Default: curriculum for "
            "mixdpo and filter, random (seeded) for dpo and sft.",
            show_default=False,
        ),
    ] = None
    soft: Annotated[
        float | None,
        typer.Option(
            "--soft",
            help="Soft routing at temperature T: a weight column σ((c − margin)/T), the SFT "
            "share of each pair's loss, c halfway between τ and the margin below it (mixdpo).",
            show_default=False,
        ),
    ] = None
    placement: Annotated[
        str | None,
        typer.Option(
            "--placement",
            help="Where a mixdpo curriculum puts its sft pairs: last (the paper's; under cosine "
            "decay they barely train) | spread (evenly between the dpo pairs).",
            show_default=False,
        ),
    ] = None
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="paper: MixDPO's main setting (mixdpo, τ 0.5, curriculum); flags override it.",
            show_default=False,
        ),
    ] = None
    stages: Annotated[
        int | None,
        typer.Option("--stages", help="Cut the curriculum into K stages, shuffled within each."),
    ] = None
    drop: Annotated[
        list[str] | None,
        typer.Option(
            "--drop",
            metavar="SQL",
            help='Drop pairs matching a DuckDB SQL predicate, e.g. "chosen = rejected" '
            "(repeatable).",
        ),
    ] = None
    eval_fraction: Annotated[
        float | None,
        typer.Option("--eval-fraction", help="Hold out this share as eval.parquet (stratified)."),
    ] = None
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of shuffles and the held-out choice.")
    ] = 0
    export: Annotated[
        list[str] | None,
        typer.Option(
            "--export",
            metavar="ENGINE",
            help="Also write the split for other trainers: trl (dpo.jsonl + sft.jsonl), "
            "trl-mixdpo (mixdpo.jsonl for prefcurate.integrations.trl), llamafactory, openrlhf; "
            "several comma-separated or repeated (a repeat is written once), with the eval "
            "split's files when there is one.",
        ),
    ] = None
    force: ForceOpt = False
    as_json: Annotated[bool, typer.Option("--json", help="Print plan.json to stdout.")] = False
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--text-memory",
            "--memory-budget",
            help="Memory for the texts route holds at once (e.g. 4GB): an input whose texts fit "
            "is read once, a larger one twice, a window of texts at a time; same files either "
            "way. Not a cap on the process: reading, hashing and checking every row costs about "
            "1.3× the input's in-memory size besides (docs/route.md). --memory-budget is its "
            "old name. [default: an eighth of the RAM]",
            show_default=False,
        ),
    ] = None
    catalog: CatalogOpt = None


@app.command()
@options(RouteOptions)
@column_options
def route(
    ctx: typer.Context,
    data: DataArg,
    opts: RouteOptions,
    columns: Columns = DEFAULT_COLUMNS,
    config_file: ConfigFileOpt = None,
) -> None:
    """Route each pair to DPO or SFT by its margin and write curriculum-ordered splits.

    Writes train.parquet (rank order, with route, rank and stage columns) and plan.json.

    --eval-fraction adds eval.parquet. --export writes the split for other trainers too:
    trl-mixdpo (mixdpo.jsonl: per-pair routing in TRL), trl, llamafactory, openrlhf, or
    several (--export trl-mixdpo,openrlhf); docs/integrations.md.

    --preset paper is the paper's route (mixdpo, τ 0.5, curriculum order) in one word.
    --config FILE.yaml reads the flags from a file (data: ..., threshold: 0.5); typed flags win.

    Example:
        prefcurate route pairs.jsonl --preset paper --out splits/uf
    """
    import json

    from prefcurate.base.outdir import out_lock
    from prefcurate.base.progress import status
    from prefcurate.commands.route import route_dir

    with recorded("route", opts.catalog) as run:
        _check_route(ctx, data, opts)
        with out_lock(opts.out):  # one writer per --out; a killed one does not keep it
            with status("reading and routing"):
                plan = _plan(ctx, columns.open(data, seed=opts.seed), opts)
            with status(f"writing {opts.out}"):
                document = route_dir(plan, opts.out, force=opts.force, export=opts.export)
            params = {k: v for k, v in document.items()
                      if k not in ("version", "input", "counts", "outputs")}  # fmt: skip
            run.record(
                inputs=[plan.input],
                params=params,
                figures={"threshold": plan.threshold, **plan.counts},
                outputs={"dir": str(opts.out.resolve()), **document["outputs"]},
                summary=plan.summary(),
            )
    if opts.as_json:
        print(json.dumps(document, indent=2))
    else:
        engines = [k for k in document["outputs"] if k not in ("train", "eval")]
        also = f" (exported for {', '.join(engines)})" if engines else ""
        echo(f"{plan.summary()} -> {opts.out}{also}")


def _check_route(ctx: typer.Context, data: str, opts: RouteOptions) -> None:
    """Every flag route can check before reading: fail fast, write nothing."""
    from prefcurate.base.outdir import check_out_dir
    from prefcurate.routing.exports.registry import check_export
    from prefcurate.routing.plan import check_route_args

    if opts.out is None:
        raise InputError("--out is required", fix="pass --out DIR for the split files")
    check_out_dir(opts.out, force=opts.force, inputs=[data])
    check_export(opts.export, weighted=opts.soft is not None)
    check_route_args(**_settings(ctx, opts))


def _settings(ctx: typer.Context, opts: RouteOptions) -> dict:
    """The arguments of plan_routes: the preset's settings, with the flags the user typed on top."""
    typed = explicit_flags(
        ctx, mode=opts.mode, threshold=opts.threshold, sft_fraction=opts.sft_fraction,
        order=opts.order,
    )  # fmt: skip
    settings = resolve_preset("route", opts.preset, typed)
    return {
        "mode": settings.get("mode", opts.mode),
        "threshold": settings.get("threshold"),
        "sft_fraction": settings.get("sft_fraction"),
        "order": settings.get("order"),
        "stages": opts.stages,
        "drop": opts.drop or (),
        "eval_fraction": opts.eval_fraction,
        "soft": opts.soft,
        "placement": opts.placement,
        "memory_budget": opts.memory_budget,
    }


def _plan(ctx: typer.Context, pairs, opts: RouteOptions):
    """The route plan of ``pairs`` with :func:`_settings`."""
    from prefcurate.routing.plan import plan_routes

    return plan_routes(pairs, seed=opts.seed, preset=opts.preset, **_settings(ctx, opts))
