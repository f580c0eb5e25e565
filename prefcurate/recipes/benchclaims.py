"""The benchmark's declared comparisons and gates, computed from every seed's figures.

docs/results_declared.md fixed them before the run; this module is that page in code. It reads
only the per-seed figures :func:`prefcurate.recipes.bench.run_seed` returns (no torch, no model),
so results.json alone is enough to recompute every table (:mod:`prefcurate.recipes.benchreport`).

- **Families.** Each claim is a paired difference ``a − b`` over seeds
  (:func:`prefcurate.reporting.stats.paired`) in one family: ``primary`` (P1–P4), ``exploratory``
  (E1–E19) or ``length`` (L1–L3). Holm's correction runs within a family and a metric, over the
  comparisons that were computed.
- **Gates** (:func:`check_gates`) are checked first. A failed gate stops the comparisons it
  invalidates: they are listed with the gate that stopped them, with no interval, p or verdict,
  and they leave the Holm family.
- **Verdicts**, on the claim's metric (r*, or the length family's own): *supported* when both
  95% intervals lie above 0 and the Holm-adjusted p is below 0.05, *contradicted* when both lie
  below, *inconclusive* otherwise. The LC win rate is reported beside r* with its own interval
  and Holm-adjusted p, without a verdict.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefcurate.reporting import stats


@dataclass(frozen=True)
class Claim:
    """A declared comparison ``a − b`` (paired by seed) and what it isolates."""

    id: str
    a: str
    b: str
    family: str  # primary | exploratory | length
    isolates: str
    kind: str = ""  # which gates apply: "discarding" (G4), "tau" (G5)
    metric: str | None = None  # the length family's metric; else r* and the LC win rate

    @property
    def name(self) -> str:
        return f"{self.id} {self.isolates}"

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,) if self.metric else COMPARED


#: The metrics the primary and exploratory claims are computed on: r* (verdicts) and LC win rate.
COMPARED: tuple[str, ...] = ("gold", "lc_win_rate")
#: The metrics that carry a verdict.
JUDGED: tuple[str, ...] = ("gold", "length", "length_valid")


def _claims(family: str, table: str) -> tuple[Claim, ...]:
    """Claims from the declared page's table, one a line: ``id | a | b | isolates | kind``
    (``kind`` optional; in the length family it is the metric)."""
    out = []
    for line in table.strip().splitlines():
        cells = [c.strip() for c in line.split("|")]
        cid, a, b, isolates, extra = (*cells, "")[:5]
        if family == "length":
            out.append(Claim(cid, a, b, family, isolates, metric=extra))
        else:
            out.append(Claim(cid, a, b, family, isolates, kind=extra))
    return tuple(out)


#: docs/results_declared.md, "Primary family" (Holm over the four).
PRIMARY = _claims(
    "primary",
    """
P1 | mixdpo-0.5-spread | dpo        | spread MixDPO vs shuffled DPO
P2 | mixdpo-0.5-phased | dpo        | phased MixDPO vs shuffled DPO
P3 | mixdpo-0.5-spread | mixdpo-0.5 | spread vs the paper's placement
P4 | mixdpo-0.5-phased | mixdpo-0.5 | phased vs the paper's placement
""",
)
#: docs/results_declared.md, "Exploratory family" (Holm over the nineteen).
EXPLORATORY = _claims(
    "exploratory",
    """
