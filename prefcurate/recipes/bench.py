"""``prefcurate bench mixdpo``: MixDPO and its baselines on a task whose gold reward is known.

The paper (arXiv 2602.00954) reports, on 7–8B models judged by GPT-4, that reading pairs easy →
hard helps, that training small-margin pairs with SFT beats DPO on them and beats discarding
them, and that τ matters. This benchmark tests those claims where the truth is known: the toy
sorting task of :mod:`prefcurate.recipes.toytask`, the ``tiny`` model, one CPU, minutes.

The data imitates UltraFeedback's two properties the paper's mechanism relies on:

- **responses from policies of different strength.** Each pair's two responses are drawn from a
  mixture of three policies (:func:`mixture_configs`): a *weak* one (the base recipe stopped
  early), the *base* policy every arm starts from, and a *strong* one (trained longer on
  better demonstrations). A tie therefore often pairs two answers better than the base policy's,
  and SFT on a tie's chosen response distils from a better policy, as in UltraFeedback where the
  completions come from 17 models;
- **a judge with random and systematic error.** :class:`prefcurate.recipes.toytask.RatingNoise`
  rates each response with Gaussian noise *and* a preference for longer answers.

Per seed: sample the pairs, label them by the judge, then for every arm route the pairs with
:func:`prefcurate.routing.plan.plan_routes` / :func:`~prefcurate.routing.plan.write_route` and train
with
:func:`trainers.loop.train` — the library functions behind ``prefcurate route`` and ``prefcurate
train`` — from the base policy, one epoch, same pairs. Each trained policy answers held-out
prompts and is judged by r* (:mod:`prefcurate.recipes.gold`). The arms form a grid: every recipe
under the paper's training settings (β 0.01, cDPO ε 0.1, cosine decay) and under a constant
schedule.

Every claim is a paired difference over seeds with 95% intervals
(:mod:`prefcurate.reporting.stats`): one primary comparison declared in advance (:data:`PRIMARY`),
the others exploratory with Holm's correction. Before any comparison the result carries two gates:
the oracle arm must beat the base policy, and the evaluation's own noise must be well below the
differences between arms::

    >>> from prefcurate.recipes.bench import BenchConfig, run_bench
    >>> result = run_bench(BenchConfig(out="bench-out", seeds=3))          # doctest: +SKIP
    >>> result["gates"]["oracle_beats_base"]                                 # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefcurate.base.errors import InputError
from prefcurate.recipes import gold, toytask
from prefcurate.recipes.basepolicy import BaseConfig
from prefcurate.reporting import stats
from prefcurate.routing.presets import PAPER

if TYPE_CHECKING:
    from trainers.config import TrainConfig

#: Held-out prompts: fixed for every seed and arm (a seed varies the samples, not the questions).
EVAL_PROMPTS_SEED = "eval-prompts"
#: Seed of the evaluation samples (plus the run's seed); the pairs' samples use their own seeds.
EVAL_SEED = 10_000

#: The policies a pair's responses are drawn from (:func:`mixture_configs`), a name per share:
#: weak 1/5, base 1/5, strong 3/5 — most of UltraFeedback's 17 models are stronger than the
#: 7B SFT model the paper trains from.
MIXTURE: tuple[str, ...] = ("weak", "base", "strong", "strong", "strong")
POLICIES: tuple[str, ...] = ("weak", "base", "strong")

#: The benchmark's judge: random error (σ 0.4), a systematic one (+0.2 rating per character
#: longer than the ideal answer) and ratings that crowd towards the top (r*^0.5). Chosen on
#: one seed's pairs so that ≈12% of pairs tie, as in UltraFeedback (docs/results.md).
BENCH_NOISE = toytask.RatingNoise(offset=3.0, scale=5.0, sigma=0.4, length_bias=0.2, power=0.5)


def mixture_configs(base: BaseConfig) -> dict[str, BaseConfig]:
    """The three policies of the response mixture, derived from the base policy's recipe.

    - ``weak``: a quarter of the demonstrations, one epoch (a checkpoint early in training);
    - ``base``: the base policy itself (every arm's start and DPO reference);
    - ``strong``: demonstrations with a fifth of the flaws, one more epoch.
    """
    return {
        "weak": replace(base, demos=max(50, base.demos // 4), epochs=1),
        "base": base,
        "strong": replace(base, error_rate=base.error_rate / 5, epochs=base.epochs + 1),
    }


@dataclass(frozen=True)
class Arm:
    """One arm of the benchmark: how ``prefcurate route`` splits the pairs and what train adds."""

    name: str
    mode: str  # route --mode: mixdpo | dpo | filter | sft
    order: str  # route --order: curriculum | random (random = shuffled, seeded)
    threshold: float | None = None
    soft: bool = False  # route --soft T (T = BenchConfig.soft_temperature)
    oracle: bool = False  # pairs relabelled by r* itself
    schedule: str = "cosine"  # the paper's cosine decay, or constant after the warmup
    description: str = ""


#: The arms of the grid; :data:`ARMS` runs each under both schedules (``NAME``, ``NAME/const``).
SCHEDULED_ARMS: tuple[Arm, ...] = (
    Arm("oracle", "dpo", "random", oracle=True, description="DPO, pairs labelled by r*"),
    Arm("sft", "sft", "random", description="SFT on every chosen response, shuffled"),
    Arm("dpo", "dpo", "random", description="DPO on all pairs, shuffled (the paper's baseline)"),
    Arm("dpo-curriculum", "dpo", "curriculum", description="DPO on all pairs, easy → hard"),
    Arm("filter", "filter", "curriculum", 0.5, description="DPO, margin < 0.5 dropped"),
    Arm("mixdpo-0.5", "mixdpo", "curriculum", 0.5, description="MixDPO, τ = 0.5 (the ties)"),
    Arm("mixdpo-1.0", "mixdpo", "curriculum", 1.0, description="MixDPO, τ = 1.0"),
    Arm("mixdpo-1.5", "mixdpo", "curriculum", 1.5, description="MixDPO, τ = 1.5"),
    Arm("soft-0.5", "mixdpo", "curriculum", 0.5, soft=True, description="soft routing, τ = 0.5"),
)
#: The schedules of the grid: arm-name suffix → lr schedule after the warmup.
SCHEDULES: dict[str, str] = {"": "cosine", "/const": "constant"}
ARMS: tuple[Arm, ...] = tuple(
    replace(
        arm,
        name=arm.name + suffix,
        schedule=schedule,
        description=arm.description + ("" if schedule == "cosine" else "; constant lr"),
    )
    for suffix, schedule in SCHEDULES.items()
    for arm in SCHEDULED_ARMS
)
ARM_NAMES = tuple(a.name for a in ARMS)
#: ``--quick``: three seeds, the arms of the main claims under the paper's settings.
QUICK_ARMS: tuple[str, ...] = ("oracle", "dpo", "dpo-curriculum", "filter", "mixdpo-0.5")


@dataclass(frozen=True)
class Claim:
    """A comparison ``a − b`` (mean gold reward, paired by seed) and the paper's claim it tests."""

    name: str
    a: str
    b: str
    claim: str
    primary: bool = False


#: Declared before the run (docs/results.md): MixDPO at τ = 0.5 against shuffled DPO under the
#: paper's recipe. Every other comparison is exploratory and Holm-corrected.
PRIMARY = Claim("routing vs DPO", "mixdpo-0.5", "dpo", "routing", primary=True)
CLAIMS: tuple[Claim, ...] = (
    PRIMARY,
    Claim("order (DPO)", "dpo-curriculum", "dpo", "order"),
    Claim("order (DPO), const", "dpo-curriculum/const", "dpo/const", "order"),
    Claim("routing vs DPO, const", "mixdpo-0.5/const", "dpo/const", "routing"),
    Claim("routing vs DPO, same order", "mixdpo-0.5", "dpo-curriculum", "routing"),
    Claim(
        "routing vs DPO, same order, const",
        "mixdpo-0.5/const",
        "dpo-curriculum/const",
        "routing",
    ),
    Claim("routing vs discarding", "mixdpo-0.5", "filter", "discarding"),
    Claim("routing vs discarding, const", "mixdpo-0.5/const", "filter/const", "discarding"),
    Claim("τ 0.5 vs 1.0", "mixdpo-0.5", "mixdpo-1.0", "tau"),
    Claim("τ 1.0 vs 1.5", "mixdpo-1.0", "mixdpo-1.5", "tau"),
    Claim("τ 0.5 vs 1.0, const", "mixdpo-0.5/const", "mixdpo-1.0/const", "tau"),
    Claim("τ 1.0 vs 1.5, const", "mixdpo-1.0/const", "mixdpo-1.5/const", "tau"),
    Claim("soft vs hard routing", "soft-0.5", "mixdpo-0.5", "soft"),
    Claim("soft vs hard routing, const", "soft-0.5/const", "mixdpo-0.5/const", "soft"),
    Claim("label noise costs", "oracle", "dpo", "noise"),
    Claim("schedule (MixDPO)", "mixdpo-0.5/const", "mixdpo-0.5", "schedule"),
)


#: What the bench writes into its folder: one folder per seed and the results.
BENCH_ENTRIES = ("seed-*", "results.json", "results.md", "chart.png", ".*.tmp-*", ".*.lock")


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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        out["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        return out


#: ``progress(message, done, total)``: ``done`` of ``total`` trained arms so far.
Progress = Callable[[str, int, int], None]


def run_bench(config: BenchConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run every arm for every seed; write ``results.json`` into ``config.out`` and return it."""
    import torch

    gold.require_lc()
    report = progress or (lambda *_: None)
    total = config.seeds * len(config.arms)
    finished = [0]

    def say(message: str, arms_done: int = 0) -> None:
        finished[0] += arms_done
        report(message, finished[0], total)

    from prefcurate.base.outdir import open_dir

    out = open_dir(config.out, force=config.force, kind="bench", entries=BENCH_ENTRIES)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    load_before = _load_average()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        say("three policies (trained once, cached)")
        env = Environment.build(config)
        seeds = _run_seeds(config, env, say)
    finally:
        torch.set_num_threads(threads)
    result = summarize(config, env, seeds)
    result["seconds"] = round(time.perf_counter() - started, 1)
    # a shared machine stretches wall time; CPU time and the load say by how much
    result["cpu_seconds"] = round(_cpu_seconds() - cpu_started, 1)
    result["workers"] = config.workers
    result["load_average"] = {"start": load_before, "end": _load_average()}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_seeds(config: BenchConfig, env: Environment, say: Callable[..., None]) -> list:
    """Every seed, in ``config.workers`` processes (each seed is independent and seeded, so the
    results are the same however many processes run them)."""
    if config.workers == 1 or config.seeds == 1:
        return [
            run_seed(config, env, seed, lambda m, done=False: say(m, int(done)))
            for seed in range(config.seeds)
        ]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    say(f"{config.seeds} seeds in {config.workers} processes")
    results: dict[int, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(config.workers, config.seeds), mp_context=context) as pool:
        futures = {pool.submit(_seed_worker, config, env, s): s for s in range(config.seeds)}
        for future in as_completed(futures):
            seed = futures[future]
            results[seed] = future.result()
            say(f"seed {seed} done", len(results[seed]["arms"]))
    return [results[s] for s in range(config.seeds)]


def _seed_worker(config: BenchConfig, env: Environment, seed: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config.threads)
    return run_seed(config, env, seed, lambda *_args, **_kw: None)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the seed workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _load_average() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not every platform has one
        return None


@dataclass
class Environment:
    """What every seed shares: the policies, the task's alphabet, the held-out prompts.

    ``policies`` maps each mixture member (and always ``base``) to its model directory;
    :attr:`base_dir` is the base policy, every arm's start and DPO reference.
    """

    allowed: list[int]
    eval_prompts: list[str]
    cache_dir: Path
    policies: dict[str, Path] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.policies["base"]

    @classmethod
    def build(cls, config: BenchConfig) -> Environment:
        from prefcurate.base.cachedir import default_cache_dir
        from prefcurate.recipes.basepolicy import base_policy
        from trainers.model import build_tiny

        cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        prompts = eval_prompts(config.eval_prompts)
        recipes = mixture_configs(config.base)
        policies = {
            name: base_policy(recipes[name], cache_dir=cache_dir, exclude=frozenset(prompts))
            for name in dict.fromkeys(("base", *config.mixture))
        }
        allowed = toytask.allowed_token_ids(build_tiny(0).tokenizer)
        return cls(allowed, prompts, cache_dir, policies)

    def sample(self, config: BenchConfig, loaded, prompts: list[str], *, seed: int) -> list:
        """``loaded``'s answers to ``prompts``, within the task's alphabet, seeded."""
        from trainers.sample import sample

        return sample(
            loaded.model,
            loaded.tokenizer,
            prompts,
            seed=seed,
            temperature=config.temperature,
            max_new_tokens=toytask.max_response_tokens(),
            allowed_token_ids=self.allowed,
        )

    def judge(self, samples: list, base_texts: list[str]) -> dict[str, Any]:
        """Gold-reward figures of answers to the held-out prompts, against the base's answers."""
        return gold.evaluate(
            self.eval_prompts,
            [s.text for s in samples],
            base_texts,
            finished=[s.finished for s in samples],
        )


def eval_prompts(n: int) -> list[str]:
    """The held-out prompts; the policies' demonstrations and every seed's pairs avoid them."""
    return toytask.make_prompts(random.Random(EVAL_PROMPTS_SEED), n)


def make_pairs(config: BenchConfig, env: Environment, seed: int) -> list[dict[str, Any]]:
    """``config.pairs`` pairs of two distinct answers from the policy mixture, judged.

    For each prompt, each of the two responses comes from a policy drawn from ``config.mixture``
    (a name per share, possibly the same policy twice). Every row also records which policy
    wrote each side and ``gold_base``, the r* of one base-policy answer to the same prompt, so
    the report can say how often a pair's chosen response beats what the base policy would
    write.
    """
    from trainers.model import load_model

    rng = random.Random(f"pairs-{seed}")
    prompts = toytask.make_prompts(rng, int(config.pairs * 2.5), exclude=set(env.eval_prompts))
    picks = [(rng.choice(config.mixture), rng.choice(config.mixture)) for _ in prompts]
    members = list(dict.fromkeys(config.mixture))
    models = {name: load_model(str(env.policies[name])) for name in members}
    texts: list[list[Any]] = [[None, None] for _ in prompts]
    for slot in (0, 1):
        for k, name in enumerate(members):
            mine = [i for i, pick in enumerate(picks) if pick[slot] == name]
            answers = env.sample(
                config,
                models[name],
                [prompts[i] for i in mine],
                seed=100_000 * (k + 1) + 2 * seed + slot,
            )
            for i, answer in zip(mine, answers, strict=True):
                texts[i][slot] = answer
    noise_rng = random.Random(f"noise-{seed}")
    rows = []
    for prompt, (a, b), (pa, pb) in zip(prompts, texts, picks, strict=True):
        if a.text == b.text or not (a.finished and b.finished):
            continue  # identical responses carry no preference; unfinished ones are not answers
        row = toytask.label_pair(prompt, a.text, b.text, noise_rng, config.noise)
        swapped = row["chosen"] != a.text
        row["policy_chosen"], row["policy_rejected"] = (pb, pa) if swapped else (pa, pb)
        rows.append(row)
        if len(rows) == config.pairs:
            break
    else:
        raise InputError(
            f"the policies gave only {len(rows)} usable pairs of {config.pairs}",
            fix="lower --pairs",
        )
    base = models.get("base") or load_model(str(env.base_dir))
    reference = env.sample(config, base, [r["prompt"] for r in rows], seed=300_000 + seed)
    for row, answer in zip(rows, reference, strict=True):
        row["gold_base"] = toytask.gold_reward(row["prompt"], answer.text)
    return rows


#: Margin buckets of the inversion report (ratings are in steps of 0.5).
MARGIN_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0", 0.0, 0.0),
    ("0.5", 0.5, 0.5),
    ("1", 1.0, 1.0),
    ("1.5", 1.5, 1.5),
    ("≥2", 2.0, float("inf")),
)


def pair_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the labelled pairs look like: ties, inversions by margin, ties against the base.

    - ``inverted_by_margin``: per margin bucket, the share of pairs whose chosen response has
      the lower r* (a tie is oriented by a coin flip, so half of the ties whose r* differ);
    - ``tie_chosen_beats_base``: how often a tie's chosen response has a higher r* than the base
      policy's own answer to the prompt (equal counts one half); ``chosen_beats_base`` the same
      over all pairs. Above one half, SFT on the ties distils from something better than the
      base policy, the property of UltraFeedback the paper's mechanism needs;
    - ``longer_when_inverted``: among inverted pairs whose lengths differ, the share where the
      chosen (worse) response is the longer one — the judge's systematic error at work.
    """
    margins = [r["score_chosen"] - r["score_rejected"] for r in rows]
    inverted = [r["gold_chosen"] < r["gold_rejected"] for r in rows]
    ties = [m == 0 for m in margins]

    def share(values: list[float], keep: list[bool] | None = None) -> float | None:
        chosen = [v for v, k in zip(values, keep or [True] * len(values), strict=True) if k]
        return statistics.fmean(chosen) if chosen else None

    def beats_base(row: dict[str, Any]) -> float:
        a, b = row["gold_chosen"], row.get("gold_base")
        return 0.5 if b is None or a == b else float(a > b)

    by_margin = {
        name: share(inverted, [low <= m <= high for m in margins])
        for name, low, high in MARGIN_BUCKETS
    }
    counts = {
        name: sum(low <= m <= high for m in margins) / len(rows)
        for name, low, high in MARGIN_BUCKETS
    }
    beats = [beats_base(r) for r in rows]
    decided = [r["gold_chosen"] != r["gold_rejected"] for r in rows]
    length_differs = [len(r["chosen"]) != len(r["rejected"]) for r in rows]
    chosen_longer = [len(r["chosen"]) > len(r["rejected"]) for r in rows]
    inverted_and_differs = [i and d for i, d in zip(inverted, length_differs, strict=True)]
    out: dict[str, Any] = {
        "pairs": len(rows),
        "tie_share": statistics.fmean(ties),
        "inverted_share": statistics.fmean(inverted),
        "inverted_share_margin_ge_1": share(inverted, [m >= 1 for m in margins]),
        "inverted_share_margin_0.5": share(inverted, [m == 0.5 for m in margins]),
        "tie_with_gold_difference_share": share(decided, ties),
        "gold_equal_share": statistics.fmean(not d for d in decided),
        "tie_chosen_beats_base": share(beats, ties),
        "chosen_beats_base": statistics.fmean(beats),
        "chosen_beats_base_margin_ge_1": share(beats, [m >= 1 for m in margins]),
        "longer_when_inverted": share(chosen_longer, inverted_and_differs),
        "chosen_longer_share": share(chosen_longer, length_differs),
    }
    out.update({f"inverted_margin_{k}": v for k, v in by_margin.items()})
    out.update({f"share_margin_{k}": v for k, v in counts.items()})
    if "policy_chosen" in rows[0]:
        for name in POLICIES:
            out[f"tie_chosen_from_{name}"] = share([r["policy_chosen"] == name for r in rows], ties)
    return out


def arm_config(
    config: BenchConfig,
    env: Environment,
    *,
    split: Path,
    out: Path,
    seed: int,
    label_smoothing: float | None = None,
    lr_schedule: str = "cosine",
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
        batch_size=config.batch_size,
        max_length=32,
        seed=seed,
        cache_dir=env.cache_dir,
        allowed_token_ids=env.allowed,
    )


def run_seed(
    config: BenchConfig, env: Environment, seed: int, say: Callable[..., None]
) -> dict[str, Any]:
    """One seed: pairs, the base policy's two evaluation draws, then every arm."""
    from prefcurate.recipes.pipeline import route_and_train
    from trainers.model import load_model

    directory = config.out / f"seed-{seed}"
    directory.mkdir(parents=True)
    say(f"seed {seed}: sampling {config.pairs} pairs from the policy mixture")
    rows = make_pairs(config, env, seed)
    data = directory / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    oracle = directory / "oracle.jsonl"
    oracle.write_text("".join(json.dumps(toytask.oracle_row(r)) + "\n" for r in rows))

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
        folder = directory / arm.name.replace("/", "-")
        plan, result = route_and_train(
            oracle if arm.oracle else data,
            arm_config(
                config,
                env,
                split=folder / "split",
                out=folder / "run",
                seed=seed,
                label_smoothing=config.label_smoothing if arm.mode != "sft" else 0.0,
                lr_schedule=arm.schedule,
            ),
            mode=arm.mode,
            threshold=arm.threshold,
            order=arm.order,
            seed=seed,
            soft=config.soft_temperature if arm.soft else None,
        )
        policy = load_model(str(result.model_dir))
        samples = env.sample(config, policy, env.eval_prompts, seed=eval_seed)
        evaluation[arm.name] = env.judge(samples, base_texts)
        arms[arm.name] = {
            "threshold": plan.threshold,
            "pairs": result.pairs,
            "sft_share": plan.counts.get(
                "weight_mean", result.pairs["sft"] / result.pairs["pairs"]
            ),
            "steps": result.steps,
            "train_seconds": result.train_seconds,
        }
        shutil.rmtree(folder / "run" / "model")  # 1.2 MB per arm: keep metrics, not weights
        say(f"seed {seed}: arm {arm.name} done", True)
    return {"seed": seed, "pairs": pair_stats(rows), "arms": arms, "evaluation": evaluation}


#: Figures of each arm, from :func:`prefcurate.gold.evaluate`.
FIGURES: tuple[str, ...] = ("gold", "win_rate", "lc_win_rate", "invalid", "perfect", "length")
#: The metrics comparisons are made on: the gold reward (the claims) and the LC win rate.
COMPARED: tuple[str, ...] = ("gold", "lc_win_rate")


def summarize(config: BenchConfig, env: Environment, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm the mean and 95% interval over seeds; per claim the paired interval; the gates."""
    names = ["base", "base-redraw", *(a.name for a in ARMS if a.name in config.arms)]
    table = []
    for name in names:
        row: dict[str, Any] = {"arm": name}
        for key in FIGURES:
            values = [s["evaluation"][name][key] for s in seeds]
            if any(v is None for v in values):
                row[key] = row[f"{key}_sd"] = row[f"{key}_ci"] = None
                continue
            mean, sd = gold.spread(values)
            low, high, _ = stats.t_interval(values) if len(values) > 1 else (mean, mean, 1.0)
            row[key], row[f"{key}_sd"], row[f"{key}_ci"] = mean, sd, (high - low) / 2
        arm = next((a for a in ARMS if a.name == name), None)
        row["description"] = (
            arm.description
            if arm
            else ("the base policy (SFT)" if name == "base" else "a second draw of the base policy")
        )
        if arm is not None:
            row["schedule"] = arm.schedule
            row["sft_share"] = statistics.fmean(s["arms"][name]["sft_share"] for s in seeds)
            row["pairs_trained"] = statistics.fmean(
                s["arms"][name]["pairs"]["pairs"] for s in seeds
            )
            row["steps"] = statistics.fmean(s["arms"][name]["steps"] for s in seeds)
            row["threshold"] = seeds[0]["arms"][name]["threshold"]
        table.append(row)
    by_name = {r["arm"]: r for r in table}
    noise = statistics.fmean(
        abs(s["evaluation"]["base-redraw"]["gold"] - s["evaluation"]["base"]["gold"]) for s in seeds
    )
    trained = [r for r in table if r["arm"] not in ("base", "base-redraw")]
    largest = max((abs(r["gold"] - by_name["base"]["gold"]) for r in trained), default=0.0)
    gates: dict[str, Any] = {"eval_noise_gold": noise, "largest_arm_gap_gold": largest}
    gates["eval_noise_small"] = largest > 0 and noise < 0.25 * largest
    if "oracle" in by_name:
        gates["oracle_gain_gold"] = by_name["oracle"]["gold"] - by_name["base"]["gold"]
        gates["oracle_beats_base"] = all(
            s["evaluation"]["oracle"]["gold"] > s["evaluation"]["base"]["gold"] for s in seeds
        )
    pair_keys = seeds[0]["pairs"].keys()
    pairs = {}
    for k in pair_keys:
        values = [s["pairs"][k] for s in seeds if s["pairs"].get(k) is not None]
        pairs[k] = statistics.fmean(values) if values else None
    return {
        "config": config.to_json(),
        "base_policy": str(env.base_dir),
        "policies": {k: str(v) for k, v in env.policies.items()},
        "eval_prompts": len(env.eval_prompts),
        "pairs": pairs,
        "gates": gates,
        "table": table,
        "comparisons": compare(seeds, set(names)),
        "seeds": seeds,
    }


def compare(seeds: list[dict[str, Any]], present: set[str]) -> list[dict[str, Any]]:
    """Every claim whose arms ran: paired intervals per metric, Holm over the exploratory ones.

    The primary claim is read at its own 95% level; the exploratory claims' p-values are
    Holm-adjusted within each metric, and a verdict needs both intervals on one side of zero
    and (exploratory) an adjusted p below 0.05.
    """
    claims = [c for c in CLAIMS if c.a in present and c.b in present]
    out = []
    for metric in COMPARED:
        if any(s["evaluation"]["base"][metric] is None for s in seeds):
            continue
        results = {
            c.name: stats.paired(
                [s["evaluation"][c.a][metric] for s in seeds],
                [s["evaluation"][c.b][metric] for s in seeds],
                seed=i,
            )
            for i, c in enumerate(claims)
        }
        adjusted = stats.holm({c.name: results[c.name].p for c in claims if not c.primary})
        for c in claims:
            r = results[c.name]
            p_holm = None if c.primary else adjusted[c.name]
            out.append(
                {
                    "name": c.name,
                    "a": c.a,
                    "b": c.b,
                    "claim": c.claim,
                    "primary": c.primary,
                    "metric": metric,
                    **r.to_dict(),
                    "p_holm": p_holm,
                    "verdict": stats.verdict(r, p_holm),
                }
            )
    return out
