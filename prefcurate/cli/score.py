"""``prefcurate score``: margins from models, over the recipe :mod:`prefcurate.recipes.score`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from prefcurate.base.errors import InputError
from prefcurate.cli.common import (
    DEFAULT_COLUMNS,
    AllowPickleOpt,
    CatalogOpt,
    Columns,
    DataArg,
    ForceOpt,
    app,
    check_catalog,
    column_options,
    echo,
    record_run,
)

_MODELS = "Models (at least one)"
_BATCHING = "Batching, device, cache"


@app.command()
@column_options
def score(
    data: DataArg,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output .parquet file (written atomically).", show_default=False
        ),
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            "--reward-model",
            help="Sequence-classification model dir: "
            "margin_rm = r(prompt, chosen) − r(prompt, rejected).",
            rich_help_panel=_MODELS,
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Causal LM dir: margin_ref = mean token log-prob of chosen − of rejected.",
            rich_help_panel=_MODELS,
        ),
    ] = None,
    embedding: Annotated[
        str | None,
        typer.Option(
            "--embedding",
            help="Sentence encoder dir: embed_distance = 1 − cos(chosen, rejected), in [0, 2].",
            rich_help_panel=_MODELS,
        ),
    ] = None,
    as_margin: Annotated[
        str | None,
        typer.Option(
            "--as-margin",
            help="Score column that becomes 'margin': margin_rm, margin_ref, margin_ref_sum or "
            "embed_distance (default: the first of margin_rm, margin_ref, embed_distance made).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Texts per batch, at most.", rich_help_panel=_BATCHING),
    ] = None,
    max_tokens_per_batch: Annotated[
        int | None,
        typer.Option(
            "--max-tokens-per-batch",
            help="Padded tokens per batch, at most (default 16384 when --batch-size is not given).",
            rich_help_panel=_BATCHING,
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            help="Tokens per text, at most (default: the model's limit); longer ones are cut.",
            rich_help_panel=_BATCHING,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda.", rich_help_panel=_BATCHING)] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="auto|bf16|fp32; auto: bf16 on CUDA, fp32 on the CPU.", rich_help_panel=_BATCHING
        ),
    ] = "auto",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Score cache root (default: $PREFCURATE_CACHE_DIR or ~/.cache/prefcurate).",
            rich_help_panel=_BATCHING,
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="A cache directory of its own, bound to these models (instead of --cache-dir).",
            rich_help_panel=_BATCHING,
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow a model directory's own code.")
    ] = False,
    allow_pickle: AllowPickleOpt = False,
    force: ForceOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was done as JSON to stdout.")
    ] = False,
    catalog: CatalogOpt = None,
    columns: Columns = DEFAULT_COLUMNS,
) -> None:
    """Give every pair a margin from a reward model, a reference policy or an embedding model.

    For data without ratings: OUT keeps the input's columns, adds the score columns and sets
    'margin' from --as-margin, so analyze and route read it like any other data.

    Each text is scored once and cached by model and text hash: a rerun scores only what is
    missing. Under torchrun the batches are shared out across processes. See docs/score.md.

    Example:
        prefcurate score pairs.jsonl --embedding models/all-MiniLM-L6-v2 --out scored.parquet
    """
    import json
    from datetime import datetime, timezone

    from prefcurate.base.progress import bars
    from prefcurate.recipes.score import score_pairs
    from prefcurate.scoring.scores import check_output, write_scores

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    check_catalog(catalog)  # a wrong --catalog or timeout fails before any work
    if out is None:
        raise InputError("--out is required", fix="pass --out OUT.parquet")
    rank0 = os.environ.get("RANK", "0") == "0"
    check_output(out, force=force, inputs=[data])  # before reading: fail fast, write nothing
    pairs = columns.open(data)
    with bars(unit="pairs") as update:
        result = score_pairs(
            pairs,
            reward_model=reward_model,
            reference=reference,
            embedding=embedding,
            as_margin=as_margin,
            batch_size=batch_size,
            max_tokens_per_batch=max_tokens_per_batch,
            max_length=max_length,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
            cache=cache,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            progress=lambda kind, done, total: update(f"scoring ({kind})", done / 2, total / 2),
        )
    if not rank0:
        return
    write_scores(result, out, force=force)
    document = result.to_dict()
    record_run(
        "score",
        catalog=catalog,
        inputs=[result.input],
        params=result.params(),
        figures={k: document[k] for k in ("pairs", "as_margin", "margin", "runs", "world_size")},
        outputs={"file": str(out.resolve())},
        summary=result.summary(),
        started_at=started_at,
    )
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        echo(f"{result.summary()} -> {out}")
