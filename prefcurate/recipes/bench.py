"""``prefcurate bench mixdpo``: MixDPO and its baselines on a task whose gold reward is known.

The paper (arXiv 2602.00954) reports, on 7–8B models judged by GPT-4, that reading pairs easy →
hard helps, that training small-margin pairs with SFT beats DPO on them and beats discarding
them, and that τ matters. This benchmark tests those claims where the truth is known: the toy
sorting task of :mod:`prefcurate.recipes.toytask`, the ``tiny`` model, one CPU, minutes.

Per seed: sample two responses per prompt from the base policy
(:mod:`prefcurate.recipes.basepolicy`, shared by every arm and seed), label each pair by a
noisy judge's ratings, then for every arm route the pairs with
:func:`prefcurate.route.plan_routes` / :func:`~prefcurate.route.write_route` and train
with :func:`trainers.loop.train` — the library functions behind ``prefcurate route`` and
``prefcurate train`` — from the base policy, one epoch, same pairs, same settings. Each
trained policy answers held-out prompts and is judged by r* (:mod:`prefcurate.recipes.gold`).

Before any comparison the result carries two gates: the oracle arm (DPO on the same pairs
labelled by r*) must beat the base policy, and the evaluation's own noise (two draws from the base
policy) must be well below the differences between arms. Example::

    >>> from prefcurate.recipes.bench import BenchConfig, run_bench
    >>> result = run_bench(BenchConfig(out="bench-out", seeds=3))          # doctest: +SKIP
    >>> result["gates"]["oracle_beats_base"]                                 # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefcurate.errors import InputError
from prefcurate.recipes import gold, toytask
from prefcurate.recipes.basepolicy import BaseConfig

if TYPE_CHECKING:
    from trainers.config import TrainConfig

#: Held-out prompts: fixed for every seed and arm (a seed varies the samples, not the questions).
EVAL_PROMPTS_SEED = "eval-prompts"
#: Seed of the evaluation samples (plus the run's seed); the pairs' samples use 2·seed, 2·seed + 1.
EVAL_SEED = 10_000


@dataclass(frozen=True)
class Arm:
    """One training recipe: how ``prefcurate route`` splits the pairs and what train adds."""

    name: str
    mode: str  # route --mode: mixdpo | dpo | filter | sft
    order: str  # route --order: curriculum | random (random = shuffled, seeded)
    threshold: float | None = None
    sft_fraction: float | None = None
    nll_weight: float = 0.0
    oracle: bool = False  # pairs relabelled by r* itself
    description: str = ""


ARMS: tuple[Arm, ...] = (
    Arm("oracle", "dpo", "random", oracle=True, description="DPO on pairs labelled by r*"),
    Arm("sft", "sft", "random", description="SFT on every chosen response"),
    Arm("dpo", "dpo", "random", description="DPO on all pairs, shuffled"),
    Arm("dpo-curriculum", "dpo", "curriculum", description="DPO on all pairs, easy → hard"),
    Arm("filter", "filter", "curriculum", 0.5, description="DPO, pairs with margin < 0.5 dropped"),
    Arm("dpo+nll", "dpo", "curriculum", nll_weight=1.0, description="DPO + NLL of chosen"),
    Arm("mixdpo-ties", "mixdpo", "curriculum", 0.5, description="MixDPO, τ = 0.5 (the ties)"),
    Arm("mixdpo-30", "mixdpo", "curriculum", sft_fraction=0.3, description="MixDPO, ≈30% sft"),
    Arm("mixdpo-50", "mixdpo", "curriculum", sft_fraction=0.5, description="MixDPO, ≈50% sft"),
)
ARM_NAMES = tuple(a.name for a in ARMS)


#: What the bench writes into its folder: one folder per seed and the results.
BENCH_ENTRIES = ("seed-*", "results.json", "results.md", "chart.png", ".*.tmp-*", ".*.lock")


@dataclass
class BenchConfig:
    """The benchmark's settings; ``prefcurate bench mixdpo`` exposes seeds, pairs, out, arms."""

    out: Path
    seeds: int = 3
    pairs: int = 3000
    eval_prompts: int = 1000
    arms: tuple[str, ...] = ARM_NAMES
    noise: toytask.RatingNoise = field(default_factory=toytask.RatingNoise)
    base: BaseConfig = field(default_factory=BaseConfig)
    # training, identical for every arm (the paper's conservative DPO: ε = 0.1)
    beta: float = 0.5  # picked on seed 0 so that the oracle arm gains most (docs/results.md)
    label_smoothing: float = 0.1
    lr: float = 1e-4
    lr_schedule: str = "constant"  # cosine would give the curriculum's sft tail ~0 lr
    batch_size: int = 16
    temperature: float = 1.0
    threads: int = 1  # the tiny model is far faster on 1 thread than on 2 busy cores
    cache_dir: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.seeds < 1:
            raise InputError(f"--seeds must be at least 1, not {self.seeds}")
        if self.pairs < 16:
            raise InputError(f"--pairs must be at least 16, not {self.pairs}")
        unknown = [a for a in self.arms if a not in ARM_NAMES]
        if unknown:
            raise InputError(
                f"unknown arm {unknown[0]!r}", fix=f"use some of {', '.join(ARM_NAMES)}"
            )

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

    def say(message: str, arm_done: bool = False) -> None:
        finished[0] += arm_done
        report(message, finished[0], total)

    from prefcurate.outdir import open_dir

    out = open_dir(config.out, force=config.force, kind="bench", entries=BENCH_ENTRIES)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        say("base policy (trained once, cached)")
        env = Environment.build(config)
        seeds = []
        for seed in range(config.seeds):
            seeds.append(run_seed(config, env, seed, say))
    finally:
        torch.set_num_threads(threads)
    result = summarize(config, env, seeds)
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@dataclass
class Environment:
    """What every seed shares: the base policy, its tokenizer's alphabet, the held-out prompts."""

    base_dir: Path
    allowed: list[int]
    eval_prompts: list[str]
    cache_dir: Path

    @classmethod
    def build(cls, config: BenchConfig) -> Environment:
        from prefcurate.cachedir import default_cache_dir
        from prefcurate.recipes.basepolicy import base_policy
        from trainers.model import build_tiny

        cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        prompts = eval_prompts(config.eval_prompts)
        base_dir = base_policy(config.base, cache_dir=cache_dir, exclude=frozenset(prompts))
        allowed = toytask.allowed_token_ids(build_tiny(0).tokenizer)
        return cls(base_dir, allowed, prompts, cache_dir)

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
    """The held-out prompts; the base policy's demonstrations and every seed's pairs avoid them."""
    return toytask.make_prompts(random.Random(EVAL_PROMPTS_SEED), n)


