"""Gathering a split's rows: the input's texts read back a window of ranks at a time.

The plan's pass keeps only narrow columns; the texts of the routed pairs are read back here (or
kept from that pass, when the input fits the memory budget) and assembled beside the plan's keys
in rank order. They are read back from the :class:`Spill` that pass wrote (an uncompressed Arrow
file), or, without one, from the input itself. Peak memory is one window of text plus the plan's
narrow frame, and the rows come out the same whatever the window size or the source.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from prefcurate.data.io import PAIR_COLUMNS, PairSource
from prefcurate.data.schema import WEIGHT_COLUMN

#: Columns of train.parquet / eval.parquet, in this order.
SPLIT_COLUMNS: tuple[str, ...] = (*PAIR_COLUMNS, "route", "rank", "stage")

#: At most this many bytes of text are held at once while a split is written; a larger input is
#: read once per window of ranks (1M UltraFeedback-like pairs, 2.8 GB of text: three windows).
GATHER_WINDOW_BYTES = 1_000_000_000

#: Columns the split takes from the text pass (the rest come from the narrow plan frame).
WIDE_COLUMNS: tuple[str, ...] = tuple(
    c for c in PAIR_COLUMNS if c not in ("pair_id", "margin", "difficulty")
)


def split_chunks(texts: Texts, keys: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """The split ``keys`` (rank order) as frames of ``size`` rows with the split columns.

    The ranks are cut into windows of at most :data:`GATHER_WINDOW_BYTES` of text (a whole number
    of chunks each); each window's rows are read in one pass over the input and gathered in rank
    order.
    """
    rows = keys.height
    if rows == 0:
        return
    window = _window_rows(keys.get_column("_bytes"), size, texts.window_bytes)
    for first in range(0, rows, window):
        part = keys.slice(first, window)
        wide, local = texts.window(part.get_column("_pos"))
        for start in range(0, part.height, size):
            yield _assemble(wide, local[start : start + size], part.slice(start, size))
        del wide  # before the next window is read


def _window_rows(pair_bytes: pl.Series, chunk: int, window_bytes: int) -> int:
    """Rows per gather window: a whole number of chunks, holding at most about the budget."""
    total = int(pair_bytes.sum())
    windows = max(1, math.ceil(total / max(window_bytes, 1)))
    per_window = math.ceil(pair_bytes.len() / windows)
    return max(chunk, math.ceil(per_window / chunk) * chunk)


class Spill:
    """The input's wide columns, written by the plan's pass to an uncompressed Arrow IPC file.

    Read back a window at a time, each window copies its rows out of a memory map of the file
    (served from the operating system's page cache), where reading the input again decompresses,
    decodes and normalises every text of the input once per window. The pages of each record
    batch leave the process's memory once its rows are copied, so the map adds nothing to the
    peak. The file lives in the temporary directory (``$TMPDIR``) and is removed with the plan.
    """

    def __init__(self, directory: str | Path | None = None):
        handle, name = tempfile.mkstemp(prefix="prefcurate-texts-", suffix=".arrow", dir=directory)
        os.close(handle)
        self.path = Path(name)
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self.count = 0  # rows written
        self._finalizer = weakref.finalize(self, self.path.unlink, missing_ok=True)

    def write(self, batch: pl.DataFrame) -> None:
        """Append ``batch`` (rows in input order, the columns :data:`WIDE_COLUMNS`)."""
        table = batch.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is None:
            self._writer = pa.ipc.new_file(str(self.path), table.schema)
        self._writer.write_table(table)
        self.count += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def remove(self) -> None:
        self._finalizer()

    def rows(self, positions: np.ndarray) -> pl.DataFrame:
        """The spilled rows at ``positions`` (input rows, ascending), in that order."""
        with open(self.path, "rb") as handle:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            table = _take_rows(view, positions)
        finally:
            view.close()
        return pl.from_arrow(table, rechunk=False)


def _take_rows(view: mmap.mmap, positions: np.ndarray) -> pa.Table:
    """Copy the rows at ``positions`` out of the IPC file mapped at ``view``, batch by batch."""
    whole = pa.py_buffer(view)
    reader = pa.ipc.open_file(whole)
    parts, start = [], 0
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        end = start + batch.num_rows
        low, high = np.searchsorted(positions, [start, end])
        if high > low:
            parts.append(batch.take(pa.array(positions[low:high] - start)))
        _release(view, batch, whole.address)
        del batch
        start = end
    return pa.Table.from_batches(parts, schema=reader.schema)


def _release(view: mmap.mmap, batch: pa.RecordBatch, base: int) -> None:
    """Drop the pages of ``batch`` (a zero-copy slice of ``view``) from this process's memory;
    the page cache keeps them. Only that batch's byte range is walked."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    spans = [
        (buf.address - base, buf.address - base + buf.size)
        for column in batch.columns
        for buf in column.buffers()
        if buf is not None and buf.size
    ]
    if not spans:
        return
    first = min(s for s, _ in spans) // mmap.PAGESIZE * mmap.PAGESIZE
    last = max(e for _, e in spans)
    view.madvise(mmap.MADV_DONTNEED, first, last - first)


