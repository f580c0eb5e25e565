"""Routing plans: which pairs are learned as preferences, which as demonstrations, in what order.

MixDPO (arXiv 2602.00954) routes a pair whose margin is below τ (strict) to SFT on the chosen
response and every other pair to DPO, and reads the pairs sorted by margin, largest first, so the
SFT pairs come last. :func:`plan_routes` decides all of it from a
:class:`~prefcurate.data.io.PairSource` and returns a :class:`RoutePlan` (figures plus the routed
keys); :func:`prefcurate.routing.writer.write_route` writes the split files, atomically. The split
is the contract with the trainer: ``route``, ``rank`` and ``stage`` are columns of
``train.parquet`` and everything else it needs is in ``plan.json`` (docs/route.md lists both).
Example::

    >>> from prefcurate.data.io import open_pairs
    >>> from prefcurate.routing.plan import plan_routes
    >>> from prefcurate.routing.writer import write_route
    >>> source = open_pairs("../shared/data/ultrafeedback_1k.jsonl")     # doctest: +SKIP
    >>> plan = plan_routes(source, threshold=0.5)                        # doctest: +SKIP
    >>> plan.counts["dpo"], plan.counts["sft"]                           # doctest: +SKIP
    (889, 111)
    >>> write_route(plan, "out/uf-mixdpo")                               # doctest: +SKIP

Scale: the plan comes from one streaming pass that keeps narrow columns (position, pair_id,
margin, lengths and flags; the loader validates every row on the way); routes, ranks, stages and
the held-out split are decided on that small frame. An input whose one-pass read fits the memory
budget keeps its texts from the same pass (one pass); a larger one is read again by
:mod:`prefcurate.routing.writer`, a window of ranks at a time (two passes, bounded memory). This
module plans; the split writer writes, the same bytes either way.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.base.sizes import default_budget, estimate_input_bytes, fits_one_pass, parse_size
from prefcurate.data.io import PairSource
from prefcurate.data.layouts import ISSUE, ROW
from prefcurate.data.margins import (
    LIMIT,
    check_routing_args,
    difficulty_expr,
    no_margin_error,
    threshold_for_fraction,
)
from prefcurate.data.narrow import EMPTY_CHOSEN, IDENTICAL, UNROUTABLE, unroutable_reason
from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT, WEIGHT_COLUMN
from prefcurate.routing.drop import check_predicates as _check_predicates
from prefcurate.routing.drop import matches, predicate_columns
from prefcurate.routing.texts import WIDE_COLUMNS, Spill, Texts, split_chunks

#: plan.json format version; bump when a key changes meaning.
PLAN_VERSION = 1

#: Difficulty bins the held-out split is stratified over (deciles of ``difficulty``).
EVAL_STRATA = 10

#: Reasons a pair is dropped, as keys of plan.json ``counts.dropped_by_reason``.
NULL_MARGIN = "null_margin"
#: IDENTICAL and EMPTY_CHOSEN (:data:`prefcurate.data.narrow.UNROUTABLE`) are dropped in every
#: mode, whatever τ, by the rule analyze's preview and the inspect page count with.
BELOW_THRESHOLD = "below_threshold"
DROP_PREFIX = "drop: "


class Mode(str, Enum):
    """What happens to a pair; MixDPO and the baselines the paper compares it with."""

    MIXDPO = "mixdpo"  # margin < τ -> sft, else dpo
    DPO = "dpo"  # every pair -> dpo
    FILTER = "filter"  # margin < τ -> dropped, else dpo (the heuristic the paper argues against)
    SFT = "sft"  # every pair -> sft

    def __str__(self) -> str:
        return self.value


class Order(str, Enum):
    """The order the trainer reads the pairs in (``rank``)."""

    CURRICULUM = "curriculum"  # margin descending (easiest first), ties by pair_id
    RANDOM = "random"  # a seeded shuffle
    AS_IS = "as-is"  # input order

    def __str__(self) -> str:
        return self.value


class Placement(str, Enum):
    """Where a curriculum puts the pairs routed to SFT (``route --placement``).

    The learning rate a pair trains at depends on its position: under cosine decay the pairs read
    last train at almost no rate (docs/training.md), so the placement is part of the method.
    """

    LAST = "last"  # the paper's: sorted by margin, so the small-margin (sft) pairs come last
    SPREAD = "spread"  # the sft pairs spread evenly through the curriculum of the dpo pairs

    def __str__(self) -> str:
        return self.value


def default_order(mode: Mode | str) -> Order:
    """The order a mode reads its pairs in when ``--order`` is not given.

    MixDPO and filter read easy → hard (the paper's curriculum); the DPO and SFT baselines read
    a seeded shuffle, the standard baseline the paper compares against (not margin-sorted DPO).
    """
    mode = _enum(Mode, mode, "--mode")
    return Order.CURRICULUM if mode in (Mode.MIXDPO, Mode.FILTER) else Order.RANDOM


@dataclass
class RoutePlan:
    """Everything :func:`write_route` writes, decided but not yet written.

    ``keys`` holds one row per kept pair: ``_pos`` (row of the canonical frame), ``pair_id``,
    ``margin``, ``difficulty``, ``_bytes`` (its text), ``split`` ('train' | 'eval'), ``route``,
    ``rank`` and ``stage``. ``narrow`` has one row per input pair (dropped pairs included), in
    input order: ``_pos`` and the analyze columns
    (:data:`prefcurate.data.narrow.NARROW_COLUMNS`), no texts. ``strategy`` says how the texts
    are read: ``one-pass`` (the one pass fits the memory budget: read once, with the plan's pass),
    else ``two-pass`` (a second pass over ``source``, at once when the texts fit one gather window,
    else window by window as a split is written). The plan outlives its input file unless the texts
    are read window by window.
    """

    input: dict[str, Any]
    layout: str
    mode: Mode
    threshold: float | None
    sft_fraction: float | None
    order: Order
    stages: int
    seed: int
    drop: tuple[str, ...]
    eval_fraction: float | None
    counts: dict[str, Any]
    keys: pl.DataFrame = field(repr=False)
    narrow: pl.DataFrame = field(repr=False)
    source: PairSource = field(repr=False)
    soft: float | None = None  # route --soft T: a weight column, σ((c − margin) / T)
    soft_center: float | None = None  # c: halfway between τ and the largest margin below it
    placement: Placement | None = None  # where the sft pairs sit in a mixdpo curriculum
    preset: str | None = None  # route --preset NAME, recorded in plan.json
    seconds: float = 0.0
    strategy: str = "two-pass"
    memory_budget: int | None = None
    _texts: Texts | None = field(default=None, repr=False)

    def split(self, name: str = "train") -> pl.DataFrame:
        """The split ``name`` ('train' or 'eval') as written: split columns, rows in rank order.

        Materialises the split (fine in a notebook; :func:`write_route` streams it instead).
        """
        keys = self._keys(name)
        chunks = list(split_chunks(self.texts, keys, max(keys.height, 1)))
        return pl.concat(chunks) if chunks else self.texts.empty(keys)

    def keep_texts(self, wide: pl.DataFrame | None, spilled: Spill | None = None) -> None:
        """Hold the texts: the one pass's wide columns, or the two-pass plan's spill file, or
        (when they fit one window) read now, so that a plan of ordinary size outlives its input
        file."""
        if wide is not None:
            self._texts = Texts(self.source, total_bytes=0, preloaded=wide)
            return
        if spilled is not None:
            total = int(self.narrow["_bytes"].sum())
            self._texts = Texts(
                self.source, total_bytes=total, window_bytes=self.memory_budget, spilled=spilled
            )
        if self.texts.whole:
            self.texts.window(self.keys.get_column("_pos").head(0))

    @property
    def texts(self) -> Texts:
        """The second read of the input: its wide columns, a window of positions at a time."""
        if self._texts is None:
            self._texts = Texts(
                self.source,
                total_bytes=int(self.narrow["_bytes"].sum()),
                window_bytes=self.memory_budget,
            )
        return self._texts

    def to_json(self, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """plan.json: DESIGN's core keys plus layout, drop and eval_fraction."""
        return {
            "version": PLAN_VERSION,
            "input": self.input,
            "layout": self.layout,
            "mode": str(self.mode),
            "threshold": self.threshold,
            "sft_fraction": self.sft_fraction,
            "order": str(self.order),
            "stages": self.stages,
            "seed": self.seed,
            "drop": list(self.drop),
            "eval_fraction": self.eval_fraction,
            "soft": self.soft,
            "soft_center": self.soft_center,
            "placement": None if self.placement is None else str(self.placement),
            "preset": self.preset,
            "counts": self.counts,
            "outputs": outputs or {"train": "train.parquet", "eval": None},
        }

    def summary(self) -> str:
        """One line for people: what went where."""
        c = self.counts
        tau = f", τ = {_fmt(self.threshold)}" if self.threshold is not None else ""
        frac = (
            f" (--sft-fraction {_fmt(self.sft_fraction)})" if self.sft_fraction is not None else ""
        )
        held = f", {c['eval']} held out" if self.eval_fraction is not None else ""
        why = ", ".join(f"{n} {reason}" for reason, n in c["dropped_by_reason"].items() if n)
        soft = (
            f" (soft, T = {_fmt(self.soft)}: mean sft weight {c['weight_mean']:.3f})"
            if (self.soft is not None)
            else ""
        )
        preset = f"preset {self.preset}: " if self.preset else ""
        return (
            f"{preset}{c['in']} pairs, {self.mode}{tau}{frac}: {c['dpo']} dpo, {c['sft']} sft"
            f"{soft}, {c['dropped']} dropped{f' ({why})' if why else ''}{held}; order {self.order}"
            + (" (largest margin first)" if self.order is Order.CURRICULUM else "")
            + (" (seeded shuffle)" if self.order is Order.RANDOM else "")
            + (f" in {self.stages} stages" if self.stages > 1 else "")
            + (", sft pairs spread evenly" if self.placement is Placement.SPREAD else "")
        )

    def _keys(self, name: str) -> pl.DataFrame:
        if name not in ("train", "eval"):
            msg = f"split must be 'train' or 'eval', not {name!r}"
            raise ValueError(msg)
        return self.keys.filter(pl.col("split") == name).sort("rank")


# --------------------------------------------------------------------------------------------------
# planning


def plan_routes(
    source: PairSource,
    *,
    mode: Mode | str = Mode.MIXDPO,
    threshold: float | None = None,
    sft_fraction: float | None = None,
    order: Order | str | None = None,
    stages: int | None = None,
    drop: Sequence[str] | str = (),
    eval_fraction: float | None = None,
    seed: int = 0,
    soft: float | None = None,
    placement: Placement | str | None = None,
    preset: str | None = None,
    memory_budget: int | str | None = None,
) -> RoutePlan:
    """Decide each pair's route, rank and stage, and which pairs are held out.

    Parameters
    ----------
    source
        The data, from :func:`prefcurate.data.io.open_pairs`.
    mode
        ``mixdpo`` (margin < τ → sft, else dpo), ``filter`` (margin < τ → dropped), ``dpo`` or
        ``sft`` (every pair to one route; τ is optional there and only recorded).
    threshold, sft_fraction
        τ, or the share of hardest pairs to route (τ is then picked from the margins; ties at the
        cut go together). At most one; ``mixdpo`` and ``filter`` need one.
    order
        ``curriculum`` (margin descending, ties by pair_id), ``random`` (seeded) or ``as-is``.
        Default (None): curriculum for ``mixdpo`` and ``filter``, random for ``dpo`` and ``sft``
        (:func:`default_order`).
    stages
        Cut the curriculum into this many equal contiguous difficulty stages (stage 0 easiest) and
        shuffle within each stage with ``seed``.
    drop
        DuckDB SQL predicates over the canonical columns; a pair matching one is dropped.
    eval_fraction
        Hold out this share of the pairs (0 < f < 1), stratified by difficulty, seeded.
    seed
        Seeds the shuffles and the held-out choice.
    soft
        Soft routing at temperature ``T`` (``mixdpo`` only): a ``weight`` column
        ``w = σ((c − margin) / T)``, the SFT share of each pair's loss (the trainer mixes
        ``w · NLL + (1 − w) · preference``), centred at ``c`` (:func:`soft_center`, halfway
        between τ and the largest margin below it) so that as ``T → 0`` every weight tends to the
        hard route, a margin of exactly τ included. ``T = 0`` gives the hard route's 0/1 weights.
    placement
        ``mixdpo`` in curriculum order only: ``last`` (the default, the paper's: sorted by margin,
        the sft pairs last) or ``spread`` (the dpo pairs in curriculum order with the sft pairs,
        in their own curriculum order, spread evenly between them: the j-th of k among n pairs at
        position ⌊(2j + 1)·n / 2k⌋), so that they train at the run's average learning rate.
    preset
        The name of the preset the flags came from (:mod:`prefcurate.routing.presets`); only
        recorded.
    memory_budget
        Bytes (or a size such as ``"4GB"``) of memory the plan may take for the input; default an
        eighth of the machine's RAM (:func:`prefcurate.base.sizes.default_budget`). An input whose
        one-pass read fits (about 1.4× its estimated in-memory size,
        :func:`prefcurate.base.sizes.fits_one_pass`) is read once, texts included; a larger one is
        read twice (a narrow pass, then the texts in windows of at most the budget and 1 GB), so it
        is never held whole. Same bytes out either way.

    Raises :class:`~prefcurate.base.errors.InputError` for bad arguments or data (before anything is
    written).
    """
    started = time.perf_counter()
    mode = _enum(Mode, mode, "--mode")
    order = default_order(mode) if order is None else _enum(Order, order, "--order")
    drop = (drop,) if isinstance(drop, str) else tuple(drop)
    threshold, sft_fraction = (None if v is None else float(v) for v in (threshold, sft_fraction))
    stages = _check_args(mode, threshold, sft_fraction, order, stages, eval_fraction)
    soft, placement = _check_soft(soft, mode), _check_placement(placement, mode, order, stages)
    wants_margin = _check_margins_needed(source, order, threshold, sft_fraction)
    read = _read_narrow(source, drop, memory_budget)
    narrow, reasons = read.narrow, {}
    keys = _drop_matching(read.scan, narrow, drop, reasons)
    keys = _drop_unusable(keys, narrow, source, reasons)
    keys = _drop_unroutable(keys, source, mode, wants_margin, reasons)
    if sft_fraction is not None:
        threshold = threshold_for_fraction(_kept(keys).get_column("margin"), sft_fraction)
    keys = _hold_out(keys, eval_fraction, seed)
    keys = _drop_below_threshold(keys, source, mode, threshold, reasons)
    keys, center = _route_and_order(keys, mode, threshold, soft, (order, stages, seed, placement))
    plan = RoutePlan(
        input=read.input,
        layout=str(source.layout),
        mode=mode,
        threshold=threshold,
        sft_fraction=sft_fraction,
        order=order,
        stages=stages,
        seed=seed,
        drop=drop,
        eval_fraction=eval_fraction,
        counts=_counts(keys, narrow.height, reasons, threshold),
        keys=keys,
        narrow=narrow,
        source=source,
        soft=soft,
        soft_center=center,
        placement=placement,
        preset=preset,
        strategy="one-pass" if read.one_pass else "two-pass",
        memory_budget=read.budget,
    )
    plan.keep_texts(read.wide, read.spill)
    plan.seconds = time.perf_counter() - started
    return plan


class _Read(NamedTuple):
    scan: pl.LazyFrame
    narrow: pl.DataFrame
    wide: pl.DataFrame | None  # the texts, when they fit the memory budget's one pass
    input: dict[str, Any]  # plan.json's input: path, sha256, rows, bytes, files
    budget: int
    one_pass: bool
    spill: Spill | None  # the two-pass plan's texts, written during the narrow pass


def _read_narrow(
    source: PairSource, drop: tuple[str, ...], memory_budget: int | str | None
) -> _Read:
    """Check the predicates, then one pass over the input (hashed meanwhile), keeping the texts
    when the input fits the memory budget (:func:`prefcurate.base.sizes.fits_one_pass`)."""
    budget = default_budget() if memory_budget is None else parse_size(memory_budget)
    estimate = estimate_input_bytes(source.raw.paths, source.raw.format)
    one_pass = fits_one_pass(estimate, budget)
    scan = source.scan_rows()
    _check_predicates(drop, source.scan().collect_schema())
    digest = _HashThread(source)
    spill = None if one_pass else _spill_for(estimate)
    narrow, wide = _narrow(source, scan, texts=one_pass, spill=spill)
    info = digest.result(rows=narrow.height)
    return _Read(scan, narrow, wide, info, budget, one_pass, spill)


def _route_and_order(
    keys: pl.DataFrame,
    mode: Mode,
    threshold: float | None,
    soft: float | None,
    ordering: tuple[Order, int, int, Placement | None],
) -> tuple[pl.DataFrame, float | None]:
    """Each kept pair's route (and soft weight, with its centre), then its rank and stage within
    its split (``ordering``: order, stages, seed, placement)."""
    keys = keys.with_columns(_route_expr(mode, threshold).alias("route"))
    center = None
    if soft is not None:
        center = soft_center(keys.get_column("margin"), threshold)
        weights = soft_weights(pl.col("margin"), threshold, soft, center=center)
        keys = keys.with_columns(weights.alias(WEIGHT_COLUMN))
    split = pl.col("split")
    ordered = [_order(keys.filter(split == name), *ordering) for name in ("train", "eval")]
    return pl.concat(ordered), center


def _spill_for(estimate: int) -> Spill | None:
    """A spill file for the texts (:class:`~prefcurate.routing.texts.Spill`), when the
    temporary directory has room for them (the input's estimated in-memory size, and half as
    much again to spare); else None, and the texts are read from the input again."""
    import shutil
    import tempfile

    if shutil.disk_usage(tempfile.gettempdir()).free < 1.5 * estimate:
        return None
    return Spill()


def _check_margins_needed(
    source: PairSource, order: Order, threshold: float | None, sft_fraction: float | None
) -> bool:
    """τ, q and the curriculum order all read margins: refuse data without them. Returns
    whether the routing reads margins (τ or q given)."""
    wants_margin = threshold is not None or sft_fraction is not None
    if wants_margin and not source.has_margins:
        raise no_margin_error(source.raw.display)
    if order is Order.CURRICULUM and not source.has_margins:
        raise InputError(
            "curriculum order sorts by margin, and the data has no margins",
            where=source.raw.display,
            fix="pass --order as-is or --order random, or compute margins with 'prefcurate score'",
        )
    return wants_margin


def _kept(keys: pl.DataFrame) -> pl.DataFrame:
    return keys.filter(pl.col("_drop").is_null())


def _drop_matching(
    scan: pl.LazyFrame, narrow: pl.DataFrame, drop: tuple[str, ...], reasons: dict[str, int]
) -> pl.DataFrame:
    """The plan's keys, each pair matching a ``--drop`` predicate marked with the first one."""
    keys = narrow.select("_pos", "pair_id", "margin", "difficulty", "_bytes").with_columns(
        pl.lit(None, dtype=pl.String).alias("_drop")
    )
    for predicate in drop:
        matched = matches(_predicate_frame(scan, narrow, predicate), predicate)
        newly = keys.get_column("_drop").is_null() & keys.get_column("_pos").is_in(
            matched.implode()
        )
        reasons[DROP_PREFIX + predicate] = int(newly.sum())
        keys = _mark(keys, newly, DROP_PREFIX + predicate)
    return keys


def _drop_unusable(
    keys: pl.DataFrame, narrow: pl.DataFrame, source: PairSource, reasons: dict[str, int]
) -> pl.DataFrame:
    """Mark the pairs :func:`~prefcurate.data.narrow.unroutable_reason` drops (chosen = rejected,
    an empty chosen response), in every mode, each counted under its reason."""
    why = narrow.select(unroutable_reason()).to_series()
    for reason in UNROUTABLE:
        hit = keys.get_column("_drop").is_null() & (why == reason)
        reasons[reason] = int(hit.sum())
        keys = _mark(keys, hit, reason)
    if _kept(keys).height == 0:  # before the margin check: its message would mislead
        raise _nothing_left(source, reasons)
    return keys


def _drop_unroutable(
    keys: pl.DataFrame,
    source: PairSource,
    mode: Mode,
    wants_margin: bool,
    reasons: dict[str, int],
) -> pl.DataFrame:
    """Mark the pairs without a margin when the mode routes by margin; refuse an empty plan."""
    if wants_margin and _kept(keys).filter(pl.col("margin").is_not_null()).height == 0:
        raise no_margin_error(source.raw.display)
    if mode in (Mode.MIXDPO, Mode.FILTER):
        nulls = keys.get_column("_drop").is_null() & keys.get_column("margin").is_null()
        reasons[NULL_MARGIN] = int(nulls.sum())
        keys = _mark(keys, nulls, NULL_MARGIN)
    if _kept(keys).height == 0:
        raise _nothing_left(source, reasons)
    return keys


def _drop_below_threshold(
    keys: pl.DataFrame,
    source: PairSource,
    mode: Mode,
    threshold: float | None,
    reasons: dict[str, int],
) -> pl.DataFrame:
    """``filter`` drops the small-margin training pairs; then only the kept pairs remain."""
    if mode is Mode.FILTER:
        below = (
            keys.get_column("_drop").is_null()
            & (keys.get_column("split") == "train")
            & (keys.get_column("margin") < threshold)
        )
        reasons[BELOW_THRESHOLD] = int(below.sum())
        keys = _mark(keys, below, BELOW_THRESHOLD)
    keys = _kept(keys).drop("_drop")
    if keys.filter(pl.col("split") == "train").height == 0:
        raise InputError(
            "no pairs left to train on", where=source.raw.display, fix="check the flags"
        )
    return keys


def _route_expr(mode: Mode, threshold: float | None) -> pl.Expr:
    """Each pair's route: one route for ``dpo`` / ``sft``; else margin < τ → sft, else dpo
    (``filter`` keeps only large margins in train, and labels eval by the same τ rule)."""
    if mode is Mode.DPO:
        return pl.lit(ROUTE_DPO)
    if mode is Mode.SFT:
        return pl.lit(ROUTE_SFT)
    small = pl.col("margin") < threshold if threshold is not None else pl.lit(False)
    return pl.when(small).then(pl.lit(ROUTE_SFT)).otherwise(pl.lit(ROUTE_DPO))


def _narrow(
    source: PairSource, scan: pl.LazyFrame, *, texts: bool = False, spill: Spill | None = None
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """One streaming pass over the input: the plan's frame, validated; with ``texts``, the wide
    columns too (the one-pass strategy); with ``spill``, the wide columns go to that file as
    they stream past (the two-pass strategy reads them back from it); else no text is kept.

    The plan's columns: ``_pos`` (canonical row), the analyze columns (pair_id, margin, lengths,
    flags), ``difficulty`` (computed here, on the small frame) and ``_bytes`` (the pair's text
    bytes, which size the gather windows). The wide frame: :data:`WIDE_COLUMNS`, in input order.
    """
    from prefcurate.data.narrow import narrow_exprs

    conversational = isinstance(scan.collect_schema()["chosen"], pl.List)
    if conversational:
        text_bytes = [
            pl.col(c).list.eval(pl.element().struct.json_encode().str.len_bytes()).list.sum()
            for c in ("prompt", "chosen", "rejected")
        ]
    else:
        text_bytes = [pl.col(c).str.len_bytes() for c in ("prompt", "chosen", "rejected")]
    lazy = scan.with_row_index("_pos").select(
        pl.col("_pos").cast(pl.Int64),
        *narrow_exprs(conversational),
        pl.sum_horizontal(e.fill_null(0).cast(pl.Int64) for e in text_bytes).alias("_bytes"),
        *(pl.col(c).alias(_WIDE_PREFIX + c) for c in (WIDE_COLUMNS if texts or spill else ())),
        ROW,
        ISSUE,
    )
    names = [_WIDE_PREFIX + c for c in WIDE_COLUMNS]
    renamed = dict(zip(names, WIDE_COLUMNS, strict=True))

    def spilled(batch: pl.DataFrame) -> pl.DataFrame:
        spill.write(batch.select(names).rename(renamed))
        return batch.drop(names)

    frame = source.collect(lazy, streaming=True, each_batch=spilled if spill else None)
    if spill is not None:
        spill.close()
    wide = None
    if texts:
        wide = frame.select(names).rename(renamed)
        frame = frame.drop(names)
    return frame.with_columns(difficulty_expr()), wide


_WIDE_PREFIX = "_wide_"


def _predicate_frame(scan: pl.LazyFrame, narrow: pl.DataFrame, predicate: str) -> pl.DataFrame:
    """The columns ``predicate`` mentions, a row per input pair; texts are read only if named."""
    used = predicate_columns(predicate)
    have = [c for c in used if c in narrow.columns and c not in ("source", "history_mismatch")]
    read = [c for c in used if c not in have]
    frame = narrow.select("_pos", *have)
    if read:
        frame = frame.hstack(scan.select(read).collect(engine="streaming"))
    return frame


def check_route_args(
    *,
    mode: Mode | str = Mode.MIXDPO,
    threshold: float | None = None,
    sft_fraction: float | None = None,
    order: Order | str | None = None,
    stages: int | None = None,
    eval_fraction: float | None = None,
    soft: float | None = None,
    placement: Placement | str | None = None,
    drop: Sequence[str] | str = (),
    memory_budget: int | str | None = None,
) -> None:
    """Every argument of :func:`plan_routes` that can be checked without the data, checked now:
    the command line calls this before it opens anything, so a wrong flag costs nothing."""
    mode = _enum(Mode, mode, "--mode")
    order = default_order(mode) if order is None else _enum(Order, order, "--order")
    threshold = None if threshold is None else float(threshold)
    sft_fraction = None if sft_fraction is None else float(sft_fraction)
    stages = _check_args(mode, threshold, sft_fraction, order, stages, eval_fraction)
    _check_soft(soft, mode)
    _check_placement(placement, mode, order, stages)
    for predicate in (drop,) if isinstance(drop, str) else drop:
        predicate_columns(predicate)
    if memory_budget is not None:
        parse_size(memory_budget)


def _enum(kind: type[Enum], value: Enum | str, flag: str):
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in kind)
        raise InputError(f"{flag} must be one of {choices}, got {value!r}") from None


def _check_args(
    mode: Mode,
    threshold: float | None,
    sft_fraction: float | None,
    order: Order,
    stages: int | None,
    eval_fraction: float | None,
) -> int:
    check_routing_args(threshold, sft_fraction)
    if mode in (Mode.MIXDPO, Mode.FILTER) and threshold is None and sft_fraction is None:
        raise InputError(
            f"--mode {mode} routes by margin and needs a threshold",
            fix="pass --threshold τ (0.5 routes the ties of UltraFeedback ratings) "
            "or --sft-fraction q",
        )
    if stages is not None and stages < 1:
        raise InputError(f"--stages must be at least 1, got {stages}")
    stages = stages or 1
    if stages > 1 and order is not Order.CURRICULUM:
        raise InputError(
            f"--stages cuts the curriculum order into difficulty stages; --order is {order}",
            fix="use --order curriculum with --stages, or drop --stages",
        )
    if eval_fraction is not None and not (0.0 < eval_fraction < 1.0):
        raise InputError(
            f"--eval-fraction must be between 0 and 1 (exclusive), got {eval_fraction}",
            fix="for example --eval-fraction 0.05 holds out 5% of the pairs",
        )
    return stages


def _check_soft(soft: float | None, mode: Mode) -> float | None:
    if soft is None:
        return None
    soft = float(soft)
    # (τ − margin) / T is computed as a product with 1/T: below 1/LIMIT that reciprocal
    # overflows, and a pair at τ would get 0 · ∞ = NaN as its weight.
    if not (math.isfinite(soft) and (soft == 0 or 1 / LIMIT <= soft <= LIMIT)):
        raise InputError(
            f"--soft must be 0 or a temperature from {1 / LIMIT:g} to {LIMIT:g}, got {soft:g}",
            fix="e.g. --soft 0.25 (0 gives the hard route's 0/1 weights)",
        )
    if mode is not Mode.MIXDPO:
        raise InputError(
            f"--soft mixes the sft and dpo losses of --mode mixdpo; --mode is {mode}",
            fix="use --mode mixdpo with --soft, or drop --soft",
        )
    return soft


def _check_placement(
    placement: Placement | str | None, mode: Mode, order: Order, stages: int
) -> Placement | None:
    """``last`` for a mixdpo curriculum unless ``spread`` is asked; None where it means nothing."""
    applies = mode is Mode.MIXDPO and order is Order.CURRICULUM
    if placement is None:
        return Placement.LAST if applies else None
    placement = _enum(Placement, placement, "--placement")
    if not applies:
        raise InputError(
            f"--placement places the sft pairs of a mixdpo curriculum; here --mode is {mode} "
            f"and --order {order}",
            fix="use --mode mixdpo --order curriculum with --placement, or drop --placement",
        )
    if placement is Placement.SPREAD and stages > 1:
        raise InputError(
            "--placement spread sets every pair's position; --stages shuffles within stages",
            fix="drop --stages, or use --placement last",
        )
    return placement


def soft_center(margins: pl.Series, threshold: float) -> float:
    """Where soft routing centres its sigmoid: halfway between τ and the largest margin below τ.

    Hard routing sends a pair to sft when margin < τ (strict), so on discrete ratings any cut
    between the largest margin below τ and τ itself routes the same pairs; the middle of that gap
    is the cut a sigmoid must be centred on to reach the hard route as ``T → 0`` for every pair,
    a margin of exactly τ included (centred at τ, such a pair keeps w = ½ at any T). On half-point
    ratings at τ = 0.5 the centre is 0.25; on continuous margins it is τ, up to the gap to the
    nearest margin. With no margin below τ it is τ minus half the smallest gap between two
    distinct margins (minus ½ when the margins take one value).

        >>> soft_center(pl.Series([0.0, 0.5, 1.0, 2.0]), 0.5), soft_center(pl.Series([1.0]), 0.5)
        (0.25, 0.0)
    """
    values = margins.drop_nulls().drop_nans().unique().sort()
    below = values.filter(values < threshold)
    if below.len():
        return (float(below.max()) + threshold) / 2
    gaps = values.diff().drop_nulls()
    gap = float(gaps.min()) if gaps.len() else 1.0
    return threshold - gap / 2


def soft_weights(
    margin: pl.Expr, threshold: float, temperature: float, *, center: float | None = None
) -> pl.Expr:
    """The SFT share of a pair's loss under soft routing: ``w = σ((c − margin) / T)``.

    ``c`` is :func:`soft_center` (default: τ itself). A pair far below the cut is (almost) all SFT,
    one far above it (almost) all DPO. ``T = 0`` is the hard switch of MixDPO (w = 1 if margin < τ
    else 0); as ``T → 0`` the weights converge to it for every margin on the right side of ``c``,
    which with ``c`` from :func:`soft_center` is every margin. The paper's reference code has soft
    *label* variants instead (a σ(Δscore / T) weight on the two orientations of the DPO loss,
    loss types ``noisy-tolerant-4-3`` and ``-4-8`` in ``scripts/dpo_trainer.py`` of
    JlPang863/QualityDPO); this mixes the two objectives of MixDPO (``noisy-tolerant-4-6``)
    instead of the two labels.
    """
    if temperature == 0:
        return pl.when(margin < threshold).then(1.0).otherwise(0.0).cast(pl.Float64)
    cut = threshold if center is None else center
    z = ((pl.lit(cut) - margin) / temperature).clip(-745.0, 745.0)
    return (1.0 / (1.0 + (-z).exp())).cast(pl.Float64)


def _nothing_left(source: PairSource, reasons: dict[str, int]) -> InputError:
    why = ", ".join(f"{n} {reason}" for reason, n in reasons.items() if n)
    return InputError(
        f"no pairs left to route ({why} dropped)",
        where=source.raw.display,
        fix="loosen the --drop predicates, or check the data (identical: chosen = rejected; "
        "empty_chosen: an empty chosen response)",
    )


def _mark(keys: pl.DataFrame, mask: pl.Series, reason: str) -> pl.DataFrame:
    return keys.with_columns(
        pl.when(mask).then(pl.lit(reason)).otherwise(pl.col("_drop")).alias("_drop")
    )


# --------------------------------------------------------------------------------------------------
# held-out split


def _hold_out(keys: pl.DataFrame, fraction: float | None, seed: int) -> pl.DataFrame:
    """Mark ``round(fraction * n)`` kept pairs as 'eval', stratified by difficulty deciles.

    Each stratum (decile of difficulty; pairs without a margin form their own) gives its share of
    the held-out count, largest remainders first, and within a stratum the pairs with the smallest
    seeded hash of their pair_id are held out. The choice depends only on the kept pairs and the
    seed: the same pairs are held out in every mode.
    """
    kept = pl.col("_drop").is_null()
    if fraction is None:
        return keys.with_columns(pl.lit("train").alias("split"))
    pool = keys.filter(kept)
    n = pool.height
    n_eval = min(int(math.floor(fraction * n + 0.5)), n - 1)
    strata = (
        pl.when(pl.col("difficulty").is_null())
        .then(-1)
        .otherwise((pl.col("difficulty") * EVAL_STRATA).floor().clip(0, EVAL_STRATA - 1))
        .cast(pl.Int64)
        .alias("_stratum")
    )
    pool = pool.select("_pos", "pair_id", strata).with_columns(
        pl.Series("_key", seeded_keys(pool.get_column("pair_id"), seed, salt=1))
    )
    sizes = pool.group_by("_stratum").len().sort("_stratum")
    quota = _largest_remainder(sizes.get_column("len").to_list(), fraction, n_eval)
    sizes = sizes.with_columns(pl.Series("_quota", quota, dtype=pl.Int64))
    chosen = (
        pool.sort("_stratum", "_key", "_pos")
        .with_columns(pl.int_range(pl.len()).over("_stratum").alias("_i"))
        .join(sizes.select("_stratum", "_quota"), on="_stratum")
        .filter(pl.col("_i") < pl.col("_quota"))
        .get_column("_pos")
    )
    split = pl.when(kept & pl.col("_pos").is_in(chosen.implode())).then(pl.lit("eval"))
    return keys.with_columns(split.otherwise(pl.lit("train")).alias("split"))


def _largest_remainder(sizes: list[int], fraction: float, total: int) -> list[int]:
    exact = [s * fraction for s in sizes]
    quota = [min(int(math.floor(e)), s) for e, s in zip(exact, sizes, strict=True)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in by_remainder:
        if sum(quota) >= total:
            break
        if quota[i] < sizes[i]:
            quota[i] += 1
    return quota


# --------------------------------------------------------------------------------------------------
# order, rank, stage


def _order(
    keys: pl.DataFrame,
    order: Order,
    stages: int,
    seed: int,
    placement: Placement | None = None,
) -> pl.DataFrame:
    """Add ``rank`` (0..n-1 reading position) and ``stage``; rows come out in rank order."""
    n = keys.height
    if order is Order.AS_IS:
        ordered = keys.sort("_pos")
    elif order is Order.RANDOM:
        ordered = (
            keys.with_columns(pl.Series("_key", seeded_keys(keys.get_column("pair_id"), seed, 2)))
            .sort("_key", "_pos")
            .drop("_key")
        )
    else:
        ordered = keys.sort(
            ["margin", "pair_id", "_pos"],
            descending=[True, False, False],
            nulls_last=True,
            maintain_order=True,
        )
        if placement is Placement.SPREAD:
            ordered = spread_sft(ordered)
    # Stage s holds curriculum positions [s*n/K, (s+1)*n/K): equal sizes within one pair.
    stage = (pl.int_range(n, dtype=pl.Int64) * stages // max(n, 1)).cast(pl.Int32)
    ordered = ordered.with_columns(stage.alias("stage"))
    if stages > 1:
        ordered = (
            ordered.with_columns(
                pl.Series("_key", seeded_keys(ordered.get_column("pair_id"), seed, 3))
            )
            .sort("stage", "_key", "_pos")
            .drop("_key")
        )
    return ordered.with_columns(pl.int_range(n, dtype=pl.Int64).alias("rank"))


def spread_sft(ordered: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``ordered`` with its sft pairs spread evenly: the j-th of k sft pairs (in
    their order) at position ⌊(2j + 1)·n / 2k⌋ of n, the dpo pairs in their order between them.

    Positions are n/k ≥ 1 apart, so they are distinct, and the first and last sft pairs sit
    half a gap from the ends: every stretch of n/k pairs holds one sft pair.
    """
    is_sft = ordered.get_column("route") == ROUTE_SFT
    n, k = ordered.height, int(is_sft.sum())
    if k in (0, n):
        return ordered
    slots = (2 * np.arange(k, dtype=np.int64) + 1) * n // (2 * k)
    taken = np.zeros(n, dtype=bool)
    taken[slots] = True
    sft = ordered.filter(is_sft).with_columns(pl.Series("_slot", slots))
    dpo = ordered.filter(~is_sft).with_columns(pl.Series("_slot", np.flatnonzero(~taken)))
    return pl.concat([sft, dpo]).sort("_slot").drop("_slot")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a fixed, version-independent 64-bit mix (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def seeded_keys(pair_ids: pl.Series, seed: int, salt: int) -> np.ndarray:
    """A pseudo-random uint64 per pair from (pair_id, seed, salt); sorting by it shuffles.

    The key depends on the pair's content, not its position, so a shuffle is the same whatever
    order the input file lists the pairs in, and the same on every machine and library version.
    """
    ids = pair_ids.str.to_integer(base=10, dtype=pl.UInt64)  # 20-digit XXH3-64, see io.py
    mixed_seed = _splitmix64(np.array([seed % (1 << 64), salt], dtype=np.uint64))
    stream = _splitmix64(np.array([mixed_seed[0] ^ mixed_seed[1]], dtype=np.uint64))[0]
    return _splitmix64(ids.to_numpy().astype(np.uint64) ^ stream)


# --------------------------------------------------------------------------------------------------
# counts


def _counts(
    keys: pl.DataFrame, rows: int, reasons: dict[str, int], threshold: float | None
) -> dict[str, Any]:
    def count(split: str, route: str | None = None) -> int:
        mask = pl.col("split") == split
        if route is not None:
            mask &= pl.col("route") == route
        return keys.filter(mask).height

    dropped = sum(reasons.values())
    counts: dict[str, Any] = {
        "in": rows,
        "dpo": count("train", ROUTE_DPO),
        "sft": count("train", ROUTE_SFT),
        "dropped": dropped,
        "dropped_by_reason": reasons,
        "train": count("train"),
        "eval": count("eval"),
        "eval_dpo": count("eval", ROUTE_DPO),
        "eval_sft": count("eval", ROUTE_SFT),
    }
    if threshold is not None:
        counts["below_threshold"] = keys.filter(pl.col("margin") < threshold).height + reasons.get(
            BELOW_THRESHOLD, 0
        )
    if WEIGHT_COLUMN in keys.columns:  # route --soft T
        train_weights = keys.filter(pl.col("split") == "train").get_column(WEIGHT_COLUMN)
        counts["weight_mean"] = float(train_weights.mean())
    return counts


# --------------------------------------------------------------------------------------------------
# input identity


class _HashThread:
    """Hash the input files in a thread while Polars reads them (both release the GIL)."""

    def __init__(self, source: PairSource):
        self._raw = source.raw
        self._display = source.raw.display
        self._value: tuple[str, int] | None = None
        self._error: BaseException | None = None

        def work() -> None:
            try:
                self._value = self._raw.content_hash()
            except BaseException as exc:  # noqa: BLE001 - re-raised in result()
                self._error = exc

        self._thread = threading.Thread(target=work, name="prefcurate-hash", daemon=True)
        self._thread.start()

    def result(self, *, rows: int) -> dict[str, Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        sha256, size = self._value
        return {
            "path": self._display,
            "sha256": sha256,
            "rows": rows,
            "bytes": size,
            "files": len(self._raw.paths),
        }


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


__all__ = [
    "EMPTY_CHOSEN",
    "IDENTICAL",
    "Mode",
    "Order",
    "Placement",
    "PLAN_VERSION",
    "RoutePlan",
    "default_order",
    "soft_center",
    "soft_weights",
    "plan_routes",
    "spread_sft",
    "seeded_keys",
]
