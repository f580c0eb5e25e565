"""``prefcurate train`` against TRL's DPOTrainer where the matrix multiplies dominate.

The model is a random Llama of about 26M parameters (``--model bench``: hidden 512, 8 layers, 8
heads, MLP 1408, byte tokens), saved once as a model directory that every trainer loads; the data
the first ``--pairs`` (32) pairs of ../shared/data/ultrafeedback_1k.jsonl, routed all-dpo in input
order; max length 512, batch 8, one epoch, sigmoid loss, β 0.1, AdamW at lr 1e-5 with a cosine
schedule and no warmup (the trainers' schedules are then the same formula), fp32 on the CPU.
Activation checkpointing is on for every trainer: it is TRL's default (``DPOConfig``), and
``prefcurate train --gradient-checkpointing`` then keeps the same activations, so the peak
memories compare like with like.
``--model tiny`` is the 140k-parameter model of ``--model tiny``, where imports and Python
overheads are most of the time: its figures are a separate, labelled table.

Four trainers, each in its own process:

* ``trl``: TRL's DPOTrainer as it runs by default, a reference forward in every step;
* ``trl_precomputed``: the same with ``precompute_ref_log_probs=True`` (one reference pass first);
* ``prefcurate_unshared``: ``prefcurate train --no-shared-prompt`` (reference once, cached);
* ``prefcurate``: ``prefcurate train`` (each prompt computed once, trainers.shared_prompt).

**Same tokens, same batches.** TRL tokenises ``prompt + chosen + EOS`` its own way (ByT5 then adds
a second EOS, and it truncates the joined sequence from the end), so TRL is handed prefcurate's
token ids (``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``, its collator's input) in place of
its own dataset preparation; collation, forward, loss, optimizer and loop are TRL's. Both read the
pairs in the same order (``train_sampling_strategy="sequential"``), 8 per step.

**The same losses.** Every trainer's per-step losses are compared with TRL's (within 1e-4 asked),
and the first step's mean summed log-probs (the loss of step 1 is ln 2 whatever the code).

**Timing.** Every process gets the same torch thread count (``--threads``, through
``OMP_NUM_THREADS``), each trainer runs ``--repeats`` times interleaved (TRL, TRL precomputed,
prefcurate unshared, prefcurate, TRL, …) so a change of machine load hits all of them alike, and
every figure is the median with the min–max of the runs; the load average is recorded before and
after each run. *Process*: start to exit. *Training*: model load, tokenisation, the reference and
the loop (prefcurate: ``setup_seconds`` + ``train_seconds`` of run.json; TRL: from loading the
model to the end of ``train()``). *Loop*: the optimizer steps only (TRL's per-step reference is
inside its loop, the others' reference is not). Tokens are the pairs' sequence tokens
(``2·prompt + chosen + rejected``), the same count for every trainer. Peak RSS: ``os.wait4``.
Run from the repository root::

    python benchmarks/train_bench.py --repeats 5 --json train.json --chart docs/img/train_bench.png
    python benchmarks/train_bench.py --model tiny --pairs 256 --repeats 5 --json tiny.json
    python benchmarks/train_bench.py --smoke --json o.json          # tiny, 8 pairs, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ultrafeedback_1k.jsonl"
SETTINGS = {"max_length": 512, "batch_size": 8, "beta": 0.1, "lr": 1e-5, "seed": 0,
            "gradient_checkpointing": True}  # fmt: skip
#: The benchmark's model: a Llama of 26.1M parameters over byte tokens (trainers.model.tiny_config).
MODELS = {
    "bench": {
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "max_position_embeddings": 1024,
    },
    "tiny": {},
}
VARIANTS = ("trl", "trl_precomputed", "prefcurate_unshared", "prefcurate")
LABELS = {
    "trl": "TRL DPOTrainer, reference every step",
    "trl_precomputed": "TRL DPOTrainer, precompute_ref_log_probs",
    "prefcurate_unshared": "prefcurate train --no-shared-prompt",
    "prefcurate": "prefcurate train (defaults: shared prompt)",
}
#: The chart's tick labels: short enough to sit side by side under four bars.
SHORT = {
    "trl": "TRL\nreference\nevery step",
    "trl_precomputed": "TRL\nprecomputed\nreference",
    "prefcurate_unshared": "prefcurate\n--no-shared-\nprompt",
    "prefcurate": "prefcurate\n(shared\nprompt)",
}
LOSS_TOL = 1e-4
LOGPS_RTOL = 1e-4
TIMINGS = ("wall_s", "cpu_s", "train_s", "loop_s", "rss_gb")
THREADS = {"n": 2}


def environment() -> dict:
    threads = str(THREADS["n"])
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFCURATE_CATALOG": "off",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TQDM_DISABLE": "1",
    }


def measure(argv: list[str], env: dict) -> dict:
    """Wall and CPU seconds and peak RSS (GB) of one process, start to exit, and the load
    average (1 minute) before and after it."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[1:4]} failed:\n{stderr[-3000:]}")
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    cpu = usage.ru_utime + usage.ru_stime  # moves much less than wall time on a shared machine
    return {"wall_s": wall, "cpu_s": cpu, "rss_gb": usage.ru_maxrss / 1e6, "load": load}


