"""``prefcurate train`` against TRL's DPOTrainer: the same loss first, then pairs/s and memory.

One run, on a CPU: the first N pairs (256) of ../shared/data/ultrafeedback_1k.jsonl, the same
tiny Llama (``--model tiny``'s config and initial weights, saved once as a model directory both
trainers load), max length 512, batch 8, one epoch, sigmoid loss, β 0.1, AdamW at a cosine
learning rate with no warmup (the two trainers' schedules are then the same formula):

1. ``prefcurate train`` on the pairs routed all-dpo, input order (``route --mode dpo --order
   as-is``);
2. TRL's ``DPOTrainer`` on the same pairs, in the same order (``train_sampling_strategy=
   "sequential"``), with a fresh reference model as TRL does by default;
3. ``prefcurate train`` on the MixDPO split (τ = 0.5, curriculum order): its sft pairs need no
   rejected forward and no reference.

**Same tokens.** TRL tokenises ``prompt`` and ``prompt + chosen + EOS`` with the tokenizer's
defaults; a ByT5 tokenizer then adds a second EOS, and TRL truncates the joined sequence to
``max_length`` from the end, where prefcurate cuts prompt and responses separately. So that both
trainers see the same token ids, TRL is handed prefcurate's tokenisation (the ``prompt_ids``,
``chosen_ids`` and ``rejected_ids`` its collator expects) in place of its own dataset
preparation; everything after that (collation, forward, loss, optimizer, loop) is TRL's.

**The math.** The first step's loss is ln 2 for both whatever the code (policy = reference), so
the check also compares the first step's mean summed log-probs of the chosen and rejected
responses, which test tokenisation and the forward: the first step agrees when the loss is within
1e-4 and the log-probs within 1e-4 relative. Later steps are reported, not required to agree:
the two compute the same sums in a different order (fp32, hundreds of tokens each), and one
step's rounding, times β and the learning rate, moves the next weights a little.

Each trainer runs in its own process. **Process** time is start to exit (imports, data,
reference, training, saving); **training** time is what the trainer does with the data: model
load, tokenisation, the reference log-probs and the loop (prefcurate: ``setup_seconds`` +
``train_seconds`` of run.json; TRL: from loading the model to the end of ``train()``, its
reference forward being inside its loop). Peak RSS is the process's high-water mark
(``os.wait4``).

**Fair timing.** Both trainers run with the same torch thread count (``--threads``, default 2,
set through ``OMP_NUM_THREADS`` for every process and reported), and each is run ``--repeats``
times (default 3), interleaved (TRL, prefcurate, MixDPO, TRL, …) so that a change of machine
load hits all of them alike; the figures are the median of the runs, with their min–max spread.
Run from the repository root::

    python benchmarks/train_bench.py --json train.json --chart docs/img/train_bench.png
    python benchmarks/train_bench.py --smoke --json o.json          # 8 pairs, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ultrafeedback_1k.jsonl"
SETTINGS = {"max_length": 512, "batch_size": 8, "beta": 0.1, "lr": 1e-3, "seed": 0}
LOSS_TOL = 1e-4
LOGPS_RTOL = 1e-4


def measure(argv: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (GB) of one process, start to exit; its stderr on failure."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[1:4]} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1e6, stderr


THREADS = {"n": 2}


def environment() -> dict:
    threads = str(THREADS["n"])
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFCURATE_CATALOG": "off",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


TIMINGS = ("wall_s", "train_s", "loop_s", "rss_gb")


def median_of(runs: list[dict]) -> dict:
    """The first run's figures, with each timing replaced by the median of all runs and the
    runs' values and min–max spread recorded beside it."""
    import statistics

    out = dict(runs[0])
    for key in TIMINGS:
        values = [r[key] for r in runs]
        out[key] = statistics.median(values)
        out[f"{key}_runs"] = values
        out[f"{key}_spread"] = [min(values), max(values)]
    return out


