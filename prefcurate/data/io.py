"""Read preference data into the canonical frame, and write outputs atomically.

``open_pairs`` finds the files, detects the layout and returns a :class:`PairSource`; its
``scan()`` is a lazy canonical frame and its ``collect()`` materialises it once, validating every
row on the way (a bad score names its line and column) and translating reader failures into one
located line. Example::

    >>> from prefcurate.data.io import open_pairs
    >>> source = open_pairs("../shared/data/ultrafeedback_1k.jsonl")  # doctest: +SKIP
    >>> source.layout, source.detected.score_chosen                     # doctest: +SKIP
    (<Layout.STANDARD: 'standard'>, 'metadata.score_chosen')
    >>> source.collect().select("margin").describe()                    # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import polars_hash as plh

from prefcurate.base.errors import InputError, json_problem, one_line
from prefcurate.data import jsoncheck, layouts
from prefcurate.data.layouts import ISSUE, ROW, Detected
from prefcurate.data.margins import LIMIT, beyond_limit, difficulty_expr, margin_expr
from prefcurate.data.schema import CANONICAL_COLUMNS, Binarize, ColumnMap, Layout
from prefcurate.data.sources import (
    SCHEMA_ROWS,
    RawSource,
    fields_of,
    frame_source,
    open_binary,
    resolve,
)

#: The canonical columns plus the per-pair flag of implicit/conversational histories that differ.
PAIR_COLUMNS: tuple[str, ...] = (*CANONICAL_COLUMNS, "history_mismatch")

_SAMPLE_ROWS = 200


@dataclass(frozen=True)
class PairSource:
    """One DATA argument, understood: its files, format, layout and field mapping."""

    raw: RawSource
    detected: Detected
    binarize: Binarize = Binarize.BEST_VS_WORST
    seed: int = 0

    @property
    def layout(self) -> Layout:
        return self.detected.layout

    @property
    def has_margins(self) -> bool:
        """Whether the data carries scores or a margin column (else margin is null).

        Multi-completion rows always do: their completions are detected by their ratings.
        """
        d = self.detected
        return bool(d.score_chosen or d.margin or d.layout is Layout.MULTI_COMPLETION)

    def describe(self) -> str:
        """One line for the user: format, files and detected layout."""
        files = (
            f"{len(self.raw.paths)} {self.raw.format} files"
            if len(self.raw.paths) > 1
            else (self.raw.format)
        )
        return f"{files}; layout {self.detected.describe()}"

    def scan(self, *, keep_input: bool = False) -> pl.LazyFrame:
        """The canonical frame, lazily, with the internal ``_row`` and ``_issue`` columns.

        ``keep_input=True`` also carries the input's other columns (not for multi-completion data,
        whose rows are not pairs).
        """
        frame = self.scan_rows(keep_input=keep_input).with_columns(difficulty_expr())
        extra = [c for c in frame.collect_schema().names() if c not in (*PAIR_COLUMNS, ROW, ISSUE)]
        return frame.select(*PAIR_COLUMNS, *extra, ROW, ISSUE)

    def scan_rows(self, *, keep_input: bool = False) -> pl.LazyFrame:
        """:meth:`scan` without ``difficulty``: every column is computed from its own row.

        ``difficulty`` is a percentile over the whole margin column, which makes a query hold all
        its columns at once; without it a narrow selection (``pair_id``, ``margin``, lengths)
        streams through the texts without keeping them (``route`` plans this way).
        """
        raw = _guard(self.raw, self.raw.scan)
        schema = _guard(self.raw, raw.collect_schema)
        frame = layouts.canonical(
            raw,
            schema,
            self.detected,
            binarize=self.binarize,
            seed=self.seed,
            keep_input=keep_input and self.layout is not Layout.MULTI_COMPLETION,
        )
        frame = frame.with_columns(margin_expr(self.detected.margin is not None))
        margin = pl.col("margin")  # finite scores whose difference is not, or beyond the limit
        what = "the margin (score_chosen − score_rejected)"
        frame = frame.with_columns(
            pl.coalesce(
                pl.col(ISSUE),
                pl.when(margin.is_infinite())
                .then(pl.lit(f"{what} is infinite"))
                .when(beyond_limit(margin))
                .then(pl.format(f"{what} is {{}}, beyond ±{LIMIT:g}", margin)),
            ).alias(ISSUE)
        )
        pair_id = pair_id_expr(self.layout is Layout.CONVERSATIONAL)
        frame = frame.with_columns(pair_id)
        columns = [c for c in PAIR_COLUMNS if c != "difficulty"]
        extra = [c for c in frame.collect_schema().names() if c not in (*PAIR_COLUMNS, ROW, ISSUE)]
        extra = [c for c in extra if c != "_input_margin"]
        return frame.select(*columns, *extra, ROW, ISSUE)

    def collect(
        self,
        frame: pl.LazyFrame | None = None,
        *,
        keep_row: bool = False,
        streaming: bool = False,
        each_batch: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> pl.DataFrame:
        """Materialise ``frame`` (default: :meth:`scan`) once, validated.

        Raises :class:`InputError` naming the file, line/row and column of the first bad row.
        ``frame`` must keep the ``_issue`` and ``_row`` columns of :meth:`scan`. ``streaming``
        runs Polars' streaming engine: a narrow result of wide rows is then computed in batches.
        ``each_batch`` sees each streamed batch, in order, and returns what of it to keep (route
        writes the texts to disk this way while it keeps the narrow columns).
        """
        frame = self.scan() if frame is None else frame
        engine = "streaming" if streaming else "auto"
        if each_batch is None:
            df = _guard(self.raw, lambda: frame.collect(engine=engine))
        else:
            df = _guard(self.raw, lambda: _collect_each(frame, each_batch))
        if ISSUE in df.columns:
            bad = df.filter(pl.col(ISSUE).is_not_null())
            if bad.height:
                row, issue = int(bad.get_column(ROW)[0]), bad.get_column(ISSUE)[0]
                fix = "fill in or remove the row"
                if "score" in issue or "margin" in issue:
                    fix = "fix or remove the row, or point --score-chosen/--score-rejected at"
                    fix += " the right columns"
                raise InputError(issue, where=locate(self.raw, row), fix=fix)
            df = df.drop(ISSUE)
        if df.height == 0:
            raise InputError(
                "no pairs in the data", where=self.raw.display, fix="pass a file that holds pairs"
            )
        return df if keep_row else df.drop(ROW, strict=False)


def open_pairs(
    data: str | Path | object,
    *,
    columns: ColumnMap | None = None,
    binarize: Binarize | str = Binarize.BEST_VS_WORST,
    seed: int = 0,
    split: str | None = None,
) -> PairSource:
    """Find the files behind ``data`` and detect how they store pairs (nothing is read in full).

    ``data`` is a path (file, directory or glob), or rows already in memory: a Polars DataFrame
    or LazyFrame, a pandas DataFrame or a ``datasets.Dataset``. Example::

        >>> import polars as pl
        >>> rows = pl.DataFrame({"prompt": ["2+2?"], "chosen": ["4"], "rejected": ["5"]})
        >>> open_pairs(rows).collect()["chosen"].to_list()
        ['4']
    """
    raw = frame_source(data) or resolve(data, split=split)
    if raw.format == "jsonl":
        problem = diagnose_jsonl(raw.paths, limit=SCHEMA_ROWS)
        if problem is not None:
            raise problem
    columns = columns or ColumnMap()
    lazy = _guard(raw, raw.scan)
    schema = _guard(raw, lazy.collect_schema)
    if not schema:
        raise InputError("no columns in the data", where=raw.display, fix="pass a file of pairs")
    if raw.format == "jsonl":
        check_jsonl_types(raw, schema)
    sample = _guard(raw, lambda: lazy.head(_SAMPLE_ROWS).collect())
    detected = layouts.detect(schema, columns, where=raw.display, sample=sample)
    return PairSource(raw, detected, Binarize(binarize), seed)


def scan_pairs(data: str | Path | object, **kwargs) -> pl.LazyFrame:
    """:func:`open_pairs` then :meth:`PairSource.scan` (keeps ``_row``/``_issue``)."""
    return open_pairs(data, **kwargs).scan()


def read_pairs(data: str | Path | object, **kwargs) -> pl.DataFrame:
    """The canonical pairs of ``data`` as a validated DataFrame."""
    return open_pairs(data, **kwargs).collect()


def pair_id_expr(conversational: bool) -> pl.Expr:
    """A stable id: XXH3-64 of ``prompt \x1f chosen \x1f rejected`` as 20 decimal digits.

    Conversational fields are hashed as compact JSON of their messages. XXH3 is a specified
    algorithm (polars-hash computes it in Rust, lazily and in parallel), so ids are the same on
    every machine and Polars version, and hashing a million 3 kB pairs takes about a second.
    """

    def text(name: str) -> pl.Expr:
        col = pl.col(name)
        if conversational:
            encoded = col.list.eval(pl.element().struct.json_encode()).list.join(",")
            return pl.format("[{}]", encoded)
        return col.fill_null("")

    joined = plh.concat_str([text("prompt"), text("chosen"), text("rejected")], separator="\x1f")
    return joined.nchash.xxh3_64().cast(pl.String).str.zfill(20).alias("pair_id")


# --------------------------------------------------------------------------------------------------
# locating problems


def _collect_each(
    frame: pl.LazyFrame, each_batch: Callable[[pl.DataFrame], pl.DataFrame]
) -> pl.DataFrame:
    """``frame`` streamed batch by batch through ``each_batch``; what it keeps, concatenated."""
    kept = [each_batch(batch) for batch in frame.collect_batches()]
    return pl.concat(kept) if kept else each_batch(frame.head(0).collect())


def _guard(raw: RawSource, call):
    """Run a Polars call; translate its failure into one located :class:`InputError`."""
    try:
        return call()
    except InputError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError, EOFError, zlib.error) as exc:
        if raw.format == "jsonl":
            located = diagnose_jsonl(raw.paths)
            if located is not None:
                raise located from exc
        for path in raw.paths:
            located = _compression_problem(path)
            if located is not None:
                raise located from exc
        raise InputError(
            f"cannot read {raw.format} data: {one_line(exc, 240)}",
            where=raw.display,
            fix=f"check that it is a complete {raw.format} file",
        ) from exc


def diagnose_jsonl(paths: tuple[Path, ...], *, limit: int | None = None) -> InputError | None:
    """Read JSONL line by line to find the first line a reader would choke on.

    With ``limit`` only the first ``limit`` rows of the first file are checked: that is the window
    Polars infers the schema from, and where it would otherwise merge a list and a string into a
    string without a word. Without ``limit`` (after a fast read failed) every line is checked, and
    a compressed file is first checked for truncation.
    """
    kinds: dict[str, tuple[str, int, Path | None]] = {}
    for path in paths[:1] if limit else paths:
        if limit is None:
            broken = _compression_problem(path)
            if broken is not None:
                return broken
        lineno = rows = 0
        try:
            with open_binary(path) as fh:
                for lineno, line in enumerate(fh, start=1):  # noqa: B007
                    rows += bool(line.strip())
                    problem = _line_problem(line, lineno, kinds, path)
                    if problem:
                        return InputError(
                            problem[0], where=f"{path}, line {lineno}", fix=problem[1]
                        )
                    if limit is not None and rows >= limit:
                        return None
        except Exception:  # noqa: BLE001 - a broken stream is named by the full check
            if limit is not None:
                return None
            raise
        if rows == 0:  # an empty stream may be a truncated one
            return _compression_problem(path) or InputError(
                "the file holds no rows", where=path, fix="pass a file of pairs"
            )
    return None


def check_jsonl_types(raw: RawSource, schema: pl.Schema | dict) -> None:
    """Refuse a field whose JSON type changes, or an object that holds a key twice, anywhere in the
    input (every line of every file, nested fields and list elements included).

    When the input is longer than the window already checked line by line, one streaming pass
    (:func:`prefcurate.data.jsoncheck.scan_kinds`) lists the kinds each field of ``schema``
    takes and whether an object repeats a key; only when it finds something (or cannot read the
    input) is every line read in Python to name the file, line and field.
    """
    if not schema or _head_covers_all(raw.paths):
        return
    found = jsoncheck.scan_kinds(raw.paths, jsoncheck.locations(schema))
    if found is not None and all(len(k) <= 1 for k in found[0].values()) and not found[1]:
        return
    located = diagnose_jsonl(raw.paths)
    if located is not None:
        raise located
    if found is not None and found[1]:  # seen by DuckDB, not named line by line: never silent
        raise InputError(
            "an object holds a key twice", where=raw.display, fix="keep one of the two values"
        )


def _head_covers_all(paths: tuple[Path, ...]) -> bool:
    """Whether one file has no more rows than the head window checked line by line."""
    if len(paths) != 1:
        return False
    rows = 0
    try:
        with open_binary(paths[0]) as fh:
            for line in fh:
                rows += bool(line.strip())
                if rows > SCHEMA_ROWS:
                    return False
    except Exception:  # noqa: BLE001 - a broken stream is named by the reader
        return False
    return True


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join(_sql_str(i) for i in items) + "]"


def _compression_problem(path: Path) -> InputError | None:
    """A truncated or corrupt .gz/.zst file, found by decompressing it to the end."""
    fix = "re-download or re-compress the file"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        elif path.suffix == ".zst":
            import zstandard

            stream = zstandard.ZstdDecompressor().decompressobj()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    stream.decompress(block)
            if not stream.eof:
                return InputError(
                    "truncated zstd file (the stream ends early)", where=path, fix=fix
                )
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        return InputError(
            f"truncated or corrupt gzip file ({one_line(exc, 80)})", where=path, fix=fix
        )
    except Exception as exc:  # noqa: BLE001 - zstandard raises its own error type
        if type(exc).__module__.startswith("zstandard"):
            return InputError(f"corrupt zstd file ({one_line(exc, 80)})", where=path, fix=fix)
        raise
    return None


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """JSON allows a key twice and readers silently keep one value; prefcurate refuses."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _Constant:
    """Stands in for NaN/Infinity, which Python's json accepts but JSON (and Polars) does not."""

    def __init__(self, name: str):
        self.name = name


