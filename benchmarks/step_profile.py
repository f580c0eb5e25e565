"""Where one training step's time goes: prefcurate (ordinary and shared-prompt batch) and TRL.

The benchmark's model (``train_bench.py --model bench``: a random 26M Llama over byte tokens) and
its first batch: 8 UltraFeedback pairs at max length 512, all dpo, with activation checkpointing
as in the benchmark. Four steps, each a forward and backward of the same 8 pairs, the reference
log-probs where the trainer needs them:

* ``prefcurate_unshared`` / ``prefcurate``: :class:`trainers.objective.Objective` on the
  ordinary batch / the shared-prompt batch (the reference is cached, outside the step);
* ``trl``: ``DPOTrainer.training_step`` on TRL's own collated batch of the same token ids, its
  reference forward inside;
* ``trl_reference``: that reference forward alone (``compute_ref_log_probs``), the part of TRL's
  step that ``precompute_ref_log_probs=True`` moves before the loop.

Each step runs ``--repeats`` times unprofiled, interleaved (the median and min–max wall seconds,
and the CPU seconds of the process, which a loaded machine stretches far less), then once under
``torch.profiler``, whose self CPU time is grouped by kind of operator: matrix
multiplies, attention kernels, element-wise arithmetic, gathers and scatters, copies and fills.
Run from the repository root::

    python benchmarks/step_profile.py --json profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import describe
from train_bench import DEFAULT_DATA, SETTINGS, THREADS, prepare, trl_trainer

#: Operator name fragments → the kind reported (first match wins; the rest is "other").
KINDS = {
    "attention": ("scaled_dot_product", "_flash_attention", "_efficient_attention"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "gather/scatter": ("index", "scatter", "gather", "masked_scatter", "masked_select"),
    "copy/fill": ("copy_", "fill_", "zero_", "aten::empty", "aten::cat", "contiguous", "clone"),
    "element-wise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "silu", "pow", "rsqrt",
                     "aten::neg", "aten::mean", "aten::sum", "exp", "log", "sigmoid", "where"),
}  # fmt: skip


def kind_of(name: str) -> str:
    for kind, fragments in KINDS.items():
        if any(fragment in name for fragment in fragments):
            return kind
    return "other"


def steps(paths: dict) -> dict:
    """The four steps as closures over the same model weights and the same 8 pairs."""
    import torch

    from trainers.data import collate, read_split, tokenize_split
    from trainers.logps import SequenceLogps, check_shared_prompt, reference_logps
    from trainers.model import load_model
    from trainers.objective import Objective

    policy = load_model(str(paths["model"]))
    policy.model.train()  # as in the loop: activation checkpointing recomputes only in training
    pairs = tokenize_split(read_split(paths["split"]), policy.tokenizer, max_length=512)
    pad = policy.tokenizer.pad_token_id
    ordinary, shared = SequenceLogps(policy.model), SequenceLogps(policy.model)
    ref = reference_logps(ordinary, pairs, batch_size=16, device=torch.device("cpu"),
                          autocast=torch.autocast("cpu", enabled=False), pad_id=pad)  # fmt: skip
    index = torch.arange(SETTINGS["batch_size"])
    batch = collate(pairs, index, pad_id=pad, ref_chosen=ref[0], ref_rejected=ref[1])
    objective = Objective("sigmoid", SETTINGS["beta"], 0.0, 1.0, 0.0)

    def ours(module, layout):
        def step():
            objective(module, layout).loss.mean().backward()
            policy.model.zero_grad(set_to_none=True)

        return step

    unshared_step = ours(ordinary, batch)
    assert check_shared_prompt(shared) is None
    if SETTINGS["gradient_checkpointing"]:  # as train_bench runs every trainer
        policy.model.gradient_checkpointing_enable({"use_reentrant": False})
    shared_batch = collate(pairs, index, pad_id=pad, ref_chosen=ref[0], ref_rejected=ref[1],
                           shared_prompt=True)  # fmt: skip
    trainer, _ = trl_trainer(str(paths["split"]), str(paths["model"]), str(paths["trl"]), False)
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first step
    if trainer.args.gradient_checkpointing:  # what train() switches on
        kwargs = trainer.args.gradient_checkpointing_kwargs
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return {
        "prefcurate_unshared": unshared_step,
        "prefcurate": ours(shared, shared_batch),
        "trl": lambda: trainer.training_step(trainer.model, inputs),
        "trl_reference": lambda: trainer.compute_ref_log_probs(trainer.model, inputs),
        "_tokens": {
            "ordinary_positions": batch.input_ids.numel(),
            "shared_positions": shared_batch.shared.tokens,
            "real_tokens": int(batch.attention_mask.sum()),
        },
    }


def timed(step) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``step``."""
    started, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - started, time.process_time() - cpu


def summary(runs: list[tuple[float, float]]) -> dict:
    """Median and min–max wall seconds, median CPU seconds, and the load average now."""
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return {
        "wall_s": statistics.median(walls),
        "wall_s_runs": walls,
        "wall_s_spread": [min(walls), max(walls)],
        "cpu_s": statistics.median(cpus),
        "cpu_s_runs": cpus,
        "load_after": round(os.getloadavg()[0], 2),
    }


def profile(step) -> dict:
    """One run of ``step`` under the profiler: self CPU seconds by kind, and the top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    kinds: dict[str, float] = {}
    for event in events:
        kinds[kind_of(event.key)] = kinds.get(kind_of(event.key), 0.0) + event.self_cpu_time_total
    total = sum(kinds.values())
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {
        "self_cpu_s": total / 1e6,
        "by_kind_s": {k: round(v / 1e6, 3) for k, v in sorted(kinds.items())},
        "top": [[e.key, round(e.self_cpu_time_total / 1e6, 3), e.count] for e in top],
    }


def table(figures: dict) -> str:
    kinds = sorted({k for r in figures["results"].values() for k in r["profile"]["by_kind_s"]})
    lines = [
        f"| one step, 8 pairs, median of {figures['repeats']} | wall s (min–max) | CPU s | "
        "profiled self CPU s | " + " | ".join(kinds) + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for name, r in figures["results"].items():
        low, high = r["wall_s_spread"]
        shares = [r["profile"]["by_kind_s"].get(k, 0.0) for k in kinds]
        lines.append(
            f"| {name} | {r['wall_s']:.2f} ({low:.2f}–{high:.2f}) | {r['cpu_s']:.2f} | "
            f"{r['profile']['self_cpu_s']:.2f} | " + " | ".join(f"{s:.2f}" for s in shares) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    THREADS["n"] = args.threads
    torch.set_num_threads(args.threads)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="step-profile-") as tmp:
        paths = prepare(args.data, SETTINGS["batch_size"], Path(tmp), "bench")
        paths["trl"] = Path(tmp) / "trl"
        closures = steps(paths)
        tokens = closures.pop("_tokens")
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in closures}
        for _ in range(args.repeats):  # interleaved: a change of load hits every step alike
            for name, step in closures.items():
                runs[name].append(timed(step))
        results = {name: {**summary(runs[name]), "profile": profile(closures[name])}
                   for name in closures}  # fmt: skip
    figures = {
        "command": " ".join(["python", "benchmarks/step_profile.py", *sys.argv[1:]]),
        "repeats": args.repeats,
        "tokens": tokens,
        "machine": describe(torch=True),
        "load_average_at_start": load_at_start,
        "results": results,
    }
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
