"""Margins from models, for data without ratings: ``prefcurate score``.

Three model-based margins (the paper's authors tried each as a difficulty signal):

* ``margin_rm = r(prompt, chosen) − r(prompt, rejected)`` from a reward model;
* ``margin_ref`` = mean per-token log-prob of chosen − of rejected under a reference policy (the
  likelihood gap), and ``margin_ref_sum`` the same with summed log-probs;
* ``embed_distance = 1 − cos(e(chosen), e(rejected))`` in [0, 2] from a sentence encoder, the
  responses only: near-identical responses are hard pairs.

:func:`prefcurate.recipes.score.score_pairs` computes the chosen ones for every pair of a
:class:`~prefcurate.data.io.PairSource` and returns the frame that :func:`write_scores` writes: the
canonical columns, every other input column, the score columns, and ``margin`` (with
``difficulty``) taken from ``as_margin``, so ``analyze`` and ``route`` read the file like
any other data::

    >>> from prefcurate.data.io import open_pairs
    >>> from prefcurate.recipes.score import score_pairs
    >>> from prefcurate.scoring.scores import write_scores
    >>> result = score_pairs(open_pairs("pairs.jsonl"), embedding="models/minilm")  # doctest: +SKIP
    >>> write_scores(result, "scored.parquet")                                      # doctest: +SKIP

Each distinct text is scored once; scores are cached per model identity and text hash
(:mod:`prefcurate.scoring.cache`), so a rerun, or a run after an interrupted one, scores only what
is missing. Under torchrun every rank scores a strided share of the batches and rank 0 writes.
This module is the data half (flags, texts and their cache keys, per-pair columns, the output
file) and never imports torch; the recipe :mod:`prefcurate.recipes.score` composes it with the
model half, :mod:`trainers.scoring` (loading, tokenising, batching, forward passes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import polars_hash as plh

from prefcurate.base.atomic import atomic_file
from prefcurate.base.cachedir import default_cache_dir
from prefcurate.base.errors import InputError
from prefcurate.data.io import PAIR_COLUMNS, PairSource
from prefcurate.data.margins import difficulty_expr
from prefcurate.scoring.cache import (
    ScoreStore,
)
from prefcurate.scoring.spec import EMBEDDING, FLAGS, REFERENCE, REWARD, ModelIdentity

#: OUT's metadata format version (the ``prefcurate.scoring.scores`` key of the Parquet footer).
SCORE_FORMAT = 1
METADATA_KEY = "prefcurate.score"

#: The columns each kind of model adds, in the order they are written.
SCORE_COLUMNS: dict[str, tuple[str, ...]] = {
    REWARD: ("reward_chosen", "reward_rejected", "margin_rm"),
    REFERENCE: ("ref_logp_chosen", "ref_logp_rejected", "margin_ref", "margin_ref_sum"),
    EMBEDDING: ("embed_distance",),
}

#: The columns ``--as-margin`` may name, and the kind of model that makes each.
MARGIN_SOURCES: dict[str, str] = {
    "margin_rm": REWARD,
    "margin_ref": REFERENCE,
    "margin_ref_sum": REFERENCE,
    "embed_distance": EMBEDDING,
}

#: Without ``--as-margin``: the first of these whose model was given.
DEFAULT_MARGINS: tuple[str, ...] = ("margin_rm", "margin_ref", "embed_distance")

#: Progress callback: ``(kind, texts done, texts to do)`` on the calling process.
Progress = Callable[[str, int, int], None]


@dataclass
class ScorerRun:
    """What one model did in a run."""

    kind: str
    flag: str
    model: str
    identity: dict[str, Any]
    columns: tuple[str, ...]
    store: str
    texts: int = 0  # distinct texts the data needs
    cached: int = 0  # of which found in the cache
    scored: int = 0  # of which computed by this run (all ranks)
    truncated: int = 0  # of which longer than max_length, truncated
    load_seconds: float = 0.0  # loading the model (0 when every text was cached)
    score_seconds: float = 0.0  # tokenising and running this process's share of the texts
    seconds: float = 0.0  # everything this model took, cache reads and writes included

    @property
    def texts_per_s(self) -> float:
        """Texts scored per second of scoring, over all processes."""
        return self.scored / self.score_seconds if self.score_seconds and self.scored else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = list(self.columns)
        out["pairs_per_s"] = round(self.texts_per_s / 2, 2)
        for key in ("load_seconds", "score_seconds", "seconds"):
            out[key] = round(out[key], 3)
        return out

    def summary(self) -> str:
        rate = f", {self.texts_per_s / 2:.1f} pairs/s" if self.scored else ""
        cut = (
            f", {self.truncated} truncated to {self.identity['max_length']} tokens"
            if self.truncated
            else ""
        )
        return (
            f"{self.kind} {self.model}: {self.texts} texts ({self.scored} scored, "
            f"{self.cached} cached{cut}{rate})"
        )


@dataclass
class ScoreResult:
    """The scored pairs (``None`` on torchrun ranks other than 0) and what each model did."""

    frame: pl.DataFrame | None
    runs: list[ScorerRun]
    as_margin: str
    input: dict[str, Any]
    layout: str
    world_size: int = 1
    pairs: int = 0
    margin: dict[str, Any] = field(default_factory=dict)
    #: The run's settings as given (models, batching, device, precision), for the catalog.
    settings: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What OUT's footer records: reproducible (no timings, no cache hit counts)."""
        return {
            "version": SCORE_FORMAT,
            "input": {k: self.input.get(k) for k in ("path", "sha256", "rows")},
            "layout": self.layout,
            "pairs": self.pairs,
            "as_margin": self.as_margin,
            "scorers": [
                {
                    "kind": run.kind,
                    "model": run.model,
                    **{k: v for k, v in run.identity.items() if k != "model"},
                    "columns": list(run.columns),
                    "texts": run.texts,
                    "truncated": run.truncated,
                }
                for run in self.runs
            ],
        }

    def params(self) -> dict[str, Any]:
        """The run's parameters, as the catalog records them."""
        models = ("reward_model", "reference", "embedding")
        return {
            "layout": self.layout,
            **{k: self.settings.get(k) for k in models},
            "as_margin": self.as_margin,
            **{k: v for k, v in self.settings.items() if k not in models},
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything about the run (the catalog's figures and ``--json``)."""
        return {
            **self.metadata(),
            "world_size": self.world_size,
            "margin": self.margin,
            "runs": [run.to_dict() for run in self.runs],
        }

    def summary(self) -> str:
        parts = "; ".join(run.summary() for run in self.runs)
        return f"{self.pairs} pairs, margin = {self.as_margin}; {parts}"


# --------------------------------------------------------------------------------------------------
# before the models: flags and texts


def check_args(
    models: dict[str, str],
    as_margin: str | None,
    *,
    sizes: dict[str, tuple[int | None, int]],
    device: str,
    precision: str,
    cache: str | Path | None,
    cache_dir: str | Path | None,
) -> str:
    """Refuse impossible flags before any work; return the column that becomes ``margin``."""
    if not models:
        raise InputError(
            "no model given",
            fix="pass at least one of --reward-model, --reference, --embedding",
        )
    for flag, (value, least) in sizes.items():
        if value is not None and value < least:
            raise InputError(f"{flag} must be at least {least}, not {value}")
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown --device {device!r}", fix="use auto, cpu or cuda")
    if precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"unknown --precision {precision!r}", fix="use auto, bf16 or fp32")
    if cache is not None and cache_dir is not None:
        raise InputError("--cache and --cache-dir both given", fix="pass one of them")
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise InputError("--cache must be a directory", where=cache)
    if as_margin is None:
        return next(m for m in DEFAULT_MARGINS if MARGIN_SOURCES[m] in models)
    if as_margin not in MARGIN_SOURCES:
        raise InputError(
            f"--as-margin {as_margin!r} is not a score column",
            fix=f"use one of {', '.join(MARGIN_SOURCES)}",
        )
    if MARGIN_SOURCES[as_margin] not in models:
        raise InputError(
            f"--as-margin {as_margin} needs {FLAGS[MARGIN_SOURCES[as_margin]]}",
            fix="pass that model too, or name a column a given model makes",
        )
    return as_margin


def read_scoring_frame(source: PairSource) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The pairs with each text's cache key (``_item_*``: prompt and response; ``_text_*``: the
    response alone), and the input's figures (path, sha256, rows, bytes, files). The input is
    hashed on a thread while the pairs are read."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefcurate-hash") as pool:
        hashed = pool.submit(source.raw.content_hash)
        frame = source.collect(source.scan(keep_input=True))
        sha256, size = hashed.result()
    conversational = isinstance(frame.schema["chosen"], pl.List)
    frame = frame.with_columns(
        item_expr("prompt", "chosen", conversational).alias("_item_chosen"),
        item_expr("prompt", "rejected", conversational).alias("_item_rejected"),
        item_expr(None, "chosen", conversational).alias("_text_chosen"),
        item_expr(None, "rejected", conversational).alias("_text_rejected"),
    )
    figures = {
        "path": source.raw.display,
        "sha256": sha256,
        "rows": frame.height,
        "bytes": size,
        "files": len(source.raw.paths),
    }
    return frame, figures