def make_pairs(config: BenchConfig, env: Environment, seed: int, loaded) -> list[dict[str, Any]]:
    """``config.pairs`` pairs of two distinct base-policy samples, labelled by the noisy judge."""
    rng = random.Random(f"pairs-{seed}")
    prompts = toytask.make_prompts(rng, int(config.pairs * 2.5), exclude=set(env.eval_prompts))
    first = env.sample(config, loaded, prompts, seed=2 * seed)
    second = env.sample(config, loaded, prompts, seed=2 * seed + 1)
    noise_rng = random.Random(f"noise-{seed}")
    rows = []
    for prompt, a, b in zip(prompts, first, second, strict=True):
        if a.text == b.text or not (a.finished and b.finished):
            continue  # identical responses carry no preference; unfinished ones are not answers
        rows.append(toytask.label_pair(prompt, a.text, b.text, noise_rng, config.noise))
        if len(rows) == config.pairs:
            return rows
    raise InputError(
        f"the base policy gave only {len(rows)} usable pairs of {config.pairs}",
        fix="lower --pairs",
    )


def pair_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Ties and inversions (chosen has the lower r*) of the labelled pairs, overall, by margin."""
    margins = [r["score_chosen"] - r["score_rejected"] for r in rows]
    inverted = [r["gold_chosen"] < r["gold_rejected"] for r in rows]
    ties = [m == 0 for m in margins]

    def share(mask: list[bool], of: list[bool] | None = None) -> float | None:
        chosen = [x for x, keep in zip(mask, of or [True] * len(mask), strict=True) if keep]
        return statistics.fmean(chosen) if chosen else None

    tie_decided = [
        t and r["gold_chosen"] != r["gold_rejected"] for t, r in zip(ties, rows, strict=True)
    ]
    return {
        "pairs": len(rows),
        "tie_share": statistics.fmean(ties),
        "inverted_share": statistics.fmean(inverted),
        "inverted_share_margin_ge_1": share(inverted, [m >= 1 for m in margins]),
        "inverted_share_margin_0.5": share(inverted, [m == 0.5 for m in margins]),
        # a tie is oriented by a coin flip: when r* differs, half of such ties are inverted
        "tie_with_gold_difference_share": share(tie_decided, ties),
        "gold_equal_share": statistics.fmean(r["gold_chosen"] == r["gold_rejected"] for r in rows),
    }


def arm_config(
    config: BenchConfig,
    env: Environment,
    *,
    split: Path,
    out: Path,
    seed: int,
    label_smoothing: float | None = None,
    nll_weight: float = 0.0,
) -> TrainConfig:
    """The trainer's settings for one arm: the same base policy, budget and alphabet for all."""
    from trainers.config import TrainConfig

    return TrainConfig(
        split_dir=split,
        model=str(env.base_dir),
        out=out,
        beta=config.beta,
        label_smoothing=config.label_smoothing if label_smoothing is None else label_smoothing,
        nll_weight=nll_weight,
        lr=config.lr,
        lr_schedule=config.lr_schedule,
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
    base = load_model(str(env.base_dir))
    say(f"seed {seed}: sampling {config.pairs} pairs from the base policy")
    rows = make_pairs(config, env, seed, base)
    data = directory / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    oracle = directory / "oracle.jsonl"
    oracle.write_text("".join(json.dumps(toytask.oracle_row(r)) + "\n" for r in rows))

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
        plan, result = route_and_train(
            oracle if arm.oracle else data,
            arm_config(
                config,
                env,
                split=directory / arm.name / "split",
                out=directory / arm.name / "run",
                seed=seed,
                label_smoothing=config.label_smoothing if arm.mode != "sft" else 0.0,
                nll_weight=arm.nll_weight,
            ),
            mode=arm.mode,
            threshold=arm.threshold,
            sft_fraction=arm.sft_fraction,
            order=arm.order,
            seed=seed,
        )
        policy = load_model(str(result.model_dir))
        samples = env.sample(config, policy, env.eval_prompts, seed=eval_seed)
        evaluation[arm.name] = env.judge(samples, base_texts)
        arms[arm.name] = {
            "threshold": plan.threshold,
            "pairs": result.pairs,
            "sft_share": result.pairs["sft"] / result.pairs["pairs"],
            "steps": result.steps,
            "train_seconds": result.train_seconds,
        }
        say(f"seed {seed}: arm {arm.name} done", True)
    return {"seed": seed, "pairs": pair_stats(rows), "arms": arms, "evaluation": evaluation}


def summarize(config: BenchConfig, env: Environment, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and spreads over seeds per arm, the gates, and the data's tie/inversion shares."""
    names = ["base", "base-redraw", *(a.name for a in ARMS if a.name in config.arms)]
    table = []
    for name in names:
        row: dict[str, Any] = {"arm": name}
        for key in ("gold", "win_rate", "lc_win_rate", "invalid", "perfect", "length"):
            mean, sd = gold.spread([s["evaluation"][name][key] for s in seeds])
            row[key], row[f"{key}_sd"] = mean, sd
        arm = next((a for a in ARMS if a.name == name), None)
        row["description"] = (
            arm.description
            if arm
            else ("the base policy (SFT)" if name == "base" else "a second draw of the base policy")
        )
        if arm is not None:
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
    pairs = {
        k: statistics.fmean(s["pairs"][k] for s in seeds if s["pairs"][k] is not None)
        for k in pair_keys
    }
    return {
        "config": config.to_json(),
        "base_policy": str(env.base_dir),
        "eval_prompts": len(env.eval_prompts),
        "pairs": pairs,
        "gates": gates,
        "table": table,
        "seeds": seeds,
    }
