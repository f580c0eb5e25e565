"""What a training run learned, by route and by margin: the run half of ``prefcurate inspect``.

Reads ``RUN_DIR/run.json`` and ``RUN_DIR/metrics.jsonl`` (written by ``prefcurate train``) and the
split the run trained on; no torch. Two views:

* the training curves **split by route**: ``loss/dpo`` and ``loss/sft`` per step, the reward
  accuracy of the DPO pairs, and how many pairs of each route every step held (MixDPO's curriculum
  puts the SFT pairs last, so the routes take turns);
* **reward accuracy per margin bin**: which difficulty the model learned to order. The trainer logs
  one reward accuracy per step, over that step's DPO pairs. With the split's sequential order
  (``train`` without ``--shuffle``) step ``s`` of an epoch holds the pairs of ranks
  ``s·G … s·G + G − 1`` (``G`` = batch size × gradient accumulation × processes), so each step's
  accuracy is credited to the margin bins of its DPO pairs, in proportion to how many it held of
  each. A step whose pairs all share one bin (most steps of a sorted curriculum) is counted
  exactly; ``mixed_steps`` says how many straddled two bins. Example::

    >>> view = read_run("runs/mixdpo")                                   # doctest: +SKIP
    >>> accuracy_by_margin(view, split_frame, histogram)[0]              # doctest: +SKIP
    {'bin': 1, 'label': '0.5', 'dpo_pairs': 193, 'accuracy': 0.61, 'steps': 25, 'mixed_steps': 1}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.reporting.analyze import Histogram
from prefcurate.reporting.runplots import read_metrics

RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunView:
    """A run directory, read: its run.json, its per-step metrics and where its split is."""

    path: Path
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    split_dir: Path | None

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def global_batch(self) -> int:
        config = self.info.get("config", {})
        world = int(self.info.get("world_size") or 1)
        return int(config.get("batch_size", 1)) * int(config.get("grad_accum", 1)) * world

    @property
    def shuffled(self) -> bool:
        return bool(self.info.get("config", {}).get("shuffle"))

    def summary(self) -> str:
        config = self.info.get("config", {})
        steps = len(self.metrics)
        parts = [
            f"{self.info.get('status', 'unknown')}",
            f"{steps:,} steps",
            f"loss {config.get('loss')}",
            f"β = {config.get('beta')}",
            f"lr {config.get('lr')}",
            f"batch {self.global_batch}",
            f"model {config.get('model')}",
        ]
        return " · ".join(str(p) for p in parts)


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / RUN_JSON).is_file()


def read_run(run_dir: str | Path) -> RunView:
    """Read ``RUN_DIR``; :class:`InputError` when it is not a run written by ``train``."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read run.json ({exc})", where=run_dir, fix="pass a RUN_DIR written by train"
        ) from None
    metrics = read_metrics(run_dir)
    return RunView(run_dir, info, metrics, _find_split(run_dir, info))


def _find_split(run_dir: Path, info: dict[str, Any]) -> Path | None:
    """The split the run trained on: its path as recorded, else relative to the run's folder."""
    recorded = info.get("split", {}).get("path") or info.get("config", {}).get("split_dir")
    if not recorded:
        return None
    recorded = Path(recorded)
    candidates = [recorded]
    if not recorded.is_absolute():
        candidates += [run_dir.parent / recorded, run_dir.parent / recorded.name]
    for c in candidates:
        if (c / "train.parquet").is_file():
            return c
    return None


def accuracy_by_margin(
    view: RunView, split: pl.DataFrame, hist: Histogram
) -> list[dict[str, Any]] | None:
    """Reward accuracy of the DPO pairs per margin bin of ``hist`` (see the module docstring).

    ``split`` is the run's train.parquet (``rank``, ``margin``, ``route``). None when the run read
    the pairs shuffled (its steps' pairs are then not known without torch's generator).
    """
    if view.shuffled:
        return None
    from prefcurate.reporting.inspection import bin_index

    frame = split.select("rank", "route", bin_index(pl.col("margin"), hist).alias("bin")).sort(
        "rank"
    )
    is_dpo = (frame.get_column("route") == "dpo").to_numpy()
    bins = frame.get_column("bin").to_numpy()
    n_bins = len(hist.counts)
    g = view.global_batch
    per_epoch = max(1, math.ceil(frame.height / g))
    credit = np.zeros(n_bins)
    weight = np.zeros(n_bins)
    steps = np.zeros(n_bins, dtype=np.int64)
    mixed = np.zeros(n_bins, dtype=np.int64)
    pairs = np.zeros(n_bins, dtype=np.int64)
    visited = np.zeros(frame.height, dtype=bool)
    for row in view.metrics:
        accuracy, n_dpo = row.get("rewards/accuracies"), row.get("pairs/dpo")
        if accuracy is None or not n_dpo:
            continue
        within = (int(row["step"]) - 1) % per_epoch
        start = within * g
        window = np.arange(start, min(start + g, frame.height))
        window = window[is_dpo[window] & (bins[window] >= 0)]
        if window.size == 0:
            continue
        counts = np.bincount(bins[window], minlength=n_bins)
        share = counts / counts.sum()
        credit += accuracy * n_dpo * share
        weight += n_dpo * share
        held = counts > 0
        steps += held
        if held.sum() > 1:
            mixed += held
        new = window[~visited[window]]
        visited[new] = True
        pairs += np.bincount(bins[new], minlength=n_bins)
    out = []
    for b in range(n_bins):
        if weight[b] == 0:
            continue
        out.append(
            {
                "bin": b,
                "dpo_pairs": int(pairs[b]),
                "accuracy": round(float(credit[b] / weight[b]), 6),
                "steps": int(steps[b]),
                "mixed_steps": int(mixed[b]),
            }
        )
    return out


