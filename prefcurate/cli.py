"""The ``prefcurate`` command line: one thin function per command.

Each command parses its flags, calls one library function and renders what it returns. Errors are
translated here, at the edge: an :class:`~prefcurate.errors.InputError` becomes one line on stderr
and exit code 2; anything unexpected becomes one line with "please report" and exit code 1. The
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from prefcurate.errors import InputError, PrefcurateError, one_line
from prefcurate.schema import Binarize, ColumnMap

app = typer.Typer(
    name="prefcurate",
    help="Curate preference data by margin and train MixDPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _click_class(name: str) -> type[Exception]:
    """Typer >= 0.29 vendors click; find its exception classes whichever click is in use."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


class _State:
    debug = False
    argv: list[str] = []  # the command line being run, recorded in the catalog


STATE = _State()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="PREFCURATE_DEBUG")
    ] = False,
) -> None:
    """prefcurate: analyze, route and train on preference data."""
    STATE.debug = STATE.debug or debug


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    args = list(sys.argv[1:] if argv is None else argv)
    STATE.argv = args
    # --debug works before or after the command name: take it out before Typer parses.
    debug = "--debug" in args or os.environ.get("PREFCURATE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    STATE.debug = debug
    try:
        result = app(args=args, prog_name="prefcurate", standalone_mode=False)
        return int(result or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        if debug:
            raise
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
        return 2
    except _ClickException as exc:
        if debug:
            raise
        print(f"error: {one_line(exc.format_message())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PrefcurateError as exc:
        if debug:
            raise
        if isinstance(exc, InputError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"error: {one_line(exc)} (please report)", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the edge where every failure becomes one line
        if debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {one_line(exc)} "
            "(please report at the prefcurate issue tracker; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


# --------------------------------------------------------------------------------------------------
# options shared by every command that reads data

_COLUMNS = "Columns (override detection)"

DataArg = Annotated[
    str, typer.Argument(help="Preference data: a file, directory or glob.", show_default=False)
]
PromptOpt = Annotated[
    str | None,
    typer.Option("--prompt", help="Column or dotted path of the prompt.", rich_help_panel=_COLUMNS),
]
ChosenOpt = Annotated[
    str | None,
    typer.Option("--chosen", help="Column of the chosen response.", rich_help_panel=_COLUMNS),
]
RejectedOpt = Annotated[
    str | None,
    typer.Option("--rejected", help="Column of the rejected response.", rich_help_panel=_COLUMNS),
]
ScoreChosenOpt = Annotated[
    str | None,
    typer.Option(
        "--score-chosen",
        help="Column or dotted path of the chosen rating, e.g. metadata.score_chosen.",
        rich_help_panel=_COLUMNS,
    ),
]
ScoreRejectedOpt = Annotated[
    str | None,
    typer.Option(
        "--score-rejected", help="Column of the rejected rating.", rich_help_panel=_COLUMNS
    ),
]
SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source", help="Column naming each pair's sub-dataset.", rich_help_panel=_COLUMNS
    ),
]
BinarizeOpt = Annotated[
    Binarize,
    typer.Option(
        "--binarize",
        help="How rows with several rated completions become pairs.",
        rich_help_panel=_COLUMNS,
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Split of a datasets folder or HF repository (default: train).",
        rich_help_panel=_COLUMNS,
    ),
]


def open_source(
    data: str,
    *,
    prompt: str | None = None,
    chosen: str | None = None,
    rejected: str | None = None,
    score_chosen: str | None = None,
    score_rejected: str | None = None,
    source: str | None = None,
    binarize: Binarize = Binarize.BEST_VS_WORST,
    split: str | None = None,
    seed: int = 0,
):
    """The :class:`~prefcurate.io.PairSource` for a command's DATA argument and column flags."""
    from prefcurate.io import open_pairs

    columns = ColumnMap(prompt, chosen, rejected, score_chosen, score_rejected, source)
    return open_pairs(data, columns=columns, binarize=binarize, seed=seed, split=split)


ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        "-t",
        help="τ: pairs with margin < τ (strict) go to SFT, the rest to DPO.",
        show_default=False,
    ),
]
SftFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--sft-fraction",
        "-q",
        help="Route about this share (0-1) of the hardest pairs to SFT; τ is picked to fit.",
        show_default=False,
    ),
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Read pickle (.bin) weights when a model has no safetensors (trusted files only).",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]


