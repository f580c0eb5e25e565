"""The figures of ``prefcurate analyze``, as plain data: no printing, no plotting.

:func:`analyze` reads a :class:`~prefcurate.data.io.PairSource` once, as one *narrow* frame
(lengths, margin, flags and hashes; never the texts themselves, so a million pairs fit in a few
dozen MB), and hands it to :func:`analyze_frame`, which computes every figure. ``analyze_frame``
also accepts any canonical frame, so ``route`` can report the same figures for the pairs it routed.
Example::

    >>> from prefcurate.data.io import open_pairs
    >>> source = open_pairs("../shared/data/ultrafeedback_1k.jsonl")             # doctest: +SKIP
    >>> report = analyze(source, threshold=0.5)                                   # doctest: +SKIP
    >>> report.margin.ties, report.routing.sft, report.routing.dpo                # doctest: +SKIP
    (111, 111, 889)
    >>> report.to_dict()["routing"]["sft_share"]                                  # doctest: +SKIP
    0.111

Definitions (docs/report.md has every key):

* ties: ``margin == 0``; negative (label inversions): ``margin < 0``;
* a pair is routed to SFT when ``margin < τ`` (strict), else to DPO; pairs without a margin are
  *unrouted*;
* quantiles interpolate linearly between order statistics (NumPy's default);
* duplicate pairs: rows whose prompt, chosen and rejected all equal an earlier row's (so their
  ``pair_id`` repeats); duplicate prompts: rows with a non-empty prompt equal to an earlier row's
  prompt (rows beyond the first of each prompt, duplicate pairs included). Both compare 64-bit
  hashes, so a false match has a chance of about n²/2⁶⁵ (3·10⁻⁸ at a million pairs);
* empty: a field that is null or only whitespace (for conversations: no message has visible text);
* lengths are in characters (for conversations: the sum of the messages' content lengths);
* ``margin_length_corr``: Pearson correlation of margin with ``len(chosen) - len(rejected)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.data import margins as margin_defs
from prefcurate.data.io import pair_id_expr
from prefcurate.data.narrow import (
    NARROW_COLUMNS,
    narrow_exprs,
    routable_pairs,
    unroutable_counts,
    unroutable_reason,
)

if TYPE_CHECKING:
    from prefcurate.data.io import PairSource
    from prefcurate.data.sources import RawSource

#: Version of the report.json layout; bumped only when a key changes meaning or is removed.
REPORT_VERSION = 1

#: Quantiles reported under ``margin`` (key → q).
QUANTILES: dict[str, float] = {"p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95}

#: The at most this many histogram bins (an aligned grid may give fewer).
MAX_BINS = 40

_GRID_STEPS = (1.0, 0.5, 0.25)  # rating scales whose margins sit on a grid
#: A rating grid spans at most this many steps: beyond it (one outlier margin of 1e7 on a 0.5
#: grid) the margins are binned as continuous ones, so nothing drawn or listed per grid value
#: grows with a value instead of with the data.
MAX_GRID_STEPS = 1000


# --------------------------------------------------------------------------------------------------
# the report


@dataclass(frozen=True)
class MarginStats:
    """Distribution of the margin over the pairs that have one (``count``); ``null`` lack one."""

    count: int
    null: int
    min: float | None
    p05: float | None
    p25: float | None
    median: float | None
    p75: float | None
    p95: float | None
    max: float | None
    mean: float | None
    ties: int | None
    negative: int | None


@dataclass(frozen=True)
class Histogram:
    """Margin histogram: ``counts[i]`` pairs have ``edges[i] <= margin < edges[i + 1]``.

    ``grid`` is the rating step the margins sit on (0.5 for UltraFeedback), or None for continuous
    margins; on a grid every bin is centred on grid values, so no margin lies on an edge. ``cut`` is
    the edge separating the SFT bins from the DPO bins when a threshold is given: τ itself for
    continuous margins, the edge just below the first grid value ≥ τ on a grid.
    """

    edges: list[float]
    counts: list[int]
    width: float
    grid: float | None
    cut: float | None

    def label(self, i: int) -> str:
        """A bin's name: its grid value (or range of values), else ``[lo, hi)``."""
        lo, hi = self.edges[i], self.edges[i + 1]
        if self.grid is None:
            return f"[{lo:g}, {hi:g})"
        low, high = round(lo + self.grid / 2, 10), round(hi - self.grid / 2, 10)
        return f"{low:g}" if low == high else f"{low:g}…{high:g}"