E1  | dpo-curriculum    | dpo                  | order, cosine
E2  | dpo-curriculum/const | dpo/const         | order, constant
E3  | mixdpo-0.5        | dpo-curriculum       | routing, same order, paper's placement
E4  | mixdpo-0.5/const  | dpo-curriculum/const | routing, same order, constant
E5  | mixdpo-0.5        | filter-same-lr       | routing vs discarding, same rates | discarding
E6  | mixdpo-0.5-phased | filter               | routing vs discarding, phased | discarding
E7  | mixdpo-0.5-spread | filter               | routing vs discarding, spread | discarding
E8  | mixdpo-0.5/const  | filter/const         | routing vs discarding, constant | discarding
E9  | mixdpo-0.5/const  | mixdpo-0.5           | schedule, paper's placement
E10 | mixdpo-0.5-spread | mixdpo-0.5-phased    | spread vs phased
E11 | mixdpo-0.5        | mixdpo-1.0           | τ 0.5 vs 1.0, paper's placement | tau
E12 | mixdpo-0.5/const  | mixdpo-1.0/const     | τ 0.5 vs 1.0, constant | tau
E13 | mixdpo-0.5-spread | mixdpo-1.0-spread    | τ 0.5 vs 1.0, spread | tau
E14 | mixdpo-1.0-spread | mixdpo-1.5-spread    | τ 1.0 vs 1.5, spread | tau
E15 | mixdpo-0.5-phased | mixdpo-1.0-phased    | τ 0.5 vs 1.0, phased | tau
E16 | mixdpo-1.0-phased | mixdpo-1.5-phased    | τ 1.0 vs 1.5, phased | tau
E17 | soft-0.5-spread   | mixdpo-0.5-spread    | soft vs hard, spread
E18 | soft-0.5-phased   | mixdpo-0.5-phased    | soft vs hard, phased
E19 | oracle            | dpo                  | label noise costs
""",
)
#: docs/results_declared.md, "Length family" (Holm over the three), on answer lengths.
LENGTH = _claims(
    "length",
    """
L1 | dpo | base           | DPO answers are longer | length
L2 | dpo | dpo/fair-judge | the judge's length bias | length
L3 | dpo | dpo/fair-judge | the bias, valid answers only | length_valid
""",
)
CLAIMS: tuple[Claim, ...] = (*PRIMARY, *EXPLORATORY, *LENGTH)
FAMILIES: tuple[str, ...] = ("primary", "exploratory", "length")

#: G3: below this mean share of the peak rate, a schedule-aware arm's sft pairs do not train.
ROUTED_SHARE = 0.10
#: G4: the largest difference in the dpo pairs' mean rate share a routing-vs-discarding
#: comparison tolerates.
SHARE_TOLERANCE = 0.02
#: G5: the tie shares the τ comparisons need (UltraFeedback: ≈12%).
TIE_RANGE = (0.08, 0.16)


@dataclass
class Gate:
    """A gate's outcome: ``passed`` is None when it could not be checked (an arm did not run)."""

    id: str
    name: str
    passed: bool | None
    detail: str
    stops: tuple[str, ...] = ()  # ids of the claims a failure stops

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "stops": list(self.stops) if self.passed is False else [],
        }


def present_claims(present: set[str]) -> list[Claim]:
    """The declared claims whose two arms ran (``base`` always does)."""
    return [c for c in CLAIMS if c.a in present and c.b in present]


def _gold(seed: dict[str, Any], arm: str) -> float:
    return seed["evaluation"][arm]["gold"]


def check_gates(seeds: list[dict[str, Any]], present: set[str]) -> list[Gate]:
    """G1–G5 of docs/results_declared.md, each with the claims its failure stops."""
    claims = present_claims(present)
    every = tuple(c.id for c in claims)
    gates = [_oracle_gate(seeds, present, every), _noise_gate(seeds, present, every)]
    gates.append(_routed_gate(seeds, present, claims))
    gates.append(_share_gate(seeds, claims))
    ties = statistics.fmean(s["pairs"]["tie_share"] for s in seeds)
    low, high = TIE_RANGE
    gates.append(
        Gate(
            "G5",
            "UltraFeedback-like ties",
            low <= ties <= high,
            f"ties are {ties:.1%} of the pairs (the τ comparisons need {low:.0%}–{high:.0%})",
            tuple(c.id for c in claims if c.kind == "tau"),
        )
    )
    return gates


def _oracle_gate(seeds: list[dict[str, Any]], present: set[str], every: tuple[str, ...]) -> Gate:
    if "oracle" not in present:
        return Gate("G1", "oracle beats base", None, "the oracle arm did not run")
    gains = [_gold(s, "oracle") - _gold(s, "base") for s in seeds]
    return Gate(
        "G1",
        "oracle beats base",
        all(g > 0 for g in gains),
        f"the oracle arm's r* minus the base policy's, per seed: min {min(gains):+.4f}, "
        f"mean {statistics.fmean(gains):+.4f}",
        every,
    )


