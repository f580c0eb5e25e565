"""What every export shares: the file names and the routed pairs of a split in rank order.

The engine modules (:mod:`.trl`, :mod:`.llamafactory`, :mod:`.openrlhf`) build their files from
:func:`mixdpo_frame`, so a split is read, checked and ordered one way for every engine.
"""

from __future__ import annotations

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.data.schema import WEIGHT_COLUMN

DPO_FILE = "dpo.jsonl"
SFT_FILE = "sft.jsonl"
MIXDPO_FILE = "mixdpo.jsonl"
#: The columns of mixdpo.jsonl, in order.
MIXDPO_COLUMNS: tuple[str, ...] = (
    "pair_id",
    "prompt",
    "chosen",
    "rejected",
    "margin",
    "route",
    "rank",
)


def mixdpo_frame(frame: pl.LazyFrame, *, where: object) -> pl.LazyFrame:
    """The routed pairs of a split in rank order, columns :data:`MIXDPO_COLUMNS` (+ ``weight``).

    A missing prompt becomes ``""`` (or ``[]`` for conversations), as the trainers expect; a
    split without route or rank columns is an :class:`~prefcurate.base.errors.InputError`.
    """
    schema = frame.collect_schema()
    missing = [c for c in ("route", "rank", "prompt", "chosen", "rejected") if c not in schema]
    if missing:
        raise InputError(
            f"not a routed split: no {', '.join(repr(c) for c in missing)} column",
            where=where,
            fix="pass a split written by 'prefcurate route'",
        )
    prompt = pl.col("prompt")
    if isinstance(schema["chosen"], pl.List):
        prompt = prompt.fill_null(pl.lit([], dtype=schema["prompt"]))
    else:
        prompt = prompt.fill_null("")
    columns = {
        "pair_id": pl.col("pair_id") if "pair_id" in schema else pl.lit(None, pl.String),
        "prompt": prompt,
        "chosen": pl.col("chosen"),
        "rejected": pl.col("rejected"),
        "margin": pl.col("margin") if "margin" in schema else pl.lit(None, pl.Float64),
        "route": pl.col("route"),
        "rank": pl.col("rank"),
    }
    names = [*MIXDPO_COLUMNS, *((WEIGHT_COLUMN,) if WEIGHT_COLUMN in schema else ())]
    columns[WEIGHT_COLUMN] = pl.col(WEIGHT_COLUMN)
    return frame.sort("rank").select(columns[name].alias(name) for name in names)
