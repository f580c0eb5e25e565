"""The benchmark's data: the policies each seed samples from, its pairs, their labels, the judge.

Per seed (:func:`prefcurate.recipes.bench.run_seed`) an :class:`Environment` holds the seed's
held-out prompts and its three policies of the response mixture (:func:`mixture_configs`);
:func:`sample_pairs` draws two answers per prompt from the mixture, :func:`label` rates them with
a judge (:class:`prefcurate.recipes.toytask.RatingNoise`), and :func:`pair_stats` says what the
labelled pairs look like (ties, inversions, how often a tie's chosen answer beats the base
policy's).

The judge without the length bias (:func:`without_length_bias`) labels the very same answers with
the very same noise draws and coin flips: the two label sets differ only by the length term, which
is what the benchmark's length comparisons isolate (docs/results_declared.md).

The demo (:mod:`prefcurate.recipes.demo`) uses the same pieces with one shared environment.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from prefcurate.base.errors import InputError
from prefcurate.recipes import gold, toytask
from prefcurate.recipes.basepolicy import BaseConfig


class BenchConfig(Protocol):
    """The settings this module reads (:class:`prefcurate.recipes.bench.BenchConfig` has them)."""

    pairs: int
    eval_prompts: int
    noise: toytask.RatingNoise
    base: BaseConfig
    mixture: tuple[str, ...]
    temperature: float
    cache_dir: Path | None


#: Held-out prompts of the shared environment (the demo); a benchmark seed draws its own.
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


def without_length_bias(noise: toytask.RatingNoise) -> toytask.RatingNoise:
    """The same judge without its preference for longer answers (the length comparisons')."""
    return replace(noise, length_bias=0.0)


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


@dataclass
class Environment:
    """What a seed's arms share: the policies, the task's alphabet, the held-out prompts.

    ``policies`` maps each mixture member (and always ``base``) to its model directory;
    :attr:`base_dir` is the base policy, every arm's start and DPO reference. ``keys`` names each
    policy in the cache (``basepolicy/<key>``), for results.json.
    """

    allowed: list[int]
    eval_prompts: list[str]
    cache_dir: Path
    policies: dict[str, Path] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.policies["base"]

    @classmethod
    def build(cls, config: BenchConfig, seed: int | None = None) -> Environment:
        """The policies (trained once, then cached) and the held-out prompts.

        ``seed`` None: one environment for every seed (the demo: the base recipe's own seed and
        fixed prompts). A seed: that seed's own held-out prompts and policies, the base recipe
        with ``seed`` as its seed (demonstrations and initial weights), so a benchmark's
        intervals carry the variance of the policies and of the prompts.
        """
        from prefcurate.base.cachedir import default_cache_dir
        from prefcurate.recipes.basepolicy import base_policy
        from trainers.model import build_tiny

        cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        prompts = eval_prompts(config.eval_prompts, seed)
        base = config.base if seed is None else replace(config.base, seed=seed)
        recipes = mixture_configs(base)
        held_out = frozenset(prompts)
        names = dict.fromkeys(("base", *config.mixture))
        policies = {
            n: base_policy(recipes[n], cache_dir=cache_dir, exclude=held_out) for n in names
        }
        keys = {n: f"basepolicy/{recipes[n].key(held_out)}" for n in names}
        allowed = toytask.allowed_token_ids(build_tiny(0).tokenizer)
        return cls(allowed, prompts, cache_dir, policies, keys)

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


def eval_prompts(n: int, seed: int | None = None) -> list[str]:
    """The held-out prompts (a seed's own, or the shared ones); the policies' demonstrations and
    the pairs avoid them."""
    name = EVAL_PROMPTS_SEED if seed is None else f"{EVAL_PROMPTS_SEED}-{seed}"
    return toytask.make_prompts(random.Random(name), n)


def sample_pairs(config: BenchConfig, env: Environment, seed: int) -> list[dict[str, Any]]:
    """``config.pairs`` prompts with two distinct, finished answers from the policy mixture.

    For each prompt, each of the two answers comes from a policy drawn from ``config.mixture``
    (a name per share, possibly the same policy twice). Each row holds the prompt, the answers
    ``a`` and ``b``, the policies that wrote them and ``gold_base``, the r* of one base-policy
    answer to the same prompt (so the report can say how often a pair's chosen answer beats what
    the base policy would write). Unlabelled: :func:`label` rates them.
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
            seed_of = 100_000 * (k + 1) + 2 * seed + slot
            answers = env.sample(config, models[name], [prompts[i] for i in mine], seed=seed_of)
            for i, answer in zip(mine, answers, strict=True):
                texts[i][slot] = answer
    rows = [
        {"prompt": prompt, "a": a.text, "b": b.text, "policy_a": pa, "policy_b": pb}
        for prompt, (a, b), (pa, pb) in zip(prompts, texts, picks, strict=True)
        # identical answers carry no preference; unfinished or empty ones are not answers (route
        # drops a pair whose chosen answer is empty: every arm and judge keeps the same pairs)
        if a.text != b.text and a.finished and b.finished and a.text.strip() and b.text.strip()
    ][: config.pairs]
    if len(rows) < config.pairs:
        raise InputError(
            f"the policies gave only {len(rows)} usable pairs of {config.pairs}",
            fix="lower --pairs",
        )
    base = models.get("base") or load_model(str(env.base_dir))
    reference = env.sample(config, base, [r["prompt"] for r in rows], seed=300_000 + seed)
    for row, answer in zip(rows, reference, strict=True):
        row["gold_base"] = toytask.gold_reward(row["prompt"], answer.text)
    return rows


def label(
    sampled: list[dict[str, Any]], noise: toytask.RatingNoise, seed: int
) -> list[dict[str, Any]]:
    """The pairs rated by ``noise`` (chosen = higher rating, a tie by a coin flip).

    The noise draws come from the seed's own stream, consumed the same way whatever the judge,
    so two judges that differ in one term label the same answers with the same draws.
    """
    rng = random.Random(f"noise-{seed}")
    rows = []
    for pair in sampled:
        row = toytask.label_pair(pair["prompt"], pair["a"], pair["b"], rng, noise)
        swapped = row["chosen"] != pair["a"]
        pa, pb = pair["policy_a"], pair["policy_b"]
        row["policy_chosen"], row["policy_rejected"] = (pb, pa) if swapped else (pa, pb)
        row["gold_base"] = pair["gold_base"]
        rows.append(row)
    return rows


def make_pairs(config: BenchConfig, env: Environment, seed: int) -> list[dict[str, Any]]:
    """``config.pairs`` pairs from the policy mixture, labelled by ``config.noise``'s judge."""
    return label(sample_pairs(config, env, seed), config.noise, seed)


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