@dataclass(frozen=True)
class Routing:
    """What ``margin < threshold → SFT, else DPO`` does to these pairs, as ``route`` does it.

    The pairs route drops whatever their margin (:data:`prefcurate.data.narrow.UNROUTABLE`) are
    left out and counted: ``identical`` (chosen == rejected) and ``empty_chosen`` (an empty
    chosen response). ``unrouted``: pairs without a margin.
    """

    threshold: float
    sft_fraction: float | None
    sft: int
    dpo: int
    sft_share: float | None
    unrouted: int
    identical: int = 0
    empty_chosen: int = 0


@dataclass(frozen=True)
class Lengths:
    """Character lengths of the responses and how the margin relates to their difference."""

    prompt_chars_mean: float | None
    chosen_chars_mean: float | None
    rejected_chars_mean: float | None
    chosen_chars_median: float | None
    rejected_chars_median: float | None
    chosen_longer_share: float | None
    margin_length_corr: float | None


@dataclass(frozen=True)
class Flags:
    """Counts of pairs that are probably broken or deserve a look."""

    identical: int
    empty: int
    empty_prompt: int
    empty_chosen: int
    empty_rejected: int
    duplicate_pairs: int
    duplicate_prompts: int
    history_mismatch: int


@dataclass(frozen=True)
class SourceStats:
    """One sub-dataset's share of the pairs and its margins."""

    source: str | None
    rows: int
    share: float
    margin_mean: float | None
    margin_median: float | None
    ties: int | None
    sft: int | None
    sft_share: float | None


@dataclass(frozen=True)
class Report:
    """Everything ``prefcurate analyze`` shows; :meth:`to_dict` is report.json.

    ``frame`` is the narrow frame the figures came from (margins and lengths per pair, no texts):
    :mod:`prefcurate.reporting.plots` draws from it. It is not part of report.json.
    """

    rows: int
    layout: str
    margin: MarginStats
    lengths: Lengths
    flags: Flags
    histogram: Histogram | None = None
    routing: Routing | None = None
    sources: list[SourceStats] | None = None
    input: dict[str, Any] | None = None
    fields: dict[str, str | None] | None = None
    hint: str | None = None
    frame: pl.DataFrame | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """report.json: JSON-native values only (floats rounded, NaN as null), stable key order."""
        out: dict[str, Any] = {
            "version": REPORT_VERSION,
            "rows": self.rows,
            "layout": self.layout,
            "input": self.input,
            "fields": self.fields,
            "margin": asdict(self.margin),
            "histogram": asdict(self.histogram) if self.histogram else None,
            "routing": asdict(self.routing) if self.routing else None,
            "lengths": asdict(self.lengths),
            "flags": asdict(self.flags),
            "sources": [asdict(s) for s in self.sources] if self.sources is not None else None,
            "hint": self.hint,
        }
        if self.routing is None:
            del out["routing"]  # DESIGN: present when a threshold or fraction is given
        return out

    def summary(self) -> str:
        """One line for the catalog's run list."""
        m = self.margin
        if not m.count:
            return f"{self.rows} pairs ({self.layout}), no margins"
        line = f"{self.rows} pairs ({self.layout}): {m.ties} ties, {m.negative} negative"
        if self.routing is not None:
            r = self.routing
            line += f"; τ = {r.threshold:g}: {r.sft} sft, {r.dpo} dpo"
        return line

    def to_json(self) -> str:
        """report.json's text: :meth:`to_dict` as indented JSON, UTF-8, newline-terminated."""
        import json

        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------------
# entry points


def analyze(
    source: PairSource,
    *,
    threshold: float | None = None,
    sft_fraction: float | None = None,
    max_bins: int = MAX_BINS,
    fingerprint: bool = True,
) -> Report:
    """Read ``source`` (a :class:`~prefcurate.data.io.PairSource`) once and compute its report.

    ``threshold`` (τ) or ``sft_fraction`` (q, from which τ is picked by
    :func:`prefcurate.data.margins.threshold_for_fraction`) adds the routing figures; both need
    margins. ``fingerprint`` adds the input's size and SHA-256 (one extra sequential read of the
    files). Raises :class:`~prefcurate.base.errors.InputError` for bad arguments or bad rows.
    """
    margin_defs.check_routing_args(threshold, sft_fraction)
    # Fail before reading when the data surely has no margins.
    if (threshold is not None or sft_fraction is not None) and not source.has_margins:
        raise margin_defs.no_margin_error(where=source.raw.display)
    lazy = source.scan()
    conversational = isinstance(lazy.collect_schema()["chosen"], pl.List)
    narrow = source.collect(lazy.select(*narrow_exprs(conversational), "_row", "_issue"))
    return report_of_source(
        source,
        narrow,
        threshold=threshold,
        sft_fraction=sft_fraction,
        max_bins=max_bins,
        fingerprint=fingerprint,
    )


