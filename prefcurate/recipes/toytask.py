"""A toy alignment task with a gold reward code can compute: sort the digits of the prompt.

The benchmark (:mod:`prefcurate.recipes.bench`) needs a task where the truth is known, small
enough for the byte-level ``tiny`` model on a CPU. A prompt is ``"sort:4917="``; the ideal response
is ``"1479"``. The gold reward r* ∈ [0, 1] of a response (:func:`gold_reward`) gives partial credit,
so imperfect responses differ in quality by small steps:

    r* = ½ · (positions equal to the sorted answer) / max(len(response), len(answer))
       + ½ · (multiset overlap of digits)            / max(len(response), len(answer))

and 0 for an empty response or one with a character other than a digit (invalid).

Real preference data is labelled by a judge, not by r*. :class:`RatingNoise` models that: each
response gets an UltraFeedback-like rating, ``clip(round_half(offset + scale · r*^power + bias ·
excess + N(0, σ)), 1, 10)`` (rounded to the nearest 0.5), where ``excess`` is how many characters
longer the response is than the ideal answer. A power below 1 makes the judge separate poor answers
more sharply than good ones, so ratings crowd towards the top, as GPT-4's do on UltraFeedback, and
ties happen more often between good answers. The Gaussian term is the judge's random error; the
``bias`` term its systematic one, a preference for longer answers (GPT-4 as a judge favours longer
responses, the bias AlpacaEval's length-controlled win rate corrects). The pair's chosen response
is the higher-rated one (a tie is oriented by a coin flip), and margin = the rating difference.
Small margins are therefore truly ambiguous: some are inverted with respect to r*, and some of the
inversions are systematic (a longer, worse answer preferred). The measured tie and inversion shares
are in the benchmark's report.

Everything is seeded: :func:`make_prompts` and :class:`RatingNoise` take ``random.Random``
streams, never the global random state.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: The characters a response may use; with EOS these are the only tokens the model may emit.
ALPHABET = "0123456789"
PREFIX, SUFFIX = "sort:", "="
#: Digits per prompt, inclusive.
MIN_DIGITS, MAX_DIGITS = 3, 8


def make_prompt(digits: str) -> str:
    """The prompt asking to sort ``digits``: ``make_prompt("4917") == "sort:4917="``."""
    return f"{PREFIX}{digits}{SUFFIX}"


def answer(prompt: str) -> str:
    """The ideal response: the prompt's digits in ascending order."""
    return "".join(sorted(digits_of(prompt)))


def digits_of(prompt: str) -> str:
    if not (prompt.startswith(PREFIX) and prompt.endswith(SUFFIX)):
        msg = f"not a sorting prompt: {prompt!r}"
        raise ValueError(msg)
    return prompt[len(PREFIX) : -len(SUFFIX)]


def is_valid(response: str) -> bool:
    """A valid response is non-empty and uses only digits."""
    return bool(response) and all(c in ALPHABET for c in response)


def gold_reward(prompt: str, response: str) -> float:
    """r*(prompt, response) ∈ [0, 1]: half positional accuracy, half digit-multiset overlap.

    >>> gold_reward("sort:4917=", "1479"), gold_reward("sort:4917=", "1497")
    (1.0, 0.75)
    """
    if not is_valid(response):
        return 0.0
    target = answer(prompt)
    length = max(len(response), len(target))
    positions = sum(a == b for a, b in zip(response, target, strict=False))
    overlap = sum((Counter(response) & Counter(target)).values())
    return 0.5 * positions / length + 0.5 * overlap / length


