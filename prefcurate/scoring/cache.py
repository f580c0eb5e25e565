"""The score cache: each text's model output, keyed by the model's identity and the text's hash.

A *store* is a directory bound to one model identity (weights, tokenizer, kind, text limit,
device and precision: :meth:`ModelIdentity.binding`) by its ``store.json``. It
holds Parquet *parts* of rows ``(item, value, tokens, truncated)``: ``item`` is the hash of the
text (:func:`prefcurate.scoring.scores.item_expr`), ``value`` the model's numbers for it.

* Parts are written whole and renamed into place, every few thousand texts while a run scores, so
  an interrupted run keeps what it finished and a rerun scores only what is missing.
* Each process writes its own parts, so torchrun ranks never contend; rank 0 reads them all.
* Stores live under ``CACHE_DIR/score/<kind>-<key>`` (one per identity, created on first use), or
  in a directory the user names with ``--cache DIR`` (``DIR/<kind>``); a store whose
  ``store.json`` names another identity is refused, never silently mixed.
* Many parts are merged into one at the end of a run (:meth:`ScoreStore.compact`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from prefcurate.base.errors import InputError, one_line
from prefcurate.base.log import get_logger
from prefcurate.scoring.spec import SCORE_VERSION, ModelIdentity, sha256_of

STORE_FORMAT = 1
STORE_JSON = "store.json"
#: Merge a store's parts into one when a run ends with more than this many.
COMPACT_PARTS = 32


# --------------------------------------------------------------------------------------------------
# remembered identities: a rerun whose texts are all cached needs neither torch nor the weights


def memo_key(kind: str, spec: str, request: dict[str, Any]) -> str | None:
    """A key for ``spec``'s identity under ``request`` (device, precision, max_length, ...).

    It covers every file of the model directory by path, size and modification time, this host
    and the GPUs it shows, so a changed file, another machine or ``CUDA_VISIBLE_DEVICES`` gives
    another key. None when ``spec`` is not a directory (nothing to remember).
    """
    path = Path(spec)
    if not path.is_dir():
        return None
    files = []
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = file.stat()
            files.append((str(relative), stat.st_size, stat.st_mtime_ns))
    return sha256_of(
        {
            "score_version": SCORE_VERSION,
            "kind": kind,
            "dir": str(path.resolve()),
            "files": files,
            "request": request,
            "host": socket.gethostname(),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
    )


def recall_identity(root: Path, key: str | None) -> ModelIdentity | None:
    """The identity remembered under ``key`` in ``root``, or None."""
    if key is None:
        return None
    try:
        return ModelIdentity.from_dict(json.loads((root / f"{key[:32]}.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_identity(root: Path, key: str | None, identity: ModelIdentity) -> None:
    if key is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{key[:32]}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(identity), sort_keys=True), encoding="utf-8")
    os.replace(tmp, root / f"{key[:32]}.json")


@dataclass(frozen=True)
class ScoreStore:
    """One model identity's cached scores; see the module docstring."""

    path: Path
    key: str
    width: int
    dtype: str  # "float64" or "float32"

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        key: str,
        binding: dict[str, Any],
        width: int,
        create: bool,
        flag: str,
        model: str,
    ) -> ScoreStore:
        """Open the store at ``path`` for ``binding``, creating it when ``create`` is set.

        Raises :class:`InputError` when ``path`` holds a store of another identity: its scores
        would silently be another model's.
        """
        path = Path(path)
        meta_path = path / STORE_JSON
        meta = _read_meta(meta_path) if meta_path.is_file() else None
        if meta_path.is_file() and meta is None:  # damaged: its parts are of no known model
            parts = sorted(path.glob("part-*.parquet"))
            _set_aside([meta_path, *parts], path, f"a damaged {STORE_JSON}")
        if meta is not None:
            if meta.get("key") != key:
                raise _mismatch(path, meta, binding, flag, model)
            return cls(path, key, int(meta["width"]), meta["dtype"])
        if path.exists() and any(not p.name.startswith(".") for p in path.iterdir()):
            raise InputError(
                f"not a score cache (no {STORE_JSON})",
                where=path,
                fix="pass an empty or new directory to --cache",
            )
        dtype = "float32" if width > 2 else "float64"  # embeddings in fp32: half the disk
        if create:
            path.mkdir(parents=True, exist_ok=True)
            meta = {
                "format": STORE_FORMAT,
                "key": key,
                "model": model,
                "binding": binding,
                "width": width,
                "dtype": dtype,
            }
            tmp = path / f".{STORE_JSON}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, meta_path)
        return cls(path, key, width, dtype)

    # ------------------------------------------------------------------ reading

    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []

    def lookup(self, items: pl.Series) -> pl.DataFrame:
        """The cached rows of ``items`` (hashes), one per item, in no particular order.

        A damaged part (truncated, overwritten) is a cache miss for its texts, never an error:
        it is set aside (:meth:`_set_aside`) with a warning, and its texts are scored again.
        """
        wanted = pl.DataFrame({"item": items}).lazy()
        for attempt in range(3):  # a concurrent compaction may remove a part under our feet
            parts = self.parts()
            if not parts:
                return self._empty()
            try:
                return _semi_join(parts, wanted)
            except FileNotFoundError:
                time.sleep(0.1)
            except (OSError, pl.exceptions.PolarsError):
                if not self._set_aside_damaged(parts) and attempt == 2:
                    raise
        return self._empty()

    def _set_aside_damaged(self, parts: list[Path]) -> list[Path]:
        """Read each part alone; move the ones that fail into ``.damaged/``; return them."""
        damaged = []
        for part in parts:
            try:
                pl.scan_parquet(part).select(pl.len()).collect()
                pl.read_parquet(part, columns=list(self.schema()))
            except FileNotFoundError:
                continue
            except (OSError, pl.exceptions.PolarsError) as exc:
                damaged.append(part)
                _set_aside([part], self.path, f"a damaged cache part ({one_line(exc, 120)})")
        return damaged

    def _empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema())

    def schema(self) -> dict[str, pl.DataType]:
        inner = pl.Float32 if self.dtype == "float32" else pl.Float64
        return {
            "item": pl.String,
            "value": pl.Array(inner, self.width),
            "tokens": pl.Int32,
            "truncated": pl.Boolean,
        }

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writer(self, *, flush_every: int = 4096, flush_seconds: float = 60.0) -> Iterator[Writer]:
        """A :class:`Writer` whose buffer is flushed as a part every ``flush_every`` texts or
        ``flush_seconds``, and once more when the block ends, also when it ends by an error."""
        writer = Writer(self, flush_every, flush_seconds)
        try:
            yield writer
        finally:
            writer.flush()

    def write_part(self, frame: pl.DataFrame) -> Path:
        """Write ``frame`` as a new part, whole or not at all."""
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        final = self.path / name
        tmp = self.path / f".{name}.tmp"
        frame.write_parquet(tmp, compression="zstd", compression_level=3, statistics=False)
        os.replace(tmp, final)
        return final

    def compact(self) -> None:
        """Merge the parts into one when there are many (run by one process at the end)."""
        parts = self.parts()
        if len(parts) <= COMPACT_PARTS:
            return
        merged = pl.scan_parquet(parts).unique("item", keep="first").collect()
        self.write_part(merged)
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