def item_expr(prompt: str | None, response: str, conversational: bool) -> pl.Expr:
    """The cache key of one text: XXH3-128 of the prompt and the response (typed, so a string that
    looks like JSON never collides with messages), as 39 decimal digits."""

    def text(name: str) -> pl.Expr:
        col = pl.col(name)
        if conversational:
            encoded = col.list.eval(pl.element().struct.json_encode()).list.join(",")
            return pl.format("m:[{}]", encoded).fill_null("m:[]")
        return pl.concat_str([pl.lit("s:"), col.fill_null("")])

    parts = [text(response)] if prompt is None else [text(prompt), text(response)]
    joined = plh.concat_str(parts, separator="\x1f")
    return joined.nchash.xxh3_128().cast(pl.String).str.zfill(39)


def texts_for(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
    """The distinct texts a kind of model needs: (item, prompt, response), first seen first."""
    if kind == EMBEDDING:
        columns = [("_text_chosen", "chosen"), ("_text_rejected", "rejected")]
    else:
        columns = [("_item_chosen", "chosen"), ("_item_rejected", "rejected")]
    parts = [
        frame.select(
            pl.col(item).alias("item"), pl.col("prompt"), pl.col(response).alias("response")
        )
        for item, response in columns
    ]
    return pl.concat(parts).unique("item", keep="first", maintain_order=True)


def cache_root(cache_dir, cache) -> Path:
    """Where stores (and remembered identities) live: ``--cache DIR``, else CACHE_DIR/score."""
    if cache is not None:
        return Path(cache)
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "score"


def store_path(kind: str, key: str, *, cache_dir, cache) -> Path:
    if cache is not None:
        return Path(cache) / kind
    return cache_root(cache_dir, cache) / f"{kind}-{key[:24]}"


def store_opener(path: Path, identity: ModelIdentity, key: str):
    def open_store(*, create: bool):
        return ScoreStore.open(
            path,
            key=key,
            binding=identity.binding(),
            width=identity.width,
            create=create,
            flag=FLAGS[identity.kind],
            model=identity.spec,
        )

    return open_store


# --------------------------------------------------------------------------------------------------
# from per-text values to per-pair columns


def assemble(frame: pl.DataFrame, values: dict[str, pl.DataFrame], as_margin: str) -> pl.DataFrame:
    """The output frame: canonical columns, the input's other columns, the score columns."""
    made = [c for kind in values for c in SCORE_COLUMNS[kind]]
    scores = {}
    if REWARD in values:
        scores.update(_reward_columns(frame, values[REWARD]))
    if REFERENCE in values:
        scores.update(_reference_columns(frame, values[REFERENCE]))
    if EMBEDDING in values:
        scores["embed_distance"] = _distances(frame, values[EMBEDDING])
    internal = ("_item_chosen", "_item_rejected", "_text_chosen", "_text_rejected")
    extra = [c for c in frame.columns if c not in (*PAIR_COLUMNS, *internal, *made)]
    out = frame.select(*PAIR_COLUMNS, *extra).with_columns(
        pl.Series(name, scores[name], dtype=pl.Float64) for name in made
    )
    out = out.with_columns(pl.col(as_margin).fill_nan(None).alias("margin"))
    return out.with_columns(difficulty_expr())


def _lookup(frame: pl.DataFrame, table: pl.DataFrame, item_column: str) -> np.ndarray:
    """Each pair's row of ``table`` (values by item hash), as a 2-D float array."""
    index = table.select("item").with_row_index("_i")
    rows = frame.select(pl.col(item_column).alias("item")).join(
        index, on="item", how="left", maintain_order="left"
    )
    positions = rows["_i"].to_numpy()
    return table["value"].to_numpy()[positions]


def _reward_columns(frame: pl.DataFrame, table: pl.DataFrame) -> dict[str, np.ndarray]:
    chosen = _lookup(frame, table, "_item_chosen")[:, 0].astype(np.float64)
    rejected = _lookup(frame, table, "_item_rejected")[:, 0].astype(np.float64)
    return {"reward_chosen": chosen, "reward_rejected": rejected, "margin_rm": chosen - rejected}


def _reference_columns(frame: pl.DataFrame, table: pl.DataFrame) -> dict[str, np.ndarray]:
    chosen = _lookup(frame, table, "_item_chosen").astype(np.float64)
    rejected = _lookup(frame, table, "_item_rejected").astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a response of no tokens has no mean
        mean_c = np.where(chosen[:, 1] > 0, chosen[:, 0] / chosen[:, 1], np.nan)
        mean_r = np.where(rejected[:, 1] > 0, rejected[:, 0] / rejected[:, 1], np.nan)
    return {
        "ref_logp_chosen": mean_c,
        "ref_logp_rejected": mean_r,
        "margin_ref": mean_c - mean_r,
        "margin_ref_sum": chosen[:, 0] - rejected[:, 0],
    }


def _distances(frame: pl.DataFrame, table: pl.DataFrame, chunk: int = 65_536) -> np.ndarray:
    """1 − cosine similarity in float64, in [0, 2]; exactly 0 for identical responses."""
    index = table.select("item").with_row_index("_i")
    vectors = table["value"].to_numpy()

    def positions(column: str) -> np.ndarray:
        rows = frame.select(pl.col(column).alias("item")).join(
            index, on="item", how="left", maintain_order="left"
        )
        return rows["_i"].to_numpy()

    chosen, rejected = positions("_text_chosen"), positions("_text_rejected")
    out = np.empty(frame.height, dtype=np.float64)
    for start in range(0, frame.height, chunk):
        c = vectors[chosen[start : start + chunk]].astype(np.float64)
        r = vectors[rejected[start : start + chunk]].astype(np.float64)
        cosine = np.einsum("ij,ij->i", c, r) / (
            np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1)
        )
        out[start : start + chunk] = np.clip(1.0 - cosine, 0.0, 2.0)
    out[chosen == rejected] = 0.0  # the same text: the same vector, whatever the rounding
    return out


