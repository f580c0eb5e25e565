"""The embedded catalog of runs: one DuckDB file that remembers every analyze, route and train.

Where it lives: ``--catalog PATH``, else the ``PREFCURATE_CATALOG`` environment variable, else
``.prefcurate/catalog.duckdb`` under the working directory (``PREFCURATE_CATALOG=off`` turns
recording off). Tables (docs/catalog.md): ``meta`` (schema version), ``runs`` (one row per run:
kind, times, status, command, params/figures/outputs as JSON), ``inputs`` (each run's data files
with their content hash) and ``metrics`` (per-step numbers of training runs).

DuckDB lets one process write a database file at a time, so every write is a short transaction on
a connection that is closed straight after; a process that finds the file locked retries with
backoff for up to ``PREFCURATE_CATALOG_TIMEOUT`` seconds (default 30) and then gives up with one
clear line. Example::

    >>> from prefcurate.catalog.store import record_run, list_runs
    >>> run_id = record_run("route", params={"threshold": 0.5})  # doctest: +SKIP
    >>> list_runs(limit=1)[0]["run_id"] == run_id                # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from prefcurate.base import duck
from prefcurate.base.errors import InputError, one_line
from prefcurate.base.log import get_logger
from prefcurate.data.sources import content_hash

ENV = "PREFCURATE_CATALOG"
TIMEOUT_ENV = "PREFCURATE_CATALOG_TIMEOUT"
DEFAULT_PATH = Path(".prefcurate") / "catalog.duckdb"
DEFAULT_TIMEOUT_S = 30.0
DISABLED = ("off", "none", "0", "false")

#: Version of the tables below; :func:`_migrate` brings an older file up to it.
SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            status VARCHAR NOT NULL,
            command VARCHAR,
            summary VARCHAR,
            cwd VARCHAR,
            params JSON,
            figures JSON,
            outputs JSON,
            prefcurate_version VARCHAR
        )""",
        """CREATE TABLE inputs (
            run_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            resolved VARCHAR,
            sha256 VARCHAR,
            bytes BIGINT,
            files INTEGER,
            rows BIGINT
        )""",
        """CREATE TABLE metrics (
            run_id VARCHAR NOT NULL,
            step BIGINT,
            name VARCHAR NOT NULL,
            value DOUBLE
        )""",
    ),
}


# --------------------------------------------------------------------------------------------------
# location and connections


class CorruptCatalogError(InputError):
    """The catalog file is damaged (truncated, overwritten): not a lock, not a permission."""


def catalog_path(path: str | Path | None = None) -> Path | None:
    """The catalog file: ``path``, else $PREFCURATE_CATALOG, else ./.prefcurate/catalog.duckdb.

    ``None`` when recording is turned off (``off``/``none`` as the path or variable).
    """
    value = str(path) if path is not None else os.environ.get(ENV, "")
    if value.strip().lower() in DISABLED:
        return None
    chosen = Path(value).expanduser() if value.strip() else DEFAULT_PATH
    return chosen if chosen.is_absolute() else Path.cwd() / chosen