# --------------------------------------------------------------------------------------------------
# preparation


def prepare(data: Path, n: int, work: Path) -> dict[str, Path]:
    """The first ``n`` pairs, their two splits, and the tiny model saved as a directory."""
    from trainers.model import build_tiny

    pairs = work / "pairs.jsonl"
    with data.open(encoding="utf-8") as fh:
        pairs.write_text("".join(next(fh) for _ in range(n)), encoding="utf-8")
    cli = [sys.executable, "-m", "prefcurate", "route", str(pairs), "--force"]
    splits = {"dpo": work / "split-dpo", "mixdpo": work / "split-mixdpo"}
    run = subprocess.run  # noqa: S603 - our own CLI
    run([*cli, "--mode", "dpo", "--order", "as-is", "--out", str(splits["dpo"])],
        env=environment(), check=True, capture_output=True)  # fmt: skip
    run([*cli, "--threshold", "0.5", "--out", str(splits["mixdpo"])],
        env=environment(), check=True, capture_output=True)  # fmt: skip
    model_dir = work / "tiny"
    tiny = build_tiny(SETTINGS["seed"])
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    return {**splits, "model": model_dir}


# --------------------------------------------------------------------------------------------------
# the runs


def run_prefcurate(split: Path, model: Path, work: Path, name: str) -> dict:
    out, cache = work / f"run-{name}", work / f"cache-{name}"  # a cold cache: the reference counts
    argv = [sys.executable, "-m", "prefcurate", "train", str(split), "--model", str(model),
            "--out", str(out), "--cache-dir", str(cache), "--force",
            "--max-length", str(SETTINGS["max_length"]),
            "--batch-size", str(SETTINGS["batch_size"]),
            "--beta", str(SETTINGS["beta"]), "--loss", "sigmoid", "--lr", str(SETTINGS["lr"]),
            "--warmup-ratio", "0", "--seed", str(SETTINGS["seed"])]  # fmt: skip
    wall, rss, _ = measure(argv, environment())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    run = json.loads((out / "run.json").read_text())
    result = run["result"]
    return {
        "wall_s": wall,
        "rss_gb": rss,
        "pairs": result["pairs"]["pairs"],
        "dpo": result["pairs"]["dpo"],
        "loop_s": result["train_seconds"],
        # model load, tokenisation and the reference pass, then the loop: TRL's train_s counts
        # the same work (its reference forward runs inside its loop)
        "train_s": run["setup_seconds"] + result["train_seconds"],
        "loss": [s["loss"] for s in steps],
        "logps_chosen": [s.get("logps/chosen") for s in steps],
        "logps_rejected": [s.get("logps/rejected") for s in steps],
    }


def run_trl(split: Path, model: Path, work: Path) -> dict:
    result = work / "trl.json"
    argv = [sys.executable, __file__, "--worker-trl", str(split), str(model), str(work / "run-trl"),
            str(result)]  # fmt: skip
    wall, rss, _ = measure(argv, environment())
    figures = json.loads(result.read_text())
    return {"wall_s": wall, "rss_gb": rss, **figures}


