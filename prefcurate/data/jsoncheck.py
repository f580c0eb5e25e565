"""One streaming pass over JSONL for what Polars would merge without a word.

Polars infers a column's type from the first rows; a later line whose field holds another kind
(a string where numbers were, an object where text was) is turned into text or refused without a
line, and of a key written twice in one object it keeps the first value (Python's json keeps the
last). :func:`scan_kinds` has DuckDB's JSON reader stream every line of every file once (C++,
in parallel, never holding the file) and report, for every field of the inferred schema (nested
objects and the elements of lists included), the JSON kinds it takes, and whether any object of
the schema repeats a key. Each row is parsed a fixed number of times (one call per kind of
question, with all the paths of that kind at once), so the pass costs a few reads of the input
whatever its width. The loader (:mod:`prefcurate.data.io`) then reads line by line only when
something was found, to name the file, line and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

#: DuckDB's JSON number types, one kind (an integer and a float are both numbers).
_NUMBER_TYPES = {"BIGINT": "number", "UBIGINT": "number", "DOUBLE": "number", "HUGEINT": "number"}


@dataclass
class Locations:
    """Where to look in each row, as JSONPaths: every field outside lists (``plain``), every
    object outside lists (``objects``, the row ``$`` first), and every list (``lists``)."""

    plain: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=lambda: ["$"])
    lists: list[str] = field(default_factory=list)


def locations(schema: pl.Schema | dict) -> Locations:
    """The :class:`Locations` of ``schema``: nested objects to any depth; a list's elements are
    described by DuckDB's ``json_structure`` of the list, whatever they hold."""
    found = Locations()

    def walk(path: str, dtype: pl.DataType) -> None:
        if isinstance(dtype, pl.Struct):
            if path != "$":
                found.objects.append(path)
            for child in dtype.fields:
                if _quotable(child.name):
                    found.plain.append(f'{path}."{child.name}"')
                    walk(f'{path}."{child.name}"', child.dtype)
        elif isinstance(dtype, pl.List | pl.Array):
            found.lists.append(path)

    walk("$", pl.Struct(dict(schema)))
    return found


def _quotable(name: str) -> bool:
    return '"' not in name and "\\" not in name


def scan_kinds(
    paths: tuple[Path, ...], where: Locations
) -> tuple[dict[str, set[str]], bool] | None:
    """(the JSON kinds each field takes, by JSONPath, list elements as ``path[*]...``; whether an
    object repeats a key), or None when DuckDB cannot read the files (the caller then checks
    every line itself)."""
    import duckdb

    from prefcurate.base.duck import connect

    sql = _scan_sql([str(p) for p in paths], where)
    try:
        con = connect()
        try:
            con.execute("SET enable_progress_bar = false")
            row = con.execute(sql).fetchone()
        finally:
            con.close()
    except duckdb.Error:
        return None
    return _decode(row, where), any(bool(x) for x in row[1::2])


_REPEATS = "lambda x: len(x) <> len(list_distinct(x))"


def _scan_sql(files: list[str], where: Locations) -> str:
    """One SELECT. Per row: every plain field's type in one call, every object's keys in one,
    every list extracted in one; then each list (not the whole row) for its elements' structure
    and keys. Aggregates: the distinct combinations of types, of each list's element structure,
    and whether any object repeats a key."""
    inner = [
        f"json_type(json, {_list(where.plain)}) AS t" if where.plain else "[]::VARCHAR[] AS t",
        f"json_keys(json, {_list(where.objects)}) AS k",
    ]
    if where.lists:
        inner.append(f"json_extract(json, {_list(where.lists)}) AS l")
    outer = [
        "list(DISTINCT t)",
        f"bool_or(coalesce(list_bool_or(list_transform(k, {_REPEATS})), false))",
    ]
    for i in range(1, len(where.lists) + 1):
        outer.append(f"list(DISTINCT json_structure(l[{i}]))")
        keys = f"json_keys(l[{i}], '$[*]')"
        outer.append(f"bool_or(coalesce(list_bool_or(list_transform({keys}, {_REPEATS})), false))")
    return (
        f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM read_ndjson_objects("
        f"{_list(files)}, compression = 'auto', maximum_object_size = 2147483647))"
    )


def _decode(row: tuple, where: Locations) -> dict[str, set[str]]:
    """Kinds by path from the aggregates: plain types, then each list's element structures."""
    kinds: dict[str, set[str]] = {path: set() for path in where.plain}
    for combo in row[0] or []:
        for path, kind in zip(where.plain, combo or [], strict=False):
            _add(kinds[path], kind)
    for i, path in enumerate(where.lists):
        for structure in row[2 + 2 * i] or []:
            if structure is not None:
                _walk_structure(json.loads(structure), path, kinds)
    return kinds


def _walk_structure(node: object, path: str, kinds: dict[str, set[str]]) -> None:
    """Kinds of a ``json_structure``: "JSON" marks values of several kinds in one row."""
    bucket = kinds.setdefault(path, set())
    if isinstance(node, dict):
        bucket.add("OBJECT")
        for key, child in node.items():
            _walk_structure(child, f'{path}."{key}"', kinds)
    elif isinstance(node, list):
        bucket.add("ARRAY")
        for child in node:
            _walk_structure(child, f"{path}[*]", kinds)
    elif node == "JSON":
        bucket.update(("mixed", "kinds"))
    else:
        _add(bucket, str(node))


def _add(kinds: set[str], kind: str | None) -> None:
    if kind and kind != "NULL":
        kinds.add(_NUMBER_TYPES.get(kind, kind))


def _list(items: list[str]) -> str:
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"