def _float(text: str) -> float | _Constant:
    """A JSON number; one beyond a 64-bit float (1e400) is marked, as readers reject it."""
    value = float(text)
    if math.isinf(value):
        return _Constant(f"too large for a 64-bit float ({text[:40]})")
    return value


def _find_constant(value: object, path: str = "") -> tuple[str, str] | None:
    if isinstance(value, _Constant):
        return path, value.name
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        found = _find_constant(child, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _line_problem(
    line: bytes,
    lineno: int,
    kinds: dict[str, tuple[str, int, Path | None]],
    path: Path | None = None,
) -> tuple[str, str] | None:
    if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}", "re-encode the file as UTF-8"
    if not text.strip():
        return None
    try:
        row = json.loads(
            text, parse_constant=_Constant, parse_float=_float, object_pairs_hook=_unique_keys
        )
    except _DuplicateKey as exc:
        return f"key {exc.key!r} appears twice in one object", "keep one of the two values"
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {json_problem(exc)}", "fix or remove this line"
    except RecursionError:
        return "JSON nested too deeply", "flatten or remove this line"
    if not isinstance(row, dict):
        return f"expected a JSON object, found {type(row).__name__}", "one object per line"
    constant = _find_constant(row)
    if constant and constant[1].startswith("too large"):
        return (
            f"column {constant[0]!r} is {constant[1]}",
            "write a finite score, or null for a missing one",
        )
    if constant:
        return (
            f"column {constant[0]!r} is {constant[1]}, which is not valid JSON",
            "write null for a missing score, or drop the row",
        )
    for key, value in fields_of(row):
        kind = _json_kind(value)
        if kind == "null":
            continue
        seen = kinds.setdefault(key, (kind, lineno, path))
        if seen[0] != kind and {seen[0], kind} != {"integer", "number"}:
            there = f"line {seen[1]}" if seen[2] == path else f"line {seen[1]} of {seen[2]}"
            return (
                f"column {key!r} holds {_article(kind)} here but {_article(seen[0])} on {there}",
                "make the column's type consistent",
            )
    return None


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def locate(raw: RawSource, row: int) -> str:
    """'file, line N' (JSONL) or 'file, row N' for the 0-based row index over all files."""
    remaining = row
    for path in raw.paths:
        if raw.format == "jsonl":
            with open_binary(path) as fh:
                seen = 0
                for lineno, line in enumerate(fh, start=1):
                    if line.strip():
                        if seen == remaining:
                            return f"{path}, line {lineno}"
                        seen += 1
                remaining -= seen
        else:
            n = _row_count(raw, path)
            if remaining < n:
                return f"{path}, row {remaining + 1}"
            remaining -= n
    return f"{raw.display}, row {row + 1}"


def _row_count(raw: RawSource, path: Path) -> int:
    one = RawSource(str(path), (path,), raw.format)
    return int(one.scan().select(pl.len()).collect().item())
