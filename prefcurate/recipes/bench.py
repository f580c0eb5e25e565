"""``prefcurate bench mixdpo``: MixDPO and its baselines on a task whose gold reward is known.

The paper (arXiv 2602.00954) reports, on 7–8B models judged by GPT-4, that reading pairs easy →
hard helps, that training small-margin pairs with SFT beats DPO on them and beats discarding
them, and that τ matters. Under its own recipe, though, the pairs it routes to SFT come last in
the curriculum, where cosine decay leaves them about 1.6% of the peak learning rate: routing them
is close to doing nothing. This benchmark asks whether routing helps **once the routed pairs
train**, on the toy sorting task of :mod:`prefcurate.recipes.toytask` where the truth is known,
with the ``tiny`` model, on a CPU.

The data imitates UltraFeedback's two properties the paper's mechanism relies on
(:mod:`prefcurate.recipes.benchdata`): responses from policies of different strength (a weak, the
base and a strong policy), and a judge with random and systematic (length) error.

Per seed: its own held-out prompts and its own three policies, then pairs sampled from the
mixture and labelled by the judge (and, for the length comparisons, by the same judge without its
length bias); then for every arm the pairs are routed by
:func:`prefcurate.routing.plan.plan_routes` (its placement of the sft pairs) and trained by
:func:`trainers.loop.train` (its learning-rate schedule) — the library behind ``prefcurate route``
and ``prefcurate train`` — from the seed's base policy, one epoch. Each trained policy answers the
seed's held-out prompts and is judged by r* (:mod:`prefcurate.recipes.gold`).

The arms, the gates and the comparisons were declared before the run (docs/results_declared.md);
:mod:`prefcurate.recipes.benchclaims` computes them from the seeds' figures alone::

    >>> from prefcurate.recipes.bench import BenchConfig, run_bench
    >>> result = run_bench(BenchConfig(out="bench-out", seeds=3))          # doctest: +SKIP
    >>> [g["passed"] for g in result["gates"]]                               # doctest: +SKIP
    [True, True, True, True, True]
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefcurate.base.errors import InputError
from prefcurate.recipes import benchclaims, gold, toytask
from prefcurate.recipes.basepolicy import BaseConfig
from prefcurate.recipes.benchdata import (
    BENCH_NOISE,
    EVAL_SEED,
    MIXTURE,
    POLICIES,
    Environment,
    label,
    make_pairs,
    pair_stats,
    sample_pairs,
    without_length_bias,
)
from prefcurate.routing.presets import PAPER

if TYPE_CHECKING:
    from trainers.config import TrainConfig

#: results.json format version; bump when a key changes meaning.
RESULTS_VERSION = 2


@dataclass(frozen=True)
class Arm:
    """One arm: how ``prefcurate route`` splits the pairs and how ``prefcurate train`` trains.

    ``labels``: ``judge`` (the benchmark's judge), ``fair-judge`` (the same judge without its
    length bias) or ``oracle`` (r* itself). ``same_lr``: the schedule spans MixDPO's steps
    (``--schedule-steps``), so a filter arm's dpo pairs train at their rates inside MixDPO.
    """

    name: str
    mode: str  # route --mode: mixdpo | dpo | filter | sft
    order: str  # route --order: curriculum | random (shuffled, seeded)
    threshold: float | None = None
    soft: bool = False  # route --soft T (T = BenchConfig.soft_temperature)
    placement: str | None = None  # route --placement: last | spread (mixdpo in curriculum)
    schedule: str = "cosine"  # train --lr-schedule: cosine | constant | phased
    same_lr: bool = False
    labels: str = "judge"
    description: str = ""

    @property
    def schedule_aware(self) -> bool:
        """A MixDPO arm that gives its routed pairs a rate they train at (gate G3 checks it)."""
        moved = self.placement == "spread" or self.schedule in ("constant", "phased")
        return self.mode == "mixdpo" and moved


def _mixdpo(tau: float, placement: str, schedule: str, soft: bool = False) -> Arm:
    kind = "soft" if soft else "mixdpo"
    suffix = "-spread" if placement == "spread" else ""
    suffix += {"phased": "-phased", "constant": "/const"}.get(schedule, "")
    where = {"spread": "sft pairs spread", "last": "sft pairs last"}[placement]
    what = f"{'soft routing' if soft else 'MixDPO'}, τ {tau}, {where}, {schedule}"
    name = f"{kind}-{tau}{suffix}"
    return Arm(name, "mixdpo", "curriculum", tau, soft, placement, schedule, description=what)


#: docs/results_declared.md, "The run": every arm, in the table's order.
ARMS: tuple[Arm, ...] = (
    Arm("oracle", "dpo", "random", labels="oracle", description="DPO, shuffled, labels by r*"),
    Arm("sft", "sft", "random", description="SFT on every chosen answer, shuffled"),
    Arm("dpo", "dpo", "random", description="DPO, shuffled (the paper's baseline)"),
    Arm("dpo-curriculum", "dpo", "curriculum", description="DPO, easy → hard"),
    Arm("filter", "filter", "curriculum", 0.5, description="DPO, margin < 0.5 dropped"),
    Arm(
        "filter-same-lr",
        "filter",
        "curriculum",
        0.5,
        same_lr=True,
        description="as filter, at its dpo pairs' rates inside mixdpo-0.5",
    ),
    _mixdpo(0.5, "last", "cosine"),
    _mixdpo(1.0, "last", "cosine"),
    *(_mixdpo(tau, "spread", "cosine") for tau in (0.5, 1.0, 1.5)),
    *(_mixdpo(tau, "last", "phased") for tau in (0.5, 1.0, 1.5)),
    _mixdpo(0.5, "spread", "cosine", soft=True),
    _mixdpo(0.5, "last", "phased", soft=True),
    Arm("dpo/const", "dpo", "random", schedule="constant", description="DPO, shuffled, constant"),
    Arm(
        "dpo-curriculum/const",
        "dpo",
        "curriculum",
        schedule="constant",
        description="DPO, easy → hard, constant",
    ),
    Arm(
        "filter/const",
        "filter",
        "curriculum",
        0.5,
        schedule="constant",
        description="DPO, margin < 0.5 dropped, constant",
    ),
    _mixdpo(0.5, "last", "constant"),
    _mixdpo(1.0, "last", "constant"),
    Arm(
        "dpo/fair-judge",
        "dpo",
        "random",
        labels="fair-judge",
        description="DPO, shuffled, labels by the judge without the length bias",
    ),
)
ARM_NAMES = tuple(a.name for a in ARMS)
ARMS_BY_NAME = {a.name: a for a in ARMS}
#: ``--quick``: three seeds, the arms of the paper-recipe claims.
QUICK_ARMS: tuple[str, ...] = ("oracle", "dpo", "dpo-curriculum", "filter", "mixdpo-0.5")

#: What the bench writes into its folder besides one ``seed-N`` folder per seed (by name: a
#: manifest lists what was written, never a pattern that could claim a user's ``seed-notes.txt``).
BENCH_ENTRIES = ("results.json", "results.md", "chart.png")


@dataclass
class BenchConfig:
    """The benchmark's settings; ``prefcurate bench mixdpo`` exposes seeds, pairs, out, arms."""

    out: Path
    seeds: int = 10
    pairs: int = 2000
    eval_prompts: int = 1000
    arms: tuple[str, ...] = ARM_NAMES
    noise: toytask.RatingNoise = field(default_factory=lambda: BENCH_NOISE)
    base: BaseConfig = field(default_factory=BaseConfig)
    mixture: tuple[str, ...] = MIXTURE
    # training: the paper's objective (β 0.01, cDPO ε 0.1, 10% warmup, one epoch) for every arm;
    # the schedule is the arm's; the lr is the toy model's (the paper's 1e-6 moves it nowhere)
    beta: float = PAPER.beta
    label_smoothing: float = PAPER.label_smoothing
    lr: float = 1e-4
    warmup_ratio: float = PAPER.warmup_ratio
    soft_temperature: float = 0.25
    batch_size: int = 16
    temperature: float = 1.0
    threads: int = 1  # the tiny model is far faster on 1 thread than on 2 busy cores
    workers: int = 2  # seeds run in this many processes (one per core; results do not change)
    cache_dir: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.seeds < 1:
            raise InputError(f"--seeds must be at least 1, not {self.seeds}")
        if self.pairs < 16:
            raise InputError(f"--pairs must be at least 16, not {self.pairs}")
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, not {self.workers}")
        unknown = [a for a in self.arms if a not in ARM_NAMES]
        if unknown:
            raise InputError(
                f"unknown arm {unknown[0]!r}", fix=f"use some of {', '.join(ARM_NAMES)}"
            )
        strange = [m for m in self.mixture if m not in POLICIES]
        if strange or not self.mixture:
            raise InputError(f"the mixture must use some of {', '.join(POLICIES)}")

    @property
    def mixdpo_steps(self) -> int:
        """Steps of a run over every pair: what a ``same_lr`` arm's schedule spans."""
        return math.ceil(self.pairs / self.batch_size)

    def to_json(self) -> dict[str, Any]:
        """The settings that decide the numbers (the output folder by name, no cache path)."""
        out = asdict(self)
        out["out"] = self.out.name
        del out["cache_dir"], out["force"]
        return out