# --------------------------------------------------------------------------------------------------
# preparation


def prepare(data: Path, n: int, work: Path, model: str) -> dict:
    """The first ``n`` pairs routed all-dpo in input order, the model saved once, and the pairs'
    token counts (from prefcurate's tokenisation, which every trainer is given)."""
    import torch
    from transformers import ByT5Tokenizer, LlamaForCausalLM

    from trainers.data import read_split, tokenize_split
    from trainers.model import tiny_config

    pairs = work / "pairs.jsonl"
    with data.open(encoding="utf-8") as fh:
        pairs.write_text("".join(next(fh) for _ in range(n)), encoding="utf-8")
    split = work / "split-dpo"
    subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "prefcurate", "route", str(pairs), "--force", "--mode", "dpo",
         "--order", "as-is", "--out", str(split)],
        env=environment(), check=True, capture_output=True,
    )  # fmt: skip
    model_dir = work / "model"
    torch.manual_seed(SETTINGS["seed"])
    llama = LlamaForCausalLM(tiny_config(**MODELS[model]))
    llama.save_pretrained(model_dir)
    tokenizer = ByT5Tokenizer()
    tokenizer.save_pretrained(model_dir)
    tokens = tokenize_split(read_split(split), tokenizer, max_length=SETTINGS["max_length"])
    prompt, chosen, rejected = (
        getattr(tokens, part).lengths() for part in ("prompt", "chosen", "rejected")
    )
    return {
        "split": split,
        "model": model_dir,
        "parameters": sum(p.numel() for p in llama.parameters()),
        "sequence_tokens": int((2 * prompt + chosen + rejected).sum()),
        "distinct_tokens": int((prompt + chosen + rejected).sum()),
        "truncated": tokens.truncated,
    }


# --------------------------------------------------------------------------------------------------
# the runs


def run_prefcurate(paths: dict, work: Path, name: str, k: int) -> dict:
    out, cache = work / f"run-{name}-{k}", work / f"cache-{name}-{k}"  # a cold cache each time
    argv = [sys.executable, "-m", "prefcurate", "train", str(paths["split"]),
            "--model", str(paths["model"]), "--out", str(out), "--cache-dir", str(cache),
            "--force", "--max-length", str(SETTINGS["max_length"]),
            "--batch-size", str(SETTINGS["batch_size"]), "--beta", str(SETTINGS["beta"]),
            "--loss", "sigmoid", "--lr", str(SETTINGS["lr"]), "--warmup-ratio", "0",
            "--seed", str(SETTINGS["seed"])]  # fmt: skip
    if SETTINGS["gradient_checkpointing"]:
        argv.append("--gradient-checkpointing")
    if name == "prefcurate_unshared":
        argv.append("--no-shared-prompt")
    figures = measure(argv, environment())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    run = json.loads((out / "run.json").read_text())
    return {
        **figures,
        "shared_prompt": run["shared_prompt"],
        "pairs": run["result"]["pairs"]["pairs"],
        "loop_s": run["result"]["train_seconds"],
        # model load, tokenisation, the reference pass and the loop
        "train_s": run["setup_seconds"] + run["result"]["train_seconds"],
        "loss": [s["loss"] for s in steps],
        "logps_chosen": [s.get("logps/chosen") for s in steps],
        "logps_rejected": [s.get("logps/rejected") for s in steps],
    }


