"""Margins from models, for data without ratings: ``prefcurate score``.

Three model-based margins (the paper's authors tried each as a difficulty signal):

* ``margin_rm = r(prompt, chosen) − r(prompt, rejected)`` from a reward model;
* ``margin_ref`` = mean per-token log-prob of chosen − of rejected under a reference policy (the
  likelihood gap), and ``margin_ref_sum`` the same with summed log-probs;
* ``embed_distance = 1 − cos(e(chosen), e(rejected))`` in [0, 2] from a sentence encoder, the
  responses only: near-identical responses are hard pairs.

:func:`score_pairs` computes the chosen ones for every pair of a :class:`~prefcurate.io.PairSource`
and returns the frame that :func:`write_scores` writes: the canonical columns, every other input
column, the score columns, and ``margin`` (with ``difficulty``) taken from ``as_margin``, so
``analyze`` and ``route`` read the file like any other data::

    >>> from prefcurate.io import open_pairs
    >>> from prefcurate.score import score_pairs, write_scores
    >>> result = score_pairs(open_pairs("pairs.jsonl"), embedding="models/minilm")  # doctest: +SKIP
    >>> write_scores(result, "scored.parquet")                                      # doctest: +SKIP

Each distinct text is scored once; scores are cached per model identity and text hash
(:mod:`prefcurate.score_cache`), so a rerun, or a run after an interrupted one, scores only what
is missing. Under torchrun every rank scores a strided share of the batches and rank 0 writes.
The model side (loading, tokenising, batching, forward passes) is :mod:`trainers.scoring`; this
module never imports torch at module level.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import polars_hash as plh

from prefcurate.errors import InputError
from prefcurate.io import PAIR_COLUMNS, PairSource, atomic_file
from prefcurate.margins import difficulty_expr
from prefcurate.score_cache import (
    ModelIdentity,
    ScoreStore,
    default_cache_dir,
    memo_key,
    recall_identity,
    remember_identity,
)

#: OUT's metadata format version (the ``prefcurate.score`` key of the Parquet footer).
SCORE_FORMAT = 1
METADATA_KEY = "prefcurate.score"

REWARD, REFERENCE, EMBEDDING = "reward", "reference", "embedding"

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

#: The flag that passes each kind of model.
FLAGS = {REWARD: "--reward-model", REFERENCE: "--reference", EMBEDDING: "--embedding"}

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
# the run


def score_pairs(
    source: PairSource,
    *,
    reward_model: str | None = None,
    reference: str | None = None,
    embedding: str | None = None,
    as_margin: str | None = None,
    batch_size: int | None = None,
    max_tokens_per_batch: int | None = None,
    max_length: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    cache: str | Path | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    batch_order: str = "length",
    flush_every: int = 4096,
) -> ScoreResult:
    """Score every pair of ``source`` with the given models; see the module docstring.

    ``batch_size`` / ``max_tokens_per_batch`` bound a batch (texts; texts × longest text); with
    neither, a batch holds at most 16,384 padded tokens. ``max_length`` lowers the model's own
    text limit. ``cache`` names a store directory bound to these models; else stores live under
    ``cache_dir`` (default ``$PREFCURATE_CACHE_DIR`` or ``~/.cache/prefcurate``).
    ``batch_order="random"`` batches texts in a seeded random order instead of by length (only
    for measuring what sorting saves). Raises :class:`InputError` before reading any data when a
    flag or a model is wrong.
    """
    models = {REWARD: reward_model, REFERENCE: reference, EMBEDDING: embedding}
    models = {kind: str(spec) for kind, spec in models.items() if spec is not None}
    as_margin = _check_args(
        models,
        as_margin,
        sizes={
            "--batch-size": (batch_size, 1),
            "--max-tokens-per-batch": (max_tokens_per_batch, 1),
            "--max-length": (max_length, 2),
        },
        device=device,
        precision=precision,
        cache=cache,
        cache_dir=cache_dir,
    )
    if batch_size is None and max_tokens_per_batch is None:
        max_tokens_per_batch = 16_384
    request = {
        "device": device,
        "precision": precision,
        "max_length": max_length,
        "trust_remote_code": trust_remote_code,
        "allow_pickle": allow_pickle,
    }
    memo_root = _cache_root(cache_dir, cache) / "identities"
    identities = {kind: _identity(kind, spec, request, memo_root) for kind, spec in models.items()}
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
    dist = _distributed()
    device_type = next(iter(identities.values())).device
    info = dist.setup(device_type)
    runs: list[ScorerRun] = []
    values: dict[str, pl.DataFrame] = {}
    try:
        for kind, identity in identities.items():
            run, table = _score_kind(
                frame,
                identity,
                dist=dist,
                cache_dir=cache_dir,
                cache=cache,
                trust_remote_code=trust_remote_code,
                allow_pickle=allow_pickle,
                batch_size=batch_size,
                max_tokens=max_tokens_per_batch,
                batch_order=batch_order,
                flush_every=flush_every,
                progress=progress,
            )
            runs.append(run)
            if table is not None:
                values[kind] = table
    finally:
        dist.teardown()
    result = ScoreResult(
        frame=None,
        runs=runs,
        as_margin=as_margin,
        input={
            "path": source.raw.display,
            "sha256": sha256,
            "rows": frame.height,
            "bytes": size,
            "files": len(source.raw.paths),
        },
        layout=str(source.layout),
        world_size=info.world_size,
        pairs=frame.height,
    )
    if info.main:
        result.frame = _assemble(frame, values, as_margin)
        result.margin = _margin_figures(result.frame["margin"])
    return result


def _check_args(
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


def _score_kind(
    frame: pl.DataFrame,
    identity: ModelIdentity,
    *,
    dist,
    cache_dir,
    cache,
    trust_remote_code: bool,
    allow_pickle: bool,
    batch_size: int | None,
    max_tokens: int | None,
    batch_order: str,
    flush_every: int,
    progress: Progress | None,
) -> tuple[ScorerRun, pl.DataFrame | None]:
    """Score the distinct texts one model needs: cache first, then the missing ones, sharded."""
    started = time.perf_counter()
    info = dist.info()
    kind = identity.kind
    texts = _texts(frame, kind)
    key = identity.key()
    store_path = _store_path(kind, key, cache_dir=cache_dir, cache=cache)
    open_store = _opener(store_path, identity, key)
    store = open_store(create=True) if info.main else None
    dist.barrier()  # rank 0 has bound the store to the model before the others open it
    store = store or open_store(create=False)
    found = store.lookup(texts["item"])
    dist.barrier()  # every rank has read the cache before any rank adds to it
    missing = texts.join(found.select("item"), on="item", how="anti", maintain_order="left")
    run = ScorerRun(
        kind=kind,
        flag=FLAGS[kind],
        model=identity.spec,
        identity=identity.describe(),
        columns=SCORE_COLUMNS[kind],
        store=str(store_path),
        texts=texts.height,
        cached=found.height,
        scored=missing.height,
    )
    if missing.height:
        from trainers import scoring

        loading = time.perf_counter()
        scorer = scoring.load_scorer(
            identity,
            local_rank=info.local_rank,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
        scoring_started = time.perf_counter()
        run.load_seconds = scoring_started - loading
        encoded = scorer.encode(missing["prompt"].to_list(), missing["response"].to_list())
        batches = scoring.plan_batches(
            encoded.lengths, batch_size=batch_size, max_tokens=max_tokens, order=batch_order
        )
        mine = batches[info.rank :: info.world_size]
        total = int(sum(len(b) for b in mine))
        items = missing["item"].to_list()
        lengths, done = encoded.lengths, 0
        with store.writer(flush_every=flush_every) as writer:
            for batch in mine:
                values = scorer.run(encoded, batch)
                writer.add(
                    [items[i] for i in batch.tolist()],
                    values,
                    lengths[batch],
                    encoded.truncated[batch],
                )
                done += len(batch)
                if progress is not None and info.main:
                    progress(kind, done, total)
        run.score_seconds = time.perf_counter() - scoring_started
        del scorer
        _free(identity.device)
    dist.barrier()  # every rank's parts are written
    table = None
    if info.main:
        table = store.lookup(texts["item"])
        if table.height != texts.height:
            raise InputError(
                f"{texts.height - table.height} scores are missing from the cache after scoring: "
                "the cache is not shared between the processes",
                where=store_path,
                fix="pass a --cache-dir that every process can read and write",
            )
        run.truncated = int(table["truncated"].sum())
        store.compact()
    run.seconds = time.perf_counter() - started
    return run, table


def _texts(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
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


def _cache_root(cache_dir, cache) -> Path:
    """Where stores (and remembered identities) live: ``--cache DIR``, else CACHE_DIR/score."""
    if cache is not None:
        return Path(cache)
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "score"


def _store_path(kind: str, key: str, *, cache_dir, cache) -> Path:
    if cache is not None:
        return Path(cache) / kind
    return _cache_root(cache_dir, cache) / f"{kind}-{key[:24]}"


def _identity(kind: str, spec: str, request: dict[str, Any], memo_root: Path) -> ModelIdentity:
    """The model's identity: remembered from an earlier run on the same files, else inspected
    (which imports torch and transformers and hashes the weights)."""
    key = memo_key(kind, spec, request)
    known = recall_identity(memo_root, key)
    if known is not None:
        return replace(known, spec=spec)
    from trainers.scoring import inspect_model

    identity = inspect_model(kind, spec, **request)
    remember_identity(memo_root, key, identity)
    return identity


class _Single:
    """The few torch.distributed helpers scoring uses, for one process, without torch."""

    rank, world_size, local_rank, main = 0, 1, 0, True

    def setup(self, device_type: str) -> _Single:
        return self

    def info(self) -> _Single:
        return self

    def barrier(self) -> None:
        pass

    def teardown(self) -> None:
        pass


def _distributed():
    """:mod:`trainers.dist` under torchrun; no-ops (and no torch import) in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from trainers import dist

        return dist
    return _Single()