#: ``progress(message, done, total)``: ``done`` of ``total`` trained arms so far.
Progress = Callable[[str, int, int], None]


def run_bench(config: BenchConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run every arm for every seed; write ``results.json`` into ``config.out`` and return it."""
    from prefcurate.base.outdir import open_dir

    gold.require_lc()
    report = progress or (lambda *_: None)
    total = config.seeds * len(config.arms)
    finished = [0]

    def say(message: str, arms_done: int = 0) -> None:
        finished[0] += arms_done
        report(message, finished[0], total)

    seed_dirs = [f"seed-{seed}" for seed in range(config.seeds)]
    out = open_dir(
        config.out, force=config.force, kind="bench", entries=(*BENCH_ENTRIES, *seed_dirs)
    )
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    with LoadSampler() as load:
        seeds = _run_seeds(config, say)
    names = ["base", "base-redraw", *(a.name for a in ARMS if a.name in config.arms)]
    result = {
        "version": RESULTS_VERSION,
        "config": config.to_json(),
        "arms": {a.name: asdict(a) for a in ARMS if a.name in config.arms},
        **benchclaims.summarize(seeds, names),
        "seeds": seeds,
        # a shared machine stretches wall time; CPU time and the load say by how much
        "cost": {
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu_started, 1),
            "workers": 1 if config.seeds == 1 else min(config.workers, config.seeds),
            "load_average": load.summary(),
        },
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_seeds(config: BenchConfig, say: Callable[..., None]) -> list[dict[str, Any]]:
    """Every seed, in ``config.workers`` processes (each seed is independent and seeded, so the
    results are the same however many processes run them)."""
    if config.workers == 1 or config.seeds == 1:
        return [
            _seed_worker(config, seed, lambda m, done=False: say(m, int(done)))
            for seed in range(config.seeds)
        ]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    say(f"{config.seeds} seeds in {config.workers} processes")
    results: dict[int, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(config.workers, config.seeds), mp_context=context) as pool:
        futures = {pool.submit(_seed_worker, config, s): s for s in range(config.seeds)}
        for future in as_completed(futures):
            seed = futures[future]
            results[seed] = future.result()
            say(f"seed {seed} done", len(results[seed]["arms"]))
    return [results[s] for s in range(config.seeds)]


def _seed_worker(
    config: BenchConfig, seed: int, say: Callable[..., None] | None = None
) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return run_seed(config, seed, say or (lambda *_args, **_kw: None))
    finally:
        torch.set_num_threads(threads)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the seed workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class LoadSampler:
    """The machine's 1-minute load average, sampled every ``every`` seconds while a run lasts:
    a shared machine stretches wall time, and the load says by how much."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefcurate-load", daemon=True)

    def _sample(self) -> None:
        import os

        try:
            self.samples.append(round(os.getloadavg()[0], 2))
        except OSError:  # not every platform has one
            pass

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def summary(self) -> dict[str, float | int] | None:
        if not self.samples:
            return None
        s = self.samples
        mean = round(sum(s) / len(s), 2)
        return {"start": s[0], "end": s[-1], "min": min(s), "mean": mean, "max": max(s),
                "samples": len(s)}  # fmt: skip


