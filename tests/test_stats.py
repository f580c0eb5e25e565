"""Paired intervals and Holm's correction, against arithmetic worked out here."""

from __future__ import annotations

import math

import pytest

from prefcurate.reporting.stats import bootstrap_interval, holm, paired, t_interval, verdict


def test_paired_t_interval_by_hand():
    """Differences 0.0140, 0.0023, 0.0051 (filter − dpo-curriculum in the old 3-seed table):
    mean 0.007133; deviations 0.006867, −0.004833, −0.002033; sd = √(7.464e-5 / 2) = 0.006109;
    se = 0.006109 / √3 = 0.003527; t(0.975, 2) = 4.302653; half width 0.015176:
    [−0.00804, 0.02231] — the interval the old sentence "both beat DPO" did not survive."""
    low, high, p = t_interval([0.0140, 0.0023, 0.0051])
    assert low == pytest.approx(-0.00804, abs=2e-5)
    assert high == pytest.approx(0.02231, abs=2e-5)
    # t = 0.007133 / 0.003527 = 2.0224 on 2 df: two-sided p = 0.1806
    assert p == pytest.approx(0.1806, abs=5e-4)


def test_paired_is_the_interval_of_the_differences():
    c = paired([0.64, 0.63, 0.66, 0.65], [0.62, 0.62, 0.63, 0.64])
    # differences 0.02, 0.01, 0.03, 0.01: mean 0.0175, sd 0.009574, se 0.004787, t(.975,3) 3.182446
    assert c.mean == pytest.approx(0.0175)
    assert c.sd == pytest.approx(0.0095743, abs=1e-6)
    assert c.t_low == pytest.approx(0.0175 - 3.182446 * 0.0047871, abs=1e-6)
    assert c.t_high == pytest.approx(0.0175 + 3.182446 * 0.0047871, abs=1e-6)
    assert c.n == 4 and c.excludes_zero
    assert verdict(c) == "supported"


def test_bootstrap_of_two_values_by_hand():
    """Resampling [0, 1] twice: means 0, ½, 1 with probabilities ¼, ½, ¼, so the 2.5th and
    97.5th percentiles of the resampled means are 0 and 1."""
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_inside_the_data():
    diffs = [0.01, -0.004, 0.02, 0.006, 0.0, 0.012, 0.003, -0.002, 0.009, 0.015]
    a, b = bootstrap_interval(diffs, seed=3), bootstrap_interval(diffs, seed=3)
    assert a == b
    assert min(diffs) <= a[0] < sum(diffs) / len(diffs) < a[1] <= max(diffs)


def test_constant_and_single_differences():
    assert t_interval([0.01, 0.01, 0.01]) == (0.01, 0.01, 0.0)
    low, high, p = t_interval([0.01])
    assert (low, high, p) == (-math.inf, math.inf, 1.0)
    with pytest.raises(ValueError, match="equally long"):
        paired([1.0], [1.0, 2.0])


def test_holm_by_hand():
    """p = (0.01, 0.04, 0.03, 0.20): sorted 0.01 ×4 = 0.04, 0.03 ×3 = 0.09, 0.04 ×2 = 0.08 →
    running max 0.09, 0.20 ×1 = 0.20."""
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.20})
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.20})


def test_an_exploratory_claim_needs_its_adjusted_p():
    c = paired([0.64, 0.63, 0.66, 0.65], [0.62, 0.62, 0.63, 0.64])
    assert verdict(c, adjusted_p=0.2) == "inconclusive"
    assert verdict(paired([0.6, 0.61, 0.59], [0.62, 0.64, 0.63])) == "contradicted"