def _noise_gate(seeds: list[dict[str, Any]], present: set[str], every: tuple[str, ...]) -> Gate:
    noise = statistics.fmean(abs(_gold(s, "base-redraw") - _gold(s, "base")) for s in seeds)
    trained = [a for a in present if a not in ("base", "base-redraw")]
    gaps = [abs(statistics.fmean(_gold(s, a) - _gold(s, "base") for s in seeds)) for a in trained]
    largest = max(gaps, default=0.0)
    return Gate(
        "G2",
        "evaluation noise small",
        largest > 0 and noise < 0.25 * largest,
        f"|r*(base redraw) − r*(base)| = {noise:.4f}, the largest arm gap {largest:.4f}",
        every,
    )


def _routed_gate(seeds: list[dict[str, Any]], present: set[str], claims: list[Claim]) -> Gate:
    aware = [a for a in present if a in seeds[0]["arms"] and seeds[0]["arms"][a]["schedule_aware"]]
    if not aware:
        return Gate("G3", "routed pairs train", None, "no schedule-aware arm ran")
    lowest = {a: min(s["arms"][a]["lr_share"]["sft"] for s in seeds) for a in sorted(aware)}
    starved = {a for a, share in lowest.items() if share < ROUTED_SHARE}
    worst = min(lowest, key=lowest.get)
    detail = f"the lowest sft share of the peak rate on any seed: {lowest[worst]:.1%} ({worst})"
    if starved:
        detail += f"; below {ROUTED_SHARE:.0%}: {', '.join(sorted(starved))}"
    stops = tuple(c.id for c in claims if {c.a, c.b} & starved)
    return Gate("G3", "routed pairs train", not starved, detail, stops)


def _share_gate(seeds: list[dict[str, Any]], claims: list[Claim]) -> Gate:
    compared = [c for c in claims if c.kind == "discarding"]
    if not compared:
        return Gate("G4", "schedule share matched", None, "no routing-vs-discarding comparison ran")
    gaps = {c.id: abs(_dpo_share(seeds, c.a) - _dpo_share(seeds, c.b)) for c in compared}
    off = tuple(i for i, gap in gaps.items() if gap > SHARE_TOLERANCE)
    shown = ", ".join(f"{i} {gap:.3f}" for i, gap in gaps.items())
    return Gate(
        "G4",
        "schedule share matched",
        not off,
        f"|dpo pairs' mean rate share, MixDPO − filter| (tolerance {SHARE_TOLERANCE}): {shown}",
        off,
    )


def _dpo_share(seeds: list[dict[str, Any]], arm: str) -> float:
    return statistics.fmean(s["arms"][arm]["lr_share"]["dpo"] for s in seeds)


def compare(
    seeds: list[dict[str, Any]], present: set[str], gates: Sequence[Gate]
) -> list[dict[str, Any]]:
    """Every declared claim whose arms ran, per metric: stopped by a gate, or its paired intervals
    with the Holm-adjusted p of its family and metric and (r*, lengths) its verdict."""
    stopped: dict[str, list[str]] = {}
    for gate in (g for g in gates if g.passed is False):
        for claim in gate.stops:
            stopped.setdefault(claim, []).append(gate.id)
    claims = present_claims(present)
    rows = [
        _comparison(seeds, c, metric, i, ", ".join(stopped[c.id]) if c.id in stopped else None)
        for i, c in enumerate(claims)
        for metric in c.metrics
        if all(s["evaluation"][arm].get(metric) is not None for s in seeds for arm in (c.a, c.b))
    ]
    for group in _holm_groups(rows):
        computed = [r for r in group if r["stopped"] is None]
        adjusted = stats.holm({f"{r['id']} {r['metric']}": r["p"] for r in computed})
        for r in computed:
            r["p_holm"] = adjusted[f"{r['id']} {r['metric']}"]
            r["verdict"] = _verdict(r, r["p_holm"]) if r["metric"] in JUDGED else None
    return rows


