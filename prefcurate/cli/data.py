"""The data commands: ``analyze``, ``synth`` and ``route``."""

from __future__ import annotations

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
    check_catalog,
    column_options,
    echo,
    explicit_flags,
    record_run,
    resolve_preset,
)
from prefcurate.cli.configfile import ConfigFileOpt


@app.command("analyze")
@column_options
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
    catalog: CatalogOpt = None,
    columns: Columns = DEFAULT_COLUMNS,
) -> None:
    """Show what is in a preference dataset and what a margin threshold would route.

    Margins (quantiles, histogram, ties, inversions), lengths and length bias, flags, sources.

    With --threshold τ or --sft-fraction q: the pairs going to SFT (margin < τ) and to DPO.

    Every key of report.json is documented in docs/report.md.

    Example:
        prefcurate analyze ../shared/data/ultrafeedback_1k.jsonl --threshold 0.5 --out report/
    """
    from datetime import datetime, timezone

    from prefcurate.base.outdir import check_out_dir
    from prefcurate.base.progress import bar, status, stderr
    from prefcurate.commands.analyze import write_report_dir
    from prefcurate.data.margins import check_routing_args
    from prefcurate.reporting.analyze import analyze
    from prefcurate.reporting.plots import PLOT_FILES
    from prefcurate.reporting.terminal import print_json, render_report

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    check_catalog(catalog)  # a wrong --catalog or timeout fails before any work
    check_routing_args(threshold, sft_fraction)
    if out is not None:
        check_out_dir(out, force=force, inputs=[data])
    pairs = columns.open(data)
    seen = None
    with status(f"analyzing {pairs.raw.display}"):
        if out is None:
            report = analyze(pairs, threshold=threshold, sft_fraction=sft_fraction)
        else:  # the same figures, plus the pair samples of the folder's index.html
            from prefcurate.reporting.inspection import inspect_source

            seen = inspect_source(pairs, threshold=threshold, sft_fraction=sft_fraction)
            report = seen.report
    if json_out:
        print_json(report)
    else:
        from rich.console import Console

        render_report(report, Console(), description=pairs.describe())
    if out is not None:
        with bar("writing plots", len(PLOT_FILES)) as progress:
            names = write_report_dir(
                report,
                out,
                force=force,
                on_written=lambda _: progress.advance(0),
                inspection=seen,
            )
        if not json_out:
            stderr.print(f"wrote {out}/: {', '.join(names)}", highlight=False)
    core = report.to_dict()
    record_run(
        "analyze",
        catalog=catalog,
        inputs=[{**report.input, "rows": report.rows}],
        params={"threshold": threshold, "sft_fraction": sft_fraction, "layout": report.layout},
        figures={k: core.get(k) for k in ("rows", "margin", "routing", "lengths", "flags")},
        outputs={"dir": str(out.resolve())} if out is not None else {},
        summary=report.summary(),
        started_at=started_at,
    )


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


