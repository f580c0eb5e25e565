"""``prefcurate train`` and ``prefcurate plot``.

The train flags are built from :class:`trainers.config.TrainConfig`, one per field: the defaults
are read from the dataclass (written once, there); only the help texts live here.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from prefcurate.base.errors import InputError
from prefcurate.cli.common import (
    ALLOW_PICKLE_HELP,
    CatalogOpt,
    app,
    config_options,
    echo,
    explicit_flags,
    recorded,
    resolve_preset,
    show_traceback,
)
from prefcurate.cli.configfile import EXTRA_SETTINGS, EXTRAS, ConfigFileOpt
from prefcurate.routing.presets import PRESETS
from trainers.config import TrainConfig

#: The help of each ``prefcurate train`` flag, by TrainConfig field (in the order shown).
TRAIN_HELP = {
    "split_dir": "A split directory written by 'prefcurate route'.",
    "model": "A local save_pretrained directory, a Hugging Face name already in the local "
    "Hugging Face cache (owner/name), or 'tiny'.",
    "out": "The run directory to write.",
    "ref_model": "Reference model directory or cached Hugging Face name (default: the initial "
    "policy).",
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
    "lr_schedule": "After the warmup: cosine decay, constant, or phased (the sft pairs, last in "
    "the curriculum, get their own warmup and decay instead of cosine's near-zero tail).",
    "schedule_steps": "Steps the lr schedule spans (default: the run's); more stops the run "
    "part-way, e.g. a filter baseline at MixDPO's rates.",
    "weight_decay": "AdamW weight decay.",
    "max_grad_norm": "Gradient clipping norm (0: no clipping).",
    "device": "Where to train: auto|cpu|cuda.",
    "precision": "auto|fp32|bf16-mixed|bf16 (bf16 weights and AdamW state, stochastic "
    "rounding: half the memory); auto: bf16-mixed on CUDA, fp32 on the CPU.",
    "gradient_checkpointing": "Recompute each decoder layer's activations.",
    "strategy": "auto|ddp|fsdp: replicate the model on every process, or shard it (FSDP2); "
    "auto: ddp unless the memory plan says a replica does not fit.",
    "offload": "fsdp on CUDA: keep parameters and AdamW state in CPU RAM.",
    "attn_implementation": "sdpa|flash_attention_2|eager, passed to transformers.",
    "packed": "Padding-free micro-batches (same per-pair losses).",
    "shared_prompt": "Compute each pair's prompt once, both responses attending to it (same "
    "losses; on unless the model cannot, see run.json).",
    "lora_r": "Train a LoRA adapter of this rank instead of every weight (0: full).",
    "lora_alpha": "LoRA scale numerator (alpha / r).",
    "lora_dropout": "Dropout on the LoRA input.",
    "lora_target": "all-linear, or layer names such as q_proj,v_proj.",
    "load_in_4bit": "QLoRA: the frozen base in 4-bit (CUDA and bitsandbytes).",
    "merge_lora": "Also save the adapter merged into the model.",
    "device_memory": "GiB per device to plan against (default: the device's own).",
    "memory_headroom": "Share of the device's memory held back for what the plan does not "
    "count (CUDA context, NCCL buffers, fragmentation).",
    "max_shard_size": "Largest safetensors file of the final model.",
    "save_total_limit": "Keep only the newest N checkpoints (0: all).",
    "seed": "Seed of the shuffle, the tiny model and torch.",
    "save_every": "Checkpoint every N optimizer steps (0: only the final model).",
    "eval_every": "Evaluate the held-out pairs every N steps and at the end: loss by route, "
    "reward accuracy and margin by margin bin (0: only at the end with --eval-split).",
    "eval_split": "Held-out pairs: a split directory (its eval.parquet, else train.parquet) or "
    "one of its .parquet files (default: SPLIT_DIR/eval.parquet).",
    "report_to": "none|tensorboard|wandb: also log every step there, with TRL's metric names.",
    "resume": "Continue from the newest complete checkpoint.",
    "force": "Start over in a run directory that has outputs.",
    "cache_dir": "Token and reference log-prob cache (default: ~/.cache/prefcurate).",
    "trust_remote_code": "Allow the model directory's own code.",
    "allow_pickle": ALLOW_PICKLE_HELP,
    "preset": "paper: β 0.01, label smoothing 0.1, lr 1e-6, cosine with 10% warmup, one epoch, "
    "the split's order; flags override it.",
}
#: The TrainConfig fields a preset may set (prefcurate.routing.presets); a flag the user typed wins.
PRESET_FIELDS = tuple(dict.fromkeys(key for r in PRESETS.values() for key in r["train"]))


#: TrainConfig fields without a flag that a --config file may set.
EXTRA_SETTINGS["train"] = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in TRAIN_HELP
)


@app.command()
@config_options(TrainConfig, TRAIN_HELP, argument="split_dir")
def train(
    ctx: typer.Context,
    config: TrainConfig,
    config_file: ConfigFileOpt = None,
    catalog: CatalogOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the per-device memory plan from config.json and stop."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="--dry-run: print JSON.")] = False,
    world_size: Annotated[
        int | None,
        typer.Option(help="--dry-run: plan for this many processes (default: torchrun's)."),
    ] = None,
) -> None:
    """Train MixDPO (or a baseline) on a routed split; each pair's loss follows its route.

    Writes RUN_DIR/metrics.jsonl, run.json, checkpoints/step-N/ and the final model/ (with
    LoRA: adapter/). Under torchrun each process takes a strided share of every global batch,
    with the model replicated (--strategy ddp) or sharded (--strategy fsdp).

    --preset paper trains with the paper's settings (run.json records the preset).

    --config FILE.yaml reads the settings from a file (flags typed here win); a run's run.json
    replays it.

    Example:
        prefcurate train splits/uf --model tiny --out runs/tiny --lr 1e-3

        prefcurate train splits/uf --model llama-3-8b/ --out runs/8b --dry-run

        prefcurate train --config runs/tiny/run.json --out runs/tiny-again
    """
    config = _local_models(_resolved(ctx, config))
    if dry_run:
        from trainers.memory import dry_run as plan_run

        print(plan_run(config, world_size=world_size, as_json=as_json))
        return
    import contextlib

    from prefcurate.base.outdir import out_lock
    from prefcurate.base.progress import RichReporter
    from trainers.loop import NonFiniteLossError
    from trainers.loop import train as run_training

    rank0 = os.environ.get("RANK", "0") == "0"
    lock = out_lock(config.out) if rank0 else contextlib.nullcontext()
    with recorded("train", catalog) as run:
        try:
            with lock:  # one run per directory: a second writer exits 2 naming the first's PID
                result = run_training(config, reporter=RichReporter())
        except NonFiniteLossError as exc:  # the user's run diverged: say so, not "please report"
            show_traceback()
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        if not rank0:
            return
        _record(run, config, result)
    echo(train_summary(result))


def _resolved(ctx: typer.Context, config: TrainConfig) -> TrainConfig:
    """``config`` with the --config file's settings that have no flag, then --preset's settings
    under the flags the user typed."""
    extras = ctx.meta.get(EXTRAS)
    if extras:
        config = dataclasses.replace(config, **extras)
    if config.preset is not None:
        typed = explicit_flags(ctx, **{k: getattr(config, k) for k in PRESET_FIELDS})
        config = dataclasses.replace(config, **resolve_preset("train", config.preset, typed))
    return config


def _record(run, config: TrainConfig, result) -> None:
    """What the catalog keeps of a finished run: its split, settings, figures and curves."""
    from prefcurate.data.runs import read_metrics

    run.record(
        inputs=[{"path": str(config.split_dir), "rows": result.pairs["pairs"]}],
        params=dataclasses.asdict(config),
        figures=result.to_dict(),
        outputs={"dir": str(result.run_dir), "model": str(result.model_dir)},
        summary=f"{result.steps} steps on {config.split_dir}: {_trained(result.summary)}",
        metrics=[
            {"step": row["step"], "name": name, "value": value}
            for row in read_metrics(result.run_dir)
            for name, value in row.items()
            if name != "step" and isinstance(value, int | float)
        ],
    )


def _local_models(config: TrainConfig) -> TrainConfig:
    """``--model`` / ``--ref-model`` given as Hugging Face names (``owner/name``) point at their
    snapshots in the local Hugging Face cache; a name not there is one line with the
    ``hf download`` command (prefcurate.base.hub)."""
    from prefcurate.base.hub import MODEL, resolve_hub

    found = {
        field: resolve_hub(getattr(config, field), repo_type=MODEL, flag=flag)
        for field, flag in (("model", "--model"), ("ref_model", "--ref-model"))
        if getattr(config, field)
    }
    return dataclasses.replace(config, **{k: str(v) for k, v in found.items() if v is not None})


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
        typer.Argument(
            metavar="RUN_DIR...",
            help="One or more run directories (curves overlay).",
            show_default=False,
        ),
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
    from prefcurate.base.outdir import check_out_file
    from prefcurate.data.runs import read_curves
    from prefcurate.reporting.runplots import plot_runs

    if smooth is not None and smooth < 0:
        raise InputError(f"--smooth must be 0 or more, got {smooth}", fix="e.g. --smooth 20")
    target = out or run_dirs[0] / "curves.png"
    if target.suffix.lower() != ".png":
        raise InputError("--out must be a .png file", where=target, fix="e.g. --out curves.png")
    inputs = [d / name for d in run_dirs for name in ("metrics.jsonl", "run.json")]
    check_out_file(target, force=True, inputs=inputs)
    path = plot_runs([read_curves(d) for d in run_dirs], target, smooth=smooth)
    print(path)
