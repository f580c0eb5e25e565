"""The data behind ``prefcurate inspect``: analyze's figures plus seeded samples per margin bin.

:func:`inspect_source` reads a :class:`~prefcurate.data.io.PairSource` **once**, in streaming
batches. Each batch gives up its narrow columns (the ones
:func:`prefcurate.reporting.analyze.analyze` reads: lengths, margin, flags, hashes; never the texts)
and, from its texts, only the rows that can still be among the ``samples_per_bin`` smallest sample
keys of their margin stratum. So the figures are exactly analyze's (the same
:func:`~prefcurate.reporting.analyze.analyze_frame` computes them) and the texts kept stay a few
thousand rows whatever the size of the data. Example::

    >>> from prefcurate.data.io import open_pairs
    >>> source = open_pairs("../shared/data/ultrafeedback_1k.jsonl")           # doctest: +SKIP
    >>> seen = inspect_source(source, threshold=0.5)                            # doctest: +SKIP
    >>> seen.report.routing.sft, seen.thresholds.sft_at(0.5)                    # doctest: +SKIP
    (111, 111)
    >>> seen.samples.filter(pl.col("bin") == 0).get_column("margin").unique()   # doctest: +SKIP

How a sample is drawn: every pair gets a key, XXH3-64 of ``seed`` and its ``pair_id`` (the same on
every machine); a histogram bin's sample is its ``samples_per_bin`` pairs with the smallest keys,
shown in margin order. During the pass the rows are grouped by *stratum*, the exact margin value
(a rating grid has a few dozen) or, when there are more than :data:`MAX_STRATA` distinct values,
the margin rounded down to a power of ten; each stratum keeps its smallest keys. A histogram bin is
a union of whole strata when margins sit on a grid, so its sample is exact; for continuous margins a
stratum that straddles a bin edge can miss a few of that bin's smallest keys (the sample is still
seeded and deterministic, just not strictly the smallest keys near edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import polars_hash as plh

from prefcurate.base.errors import InputError
from prefcurate.data import margins as margin_defs
from prefcurate.data.io import _guard
from prefcurate.data.layouts import ISSUE, ROW
from prefcurate.data.margins import check_routing_args
from prefcurate.data.narrow import (
    NARROW_COLUMNS,
    narrow_exprs,
    routable_pairs,
    unroutable_reason,
)
from prefcurate.reporting.analyze import Histogram, Report, _nice_width, report_of_source

if TYPE_CHECKING:
    from prefcurate.data.io import PairSource

#: Default number of sample pairs per histogram bin (``--samples-per-bin``).
SAMPLES_PER_BIN = 20
#: Characters of each text kept in the page; longer texts end in a note of what was cut.
TEXT_LIMIT = 4000
#: Distinct strata kept during the pass before the margins are grouped more coarsely.
MAX_STRATA = 4096
#: Threshold positions of the τ control for continuous margins (about this many).
TAU_STEPS = 200
#: The most τ positions the control ever has (its table is this long, times the sources).
MAX_TAU_POSITIONS = 2000

_KEY = "_key"
_STRATUM = "_stratum"
_TEXTS = ("prompt", "chosen", "rejected")
_SCORES = ("score_chosen", "score_rejected")


# --------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Thresholds:
    """Every τ the page's control can take, with the exact counts analyze would report there.

    ``sft[i]`` pairs have ``margin < values[i]`` and ``dpo[i]`` have ``margin >= values[i]``;
    ``by_source[name][i]`` is the same SFT count within one source (``rows_by_source`` are that
    source's pairs with a margin).
    """

    values: list[float]
    sft: list[int]
    dpo: list[int]
    by_source: dict[str, list[int]] = field(default_factory=dict)
    rows_by_source: dict[str, int] = field(default_factory=dict)
    initial: float | None = None

    def sft_at(self, tau: float) -> int:
        """SFT count at one of :attr:`values` (KeyError-like ValueError for another τ)."""
        return self.sft[self.values.index(float(tau))]


@dataclass(frozen=True)
class Inspection:
    """Everything the inspect page shows about a dataset (no HTML here).

    ``samples`` holds the sampled pairs (texts cut at :data:`TEXT_LIMIT` characters, conversations
    as ``role: content`` blocks) with their ``bin`` (index into ``report.histogram``; -1 for pairs
    without a margin), ``row`` (0-based row of the input), ratings, lengths and flags.
    """

    report: Report
    samples: pl.DataFrame
    thresholds: Thresholds | None
    ratings: dict[str, Any] | None
    length_by_bin: list[dict[str, Any]] | None
    source_margins: list[dict[str, Any]] | None
    samples_per_bin: int
    seed: int
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# the pass


def inspect_source(
    source: PairSource,
    *,
    threshold: float | None = None,
    sft_fraction: float | None = None,
    samples_per_bin: int = SAMPLES_PER_BIN,
    seed: int = 0,
    fingerprint: bool = True,
) -> Inspection:
    """Read ``source`` once: analyze's report, seeded samples per margin bin, the page's figures.

    ``threshold``/``sft_fraction`` are analyze's (the page's τ control starts there, else at the
    paper's τ = 0.5 when the margins reach it). Raises :class:`~prefcurate.base.errors.InputError`
    for bad arguments or bad rows, naming the row like analyze does.
    """
    check_routing_args(threshold, sft_fraction)
    if samples_per_bin < 1:
        raise InputError(
            f"--samples-per-bin must be at least 1, got {samples_per_bin}",
            fix="pass a positive number of pairs per bin, e.g. --samples-per-bin 20",
        )
    if (threshold is not None or sft_fraction is not None) and not source.has_margins:
        raise margin_defs.no_margin_error(where=source.raw.display)
    lazy = source.scan_rows()
    schema = lazy.collect_schema()
    conversational = isinstance(schema["chosen"], pl.List)
    key = plh.concat_str([pl.lit(str(seed)), pl.col("pair_id")], separator=":")
    query = lazy.select(
        *narrow_exprs(conversational),
        *[pl.col(c).cast(pl.Float64) for c in _SCORES],
        key.nchash.xxh3_64().alias(_KEY),
        *_TEXTS,
        ROW,
        ISSUE,
    )
    narrow_parts: list[pl.DataFrame] = []
    pool = _Reservoir(samples_per_bin, conversational)

    def run() -> None:
        for batch in query.collect_batches(engine="streaming"):
            bad = batch.filter(pl.col(ISSUE).is_not_null())
            if bad.height:  # the same located one-line error as analyze's collect
                source.collect(bad.lazy())
            narrow_parts.append(batch.select(*NARROW_COLUMNS, *_SCORES, _KEY, ROW))
            pool.offer(batch)

    _guard(source.raw, run)
    narrow = pl.concat(narrow_parts, rechunk=True) if narrow_parts else pl.DataFrame()
    if narrow.height == 0:
        raise InputError(
            "no pairs in the data", where=source.raw.display, fix="pass a file that holds pairs"
        )
    report = report_of_source(
        source, narrow, threshold=threshold, sft_fraction=sft_fraction, fingerprint=fingerprint
    )
    return figures(
        report,
        narrow,
        pool.samples(),
        samples_per_bin=samples_per_bin,
        seed=seed,
        description=source.describe(),
    )


def figures(
    report: Report,
    narrow: pl.DataFrame,
    candidates: pl.DataFrame,
    *,
    samples_per_bin: int,
    seed: int,
    description: str = "",
) -> Inspection:
    """The page's figures from the narrow frame, and the final samples from the candidates."""
    hist = report.histogram
    samples = _final_samples(candidates, narrow, hist, samples_per_bin)
    routing = report.routing
    return Inspection(
        report=report,
        samples=samples,
        thresholds=thresholds(narrow, report, initial=routing.threshold if routing else None),
        ratings=rating_grid(narrow),
        length_by_bin=length_by_bin(narrow, hist),
        source_margins=source_margins(narrow),
        samples_per_bin=samples_per_bin,
        seed=seed,
        description=description,
    )


class _Reservoir:
    """Per stratum, the rows with the smallest sample keys seen so far (texts copied, compact)."""

    def __init__(self, k: int, conversational: bool) -> None:
        self.k = k
        self.conversational = conversational
        self.width: float | None = None  # None: one stratum per distinct margin value
        self.kept: pl.DataFrame | None = None

    def _stratum(self) -> pl.Expr:
        m = pl.col("margin")
        return (m if self.width is None else (m / self.width).floor()).alias(_STRATUM)

    def _smallest(self, frame: pl.DataFrame) -> pl.DataFrame:
        rank = pl.col(_KEY).rank("ordinal").over(_STRATUM)
        return frame.with_columns(self._stratum()).filter(rank <= self.k).drop(_STRATUM)

    def offer(self, batch: pl.DataFrame) -> None:
        picked = self._smallest(batch.drop(ISSUE))
        picked = _compact_texts(picked, self.conversational)
        merged = picked if self.kept is None else pl.concat([self.kept, picked])
        self.kept = self._smallest(merged)
        while self.kept.select(self._stratum().n_unique()).item() > MAX_STRATA:
            self._coarsen()

    def _coarsen(self) -> None:
        m = self.kept.get_column("margin").drop_nulls()
        spread = float(m.max() - m.min()) if m.len() else 1.0
        step = 10.0 ** math.ceil(math.log10(max(spread, 1e-12) / MAX_STRATA))
        self.width = step if self.width is None or step > self.width else self.width * 10
        self.kept = self._smallest(self.kept)

    def samples(self) -> pl.DataFrame:
        return self.kept if self.kept is not None else pl.DataFrame()


def _compact_texts(frame: pl.DataFrame, conversational: bool) -> pl.DataFrame:
    """Texts as fresh Python strings cut at :data:`TEXT_LIMIT` (a filtered string column would
    otherwise keep the whole batch's buffers alive), conversations rendered as message blocks."""
    columns = {}
    for name in _TEXTS:
        values = frame.get_column(name).to_list()
        columns[name] = [_cut(_display(v) if conversational else v) for v in values]
    return frame.with_columns(
        [pl.Series(name, values, dtype=pl.String) for name, values in columns.items()]
    )


def _display(messages: list[dict] | None) -> str | None:
    if messages is None:
        return None
    return "\n\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT]


def bin_index(margins: pl.Expr, hist: Histogram | None) -> pl.Expr:
    """The histogram bin of each margin (-1 without a margin).

    Bin i holds edges[i] ≤ margin < edges[i + 1]; a margin outside the edges falls in the first
    or the last bin.
    """
    if hist is None:
        return pl.lit(-1, dtype=pl.Int32)
    right = pl.lit(pl.Series(hist.edges)).search_sorted(margins, side="right")
    index = (right.cast(pl.Int32) - 1).clip(0, len(hist.counts) - 1)
    return pl.when(margins.is_null()).then(pl.lit(-1, dtype=pl.Int32)).otherwise(index)


def _final_samples(
    candidates: pl.DataFrame, narrow: pl.DataFrame, hist: Histogram | None, k: int
) -> pl.DataFrame:
    if candidates.height == 0:
        return candidates
    frame = candidates.with_columns(bin_index(pl.col("margin"), hist).alias("bin"))
    frame = frame.filter(pl.col(_KEY).rank("ordinal").over("bin") <= k)
    repeated = (
        narrow.filter(pl.col("pair_id").is_in(frame.get_column("pair_id").implode()))
        .group_by("pair_id")
        .len()
        .filter(pl.col("len") > 1)
        .get_column("pair_id")
    )
    return (
        frame.with_columns(
            pl.col("pair_id").is_in(repeated.implode()).alias("duplicate"),
            pl.col(ROW).alias("row"),
        )
        .sort(["bin", "margin", _KEY], nulls_last=True)
        .select(
            "bin",
            "row",
            "pair_id",
            "margin",
            *_SCORES,
            "source",
            *_TEXTS,
            "prompt_chars",
            "chosen_chars",
            "rejected_chars",
            "identical",
            "empty_prompt",
            "empty_chosen",
            "empty_rejected",
            "history_mismatch",
            "duplicate",
            unroutable_reason(),
        )
    )


# --------------------------------------------------------------------------------------------------
# the figures of the page


def thresholds(
    narrow: pl.DataFrame, report: Report, *, initial: float | None = None, max_sources: int = 30
) -> Thresholds | None:
    """The τ positions of the control and, at each, ``margin < τ`` counted like analyze does.

    As in :func:`prefcurate.reporting.analyze.routing`, the pairs route drops whatever their margin
    (chosen == rejected, an empty chosen response:
    :func:`prefcurate.data.narrow.unroutable_reason`) are left out of both counts.
    """
    everything, narrow = narrow, routable_pairs(narrow)
    margins = narrow.get_column("margin").drop_nulls().to_numpy().astype(np.float64)
    if margins.size == 0:
        return None
    ordered = np.sort(margins)
    lo, hi = float(ordered[0]), float(ordered[-1])
    hist = report.histogram
    if hist is not None and hist.grid is not None:
        step = hist.grid
    else:
        step = _nice_width((hi - lo) / TAU_STEPS) if hi > lo else 1.0
    if initial is None and lo < 0.5 <= hi + step:
        initial = 0.5  # the paper's main setting
    grid = tau_positions(ordered, step, initial)
    sft = np.searchsorted(ordered, grid, side="left")  # pairs with margin < τ
    by_source: dict[str, list[int]] = {}
    rows_by_source: dict[str, int] = {}
    own, everyone = (_margins_by_source(frame) for frame in (narrow, everything))
    for s in (report.sources or [])[:max_sources]:
        name = "(none)" if s.source is None else s.source
        part = np.sort(own.get(s.source, np.zeros(0)))
        by_source[name] = np.searchsorted(part, grid, side="left").astype(int).tolist()
        rows_by_source[name] = int(everyone.get(s.source, np.zeros(0)).size)
    return Thresholds(
        values=[float(v) for v in grid],
        sft=sft.astype(int).tolist(),
        dpo=(ordered.size - sft).astype(int).tolist(),
        by_source=by_source,
        rows_by_source=rows_by_source,
        initial=None if initial is None else float(initial),
    )


def tau_positions(ordered: np.ndarray, step: float, initial: float | None) -> np.ndarray:
    """The τ positions of the page's control: multiples of ``step`` from below the smallest
    margin to above the largest, at most :data:`MAX_TAU_POSITIONS` of them whatever the values.

    When the multiples between the margins are more than that (a few pairs far from the rest),
    only those where the SFT count changes are kept (the multiple just above each distinct
    margin, and the first one), evenly thinned by rank if they are still too many.
    """
    lo, hi = float(ordered[0]), float(ordered[-1])
    first, last = math.floor(lo / step), math.ceil(hi / step) + 1
    if last - first < MAX_TAU_POSITIONS:
        values = {round(i * step, 10) for i in range(first, last + 1)}
    else:
        above = np.floor(np.unique(ordered) / step) * step + step
        values = {round(float(v), 10) for v in (first * step, *above)}
        if len(values) > MAX_TAU_POSITIONS:
            kept = sorted(values)
            picks = np.linspace(0, len(kept) - 1, MAX_TAU_POSITIONS).round().astype(int)
            values = {kept[i] for i in picks}
    if initial is not None:
        values.add(float(initial))
    return np.array(sorted(values), dtype=np.float64)


def _margins_by_source(narrow: pl.DataFrame) -> dict[str | None, np.ndarray]:
    """Each source's non-null margins (one pass over the frame, not one filter per source)."""
    rated = narrow.select("source", "margin").drop_nulls("margin")
    return {
        key[0]: part.get_column("margin").to_numpy().astype(np.float64)
        for key, part in rated.partition_by("source", as_dict=True).items()
    }


def rating_grid(narrow: pl.DataFrame, max_levels: int = 41) -> dict[str, Any] | None:
    """Counts of pairs per (chosen rating, rejected rating); None without ratings.

    Ratings with at most ``max_levels`` distinct values each are counted as they are; others are
    grouped into ``max_levels`` equal-width bins (labelled by their lower edge).
    """
    rated = narrow.filter(
        pl.col("score_chosen").is_not_null() & pl.col("score_rejected").is_not_null()
    )
    if rated.height == 0:
        return None
    both = pl.concat([rated.get_column("score_chosen"), rated.get_column("score_rejected")])
    levels = both.unique().sort()
    if levels.len() <= max_levels:
        axis = [float(v) for v in levels]

        def level(name: str) -> pl.Expr:
            return pl.col(name).replace_strict(axis, list(range(len(axis))), return_dtype=pl.Int32)
    else:
        lo, hi = float(both.min()), float(both.max())
        width = (hi - lo) / max_levels or 1.0
        axis = [lo + i * width for i in range(max_levels)]

        def level(name: str) -> pl.Expr:
            index = ((pl.col(name) - lo) / width).floor().cast(pl.Int32)
            return index.clip(0, max_levels - 1)

    counts = rated.group_by(
        level("score_chosen").alias("c"), level("score_rejected").alias("r")
    ).len()
    z = np.zeros((len(axis), len(axis)), dtype=np.int64)  # z[rejected][chosen]
    for c, r, n in counts.iter_rows():
        z[r, c] = n
    return {"levels": axis, "counts": z.tolist(), "binned": levels.len() > max_levels}


def length_by_bin(narrow: pl.DataFrame, hist: Histogram | None) -> list[dict[str, Any]] | None:
    """Per margin bin: quantiles of ``chosen_chars - rejected_chars`` (a box each) and the mean."""
    if hist is None:
        return None
    diff = (pl.col("chosen_chars") - pl.col("rejected_chars")).cast(pl.Float64)
    stats = (
        narrow.filter(pl.col("margin").is_not_null())
        .with_columns(bin_index(pl.col("margin"), hist).alias("bin"), diff.alias("d"))
        .group_by("bin")
        .agg(
            pl.len().alias("n"),
            *[pl.col("d").quantile(q, "linear").alias(f"q{int(q * 100):02d}") for q in _BOX],
            pl.col("d").mean().alias("mean"),
        )
        .sort("bin")
    )
    return [_row_floats(r) for r in stats.iter_rows(named=True)]


def source_margins(narrow: pl.DataFrame, max_sources: int = 30) -> list[dict[str, Any]] | None:
    """Per source (largest first): quantiles of its margins (a box each) and the mean."""
    if narrow.get_column("source").null_count() == narrow.height:
        return None
    m = pl.col("margin")
    stats = (
        narrow.filter(m.is_not_null())
        .group_by("source")
        .agg(
            pl.len().alias("n"),
            *[m.quantile(q, "linear").alias(f"q{int(q * 100):02d}") for q in _BOX],
            m.mean().alias("mean"),
            (m == 0).sum().alias("ties"),
        )
        .sort(["n", "source"], descending=[True, False], nulls_last=True)
        .head(max_sources)
    )
    return [_row_floats(r) for r in stats.iter_rows(named=True)]


_BOX = (0.05, 0.25, 0.5, 0.75, 0.95)


def _row_floats(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, float):
            out[k] = round(v, 6) if math.isfinite(v) else None
        else:
            out[k] = v
    return out