# --------------------------------------------------------------------------------------------------
# the catalog: shared option and the recording helper every command that runs something calls

CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        help="Catalog file (default .prefcurate/catalog.duckdb; 'off' records nothing).",
        envvar="PREFCURATE_CATALOG",
        show_default=False,
    ),
]


def explicit_flags(ctx: typer.Context, **values: object) -> dict[str, object]:
    """The subset of ``values`` the user typed (not left at their defaults): they beat a recipe."""

    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    return {k: v for k, v in values.items() if typed(k)}


def resolve_recipe(command: str, recipe: str | None, explicit: dict[str, object]) -> dict:
    """``--recipe``'s settings for ``command`` with the typed flags on top (prefcurate.presets)."""
    from prefcurate.presets import resolve

    return resolve(command, recipe, explicit)


def record_run(
    kind: str,
    *,
    catalog: str | None,
    inputs: list[dict] | tuple = (),
    params: dict | None = None,
    figures: dict | None = None,
    outputs: dict | None = None,
    summary: str | None = None,
    command: str | None = None,
    started_at=None,
    metrics=(),
    status: str = "ok",
) -> str | None:
    """Record a finished run in the catalog and return its id.

    Called by analyze, route and train after their outputs are written. A catalog that cannot be
    recorded into (locked for too long, unwritable) costs a warning line on stderr, never the
    run's result: the command still succeeds. ``catalog='off'`` records nothing.
    """
    import shlex

    from prefcurate import catalog as cat

    if cat.catalog_path(catalog) is None:
        return None
    try:
        return cat.record_run(
            kind,
            inputs=inputs,
            params=params,
            figures=figures,
            outputs=outputs,
            summary=summary,
            command=command or shlex.join(["prefcurate", *STATE.argv]),
            started_at=started_at,
            metrics=metrics,
            status=status,
            path=catalog,
        )
    except InputError as exc:
        print(f"warning: run not recorded in the catalog: {exc}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------------------------------
# analyze, synth


@app.command("analyze")
def analyze_command(
    data: DataArg,
    threshold: ThresholdOpt = None,
    sft_fraction: SftFractionOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write report.json and PNG plots into this new folder."),
    ] = None,
    force: ForceOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print report.json to stdout, and nothing else.")
    ] = False,
    catalog: CatalogOpt = None,
    prompt: PromptOpt = None,
    chosen: ChosenOpt = None,
    rejected: RejectedOpt = None,
    score_chosen: ScoreChosenOpt = None,
    score_rejected: ScoreRejectedOpt = None,
    source: SourceOpt = None,
    binarize: BinarizeOpt = Binarize.BEST_VS_WORST,
    split: SplitOpt = None,
) -> None:
    """Show what is in a preference dataset and what a margin threshold would route.

    Margins (quantiles, histogram, ties, inversions), lengths and length bias, flags, sources.

    With --threshold τ or --sft-fraction q: the pairs going to SFT (margin < τ) and to DPO.

    Every key of report.json is documented in docs/report.md.

    Example:
        prefcurate analyze ../shared/data/ultrafeedback_1k.jsonl --threshold 0.5 --out report/
    """
    from datetime import datetime, timezone

    from prefcurate.analyze import analyze, check_routing_args
    from prefcurate.io import check_new_dir
    from prefcurate.progress import status
    from prefcurate.report import print_json, render_report

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    check_routing_args(threshold, sft_fraction)
    if out is not None:
        check_new_dir(out, force=force)
    pairs = open_source(
        data,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=score_chosen,
        score_rejected=score_rejected,
        source=source,
        binarize=binarize,
        split=split,
    )
    with status(f"analyzing {pairs.raw.display}"):
        report = analyze(pairs, threshold=threshold, sft_fraction=sft_fraction)
    if json_out:
        print_json(report)
    else:
        from rich.console import Console

        render_report(report, Console(), description=pairs.describe())
    if out is not None:
        _write_report_dir(report, out, force=force, quiet=json_out)
    core = report.to_dict()
    record_run(
        "analyze",
        catalog=catalog,
        inputs=[{**report.input, "rows": report.rows}],
        params={"threshold": threshold, "sft_fraction": sft_fraction, "layout": report.layout},
        figures={k: core.get(k) for k in ("rows", "margin", "routing", "lengths", "flags")},
        outputs={"dir": str(out.resolve())} if out is not None else {},
        summary=report.summary(),
        started_at=started_at,
    )


