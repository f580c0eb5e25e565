"""The toy task's gold reward on hand-made responses, and the judge's noise model.

The benchmark's conclusions rest on r* and on how ratings depend on it, so both are checked
against values worked out by hand here.
"""

from __future__ import annotations

import math
import random

import pytest

from prefcurate.recipes import gold, toytask


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # answer "1479": every position and every digit right
        ("1479", 1.0),
        # two positions right (1, 4), all four digits present: ½·2/4 + ½·4/4
        ("1497", 0.75),
        # a digit missing: 3 positions of 4, 3 digits of 4
        ("147", 0.75),
        # a digit repeated: length 5, 4 positions and 4 digits of 5
        ("14799", 0.8),
        # reversed: no position right, every digit present: ½·0 + ½·1
        ("9741", 0.5),
        # invalid answers score 0
        ("", 0.0),
        ("14a9", 0.0),
        ("1479 ", 0.0),
    ],
)
def test_gold_reward_on_hand_made_responses(response, expected):
    assert toytask.gold_reward("sort:4917=", response) == pytest.approx(expected)


def test_gold_reward_counts_repeated_digits_as_a_multiset():
    """answer "1123"; "1111": positions 1,1 right (2/4); overlap min(4,2) ones = 2 of 4 → 0.5."""
    assert toytask.gold_reward("sort:1213=", "1111") == pytest.approx(0.5)
    assert toytask.answer("sort:1213=") == "1123"


def test_prompts_are_distinct_seeded_and_avoid_the_excluded():
    first = toytask.make_prompts(random.Random(1), 200)
    again = toytask.make_prompts(random.Random(1), 200)
    assert first == again and len(set(first)) == 200
    other = toytask.make_prompts(random.Random(2), 300, exclude=set(first))
    assert not set(other) & set(first)
    assert all(3 <= len(toytask.digits_of(p)) <= 8 for p in first)


def _same_bin_probability(mean: float, sigma: float) -> float:
    """P(two ratings of equal r* round to the same half point): Σₖ P(bin k)².

    Each rating is mean + N(0, σ) rounded to 0.5; bin k is [k/2 − ¼, k/2 + ¼).
    """
    phi = lambda x: 0.5 * (1 + math.erf((x - mean) / (sigma * math.sqrt(2))))  # noqa: E731
    return sum((phi(k / 2 + 0.25) - phi(k / 2 - 0.25)) ** 2 for k in range(0, 25))


def test_equal_rewards_tie_as_often_as_the_noise_model_says():
    """r* = 0.4 for both: the default judge rates 3 + 4.5·0.4 = 4.8 ± N(0, 0.5), rounded to 0.5."""
    noise = toytask.RatingNoise()
    rng = random.Random(0)
    n = 20_000
    ties = sum(noise.rate(0.4, rng) == noise.rate(0.4, rng) for _ in range(n)) / n
    expected = _same_bin_probability(4.8, 0.5)
    assert expected == pytest.approx(0.271, abs=1e-3)
    assert ties == pytest.approx(expected, abs=0.01)


def test_labelling_is_seeded_and_large_gaps_are_never_inverted():
    noise = toytask.RatingNoise()
    rows = [
        toytask.label_pair("sort:4917=", "9741", "1479", random.Random(3), noise) for _ in range(2)
    ]
    assert rows[0] == rows[1]
    rng = random.Random(4)
    # r* 1.0 vs 0.0 is 5 rating points apart: 10 σ, never inverted, never tied
    for _ in range(500):
        row = toytask.label_pair("sort:4917=", "14a9", "1479", rng, noise)
        assert row["chosen"] == "1479" and row["score_chosen"] > row["score_rejected"]


def test_oracle_row_orders_by_gold_reward():
    row = {"prompt": "sort:4917=", "chosen": "9741", "rejected": "1479", "gold_chosen": 0.5,
           "gold_rejected": 1.0, "score_chosen": 7.0, "score_rejected": 6.5}  # fmt: skip
    oracle = toytask.oracle_row(row)
    assert (oracle["chosen"], oracle["rejected"]) == ("1479", "9741")
    assert (oracle["score_chosen"], oracle["score_rejected"]) == (10.0, 5.5)


def test_win_rate_and_preferences_follow_the_gold_reward():
    prompts = ["sort:4917=", "sort:321=", "sort:55="]
    model = ["1479", "321", "55"]  # better, worse, equal
    base = ["1497", "123", "55"]
    assert gold.preferences(prompts, model, base) == [2.0, 1.0, 1.5]
    figures = gold.evaluate(prompts, model, base)
    assert figures["win_rate"] == pytest.approx(50.0)
    assert figures["gold"] == pytest.approx((1.0 + toytask.gold_reward("sort:321=", "321") + 1) / 3)
    assert figures["invalid"] == 0.0


def test_length_controlled_win_rate_removes_a_pure_length_effect():
    """The model wins exactly when its answer is longer: controlling for length leaves ≈ 50%."""
    rng = random.Random(0)
    prompts, model, base, prefs = [], [], [], []
    for i in range(200):
        a, b = rng.randint(3, 8), rng.randint(3, 8)
        prompts.append(f"p{i}")
        model.append("1" * a)
        base.append("1" * b)
        prefs.append(2.0 if a > b else 1.0 if a < b else 1.5)
    raw = 100 * (sum(prefs) / len(prefs) - 1)
    lc = gold.length_controlled_win_rate(prefs, model, base)
    assert abs(lc - 50) < abs(raw - 50) or abs(lc - 50) < 5
    # equal lengths everywhere: nothing to control for, the plain win rate comes back
    assert gold.length_controlled_win_rate([2.0] * 10 + [1.0] * 10, ["1"] * 20, ["2"] * 20) == 50.0
