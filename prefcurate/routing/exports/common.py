"""What every export shares: the split it reads, the file names, the pairs in rank order, messages.

The engine modules (:mod:`.trl`, :mod:`.llamafactory`, :mod:`.openrlhf`) read a
:class:`SplitFiles` (train.parquet, eval.parquet when route held pairs out, the layout), build
their rows from :func:`mixdpo_frame` (or :func:`as_messages` where the engine reads turns), and
write every file with :func:`write_jsonl`: a split is read, checked and ordered one way for every
engine, and the eval split travels beside the train split under the same names plus ``_eval``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.base.log import get_logger
from prefcurate.data.layouts import transcript_turns
from prefcurate.data.schema import MESSAGE_DTYPE, WEIGHT_COLUMN, Layout

DPO_FILE = "dpo.jsonl"
SFT_FILE = "sft.jsonl"
MIXDPO_FILE = "mixdpo.jsonl"
#: What an export's eval files add to the train file's name: dpo.jsonl → dpo_eval.jsonl.
EVAL_SUFFIX = "_eval"
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


def eval_name(name: str) -> str:
    """The eval twin of an export's file or dataset name: ``dpo.jsonl`` → ``dpo_eval.jsonl``."""
    stem, dot, suffix = name.partition(".")
    return f"{stem}{EVAL_SUFFIX}{dot}{suffix}"


@dataclass(frozen=True)
class SplitFiles:
    """What an export reads: the routed ``train`` file, the ``eval`` file when route held pairs
    out, and the ``layout`` the pairs were read in (plan.json's ``layout``)."""

    train: Path
    eval: Path | None = None
    layout: str | None = None

    @classmethod
    def of(cls, split: SplitFiles | str | Path) -> SplitFiles:
        """A split folder written by ``prefcurate route``, or its train.parquet: the eval.parquet
        and plan.json's layout beside it are used when present."""
        if isinstance(split, SplitFiles):
            return split
        path = Path(split)
        folder, train = (path, path / "train.parquet") if path.is_dir() else (path.parent, path)
        held = folder / "eval.parquet"
        return cls(train, held if held.is_file() else None, _plan_layout(folder / "plan.json"))

    def pairs(self) -> dict[str, pl.LazyFrame]:
        """``{"": train pairs, "_eval": eval pairs}`` (the latter when held out), in rank order."""
        splits = {"": self.train, EVAL_SUFFIX: self.eval}
        return {
            suffix: mixdpo_frame(pl.scan_parquet(path), where=path)
            for suffix, path in splits.items()
            if path is not None
        }


def _plan_layout(plan: Path) -> str | None:
    try:
        layout = json.loads(plan.read_text(encoding="utf-8")).get("layout")
    except (OSError, ValueError, AttributeError):
        return None
    return layout if isinstance(layout, str) else None


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


def is_conversational(pairs: pl.LazyFrame) -> bool:
    """Whether the pairs' responses are message lists."""
    return isinstance(pairs.collect_schema()["chosen"], pl.List)


def as_messages(
    pairs: pl.LazyFrame, layout: str | None, kept_whole: list[str] | None = None
) -> pl.LazyFrame:
    """The pairs with ``prompt``, ``chosen`` and ``rejected`` as ``{role, content}`` lists.

    What engines that render turns with a chat template read: conversations stay as they are; a
    string prompt becomes one user turn (none when empty) and each response one assistant turn
    (an empty rejected response too: the template renders it as an empty answer);
    an implicit-prompt transcript (HH-RLHF's ``"\\n\\nHuman: … \\n\\nAssistant:"``) becomes its
    alternating turns (:func:`prefcurate.data.layouts.transcript_turns`), its responses stripped
    the same way. A transcript whose turns do not alternate stays one user turn, and its pair_id
    is appended to ``kept_whole`` when the query runs (:func:`warn_kept_whole` says how many).
    """
    if is_conversational(pairs):
        return pairs
    if layout != str(Layout.IMPLICIT):
        return pairs.with_columns(
            _turns("prompt", "user").alias("prompt"),
            _turns("chosen", "assistant").alias("chosen"),
            _turns("rejected", "assistant").alias("rejected"),
        )
    texts = pl.struct("pair_id", "prompt", "chosen", "rejected")
    turns = texts.map_elements(
        _transcript([] if kept_whole is None else kept_whole),
        return_dtype=pl.Struct({k: MESSAGE_DTYPE for k in ("prompt", "chosen", "rejected")}),
    )
    fields = [pl.col("_turns").struct.field(k).alias(k) for k in ("prompt", "chosen", "rejected")]
    return pairs.with_columns(turns.alias("_turns")).with_columns(fields).drop("_turns")


