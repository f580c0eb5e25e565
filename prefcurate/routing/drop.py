"""``route --drop``: a DuckDB SQL condition over the canonical columns, evaluated as the user meant.

A predicate is spliced into ``SELECT _pos FROM pairs WHERE (<predicate>)`` and run in the locked
sandbox of ``prefcurate sql`` (:mod:`prefcurate.catalog.sql`), over only the columns it names.
So that what runs is what the user wrote, it is read by DuckDB's own tokenizer and parser
(``json_serialize_sql``) before any data is, and refused when it

- is not one expression (a ``)`` that closes more than it opened, ``;``, a comment);
- holds a subquery of any form (``SELECT``, ``(VALUES ...)``, ``EXISTS``, ``IN (...)``);
- reads the whole row (``pairs``, ``pairs::VARCHAR``, ``COLUMNS(*)``, ``*``): only the named
  columns are handed over, so such a predicate would silently match nothing;
- calls a function whose answer changes from run to run (``random()``, ``uuid()``, ``now()``):
  the same data and flags must drop the same pairs;
- is not a condition (``--drop margin`` is a number, and every non-zero one would count as true).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.catalog.sql import duckdb_message, lock_down, sandbox, sql_words
from prefcurate.data.io import PAIR_COLUMNS

#: The columns a predicate may name.
PREDICATE_COLUMNS = (*PAIR_COLUMNS,)
FIX = "a DuckDB SQL condition over the columns, e.g. 'chosen = rejected OR margin < 0'"
_SPLICE = "SELECT _pos FROM pairs WHERE ({})"


def check_predicates(predicates: tuple[str, ...], schema: pl.Schema) -> None:
    """Fail on a bad predicate before any data is read: parse it, then run it on an empty frame
    with the data's column types (a condition must be BOOLEAN there)."""
    if not predicates:
        return
    empty = pl.DataFrame(schema={c: schema[c] for c in PREDICATE_COLUMNS})
    for predicate in predicates:
        columns = predicate_columns(predicate)
        _check_is_condition(empty, predicate, columns)
        matches(empty, predicate)


def predicate_columns(predicate: str) -> list[str]:
    """The columns ``predicate`` reads, after refusing what cannot run as the user meant."""
    _check_tokens(predicate)
    where = _parse(predicate)
    names: set[str] = set()
    for node in _nodes(where):
        names |= _check_node(node, predicate)
    return [c for c in PREDICATE_COLUMNS if c in names]


def matches(frame: pl.DataFrame, predicate: str) -> pl.Series:
    """Positions (row numbers of ``frame``) of the pairs ``predicate`` is true for (null: false).

    Only the columns the predicate names are handed to DuckDB, so a predicate on ``margin``
    never copies the text columns; no file is reachable from it.
    """
    import duckdb

    used = predicate_columns(predicate)
    table = frame.select(pl.int_range(frame.height, dtype=pl.Int64).alias("_pos"), *used).to_arrow()
    with sandbox() as con:
        con.register("pairs", table)
        lock_down(con)
        sql = f"SELECT _pos FROM pairs WHERE coalesce(({predicate}), false)"
        try:
            result = con.execute(sql).fetchnumpy()["_pos"]
        except duckdb.Error as exc:
            raise _invalid(predicate, exc) from exc
    return pl.Series("_pos", np.asarray(result), dtype=pl.Int64)


def _check_tokens(predicate: str) -> None:
    """One expression by DuckDB's tokenizer: no ';', comment, or ')' closing the WHERE."""
    import duckdb

    if not predicate.strip():
        raise InputError("--drop predicate is empty", fix="e.g. --drop 'chosen = rejected'")
    try:
        words = sql_words(predicate)
    except duckdb.Error as exc:
        raise _invalid(predicate, exc) from exc
    depth = 0
    for _, text, kind in words:
        problem = None
        if kind == "comment":
            problem = "a comment"
        elif kind == "operator":
            if ";" in text:
                problem = "';' (one expression, not statements)"
            for char in text:
                depth += (char == "(") - (char == ")")
                if depth < 0:
                    problem = "a ')' that closes more than it opened"
        if problem:
            raise _refused(predicate, f"holds {problem}")
    if depth != 0:
        raise _refused(predicate, "has unbalanced parentheses")


