"""Margins, difficulty, and the threshold that routes a given share of pairs.

Definitions (DESIGN.md, following MixDPO, arXiv 2602.00954):

* ``margin = score_chosen - score_rejected`` — no normalisation; UltraFeedback ratings are 1–10 in
  steps of 0.5, so margins are multiples of 0.5 and ties (margin 0) are common. A ``margin`` column
  already in the data (for instance written by ``prefcurate score``) takes precedence.
* ``difficulty`` — the percentile of the margin, 1.0 for the hardest pair (smallest margin) and
  0.0 for the easiest: ``(n - r) / (n - 1)`` where ``r`` is the pair's rank by ascending margin
  with ties given the lowest rank, so equal margins get equal difficulty, deterministically.
* a pair is *difficult* when ``margin < τ`` (strict).
"""

from __future__ import annotations

import math

import polars as pl

from prefcurate.base.errors import InputError

#: The largest magnitude of a score, a margin or τ. Any difference of two such values (a span of
#: margins, the width of a histogram, a margin's distance to τ) is then a finite 64-bit float, so
#: no figure ever divides by an overflow; a value beyond it is refused where it is read.
LIMIT = 1e300


def beyond_limit(value: pl.Expr) -> pl.Expr:
    """Whether a finite ``value`` is larger in magnitude than :data:`LIMIT`."""
    return value.is_finite() & (value.abs() > LIMIT)


def margin_expr(has_input_margin: bool) -> pl.Expr:
    """The margin: the input's own margin column if it has one, else the score difference."""
    diff = pl.col("score_chosen") - pl.col("score_rejected")
    if has_input_margin:
        return pl.coalesce(pl.col("_input_margin"), diff).alias("margin")
    return diff.alias("margin")


def difficulty_expr() -> pl.Expr:
    """Percentile of the margin, 1.0 = hardest (smallest margin); null where the margin is."""
    rank = pl.col("margin").rank(method="min")
    n = pl.col("margin").count()
    return (
        pl.when(n <= 1)
        .then(pl.when(pl.col("margin").is_not_null()).then(1.0))
        .otherwise((n - rank).cast(pl.Float64) / (n - 1).cast(pl.Float64))
        .alias("difficulty")
    )


def threshold_for_fraction(margins: pl.Series, fraction: float) -> float:
    """The τ that routes the hardest ``fraction`` of the pairs (margin < τ) to SFT.

    Pairs with equal margins are routed together, so the share can only be hit approximately: τ is
    the candidate (a margin value in the data, or just above the largest) whose routed count is
    closest to ``fraction * n``, preferring the smaller τ on a tie. Example: on UltraFeedback
    samples 11.1% of pairs are ties, so ``fraction=0.12`` gives τ = 0.5 (routing the ties),
    not τ = 1.0 (which would route 30%).
    """
    check_fraction(fraction)
    values = margins.drop_nulls().sort()
    if values.len() == 0:
        raise no_margin_error()
    target = fraction * values.len()
    distinct = values.unique(maintain_order=True).to_list()
    candidates = [*distinct, math.nextafter(distinct[-1], math.inf)]
    below = values.search_sorted(pl.Series(candidates, dtype=values.dtype), side="left").to_list()
    best = min(range(len(candidates)), key=lambda i: (abs(below[i] - target), i))
    return float(candidates[best])


def check_threshold(threshold: float) -> None:
    if not math.isfinite(threshold) or abs(threshold) > LIMIT:
        raise InputError(
            f"--threshold must be a finite number within ±{LIMIT:g}, got {threshold}",
            fix="for UltraFeedback ratings τ = 0.5 routes exactly the ties",
        )


def check_fraction(fraction: float) -> None:
    if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
        raise InputError(
            f"--sft-fraction must be between 0 and 1, got {fraction}",
            fix="for example --sft-fraction 0.12 routes the hardest 12%",
        )


def no_margin_error(where: str | None = None) -> InputError:
    return InputError(
        "the data has no margins (no score columns were found)",
        where=where,
        fix="pass --score-chosen/--score-rejected, or compute margins with 'prefcurate score'",
    )


def check_routing_args(threshold: float | None, sft_fraction: float | None) -> None:
    """At most one of τ and q, each in range; an :class:`InputError` otherwise."""
    if threshold is not None and sft_fraction is not None:
        raise InputError(
            "--threshold and --sft-fraction are mutually exclusive",
            fix="give τ with --threshold, or the share to route to SFT with --sft-fraction",
        )
    if threshold is not None:
        check_threshold(threshold)
    if sft_fraction is not None:
        check_fraction(sft_fraction)
