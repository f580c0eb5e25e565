"""The memory plan (``prefcurate train --dry-run``) against the peak memory a real run measures.

For one model shape and strategy this script writes a random-initialised Llama of that shape
(byte tokenizer) and a split whose every pair is dpo and long enough to fill ``--max-length``
(the plan's worst case), runs ``trainers.loop.train`` for a few steps under PyTorch's profiler
with ``profile_memory=True``, and takes the peak of the CPU tensor memory it allocated (the
running sum of every allocation and free the profiler saw) in each process, up to the start of the
final model's export: the plan is the training's. The export's own peak is reported beside it
(under fsdp rank 0 gathers a full fp32 copy of the weights into CPU memory to write them, which
the plan does not count). It prints one JSON object: per rank the measured peak, the plan's
total, and their ratio.

    python benchmarks/memory_check.py --shape 20m --strategy fsdp --nproc 2
    python benchmarks/memory_check.py --shape tiny --strategy ddp --json out.json

Shapes: ``tiny`` (``--model tiny``, 0.14M parameters), ``20m`` (24M) and ``100m`` (101M).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPES = {
    "tiny": {},
    "20m": {
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
    "100m": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
    },
}
SETTINGS = {"batch_size": 2, "max_length": 64, "max_steps": 2, "lr": 1e-4, "seed": 0}


def write_model(directory: Path, shape: dict) -> str:
    """A random model of ``shape`` saved with the byte tokenizer; ``tiny`` needs no files."""
    if not shape:
        return "tiny"
    import torch
    from transformers import ByT5Tokenizer, LlamaForCausalLM

    from trainers.model import tiny_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(**shape))
    model.save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return str(directory)


def write_split(directory: Path, n_pairs: int) -> Path:
    """Every pair dpo (margin 2) and longer than any --max-length used here."""
    sys.path.insert(0, str(REPO / "tests"))
    from split_helpers import write_split as route_rows

    rows = [
        {
            "prompt": f"question {i}: " + "tell me about cats " * 4,
            "chosen": f"answer {i} " + "cats are small and quick " * 8,
            "rejected": f"reply {i} " + "dogs are big and slow " * 8,
            "score_chosen": 8.0,
            "score_rejected": 6.0,
        }
        for i in range(n_pairs)
    ]
    return route_rows(directory, rows)


def worker(args: argparse.Namespace) -> None:
    """Run training under the profiler; write this rank's peak and plan to ``args.result``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainers import memory
    from trainers.loop import TrainConfig, train

    torch.set_num_threads(1)
    config = TrainConfig(
        split_dir=args.split,
        model=args.model,
        out=Path(args.out),
        strategy=args.strategy,
        cache_dir=Path(args.out) / "cache",
        force=True,
        gradient_checkpointing=args.checkpointing,
        grad_accum=int(args.grad_accum),
        lora_r=int(args.lora_r),
        precision=args.precision,
        **SETTINGS,
    )
    import time

    import trainers.loop

    marks = {}
    gather = trainers.loop.full_state_dict

    def marked(*args, **kwargs):  # training ends here: the final model's export starts
        marks["export"] = time.time_ns()
        return gather(*args, **kwargs)

    trainers.loop.full_state_dict = marked
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train(config)
    peak, export_peak = peak_allocated(prof, split_ns=marks["export"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    shape = memory.model_shape(args.model, lora=config.lora)
    settings = memory.settings_for(
        config,
        torch.device("cpu"),
        world_size=world,
        strategy=args.strategy,
        default_attention=shape.attention,
    )
    planned = memory.plan(shape, settings)
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{args.result}.rank{rank}").write_text(
        json.dumps(
            {
                "rank": rank,
                "peak_bytes": peak,
                "export_peak_bytes": export_peak,
                "plan": planned.to_dict(),
            }
        )
    )


def peak_allocated(prof, *, split_ns: int) -> tuple[int, int]:
    """The most CPU tensor memory live at once (the running sum of the profiler's allocation
    events), before ``split_ns`` (training) and from it on (the final model's export).

    Under fsdp on several processes the profiler misses the frees of some buffers that gloo's
    collectives release (about one layer's gradients per reduce-scatter): their address is
    handed out again while the events still hold them live. The allocator cannot give one
    address to two live blocks, so a new block at a live address ends the old one there; without
    that, the sum creeps up by a layer per missed free (up to 90 MiB at 20m).
    """
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.typed[0] == _EventType.Allocation and event.typed[1].device.type == "cpu":
            alloc = event.typed[1]
            events.append((event.start_time_ns, alloc.alloc_size, alloc.ptr))
    running = before = after = 0
    live: dict[int, int] = {}
    for t, size, ptr in sorted(events):
        if size > 0:
            running += size - live.get(ptr, 0)  # a missed free ends the old block here
            live[ptr] = size
        else:
            running -= live.pop(ptr, -size)
        if t < split_ns:
            before = max(before, running)
        else:
            after = max(after, running)
    return before, after


def run(
    shape: str,
    strategy: str,
    nproc: int,
    checkpointing: bool = False,
    *,
    grad_accum: int = 1,
    lora_r: int = 0,
    precision: str = "fp32",
) -> dict:
    """Write the model and split, run the worker (under torchrun when ``nproc`` > 1), collect."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_model(root / "model", SHAPES[shape])
        split = write_split(root / "split", 4 * SETTINGS["batch_size"] * nproc * grad_accum)
        result = root / "result"
        argv = [
            "--worker",
            "--model",
            model,
            "--split",
            str(split),
            "--out",
            str(root / "run"),
            "--strategy",
            strategy,
            "--result",
            str(result),
            "--grad-accum",
            str(grad_accum),
            "--lora-r",
            str(lora_r),
            "--precision",
            precision,
        ] + (["--checkpointing"] if checkpointing else [])
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        if nproc > 1:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            launcher = [sys.executable, "-m", "torch.distributed.run"]
            command = [*launcher, f"--nproc_per_node={nproc}", f"--master_port={port}"]
            command += [__file__, *argv]
        else:
            command = [sys.executable, __file__, *argv]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"memory check failed:\n{done.stderr[-3000:]}")
        ranks = [json.loads(Path(f"{result}.rank{r}").read_text()) for r in range(nproc)]
    return {
        "shape": shape,
        "strategy": strategy,
        "nproc": nproc,
        "checkpointing": checkpointing,
        "grad_accum": grad_accum,
        "lora_r": lora_r,
        "precision": precision,
        "settings": SETTINGS,
        "ranks": [
            {
                "rank": r["rank"],
                "measured_mib": round(r["peak_bytes"] / 2**20, 2),
                "export_mib": round(r["export_peak_bytes"] / 2**20, 2),
                "planned_mib": round(r["plan"]["bytes"]["total"] / 2**20, 2),
                "planned_over_measured": round(r["plan"]["bytes"]["total"] / r["peak_bytes"], 3),
                "plan": r["plan"]["gib"],
            }
            for r in ranks
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lora-r", type=int, default=0, help="a LoRA adapter of this rank")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16-mixed", "bf16"))
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--model", "--split", "--out", "--result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    result = run(
        args.shape,
        args.strategy,
        args.nproc,
        args.checkpointing,
        grad_accum=args.grad_accum,
        lora_r=args.lora_r,
        precision=args.precision,
    )
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