def _write_report_dir(report, out: Path, *, force: bool, quiet: bool) -> None:
    """report.json and the PNGs, all or nothing (an atomic directory)."""
    from prefcurate.io import atomic_dir
    from prefcurate.plots import PLOT_FILES, write_plots
    from prefcurate.progress import bar, stderr

    with atomic_dir(out, force=force) as tmp, bar("writing plots", len(PLOT_FILES)) as progress:
        (tmp / "report.json").write_text(report.to_json(), encoding="utf-8")
        written = write_plots(report, tmp, on_written=lambda _: progress.advance(0))
    if not quiet:
        names = ", ".join(["report.json", *(p.name for p in written)])
        stderr.print(f"wrote {out}/: {names}", highlight=False)


@app.command("synth")
def synth_command(
    out: Annotated[
        Path, typer.Argument(help="Output file: .jsonl or .parquet.", show_default=False)
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of pairs.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 0,
    flaw_rate: Annotated[
        float,
        typer.Option(
            "--flaw-rate",
            help="Share of rows given each flaw (inverted, identical, duplicate prompt or pair).",
        ),
    ] = 0.001,
    force: ForceOpt = False,
) -> None:
    """Write synthetic preference pairs with UltraFeedback-like ratings and realistic lengths.

    Ratings 1-10 in steps of 0.5, about 12% ties, a long tail of large margins, seven sources.

    A few planted flaws (--flaw-rate) give analyze something to find. The model: docs/synth.md.

    Example:
        prefcurate synth pairs.parquet --n 100000 --seed 0
    """
    import time

    from prefcurate.progress import bar, stderr
    from prefcurate.synth import output_format, write_synth

    output_format(out)  # a bad suffix fails before any work
    started = time.perf_counter()
    with bar("synthesising pairs", n, unit="pairs") as progress:
        write_synth(
            out,
            n=n,
            seed=seed,
            flaw_rate=flaw_rate,
            force=force,
            progress=lambda rows: progress.advance(0, rows),
        )
    size = out.stat().st_size / 1e6
    stderr.print(
        f"wrote {n:,} pairs to {out} ({size:,.1f} MB) in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )


# --------------------------------------------------------------------------------------------------
# route


@app.command()
def route(
    ctx: typer.Context,
    data: DataArg,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output directory (written atomically).", show_default=False
        ),
    ] = None,
    threshold: ThresholdOpt = None,
    sft_fraction: SftFractionOpt = None,
    mode: Annotated[
        str, typer.Option("--mode", help="mixdpo | dpo | filter | sft (baselines from the data).")
    ] = "mixdpo",
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            help="curriculum (margin descending) | random | as-is. Default: curriculum for "
            "mixdpo and filter, random (seeded) for dpo and sft.",
            show_default=False,
        ),
    ] = None,
    soft: Annotated[
        float | None,
        typer.Option(
            "--soft",
            help="Soft routing at temperature T: a weight column σ((τ − margin)/T), the SFT "
            "share of each pair's loss (mixdpo).",
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="paper: MixDPO's main setting (mixdpo, τ 0.5, curriculum); flags override it.",
            show_default=False,
        ),
    ] = None,
    stages: Annotated[
        int | None,
        typer.Option("--stages", help="Cut the curriculum into K stages, shuffled within each."),
    ] = None,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            "--drop",
            help='Drop pairs matching a DuckDB SQL predicate, e.g. "chosen = rejected" '
            "(repeatable).",
        ),
    ] = None,
    eval_fraction: Annotated[
        float | None,
        typer.Option("--eval-fraction", help="Hold out this share as eval.parquet (stratified)."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of shuffles and the held-out choice.")
    ] = 0,
    export: Annotated[
        str | None, typer.Option("--export", help="trl: also write dpo.jsonl and sft.jsonl.")
    ] = None,
    force: ForceOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print plan.json to stdout.")] = False,
    catalog: CatalogOpt = None,
    prompt: PromptOpt = None,
    chosen: ChosenOpt = None,
    rejected: RejectedOpt = None,
    score_chosen: ScoreChosenOpt = None,
    score_rejected: ScoreRejectedOpt = None,
    source: SourceOpt = None,
    binarize: BinarizeOpt = Binarize.BEST_VS_WORST,
    split: SplitOpt = None,
) -> None:
    """Route each pair to DPO or SFT by its margin and write curriculum-ordered splits.

    Writes train.parquet (rank order, with route, rank and stage columns) and plan.json.

    --eval-fraction adds eval.parquet; --export trl adds dpo.jsonl and sft.jsonl for TRL.

    --recipe paper is the paper's route (mixdpo, τ 0.5, curriculum order) in one word.

    Example:
        prefcurate route ../shared/data/ultrafeedback_1k.jsonl --recipe paper --out out/uf
    """
    import json
    from datetime import datetime, timezone

    from prefcurate.io import check_new_dir
    from prefcurate.progress import status
    from prefcurate.route import plan_routes, write_route, write_split_plots

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    if out is None:
        raise InputError("--out is required", fix="pass --out DIR for the split files")
    check_new_dir(out, force=force)  # before reading anything: fail fast, write nothing
    if export is not None and export != "trl":
        raise InputError(f"--export must be 'trl', got {export!r}")
    with status("reading and routing"):
        pairs = open_source(
            data,
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            score_chosen=score_chosen,
            score_rejected=score_rejected,
            source=source,
            binarize=binarize,
            split=split,
            seed=seed,
        )
        chosen_flags = explicit_flags(
            ctx, mode=mode, threshold=threshold, sft_fraction=sft_fraction, order=order
        )
        settings = resolve_recipe("route", recipe, chosen_flags)
        plan = plan_routes(
            pairs,
            mode=settings.get("mode", mode),
            threshold=settings.get("threshold"),
            sft_fraction=settings.get("sft_fraction"),
            order=settings.get("order"),
            stages=stages,
            drop=drop or (),
            eval_fraction=eval_fraction,
            seed=seed,
            soft=soft,
            recipe=recipe,
        )
    with status(f"writing {out}"):
        document = write_route(plan, out, force=force, export=export, plots=write_split_plots)
    params = {
        k: v for k, v in document.items() if k not in ("version", "input", "counts", "outputs")
    }
    record_run(
        "route",
        catalog=catalog,
        inputs=[plan.input],
        params=params,
        figures={"threshold": plan.threshold, **plan.counts},
        outputs={"dir": str(out.resolve()), **document["outputs"]},
        summary=plan.summary(),
        started_at=started_at,
    )
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print(f"{plan.summary()} -> {out}")