def run_figures(
    view: RunView, *, split: pl.DataFrame | None = None, hist: Histogram | None = None
) -> dict[str, Any]:
    """The run part of the inspect page: a title line, notes and Plotly figures (as JSON data)."""
    from prefcurate.reporting.page import _bin_label

    notes: list[str] = []
    figures: dict[str, Any] = {"curves": curves_figure(view)}
    accuracy = None
    if split is None or hist is None:
        notes.append(
            "Reward accuracy per margin bin needs the run's split, which was not found "
            f"(run.json names {view.info.get('split', {}).get('path')!r})."
        )
    elif view.shuffled:
        notes.append(
            "Reward accuracy per margin bin is not shown: this run read its pairs shuffled, "
            "so which pairs each step held is not recorded."
        )
    else:
        accuracy = accuracy_by_margin(view, split, hist)
        for row in accuracy or []:
            row["label"] = _bin_label(hist, row["bin"])
        if accuracy:
            figures["accuracy"] = accuracy_figure(accuracy)
            mixed = sum(r["mixed_steps"] for r in accuracy)
            notes.append(
                "Reward accuracy per margin bin: each step's accuracy over its DPO pairs, credited "
                "to the bins of those pairs (steps that straddled two bins share theirs: "
                f"{mixed} bin-steps)."
            )
    return {
        "name": view.name,
        "summary": view.summary(),
        "notes": notes,
        "figures": figures,
        "accuracy_by_margin": accuracy,
    }


def curves_figure(view: RunView) -> dict[str, Any]:
    """Three panels over the steps: loss per route, reward accuracy, pairs per route."""
    from plotly.subplots import make_subplots

    from prefcurate.reporting.palette import DPO_COLOR, SFT_COLOR

    rows = view.metrics
    steps = [r["step"] for r in rows]

    def series(key: str) -> list[float | None]:
        return [r.get(key) for r in rows]

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "loss by route",
            "reward accuracy (DPO pairs)",
            "pairs per step by route",
        ),
    )
    fig.add_scatter(
        x=steps, y=series("loss/dpo"), name="loss/dpo", line={"color": DPO_COLOR}, row=1, col=1
    )
    fig.add_scatter(
        x=steps,
        y=series("loss/sft"),
        name="loss/sft (NLL)",
        line={"color": SFT_COLOR},
        row=1,
        col=1,
    )
    fig.add_scatter(
        x=steps,
        y=series("rewards/accuracies"),
        name="rewards/accuracies",
        line={"color": DPO_COLOR, "dash": "dot"},
        row=1,
        col=2,
    )
    fig.add_hline(y=0.5, line={"color": "grey", "dash": "dash", "width": 1}, row=1, col=2)
    for key, color in (("pairs/dpo", DPO_COLOR), ("pairs/sft", SFT_COLOR)):
        fig.add_scatter(
            x=steps,
            y=series(key),
            name=key,
            stackgroup="pairs",
            line={"color": color, "width": 0.5},
            row=1,
            col=3,
        )
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_layout(
        template="plotly_white",
        height=380,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.25},
        title={"text": "training curves by route", "x": 0},
    )
    return json.loads(fig.to_json())


def accuracy_figure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import plotly.graph_objects as go

    from prefcurate.reporting.palette import DPO_COLOR

    fig = go.Figure(
        go.Bar(
            x=[r["label"] for r in rows],
            y=[r["accuracy"] for r in rows],
            customdata=[[r["dpo_pairs"], r["steps"]] for r in rows],
            hovertemplate="margin %{x}: accuracy %{y:.3f}<br>%{customdata[0]} DPO pairs, "
            "%{customdata[1]} steps<extra></extra>",
            marker={"color": DPO_COLOR},
        ),
        layout={
            "template": "plotly_white",
            "height": 360,
            "title": {
                "text": "reward accuracy per margin bin (DPO pairs, during training)",
                "x": 0,
            },
            "xaxis": {"title": {"text": "margin"}, "type": "category"},
            "yaxis": {"title": {"text": "reward accuracy"}, "range": [0, 1]},
            "shapes": [
                {
                    "type": "line",
                    "xref": "paper",
                    "x0": 0,
                    "x1": 1,
                    "y0": 0.5,
                    "y1": 0.5,
                    "line": {"color": "grey", "dash": "dash", "width": 1},
                }
            ],
        },
    )
    return json.loads(fig.to_json())
