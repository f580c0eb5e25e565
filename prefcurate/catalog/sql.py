"""``prefcurate sql`` and ``route --drop``: a user's SQL, run where it can read no file.

What may run is decided by DuckDB's own parser (:func:`read_only_statement`: one SELECT, or
EXPLAIN without ANALYZE of one SELECT); it runs on an in-memory connection (:func:`sandbox`) with
the catalog attached read-only, external access switched off and the configuration locked
(:func:`lock_down`), so nothing else on disk is reachable. Example::

    >>> from prefcurate.catalog.sql import query
    >>> query("SELECT count(*) AS runs FROM runs").rows          # doctest: +SKIP
    [(12,)]
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from prefcurate.base import duck, interrupt
from prefcurate.base.errors import InputError, one_line
from prefcurate.catalog.store import attach


@dataclass
class QueryResult:
    """Columns, DuckDB type names and rows of a :func:`query`."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts; JSON columns parsed, times as ISO strings (ready for ``json.dumps``)."""
        return [
            {c: _plain(v, t) for c, t, v in zip(self.columns, self.types, row, strict=True)}
            for row in self.rows
        ]


@contextlib.contextmanager
def sandbox() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection to be locked down with :func:`lock_down`; closed on exit.

    DuckDB keeps its temporary directory readable when external access is off, and for an
    in-memory database that is ``.tmp/`` under the working directory. Here it is a private, empty
    directory of this process, removed afterwards (on Ctrl-C too: it is registered with
    :mod:`prefcurate.base.interrupt` before it is made), so a query sees no file through it.
    """
    import shutil
    import tempfile

    private = Path(tempfile.gettempdir()) / f"prefcurate-sql-{os.getpid()}-{secrets.token_hex(6)}"
    interrupt.register(private)
    try:
        private.mkdir(mode=0o700)
        con = duck.connect(":memory:", temp_directory=str(private))
        try:
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(private, ignore_errors=True)
        interrupt.unregister(private)


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """No file access beyond what is already attached or registered; settings frozen."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def read_only_statement(sql: str) -> None:
    """Refuse ``sql`` unless DuckDB's parser finds one SELECT, or EXPLAIN (not ANALYZE) of one.

    The statement type comes from ``extract_statements``; ``EXPLAIN ANALYZE`` runs its statement,
    so it is refused whatever follows it, and the statement under a plain EXPLAIN must itself be
    one SELECT.
    """
    fix = "use SELECT (the catalog and the data are read-only)"
    statements = _statements(sql)
    if len(statements) != 1:
        raise InputError(
            f"expected one SQL statement, got {len(statements)}",
            fix="run the statements one at a time",
        )
    statement = statements[0]
    kind = statement.type.name
    if kind == "SELECT":
        return
    if kind != "EXPLAIN":
        raise InputError(f"sql runs read-only queries; this is a {kind} statement", fix=fix)
    text = statement.query
    words = [(start, word.upper(), kind) for start, word, kind in sql_words(text)]
    depth, i = 0, 1  # after EXPLAIN: options in parentheses, then the statement it explains
    while i < len(words):
        start, word, kind = words[i]
        if kind == "keyword" and word in ("ANALYZE", "ANALYSE"):
            raise InputError(
                "sql does not run EXPLAIN ANALYZE (it executes the statement)",
                fix="use EXPLAIN without ANALYZE",
            )
        if kind == "operator" and word.startswith("("):
            depth += 1
        elif kind == "operator" and word.startswith(")"):
            depth -= 1
        elif depth == 0:
            break
        i += 1
    if i >= len(words):
        raise InputError("EXPLAIN of nothing", fix="EXPLAIN SELECT ...")
    inner = _statements(text[words[i][0] :])
    if len(inner) != 1 or inner[0].type.name != "SELECT":
        shown = inner[0].type.name if len(inner) == 1 else f"{len(inner)} statements"
        raise InputError(f"sql explains only one SELECT, not {shown}", fix=fix)


def sql_words(text: str) -> list[tuple[int, str, str]]:
    """DuckDB's tokens of ``text``: (start, the token's text stripped, its kind's name).

    Raises ``duckdb.Error`` for text DuckDB cannot tokenize.
    """
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(text)]
    return [
        (start, text[start:end].strip(), kind.name)
        for (start, kind), end in zip(tokens, ends, strict=True)
    ]


