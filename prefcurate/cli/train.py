"""``prefcurate train`` and ``prefcurate plot``.

The train flags are built from :class:`trainers.config.TrainConfig`, one per field: the defaults
are read from the dataclass (written once, there); only the help texts live here.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from prefcurate.cli.common import (
    ALLOW_PICKLE_HELP,
    CatalogOpt,
    app,
    check_catalog,
    config_options,
    echo,
    record_run,
    show_traceback,
)
from prefcurate.errors import InputError
from trainers.config import TrainConfig

#: The help of each ``prefcurate train`` flag, by TrainConfig field (in the order shown).
TRAIN_HELP = {
    "split_dir": "A split directory written by 'prefcurate route'.",
    "model": "A local save_pretrained directory, or 'tiny'.",
    "out": "The run directory to write.",
    "ref_model": "Reference model directory (default: the initial policy).",
    "loss": "Preference loss of dpo pairs: sigmoid|ipo|hinge|robust.",
    "beta": "β, the DPO inverse temperature.",
    "label_smoothing": "ε of conservative (sigmoid) or robust DPO; MixDPO uses 0.1.",
    "sft_weight": "Weight of the sft pairs' NLL.",
    "nll_weight": "Adds w·NLL of the chosen response to every dpo pair (DPO+NLL).",
    "shuffle": "Shuffle each epoch with --seed (default: the split's rank order).",
    "epochs": "Passes over the split.",
    "max_steps": "Stop after this many optimizer steps.",
    "max_length": "Tokens of prompt + response, at most.",
    "batch_size": "Pairs per micro-batch per process.",
    "grad_accum": "Micro-batches per optimizer step.",
    "lr": "Peak AdamW learning rate.",
    "warmup_ratio": "Share of steps of linear warmup.",
    "lr_schedule": "After the warmup: cosine decay, or constant (keeps the curriculum's last, "
    "hardest pairs from training at almost no learning rate).",
    "weight_decay": "AdamW weight decay.",
    "max_grad_norm": "Gradient clipping norm (0: no clipping).",
    "device": "Where to train: auto|cpu|cuda.",
    "precision": "auto|bf16|fp32; auto: bf16 autocast on CUDA, fp32 on the CPU.",
    "gradient_checkpointing": "Recompute activations to save memory.",
    "seed": "Seed of the shuffle, the tiny model and torch.",
    "save_every": "Checkpoint every N optimizer steps (0: only the final model).",
    "resume": "Continue from the newest complete checkpoint.",
    "force": "Start over in a run directory that has outputs.",
    "cache_dir": "Token and reference log-prob cache (default: ~/.cache/prefcurate).",
    "trust_remote_code": "Allow the model directory's own code.",
    "allow_pickle": ALLOW_PICKLE_HELP,
}


@app.command()
@config_options(TrainConfig, TRAIN_HELP, argument="split_dir")
def train(config: TrainConfig, catalog: CatalogOpt = None) -> None:
    """Train MixDPO (or a baseline) on a routed split; each pair's loss follows its route.

    Writes RUN_DIR/metrics.jsonl, run.json, checkpoints/step-N/ and the final model/.
    Under torchrun each process takes a strided share of every global batch.

    Example:
        prefcurate train splits/uf --model tiny --out runs/tiny --max-length 256 --lr 1e-3
    """
    import contextlib

    from prefcurate.outdir import out_lock
    from prefcurate.progress import RichReporter
    from prefcurate.runplots import read_metrics
    from trainers.loop import NonFiniteLossError
    from trainers.loop import train as run_training

    started_at = datetime.now(timezone.utc)  # noqa: UP017
    check_catalog(catalog)  # a wrong --catalog or timeout fails before any work
    rank0 = os.environ.get("RANK", "0") == "0"
    lock = out_lock(config.out) if rank0 else contextlib.nullcontext()
    try:
        with lock:  # one run per directory: a second writer exits 2 naming the first one's PID
            result = run_training(config, reporter=RichReporter())
    except NonFiniteLossError as exc:  # the user's run diverged: say so, not "please report"
        show_traceback()
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    if os.environ.get("RANK", "0") != "0":
        return
    record_run(
        "train",
        catalog=catalog,
        inputs=[{"path": str(config.split_dir), "rows": result.pairs["pairs"]}],
        params=dataclasses.asdict(config),
        figures=result.to_dict(),
        outputs={"dir": str(result.run_dir), "model": str(result.model_dir)},
        summary=f"{result.steps} steps on {config.split_dir}: {_trained(result.summary)}",
        started_at=started_at,
        metrics=[
            {"step": row["step"], "name": name, "value": value}
            for row in read_metrics(result.run_dir)
            for name, value in row.items()
            if name != "step" and isinstance(value, int | float)
        ],
    )
    echo(train_summary(result))


def _trained(summary: dict) -> str:
    return f"{summary.get('pairs/dpo', 0)} dpo + {summary.get('pairs/sft', 0)} sft pairs"


def _steps(n: int) -> str:
    return "step" if n == 1 else f"{n} steps"


def train_summary(result) -> str:
    """The lines ``train`` ends with: what was trained, each route's loss at the end, the model.

    The losses of the two routes are never mixed: loss/dpo (a preference loss, about 0.69 at the
    start) and loss/sft (an NLL per token, several nats) are each the mean over the last tenth of
    the steps that trained pairs of that route.
    """
    s = result.summary
    dpo, sft = s.get("pairs/dpo", 0), s.get("pairs/sft", 0)
    lines = [
        f"trained {result.steps} steps on {dpo + sft:,} pairs ({dpo:,} dpo + {sft:,} sft), "
        f"{result.pairs_per_s:.1f} pairs/s on {result.world_size}×{result.device}"
    ]
    ends = []
    if s.get("loss/dpo:last") is not None:
        acc = s.get("rewards/accuracies:last")
        shown = "" if acc is None else f", rewards/accuracies {acc:.2f}"
        steps = _steps(s["window/dpo"])
        ends.append(f"loss/dpo {s['loss/dpo:last']:.4f}{shown} (last {steps} with dpo pairs)")
    if s.get("loss/sft:last") is not None:
        steps = _steps(s["window/sft"])
        ends.append(f"loss/sft {s['loss/sft:last']:.4f} (last {steps} with sft pairs)")
    if ends:
        lines.append("mean " + "; ".join(ends))
    lines.append(f"model in {result.model_dir}")
    return "\n".join(lines)


@app.command()
def plot(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="One or more run directories (curves overlay).", show_default=False),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: RUN_DIR/curves.png).")
    ] = None,
    smooth: Annotated[
        int | None, typer.Option(help="Moving-average window in steps (default: steps/20).")
    ] = None,
) -> None:
    """Draw a run's training curves (loss, rewards, log-probs, grad norm, lr) to a PNG.

    Several runs overlay in one figure; each route's loss has its own panel.

    Example:
        prefcurate plot runs/mixdpo runs/dpo --out curves.png
    """
    from prefcurate.outdir import check_out_file
    from prefcurate.runplots import plot_runs

    if smooth is not None and smooth < 0:
        raise InputError(f"--smooth must be 0 or more, got {smooth}", fix="e.g. --smooth 20")
    target = out or run_dirs[0] / "curves.png"
    if target.suffix.lower() != ".png":
        raise InputError("--out must be a .png file", where=target, fix="e.g. --out curves.png")
    inputs = [d / name for d in run_dirs for name in ("metrics.jsonl", "run.json")]
    check_out_file(target, force=True, inputs=inputs)
    path = plot_runs(run_dirs, out or run_dirs[0] / "curves.png", smooth=smooth)
    print(path)