def _opener(path: Path, identity: ModelIdentity, key: str):
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


def _free(device: str) -> None:
    """Give a GPU's memory back before the next model loads (the CPU frees by reference)."""
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# from per-text values to per-pair columns


def _assemble(frame: pl.DataFrame, values: dict[str, pl.DataFrame], as_margin: str) -> pl.DataFrame:
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


def _margin_figures(margin: pl.Series) -> dict[str, Any]:
    values = margin.drop_nulls()
    if values.len() == 0:
        return {"count": 0}
    quantiles = {f"p{int(q * 100):02d}": values.quantile(q) for q in (0.05, 0.5, 0.95)}
    return {"count": values.len(), "min": values.min(), **quantiles, "max": values.max()}


# --------------------------------------------------------------------------------------------------
# writing


def check_output(out: str | Path, *, force: bool) -> Path:
    """Refuse a non-Parquet OUT, or an existing one without ``force``, before any work."""
    out = Path(out)
    if out.suffix != ".parquet":
        raise InputError(
            "the output must be a .parquet file", where=out, fix="name it like scored.parquet"
        )
    if out.exists() and not force:
        raise InputError("output file exists", where=out, fix="pass --force to replace it")
    if out.exists() and not out.is_file():
        raise InputError("output path exists and is not a file", where=out)
    return out


def write_scores(result: ScoreResult, out: str | Path, *, force: bool = False) -> Path:
    """Write the scored pairs to ``out`` (Parquet) atomically, with the run's metadata.

    The footer's ``prefcurate.score`` key holds :meth:`ScoreResult.metadata` as JSON. Same input,
    flags and models give the same bytes, whether the scores came from the models or the cache.
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
    """The ``prefcurate.score`` metadata of a file written by :func:`write_scores`."""
    import pyarrow.parquet as pq

    raw = pq.read_metadata(path).metadata or {}
    return json.loads(raw[METADATA_KEY.encode()])
