"""Rendering a benchmark result: rich tables for the terminal, markdown tables, a PNG chart.

:func:`prefcurate.recipes.bench.run_bench` returns figures; this module only shows them, so a
notebook gets the same numbers as the terminal. Every figure is printed with its 95% interval over
seeds: an arm's mean ± the half-width of its t interval, and every claim as a paired difference
with its t and bootstrap intervals, p-value, Holm-adjusted p-value and verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: Columns of the arms table, in order: (header, key).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("gold r* ± 95% CI", "gold"),
    ("LC win % ± 95% CI", "lc_win_rate"),
    ("win % vs base", "win_rate"),
    ("invalid %", "invalid"),
)
HEADER: tuple[str, ...] = ("arm", *(h for h, _ in COLUMNS), "sft %", "pairs", "steps")
COMPARISON_HEADER: tuple[str, ...] = (
    "claim",
    "a − b",
    "Δ r*",
    "95% CI (t)",
    "95% CI (bootstrap)",
    "p",
    "p (Holm)",
    "verdict",
    "Δ LC win % [95% CI]",
)


def _cell(row: dict[str, Any], key: str) -> str:
    if row.get(key) is None:
        return "n/a"
    scale = 100 if key == "invalid" else 1
    digits = 3 if key == "gold" else 1
    half = row.get(f"{key}_ci")
    spread = "" if half is None or not math.isfinite(half) else f" ± {scale * half:.{digits}f}"
    return f"{scale * row[key]:.{digits}f}{spread}"


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row of strings per arm (base and its redraw first), in :data:`HEADER` order."""
    rows = []
    for row in result["table"]:
        cells = [row["arm"], *(_cell(row, key) for _, key in COLUMNS)]
        if "sft_share" in row:
            cells += [f"{100 * row['sft_share']:.1f}", f"{row['pairs_trained']:.0f}"]
            cells.append(f"{row['steps']:.0f}")
        else:
            cells += ["", "", ""]
        rows.append(cells)
    return rows


def _interval(low: float, high: float, digits: int) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a (1 seed)"
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def comparison_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per claim (the primary first), in :data:`COMPARISON_HEADER` order."""
    lc = {c["name"]: c for c in result.get("comparisons", []) if c["metric"] == "lc_win_rate"}
    rows = []
    for c in (c for c in result.get("comparisons", []) if c["metric"] == "gold"):
        other = lc.get(c["name"])
        lc_cell = (
            f"{other['mean']:+.1f} {_interval(other['t_low'], other['t_high'], 1)}"
            if other
            else "n/a"
        )
        rows.append(
            [
                c["name"] + (" (primary)" if c["primary"] else ""),
                f"{c['a']} − {c['b']}",
                f"{c['mean']:+.4f}",
                _interval(c["t_low"], c["t_high"], 4),
                _interval(c["boot_low"], c["boot_high"], 4),
                f"{c['p']:.3f}",
                "—" if c["p_holm"] is None else f"{c['p_holm']:.3f}",
                c["verdict"],
                lc_cell,
            ]
        )
    return rows


def gate_lines(result: dict[str, Any]) -> list[str]:
    """The sanity gates, the data's shares and the run's cost, one plain sentence each."""
    g, p = result["gates"], result["pairs"]
    lines = []
    if "oracle_beats_base" in g:
        verdict = "PASS" if g["oracle_beats_base"] else "FAIL"
        lines.append(
            f"{verdict} oracle beats base on every seed (mean gain in r* "
            f"{g['oracle_gain_gold']:+.3f})"
        )
    verdict = "PASS" if g["eval_noise_small"] else "FAIL"
    lines.append(
        f"{verdict} evaluation noise |r*(base redraw) − r*(base)| = {g['eval_noise_gold']:.4f} "
        f"is < 1/4 of the largest arm gap {g['largest_arm_gap_gold']:.4f}"
    )
    lines.append(
        f"pairs: {p['tie_share']:.1%} ties, {p['inverted_share']:.1%} inverted w.r.t. r* "
        f"({_pct(p.get('inverted_margin_0.5'))} of margin-0.5 pairs, "
        f"{_pct(p.get('inverted_margin_1'))} of margin-1 pairs, "
        f"{_pct(p.get('inverted_share_margin_ge_1'))} of margin ≥ 1 pairs)"
    )
    if p.get("tie_chosen_beats_base") is not None:
        lines.append(
            f"a tie's chosen beats the base policy's own answer {_pct(p['tie_chosen_beats_base'])}"
            f" of the time (any pair's chosen: {_pct(p.get('chosen_beats_base'))}); the chosen "
            f"(worse) response is the longer one in {_pct(p.get('longer_when_inverted'))} of "
            "the inverted pairs"
        )
    if "seconds" in result:
        load = result.get("load_average") or {}
        lines.append(
            f"run: {result['seconds']:.0f} s wall, {result.get('cpu_seconds', float('nan')):.0f} s"
            f" CPU; load average {load.get('start')} at the start, {load.get('end')} at the end"
        )
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render(result: dict[str, Any], console=None) -> None:
    """Print the tables and the gates to the terminal (rich; plain when piped)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:  # piped to a file or a log: room for the whole table, uncut
        console = Console(file=console.file, width=max(console.width, 160))
    seeds = len(result["seeds"])
    table = Table(
        title=f"prefcurate bench mixdpo — {seeds} seed(s), mean ± 95% CI half-width over seeds",
        title_justify="left",
    )
    for i, name in enumerate(HEADER):  # arm names are never cut
        table.add_column(name, no_wrap=i == 0, justify="left" if i == 0 else "right")
    for cells in table_rows(result):
        if seeds == 1:  # "± 0.000" of one seed says nothing, and wraps every cell at 80 columns
            cells = [c.split(" ± ")[0] for c in cells]
        table.add_row(*cells)
    console.print(table)
    rows = comparison_rows(result)
    if rows:
        claims = Table(
            title="claims: paired differences per seed (a − b), 95% intervals; exploratory "
            "p-values Holm-adjusted",
            title_justify="left",
        )
        for i, name in enumerate(COMPARISON_HEADER):
            claims.add_column(name, no_wrap=i < 2, justify="left" if i < 2 else "right")
        for cells in rows:
            claims.add_row(*cells)
        console.print(claims)
    for line in gate_lines(result):
        console.print(line, highlight=False)


