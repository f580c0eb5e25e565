"""The recipe commands: ``bench mixdpo``, ``bench report`` and ``demo`` (toy task, tiny model,
gold reward)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from prefcurate.cli.common import ForceOpt, app, echo, options

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


@dataclass(frozen=True)
class BenchOptions:
    """``prefcurate bench mixdpo``'s flags."""

    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            help="Seeds: policies, held-out prompts, pairs, noise, order, samples (default 10).",
            show_default=False,
        ),
    ] = None
    pairs: Annotated[
        int | None,
        typer.Option(
            "--pairs", help="Preference pairs per seed (default 2000).", show_default=False
        ),
    ] = None
    out: Annotated[
        Path, typer.Option("--out", help="Results folder: results.json, results.md, chart.png.")
    ] = Path("bench-mixdpo")
    arms: Annotated[
        str | None,
        typer.Option("--arms", help="Comma-separated subset of the arms (default: all 22)."),
    ] = None
    quick: Annotated[
        bool,
        typer.Option("--quick", help="3 seeds, the arms of the main claims."),
    ] = False
    eval_prompts: EvalPromptsOpt = 1000
    base_demos: BaseDemosOpt = 4000
    cache_dir: ToyCacheOpt = None
    force: ForceOpt = False

    def config(self):
        """The :class:`~prefcurate.recipes.bench.BenchConfig` these flags ask for."""
        from prefcurate.recipes.basepolicy import BaseConfig
        from prefcurate.recipes.bench import QUICK_ARMS, BenchConfig

        settings: dict = {"seeds": 3, "arms": QUICK_ARMS} if self.quick else {}
        if self.seeds is not None:
            settings["seeds"] = self.seeds
        if self.pairs is not None:
            settings["pairs"] = self.pairs
        if self.arms:
            settings["arms"] = tuple(a.strip() for a in self.arms.split(","))
        return BenchConfig(
            out=self.out,
            eval_prompts=self.eval_prompts,
            base=BaseConfig(demos=self.base_demos),
            cache_dir=self.cache_dir,
            force=self.force,
            **settings,
        )


@bench_app.command("mixdpo")
@options(BenchOptions)
def bench_mixdpo(opts: BenchOptions) -> None:
    """Train MixDPO and its baselines and judge them by a gold reward: does routing help once
    the routed pairs train?

    The toy task (sort digits) has a gold reward r*; each pair's two answers come from a mix
    of a weak, the base and a strong policy (each seed trains its own), as UltraFeedback's come
    from many models. Labels are noisy 1-10 ratings of r* that also favour longer answers.

    Arms: oracle, sft, dpo (shuffled), dpo-curriculum, filter, MixDPO at τ 0.5/1.0/1.5 with the
    sft pairs last (the paper's), spread, or in a phase of their own; soft routing; constant-rate
    controls; DPO on labels without the length bias (docs/results_declared.md).

    Every comparison: a paired difference over seeds with 95% intervals, Holm within its
    family, after gates that stop the comparisons they invalidate (docs/results.md).

    Example:
        prefcurate bench mixdpo --out bench-mixdpo
    """
    from rich.console import Console

    from prefcurate.base.progress import bar, stderr
    from prefcurate.recipes.bench import run_bench
    from prefcurate.recipes.benchreport import render, write_outputs

    config = opts.config()
    with bar("bench mixdpo", config.seeds * len(config.arms), unit="arms", plain=True) as progress:

        def update(message: str, done: int, total: int) -> None:
            progress.update(0, completed=done, description=message)

        result = run_bench(config, progress=update)

    render(result, Console())
    paths = write_outputs(result, opts.out)
    stderr.print(
        f"wrote {', '.join(str(p) for p in paths.values())} in {result['cost']['seconds']:.0f} s",
        highlight=False,
    )


@bench_app.command("report")
def bench_report(
    results: Annotated[
        Path, typer.Argument(help="A results.json written by 'prefcurate bench mixdpo'.")
    ],
    page: Annotated[
        Path | None,
        typer.Option(
            "--page",
            help="A markdown page whose <!-- bench:NAME --> blocks are rewritten in place "
            "(default: results.md beside RESULTS).",
            show_default=False,
        ),
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option(
            "--chart",
            help="Where to draw the chart (default: chart.png beside RESULTS).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rebuild the tables and the chart of a benchmark run from its results.json alone.

    Every table of results.md (and of a page's marked blocks) is a function of results.json,
    so the same file gives the same bytes.

    Example:
        prefcurate bench report bench-mixdpo/results.json

        prefcurate bench report results.json --page results.md --chart chart.png
    """
    from prefcurate.recipes.benchreport import rebuild_files

    for path in rebuild_files(results, page=page, chart_path=chart):
        echo(f"wrote {path}")


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