def _parse(predicate: str) -> dict[str, Any]:
    """The WHERE clause of the spliced SELECT, as DuckDB's parser serialises it."""
    import duckdb

    spliced = _SPLICE.format(predicate)
    with sandbox() as con:
        try:
            statements = con.extract_statements(spliced)
        except duckdb.Error as exc:
            raise InputError(
                f"invalid --drop predicate {predicate!r}: {duckdb_message(exc)}", fix=FIX
            ) from exc
        if len(statements) != 1 or statements[0].type.name != "SELECT":
            raise _refused(predicate, "is not one expression")
        text = con.execute("SELECT json_serialize_sql(?)", [spliced]).fetchone()[0]
    tree = json.loads(text)
    statements = tree.get("statements", [])
    node = statements[0].get("node", {}) if len(statements) == 1 and not tree.get("error") else {}
    if node.get("type") != "SELECT_NODE" or node.get("where_clause") is None:
        raise _refused(predicate, "is not one expression")
    return node["where_clause"]


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every expression node of a serialised parse tree (objects with a ``class``)."""
    if isinstance(tree, dict):
        if "class" in tree:
            yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def _check_node(node: dict[str, Any], predicate: str) -> set[str]:
    """Refuse a subquery, the whole row or a changing function; the column a node names."""
    kind = node.get("class")
    if kind == "SUBQUERY":
        raise _refused(predicate, "holds a subquery")
    if kind == "STAR":
        raise _refused(predicate, "reads every column (COLUMNS(*) or *): only named columns are")
    if kind == "COLUMN_REF":
        names = [n.lower() for n in node.get("column_names", [])]
        if names == ["pairs"]:
            raise _refused(predicate, "reads the whole row (pairs): only named columns are")
        if len(names) != 1 or names[0] in PREDICATE_COLUMNS:
            return {names[-1]} if names else set()
        name = names[0]  # current_date is a name the binder turns into a function call
        if name in _changing_functions() or name in _CLOCK_WORDS:
            raise _refused(predicate, f"reads {name}, {_CHANGES}")
        return set()
    if kind == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if name in _changing_functions():
            raise _refused(predicate, f"calls {name}(), {_CHANGES}")
    return set()


_CHANGES = "whose answer changes from run to run (the same data and flags must drop the same pairs)"
#: SQL's clock words, which the binder turns into the current time (no parentheses).
_CLOCK_WORDS = {"current_date", "current_time", "current_timestamp", "localtime", "localtimestamp"}


@functools.cache
def _changing_functions() -> frozenset[str]:
    """DuckDB's functions with no deterministic form (every overload volatile, or fixed only
    within one query): random, uuid, now, setseed ... (``date_part`` of a DATE is not one)."""
    with sandbox() as con:
        rows = con.execute(
            "SELECT lower(function_name) FROM duckdb_functions() WHERE stability IS NOT NULL "
            "GROUP BY 1 HAVING bool_and(stability <> 'CONSISTENT')"
        ).fetchall()
    return frozenset(name for (name,) in rows)


def _check_is_condition(empty: pl.DataFrame, predicate: str, columns: Sequence[str]) -> None:
    """A predicate must be a condition (BOOLEAN), not a number or text read as true."""
    import duckdb

    table = empty.select(pl.int_range(0, dtype=pl.Int64).alias("_pos"), *columns).to_arrow()
    with sandbox() as con:
        con.register("pairs", table)
        lock_down(con)
        try:
            kind = con.execute(f"DESCRIBE SELECT ({predicate}) AS keep FROM pairs").fetchall()
        except duckdb.Error as exc:
            raise _invalid(predicate, exc) from exc
    dtype = str(kind[0][1]).strip('"') if kind else "?"
    if dtype != "BOOLEAN":
        raise _refused(
            predicate,
            f"is not a condition (it gives {dtype}, not true or false)",
            fix="compare it, e.g. --drop 'margin < 0' or --drop 'chosen = rejected'",
        )


def _refused(predicate: str, why: str, *, fix: str = FIX) -> InputError:
    return InputError(f"--drop predicate {predicate!r} {why}", fix=fix)


def _invalid(predicate: str, exc: Exception) -> InputError:
    return InputError(
        f"invalid --drop predicate {predicate!r}: {duckdb_message(exc)}",
        fix="a DuckDB SQL condition over the columns "
        + ", ".join(PREDICATE_COLUMNS)
        + ", e.g. 'chosen = rejected OR margin < 0'",
    )
