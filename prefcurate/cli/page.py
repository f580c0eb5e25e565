"""The ``inspect`` command: one self-contained HTML page of a dataset, a split or a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefcurate.cli.common import (
    DEFAULT_COLUMNS,
    Columns,
    SftFractionOpt,
    ThresholdOpt,
    app,
    column_options,
)


@app.command("inspect")
@column_options
def inspect_command(
    data: Annotated[
        str,
        typer.Argument(
            metavar="DATA",
            help="Preference data (file, directory or glob), a SPLIT_DIR or a RUN_DIR.",
            show_default=False,
        ),
    ],
    threshold: ThresholdOpt = None,
    sft_fraction: SftFractionOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write.")] = Path(
        "inspect.html"
    ),
    samples_per_bin: Annotated[
        int, typer.Option("--samples-per-bin", help="Sample pairs kept per histogram bin.")
    ] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pair samples.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out even if prefcurate did not write it.")
    ] = False,
    columns: Columns = DEFAULT_COLUMNS,
) -> None:
    """Write one self-contained HTML page to look at a dataset's difficulty and at its pairs.

    analyze's summary; a margin histogram: click a bar to read its sampled pairs side by side.

    A τ control with the routed counts; rating grid, margin vs length, per-source margins.

    A SPLIT_DIR starts at plan.json's τ; a RUN_DIR adds its curves and accuracy per margin.

    The page opens from disk with no network. What each part answers: docs/inspect.md.

    Example:
        prefcurate inspect pairs.jsonl --threshold 0.5 --out uf.html
    """
    import time

    from prefcurate.base.progress import status, stderr
    from prefcurate.commands.inspect import build_page, check_page_out, is_split_dir
    from prefcurate.data.margins import check_routing_args
    from prefcurate.data.runs import is_run_dir

    started = time.perf_counter()
    check_routing_args(threshold, sft_fraction)
    check_page_out(out, force=force, inputs=[data])
    pairs = None if is_run_dir(data) or is_split_dir(data) else columns.open(data)
    with status(f"inspecting {data}"):
        seen, _ = build_page(
            data,
            out,
            source=pairs,
            threshold=threshold,
            sft_fraction=sft_fraction,
            samples_per_bin=samples_per_bin,
            seed=seed,
        )
    size = out.stat().st_size / 1e6
    stderr.print(
        f"wrote {out} ({size:.1f} MB; {seen.samples.height:,} sample pairs of "
        f"{seen.report.rows:,}) in {time.perf_counter() - started:.1f} s; open it in a browser",
        highlight=False,
    )