def warn_kept_whole(kept_whole: list[str], engine: str) -> None:
    """One warning naming how many transcripts :func:`as_messages` kept whole for ``engine``."""
    ids = sorted(set(kept_whole))
    if ids:
        get_logger("routing.exports").warning(
            "%s: %d implicit-prompt transcripts whose turns do not alternate user/assistant "
            "were exported as one user turn each (e.g. pair_id %s)",
            engine,
            len(ids),
            ids[0],
        )


def _turns(column: str, role: str) -> pl.Expr:
    """A string as one ``role`` message; an empty prompt is no message, an empty response (a
    rejected one: route drops empty chosen ones) one message with empty content."""
    text = pl.col(column)
    message = pl.concat_list(pl.struct(pl.lit(role).alias("role"), text.alias("content")))
    if role != "user":
        return message.cast(MESSAGE_DTYPE)
    empty = pl.lit([], dtype=MESSAGE_DTYPE)
    return pl.when(text == "").then(empty).otherwise(message).cast(MESSAGE_DTYPE)


def _transcript(kept_whole: list[str]) -> Callable[[dict], dict]:
    def convert(row: dict) -> dict:
        parsed = transcript_turns(row["prompt"], (row["chosen"], row["rejected"]))
        if parsed is None:
            kept_whole.append(row["pair_id"])
            prompt = [{"role": "user", "content": row["prompt"]}] if row["prompt"] else []
            return {"prompt": prompt, **_replies(row["chosen"], row["rejected"])}
        messages, (chosen, rejected) = parsed
        return {"prompt": messages, **_replies(chosen, rejected)}

    return convert


def _replies(chosen: str, rejected: str) -> dict[str, list[dict[str, str]]]:
    return {
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def per_split(
    split: SplitFiles, build: Callable[[pl.LazyFrame], dict[str, pl.LazyFrame]]
) -> dict[str, pl.LazyFrame]:
    """``build``'s queries for the train pairs, and the same for the eval pairs under their
    :func:`eval_name` (``dpo`` → ``dpo_eval``) when the split has them."""
    return {
        f"{name}{suffix}": query
        for suffix, pairs in split.pairs().items()
        for name, query in build(pairs).items()
    }


def write_jsonl(out_dir: Path, queries: dict[str, pl.LazyFrame]) -> dict[str, tuple[Path, int]]:
    """Write each query to ``out_dir/<name>.jsonl`` in one query plan; return path and rows.

    One ``collect_all`` runs every sink and every count, so each split file is read and sorted
    once for all of an engine's files. Bytes are deterministic: Polars' NDJSON writer, keys in
    the queries' column order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(queries)
    paths = {name: out_dir / f"{name}.jsonl" for name in names}
    sinks = [queries[n].sink_ndjson(paths[n], maintain_order=True, lazy=True) for n in names]
    counts = [queries[n].select(pl.len().alias(n)) for n in names]
    lengths = pl.collect_all([*sinks, *counts])[len(sinks) :]
    return {n: (paths[n], int(frame.item())) for n, frame in zip(names, lengths, strict=True)}