@app.command()
@column_options
def route(
    ctx: typer.Context,
    data: DataArg,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output directory (written atomically).", show_default=False
        ),
    ] = None,
    threshold: ThresholdOpt = None,
    sft_fraction: SftFractionOpt = None,
    mode: Annotated[
        str, typer.Option("--mode", help="mixdpo | dpo | filter | sft (baselines from the data).")
    ] = "mixdpo",
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            help="curriculum (margin descending) | random | as-is. Default: curriculum for "
            "mixdpo and filter, random (seeded) for dpo and sft.",
            show_default=False,
        ),
    ] = None,
    soft: Annotated[
        float | None,
        typer.Option(
            "--soft",
            help="Soft routing at temperature T: a weight column σ((τ − margin)/T), the SFT "
            "share of each pair's loss (mixdpo).",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="paper: MixDPO's main setting (mixdpo, τ 0.5, curriculum); flags override it.",
            show_default=False,
        ),
    ] = None,
    stages: Annotated[
        int | None,
        typer.Option("--stages", help="Cut the curriculum into K stages, shuffled within each."),
    ] = None,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            "--drop",
            help='Drop pairs matching a DuckDB SQL predicate, e.g. "chosen = rejected" '
            "(repeatable).",
        ),
    ] = None,
    eval_fraction: Annotated[
        float | None,
        typer.Option("--eval-fraction", help="Hold out this share as eval.parquet (stratified)."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of shuffles and the held-out choice.")
    ] = 0,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            help="Also write the split for another trainer: trl (dpo.jsonl + sft.jsonl), "
            "trl-mixdpo (mixdpo.jsonl for prefcurate.integrations.trl), llamafactory, openrlhf.",
        ),
    ] = None,
    force: ForceOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print plan.json to stdout.")] = False,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget",
            help="Memory route may take for the input (e.g. 4GB): an input whose one pass fits "
            "is read once, a larger one twice, never held whole; same files either way. "
            "[default: an eighth of the RAM]",
            show_default=False,
        ),
    ] = None,
    catalog: CatalogOpt = None,
    config_file: ConfigFileOpt = None,
    columns: Columns = DEFAULT_COLUMNS,
) -> None:
    """Route each pair to DPO or SFT by its margin and write curriculum-ordered splits.

    Writes train.parquet (rank order, with route, rank and stage columns) and plan.json.

    --eval-fraction adds eval.parquet. --export writes the split for another trainer too:
    trl-mixdpo (mixdpo.jsonl: per-pair routing in TRL), trl, llamafactory, openrlhf
    (docs/integrations.md).

    --preset paper is the paper's route (mixdpo, τ 0.5, curriculum order) in one word.
    --config FILE.yaml reads the flags from a file (data: ..., threshold: 0.5); typed flags win.

    Example:
        prefcurate route ../shared/data/ultrafeedback_1k.jsonl --preset paper --out out/uf

        prefcurate route --config route.yaml --threshold 1.0
    """
    import json
    from datetime import datetime, timezone

    from prefcurate.base.outdir import check_out_dir, out_lock
    from prefcurate.base.progress import status
    from prefcurate.base.sizes import parse_size
    from prefcurate.commands.route import route_dir
    from prefcurate.routing.exports.registry import check_export
    from prefcurate.routing.plan import plan_routes

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    check_catalog(catalog)  # a wrong --catalog or timeout fails before any work
    if out is None:
        raise InputError("--out is required", fix="pass --out DIR for the split files")
    check_out_dir(out, force=force, inputs=[data])  # before reading: fail fast, write nothing
    check_export(export, weighted=soft is not None)
    if memory_budget is not None:
        parse_size(memory_budget)  # a bad size fails before anything is read
    with out_lock(out):  # one writer per --out; a killed one does not keep it
        with status("reading and routing"):
            pairs = columns.open(data, seed=seed)
            typed = explicit_flags(
                ctx, mode=mode, threshold=threshold, sft_fraction=sft_fraction, order=order
            )
            settings = resolve_preset("route", preset, typed)
            plan = plan_routes(
                pairs,
                mode=settings.get("mode", mode),
                threshold=settings.get("threshold"),
                sft_fraction=settings.get("sft_fraction"),
                order=settings.get("order"),
                stages=stages,
                drop=drop or (),
                eval_fraction=eval_fraction,
                seed=seed,
                soft=soft,
                preset=preset,
                memory_budget=memory_budget,
            )
        with status(f"writing {out}"):
            document = route_dir(plan, out, force=force, export=export)
        params = {
            k: v for k, v in document.items() if k not in ("version", "input", "counts", "outputs")
        }
        record_run(
            "route",
            catalog=catalog,
            inputs=[plan.input],
            params=params,
            figures={"threshold": plan.threshold, **plan.counts},
            outputs={"dir": str(out.resolve()), **document["outputs"]},
            summary=plan.summary(),
            started_at=started_at,
        )
        if as_json:
            print(json.dumps(document, indent=2))
        else:
            echo(f"{plan.summary()} -> {out}")