@contextlib.contextmanager
def connect(
    path: str | Path | None = None, *, read_only: bool = False, timeout: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection to the catalog, closed on exit; retries while another writes.

    A writable connection creates the file and brings its tables up to :data:`SCHEMA_VERSION`.
    A read-only one needs the file to exist.
    """
    where = catalog_path(path)
    if where is None:
        raise InputError("the catalog is turned off", fix=f"unset {ENV} or pass --catalog PATH")
    if read_only and not where.exists():
        raise InputError(
            "no catalog yet",
            where=where,
            fix="run 'prefcurate analyze' or 'prefcurate route' first",
        )
    if not read_only:
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create the catalog folder: {one_line(exc)}",
                where=where.parent,
                fix="pass --catalog PATH or set PREFCURATE_CATALOG",
            ) from exc
    _refuse_foreign(where)
    limit = _timeout(timeout)
    deadline = time.monotonic() + limit
    with _flock(where, exclusive=not read_only, deadline=deadline, limit=limit):
        con = _with_retry(
            lambda: duck.connect(str(where), read_only=read_only), where, deadline, limit
        )
        try:
            if read_only:
                _check_version(con, where)
            else:
                _migrate(con, where)
            yield con
        except duckdb.Error as exc:  # a damaged file may fail on any statement, not only at open
            raise _translate(exc, where, limit) from exc
        finally:
            con.close()


def attach(
    con: duckdb.DuckDBPyConnection,
    path: str | Path | None = None,
    *,
    alias: str = "catalog",
    timeout: float | None = None,
) -> bool:
    """ATTACH the catalog read-only to ``con`` (retrying on the lock); False if it doesn't exist."""
    where = catalog_path(path)
    if where is None or not where.exists():
        return False
    quoted = str(where).replace("'", "''")
    limit = _timeout(timeout)
    deadline = time.monotonic() + limit
    with _flock(where, exclusive=False, deadline=deadline, limit=limit):
        _with_retry(
            lambda: con.execute(f"ATTACH '{quoted}' AS {alias} (READ_ONLY)"), where, deadline, limit
        )
    return True


@contextlib.contextmanager
def _flock(where: Path, *, exclusive: bool, deadline: float, limit: float) -> Iterator[None]:
    """Serialise prefcurate processes on a sidecar ``<catalog>.lock`` file (POSIX ``flock``).

    Writers hold it exclusively for their whole short transaction, readers share it while they
    open the file, so two prefcurate processes never race on DuckDB's own lock, not even while
    the first creates the file. Where there is no ``fcntl`` or the lock file can't be made (a
    read-only folder) this is skipped; DuckDB's lock, retried, still keeps writes safe.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    lock_path = where.with_name(where.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        yield
        return
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise InputError(
                        f"the catalog stayed locked by another prefcurate process for {limit:g} s",
                        where=where,
                        fix=f"retry when it finishes, raise {TIMEOUT_ENV}, or pass --catalog PATH",
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.6, 0.25)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _with_retry(call, where: Path, deadline: float, limit: float):
    """Call ``call`` until it stops failing on DuckDB's file lock, until ``deadline``."""
    delay = 0.02
    while True:
        try:
            return call()
        except duckdb.Error as exc:
            if _is_locked(exc) and time.monotonic() < deadline:
                time.sleep(
                    min(delay, max(0.0, deadline - time.monotonic())) * random.uniform(1, 1.5)
                )
                delay = min(delay * 1.6, 0.5)
                continue
            raise _translate(exc, where, limit) from exc


def _translate(exc: duckdb.Error, where: Path, limit: float) -> InputError:
    """One line for a DuckDB failure on the catalog: locked, damaged, or unusable."""
    if _is_locked(exc):
        return InputError(
            f"the catalog stayed locked by another process for {limit:g} s",
            where=where,
            fix=f"retry when it finishes, raise {TIMEOUT_ENV}, or pass --catalog PATH",
        )
    if _is_corrupt(exc):
        return CorruptCatalogError(
            f"the catalog is unreadable: {one_line(exc, 200)}",
            where=where,
            fix=f"move it aside (mv {where} {where}.broken); the next analyze, route or "
            "train starts a new one; or pass --catalog PATH",
        )
    return InputError(
        f"cannot use the catalog: {one_line(exc, 200)}",
        where=where,
        fix="pass --catalog PATH to use another file",
    )


def _timeout(timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    return env_timeout()


def env_timeout() -> float:
    """``PREFCURATE_CATALOG_TIMEOUT`` in seconds (default 30); anything but a finite number ≥ 0
    is an :class:`InputError` (``nan`` would otherwise wait forever)."""
    import math

    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise InputError(
            f"{TIMEOUT_ENV} must be a number of seconds (0 or more), got {text!r}",
            fix=f"e.g. {TIMEOUT_ENV}=30, or unset it",
        )
    return value


#: Suffixes of data files: a new --catalog named like this is a mistake, not a database.
_DATA_SUFFIXES = (".csv", ".tsv", ".parquet", ".json", ".jsonl", ".arrow", ".txt", ".gz", ".zst")
#: The first bytes of files a --catalog may be mistaken for, and what they are.
_MAGIC = (
    (b"SQLite format 3\x00", "a SQLite database"),
    (b"PAR1", "a Parquet file"),
    (b"ARROW1", "an Arrow file"),
    (b"\x1f\x8b", "a gzip file"),
    (b"PK\x03\x04", "a zip file"),
)
_FIX = "pass --catalog PATH.duckdb for a catalog of its own, or --catalog off to record nothing"


def check_catalog(path: str | Path | None = None) -> Path | None:
    """Check the catalog settings before a command does any work; return the file (or None).

    A file is judged by its content, never by its name: an existing file must be a DuckDB
    database (or an empty or damaged one, moved aside when a run is recorded) that is a
    prefcurate catalog or holds no table; anything else (a SQLite database, a text file, a
    DuckDB database of the user's with tables of its own) is an :class:`InputError` (exit 2) and
    is never opened by DuckDB, written or moved. A new file named like data (.csv, .parquet ...)
    is refused too, and so is an invalid ``PREFCURATE_CATALOG_TIMEOUT``.
    """
    where = catalog_path(path)
    if where is None:
        return None
    env_timeout()
    if not where.exists() and not where.is_symlink():
        if where.suffix.lower() in _DATA_SUFFIXES:
            raise InputError(
                f"the catalog must be a DuckDB file, not a {where.suffix} file",
                where=where,
                fix=_FIX,
            )
        return where
    _refuse_foreign(where)
    _refuse_other_database(where)
    return where


def _refuse_foreign(where: Path) -> None:
    """Refuse a --catalog that exists and is not a DuckDB file (nor empty): judged by content."""
    if not where.exists() and not where.is_symlink():
        return
    if where.is_dir():
        raise InputError("the catalog is a directory", where=where, fix=_FIX)
    if not where.is_file():
        raise InputError("the catalog is not a regular file", where=where, fix=_FIX)
    what = _content(where)
    if what is not None:
        raise InputError(f"this file is not a DuckDB database ({what})", where=where, fix=_FIX)


def _content(path: Path) -> str | None:
    """None for a DuckDB database (or an empty or unreadable file), else what the file is."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError:
        return None  # unreadable: reported when it is opened
    if not head or head[8:12] == b"DUCK":
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    return "it starts with text" if head[:16].isascii() else "its first bytes are not DuckDB's"


def _refuse_other_database(where: Path) -> None:
    """A DuckDB database with tables but no prefcurate schema is the user's, not a catalog."""
    try:
        con = duck.connect(str(where), read_only=True)
    except duckdb.Error:
        return  # damaged, or locked by a writer: decided when a run is recorded
    try:
        tables = [t for (t,) in con.execute(_TABLES).fetchall()]
        version = _version(con) if "meta" in tables else 0
    except duckdb.Error:
        return
    finally:
        con.close()
    if tables and version == 0:
        shown = ", ".join(tables[:5]) + (" ..." if len(tables) > 5 else "")
        raise InputError(
            f"this DuckDB database is not a prefcurate catalog (its tables: {shown})",
            where=where,
            fix=_FIX,
        )


#: The tables and views of the database a connection opened (a user's database has some).
_TABLES = (
    "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
    "UNION SELECT view_name FROM duckdb_views() "
    "WHERE database_name = current_database() AND NOT internal ORDER BY 1"
)


def _is_locked(exc: BaseException) -> bool:
    """DuckDB's file lock is held by another process ("Could not set lock", "Conflicting lock").

    The word, not the letters: a damaged file's "checksum ... in block at location N" is no lock.
    """
    return re.search(r"\block(ed)?\b", str(exc), re.IGNORECASE) is not None


def _is_corrupt(exc: BaseException) -> bool:
    """A DuckDB error that says the file is damaged, not that it is locked or busy."""
    text = str(exc).lower()
    if _is_locked(exc):
        return False
    return any(
        phrase in text
        for phrase in (
            "not a valid duckdb database",
            "could not read enough bytes",
            "corrupt",
            "checksum",
            "serialization error",
            "failed to read",
            "invalid",
        )
    )


def move_aside(where: Path) -> Path:
    """Rename a broken catalog (and its WAL) to ``NAME.broken-YYYYmmdd-HHMMSS``; return it."""
    stamp = _utcnow().strftime("%Y%m%d-%H%M%S")
    target = where.with_name(f"{where.name}.broken-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = where.with_name(f"{where.name}.broken-{stamp}-{n}")
    os.replace(where, target)
    wal = where.with_name(where.name + ".wal")
    if wal.exists():
        os.replace(wal, target.with_name(target.name + ".wal"))
    return target


def _version(con: duckdb.DuckDBPyConnection) -> int:
    (has_meta,) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'meta' AND schema_name = 'main'"
        " AND database_name = current_database()"
    ).fetchall()[0]
    if not has_meta:
        return 0
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else 0


def _check_version(con: duckdb.DuckDBPyConnection, where: Path) -> int:
    version = _version(con)
    if version > SCHEMA_VERSION:
        raise InputError(
            f"the catalog has schema version {version}; this prefcurate reads up to "
            f"{SCHEMA_VERSION}",
            where=where,
            fix="upgrade prefcurate, or pass --catalog PATH for a separate catalog",
        )
    return version


def _migrate(con: duckdb.DuckDBPyConnection, where: Path) -> None:
    version = _check_version(con, where)
    if version == SCHEMA_VERSION:
        return
    if version == 0 and con.execute(_TABLES).fetchall():
        raise InputError("this DuckDB database is not a prefcurate catalog", where=where, fix=_FIX)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                con.execute(statement)
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------------------------------
# recording


def describe_input(
    path: str, files: Sequence[str | Path], *, rows: int | None = None
) -> dict[str, Any]:
    """An ``inputs`` record for data at ``path`` (as the user typed it) made of ``files``."""
    sha256, size = content_hash(files)
    return {"path": path, "sha256": sha256, "bytes": size, "files": len(files), "rows": rows}


def new_run_id(kind: str, when: datetime | None = None) -> str:
    """A sortable, unique id: ``<kind>-YYYYMMDD-HHMMSS-<6 hex>`` (UTC)."""
    when = when or _utcnow()
    return f"{kind}-{when:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def record_run(
    kind: str,
    *,
    inputs: Sequence[Mapping[str, Any]] = (),
    params: Mapping[str, Any] | None = None,
    figures: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    command: str | None = None,
    summary: str | None = None,
    status: str = "ok",
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    metrics: Iterable[Mapping[str, Any]] = (),
    run_id: str | None = None,
    path: str | Path | None = None,
    timeout: float | None = None,
    on_recover: Callable[[str], None] | None = None,
) -> str:
    """Record one run (and its inputs and metrics) in one transaction; return its ``run_id``.

    ``kind`` is the command ('analyze', 'route', 'train', ...). ``inputs`` are dicts with
    ``path`` (as typed), ``sha256``, ``bytes``, ``files``, ``rows`` (see :func:`describe_input`).
    ``params``, ``figures`` and ``outputs`` are stored as JSON; ``metrics`` rows are
    ``{"step", "name", "value"}`` (training curves). Times are UTC. A damaged catalog file is
    moved aside (:func:`move_aside`), ``on_recover`` (default: a logged warning) is told where,
    and the run is recorded in a new one: a broken catalog costs a record's history, never a run.
    """
    finished_at = finished_at or _utcnow()
    started_at = started_at or finished_at
    run_id = run_id or new_run_id(kind, started_at)
    run_row = [
        run_id,
        kind,
        _naive_utc(started_at),
        _naive_utc(finished_at),
        status,
        command,
        summary,
        str(Path.cwd()),
        _json(params or {}),
        _json(figures or {}),
        _json(outputs or {}),
        _prefcurate_version(),
    ]
    input_rows, metric_rows = _input_rows(run_id, inputs), _metric_rows(run_id, metrics)
    try:
        _insert(path, timeout, run_row, input_rows, metric_rows)
    except CorruptCatalogError as exc:
        where = catalog_path(path)
        assert where is not None
        moved = move_aside(where)
        (on_recover or _warn)(
            f"the catalog {where} was unreadable ({exc.what.split(': ', 1)[-1]}); moved it to "
            f"{moved} and "
            "started a new one"
        )
        _insert(path, timeout, run_row, input_rows, metric_rows)
    return run_id


def _prefcurate_version() -> str:
    from prefcurate import __version__

    return __version__


def _input_rows(run_id: str, inputs: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [
            run_id,
            str(item["path"]),
            str(Path(item["path"]).resolve()) if item.get("path") else None,
            item.get("sha256"),
            item.get("bytes"),
            item.get("files"),
            item.get("rows"),
        ]
        for item in inputs
    ]


def _metric_rows(run_id: str, metrics: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [
            run_id,
            m.get("step"),
            str(m["name"]),
            None if m.get("value") is None else float(m["value"]),
        ]
        for m in metrics
    ]


def _warn(message: str) -> None:
    get_logger("catalog").warning(message)


def _insert(path, timeout, run_row, input_rows, metric_rows) -> None:
    """One run's rows in one transaction."""
    with connect(path, timeout=timeout) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", run_row)
            if input_rows:
                con.executemany("INSERT INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?)", input_rows)
            if metric_rows:  # one columnar insert: executemany costs a round trip per row
                table = pa.table(
                    list(zip(*metric_rows, strict=True)),
                    schema=pa.schema(
                        [
                            ("run_id", pa.string()),
                            ("step", pa.int64()),
                            ("name", pa.string()),
                            ("value", pa.float64()),
                        ]
                    ),
                )
                con.register("_metric_rows", table)
                con.execute("INSERT INTO metrics SELECT * FROM _metric_rows")
                con.unregister("_metric_rows")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)  # noqa: UP017 - keeps Python 3.10


