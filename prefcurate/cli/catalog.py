"""The catalog commands: ``runs`` lists what was run, ``sql`` queries the catalog and data."""

from __future__ import annotations

import math
import sys
from typing import Annotated

import typer

from prefcurate.base.errors import InputError
from prefcurate.cli.common import (
    DEFAULT_COLUMNS,
    CatalogOpt,
    Columns,
    app,
    cell,
    column_options,
    narrow_terminal,
    print_table,
)


@app.command()
def runs(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many runs.")] = 20,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only runs of this command (analyze, route, ...).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """List the runs recorded in the catalog, newest first.

    One line each: id, command, status, input and summary; --json gives every recorded field.

    Example:
        prefcurate runs --limit 5 --kind route
    """
    import json

    from prefcurate.catalog import store as cat

    if limit <= 0:
        raise InputError(f"--limit must be a positive integer, got {limit}", fix="e.g. --limit 20")
    cat.check_catalog(catalog)
    found = cat.list_runs(catalog, limit=limit, kind=kind)
    if as_json:
        print(json.dumps(found, indent=2, default=str, ensure_ascii=False))
        return
    if not found:
        where = cat.catalog_path(catalog)
        print(f"no runs recorded in {where}" if where else "the catalog is off", file=sys.stderr)
        return
    header = ["run_id", "kind", "started (UTC)", "status", "input", "summary"]
    rows = []
    for run in found:
        data = ", ".join(
            f"{i['path']} ({i['rows']} rows)" if i.get("rows") is not None else i["path"]
            for i in run["inputs"]
        )
        started = run["started_at"].strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            [run["run_id"], run["kind"], started, run["status"], data, run["summary"] or ""]
        )
    title = f"runs in {cat.catalog_path(catalog)}"
    if narrow_terminal():
        _print_runs_as_blocks(rows, title=title)
    else:
        print_table(header, rows, title=title, whole=("run_id",))


def _print_runs_as_blocks(rows: list[list[str]], *, title: str) -> None:
    """On a narrow terminal, one block per run: id, kind, status and time, then input, summary."""
    from rich.console import Console
    from rich.padding import Padding
    from rich.text import Text

    console = Console()
    console.print(Text(title, style="bold"))
    for run_id, kind, started, status, data, summary in rows:
        console.print()
        console.print(
            Text.assemble(
                (run_id, "bold"),
                "  ",
                (kind, "cyan"),
                "  ",
                (status, "green" if status == "ok" else "yellow"),
                f"  {started} UTC",
            )
        )
        for line in (data, summary):
            if line:
                console.print(Padding(Text(line), (0, 0, 0, 2)))


@app.command()
@column_options
def sql(
    query: Annotated[
        str,
        typer.Argument(metavar="QUERY", help="One read-only SQL statement.", show_default=False),
    ],
    data: Annotated[
        str | None,
        typer.Option("--data", help="Preference data to expose as the view 'pairs'."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of objects.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")] = False,
    time_limit: Annotated[
        float,
        typer.Option("--time-limit", help="Stop the query after this many seconds.", min=0.001),
    ] = 60.0,
    memory_limit: Annotated[
        str,
        typer.Option("--memory-limit", help="Stop the query when it needs more memory than this."),
    ] = "2GB",
    catalog: CatalogOpt = None,
    columns: Columns = DEFAULT_COLUMNS,
) -> None:
    """Run read-only SQL over the catalog (runs, inputs, metrics) and, with --data, view 'pairs'.

    The query reads the catalog and the data, nothing else: writes and file access fail. It is
    stopped after --time-limit seconds (60), above --memory-limit (2GB, spilling included) or
    beyond 1,000,000 result rows.

    Example:
        prefcurate sql "select count(*) from pairs" --data pairs.jsonl
        prefcurate sql "select kind, count(*) from runs group by kind" --json
    """
    import csv
    import json

    from prefcurate.base.progress import status
    from prefcurate.base.sizes import parse_size
    from prefcurate.catalog import sql
    from prefcurate.catalog import store as cat

    if as_json and as_csv:
        raise InputError("--json and --csv both given", fix="pass one")
    if not math.isfinite(time_limit):
        raise InputError(f"--time-limit must be a number of seconds, got {time_limit}")
    memory = parse_size(memory_limit, flag="--memory-limit")
    cat.check_catalog(catalog)
    sql.read_only_statement(query)  # before the data is read
    pairs = None
    if data is not None:
        with status("reading the data"):
            frame = columns.open(data).collect()
            pairs = frame.to_arrow()
    result = sql.query(
        query, catalog=catalog, pairs=pairs, time_limit=time_limit, memory_limit=memory
    )
    if as_json:
        print(json.dumps(result.records(), ensure_ascii=False, default=str))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        for record in result.records():
            writer.writerow(
                json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
                for v in record.values()
            )
    else:
        rows = [[cell(v) for v in row] for row in result.rows]
        print_table(result.columns, rows)
