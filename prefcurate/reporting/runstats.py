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

import math
from typing import Any

import numpy as np
import polars as pl

from prefcurate.data.runs import RunView
from prefcurate.reporting.analyze import Histogram
from prefcurate.reporting.figures import accuracy_figure, curves_figure, eval_figure


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
    notes: list[str] = []
    figures: dict[str, Any] = {"curves": curves_figure(view.metrics)}
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
            row["label"] = hist.label(row["bin"])
        if accuracy:
            figures["accuracy"] = accuracy_figure(accuracy)
            mixed = sum(r["mixed_steps"] for r in accuracy)
            notes.append(
                "Reward accuracy per margin bin: each step's accuracy over its DPO pairs, credited "
                "to the bins of those pairs (steps that straddled two bins share theirs: "
                f"{mixed} bin-steps)."
            )
    held_out = last_evaluation(view)
    if held_out is not None:
        figures["eval"] = eval_figure(held_out[BY_MARGIN], held_out["step"])
        pairs = sum(r["pairs"] for r in held_out[BY_MARGIN])
        notes.append(
            f"Held-out pairs ({pairs:,}, {view.info.get('eval', {}).get('path', 'eval.parquet')}), "
            f"evaluated at step {held_out['step']}: reward accuracy and mean reward margin per "
            "margin bin over every pair of the bin, sft-routed ones included (orange bars hold "
            "only sft pairs); the dashed curves above are the evaluations over the run."
        )
    return {
        "name": view.name,
        "summary": view.summary(),
        "notes": notes,
        "figures": figures,
        "accuracy_by_margin": accuracy,
        "eval_by_margin": None if held_out is None else held_out[BY_MARGIN],
    }


#: Where ``train --eval-every`` puts the per-margin-bin figures in a metrics row.
BY_MARGIN = "eval/by_margin"


def last_evaluation(view: RunView) -> dict[str, Any] | None:
    """The last metrics row that holds an evaluation of the held-out pairs, or None."""
    rows = [r for r in view.metrics if r.get(BY_MARGIN)]
    return rows[-1] if rows else None