def worker_trl(split_dir: str, model_dir: str, out: str, result: str) -> None:
    """TRL's DPOTrainer on the split, with prefcurate's token ids (see the module docstring)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trainers.data import read_split, tokenize_split

    torch.manual_seed(SETTINGS["seed"])
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    pairs = tokenize_split(read_split(split_dir), tokenizer, max_length=SETTINGS["max_length"])
    rows = {
        name: [getattr(pairs, name)[i].tolist() for i in range(len(pairs))]
        for name in ("prompt", "chosen", "rejected")
    }
    dataset = Dataset.from_dict({f"{k}_ids": v for k, v in rows.items()})

    class SameTokensDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already prompt_ids / chosen_ids / rejected_ids

    args = DPOConfig(
        output_dir=out,
        per_device_train_batch_size=SETTINGS["batch_size"],
        num_train_epochs=1,
        learning_rate=SETTINGS["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=SETTINGS["beta"],
        loss_type=["sigmoid"],
        max_length=SETTINGS["max_length"],
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=SETTINGS["seed"],
        data_seed=SETTINGS["seed"],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SameTokensDPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    loop_started = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - loop_started
    logs = [e for e in trainer.state.log_history if "loss" in e]
    Path(result).write_text(json.dumps({
        "pairs": len(pairs),
        "dpo": len(pairs),
        "loop_s": loop,
        "train_s": time.perf_counter() - started,
        "loss": [e["loss"] for e in logs],
        "logps_chosen": [e.get("logps/chosen") for e in logs],
        "logps_rejected": [e.get("logps/rejected") for e in logs],
    }))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# comparing


def agreement(ours: dict, trl: dict) -> dict:
    """Step-by-step differences of loss and mean log-probs between the two runs."""
    steps = min(len(ours["loss"]), len(trl["loss"]))
    loss_diff = [abs(a - b) for a, b in zip(ours["loss"][:steps], trl["loss"][:steps], strict=True)]

    def rel(key: str, step: int) -> float:
        a, b = ours[key][step], trl[key][step]
        return abs(a - b) / max(abs(b), 1e-12)

    logps = [max(rel("logps_chosen", s), rel("logps_rejected", s)) for s in range(steps)]
    return {
        "steps": steps,
        "first_loss": {"prefcurate": ours["loss"][0], "trl": trl["loss"][0]},
        "first_loss_abs_diff": loss_diff[0],
        "first_logps_chosen": {
            "prefcurate": ours["logps_chosen"][0],
            "trl": trl["logps_chosen"][0],
        },
        "first_logps_rel_diff": logps[0],
        "second_loss_abs_diff": loss_diff[1] if steps > 1 else None,
        "max_loss_abs_diff": max(loss_diff),
        "max_logps_rel_diff": max(logps),
        "first_step_agrees": loss_diff[0] <= LOSS_TOL and logps[0] <= LOGPS_RTOL,
    }


def table(figures: dict) -> str:
    r = figures["results"]
    trl = r["trl"]
    lines = [
        f"| {figures['pairs']} pairs, batch 8, max length 512, {figures['threads']} threads, "
        f"median of {figures['repeats']} | process s | pairs/s | × TRL | "
        "training s (min–max) | pairs/s | × TRL | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "trl": "TRL DPOTrainer (all dpo)",
        "prefcurate_dpo": "prefcurate train (all dpo)",
        "prefcurate_mixdpo": "prefcurate train (MixDPO, τ = 0.5)",
    }
    for name, label in labels.items():
        res = r[name]
        lines.append(
            f"| {label} | {res['wall_s']:.1f} | {res['pairs_per_s']:.1f} | "
            f"{res['pairs_per_s'] / trl['pairs_per_s']:.2f} | {res['train_s']:.1f} "
            f"({res['train_s_spread'][0]:.1f}–{res['train_s_spread'][1]:.1f}) | "
            f"{res['train_pairs_per_s']:.1f} | "
            f"{res['train_pairs_per_s'] / trl['train_pairs_per_s']:.2f} | {res['rss_gb']:.2f} |"
        )
    a = figures["agreement"]
    lines.append("")
    lines.append(
        f"first-step loss: prefcurate {a['first_loss']['prefcurate']:.6f}, TRL "
        f"{a['first_loss']['trl']:.6f} (|Δ| {a['first_loss_abs_diff']:.1e}); first-step mean "
        f"chosen log-prob {a['first_logps_chosen']['prefcurate']:.3f} vs "
        f"{a['first_logps_chosen']['trl']:.3f} (rel. {a['first_logps_rel_diff']:.1e}); over "
        f"{a['steps']} steps max |Δloss| {a['max_loss_abs_diff']:.1e}, max rel. Δlog-prob "
        f"{a['max_logps_rel_diff']:.1e}"
    )
    return "\n".join(lines)


def chart(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = figures["results"]
    names = ["trl", "prefcurate_dpo", "prefcurate_mixdpo"]
    labels = ["TRL\nDPOTrainer", "prefcurate\n(all dpo)", "prefcurate\n(MixDPO τ=0.5)"]
    colours = ["#a0aec0", "#2b6cb0", "#2c7a7b"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], [r[n]["train_pairs_per_s"] for n in names], width=0.4,
                color=colours, label="training")  # fmt: skip
    axes[0].bar([i + 0.2 for i in x], [r[n]["pairs_per_s"] for n in names], width=0.4,
                color=colours, alpha=0.45, label="whole process")  # fmt: skip
    axes[0].set_xticks(list(x), labels)
    axes[0].set_ylabel("pairs/s (higher is better)")
    axes[0].legend(fontsize=7)
    axes[1].bar(labels, [r[n]["rss_gb"] for n in names], color=colours)
    axes[1].set_ylabel("peak RSS, GB")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelsize=7)
    steps = range(1, len(r["trl"]["loss"]) + 1)
    axes[2].plot(steps, r["trl"]["loss"], label="TRL", color="#a0aec0", linewidth=3)
    axes[2].plot(steps, r["prefcurate_dpo"]["loss"], label="prefcurate", color="#2b6cb0",
                 linestyle="--")  # fmt: skip
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("loss (all dpo)")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{figures['pairs']} UltraFeedback pairs, tiny Llama, CPU "
                 f"({figures['machine']['cores']} cores)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker-trl":
        worker_trl(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="8 pairs: one step")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--chart", type=Path, help="write a PNG chart here")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every trainer")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each trainer (median)")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    THREADS["n"] = args.threads
    if args.smoke:
        args.pairs, args.repeats = 8, 1
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        paths = prepare(args.data, args.pairs, work)
        names = ("trl", "prefcurate_dpo", "prefcurate_mixdpo")
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for _ in range(args.repeats):  # interleaved: a change of load hits every trainer
            for name in names:
                if name == "trl":
                    res = run_trl(paths["dpo"], paths["model"], work)
                else:
                    split = paths["dpo"] if name == "prefcurate_dpo" else paths["mixdpo"]
                    res = run_prefcurate(split, paths["model"], work, name)
                runs[name].append(res)
                print(f"{name}: {res['wall_s']:.1f} s, {res['rss_gb']:.2f} GB", file=sys.stderr,
                      flush=True)  # fmt: skip
        results = {}
        for name in names:
            res = median_of(runs[name])
            res["pairs_per_s"] = res["pairs"] / res["wall_s"]
            res["train_pairs_per_s"] = res["pairs"] / res["train_s"]
            results[name] = res
    figures = {
        "command": " ".join(["python", "benchmarks/train_bench.py", *sys.argv[1:]]),
        "pairs": args.pairs,
        "threads": args.threads,
        "repeats": args.repeats,
        "settings": SETTINGS,
        "machine": describe(torch=True),
        "load_average_at_start": load_at_start,
        "results": results,
        "agreement": agreement(results["prefcurate_dpo"], results["trl"]),
        "speedup_vs_trl": {
            "process": results["prefcurate_dpo"]["pairs_per_s"] / results["trl"]["pairs_per_s"],
            "training": results["prefcurate_dpo"]["train_pairs_per_s"]
            / results["trl"]["train_pairs_per_s"],
        },
        "mixdpo_saving_training": 1
        - results["prefcurate_mixdpo"]["train_s"] / results["prefcurate_dpo"]["train_s"],
    }
    print(table(figures))
    if args.chart:
        args.chart.parent.mkdir(parents=True, exist_ok=True)
        chart(figures, args.chart)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