# --------------------------------------------------------------------------------------------------
# score

_MODELS = "Models (at least one)"
_BATCHING = "Batching, device, cache"


@app.command()
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
    prompt: PromptOpt = None,
    chosen: ChosenOpt = None,
    rejected: RejectedOpt = None,
    score_chosen: ScoreChosenOpt = None,
    score_rejected: ScoreRejectedOpt = None,
    source: SourceOpt = None,
    binarize: BinarizeOpt = Binarize.BEST_VS_WORST,
    split: SplitOpt = None,
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

    from prefcurate.progress import bars
    from prefcurate.score import check_output, score_pairs, write_scores

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    if out is None:
        raise InputError("--out is required", fix="pass --out OUT.parquet")
    rank0 = os.environ.get("RANK", "0") == "0"
    check_output(out, force=force)  # before reading anything: fail fast, write nothing
    pairs = open_source(
        data,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=score_chosen,
        score_rejected=score_rejected,
        source=source,
        binarize=binarize,
        split=split,
    )
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
        params={
            "layout": result.layout,
            "reward_model": reward_model,
            "reference": reference,
            "embedding": embedding,
            "as_margin": result.as_margin,
            "batch_size": batch_size,
            "max_tokens_per_batch": max_tokens_per_batch,
            "max_length": max_length,
            "device": device,
            "precision": precision,
        },
        figures={k: document[k] for k in ("pairs", "as_margin", "margin", "runs", "world_size")},
        outputs={"file": str(out.resolve())},
        summary=result.summary(),
        started_at=started_at,
    )
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print(f"{result.summary()} -> {out}")


# --------------------------------------------------------------------------------------------------
# train and plot