class Texts:
    """The input's wide columns (texts, scores, source), read a window of positions at a time.

    When the whole input's text fits one window it is read once and kept for every split;
    ``preloaded`` is that whole read when the plan's pass already made it (the one-pass strategy).
    ``spilled``: the :class:`Spill` of the plan's pass, read instead of the input.
    """

    def __init__(
        self,
        source: PairSource,
        *,
        total_bytes: int,
        window_bytes: int | None = None,
        preloaded: pl.DataFrame | None = None,
        spilled: Spill | None = None,
    ):
        self.source = source
        self.lazy = (
            source.scan_rows()
            .with_row_index("_pos")
            .select(pl.col("_pos").cast(pl.Int64), *WIDE_COLUMNS)
        )
        #: at most this many bytes of text per window (a larger input is read window by window)
        self.window_bytes = GATHER_WINDOW_BYTES
        if window_bytes is not None:
            self.window_bytes = min(self.window_bytes, window_bytes)
        #: the whole input's text fits one window: read it once, keep it for every split
        self.whole = preloaded is not None or total_bytes <= self.window_bytes
        self._all: pl.DataFrame | None = preloaded
        self.spilled = spilled

    def window(self, positions: pl.Series) -> tuple[pl.DataFrame, np.ndarray]:
        """The rows at ``positions`` (any order): a frame, and each position's row in it."""
        wanted = positions.to_numpy()
        if self.whole:
            if self._all is None:
                self._all = self._read_all()
            return self._all, wanted
        ordered = np.sort(wanted)
        if self.spilled is not None:
            frame = self.spilled.rows(ordered)
        else:
            frame = self._read(self.lazy.filter(pl.col("_pos").is_in(pl.Series(ordered).implode())))
        return frame, np.searchsorted(ordered, wanted)

    def _read_all(self) -> pl.DataFrame:
        if self.spilled is None:
            return self._read(self.lazy)
        frame = self.spilled.rows(np.arange(self.spilled.count))
        self.spilled.remove()  # every row is in memory now
        self.spilled = None
        return frame

    def empty(self, keys: pl.DataFrame) -> pl.DataFrame:
        wide = self._all.head(0) if self._all is not None else self.lazy.head(0).collect()
        return _assemble(wide, np.zeros(0, dtype=np.int64), keys.head(0))

    def _read(self, lazy: pl.LazyFrame) -> pl.DataFrame:
        """Collect ``lazy`` batch by batch into compact Arrow buffers.

        A filtered Polars string column still points into the buffers of the rows it dropped, so
        a window collected directly would hold the whole input's text; copying each streamed
        batch to Arrow keeps only the window's. (The narrow pass already read and validated the
        same rows, so reader errors are not expected here.)
        """
        import pyarrow as pa

        parts = [
            batch.drop("_pos").to_arrow(compat_level=pl.CompatLevel.oldest())
            for batch in lazy.collect_batches()
        ]
        return pl.from_arrow(pa.concat_tables(parts), rechunk=False)


def _assemble(wide: pl.DataFrame, rows: np.ndarray, keys: pl.DataFrame) -> pl.DataFrame:
    """Rows ``rows`` of ``wide``, in that order, beside ``keys``: the split's columns."""
    index = pl.Series(rows, dtype=pl.Int64)
    gathered = wide.select(pl.col(c).gather(index) for c in WIDE_COLUMNS)
    weight = (WEIGHT_COLUMN,) if WEIGHT_COLUMN in keys.columns else ()  # route --soft T
    return gathered.with_columns(
        keys.get_column(c)
        for c in ("pair_id", "margin", "difficulty", "route", "rank", "stage", *weight)
    ).select(*SPLIT_COLUMNS, *weight)