def _naive_utc(when: datetime) -> datetime:
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)  # noqa: UP017
    return when


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# reading


def list_runs(
    path: str | Path | None = None, *, limit: int | None = 20, kind: str | None = None
) -> list[dict[str, Any]]:
    """The latest runs first, each a dict with its inputs; [] when there is no catalog yet."""
    where = catalog_path(path)
    if where is None or not where.exists():
        return []
    with connect(where, read_only=True) as con:
        if _version(con) == 0:
            return []
        sql = "SELECT * FROM runs"
        args: list[Any] = []
        if kind:
            sql += " WHERE kind = ?"
            args.append(kind)
        sql += " ORDER BY started_at DESC, run_id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        result = con.execute(sql, args)
        names = [d[0] for d in result.description]
        runs = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
        ids = [r["run_id"] for r in runs]
        inputs: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            result = con.execute(
                "SELECT * FROM inputs WHERE list_contains(?, run_id) ORDER BY run_id, path", [ids]
            )
            in_names = [d[0] for d in result.description]
            for row in result.fetchall():
                item = dict(zip(in_names, row, strict=True))
                inputs[item.pop("run_id")].append(item)
    for run in runs:
        for key in ("params", "figures", "outputs"):
            run[key] = json.loads(run[key]) if run[key] else {}
        run["inputs"] = inputs[run["run_id"]]
    return runs