def _statements(sql: str) -> list:
    with sandbox() as con:
        try:
            return con.extract_statements(sql)
        except duckdb.Error as exc:
            raise _sql_error(exc) from exc


#: ``prefcurate sql``'s limits unless told otherwise: a query that runs longer, needs more memory
#: (or as much spilled to its private temporary folder) or returns more rows is stopped.
TIME_LIMIT_S = 60.0
MEMORY_LIMIT = 2_000_000_000
MAX_ROWS = 1_000_000


def query(
    sql: str,
    *,
    catalog: str | Path | None = None,
    pairs: Any = None,
    timeout: float | None = None,
    time_limit: float = TIME_LIMIT_S,
    memory_limit: int = MEMORY_LIMIT,
    max_rows: int = MAX_ROWS,
) -> QueryResult:
    """Run one read-only SQL statement over the catalog's tables and, if given, view ``pairs``.

    ``pairs`` is a Polars/Arrow frame exposed as the view ``pairs``. The catalog is attached
    read-only (its tables resolve without a prefix); then external access is switched off and the
    configuration locked, with DuckDB's temporary directory a private empty one, so the query can
    reach no other file. Only one SELECT, or EXPLAIN of one SELECT, runs
    (:func:`read_only_statement`). It is stopped, one line, when it runs longer than
    ``time_limit`` seconds, needs more than ``memory_limit`` bytes (in memory, or spilled), or
    returns more than ``max_rows`` rows; ``timeout`` is how long to wait for a locked catalog.
    """
    read_only_statement(sql)
    with sandbox() as con:
        if pairs is not None:
            con.register("pairs", pairs)
        if attach(con, catalog, timeout=timeout):
            con.execute("SET search_path = 'memory.main,catalog.main'")
        con.execute(f"SET memory_limit = '{int(memory_limit)}B'")
        con.execute(f"SET max_temp_directory_size = '{int(memory_limit)}B'")
        lock_down(con)
        timer = threading.Timer(time_limit, con.interrupt)
        timer.start()
        try:
            return _run(con, sql, max_rows)
        except duckdb.InterruptException as exc:
            raise InputError(
                f"the query ran longer than --time-limit {time_limit:g} s and was stopped",
                fix="narrow the query (a recursive CTE needs a bound), or raise --time-limit",
            ) from exc
        except duckdb.OutOfMemoryException as exc:
            raise InputError(
                f"the query needed more than --memory-limit {memory_limit:,} bytes and was stopped",
                fix="narrow or aggregate the query, or raise --memory-limit",
            ) from exc
        finally:
            timer.cancel()


def _run(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int) -> QueryResult:
    try:
        result = con.execute(sql)
        columns = [d[0] for d in result.description] if result.description else []
        types = [str(d[1]) for d in result.description] if result.description else []
        rows = result.fetchmany(max_rows + 1) if result.description else []
    except (duckdb.InterruptException, duckdb.OutOfMemoryException):
        raise
    except duckdb.Error as exc:
        raise _sql_error(exc) from exc
    if len(rows) > max_rows:
        raise InputError(
            f"the query returns more than {max_rows:,} rows",
            fix="add a LIMIT, or aggregate (count, group by)",
        )
    return QueryResult(columns, types, rows)


def duckdb_message(exc: Exception, limit: int = 240) -> str:
    """DuckDB's message in one line, without the echoed query and caret that follow it."""
    return one_line(str(exc).split("\nLINE ")[0], limit)


def _sql_error(exc: Exception) -> InputError:
    text = duckdb_message(exc, 300)
    fix = None
    if "pairs" in text and "does not exist" in text:
        fix = "pass --data DATA to query pairs"
    elif "does not exist" in text:
        fix = "tables: runs, inputs, metrics, meta (and pairs with --data)"
    return InputError(f"SQL error: {text}", fix=fix)


def _plain(value: Any, dtype: str) -> Any:
    if dtype == "JSON" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _plain(v, "") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, "") for v in value]
    if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
        return None
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
