"""The ``prefcurate`` command line: one thin function per command.

Each command parses its flags, calls one library function and renders what it returns. Errors are
translated here, at the edge: an :class:`~prefcurate.errors.InputError` becomes one line on stderr
and exit code 2; anything unexpected becomes one line with "please report" and exit code 1. The
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from prefcurate.errors import InputError, PrefcurateError, one_line

app = typer.Typer(
    name="prefcurate",
    help="Curate preference data by margin and train MixDPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _State:
    debug = False


STATE = _State()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="PREFCURATE_DEBUG")
    ] = False,
) -> None:
    """prefcurate: analyze, route and train on preference data."""
    STATE.debug = debug


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("PREFCURATE_DEBUG", "") not in ("", "0")
    try:
        result = app(args=args, prog_name="prefcurate", standalone_mode=False)
        return int(result or 0)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click.UsageError as exc:
        if debug:
            raise
        hint = f" (see 'prefcurate {exc.ctx.command_path.split(' ', 1)[-1]} --help')" if exc.ctx else ""
        print(f"error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        if debug:
            raise
        print(f"error: {one_line(exc.format_message())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PrefcurateError as exc:
        if debug:
            raise
        if isinstance(exc, InputError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"error: {one_line(exc)} (please report)", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the edge where every failure becomes one line
        if debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {one_line(exc)} "
            "(please report at the prefcurate issue tracker; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _path_arg(help_text: str):
    return typer.Argument(help=help_text, show_default=False)


DataArg = Annotated[Path, _path_arg("Preference data: a file, directory or glob.")]


# --------------------------------------------------------------------------- train and plot


@app.command()
def train(
    split_dir: Annotated[Path, _path_arg("A split directory written by 'prefcurate route'.")],
    model: Annotated[
        str, typer.Option("--model", help="A local save_pretrained directory, or 'tiny'.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The run directory to write.")],
    ref_model: Annotated[
        str | None,
        typer.Option(
            "--ref-model", help="Reference model directory (default: the initial policy)."
        ),
    ] = None,
    loss: Annotated[
        str, typer.Option("--loss", help="Preference loss of dpo pairs: sigmoid|ipo|hinge|robust.")
    ] = "sigmoid",
    beta: Annotated[float, typer.Option(help="β, the DPO inverse temperature.")] = 0.1,
    label_smoothing: Annotated[
        float, typer.Option(help="ε of conservative (sigmoid) or robust DPO; MixDPO uses 0.1.")
    ] = 0.0,
    sft_weight: Annotated[float, typer.Option(help="Weight of the sft pairs' NLL.")] = 1.0,
    nll_weight: Annotated[
        float, typer.Option(help="Adds w·NLL of the chosen response to every dpo pair (DPO+NLL).")
    ] = 0.0,
    shuffle: Annotated[
        bool,
        typer.Option(
            "--shuffle", help="Shuffle each epoch with --seed (default: the split's rank order)."
        ),
    ] = False,
    epochs: Annotated[int, typer.Option(help="Passes over the split.")] = 1,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps.")
    ] = None,
    max_length: Annotated[int, typer.Option(help="Tokens of prompt + response, at most.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Pairs per micro-batch per process.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 5e-7,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps of linear warmup.")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    max_grad_norm: Annotated[
        float, typer.Option(help="Gradient clipping norm (0: no clipping).")
    ] = 1.0,
    device: Annotated[str, typer.Option(help="Where to train: auto|cpu|cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto|bf16|fp32; auto: bf16 autocast on CUDA, fp32 on the CPU.")
    ] = "auto",
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute activations to save memory.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle, the tiny model and torch.")] = 0,
    save_every: Annotated[
        int, typer.Option(help="Checkpoint every N optimizer steps (0: only the final model).")
    ] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start over in a run directory that has outputs.")
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Token and reference log-prob cache (default: ~/.cache/prefcurate)."),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow the model directory's own code.")
    ] = False,
) -> None:
    """Train MixDPO (or a baseline) on a routed split; each pair's loss follows its route.

    Writes RUN_DIR/metrics.jsonl, run.json, checkpoints/step-N/ and the final model/.
    Under torchrun each process takes a strided share of every global batch.

    Example:
        prefcurate train splits/uf --model tiny --out runs/tiny --max-length 256 --lr 1e-3
    """
    from trainers.loop import NonFiniteLossError, TrainConfig
    from trainers.loop import train as run_training
    from trainers.progress import RichReporter

    config = TrainConfig(
        split_dir=split_dir, model=model, out=out, ref_model=ref_model, loss=loss, beta=beta,
        label_smoothing=label_smoothing, sft_weight=sft_weight, nll_weight=nll_weight,
        shuffle=shuffle, epochs=epochs, max_steps=max_steps, max_length=max_length,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, max_grad_norm=max_grad_norm, device=device,
        precision=precision, gradient_checkpointing=gradient_checkpointing, seed=seed,
        save_every=save_every, resume=resume, force=force, cache_dir=cache_dir,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    try:
        result = run_training(config, reporter=RichReporter())
    except NonFiniteLossError as exc:  # the user's run diverged: say so, not "please report"
        if STATE.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    if os.environ.get("RANK", "0") != "0":
        return
    final = result.final
    acc = final.get("rewards/accuracies")
    print(
        f"trained {result.steps} steps ({result.pairs['dpo']} dpo + {result.pairs['sft']} sft "
        f"pairs, {result.pairs_per_s:.1f} pairs/s on {result.world_size}×{result.device}); "
        f"final loss {final.get('loss', float('nan')):.4f}"
        + ("" if acc is None else f", rewards/accuracies {acc:.2f}")
        + f"; model in {result.model_dir}"
    )


@app.command()
def plot(
    run_dirs: Annotated[list[Path], _path_arg("One or more run directories (curves overlay).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: RUN_DIR/curves.png).")
    ] = None,
    smooth: Annotated[
        int | None, typer.Option(help="Moving-average window in steps (default: steps/20).")
    ] = None,
) -> None:
    """Draw a run's training curves (loss, rewards, log-probs, grad norm, lr) to a PNG.

    Example:
        prefcurate plot runs/mixdpo runs/dpo --out curves.png
    """
    from prefcurate.runplots import plot_runs

    path = plot_runs(run_dirs, out or run_dirs[0] / "curves.png", smooth=smooth)
    print(path)