def run_trl(paths: dict, work: Path, name: str, k: int) -> dict:
    result = work / f"{name}-{k}.json"
    argv = [sys.executable, __file__, "--worker-trl", str(paths["split"]), str(paths["model"]),
            str(work / f"run-{name}-{k}"), str(result), name]  # fmt: skip
    env = {**environment(), "HF_DATASETS_CACHE": str(work / f"datasets-{name}-{k}")}
    figures = measure(argv, env)
    return {**figures, **json.loads(result.read_text())}


def trl_arguments(out: str, precompute: bool):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=out, per_device_train_batch_size=SETTINGS["batch_size"], num_train_epochs=1,
        learning_rate=SETTINGS["lr"], lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, beta=SETTINGS["beta"], loss_type=["sigmoid"],
        max_length=SETTINGS["max_length"], train_sampling_strategy="sequential",
        precompute_ref_log_probs=precompute, logging_steps=1, save_strategy="no", report_to=[],
        gradient_checkpointing=SETTINGS["gradient_checkpointing"], bf16=False,
        use_cpu=True, seed=SETTINGS["seed"], data_seed=SETTINGS["seed"],
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip


def trl_trainer(split_dir: str, model_dir: str, out: str, precompute: bool):
    """TRL's DPOTrainer on the split with prefcurate's token ids (module docstring)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from trainers.data import read_split, tokenize_split

    torch.manual_seed(SETTINGS["seed"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pairs = tokenize_split(read_split(split_dir), tokenizer, max_length=SETTINGS["max_length"])
    columns = {
        f"{name}_ids": [getattr(pairs, name)[i].tolist() for i in range(len(pairs))]
        for name in ("prompt", "chosen", "rejected")
    }

    class SameTokensDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already prompt_ids / chosen_ids / rejected_ids

    trainer = SameTokensDPOTrainer(
        model=model,
        args=trl_arguments(out, precompute),
        train_dataset=Dataset.from_dict(columns),
        processing_class=tokenizer,
    )
    return trainer, len(pairs)


def worker_trl(split_dir: str, model_dir: str, out: str, result: str, name: str) -> None:
    started = time.perf_counter()
    trainer, n = trl_trainer(split_dir, model_dir, out, precompute=name == "trl_precomputed")
    loop_started = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - loop_started
    logs = [e for e in trainer.state.log_history if "loss" in e]
    Path(result).write_text(json.dumps({
        "pairs": n,
        "loop_s": loop,
        "train_s": time.perf_counter() - started,
        "loss": [e["loss"] for e in logs],
        "logps_chosen": [e.get("logps/chosen") for e in logs],
        "logps_rejected": [e.get("logps/rejected") for e in logs],
    }))  # fmt: skip


RUNNERS = {
    "trl": run_trl,
    "trl_precomputed": run_trl,
    "prefcurate_unshared": run_prefcurate,
    "prefcurate": run_prefcurate,
}


# --------------------------------------------------------------------------------------------------
# comparing


def summarise(runs: list[dict], tokens: int) -> dict:
    """The first run's losses, each timing's median with its runs and min–max, and the rates."""
    keep = ("pairs", "loss", "logps_chosen", "logps_rejected", "shared_prompt")
    out = {k: runs[0][k] for k in keep if k in runs[0]}
    for key in TIMINGS:
        values = [r[key] for r in runs]
        out[key] = statistics.median(values)
        out[f"{key}_runs"] = values
        out[f"{key}_spread"] = [min(values), max(values)]
    out["load_runs"] = [r["load"] for r in runs]
    for scope, key in (("process", "wall_s"), ("training", "train_s"), ("loop", "loop_s")):
        out[f"{scope}_pairs_per_s"] = out["pairs"] / out[key]
        out[f"{scope}_tokens_per_s"] = tokens / out[key]
    return out


def agreement(ours: dict, trl: dict) -> dict:
    """Step by step: |Δloss| and the relative difference of the mean log-probs."""
    steps = min(len(ours["loss"]), len(trl["loss"]))
    loss = [abs(a - b) for a, b in zip(ours["loss"][:steps], trl["loss"][:steps], strict=True)]

    def rel(key: str, step: int) -> float:
        a, b = ours[key][step], trl[key][step]
        return abs(a - b) / max(abs(b), 1e-12)

    logps = [max(rel("logps_chosen", s), rel("logps_rejected", s)) for s in range(steps)]
    return {
        "steps": steps,
        "first_loss": {"ours": ours["loss"][0], "trl": trl["loss"][0]},
        "first_logps_chosen": {"ours": ours["logps_chosen"][0], "trl": trl["logps_chosen"][0]},
        "first_logps_rel_diff": logps[0],
        "max_loss_abs_diff": max(loss),
        "max_logps_rel_diff": max(logps),
        "losses_agree": max(loss) <= LOSS_TOL,
        "first_step_agrees": loss[0] <= LOSS_TOL and logps[0] <= LOGPS_RTOL,
    }


def ratios(runs: dict[str, list[dict]], results: dict) -> dict:
    """prefcurate's training pairs/s over each TRL's: of the medians, and run by run (the runs
    of one repeat ran back to back, so their ratio shares the machine's load)."""
    out = {}
    for ours in ("prefcurate", "prefcurate_unshared"):
        for trl in ("trl", "trl_precomputed"):
            if ours not in runs or trl not in runs:
                continue
            each = [t["train_s"] / o["train_s"] for o, t in zip(runs[ours], runs[trl], strict=True)]
            out[f"{ours}/{trl}"] = {
                "of_medians": results[trl]["train_s"] / results[ours]["train_s"],
                "each_run": each,
                "median_of_runs": statistics.median(each),
                "process_cpu": results[trl]["cpu_s"] / results[ours]["cpu_s"],
                "rss": results[ours]["rss_gb"] / results[trl]["rss_gb"],
            }
    return out


# --------------------------------------------------------------------------------------------------
# reporting


def table(figures: dict) -> str:
    r = figures["results"]
    base = r["trl"]
    lines = [
        f"| {figures['pairs']} pairs, {figures['model']['name']} model "
        f"({figures['model']['parameters'] / 1e6:.1f}M), {figures['threads']} threads, median "
        f"(min–max) of {figures['repeats']} | process s | process CPU s | training s | "
        "training pairs/s | × TRL | training tokens/s | loop s | loop pairs/s | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in figures["variants"]:
        res = r[name]

        def spread(key: str, res: dict = res) -> str:
            low, high = res[f"{key}_spread"]
            return f"{res[key]:.1f} ({low:.1f}–{high:.1f})"

        lines.append(
            f"| {LABELS[name]} | {spread('wall_s')} | {spread('cpu_s')} | {spread('train_s')} | "
            f"{res['training_pairs_per_s']:.2f} | "
            f"{res['training_pairs_per_s'] / base['training_pairs_per_s']:.2f} | "
            f"{res['training_tokens_per_s']:.0f} | {spread('loop_s')} | "
            f"{res['loop_pairs_per_s']:.2f} | {res['rss_gb']:.2f} |"
        )
    lines.append("")
    shared = r.get("prefcurate", {}).get("shared_prompt", {"on": True})
    if not shared["on"]:
        lines.append(f"prefcurate's defaults kept the ordinary batch here: {shared['why_not']}")
    for key, ratio in figures["ratios"].items():
        each = ", ".join(f"{x:.2f}" for x in ratio["each_run"])
        lines.append(
            f"{key}: training pairs/s {ratio['of_medians']:.2f}× (per run {each}; median "
            f"{ratio['median_of_runs']:.2f}), process CPU time {ratio['process_cpu']:.2f}×, "
            f"peak RSS {ratio['rss']:.2f}×"
        )
    for name, a in figures["agreement"].items():
        lines.append(
            f"{name} vs TRL: first-step loss {a['first_loss']['ours']:.6f} vs "
            f"{a['first_loss']['trl']:.6f}, chosen log-prob {a['first_logps_chosen']['ours']:.3f} "
            f"vs {a['first_logps_chosen']['trl']:.3f} (rel. {a['first_logps_rel_diff']:.1e}); "
            f"over {a['steps']} steps max |Δloss| {a['max_loss_abs_diff']:.1e}, max rel. "
            f"Δlog-prob {a['max_logps_rel_diff']:.1e}"
        )
    return "\n".join(lines)


def chart(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, names = figures["results"], figures["variants"]
    from matplotlib.ticker import MaxNLocator

    labels = [SHORT[n] for n in names]
    colours = {"trl": "#a0aec0", "trl_precomputed": "#718096", "prefcurate_unshared": "#63b3ed",
               "prefcurate": "#2b6cb0"}  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = list(range(len(names)))
    rates = [r[n]["training_pairs_per_s"] for n in names]
    low = [r[n]["pairs"] / r[n]["train_s_spread"][1] for n in names]
    high = [r[n]["pairs"] / r[n]["train_s_spread"][0] for n in names]
    errors = [
        [v - lo for v, lo in zip(rates, low, strict=True)],
        [hi - v for v, hi in zip(rates, high, strict=True)],
    ]
    axes[0].bar(x, rates, color=[colours[n] for n in names], yerr=errors, capsize=4)
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylabel("training pairs/s (median, min–max)")
    axes[1].bar(x, [r[n]["rss_gb"] for n in names], color=[colours[n] for n in names])
    axes[1].set_xticks(x, labels, fontsize=7)
    axes[1].set_ylabel("peak RSS, GB (median)")
    for n in names:
        steps = range(1, len(r[n]["loss"]) + 1)
        style = "--" if n.startswith("prefcurate") else "-"
        axes[2].plot(steps, r[n]["loss"], style, color=colours[n], label=LABELS[n], linewidth=2)
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("loss")
    axes[2].legend(fontsize=6)
    model = figures["model"]
    size = f"Llama {model['parameters'] / 1e6:.1f}M (random)"
    runs = f"{figures['threads']} threads, {figures['repeats']} interleaved runs"
    fig.suptitle(f"{figures['pairs']} UltraFeedback pairs, max length 512, {size}, CPU, {runs}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--model", choices=tuple(MODELS), default="bench")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 8 pairs, one run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--chart", type=Path, help="write a PNG chart here")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every trainer")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each trainer (median)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which trainers to run")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.pairs, args.repeats = "tiny", 8, 1
    args.variants = [v for v in VARIANTS if v in args.variants.split(",")]
    return args


def run_all(args: argparse.Namespace, paths: dict, work: Path) -> dict[str, list[dict]]:
    """Every trainer ``--repeats`` times, interleaved: a change of load hits each alike."""
    runs: dict[str, list[dict]] = {name: [] for name in args.variants}
    for k in range(args.repeats):
        for name in args.variants:
            res = RUNNERS[name](paths, work, name, k)
            runs[name].append(res)
            shown = f"{res['wall_s']:.1f} s, training {res['train_s']:.1f} s"
            print(f"{k} {name}: {shown}, {res['rss_gb']:.2f} GB, load {res['load']}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return runs


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker-trl":
        worker_trl(*sys.argv[2:7])
        return
    args = parse()
    THREADS["n"] = args.threads
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        paths = prepare(args.data, args.pairs, Path(tmp), args.model)
        runs = run_all(args, paths, Path(tmp))
    results = {n: summarise(runs[n], paths["sequence_tokens"]) for n in args.variants}
    figures = {
        "command": " ".join(["python", "benchmarks/train_bench.py", *sys.argv[1:]]),
        "pairs": args.pairs,
        "model": {"name": args.model, "parameters": paths["parameters"], **MODELS[args.model]},
        "tokens": {k: paths[k] for k in ("sequence_tokens", "distinct_tokens", "truncated")},
        "threads": args.threads,
        "repeats": args.repeats,
        "variants": args.variants,
        "settings": SETTINGS,
        "machine": describe(torch=True),
        "load_average_at_start": load_at_start,
        "results": results,
        "agreement": {n: agreement(results[n], results["trl"]) for n in args.variants if n != "trl"}
        if "trl" in results
        else {},
        "ratios": ratios(runs, results),
    }
    print(table(figures))
    if args.chart:
        args.chart.parent.mkdir(parents=True, exist_ok=True)
        chart(figures, args.chart)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