def report_of_source(
    source: PairSource,
    narrow: pl.DataFrame,
    *,
    threshold: float | None,
    sft_fraction: float | None,
    max_bins: int = MAX_BINS,
    fingerprint: bool = True,
) -> Report:
    """The report of ``source``'s narrow frame, naming the input and the fields it was read from.

    Shared by :func:`analyze` and the inspect page's single pass, so both say the same; an error
    without a place names the data.
    """
    try:
        report = analyze_frame(
            narrow,
            layout=str(source.layout),
            threshold=threshold,
            sft_fraction=sft_fraction,
            max_bins=max_bins,
        )
    except InputError as exc:
        if exc.where is None:  # name the data in the one line the user sees
            raise InputError(exc.what, where=source.raw.display, fix=exc.fix) from None
        raise
    d = source.detected
    return replace(
        report,
        input=input_info(source.raw, fingerprint=fingerprint),
        fields={
            "prompt": d.prompt,
            "chosen": d.chosen,
            "rejected": d.rejected,
            "score_chosen": d.score_chosen,
            "score_rejected": d.score_rejected,
            "margin": d.margin,
            "source": d.source,
        },
    )


def analyze_frame(
    frame: pl.DataFrame | pl.LazyFrame,
    *,
    layout: str,
    threshold: float | None = None,
    sft_fraction: float | None = None,
    max_bins: int = MAX_BINS,
) -> Report:
    """The report of a canonical frame, or of a narrow one (:data:`NARROW_COLUMNS`).

    A canonical frame (``prompt, chosen, rejected, margin``, optionally ``pair_id``, ``source``
    and ``history_mismatch``; extra columns such as ``route`` are ignored) is narrowed first, and a
    LazyFrame is collected once. Use it on a routed split to report the figures ``analyze`` does::

        >>> analyze_frame(split, layout="standard", threshold=0.5).routing.sft  # doctest: +SKIP
    """
    margin_defs.check_routing_args(threshold, sft_fraction)
    names = frame.collect_schema().names()
    if "chosen_chars" not in names:
        optional = {"source": pl.String, "history_mismatch": pl.Boolean}
        missing = [pl.lit(None, dtype=t).alias(c) for c, t in optional.items() if c not in names]
        frame = frame.with_columns(missing) if missing else frame
        conversational = isinstance(frame.collect_schema()["chosen"], pl.List)
        if "pair_id" not in names:  # a hand-made frame: ids as the loader would compute them
            frame = frame.with_columns(pair_id_expr(conversational))
        frame = frame.select(narrow_exprs(conversational))
    df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    df = df.select(NARROW_COLUMNS)

    margin_values = df.get_column("margin").drop_nulls()
    if (threshold is not None or sft_fraction is not None) and margin_values.len() == 0:
        raise margin_defs.no_margin_error()
    if sft_fraction is not None:
        # over the pairs route would route (route drops the unroutable ones whatever τ)
        routable = routable_pairs(df).get_column("margin")
        threshold = margin_defs.threshold_for_fraction(routable, sft_fraction)

    return Report(
        rows=df.height,
        layout=str(layout),
        margin=margin_stats(df),
        histogram=histogram(margin_values, threshold=threshold, max_bins=max_bins),
        routing=routing(df, threshold, sft_fraction) if threshold is not None else None,
        lengths=length_stats(df),
        flags=flag_counts(df),
        sources=source_stats(df, threshold),
        hint=None if margin_values.len() else NO_MARGIN_HINT,
        frame=df,
    )


NO_MARGIN_HINT = (
    "this data has no margins: if it has ratings under other names pass "
    "--score-chosen/--score-rejected, otherwise compute margins with 'prefcurate score'"
)


# --------------------------------------------------------------------------------------------------
# the figures


def margin_stats(df: pl.DataFrame) -> MarginStats:
    m = pl.col("margin")
    row = df.select(
        m.count().alias("count"),
        m.null_count().alias("null"),
        m.min().alias("min"),
        *[m.quantile(q, interpolation="linear").alias(k) for k, q in QUANTILES.items()],
        m.max().alias("max"),
        m.mean().alias("mean"),
        (m == 0).sum().alias("ties"),
        (m < 0).sum().alias("negative"),
    ).row(0, named=True)
    has = row["count"] > 0
    return MarginStats(
        count=int(row["count"]),
        null=int(row["null"]),
        **{k: _num(row[k]) for k in ("min", *QUANTILES, "max", "mean")},
        ties=int(row["ties"]) if has else None,
        negative=int(row["negative"]) if has else None,
    )