@app.command()
def train(
    ctx: typer.Context,
    split_dir: Annotated[
        Path,
        typer.Argument(help="A split directory written by 'prefcurate route'.", show_default=False),
    ],
    model: Annotated[
        str, typer.Option("--model", help="A local save_pretrained directory, or 'tiny'.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The run directory to write.")],
    ref_model: Annotated[
        str | None,
        typer.Option(
            "--ref-model", help="Reference model directory (default: the initial policy)."
        ),
    ] = None,
    loss: Annotated[
        str, typer.Option("--loss", help="Preference loss of dpo pairs: sigmoid|ipo|hinge|robust.")
    ] = "sigmoid",
    beta: Annotated[float, typer.Option(help="β, the DPO inverse temperature.")] = 0.1,
    label_smoothing: Annotated[
        float, typer.Option(help="ε of conservative (sigmoid) or robust DPO; MixDPO uses 0.1.")
    ] = 0.0,
    sft_weight: Annotated[float, typer.Option(help="Weight of the sft pairs' NLL.")] = 1.0,
    nll_weight: Annotated[
        float, typer.Option(help="Adds w·NLL of the chosen response to every dpo pair (DPO+NLL).")
    ] = 0.0,
    shuffle: Annotated[
        bool,
        typer.Option(
            "--shuffle", help="Shuffle each epoch with --seed (default: the split's rank order)."
        ),
    ] = False,
    epochs: Annotated[int, typer.Option(help="Passes over the split.")] = 1,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps.")
    ] = None,
    max_length: Annotated[int, typer.Option(help="Tokens of prompt + response, at most.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Pairs per micro-batch per process.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 5e-7,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps of linear warmup.")] = 0.1,
    lr_schedule: Annotated[
        str,
        typer.Option(
            help="After the warmup: cosine decay, or constant (keeps the curriculum's last, "
            "hardest pairs from training at almost no learning rate)."
        ),
    ] = "cosine",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    max_grad_norm: Annotated[
        float, typer.Option(help="Gradient clipping norm (0: no clipping).")
    ] = 1.0,
    device: Annotated[str, typer.Option(help="Where to train: auto|cpu|cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto|bf16|fp32; auto: bf16 autocast on CUDA, fp32 on the CPU.")
    ] = "auto",
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute activations to save memory.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle, the tiny model and torch.")] = 0,
    save_every: Annotated[
        int, typer.Option(help="Checkpoint every N optimizer steps (0: only the final model).")
    ] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start over in a run directory that has outputs.")
    ] = False,
    catalog: CatalogOpt = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Token and reference log-prob cache (default: ~/.cache/prefcurate)."),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow the model directory's own code.")
    ] = False,
    allow_pickle: AllowPickleOpt = False,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="paper: β 0.01, label smoothing 0.1, lr 1e-6, cosine with 10% warmup, one "
            "epoch, the split's order; flags override it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train MixDPO (or a baseline) on a routed split; each pair's loss follows its route.

    Writes RUN_DIR/metrics.jsonl, run.json, checkpoints/step-N/ and the final model/.
    Under torchrun each process takes a strided share of every global batch.

    --recipe paper trains with the paper's settings (run.json records the recipe).

    Example:
        prefcurate train splits/uf --model tiny --out runs/tiny --max-length 256 --lr 1e-3
    """
    import dataclasses
    from datetime import datetime, timezone

    from prefcurate.runplots import read_metrics
    from trainers.loop import NonFiniteLossError, TrainConfig
    from trainers.loop import train as run_training
    from trainers.progress import RichReporter

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    recipe_settings = resolve_recipe(
        "train",
        recipe,
        explicit_flags(
            ctx, loss=loss, beta=beta, label_smoothing=label_smoothing, lr=lr,
            warmup_ratio=warmup_ratio, lr_schedule=lr_schedule, epochs=epochs, shuffle=shuffle,
        ),
    )  # fmt: skip
    loss, beta, label_smoothing = (
        recipe_settings.get(k, v)
        for k, v in (("loss", loss), ("beta", beta), ("label_smoothing", label_smoothing))
    )
    lr, warmup_ratio, lr_schedule, epochs, shuffle = (
        recipe_settings.get(k, v)
        for k, v in (
            ("lr", lr), ("warmup_ratio", warmup_ratio), ("lr_schedule", lr_schedule),
            ("epochs", epochs), ("shuffle", shuffle),
        )
    )  # fmt: skip
    config = TrainConfig(
        split_dir=split_dir, model=model, out=out, ref_model=ref_model, loss=loss, beta=beta,
        label_smoothing=label_smoothing, sft_weight=sft_weight, nll_weight=nll_weight,
        shuffle=shuffle, epochs=epochs, max_steps=max_steps, max_length=max_length,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_ratio=warmup_ratio,
        lr_schedule=lr_schedule, recipe=recipe,
        weight_decay=weight_decay, max_grad_norm=max_grad_norm, device=device,
        precision=precision, gradient_checkpointing=gradient_checkpointing, seed=seed,
        save_every=save_every, resume=resume, force=force, cache_dir=cache_dir,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
    )  # fmt: skip
    try:
        result = run_training(config, reporter=RichReporter())
    except NonFiniteLossError as exc:  # the user's run diverged: say so, not "please report"
        if STATE.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    if os.environ.get("RANK", "0") != "0":
        return
    record_run(
        "train",
        catalog=catalog,
        inputs=[{"path": str(split_dir), "rows": result.pairs["pairs"]}],
        params=dataclasses.asdict(config),
        figures=result.to_dict(),
        outputs={"dir": str(result.run_dir), "model": str(result.model_dir)},
        summary=f"{result.steps} steps on {split_dir}",
        started_at=started_at,
        metrics=[
            {"step": row["step"], "name": name, "value": value}
            for row in read_metrics(result.run_dir)
            for name, value in row.items()
            if name != "step" and isinstance(value, int | float)
        ],
    )
    final = result.final
    acc = final.get("rewards/accuracies")
    print(
        f"trained {result.steps} steps ({result.pairs['dpo']} dpo + {result.pairs['sft']} sft "
        f"pairs, {result.pairs_per_s:.1f} pairs/s on {result.world_size}×{result.device}); "
        f"final loss {final.get('loss', float('nan')):.4f}"
        + ("" if acc is None else f", rewards/accuracies {acc:.2f}")
        + f"; model in {result.model_dir}"
    )


@app.command()
def plot(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="One or more run directories (curves overlay).", show_default=False),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: RUN_DIR/curves.png).")
    ] = None,
    smooth: Annotated[
        int | None, typer.Option(help="Moving-average window in steps (default: steps/20).")
    ] = None,
) -> None:
    """Draw a run's training curves (loss, rewards, log-probs, grad norm, lr) to a PNG.

    Example:
        prefcurate plot runs/mixdpo runs/dpo --out curves.png
    """
    from prefcurate.runplots import plot_runs

    path = plot_runs(run_dirs, out or run_dirs[0] / "curves.png", smooth=smooth)
    print(path)


# --------------------------------------------------------------------------------------------------
# runs and sql


@app.command()
def runs(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many runs.")] = 20,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only runs of this command (analyze, route, ...).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """List the runs recorded in the catalog, newest first.

    Example:
        prefcurate runs --limit 5 --kind route
    """
    import json

    from prefcurate import catalog as cat

    found = cat.list_runs(catalog, limit=limit, kind=kind)
    if as_json:
        print(json.dumps(found, indent=2, default=str, ensure_ascii=False))
        return
    if not found:
        where = cat.catalog_path(catalog)
        print(f"no runs recorded in {where}" if where else "the catalog is off", file=sys.stderr)
        return
    header = ["run_id", "kind", "started (UTC)", "status", "input", "summary"]
    rows = []
    for run in found:
        data = ", ".join(
            f"{i['path']} ({i['rows']} rows)" if i.get("rows") is not None else i["path"]
            for i in run["inputs"]
        )
        started = run["started_at"].strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            [run["run_id"], run["kind"], started, run["status"], data, run["summary"] or ""]
        )
    _print_table(header, rows, title=f"runs in {cat.catalog_path(catalog)}")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SQL statement.", show_default=False)],
    data: Annotated[
        str | None,
        typer.Option("--data", help="Preference data to expose as the view 'pairs'."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of objects.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")] = False,
    catalog: CatalogOpt = None,
    prompt: PromptOpt = None,
    chosen: ChosenOpt = None,
    rejected: RejectedOpt = None,
    score_chosen: ScoreChosenOpt = None,
    score_rejected: ScoreRejectedOpt = None,
    source: SourceOpt = None,
    binarize: BinarizeOpt = Binarize.BEST_VS_WORST,
    split: SplitOpt = None,
) -> None:
    """Run read-only SQL over the catalog (runs, inputs, metrics) and, with --data, view 'pairs'.

    The query reads the catalog and the data, nothing else: writes and file access fail.

    Example:
        prefcurate sql "select count(*) from pairs where margin < 0.5" --data pairs.jsonl
        prefcurate sql "select kind, count(*) from runs group by kind" --json
    """
    import csv
    import json

    from prefcurate import catalog as cat
    from prefcurate.progress import status

    if as_json and as_csv:
        raise InputError("--json and --csv both given", fix="pass one")
    pairs = None
    if data is not None:
        with status("reading the data"):
            frame = open_source(
                data,
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                score_chosen=score_chosen,
                score_rejected=score_rejected,
                source=source,
                binarize=binarize,
                split=split,
            ).collect()
            pairs = frame.to_arrow()
    result = cat.query(query, catalog=catalog, pairs=pairs)
    if as_json:
        print(json.dumps(result.records(), ensure_ascii=False, default=str))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        for record in result.records():
            writer.writerow(
                json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
                for v in record.values()
            )
    else:
        rows = [[_cell(v) for v in row] for row in result.rows]
        _print_table(result.columns, rows)


# --------------------------------------------------------------------------------------------------
# bench and demo

bench_app = typer.Typer(
    help="Benchmarks where the truth is known: MixDPO's claims on a toy task with a gold reward.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("mixdpo")
def bench_mixdpo(
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds", help="Seeds: pairs, noise, order, samples (default 10).", show_default=False
        ),
    ] = None,
    pairs: Annotated[
        int | None,
        typer.Option(
            "--pairs", help="Preference pairs per seed (default 2000).", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Results folder: results.json, results.md, chart.png.")
    ] = Path("bench-mixdpo"),
    arms: Annotated[
        str | None,
        typer.Option("--arms", help="Comma-separated subset of the arms (default: all 18)."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="3 seeds, the paper-recipe arms of the main claims."),
    ] = False,
    force: ForceOpt = False,
) -> None:
    """Train MixDPO and its baselines from one base policy and judge them by a gold reward.

    The toy task (sort digits) has a gold reward r*; each pair's two answers come from a mix
    of a weak, the base and a strong policy, as UltraFeedback's come from many models.

    Labels are noisy 1-10 ratings of r* that also favour longer answers (about 12% ties).

    Arms: oracle, sft, dpo (shuffled), dpo-curriculum, filter, mixdpo at τ 0.5/1.0/1.5 and soft
    routing, each under the paper's recipe (β 0.01, cDPO, cosine) and a constant schedule.

    Every claim: a paired difference over seeds with 95% intervals (docs/results.md).

    Example:
        prefcurate bench mixdpo --out bench-mixdpo
    """
    from rich.console import Console

    from prefcurate.bench import QUICK_ARMS, BenchConfig, run_bench
    from prefcurate.benchreport import render, write_outputs
    from prefcurate.progress import bar, stderr

    settings: dict = {}
    if quick:
        settings.update(seeds=3, arms=QUICK_ARMS)
    if seeds is not None:
        settings["seeds"] = seeds
    if pairs is not None:
        settings["pairs"] = pairs
    if arms:
        settings["arms"] = tuple(a.strip() for a in arms.split(","))
    config = BenchConfig(out=out, force=force, **settings)
    with bar("bench mixdpo", config.seeds * len(config.arms), unit="arms") as progress:

        def update(message: str, done: int, total: int) -> None:
            progress.update(0, completed=done, description=message)

        result = run_bench(config, progress=update)

    render(result, Console())
    paths = write_outputs(result, out)
    stderr.print(
        f"wrote {', '.join(str(p) for p in paths.values())} in {result['seconds']:.0f} s",
        highlight=False,
    )


@app.command("demo")
def demo_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for every artefact of the demo.")
    ] = Path("prefcurate-demo"),
    pairs: Annotated[int, typer.Option("--pairs", help="Preference pairs to make.")] = 600,
    force: ForceOpt = False,
) -> None:
    """The whole pipeline on a built-in toy task, in about a minute on a laptop CPU.

    Makes pairs for a sorting task with a gold reward, analyzes them, routes at τ = 0.5.

    Trains MixDPO on the tiny model and judges it against the base policy by the gold reward.

    Writes the report, PNG plots, split, model and a summary README into OUT.

    Example:
        prefcurate demo --out prefcurate-demo
    """
    from prefcurate.demo import run_demo

    print(run_demo(out, pairs=pairs, force=force).summary())


def _cell(value: object, limit: int = 80) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_table(header: list[str], rows: list[list[str]], *, title: str | None = None) -> None:
    """A rich table on a terminal; plain aligned columns when stdout is a pipe or file."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if console.is_terminal:
        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*(str(c) for c in row))
        console.print(table)
        return
    cells = [list(map(str, header)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n".join(lines))
