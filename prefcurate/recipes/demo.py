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

import contextlib
import json
import time
from collections.abc import Iterator
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

    def add(self, name: str, path: Path) -> Path:
        """Record an artefact; return its path."""
        self.artefacts[name] = path
        return path

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


#: What the demo writes into its folder, by name (the temporary siblings of its atomic parts
#: carry prefcurate's marker, which proves them prefcurate's).
DEMO_ENTRIES = ("data", "report", "split", "run", "eval.json", "README.md")


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
    from prefcurate.base.outdir import open_dir
    from prefcurate.recipes.bench import BenchConfig, Environment, make_pairs

    out = open_dir(out, force=force, kind="demo", entries=DEMO_ENTRIES)
    started = time.perf_counter()
    config = BenchConfig(
        out=out,
        seeds=1,
        pairs=pairs,
        eval_prompts=eval_prompts,
        cache_dir=cache_dir,
        base=base or BaseConfig(),
    )
    result = DemoResult(out)
    phase = _Phases(quiet)
    with _one_thread():  # the tiny model is far faster single-threaded
        with phase(
            "base policy", "three policies: SFT of the tiny model (cached after the first run)"
        ):
            env = Environment.build(config)
        with phase("pairs", f"sampling and labelling {pairs} pairs"):
            rows = make_pairs(config, env, seed)
            data = result.add("pairs", _write_pairs(out / "data" / "pairs.jsonl", rows))
        with phase("analyze"):
            report_dir = _analyze(data, out / "report", quiet)
            result.add("analyze report", report_dir / "report.json")
            result.add("analyze plots", report_dir)
        with phase("route", f"route: MixDPO at τ = {THRESHOLD}, curriculum order"):
            plan = _route(data, out / "split", seed)
            result.add("split", out / "split" / "train.parquet")
            result.add("routing plan", out / "split" / "plan.json")
        with phase("train"):
            run = _train(config, env, out / "split", out / "run", seed, quiet)
            result.add("model", run.model_dir)
            result.add("metrics", run.run_dir / "metrics.jsonl")
            result.add("training curves", run.run_dir / "curves.png")
            page = _inspect_run(run.run_dir, report_dir / "index.html")
        with phase("evaluate", f"judging MixDPO and the base policy on {eval_prompts} prompts"):
            evaluation = _evaluate(config, env, run.model_dir, seed)
            result.add("evaluation", _write_json(out / "eval.json", evaluation))
    result.figures = _figures(rows, plan, env, evaluation)
    result.seconds = time.perf_counter() - started
    readme = out / "README.md"
    result.artefacts = {"inspect page": page, "summary": readme, **result.artefacts}
    readme.write_text(_readme(result))
    return result


class _Phases:
    """``with phase(name, status):`` — a spinner with ``status`` while it runs, then
    ``✓ name (N s)`` on stderr (nothing when ``quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    @contextlib.contextmanager
    def __call__(self, name: str, status: str | None = None) -> Iterator[None]:
        from prefcurate.base.progress import stderr

        started = time.perf_counter()
        with _status(status, self.quiet) if status else contextlib.nullcontext():
            yield
        if not self.quiet:
            stderr.print(f"[green]✓[/] {name} ({time.perf_counter() - started:.1f} s)")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_pairs(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2) + "\n")
    return path


def _evaluate(config, env, model_dir: Path, seed: int) -> dict[str, Any]:
    """The base policy and the trained model, sampled on the held-out prompts, judged by r*."""
    from prefcurate.recipes.bench import EVAL_SEED
    from trainers.model import load_model

    base = load_model(str(env.base_dir))
    base_samples = env.sample(config, base, env.eval_prompts, seed=EVAL_SEED + seed)
    samples = env.sample(
        config, load_model(str(model_dir)), env.eval_prompts, seed=EVAL_SEED + seed
    )
    base_texts = [s.text for s in base_samples]
    return {"base": env.judge(base_samples, base_texts), "mixdpo": env.judge(samples, base_texts)}


def _figures(rows: list[dict], plan, env, evaluation: dict[str, Any]) -> dict[str, Any]:
    from prefcurate.recipes.bench import pair_stats

    stats = pair_stats(rows)
    mixdpo = evaluation["mixdpo"]
    return {
        "pairs": len(rows),
        "tie_share": stats["tie_share"],
        "inverted_share": stats["inverted_share"],
        "dpo": plan.counts["dpo"],
        "sft": plan.counts["sft"],
        "eval_prompts": len(env.eval_prompts),
        "base_gold": evaluation["base"]["gold"],
        "mixdpo_gold": mixdpo["gold"],
        "win_rate": mixdpo["win_rate"],
        "lc_win_rate": mixdpo["lc_win_rate"],
        "invalid": mixdpo["invalid"],
    }


def _lc(value: float | None) -> str:
    if value is None:
        return "LC win rate: install prefcurate[bench] for alpaca-eval"
    return f"LC {value:.1f}%"


def _status(message: str, quiet: bool):
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


def _route(data: Path, split: Path, seed: int):
    from prefcurate.recipes.pipeline import route_file

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
