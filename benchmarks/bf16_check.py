"""``--precision bf16`` against fp32 at a DPO learning rate: do the weights move, do losses agree?

Trains the tiny model three times on the same split for the same steps at ``--lr 5e-7``:

* ``fp32``: the reference;
* ``bf16``: prefcurate's pure bf16 (bf16 weights, gradients and AdamW moments; torchao's AdamW
  with stochastic rounding, trainers.optim);
* ``bf16-nearest``: the same bf16 weights stepped by torch's AdamW, which rounds every update to
  the nearest bf16 value: what ``--precision bf16`` did before stochastic rounding.

It reports, for each, the share of weight elements that differ from the initial model after the
run, how much of fp32's update the run made (the slope of its weight change on fp32's,
``Σ Δ·Δ_fp32 / Σ Δ_fp32²``: 1 is all of it, 0 none), and the loss at every step; it prints one
JSON object and, with ``--png``, draws them side by side::

    python benchmarks/bf16_check.py --split splits/uf --png docs/img/bf16_vs_fp32.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = {"lr": 5e-7, "max_steps": 20, "batch_size": 8, "max_length": 128, "seed": 0}
RUNS = ("fp32", "bf16", "bf16-nearest")


def changed_share(final: dict[str, Any], initial: dict[str, Any]) -> float:
    """The share of weight elements (all tensors) that differ from the initial model."""
    changed = total = 0
    for name, tensor in final.items():
        changed += int((tensor != initial[name].to(tensor.dtype)).sum())
        total += tensor.numel()
    return changed / total


def update_slope(
    final: dict[str, Any], reference: dict[str, Any], initial: dict[str, Any]
) -> float:
    """How much of ``reference``'s update ``final`` made: ``Σ Δ·Δ_ref / Σ Δ_ref²`` (in fp64)."""
    dot = norm = 0.0
    for name, start in initial.items():
        start = start.double()
        delta, delta_ref = final[name].double() - start, reference[name].double() - start
        dot += float((delta * delta_ref).sum())
        norm += float((delta_ref * delta_ref).sum())
    return dot / norm


def run(split: Path, name: str, out: Path, steps: int) -> dict[str, Any]:
    """One training run; its losses and how much of the model moved."""
    import torch

    import trainers.loop
    from trainers.loop import TrainConfig, train

    precision = "bf16" if name.startswith("bf16") else name
    settings = {**SETTINGS, "max_steps": steps}
    config = TrainConfig(split, model="tiny", out=out, precision=precision,
                         cache_dir=out.parent / "cache", **settings)  # fmt: skip
    optimizer = trainers.loop.adamw
    if name == "bf16-nearest":  # torch's AdamW on bf16 weights: round to nearest
        trainers.loop.adamw = lambda params, *, lr, weight_decay, precision: torch.optim.AdamW(
            params, lr=lr, weight_decay=weight_decay
        )
    try:
        train(config)
    finally:
        trainers.loop.adamw = optimizer
    from safetensors.torch import load_file

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(str(out / "model" / "model.safetensors"))
    return {
        "loss": [r["loss"] for r in rows],
        "loss/dpo": [r["loss/dpo"] for r in rows],
        "weights": weights,
    }


def initial_weights() -> dict[str, Any]:
    """The tiny model's weights before any run (seed 0, as every run starts)."""
    from trainers.model import load_model

    state = load_model("tiny", seed=0).model.state_dict()
    return {k: v.detach().clone() for k, v in state.items()}


def draw(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    names = list(RUNS)
    colors = ["#4C72B0", "#DD8452", "#999999"]
    for axis, key, scale, title in (
        (left, "changed_share", 100, "weights changed after the run (%)"),
        (middle, "update_slope", 1, "share of fp32's update made (slope)"),
    ):
        values = [scale * report["runs"][n][key] for n in names]
        axis.bar(names, values, color=colors)
        for i, value in enumerate(values):
            axis.annotate(f"{value:.3g}", (i, value), ha="center", va="bottom")
        axis.set_title(f"{title}\nlr {SETTINGS['lr']:g}, {report['steps']} steps")
        axis.set_ylim(0, 1.1 * max(max(values), scale))
    for name, style in zip(names, ("-", "--", ":"), strict=True):
        losses = report["runs"][name]["loss/dpo"]
        steps = [i + 1 for i, v in enumerate(losses) if v is not None]
        right.plot(steps, [v for v in losses if v is not None], style, label=name, marker=".")
    right.set_xlabel("step")
    right.set_ylabel("loss/dpo (mean over the step's dpo pairs)")
    right.set_title("preference loss per step")
    right.legend()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="a split written by route")
    parser.add_argument("--steps", type=int, default=SETTINGS["max_steps"])
    parser.add_argument("--png", type=Path, help="also draw the comparison here")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: run(args.split, name, Path(tmp) / name, args.steps) for name in RUNS}
    initial = initial_weights()
    for figures in runs.values():
        weights = figures.pop("weights")
        figures["changed_share"] = round(changed_share(weights, initial), 4)
        figures["update_slope"] = weights
    reference = runs["fp32"]["update_slope"]
    for figures in runs.values():
        figures["update_slope"] = round(
            update_slope(figures["update_slope"], reference, initial), 4
        )
    fp32 = runs["fp32"]["loss"]
    gap = max(abs(a - b) for a, b in zip(fp32, runs["bf16"]["loss"], strict=True))  # all terms
    report = {"settings": SETTINGS, "steps": args.steps, "runs": runs, "max_loss_gap_bf16": gap}
    if args.png:
        draw(report, args.png)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