def markdown(result: dict[str, Any]) -> str:
    """The tables as GitHub markdown, with the gates below them."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    rows = comparison_rows(result)
    if rows:
        lines += ["", "| " + " | ".join(COMPARISON_HEADER) + " |"]
        lines.append("|" + "---|" * len(COMPARISON_HEADER))
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines.append("")
    lines += [f"- {line}" for line in gate_lines(result)]
    return "\n".join(lines) + "\n"


#: Bar colours of the chart: the base policy, the baselines, the MixDPO arms.
BASE_COLOR, BASELINE_COLOR, MIXDPO_COLOR = "#999999", "#3b75af", "#c44e52"


def chart_label(row: dict[str, Any]) -> str:
    """An arm's name, and for MixDPO the share it actually routed to sft (ties at the cut move
    together, so "mixdpo-30" routes 36.7% on the benchmark's pairs)."""
    if row["arm"].startswith("mixdpo") and row.get("sft_share") is not None:
        return f"{row['arm']} ({100 * row['sft_share']:.1f}% sft)"
    return row["arm"]


def chart(result: dict[str, Any], path: str | Path) -> Path:
    """Left: each arm's mean gold reward with its 95% interval. Right: every claim's paired
    difference with its 95% t interval (the primary claim in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in result["table"] if r["arm"] != "base-redraw"]
    claims = [c for c in result.get("comparisons", []) if c["metric"] == "gold"]
    height = max(4.2, 0.32 * max(len(rows), len(claims)) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(13, height), constrained_layout=True)
    ax = axes[0]
    names = [r["arm"] for r in rows][::-1]
    means = [r["gold"] for r in rows][::-1]
    errors = [_finite(r.get("gold_ci")) for r in rows][::-1]
    colors = [
        BASE_COLOR
        if n == "base"
        else MIXDPO_COLOR
        if n.startswith(("mixdpo", "soft"))
        else BASELINE_COLOR
        for n in names
    ]
    ax.barh(range(len(rows)), means, xerr=errors, color=colors, capsize=2)
    ax.set_yticks(range(len(rows)), [chart_label(r) for r in rows][::-1])
    ax.legend(
        handles=[
            Patch(color=BASE_COLOR, label="base policy (dashed line)"),
            Patch(color=BASELINE_COLOR, label="baselines"),
            Patch(color=MIXDPO_COLOR, label="MixDPO arms (share routed to sft)"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.09),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    ax.axvline(rows[0]["gold"], color="black", linewidth=0.8, linestyle="--")
    low = min(m - e for m, e in zip(means, errors, strict=True))
    high = max(m + e for m, e in zip(means, errors, strict=True))
    pad = (high - low) * 0.15 or 0.01
    ax.set_xlim(low - pad, high + pad)
    ax.set_xlabel("mean gold reward r* (95% CI over seeds; dashed: base policy)")
    ax = axes[1]
    if claims:
        labels = [c["name"] for c in claims][::-1]
        centre = [c["mean"] for c in claims][::-1]
        lows = [c["mean"] - _finite(c["t_low"], c["mean"]) for c in claims][::-1]
        highs = [_finite(c["t_high"], c["mean"]) - c["mean"] for c in claims][::-1]
        for y, (m, lo, hi, c) in enumerate(zip(centre, lows, highs, claims[::-1], strict=True)):
            color = MIXDPO_COLOR if c["primary"] else BASELINE_COLOR
            ax.errorbar(m, y, xerr=[[lo], [hi]], fmt="o", color=color, capsize=3)
        ax.set_yticks(range(len(labels)), labels)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("paired difference in r*, a − b (95% t interval)")
    fig.suptitle(
        f"MixDPO and baselines on the toy sorting task ({len(result['seeds'])} seeds)",
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(value: float | None, fallback: float = 0.0) -> float:
    return value if value is not None and math.isfinite(value) else fallback


def write_outputs(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """results.md and chart.png beside results.json; returns the paths."""
    out = Path(out)
    md = out / "results.md"
    md.write_text(markdown(result))
    return {
        "results.json": out / "results.json",
        "results.md": md,
        "chart": chart(result, out / "chart.png"),
    }
