"""The model-driven half of ``prefcurate score``: texts from the data floor, numbers from models.

:mod:`prefcurate.scoring.scores` (data floor) checks the flags, reads the pairs and keys each
distinct text, looks scores up in the cache, assembles the per-pair columns and writes the file;
:mod:`trainers.scoring` (trainer floor) loads a model and turns texts into numbers. This recipe
composes the two, step by step::

    >>> from prefcurate.data.io import open_pairs
    >>> from prefcurate.recipes.score import score_pairs
    >>> from prefcurate.scoring.scores import write_scores
    >>> result = score_pairs(open_pairs("pairs.jsonl"), embedding="models/minilm")  # doctest: +SKIP
    >>> write_scores(result, "scored.parquet")                                      # doctest: +SKIP

torch is imported only when a text is missing from the cache (or under torchrun), so a rerun whose
texts are all cached needs neither torch nor the weights.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.base.hub import MODEL, resolve_hub
from prefcurate.data.io import PairSource
from prefcurate.scoring.cache import memo_key, recall_identity, remember_identity
from prefcurate.scoring.scores import (
    SCORE_COLUMNS,
    Progress,
    ScoreResult,
    ScorerRun,
    assemble,
    cache_root,
    check_args,
    margin_figures,
    read_scoring_frame,
    store_opener,
    store_path,
    texts_for,
)
from prefcurate.scoring.spec import EMBEDDING, FLAGS, REFERENCE, REWARD, ModelIdentity

#: Padded tokens per batch when neither --batch-size nor --max-tokens-per-batch is given.
DEFAULT_MAX_TOKENS = 16_384


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
    """Score every pair of ``source`` with the given models; see :mod:`prefcurate.scoring.scores`.

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
    sizes = {"batch_size": batch_size, "max_tokens_per_batch": max_tokens_per_batch,
             "max_length": max_length}  # fmt: skip
    as_margin = _check(models, as_margin, sizes, device, precision, cache, cache_dir)
    request = {"device": device, "precision": precision, "max_length": max_length,
               "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}  # fmt: skip
    identities = _identities(models, request, cache_root(cache_dir, cache) / "identities")
    frame, input_figures = read_scoring_frame(source)
    if batch_size is None and max_tokens_per_batch is None:
        max_tokens_per_batch = DEFAULT_MAX_TOKENS
    options = _Options(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                       batch_size=batch_size, max_tokens=max_tokens_per_batch,
                       batch_order=batch_order, flush_every=flush_every,
                       progress=progress)  # fmt: skip
    runs, values, world_size, main = _score_all(
        frame, identities, cache_dir=cache_dir, cache=cache, options=options
    )
    result = ScoreResult(
        frame=None,
        runs=runs,
        as_margin=as_margin,
        input=input_figures,
        layout=str(source.layout),
        world_size=world_size,
        pairs=frame.height,
        settings={
            "reward_model": reward_model,
            "reference": reference,
            "embedding": embedding,
            **sizes,
            "device": device,
            "precision": precision,
        },  # fmt: skip
    )
    if main:
        result.frame = assemble(frame, values, as_margin)
        result.margin = margin_figures(result.frame["margin"])
    return result


def _check(models, as_margin, sizes, device, precision, cache, cache_dir) -> str:
    """Every flag checked before any data is read; returns the score column that is the margin."""
    minimum = {"batch_size": 1, "max_tokens_per_batch": 1, "max_length": 2}
    flags = {"--" + k.replace("_", "-"): (v, minimum[k]) for k, v in sizes.items()}
    return check_args(
        models, as_margin, sizes=flags, device=device, precision=precision, cache=cache,
        cache_dir=cache_dir,
    )  # fmt: skip


@dataclass(frozen=True)
class _Options:
    """How the missing texts are scored: model loading, batching, cache flushes, progress."""

    trust_remote_code: bool
    allow_pickle: bool
    batch_size: int | None
    max_tokens: int | None
    batch_order: str
    flush_every: int
    progress: Progress | None


def _identities(
    models: dict[str, str], request: dict[str, Any], memo_root: Path
) -> dict[str, ModelIdentity]:
    """Each model's identity: remembered from an earlier run on the same files, else inspected
    (which imports torch and transformers and hashes the weights). A Hugging Face name
    (``owner/name``) is its snapshot in the local Hugging Face cache (prefcurate.base.hub)."""
    identities = {}
    for kind, spec in models.items():
        spec = str(resolve_hub(spec, repo_type=MODEL, flag=FLAGS[kind]) or spec)
        key = memo_key(kind, spec, request)
        known = recall_identity(memo_root, key)
        if known is not None:
            identities[kind] = replace(known, spec=spec)
            continue
        from trainers.scoring import inspect_model

        identities[kind] = inspect_model(kind, spec, **request)
        remember_identity(memo_root, key, identities[kind])
    return identities


def _score_all(
    frame: pl.DataFrame,
    identities: dict[str, ModelIdentity],
    *,
    cache_dir: str | Path | None,
    cache: str | Path | None,
    options: _Options,
) -> tuple[list[ScorerRun], dict[str, pl.DataFrame], int, bool]:
    """Every model in turn, inside one (torchrun or single-process) group: the runs, each kind's
    per-text table (rank 0 only), the world size and whether this is rank 0."""
    dist = _distributed()
    info = dist.setup(next(iter(identities.values())).device)
    runs: list[ScorerRun] = []
    values: dict[str, pl.DataFrame] = {}
    try:
        for kind, identity in identities.items():
            run, table = _score_kind(
                frame, identity, dist=dist, cache_dir=cache_dir, cache=cache, options=options
            )
            runs.append(run)
            if table is not None:
                values[kind] = table
    finally:
        dist.teardown()
    return runs, values, info.world_size, info.main


def _score_kind(
    frame: pl.DataFrame,
    identity: ModelIdentity,
    *,
    dist,
    cache_dir,
    cache,
    options: _Options,
) -> tuple[ScorerRun, pl.DataFrame | None]:
    """Score the distinct texts one model needs: cache first, then the missing ones, sharded."""
    started = time.perf_counter()
    info = dist.info()
    kind = identity.kind
    texts = texts_for(frame, kind)
    key = identity.key()
    path = store_path(kind, key, cache_dir=cache_dir, cache=cache)
    open_store = store_opener(path, identity, key)
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
        store=str(path),
        texts=texts.height,
        cached=found.height,
        scored=missing.height,
    )
    if missing.height:
        _score_missing(missing, identity, store, run, info=info, options=options)
    dist.barrier()  # every rank's parts are written
    table = None
    if info.main:
        table = store.lookup(texts["item"])
        if table.height != texts.height:
            raise InputError(
                f"{texts.height - table.height} scores are missing from the cache after scoring: "
                "the cache is not shared between the processes",
                where=path,
                fix="pass a --cache-dir that every process can read and write",
            )
        run.truncated = int(table["truncated"].sum())
        store.compact()
    run.seconds = time.perf_counter() - started
    return run, table


