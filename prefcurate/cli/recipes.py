"""The recipe commands: ``bench mixdpo`` and ``demo`` (toy task, tiny model, gold reward)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefcurate.cli.common import ForceOpt, app, echo

_SIZE = "Size (smaller: faster and noisier)"
EvalPromptsOpt = Annotated[
    int, typer.Option("--eval-prompts", help="Held-out prompts judged.", rich_help_panel=_SIZE)
]
BaseDemosOpt = Annotated[
    int,
    typer.Option(
        "--base-demos", help="Demonstrations the base policy learns from.", rich_help_panel=_SIZE
    ),
]
ToyCacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Where the base policy is cached (default: ~/.cache/prefcurate).",
        rich_help_panel=_SIZE,
        show_default=False,
    ),
]

bench_app = typer.Typer(
    help="Benchmarks where the truth is known: MixDPO's claims on a toy task with a gold reward.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("mixdpo")
def bench_mixdpo(
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds: pairs, noise, order, samples.")] = 3,
    pairs: Annotated[int, typer.Option("--pairs", help="Preference pairs per seed.")] = 3000,
    out: Annotated[
        Path, typer.Option("--out", help="Results folder: results.json, results.md, chart.png.")
    ] = Path("bench-mixdpo"),
    arms: Annotated[
        str | None,
        typer.Option("--arms", help="Comma-separated subset of the arms (default: all nine)."),
    ] = None,
    eval_prompts: EvalPromptsOpt = 1000,
    base_demos: BaseDemosOpt = 4000,
    cache_dir: ToyCacheOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train MixDPO and its baselines from one base policy and judge them by a gold reward.

    The toy task (sort digits) has a gold reward r*; pairs come from an SFT base policy.

    Labels are noisy 1-10 ratings of r* (about 12% ties), as in UltraFeedback.

    Arms: oracle, sft, dpo, dpo-curriculum, filter, dpo+nll, mixdpo at ~12/30/50% sft.

    Per arm, mean ± sd over seeds: gold reward, win rate and LC win rate vs base (docs/results.md).

    Example:
        prefcurate bench mixdpo --seeds 3 --out bench-mixdpo
    """
    from rich.console import Console

    from prefcurate.progress import bar, stderr
    from prefcurate.recipes.basepolicy import BaseConfig
    from prefcurate.recipes.bench import BenchConfig, run_bench
    from prefcurate.recipes.benchreport import render, write_outputs

    chosen = tuple(a.strip() for a in arms.split(",")) if arms else None
    config = BenchConfig(
        out=out,
        seeds=seeds,
        pairs=pairs,
        eval_prompts=eval_prompts,
        base=BaseConfig(demos=base_demos),
        cache_dir=cache_dir,
        force=force,
        **({"arms": chosen} if chosen else {}),
    )
    with bar("bench mixdpo", seeds * len(config.arms), unit="arms", plain=True) as progress:

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
    eval_prompts: EvalPromptsOpt = 300,
    base_demos: BaseDemosOpt = 4000,
    cache_dir: ToyCacheOpt = None,
    force: ForceOpt = False,
) -> None:
    """The whole pipeline on a built-in toy task, in about a minute on a laptop CPU.

    Makes pairs for a sorting task with a gold reward, analyzes them, routes at τ = 0.5.

    Trains MixDPO on the tiny model and judges it against the base policy by the gold reward.

    Writes the report, PNG plots, split, model and a summary README into OUT.

    Example:
        prefcurate demo --out prefcurate-demo
    """
    from prefcurate.recipes.basepolicy import BaseConfig
    from prefcurate.recipes.demo import run_demo

    result = run_demo(
        out,
        pairs=pairs,
        eval_prompts=eval_prompts,
        base=BaseConfig(demos=base_demos),
        cache_dir=cache_dir,
        force=force,
    )
    echo(result.summary())
