"""The canonical pair schema and the layouts prefcurate recognises.

Every loader ends in the same frame (see docs/schema.md): one row per preference pair with the
columns in :data:`CANONICAL_COLUMNS`. A routed split adds :data:`SPLIT_EXTRA_COLUMNS`. Keeping the
names in one place is what lets analyze, route, score and the trainer agree without importing each
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import polars as pl

#: Columns of every frame after loading, in this order.
CANONICAL_COLUMNS: tuple[str, ...] = (
    "pair_id",
    "prompt",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "margin",
    "difficulty",
    "source",
)

#: Columns a routed split adds to the canonical ones; the trainer refuses a split without them.
SPLIT_EXTRA_COLUMNS: tuple[str, ...] = ("route", "rank", "stage")
#: Optional column of a soft-routed split (``route --soft T``): the pair's SFT mix (below).
WEIGHT_COLUMN = "weight"

#: The two routes a pair can take: a preference loss, or SFT on the chosen response.
ROUTE_DPO = "dpo"
ROUTE_SFT = "sft"
ROUTES: tuple[str, ...] = (ROUTE_DPO, ROUTE_SFT)


def sft_mix(route: str, weight: float | None = None) -> float:
    """A pair's SFT mix: the part of its loss that is SFT on the chosen response, in [0, 1].

    The one reading of ``route`` and ``weight`` that every engine uses (``prefcurate train``,
    MixDPOTrainer, the exports): a soft-routed split's ``weight`` is the mix itself, whatever the
    pair's hard route; without it a dpo pair is 0 and an sft pair 1. A pair whose mix is below 1
    takes a preference term (:func:`takes_preference`). Raises ``ValueError`` for a route that is
    not one of :data:`ROUTES` or a weight outside [0, 1].

        >>> sft_mix("dpo"), sft_mix("sft"), sft_mix("sft", 0.25)
        (0.0, 1.0, 0.25)
    """
    if weight is not None:
        mix = float(weight)
        if not 0.0 <= mix <= 1.0:  # NaN fails too
            msg = f"a pair's {WEIGHT_COLUMN} must be in [0, 1], not {weight!r}"
            raise ValueError(msg)
        return mix
    if route not in ROUTES:
        msg = f"route {route!r} is not one of {', '.join(ROUTES)}"
        raise ValueError(msg)
    return 0.0 if route == ROUTE_DPO else 1.0


def takes_preference(mix: float) -> bool:
    """Whether a pair with this SFT mix has a preference term (and so needs its rejected side)."""
    return mix < 1.0


#: Chat messages, as stored for conversational data.
MESSAGE_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))

SCORE_DTYPE = pl.Float64


class Layout(str, Enum):
    """How a file stores its pairs; detected by :func:`prefcurate.data.layouts.detect_layout`."""

    STANDARD = "standard"  # prompt / chosen / rejected strings (TRL's standard format)
    CONVERSATIONAL = "conversational"  # chosen / rejected as lists of {role, content}
    IMPLICIT = "implicit_prompt"  # full transcripts sharing the prompt as a prefix (HH-RLHF)
    MULTI_COMPLETION = "multi_completion"  # a prompt with several rated completions

    def __str__(self) -> str:
        return self.value


class Binarize(str, Enum):
    """How multi-completion rows become pairs."""

    BEST_VS_WORST = "best-vs-worst"
    BEST_VS_RANDOM = "best-vs-random-lower"
    ALL_PAIRS = "all-pairs"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ColumnMap:
    """User overrides of where each canonical field lives in the input.

    Each value is a column name or a dotted path into nested fields (``metadata.score_chosen``).
    ``None`` means "detect it".
    """

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    score_chosen: str | None = None
    score_rejected: str | None = None
    source: str | None = None

    def given(self) -> dict[str, str]:
        """The overrides the user actually passed, by canonical name."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def is_messages(dtype: pl.DataType | None) -> bool:
    """A conversational column: a list of structs with at least ``role`` and ``content``."""
    if not isinstance(dtype, pl.List) or not isinstance(dtype.inner, pl.Struct):
        return False
    return {f.name for f in dtype.inner.fields} >= {"role", "content"}
