"""Training curves from ``RUN_DIR/metrics.jsonl`` to a PNG (matplotlib, Agg; no torch).

One panel per metric; several runs overlay in one figure, so MixDPO and a baseline can be read
side by side. Each curve is drawn raw (faint) and as a trailing moving average::

    >>> from prefcurate.runplots import plot_runs
    >>> plot_runs(["runs/mixdpo", "runs/dpo"], "curves.png")      # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from prefcurate.errors import InputError  # noqa: E402

#: The panels, in reading order: (metric key, title).
PANELS: tuple[tuple[str, str], ...] = (
    ("loss", "loss (objective)"),
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


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``RUN_DIR/metrics.jsonl``, one per optimizer step.

    A torn final line (a run killed mid-write) is skipped with one warning on stderr; a broken
    line before the last is an :class:`InputError` naming it.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise InputError("no metrics.jsonl", where=run_dir, fix="pass a RUN_DIR written by train")
    rows = metrics_rows(path)
    if not rows:
        raise InputError("metrics.jsonl has no steps yet", where=path)
    return rows


def metrics_rows(path: Path, *, warn: bool = True) -> list[dict]:
    """Parse a metrics.jsonl, ignoring (with a warning) a torn final line."""
    import sys

    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read metrics ({exc.strerror})", where=path) from exc
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    rows = []
    for i, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row")
        except ValueError as exc:
            if i == len(numbered) - 1:
                if warn:
                    print(
                        f"warning: {path}, line {lineno}: ignoring a torn final line "
                        "(the run was stopped while writing it)",
                        file=sys.stderr,
                    )
                break
            raise InputError(
                "not a metrics row", where=f"{path}, line {lineno}", fix="remove the broken line"
            ) from exc
        rows.append(row)
    return rows


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs(
    run_dirs: Sequence[str | Path], out: str | Path, *, smooth: int | None = None
) -> Path:
    """Draw every panel of :data:`PANELS` for each run into one PNG at ``out``.

    ``smooth`` is the moving-average window in steps (default: 1/20 of the longest run).
    """
    runs = [(Path(d).name or str(d), read_metrics(d)) for d in run_dirs]
    window = smooth or max(1, max(len(rows) for _, rows in runs) // 20)
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        for color, (name, rows) in zip(colors, runs, strict=False):
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            if key in UNSMOOTHED:
                ax.plot(steps, values, color=color, label=name)
                continue
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, moving_average(values, window), color=color, label=name)
        if key == "rewards/accuracies":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"training curves (moving average over {window} steps)", fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
