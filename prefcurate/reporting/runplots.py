"""Training curves to a PNG (matplotlib, Agg; no torch), from runs that data.runs read.

matplotlib is imported when a figure is drawn, so the metrics helpers here cost nothing to import.

One panel per metric; several runs overlay in one figure, so MixDPO and a baseline can be read
side by side. Each curve is drawn raw (faint) and as a trailing moving average, only over the
steps that have a value: a curriculum trains its sft pairs last, so loss/sft is a short curve at
the end, not a line across the dpo phase; a shuffled run has sft pairs in most steps, and its
curve bridges the few steps without one (a gap shorter than the smoothing window). The two
routes' losses have panels of their own (the optimised objective mixes a preference loss near
0.69 with an NLL of several nats), and their titles give the run's summary from run.json: the
mean over the last tenth of that route's steps::

    >>> from prefcurate.reporting.runplots import plot_runs
    >>> from prefcurate.data.runs import read_curves
    >>> runs = [read_curves("runs/mixdpo"), read_curves("runs/dpo")]      # doctest: +SKIP
    >>> plot_runs(runs, "curves.png")                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefcurate.data.runs import RunCurves

#: The panels, in reading order: (metric key, title).
PANELS: tuple[tuple[str, str], ...] = (
    ("pairs", "pairs per step (dpo; sft dashed; averaged as the curves)"),
    ("loss/dpo", "loss/dpo (preference loss, dpo pairs)"),
    ("loss/sft", "loss/sft (NLL per token, sft pairs)"),
    ("rewards/accuracies", "rewards/accuracies (dpo pairs)"),
    ("rewards/margins", "rewards/margins"),
    ("logps/chosen", "logps/chosen (dpo pairs)"),
    ("grad_norm", "grad_norm (before clipping)"),
    ("lr", "lr"),
)
#: Schedules, drawn as they are: a moving average would only shift them.
UNSMOOTHED = frozenset({"lr"})
#: Panels whose title carries the last-window mean of run.json's summary.
SUMMARISED = ("loss/dpo", "loss/sft", "rewards/accuracies")
#: The held-out figure drawn over each training panel (``train --eval-every``).
EVAL_OF = {
    "loss/dpo": "eval/loss/dpo",
    "loss/sft": "eval/loss/sft",
    "rewards/accuracies": "eval/rewards/accuracies",
    "rewards/margins": "eval/rewards/margins",
    "logps/chosen": "eval/logps/chosen",
}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def segments(
    rows: Sequence[dict], key: str, *, max_gap: int = 1
) -> list[tuple[list[int], list[float]]]:
    """The stretches of steps where ``key`` has a value, as (steps, values).

    A step without that route's pairs logs None. Up to ``max_gap`` steps apart, two values stay
    in one stretch (a shuffled run's sft pairs miss a step now and then); further apart, the
    curve breaks (a curriculum's dpo phase is not drawn as a line of sft loss).
    """
    out: list[tuple[list[int], list[float]]] = []
    previous = None
    for row in rows:
        value = row.get(key)
        if value is None:
            continue
        if previous is None or row["step"] - previous > max_gap:
            out.append(([], []))
        out[-1][0].append(row["step"])
        out[-1][1].append(value)
        previous = row["step"]
    return out


def plot_runs(runs: Sequence[RunCurves], out: str | Path, *, smooth: int | None = None) -> Path:
    """Draw every panel of :data:`PANELS` for each run into one PNG at ``out``.

    ``smooth`` is the moving-average window in steps (default: 1/20 of the longest run). A run
    that evaluated held-out pairs (``train --eval-every``) has its evaluations drawn over the
    panels they share with training (:data:`EVAL_OF`), as dashed lines through round markers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the backend must be chosen first

    runs = [(run.name, run.metrics, run.summary) for run in runs]
    window = smooth or max(1, max(len(rows) for _, rows, _ in runs) // 20)
    last_step = max(rows[-1]["step"] for _, rows, _ in runs)
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        _panel(ax, key, title, runs, window=window, colors=colors, last_step=last_step)
    evaluated = any(r.get("eval/loss") is not None for _, rows, _ in runs for r in rows)
    if len(runs) > 1 or evaluated:
        handles, labels = axes.flat[1].get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axes.flat[1].legend(unique.values(), unique.keys(), fontsize=8)
    smoothing = (
        "raw values (too few steps to smooth)"
        if window == 1
        else f"faint: each step; solid: moving average over {window} steps"
    )
    if evaluated:
        smoothing += "; dashed with dots: held-out pairs (eval)"
    fig.suptitle(f"training curves — {smoothing}", fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _panel(ax, key: str, title: str, runs, *, window: int, colors, last_step: int) -> None:
    """One panel: each run's curve of ``key`` (raw and smoothed), its evaluations, the title."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ends = []
    for color, (name, rows, summary) in zip(colors, runs, strict=False):
        if key == "pairs":  # the mix of routes over the run (a shuffle mixes every step)
            _pairs(ax, rows, window=window, color=color, name=name)
            continue
        if key in SUMMARISED and summary.get(f"{key}:last") is not None:
            ends.append(f"{summary[f'{key}:last']:.3f}")
        for steps, values in segments(rows, key, max_gap=window):
            marker = "o" if len(steps) == 1 else None
            if key in UNSMOOTHED or window == 1:
                ax.plot(steps, values, color=color, marker=marker, label=name)
                continue
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8, marker=marker)
            ax.plot(steps, moving_average(values, window), color=color, label=name)
        if key in EVAL_OF:
            evals = [(r["step"], r[EVAL_OF[key]]) for r in rows if r.get(EVAL_OF[key]) is not None]
            if evals:
                ax.plot(*zip(*evals, strict=True), color=color, linestyle="--", marker="o",
                        markersize=4, label=f"{name} (eval)")  # fmt: skip
    if key == "lr" and len(runs) == 1:  # where the sft pairs train, and at what rate
        sft_steps = [r["step"] for r in runs[0][1] if r.get("pairs/sft")]
        if sft_steps:
            ax.axvspan(min(sft_steps) - 0.5, max(sft_steps) + 0.5, color="tab:orange",
                       alpha=0.15, label="steps with sft pairs")  # fmt: skip
            ax.legend(fontsize=8)
    ax.set_xlim(0.5, last_step + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # whole steps, readable
    if not ax.has_data():
        empty = {"loss/sft": "no sft pair in this run", "loss/dpo": "no dpo pair in this run"}
        ax.text(0.5, 0.5, empty.get(key, "no value logged"), ha="center", va="center",
                transform=ax.transAxes, color="grey")  # fmt: skip
    if ends:
        title += f"\nmean of the last 10% of its steps: {', '.join(ends)}"
    ax.set_title(title, fontsize=10)
    if key == "rewards/accuracies":
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)


def _pairs(ax, rows, *, window: int, color, name: str) -> None:
    steps = [r["step"] for r in rows]
    for route, style in (("dpo", "-"), ("sft", "--")):
        counts = [r.get(f"pairs/{route}") or 0 for r in rows]
        if window > 1:
            counts = moving_average(counts, window)
        ax.step(steps, counts, where="mid", color=color, linestyle=style, label=name)
