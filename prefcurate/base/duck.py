"""Every DuckDB connection prefcurate opens: no extension is ever installed or loaded at run time.

DuckDB fetches and loads a "known" extension by itself when a query needs one (a SQLite file
handed to ``ATTACH`` or ``connect`` makes it download ``sqlite_scanner``). prefcurate reads no
network and runs no code it did not ship, so both switches are off on each connection it makes,
and a file is judged by its content before DuckDB opens it (:mod:`prefcurate.catalog.store`).
The extensions the wheel links in (json, parquet) are part of DuckDB itself and stay usable.
"""

from __future__ import annotations

from typing import Any

#: The settings of every connection: DuckDB neither installs nor loads an extension on its own.
NO_EXTENSIONS = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}


def connect(database: str = ":memory:", *, read_only: bool = False, **config: Any):
    """``duckdb.connect`` with :data:`NO_EXTENSIONS` (and any further ``config`` settings)."""
    import duckdb

    return duckdb.connect(database, read_only=read_only, config={**NO_EXTENSIONS, **config})
