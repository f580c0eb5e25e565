"""The narrow frame: a few small columns per pair, computed in the one pass over the texts.

analyze, inspect and route each read a dataset once, keeping these columns (lengths, flags, the
margin, a prompt hash) instead of the texts, and decide everything else on that frame. The rule of
which pairs route may route (:func:`routable_pairs`) lives here too, so analyze's preview and the
routes agree.
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


def routable_pairs(df: pl.DataFrame) -> pl.DataFrame:
    """The pairs route would route: those with chosen ≠ rejected (route drops the rest).

    When every rated pair is identical, route refuses the data; the figures then count all pairs
    rather than none.
    """
    if "identical" not in df.columns:
        return df
    kept = df.filter(~pl.col("identical"))
    return kept if kept.get_column("margin").drop_nulls().len() > 0 else df