def routing(df: pl.DataFrame, threshold: float, sft_fraction: float | None = None) -> Routing:
    margin_defs.check_threshold(threshold)
    m = pl.col("margin")
    kept = _routable_expr(df)
    row = df.select(
        ((m < threshold) & kept).sum().alias("sft"),
        ((m >= threshold) & kept).sum().alias("dpo"),
        (m.is_null() & kept).sum().alias("unrouted"),
    ).row(0, named=True)
    sft, dpo = int(row["sft"]), int(row["dpo"])
    return Routing(
        threshold=float(threshold),  # exact: τ picked just above a margin must stay above it
        sft_fraction=_num(sft_fraction) if sft_fraction is not None else None,
        sft=sft,
        dpo=dpo,
        sft_share=_ratio(sft, sft + dpo),
        unrouted=int(row["unrouted"]),
        **unroutable_counts(df),
    )


def _routable_expr(df: pl.DataFrame) -> pl.Expr:
    """True for the pairs route may route (:func:`prefcurate.data.narrow.unroutable_reason`)."""
    return unroutable_reason().is_null() if "identical" in df.columns else pl.lit(True)


def length_stats(df: pl.DataFrame) -> Lengths:
    diff = pl.col("chosen_chars") - pl.col("rejected_chars")  # Int64: no unsigned wrap-around
    row = df.select(
        pl.col("prompt_chars").mean().alias("prompt_chars_mean"),
        pl.col("chosen_chars").mean().alias("chosen_chars_mean"),
        pl.col("rejected_chars").mean().alias("rejected_chars_mean"),
        pl.col("chosen_chars").median().alias("chosen_chars_median"),
        pl.col("rejected_chars").median().alias("rejected_chars_median"),
        (diff > 0).mean().alias("chosen_longer_share"),
    ).row(0, named=True)
    return Lengths(
        **{k: _num(v, 2) if k.endswith(("mean", "median")) else _num(v) for k, v in row.items()},
        margin_length_corr=_num(_pearson(df)),
    )


def _pearson(df: pl.DataFrame) -> float | None:
    """Pearson r of margin with the length difference; None when undefined (n < 2, no spread)."""
    pairs = df.filter(pl.col("margin").is_not_null())
    if pairs.height < 2:
        return None
    x = pairs.get_column("margin").to_numpy().astype(np.float64)
    y = (pairs.get_column("chosen_chars") - pairs.get_column("rejected_chars")).to_numpy()
    x, y = x - x.mean(), y.astype(np.float64) - y.mean()
    x, y = x / (np.abs(x).max() or 1.0), y / (np.abs(y).max() or 1.0)  # no overflow at 1e300
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denom if denom > 0 else None


def flag_counts(df: pl.DataFrame) -> Flags:
    prompt_hash = pl.col("prompt_hash")
    row = df.select(
        pl.col("identical").sum().alias("identical"),
        pl.any_horizontal("empty_prompt", "empty_chosen", "empty_rejected").sum().alias("empty"),
        pl.col("empty_prompt").sum().alias("empty_prompt"),
        pl.col("empty_chosen").sum().alias("empty_chosen"),
        pl.col("empty_rejected").sum().alias("empty_rejected"),
        (pl.len() - pl.col("pair_id").n_unique()).alias("duplicate_pairs"),
        (prompt_hash.count() - prompt_hash.drop_nulls().n_unique()).alias("duplicate_prompts"),
        pl.col("history_mismatch").sum().alias("history_mismatch"),
    ).row(0, named=True)
    return Flags(**{k: int(v) for k, v in row.items()})