def _holm_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The Holm families: each family within each metric; the length family whole."""
    keys = dict.fromkeys(
        (r["family"], None if r["family"] == "length" else r["metric"]) for r in rows
    )
    return [
        [r for r in rows if r["family"] == family and metric in (None, r["metric"])]
        for family, metric in keys
    ]


def _comparison(
    seeds: list[dict[str, Any]], claim: Claim, metric: str, index: int, stopped: str | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": claim.id,
        "name": claim.name,
        "a": claim.a,
        "b": claim.b,
        "family": claim.family,
        "primary": claim.family == "primary",
        "isolates": claim.isolates,
        "metric": metric,
        "stopped": stopped,
        "p_holm": None,
        "verdict": None,
    }
    if stopped is None:
        a = [s["evaluation"][claim.a][metric] for s in seeds]
        b = [s["evaluation"][claim.b][metric] for s in seeds]
        row.update(stats.paired(a, b, seed=index).to_dict())
    return row


def _verdict(row: dict[str, Any], p_holm: float) -> str:
    comparison = stats.Comparison(
        **{k: row[k] for k in stats.Comparison.__dataclass_fields__ if k in row}
    )
    return stats.verdict(comparison, p_holm)


#: Figures of each arm, from :func:`prefcurate.recipes.gold.evaluate`.
FIGURES: tuple[str, ...] = (
    "gold",
    "win_rate",
    "lc_win_rate",
    "invalid",
    "perfect",
    "length",
    "length_valid",
)


def arm_rows(seeds: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per arm: each figure's mean over seeds with its sd and the half-width of its own 95% t
    interval; for a trained arm also its settings, pairs, steps and each route's rate share."""
    table = []
    for name in names:
        row: dict[str, Any] = {"arm": name}
        for key in FIGURES:
            values = [s["evaluation"][name].get(key) for s in seeds]
            if any(v is None for v in values):
                row[key] = row[f"{key}_sd"] = row[f"{key}_ci"] = None
                continue
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            low, high, _ = stats.t_interval(values) if len(values) > 1 else (mean, mean, 1.0)
            row[key], row[f"{key}_sd"], row[f"{key}_ci"] = mean, sd, (high - low) / 2
        if name in seeds[0]["arms"]:
            row.update(_training_columns([s["arms"][name] for s in seeds]))
        table.append(row)
    return table


def _training_columns(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first = runs[0]

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return statistics.fmean(kept) if kept else None

    return {
        "description": first["description"],
        "schedule": first["schedule"],
        "placement": first["placement"],
        "threshold": first["threshold"],
        "sft_share": mean([r["sft_share"] for r in runs]),
        "pairs_trained": mean([r["pairs"]["pairs"] for r in runs]),
        "steps": mean([r["steps"] for r in runs]),
        "lr_dpo": mean([r["lr_share"]["dpo"] for r in runs]),
        "lr_sft": mean([r["lr_share"]["sft"] for r in runs]),
    }


def mean_pair_stats(seeds: list[dict[str, Any]], key: str = "pairs") -> dict[str, Any]:
    """The labelled pairs' properties (:func:`prefcurate.recipes.bench.pair_stats`), averaged
    over seeds (a seed without a value for a key leaves it out of that key's mean)."""
    out = {}
    for k in seeds[0][key]:
        values = [s[key][k] for s in seeds if s[key].get(k) is not None]
        out[k] = statistics.fmean(values) if values else None
    return out


def summarize(seeds: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The table, the gates and the comparisons of a run, from its seeds' figures alone."""
    present = set(names)
    gates = check_gates(seeds, present)
    return {
        "pairs": mean_pair_stats(seeds),
        "pairs_fair_judge": mean_pair_stats(seeds, "pairs_fair_judge"),
        "gates": [g.to_dict() for g in gates],
        "table": arm_rows(seeds, names),
        "comparisons": compare(seeds, present, gates),
    }