def _score_missing(
    missing: pl.DataFrame,
    identity: ModelIdentity,
    store,
    run: ScorerRun,
    *,
    info,
    options: _Options,
) -> None:
    """Load the model, then score this rank's share of the missing texts into the store."""
    from trainers import scoring

    loading = time.perf_counter()
    scorer = scoring.load_scorer(
        identity,
        local_rank=info.local_rank,
        trust_remote_code=options.trust_remote_code,
        allow_pickle=options.allow_pickle,
    )
    scoring_started = time.perf_counter()
    run.load_seconds = scoring_started - loading
    encoded = scorer.encode(missing["prompt"].to_list(), missing["response"].to_list())
    batches = scoring.plan_batches(
        encoded.lengths,
        batch_size=options.batch_size,
        max_tokens=options.max_tokens,
        order=options.batch_order,
    )
    mine = batches[info.rank :: info.world_size]
    total = int(sum(len(b) for b in mine))
    items = missing["item"].to_list()
    lengths, done = encoded.lengths, 0
    with store.writer(flush_every=options.flush_every) as writer:
        for batch in mine:
            values = scorer.run(encoded, batch)
            writer.add(
                [items[i] for i in batch.tolist()],
                values,
                lengths[batch],
                encoded.truncated[batch],
            )
            done += len(batch)
            if options.progress is not None and info.main:
                options.progress(run.kind, done, total)
    run.score_seconds = time.perf_counter() - scoring_started
    del scorer
    _free(identity.device)


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


def _free(device: str) -> None:
    """Give a GPU's memory back before the next model loads (the CPU frees by reference)."""
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