def source_stats(df: pl.DataFrame, threshold: float | None) -> list[SourceStats] | None:
    """Per-source figures, largest source first; None when no pair names a source."""
    if df.get_column("source").null_count() == df.height:
        return None
    m = pl.col("margin")
    aggs = [
        pl.len().alias("rows"),
        m.mean().alias("margin_mean"),
        m.median().alias("margin_median"),
        m.count().alias("count"),
        (m == 0).sum().alias("ties"),
    ]
    if threshold is not None:  # unroutable pairs are routed nowhere, as in :func:`routing`
        kept = _routable_expr(df)
        aggs += [
            ((m < threshold) & kept).sum().alias("sft"),
            ((m >= threshold) & kept).sum().alias("dpo"),
        ]
    groups = (
        df.group_by("source")
        .agg(aggs)
        .sort(["rows", "source"], descending=[True, False], nulls_last=True)
    )
    out = []
    for g in groups.iter_rows(named=True):
        has = g["count"] > 0
        routed = threshold is not None and has
        out.append(
            SourceStats(
                source=g["source"],
                rows=int(g["rows"]),
                share=_num(g["rows"] / df.height),
                margin_mean=_num(g["margin_mean"]),
                margin_median=_num(g["margin_median"]),
                ties=int(g["ties"]) if has else None,
                sft=int(g["sft"]) if routed else None,
                sft_share=_ratio(g["sft"], g["sft"] + g["dpo"]) if routed else None,
            )
        )
    return out


def histogram(
    margins: pl.Series, *, threshold: float | None = None, max_bins: int = MAX_BINS
) -> Histogram | None:
    """Bin the margins so that no value sits on an edge and τ falls on one.

    Margins on a rating grid (all multiples of 1, 0.5 or 0.25) get bins centred on grid values,
    several grid steps wide when the range would need more than ``max_bins``; the bins are laid so
    the SFT/DPO cut is an edge. Continuous margins get a "nice" width (1, 2 or 5 × 10^k) with edges
    on multiples of it counted from τ (or 0). None when there are no margins.
    """
    values = margins.drop_nulls().to_numpy().astype(np.float64)
    values = values[np.isfinite(values)]  # hand-built frames may hold NaN; the loader refuses it
    if values.size == 0:
        return None
    lo, hi = float(values.min()), float(values.max())
    grid = _grid_step(values)
    cut = None
    if grid is not None:
        steps = round((hi - lo) / grid) + 1
        width = grid * max(1, math.ceil(steps / max_bins))
        if threshold is not None:
            first_dpo = math.ceil(threshold / grid - 1e-9) * grid  # smallest grid value ≥ τ
            anchor = cut = first_dpo - grid / 2
        else:
            anchor = -grid / 2  # a bin starts at 0 (centred on 0 when width == grid)
    else:
        width = _nice_width((hi - lo) / max_bins) if hi > lo else 1.0
        anchor = cut = threshold if threshold is not None else 0.0
        if threshold is None:
            cut = None
    start = anchor + math.floor((lo - anchor) / width) * width
    n = math.floor((hi - start) / width) + 1
    edges = np.array([round(float(e), 10) for e in start + width * np.arange(n + 1)])
    counts = np.histogram(values, bins=edges)[0]  # edges[-1] > hi, so every bin is [a, b)
    return Histogram(
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        width=float(round(width, 10)),
        grid=grid,
        cut=None if cut is None else float(round(cut, 10)),
    )


def _grid_step(values: np.ndarray) -> float | None:
    lo, hi = float(values.min()), float(values.max())
    for step in _GRID_STEPS:
        if (hi - lo) / step > MAX_GRID_STEPS or max(abs(lo), abs(hi)) / step > 2**52:
            return None  # too many steps, or values so large that every float is a multiple
        scaled = values / step
        if np.all(np.abs(scaled - np.round(scaled)) < 1e-9 * np.maximum(1.0, np.abs(scaled))):
            return step
    return None


def _nice_width(raw: float) -> float:
    exp = math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0, 10.0):
        if mult * 10.0**exp >= raw:
            return mult * 10.0**exp
    return 10.0 ** (exp + 1)


# --------------------------------------------------------------------------------------------------
# input, helpers


def input_info(raw: RawSource, *, fingerprint: bool = True) -> dict[str, Any]:
    """Where the data came from: path as typed, format, files, total bytes and SHA-256.

    The digest is :func:`prefcurate.data.sources.content_hash` (one file: its usual sha256).
    """
    info: dict[str, Any] = {
        "path": raw.display,
        "format": raw.format,
        "files": len(raw.paths),
        "bytes": sum(p.stat().st_size for p in raw.paths),
    }
    if fingerprint:
        info["sha256"] = raw.content_hash()[0]
    return info


def _num(value: Any, digits: int = 6) -> float | None:
    """A JSON-native float rounded to ``digits`` decimals; None for null, NaN or infinity."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    value = round(value, digits)
    return 0.0 if value == 0 else value  # no "-0.0" in report.json


def _ratio(part: int, whole: int) -> float | None:
    return _num(part / whole) if whole else None