def make_prompts(rng: random.Random, n: int, *, exclude: set[str] | frozenset[str] = frozenset()):
    """``n`` distinct prompts of 3–8 random digits, none of them in ``exclude``."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        k = rng.randint(MIN_DIGITS, MAX_DIGITS)
        prompt = make_prompt("".join(rng.choice(ALPHABET) for _ in range(k)))
        if prompt not in seen and prompt not in exclude:
            seen.add(prompt)
            out.append(prompt)
    return out


def demonstration(prompt: str, rng: random.Random, *, error_rate: float) -> str:
    """A demonstration for the base policy's SFT: the answer, or with ``error_rate`` a flawed one.

    The flaws (swap two neighbours, drop a digit, repeat a digit) make the base policy valid but
    imperfect, so its samples differ in gold reward and preference pairs carry signal.
    """
    out = list(answer(prompt))
    if rng.random() < error_rate:
        flaws = rng.randint(1, 2)
        for _ in range(flaws):
            kind = rng.choice(("swap", "drop", "repeat"))
            i = rng.randrange(len(out))
            if kind == "swap" and len(out) > 1:
                j = min(i + 1, len(out) - 1) if i + 1 < len(out) else i - 1
                out[i], out[j] = out[j], out[i]
            elif kind == "drop" and len(out) > 1:
                del out[i]
            else:
                out.insert(i, out[i])
    return "".join(out)


@dataclass(frozen=True)
class RatingNoise:
    """A judge's rating: ``round_half(offset + scale·r*^power + length_bias·excess + N(0, σ))``.

    ``excess`` is the response's length minus the ideal answer's, in characters (negative for a
    short answer). The defaults compress the scale (UltraFeedback ratings of one prompt's
    responses are close); ``length_bias`` 0 and ``power`` 1 are a judge without systematic
    error or saturation. The benchmark's judge sets all four (:data:`prefcurate.recipes.bench.
    BENCH_NOISE`, docs/results.md).
    """

    offset: float = 3.0
    scale: float = 4.5
    sigma: float = 0.5
    length_bias: float = 0.0
    power: float = 1.0

    def rate(self, reward: float, rng: random.Random, excess: int = 0) -> float:
        raw = self.offset + self.scale * reward**self.power + self.length_bias * excess
        raw += rng.gauss(0.0, self.sigma)
        return min(10.0, max(1.0, round(raw * 2) / 2))

    def to_dict(self) -> dict[str, float]:
        return {
            "offset": self.offset,
            "scale": self.scale,
            "sigma": self.sigma,
            "length_bias": self.length_bias,
            "power": self.power,
        }


def label_pair(
    prompt: str, a: str, b: str, rng: random.Random, noise: RatingNoise
) -> dict[str, Any]:
    """One preference row from two responses, labelled by noisy ratings (chosen = higher).

    The row carries ``gold_chosen`` / ``gold_rejected`` (r* of each side) so that inversions can
    be counted and the oracle arm relabelled; the trainer never reads them.
    """
    ra, rb = gold_reward(prompt, a), gold_reward(prompt, b)
    ideal = len(digits_of(prompt))
    sa, sb = noise.rate(ra, rng, len(a) - ideal), noise.rate(rb, rng, len(b) - ideal)
    flip = rng.random() < 0.5
    if sb > sa or (sb == sa and flip):
        a, b, ra, rb, sa, sb = b, a, rb, ra, sb, sa
    return {
        "prompt": prompt,
        "chosen": a,
        "rejected": b,
        "score_chosen": sa,
        "score_rejected": sb,
        "gold_chosen": ra,
        "gold_rejected": rb,
    }


def oracle_row(row: dict[str, Any]) -> dict[str, Any]:
    """The same pair labelled by r* itself: chosen = higher r*, scores = 1 + 9·r*."""
    a, b = row["chosen"], row["rejected"]
    ra, rb = row["gold_chosen"], row["gold_rejected"]
    if rb > ra:
        a, b, ra, rb = b, a, rb, ra
    return {
        **row,
        "chosen": a,
        "rejected": b,
        "gold_chosen": ra,
        "gold_rejected": rb,
        "score_chosen": 1 + 9 * ra,
        "score_rejected": 1 + 9 * rb,
    }


def allowed_token_ids(tokenizer) -> list[int]:
    """Token ids of the alphabet's characters and EOS: the task's whole output vocabulary."""
    ids: set[int] = set()
    for piece in tokenizer(list(ALPHABET), add_special_tokens=False)["input_ids"]:
        ids.update(piece)
    ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def max_response_tokens() -> int:
    """Room for the longest answer plus a few flawed extra digits and EOS."""
    return MAX_DIGITS + 4
