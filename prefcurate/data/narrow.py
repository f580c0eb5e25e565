"""The narrow frame: a few small columns per pair, computed in the one pass over the texts.

analyze, inspect and route each read a dataset once, keeping these columns (lengths, flags, the
margin, a prompt hash) instead of the texts, and decide everything else on that frame. The rule of
which pairs route drops whatever the mode and τ (:func:`unroutable_reason`: chosen = rejected, or
an empty chosen response) lives here too, so route, analyze's preview, the inspect page and every
export agree.
"""

from __future__ import annotations

import polars as pl

#: Columns of the narrow frame analyze, inspect and route compute.
NARROW_COLUMNS: tuple[str, ...] = (
    "pair_id",
    "prompt_hash",
    "margin",
    "source",
    "history_mismatch",
    "prompt_chars",
    "chosen_chars",
    "rejected_chars",
    "identical",
    "empty_prompt",
    "empty_chosen",
    "empty_rejected",
)


def narrow_exprs(conversational: bool) -> list[pl.Expr]:
    """Expressions turning canonical columns into :data:`NARROW_COLUMNS` (no texts survive).

    ``conversational``: prompt/chosen/rejected are lists of ``{role, content}`` messages.
    """

    def chars(name: str) -> pl.Expr:
        col = pl.col(name)
        if conversational:
            lens = col.list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
        else:
            lens = col.str.len_chars()
        return lens.fill_null(0).cast(pl.Int64)

    def empty(name: str) -> pl.Expr:
        col = pl.col(name)
        if conversational:
            visible = col.list.eval(
                pl.element().struct.field("content").str.strip_chars().str.len_chars()
            ).list.sum()
        else:
            visible = col.str.strip_chars().str.len_chars()
        return visible.fill_null(0) == 0

    # The prompt's native 64-bit hash is only compared within this frame; duplicate pairs are
    # pairs whose pair_id (a hash of prompt, chosen and rejected) repeats.
    return [
        pl.col("pair_id"),
        pl.when(empty("prompt")).then(None).otherwise(pl.col("prompt").hash()).alias("prompt_hash"),
        pl.col("margin").cast(pl.Float64),
        pl.col("source").cast(pl.String),
        pl.col("history_mismatch").fill_null(False),
        chars("prompt").alias("prompt_chars"),
        chars("chosen").alias("chosen_chars"),
        chars("rejected").alias("rejected_chars"),
        (pl.col("chosen") == pl.col("rejected")).fill_null(False).alias("identical"),
        empty("prompt").alias("empty_prompt"),
        empty("chosen").alias("empty_chosen"),
        empty("rejected").alias("empty_rejected"),
    ]


#: chosen == rejected: no preference to learn (the DPO loss of such a pair is constant, so its
#: gradient is zero), and the two ratings of one text disagree (UltraFeedback has margins of 1.5),
#: so its margin cannot place it in the curriculum either.
IDENTICAL = "identical"
#: the chosen response is empty (or only whitespace): whatever its route, the pair would teach the
#: model to answer nothing, as the preferred side of DPO or as the SFT target. An empty *rejected*
#: response is a real answer, and a bad one (a generation that stopped at once, rated low): its
#: pair teaches "anything over nothing" as DPO, and only its chosen response as SFT, so route
#: keeps it (analyze still flags it: ``flags.empty_rejected``; ``--drop`` removes such pairs).
EMPTY_CHOSEN = "empty_chosen"
#: What route drops in every mode, whatever τ, in the order tested: a pair counts under the first
#: reason that holds. These are keys of plan.json's ``counts.dropped_by_reason``.
UNROUTABLE: tuple[str, ...] = (IDENTICAL, EMPTY_CHOSEN)
#: Each reason as people read it (terminal, page, export READMEs).
UNROUTABLE_LABELS = {IDENTICAL: "chosen = rejected", EMPTY_CHOSEN: "an empty chosen response"}


def unroutable_reason() -> pl.Expr:
    """Over :data:`NARROW_COLUMNS`: why route drops the pair whatever its margin, else null.

    One of :data:`UNROUTABLE` (the first that holds); ``null`` for a pair route may route.
    """
    return (
        pl.when(pl.col("identical"))
        .then(pl.lit(IDENTICAL))
        .when(pl.col("empty_chosen"))
        .then(pl.lit(EMPTY_CHOSEN))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("unroutable")
    )


def unroutable_counts(df: pl.DataFrame) -> dict[str, int]:
    """How many pairs of the narrow frame ``df`` route drops for each of :data:`UNROUTABLE`."""
    if "identical" not in df.columns:
        return dict.fromkeys(UNROUTABLE, 0)
    reasons = df.select(unroutable_reason()).to_series()
    return {reason: int((reasons == reason).sum()) for reason in UNROUTABLE}


def describe_unroutable(counts: dict[str, int]) -> str:
    """``"4 pairs with chosen = rejected, 1 pair with an empty chosen response"`` (counted ones)."""
    return ", ".join(
        f"{n:,} pair{'' if n == 1 else 's'} with {UNROUTABLE_LABELS[reason]}"
        for reason, n in counts.items()
        if n and reason in UNROUTABLE_LABELS
    )


def routable_pairs(df: pl.DataFrame) -> pl.DataFrame:
    """The pairs route would route: those :func:`unroutable_reason` keeps (route drops the rest).

    When every rated pair is unroutable, route refuses the data; the figures then count all pairs
    rather than none.
    """
    if "identical" not in df.columns:
        return df
    kept = df.filter(unroutable_reason().is_null())
    return kept if kept.get_column("margin").drop_nulls().len() > 0 else df
