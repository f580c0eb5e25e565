"""Paired comparisons over seeds: 95% intervals (paired t and bootstrap) and Holm's correction.

A benchmark claim such as "MixDPO beats DPO" compares two arms that share, per seed, the same
pairs, the same evaluation prompts and the same sampling seed. The evidence is therefore the
per-seed *difference* ``d_s = a_s − b_s``, and an interval on its mean:

- **paired t**: ``mean(d) ± t_{0.975, n−1} · sd(d) / √n`` (Student, 1908), with the two-sided
  p-value of ``H0: E[d] = 0``;
- **bootstrap**: the 2.5th and 97.5th percentiles of the mean of ``d`` resampled with
  replacement (Efron's percentile interval), seeded, so the same seeds give the same interval.

When several comparisons are read from one run, :func:`holm` adjusts their p-values (Holm 1979,
"A simple sequentially rejective multiple test procedure"): sorted ascending, the i-th of m is
multiplied by ``m − i + 1`` and the running maximum is kept. One comparison declared in advance
is the *primary* one and is read without correction; the rest are exploratory. Example::

    >>> from prefcurate.reporting.stats import paired
    >>> c = paired([0.62, 0.63, 0.61], [0.60, 0.62, 0.60])
    >>> round(c.mean, 4), c.n
    (0.0133, 3)
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Resamples of the bootstrap interval; 10,000 keeps its Monte Carlo error below 1% of its width.
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Comparison:
    """A paired difference over seeds: its mean, both 95% intervals and the t test's p-value."""

    mean: float
    sd: float
    n: int
    t_low: float
    t_high: float
    p: float
    boot_low: float
    boot_high: float
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """Both intervals lie on one side of zero."""
        return (self.t_low > 0 and self.boot_low > 0) or (self.t_high < 0 and self.boot_high < 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy import stats as scipy_stats

    return float(scipy_stats.t.ppf(q, df))


def t_interval(diffs: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(low, high, p)``: the paired-t interval of the mean of ``diffs`` and the two-sided p.

    With a single seed, or differences that are all equal, the spread is unknown or zero: the
    interval is the mean itself when sd = 0 and n > 1 (p = 0 unless the mean is 0), and
    unbounded with one seed.
    """
    from scipy import stats as scipy_stats

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return -math.inf, math.inf, 1.0
    sd = statistics.stdev(diffs)
    if sd == 0:
        return mean, mean, (1.0 if mean == 0 else 0.0)
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2, n - 1) * se
    p = float(2 * scipy_stats.t.sf(abs(mean / se), n - 1))
    return mean - half, mean + half, p


def bootstrap_interval(
    diffs: Sequence[float],
    confidence: float = 0.95,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (seeded, deterministic)."""
    n = len(diffs)
    if n < 2:
        return -math.inf, math.inf
    rng = random.Random(f"bootstrap-{seed}")
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return _percentile(means, alpha), _percentile(means, 1 - alpha)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (NumPy's default 'linear' method)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def paired(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, seed: int = 0
) -> Comparison:
    """Compare ``a`` against ``b`` seed by seed: the mean of ``a_s − b_s`` with its intervals."""
    if len(a) != len(b) or not a:
        msg = f"paired comparison needs two equally long, non-empty series ({len(a)}, {len(b)})"
        raise ValueError(msg)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    low, high, p = t_interval(diffs, confidence)
    boot_low, boot_high = bootstrap_interval(diffs, confidence, seed=seed)
    return Comparison(
        mean=statistics.fmean(diffs),
        sd=statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        n=len(diffs),
        t_low=low,
        t_high=high,
        p=p,
        boot_low=boot_low,
        boot_high=boot_high,
        confidence=confidence,
    )


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values, by name: reject at level α where the adjusted p is below α.

    >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
    {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    ordered = sorted(pvalues.items(), key=lambda kv: (kv[1], kv[0]))
    m = len(ordered)
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[name] = round(running, 12)
    return {name: adjusted[name] for name in pvalues}


def verdict(comparison: Comparison, adjusted_p: float | None = None, alpha: float = 0.05) -> str:
    """``'supported'`` (interval above 0), ``'contradicted'`` (below) or ``'inconclusive'``.

    With ``adjusted_p`` (an exploratory claim), the Holm-adjusted p must also be below ``alpha``.
    """
    if adjusted_p is not None and adjusted_p >= alpha:
        return "inconclusive"
    if comparison.t_low > 0 and comparison.boot_low > 0:
        return "supported"
    if comparison.t_high < 0 and comparison.boot_high < 0:
        return "contradicted"
    return "inconclusive"
