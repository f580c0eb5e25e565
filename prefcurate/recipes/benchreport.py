"""Rendering a benchmark result: a rich table for the terminal, a markdown table, a PNG chart.

:func:`prefcurate.recipes.bench.run_bench` returns figures; this module only shows them, so a
notebook gets the same numbers as the terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Columns of the results table, in order: (header, key, format of mean ± sd).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("gold r*", "gold"),
    ("win % vs base", "win_rate"),
    ("LC win %", "lc_win_rate"),
    ("invalid %", "invalid"),
)
HEADER: tuple[str, ...] = ("arm", *(h for h, _ in COLUMNS), "sft %", "pairs", "steps")


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row of strings per arm (base and its redraw first), in :data:`HEADER` order."""
    rows = []
    for row in result["table"]:
        cells = [row["arm"]]
        for _, key in COLUMNS:
            scale = 100 if key == "invalid" else 1
            digits = 3 if key == "gold" else 1
            cells.append(f"{scale * row[key]:.{digits}f} ± {scale * row[key + '_sd']:.{digits}f}")
        if "sft_share" in row:
            cells += [f"{100 * row['sft_share']:.1f}", f"{row['pairs_trained']:.0f}"]
            cells.append(f"{row['steps']:.0f}")
        else:
            cells += ["", "", ""]
        rows.append(cells)
    return rows


def gate_lines(result: dict[str, Any]) -> list[str]:
    """The sanity gates and the data's shares, one plain sentence each."""
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
        f"({p['inverted_share_margin_0.5']:.1%} of margin-0.5 pairs, "
        f"{p['inverted_share_margin_ge_1']:.1%} of margin ≥ 1 pairs)"
    )
    return lines


def render(result: dict[str, Any], console=None) -> None:
    """Print the table and the gates to the terminal (rich; plain when piped)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:  # piped to a file or a log: room for the whole table, uncut
        console = Console(file=console.file, width=max(console.width, 132))
    seeds = len(result["seeds"])
    spread = "mean ± sd over seeds" if seeds > 1 else "no spread to show"
    table = Table(
        title=f"prefcurate bench mixdpo — {seeds} seed{'s' if seeds > 1 else ''}, {spread}",
        title_justify="left",
    )
    for i, name in enumerate(HEADER):  # arm names are never cut (three start with "mixdpo-")
        table.add_column(name, no_wrap=i == 0, justify="left" if i == 0 else "right")
    for cells in table_rows(result):
        if seeds == 1:  # "± 0.000" of one seed says nothing, and wraps every cell at 80 columns
            cells = [c.split(" ± ")[0] for c in cells]
        table.add_row(*cells)
    console.print(table)
    for line in gate_lines(result):
        console.print(line, highlight=False)


def markdown(result: dict[str, Any]) -> str:
    """The table as GitHub markdown, with the gates below it."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
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
    """Bar chart of mean gold reward and win rate per arm; error bars: the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in result["table"] if r["arm"] != "base-redraw"]
    names = [r["arm"] for r in rows]
    labels = [chart_label(r) for r in rows]
    colors = [
        BASE_COLOR if n == "base" else MIXDPO_COLOR if n.startswith("mixdpo") else BASELINE_COLOR
        for n in names
    ]
    seeds = len(result["seeds"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    for ax, key, label, ref in (
        (axes[0], "gold", "mean gold reward r*", rows[0]["gold"]),
        (axes[1], "win_rate", "win rate vs base (%, judged by r*)", 50.0),
    ):
        positions = range(len(rows))
        ax.bar(
            positions,
            [r[key] for r in rows],
            yerr=[r[key + "_sd"] for r in rows] if seeds > 1 else None,
            color=colors,
            capsize=3,
        )
        ax.axhline(ref, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel(label)
        low = min(r[key] - r[key + "_sd"] for r in rows)
        high = max(r[key] + r[key + "_sd"] for r in rows)
        pad = (high - low) * 0.2 or 0.01
        ax.set_ylim(low - pad, high + pad)
        ax.set_xticks(list(positions))
        # anchored at their right end under their bar: long names no longer run into each other
        ax.set_xticklabels(labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(
        handles=[
            Patch(color=BASE_COLOR, label="base policy (dashed line)"),
            Patch(color=BASELINE_COLOR, label="baselines"),
            Patch(color=MIXDPO_COLOR, label="MixDPO (share routed to sft)"),
        ],
        loc="upper right",
        fontsize=8,
        framealpha=0.9,
    )
    spread = "error bars: sd over seeds" if seeds > 1 else "one seed: no error bars"
    plural = "s" if seeds > 1 else ""
    fig.suptitle(f"MixDPO and baselines on the toy sorting task — {seeds} seed{plural}; {spread}")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
