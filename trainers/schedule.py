"""The learning-rate schedule, and the share of the peak rate each route's pairs train at.

MixDPO reads its pairs in curriculum order, so the pairs routed to SFT (the smallest margins) come
last; under the paper's cosine decay they then train at about 1–2% of the peak rate, and routing
them is close to doing nothing. Where the routed pairs sit and what rate they get is therefore part
of the method: this module computes it, once, for both engines — ``prefcurate train``
(:mod:`trainers.loop`) and :class:`prefcurate.integrations.trl.MixDPOTrainer` call the same
functions. It imports nothing but the standard library.

- :class:`Schedule`: the multiplier of the peak rate at each optimizer step. ``cosine`` (linear
  warmup, then cosine decay to 0), ``constant`` (linear warmup, then the peak) and ``phased`` (the
  dpo phase and the sft phase each get their own linear warmup and cosine decay, so the sft pairs,
  last in the curriculum, train at about half the peak rate on average instead of ~1%);
- :func:`route_lr`: each route's mean share of the peak rate over the pair visits of a run, a pair
  weighted by its SFT mix (a soft-routed pair counts ``w`` towards sft and ``1 − w`` towards
  dpo), and the running means after every step (logged beside the losses);
- :func:`low_lr_warnings`: one line for each route below :data:`LOW_LR_SHARE`, naming the fix.

Example: 10 pairs, 2 per step (5 steps), the last two pairs sft, 10% warmup (1 step)::

    >>> cosine = Schedule("cosine", warmup_ratio=0.1, total=5)
    >>> [round(cosine.factor(s), 4) for s in range(5)]
    [1.0, 1.0, 0.8536, 0.5, 0.1464]
    >>> lr = route_lr([0.0] * 8 + [1.0] * 2, sequential_steps(10, 2, 5), cosine.factor)
    >>> round(lr.shares["dpo"], 4), round(lr.shares["sft"], 4)
    (0.8384, 0.1464)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: ``--lr-schedule`` values.
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant", "phased")
#: Below this mean share of the peak learning rate a route's pairs barely train: warned.
LOW_LR_SHARE = 0.10
ROUTE_NAMES: tuple[str, str] = ("dpo", "sft")


def lr_factor(step: int, *, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Multiplier of the peak rate at 0-based step ``step`` of a ``total``-step phase.

    1. warmup: linear from 1/warmup up to 1 over the first ``warmup`` steps;
    2. at or after ``total``: 0;
    3. otherwise: cosine decay from 1 towards 0, or 1 with ``schedule="constant"``.
    """
    if step < warmup:
        return (step + 1) / warmup
    if step >= total:
        return 0.0
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate multiplier per optimizer step.

    ``total`` is the number of steps the schedule spans: the run's steps, or more when a run is
    meant to stop part-way through a longer run's schedule (a filter baseline that trains the dpo
    pairs at exactly the rate they get inside a MixDPO run). ``sft_start`` is the step where the
    ``phased`` schedule's sft phase begins (:func:`sft_phase_start`); the other kinds ignore it.
    """

    kind: str
    warmup_ratio: float
    total: int
    sft_start: int | None = None

    @property
    def phases(self) -> tuple[tuple[int, int], ...]:
        """``(first step, end)`` of each phase: two for ``phased`` with an sft phase, else one."""
        start = self.sft_start
        if self.kind != "phased" or start is None or not 0 < start < self.total:
            return ((0, self.total),)
        return ((0, start), (start, self.total))

    @property
    def warmup(self) -> int:
        """Warmup steps of the first phase (of the whole run, for cosine and constant)."""
        start, end = self.phases[0]
        return math.ceil(self.warmup_ratio * (end - start))

    def factor(self, step: int) -> float:
        """The multiplier of the peak rate at 0-based optimizer step ``step``."""
        shape = "constant" if self.kind == "constant" else "cosine"
        for start, end in self.phases:
            if start <= step < end:
                length = end - start
                warmup = math.ceil(self.warmup_ratio * length)
                return lr_factor(step - start, warmup=warmup, total=length, schedule=shape)
        return 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "warmup_ratio": self.warmup_ratio,
            "steps": self.total,
            "phases": [list(p) for p in self.phases],
        }


def sequential_steps(n_pairs: int, global_batch: int, total_steps: int) -> list[range]:
    """The pairs of each step when the pairs are read in order, epoch after epoch.

    Step ``s`` takes the next ``global_batch`` pairs; the last step of an epoch takes what is left.
    """
    per_epoch = max(1, math.ceil(n_pairs / global_batch))
    steps = []
    for step in range(total_steps):
        start = (step % per_epoch) * global_batch
        steps.append(range(start, min(start + global_batch, n_pairs)))
    return steps


def sft_phase_start(sft: Sequence[bool], steps: Sequence[Sequence[int]]) -> int | None:
    """The step where the sft phase of a ``phased`` schedule starts: the first holding an sft pair.

    None when no step holds one. Raises ``ValueError`` when the sft pairs are not last (a later
    step holds a dpo pair): the phases would then cut through both routes.
    """
    first = next((s for s, pairs in enumerate(steps) if any(sft[i] for i in pairs)), None)
    if first is None:
        return None
    for step in range(first + 1, len(steps)):
        if not all(sft[i] for i in steps[step]):
            msg = (
                f"the sft pairs are not last: step {step + 1} holds a dpo pair after the sft "
                f"phase began at step {first + 1}"
            )
            raise ValueError(msg)
    return first


@dataclass
class RouteLr:
    """Each route's mean share of the peak rate, and how much of the run it averages over.

    ``shares``: per route, the mean multiplier over its pair visits (None: no pair of that route);
    ``mass``: the pair visits of each route (soft routing: the sum of the SFT shares, and of one
    minus them); ``running``: the same shares after each step, for the metrics.
    """

    shares: dict[str, float | None]
    mass: dict[str, float]
    running: list[dict[str, float | None]] = field(default_factory=list)


def route_lr(
    sft_mix: Sequence[float],
    steps: Sequence[Sequence[int]],
    factor: Callable[[int], float],
) -> RouteLr:
    """The mean learning-rate share of each route over a run.

    ``sft_mix`` holds each pair's SFT mix (:func:`prefcurate.data.schema.sft_mix`: 0 for a
    dpo pair, 1 for an sft pair, the weight of a soft-routed one); ``steps`` the pairs of each
    optimizer step; ``factor`` the schedule's multiplier per step. A pair visit at step ``s`` adds
    ``factor(s)`` to the sft mean with weight ``w`` and to the dpo mean with weight ``1 − w``.
    """
    sums = {route: 0.0 for route in ROUTE_NAMES}
    mass = {route: 0.0 for route in ROUTE_NAMES}
    running = []
    for step, pairs in enumerate(steps):
        sft = math.fsum(sft_mix[i] for i in pairs)
        f = factor(step)
        for route, weight in (("dpo", len(pairs) - sft), ("sft", sft)):
            sums[route] += f * weight
            mass[route] += weight
        running.append(_means(sums, mass))
    return RouteLr(_means(sums, mass), mass, running)


def _means(sums: dict[str, float], mass: dict[str, float]) -> dict[str, float | None]:
    # a route with (almost) no mass has no meaningful mean: soft weights leave rounding dust
    return {r: (sums[r] / mass[r] if mass[r] > 1e-9 else None) for r in ROUTE_NAMES}


def share_line(lr: RouteLr) -> str:
    """One line: each route's mean share of the peak rate, e.g. ``dpo 55.3%, sft 1.6%``."""
    shown = [f"{route} {share:.1%}" for route, share in lr.shares.items() if share is not None]
    return "mean learning rate, as a share of the peak: " + ", ".join(shown)


def low_lr_warnings(lr: RouteLr, fix: str) -> list[str]:
    """One warning line per route whose pairs train below :data:`LOW_LR_SHARE` of the peak rate.

    ``fix`` is the engine's own way out (flags for ``prefcurate train``, config fields for TRL).
    """
    lines = []
    for route, share in lr.shares.items():
        if share is None or share >= LOW_LR_SHARE:
            continue
        visits = lr.mass[route]
        count = f"{visits:.0f}" if abs(visits - round(visits)) < 1e-9 else f"{visits:.1f}"
        lines.append(
            f"warning: the {route} pairs ({count} pair visits) train at {share:.1%} of the peak "
            f"learning rate on average, so they barely train; {fix}"
        )
    return lines


__all__ = [
    "LOW_LR_SHARE",
    "LR_SCHEDULES",
    "RouteLr",
    "Schedule",
    "share_line",
    "low_lr_warnings",
    "lr_factor",
    "route_lr",
    "sequential_steps",
    "sft_phase_start",
]
