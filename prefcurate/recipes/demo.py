"""``prefcurate demo``: the whole pipeline on the built-in toy task, in about a minute on a CPU.

A newcomer's first command. It makes preference pairs for the sorting task of
:mod:`prefcurate.recipes.toytask` (sampled from the cached base policy, labelled by noisy
ratings), then runs the same library functions as the commands a user would type next:

1. ``analyze`` — margins, ties, inversions → ``report/report.json``, PNG plots and the inspect
   page ``report/index.html`` (rewritten after training with the run's curves);
2. ``route --threshold 0.5`` — MixDPO's split, curriculum order → ``split/`` (+ plots);
3. ``train`` — MixDPO on the ``tiny`` model from the base policy → ``run/`` (metrics, model,
   ``curves.png``);
4. evaluation by the gold reward against the base policy → ``eval.json``;

and writes ``README.md`` in the output folder listing every artefact. Each phase shows progress
on stderr; the closing summary says where everything is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefcurate.recipes.basepolicy import BaseConfig

#: The demo routes exactly the ties, as the paper's main setting does on UltraFeedback.
THRESHOLD = 0.5


@dataclass
class DemoResult:
    """Where the artefacts are and the headline figures."""

    out: Path
    artefacts: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        f = self.figures
        lines = [
            f"prefcurate demo finished in {self.seconds:.0f} s. "
            f"{f['pairs']} pairs, {f['tie_share']:.1%} ties; routed at τ = {THRESHOLD}: "
            f"{f['dpo']} dpo + {f['sft']} sft; MixDPO vs base policy on {f['eval_prompts']} "
            f"held-out prompts: gold r* {f['base_gold']:.3f} → {f['mixdpo_gold']:.3f}, "
            f"win rate {f['win_rate']:.1f}% ({_lc(f['lc_win_rate'])}).",
            "",
            "Artefacts:",
        ]
        width = max(len(k) for k in self.artefacts)
        lines += [f"  {k.ljust(width)}  {p}" for k, p in self.artefacts.items()]
        return "\n".join(lines)


#: What the demo writes into its folder (and the temporary siblings of its atomic parts).
DEMO_ENTRIES = ("data", "report", "split", "run", "eval.json", "README.md", ".*.tmp-*", ".*.lock")


def run_demo(
    out: str | Path = "prefcurate-demo",
    *,
    pairs: int = 600,
    eval_prompts: int = 300,
    seed: int = 0,
    force: bool = False,
    cache_dir: Path | None = None,
    base: BaseConfig | None = None,
    quiet: bool = False,
) -> DemoResult:
    """Run the demo into ``out``; see the module docstring. Returns paths and figures."""
    import torch

    from prefcurate.base.outdir import open_dir
    from prefcurate.base.progress import stderr
    from prefcurate.recipes.bench import EVAL_SEED, BenchConfig, Environment, make_pairs, pair_stats

    out = open_dir(out, force=force, kind="demo", entries=DEMO_ENTRIES)
    started = time.perf_counter()
    result = DemoResult(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is far faster single-threaded

    def done(phase: str, t0: float) -> None:
        if not quiet:
            stderr.print(f"[green]✓[/] {phase} ({time.perf_counter() - t0:.1f} s)")

    try:
        config = BenchConfig(
            out=out,
            seeds=1,
            pairs=pairs,
            eval_prompts=eval_prompts,
            cache_dir=cache_dir,
            base=base or BaseConfig(),
        )
        t0 = time.perf_counter()
        with _status("three policies: SFT of the tiny model (cached after the first run)", quiet):
            env = Environment.build(config)
        done("base policy", t0)
        from trainers.model import load_model

        base = load_model(str(env.base_dir))
        t0 = time.perf_counter()
        with _status(f"sampling and labelling {pairs} pairs", quiet):
            rows = make_pairs(config, env, seed)
        data = out / "data" / "pairs.jsonl"
        data.parent.mkdir()
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        result.artefacts["pairs"] = data
        done("pairs", t0)

        t0 = time.perf_counter()
        report_dir = _analyze(data, out / "report", quiet)
        result.artefacts["analyze report"] = report_dir / "report.json"
        result.artefacts["analyze plots"] = report_dir
        done("analyze", t0)

        t0 = time.perf_counter()
        plan = _route(data, out / "split", seed, quiet)
        result.artefacts["split"] = out / "split" / "train.parquet"
        result.artefacts["routing plan"] = out / "split" / "plan.json"
        done("route", t0)

        t0 = time.perf_counter()
        run = _train(config, env, out / "split", out / "run", seed, quiet)
        result.artefacts["model"] = run.model_dir
        result.artefacts["metrics"] = run.run_dir / "metrics.jsonl"
        result.artefacts["training curves"] = run.run_dir / "curves.png"
        result.artefacts["inspect page"] = _inspect_run(run.run_dir, report_dir / "index.html")
        done("train", t0)

        t0 = time.perf_counter()
        with _status(f"judging MixDPO and the base policy on {eval_prompts} prompts", quiet):
            base_samples = env.sample(config, base, env.eval_prompts, seed=EVAL_SEED + seed)
            policy = load_model(str(run.model_dir))
            samples = env.sample(config, policy, env.eval_prompts, seed=EVAL_SEED + seed)
            base_texts = [s.text for s in base_samples]
            evaluation = {
                "base": env.judge(base_samples, base_texts),
                "mixdpo": env.judge(samples, base_texts),
            }
        (out / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        result.artefacts["evaluation"] = out / "eval.json"
        done("evaluate", t0)
    finally:
        torch.set_num_threads(threads)

    stats = pair_stats(rows)
    result.figures = {
        "pairs": len(rows),
        "tie_share": stats["tie_share"],
        "inverted_share": stats["inverted_share"],
        "dpo": plan.counts["dpo"],
        "sft": plan.counts["sft"],
        "eval_prompts": len(env.eval_prompts),
        "base_gold": evaluation["base"]["gold"],
        "mixdpo_gold": evaluation["mixdpo"]["gold"],
        "win_rate": evaluation["mixdpo"]["win_rate"],
        "lc_win_rate": evaluation["mixdpo"]["lc_win_rate"],
        "invalid": evaluation["mixdpo"]["invalid"],
    }
    result.seconds = time.perf_counter() - started
    readme = out / "README.md"
    page = result.artefacts.pop("inspect page")
    result.artefacts = {"inspect page": page, "summary": readme, **result.artefacts}
    readme.write_text(_readme(result))
    return result


def _lc(value: float | None) -> str:
    if value is None:
        return "LC win rate: install prefcurate[bench] for alpaca-eval"
    return f"LC {value:.1f}%"


def _status(message: str, quiet: bool):
    import contextlib

    from prefcurate.base.progress import status

    return contextlib.nullcontext() if quiet else status(message)


def _analyze(data: Path, report_dir: Path, quiet: bool) -> Path:
    from prefcurate.base.progress import bar
    from prefcurate.commands.analyze import write_report_dir
    from prefcurate.data.io import open_pairs
    from prefcurate.reporting.inspection import inspect_source
    from prefcurate.reporting.plots import PLOT_FILES

    seen = inspect_source(open_pairs(data), threshold=THRESHOLD)  # analyze's report + samples
    with bar("analyze: plots", len(PLOT_FILES)) as progress:
        advance = progress.advance
        write_report_dir(
            seen.report,
            report_dir,
            threshold=THRESHOLD,
            on_written=lambda _: advance(0),
            inspection=seen,
        )
    return report_dir


def _inspect_run(run_dir: Path, page: Path) -> Path:
    """Rewrite the report's page with the run: its split's pairs, curves by route, accuracy."""
    from prefcurate.commands.inspect import build_page

    build_page(run_dir, page)
    return page


def _route(data: Path, split: Path, seed: int, quiet: bool):
    from prefcurate.recipes.pipeline import route_file

    with _status(f"route: MixDPO at τ = {THRESHOLD}, curriculum order", quiet):
        return route_file(data, split, plots=True, mode="mixdpo", threshold=THRESHOLD, seed=seed)


def _train(config, env, split: Path, run_dir: Path, seed: int, quiet: bool):
    from prefcurate.base.progress import RichReporter
    from prefcurate.data.runs import read_curves
    from prefcurate.recipes.bench import arm_config
    from prefcurate.reporting.runplots import plot_runs
    from trainers.loop import train
    from trainers.reporter import Reporter

    result = train(
        arm_config(config, env, split=split, out=run_dir, seed=seed),
        reporter=Reporter() if quiet else RichReporter(),
    )
    plot_runs([read_curves(run_dir)], run_dir / "curves.png")
    return result


def _readme(result: DemoResult) -> str:
    lines = [
        "# prefcurate demo",
        "",
        "Made by `prefcurate demo`: the toy sorting task's preference pairs, analyzed, routed",
        f"at τ = {THRESHOLD} (MixDPO), trained on the tiny model, judged by the gold reward.",
        "",
        f"Start with `{result.artefacts['inspect page']}`: one page (open it in a browser, no",
        "network) with the pairs behind each bar of the margin histogram, the τ control, the",
        "training curves by route and the reward accuracy per margin bin.",
        "",
        "```",
        result.summary(),
        "```",
        "",
        "Next: `prefcurate analyze data/pairs.jsonl`, `prefcurate route data/pairs.jsonl "
        "--threshold 0.5 --out split2`, `prefcurate train split2 --model tiny --out run2`, "
        "and `prefcurate bench mixdpo` for the full comparison (docs/results.md).",
    ]
    return "\n".join(lines) + "\n"