class Writer:
    """Buffers computed scores and writes them to the store as parts."""

    def __init__(self, store: ScoreStore, flush_every: int, flush_seconds: float):
        self.store = store
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.buffer: list[pl.DataFrame] = []
        self.buffered = 0
        self.last_flush = time.monotonic()
        self.written = 0

    def add(
        self, items: list[str], values: np.ndarray, tokens: np.ndarray, truncated: np.ndarray
    ) -> None:
        schema = self.store.schema()
        inner = np.float32 if self.store.dtype == "float32" else np.float64
        frame = pl.DataFrame(
            {
                "item": pl.Series(items, dtype=pl.String),
                "value": pl.Series(values.astype(inner), dtype=schema["value"]),
                "tokens": pl.Series(tokens, dtype=pl.Int32),
                "truncated": pl.Series(truncated, dtype=pl.Boolean),
            }
        )
        self.buffer.append(frame)
        self.buffered += frame.height
        if (
            self.buffered >= self.flush_every
            or time.monotonic() - self.last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if self.buffered:
            self.store.write_part(pl.concat(self.buffer))
            self.written += self.buffered
        self.buffer, self.buffered, self.last_flush = [], 0, time.monotonic()


def _read_meta(path: Path) -> dict[str, Any] | None:
    """A store's store.json; None when it is damaged (truncated, not JSON, fields missing): its
    parts are then of no known model, and :meth:`ScoreStore.open` sets them aside."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    except OSError as exc:
        raise InputError(
            f"unreadable score cache: {exc}", where=path, fix="delete the cache directory"
        ) from exc
    if isinstance(meta, dict) and meta.get("format") not in (None, STORE_FORMAT):
        raise InputError(
            "score cache of an unknown format", where=path, fix="delete the cache directory"
        )
    well_formed = (
        isinstance(meta, dict)
        and isinstance(meta.get("key"), str)
        and isinstance(meta.get("width"), int)
        and meta.get("dtype") in ("float32", "float64")
    )
    return meta if well_formed else None


def _semi_join(parts: list[Path], wanted: pl.LazyFrame) -> pl.DataFrame:
    return (
        pl.scan_parquet(parts)
        .join(wanted, on="item", how="semi")
        .unique("item", keep="first", maintain_order=False)
        .collect()
    )


def _set_aside(paths: list[Path], store: Path, what: str) -> None:
    """Move damaged files of the cache into ``store/.damaged/`` (never deleted), with a warning."""
    aside = store / ".damaged" / str(time.time_ns())
    aside.mkdir(parents=True, exist_ok=True)
    moved = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside / path.name)
            moved += 1
    if moved:
        get_logger("scoring.cache").warning(
            "%s: %s; moved it to %s and scoring its texts again", paths[0], what, aside
        )


def _mismatch(
    path: Path, meta: dict[str, Any], binding: dict[str, Any], flag: str, model: str
) -> InputError:
    theirs = meta.get("binding") or {}
    differ = [k for k in binding if theirs.get(k) != binding[k]] or ["key"]
    shown = ", ".join(differ)
    fingerprint = str(theirs.get("fingerprint", "?"))[:12]
    return InputError(
        f"this cache holds scores of another model ({meta.get('model')}, "
        f"fingerprint {fingerprint}…), not of {flag} {model} (they differ in {shown})",
        where=path,
        fix="pass another --cache directory, or delete this one to start over",
    )