def arm_config(
    config: BenchConfig,
    env: Environment,
    *,
    split: Path,
    out: Path,
    seed: int,
    label_smoothing: float | None = None,
    lr_schedule: str = "cosine",
    schedule_steps: int | None = None,
) -> TrainConfig:
    """The trainer's settings for one arm: the same base policy, budget and alphabet for all."""
    from trainers.config import TrainConfig

    return TrainConfig(
        split_dir=split,
        model=str(env.base_dir),
        out=out,
        beta=config.beta,
        label_smoothing=config.label_smoothing if label_smoothing is None else label_smoothing,
        lr=config.lr,
        warmup_ratio=config.warmup_ratio,
        lr_schedule=lr_schedule,
        schedule_steps=schedule_steps,
        batch_size=config.batch_size,
        max_length=32,
        seed=seed,
        cache_dir=env.cache_dir,
        allowed_token_ids=env.allowed,
    )


def run_seed(config: BenchConfig, seed: int, say: Callable[..., None]) -> dict[str, Any]:
    """One seed: its policies and pairs, the base policy's two evaluation draws, every arm."""
    from trainers.model import load_model

    directory = config.out / f"seed-{seed}"
    directory.mkdir(parents=True)
    say(f"seed {seed}: its three policies (SFT, cached)")
    env = Environment.build(config, seed)
    say(f"seed {seed}: sampling {config.pairs} pairs from the policy mixture")
    labelled = _label_sets(config, env, seed)
    for name, rows in labelled.items():
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = load_model(str(env.base_dir))
    eval_seed = EVAL_SEED + seed
    draw_a = env.sample(config, base, env.eval_prompts, seed=eval_seed)
    draw_b = env.sample(config, base, env.eval_prompts, seed=eval_seed + 5000)
    base_texts = [s.text for s in draw_a]
    evaluation = {
        "base": env.judge(draw_a, base_texts),
        # the evaluation's own noise: a second draw of the same policy judged against the first
        "base-redraw": env.judge(draw_b, base_texts),
    }
    arms: dict[str, Any] = {}
    for arm in (a for a in ARMS if a.name in config.arms):
        say(f"seed {seed}: arm {arm.name}")
        arms[arm.name], evaluation[arm.name] = run_arm(
            config, env, arm, directory, seed=seed, base_texts=base_texts
        )
        say(f"seed {seed}: arm {arm.name} done", True)
    return {
        "seed": seed,
        "policies": env.keys,
        "pairs": pair_stats(labelled["judge"]),
        "pairs_fair_judge": pair_stats(labelled["fair-judge"]),
        "arms": arms,
        "evaluation": evaluation,
    }


