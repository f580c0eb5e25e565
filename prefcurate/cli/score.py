"""``prefcurate score``: margins from models, over the recipe :mod:`prefcurate.recipes.score`."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

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
    column_options,
    echo,
    options,
    recorded,
)

_MODELS = "Models (at least one)"
_BATCHING = "Batching, device, cache"


@dataclass(frozen=True)
class ScoreOptions:
    """``prefcurate score``'s flags (the columns come as :class:`Columns`)."""

    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output .parquet file (written atomically).", show_default=False
        ),
    ] = None
    reward_model: Annotated[
        str | None,
        typer.Option(
            "--reward-model",
            help="Sequence-classification model dir: "
            "margin_rm = r(prompt, chosen) − r(prompt, rejected).",
            rich_help_panel=_MODELS,
        ),
    ] = None
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Causal LM dir: margin_ref = mean token log-prob of chosen − of rejected.",
            rich_help_panel=_MODELS,
        ),
    ] = None
    embedding: Annotated[
        str | None,
        typer.Option(
            "--embedding",
            help="Sentence encoder dir: embed_distance = 1 − cos(chosen, rejected), in [0, 2].",
            rich_help_panel=_MODELS,
        ),
    ] = None
    as_margin: Annotated[
        str | None,
        typer.Option(
            "--as-margin",
            help="Score column that becomes 'margin': margin_rm, margin_ref, margin_ref_sum or "
            "embed_distance (default: the first of margin_rm, margin_ref, embed_distance made).",
            show_default=False,
        ),
    ] = None
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Texts per batch, at most.", rich_help_panel=_BATCHING),
    ] = None
    max_tokens_per_batch: Annotated[
        int | None,
        typer.Option(
            "--max-tokens-per-batch",
            help="Padded tokens per batch, at most (default 16384 when --batch-size is not given).",
            rich_help_panel=_BATCHING,
        ),
    ] = None
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            help="Tokens per text, at most (default: the model's limit); longer ones are cut.",
            rich_help_panel=_BATCHING,
        ),
    ] = None
    device: Annotated[str, typer.Option(help="auto|cpu|cuda.", rich_help_panel=_BATCHING)] = "auto"
    precision: Annotated[
        str,
        typer.Option(
            help="auto|bf16|fp32; auto: bf16 on CUDA, fp32 on the CPU.", rich_help_panel=_BATCHING
        ),
    ] = "auto"
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Score cache root (default: $PREFCURATE_CACHE_DIR or ~/.cache/prefcurate).",
            rich_help_panel=_BATCHING,
        ),
    ] = None
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="A cache directory of its own, bound to these models (instead of --cache-dir).",
            rich_help_panel=_BATCHING,
        ),
    ] = None
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow a model directory's own code.")
    ] = False
    allow_pickle: AllowPickleOpt = False
    force: ForceOpt = False
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was done as JSON to stdout.")
    ] = False
    catalog: CatalogOpt = None

    def scoring(self) -> dict[str, Any]:
        """The keywords of :func:`prefcurate.recipes.score.score_pairs` these flags set."""
        skip = ("out", "force", "as_json", "catalog")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


@app.command()
@options(ScoreOptions)
@column_options
def score(data: DataArg, opts: ScoreOptions, columns: Columns = DEFAULT_COLUMNS) -> None:
    """Give every pair a margin from a reward model, a reference policy or an embedding model.

    For data without ratings: OUT keeps the input's columns, adds the score columns and sets
    'margin' from --as-margin, so analyze and route read it like any other data.

    Each text is scored once and cached by model and text hash: a rerun scores only what is
    missing. Under torchrun the batches are shared out across processes. See docs/score.md.

    Example:
        prefcurate score pairs.jsonl --embedding minilm/ --out scored.parquet
    """
    import json

    from prefcurate.base.progress import bars
    from prefcurate.recipes.score import score_pairs
    from prefcurate.scoring.scores import check_output, write_scores

    with recorded("score", opts.catalog) as run:
        if opts.out is None:
            raise InputError("--out is required", fix="pass --out OUT.parquet")
        check_output(opts.out, force=opts.force, inputs=[data])  # fail fast, write nothing
        pairs = columns.open(data)
        with bars(unit="pairs") as update:
            result = score_pairs(
                pairs,
                **opts.scoring(),
                progress=lambda kind, done, total: update(f"scoring ({kind})", done / 2, total / 2),
            )
        if os.environ.get("RANK", "0") != "0":
            return
        write_scores(result, opts.out, force=opts.force)
        document = result.to_dict()
        shown = ("pairs", "as_margin", "margin", "runs", "world_size")
        run.record(
            inputs=[result.input],
            params=result.params(),
            figures={k: document[k] for k in shown},
            outputs={"file": str(opts.out.resolve())},
            summary=result.summary(),
        )
    if opts.as_json:
        print(json.dumps(document, indent=2))
    else:
        echo(f"{result.summary()} -> {opts.out}")