def margin_figures(margin: pl.Series) -> dict[str, Any]:
    values = margin.drop_nulls()
    if values.len() == 0:
        return {"count": 0}
    quantiles = {f"p{int(q * 100):02d}": values.quantile(q) for q in (0.05, 0.5, 0.95)}
    return {"count": values.len(), "min": values.min(), **quantiles, "max": values.max()}


# --------------------------------------------------------------------------------------------------
# writing


def check_output(out: str | Path, *, force: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse a non-Parquet OUT, an input, or an existing one without ``force``, before any work."""
    from prefcurate.base.outdir import check_out_file

    out = Path(out)
    if out.suffix != ".parquet":
        raise InputError(
            "the output must be a .parquet file", where=out, fix="name it like scored.parquet"
        )
    return check_out_file(out, force=force, inputs=inputs)


def write_scores(result: ScoreResult, out: str | Path, *, force: bool = False) -> Path:
    """Write the scored pairs to ``out`` (Parquet) atomically, with the run's metadata.

    The footer's ``prefcurate.score`` key holds :meth:`ScoreResult.metadata` as JSON. Same
    input, flags and models give the same bytes, whether the scores came from the models or the
    cache.
    """
    if result.frame is None:
        msg = "only rank 0 holds the scored pairs"
        raise ValueError(msg)
    out = check_output(out, force=force)
    metadata = {METADATA_KEY: json.dumps(result.metadata(), sort_keys=True)}
    with atomic_file(out) as tmp:
        result.frame.write_parquet(
            tmp,
            compression="zstd",
            compression_level=3,
            statistics=True,
            row_group_size=32_768,
            metadata=metadata,
        )
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``prefcurate.scoring.scores`` metadata of a file written by :func:`write_scores`."""
    import pyarrow.parquet as pq

    raw = pq.read_metadata(path).metadata or {}
    return json.loads(raw[METADATA_KEY.encode()])