def _label_sets(config: BenchConfig, env: Environment, seed: int) -> dict[str, list[dict]]:
    """The seed's pairs under each labelling: the judge, the judge without its length bias (the
    same answers and noise draws), and r* itself."""
    sampled = sample_pairs(config, env, seed)
    judged = label(sampled, config.noise, seed)
    return {
        "judge": judged,
        "fair-judge": label(sampled, without_length_bias(config.noise), seed),
        "oracle": [toytask.oracle_row(r) for r in judged],
    }


def run_arm(
    config: BenchConfig,
    env: Environment,
    arm: Arm,
    directory: Path,
    *,
    seed: int,
    base_texts: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route, train, sample and judge one arm; its training record and its figures."""
    from prefcurate.recipes.pipeline import route_and_train
    from trainers.model import load_model

    folder = directory / arm.name.replace("/", "-")
    train = arm_config(
        config,
        env,
        split=folder / "split",
        out=folder / "run",
        seed=seed,
        label_smoothing=config.label_smoothing if arm.mode != "sft" else 0.0,
        lr_schedule=arm.schedule,
        schedule_steps=config.mixdpo_steps if arm.same_lr else None,
    )
    plan, result = route_and_train(
        directory / f"{arm.labels}.jsonl",
        train,
        mode=arm.mode,
        threshold=arm.threshold,
        order=arm.order,
        seed=seed,
        soft=config.soft_temperature if arm.soft else None,
        placement=arm.placement,
    )
    policy = load_model(str(result.model_dir))
    samples = env.sample(config, policy, env.eval_prompts, seed=EVAL_SEED + seed)
    shutil.rmtree(folder / "run" / "model")  # 1.2 MB per arm: keep metrics, not weights
    record = {
        "description": arm.description,
        "schedule": arm.schedule,
        "placement": None if plan.placement is None else str(plan.placement),
        "schedule_aware": arm.schedule_aware,
        "threshold": plan.threshold,
        "pairs": result.pairs,
        "sft_share": plan.counts.get("weight_mean", result.pairs["sft"] / result.pairs["pairs"]),
        "steps": result.steps,
        "lr_share": result.lr_share,
        "train_seconds": result.train_seconds,
    }
    return record, env.judge(samples, base_texts)


__all__ = [
    "ARMS",
    "ARM_NAMES",
    "Arm",
    "BenchConfig",
    "Environment",
    "QUICK_ARMS",
    "arm_config",
    "make_pairs",
    "pair_stats",
    "run_arm",
    "run_bench",
    "run_seed",
]
