"""How fast ``prefcurate route`` and ``analyze`` are against what a user would otherwise write.

One run synthesises N UltraFeedback-like pairs (``prefcurate synth``: responses of about 1 kB) to
Parquet, then times each of these in a fresh process, one after the other, on that same file:

* ``prefcurate analyze FILE --threshold 0.5 --json``
* ``prefcurate route FILE --threshold 0.5 --out DIR``
* **pandas**, the routing as a user would write it: read the file, margin, a route column, sort by
  margin (largest first), write Parquet;
* a Hugging Face **datasets** pipeline: ``load_dataset("parquet")``, ``map`` (margin, route),
  ``sort``, ``to_parquet``;
* the **I/O floor**: a plain streaming read and write of the same file with no transformation
  (pyarrow ``ParquetFile.iter_batches`` into a ``ParquetWriter``, zstd like ``route``), and the
  same floor through Polars (``scan_parquet().sink_parquet()``), for reference;
* the **Arrow size**: the file read whole into one Arrow table (its ``nbytes`` is the goal for
  ``route``'s peak memory).

Wall time is measured around each process, peak RSS is the process's own high-water mark
(``os.wait4``'s ``ru_maxrss``, the kernel's count, nothing polled). Every variant must route the
same number of pairs to SFT as ``route`` does, or the run fails. ``--repeat N`` runs every variant
N times, round-robin (so a burst of load hits all of them alike), and reports the median with the
minimum and maximum: one lucky run is not a figure. Run from the repository root::

    python benchmarks/data_bench.py --pairs 1000000 --repeat 3 --json b.json \\
        --chart docs/img/data_bench.png
    python benchmarks/data_bench.py --smoke --json o.json         # 2,000 pairs, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parent.parent
THRESHOLD = 0.5

#: Variants in table order; the first four are compared with route.
VARIANTS = ("floor", "polars_floor", "arrow_size", "analyze", "route", "pandas", "datasets")
#: Run only when ``--only`` names them: route given room for its one-pass strategy.
EXTRA_VARIANTS = ("route_one_pass",)
#: Memory budget of ``route_one_pass``: room for the 1M-pair input (2.9 GB in memory) held whole.
ONE_PASS_BUDGET = "8GB"
LABELS = {
    "floor": "I/O floor (pyarrow stream read → write)",
    "polars_floor": "Polars scan → sink (no transformation)",
    "arrow_size": "read whole into Arrow (the size goal)",
    "analyze": "prefcurate analyze --threshold 0.5",
    "route": "prefcurate route --threshold 0.5",
    "route_one_pass": f"prefcurate route --threshold 0.5 --memory-budget {ONE_PASS_BUDGET}",
    "pandas": "pandas: read, margin, route, sort, write",
    "datasets": "datasets: load_dataset, map, sort, to_parquet",
}


# --------------------------------------------------------------------------------------------------
# the workers: each runs in its own process (``data_bench.py --worker NAME IN OUT``)


def work_floor(src: str, out: str) -> dict:
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(src)
    rows = 0
    with pq.ParquetWriter(out, reader.schema_arrow, compression="zstd") as writer:
        for batch in reader.iter_batches(batch_size=32_768):
            writer.write_batch(batch)
            rows += batch.num_rows
    return {"rows": rows}


def work_polars_floor(src: str, out: str) -> dict:
    import polars as pl

    pl.scan_parquet(src).sink_parquet(out)
    return {"rows": pl.scan_parquet(out).select(pl.len()).collect().item()}


def work_arrow_size(src: str, out: str) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    return {"rows": table.num_rows, "arrow_bytes": table.nbytes}


def work_pandas(src: str, out: str) -> dict:
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(src)
    df = df[df["chosen"] != df["rejected"]]  # as route: identical responses carry no preference
    df["margin"] = df["score_chosen"] - df["score_rejected"]
    df["route"] = np.where(df["margin"] < THRESHOLD, "sft", "dpo")
    df = df.sort_values("margin", ascending=False, kind="stable")
    df.to_parquet(out, index=False, compression="zstd")
    return {"rows": len(df), "sft": int((df["route"] == "sft").sum())}


def work_datasets(src: str, out: str) -> dict:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()
    cache = Path(out).with_suffix(".hf-cache")

    def add_route(batch):
        margin = [
            c - r for c, r in zip(batch["score_chosen"], batch["score_rejected"], strict=True)
        ]
        return {"margin": margin, "route": ["sft" if m < THRESHOLD else "dpo" for m in margin]}

    ds = load_dataset("parquet", data_files=src, split="train", cache_dir=str(cache))
    ds = ds.filter(  # as route: identical responses carry no preference
        lambda b: [c != r for c, r in zip(b["chosen"], b["rejected"], strict=True)], batched=True
    )
    ds = ds.map(add_route, batched=True)
    ds = ds.sort("margin", reverse=True)
    ds.to_parquet(out)
    sft = sum(r == "sft" for r in ds["route"])
    return {"rows": ds.num_rows, "sft": sft}


WORKERS = {
    "floor": work_floor,
    "polars_floor": work_polars_floor,
    "arrow_size": work_arrow_size,
    "pandas": work_pandas,
    "datasets": work_datasets,
}


# --------------------------------------------------------------------------------------------------
# measuring


def measure(argv: list[str], *, env: dict | None = None) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds and peak RSS (GB) of one process, start to exit; its stdout.

    CPU time (user + system, all threads) is what other jobs on a shared machine stretch least.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[1:4]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1e6, stdout  # Linux: ru_maxrss in kB


def run_variant(name: str, data: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"}
    cli = [sys.executable, "-m", "prefcurate"]
    if name == "analyze":
        argv = [*cli, "analyze", str(data), "--threshold", "0.5", "--json"]
        wall, cpu, rss, stdout = measure(argv, env=env)
        report = json.loads(stdout)
        return {"wall_s": wall, "cpu_s": cpu, "rss_gb": rss, "rows": report["rows"],
                "sft": report["routing"]["sft"]}  # fmt: skip
    if name in ("route", "route_one_pass"):
        out = work / f"{name}-out"
        argv = [*cli, "route", str(data), "--threshold", "0.5", "--out", str(out), "--force"]
        if name == "route_one_pass":
            argv += ["--memory-budget", ONE_PASS_BUDGET]
        wall, cpu, rss, _ = measure(argv, env=env)
        plan = json.loads((out / "plan.json").read_text())
        size = (out / "train.parquet").stat().st_size
        return {"wall_s": wall, "cpu_s": cpu, "rss_gb": rss, "rows": plan["counts"]["train"],
                "sft": plan["counts"]["sft"], "out_bytes": size}  # fmt: skip
    out = work / f"{name}.parquet"
    result = work / f"{name}.json"
    wall, cpu, rss, _ = measure([sys.executable, __file__, "--worker", name, str(data), str(out),
                            str(result)], env=env)  # fmt: skip
    figures = json.loads(result.read_text())
    if out.exists():
        figures["out_bytes"] = out.stat().st_size
        out.unlink()
    shutil.rmtree(out.with_suffix(".hf-cache"), ignore_errors=True)
    return {"wall_s": wall, "cpu_s": cpu, "rss_gb": rss, **figures}


def synthesise(n: int, path: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prefcurate", "synth", str(path), "--n", str(n),
                    "--seed", "0"], env=env, check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


#: The figures each run gives, summarised over ``--repeat`` runs as median, min and max.
MEASURES = ("wall_s", "cpu_s", "rss_gb")


def summarise(runs: list[dict]) -> dict:
    """One variant's runs: the median of each measure, its spread, and the rest of the first run."""
    summary = dict(runs[0])
    summary["runs"] = len(runs)
    for measure in MEASURES:
        values = [r[measure] for r in runs]
        summary[measure] = statistics.median(values)
        summary[f"{measure}_min"], summary[f"{measure}_max"] = min(values), max(values)
        summary[f"{measure}_each"] = values
    summary["load_each"] = [r["load"] for r in runs]  # 1-minute load average before, after
    return summary


def ratios(results: dict) -> dict:
    """Route against the others, from the medians; the goals are those of docs/benchmarks.md."""
    route, floor = results["route"], results["floor"]
    arrow_gb = results["arrow_size"]["arrow_bytes"] / 1e9
    out = {
        "route_over_floor": route["wall_s"] / floor["wall_s"],
        "route_over_pandas": route["wall_s"] / results["pandas"]["wall_s"],
        "route_rss_over_arrow": route["rss_gb"] / arrow_gb,
        "route_cpu_over_floor": route["cpu_s"] / floor["cpu_s"],
        "route_cpu_over_pandas": route["cpu_s"] / results["pandas"]["cpu_s"],
    }
    if "polars_floor" in results:
        out["route_over_polars_floor"] = route["wall_s"] / results["polars_floor"]["wall_s"]
    if "datasets" in results:
        out["datasets_over_route"] = results["datasets"]["wall_s"] / route["wall_s"]
    out = {k: round(v, 2) for k, v in out.items()}
    # per run, for the spread of the ratios themselves (runs are round-robin, so run i of each
    # variant ran under about the same load)
    each = zip(route["wall_s_each"], floor["wall_s_each"], results["pandas"]["wall_s_each"],
               strict=True)  # fmt: skip
    out["each_run"] = [
        {"route_over_floor": round(r / f, 2), "route_over_pandas": round(r / p, 2)}
        for r, f, p in each
    ]
    out["goals"] = {  # issue 26's, by the medians
        "route <= 1.25x floor": out["route_over_floor"] <= 1.25,
        "route <= 0.6x pandas": out["route_over_pandas"] <= 0.6,
        "route peak RSS <= Arrow size": out["route_rss_over_arrow"] <= 1.0,
    }
    return out


def chart(figures: dict, path: Path) -> None:
    """Wall time and peak RSS per variant: bars at the median, whiskers from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = figures["results"]
    order = (*VARIANTS[:5], *EXTRA_VARIANTS, *VARIANTS[5:])
    names = [v for v in order if v in results and v != "arrow_size"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    y = range(len(names))
    colours = ["#2b6cb0" if n.startswith("route") or n == "analyze" else "#a0aec0" for n in names]
    for axis, measure in ((left, "wall_s"), (right, "rss_gb")):
        medians = [results[n][measure] for n in names]
        whiskers = [
            [m - results[n].get(f"{measure}_min", m) for n, m in zip(names, medians, strict=True)],
            [results[n].get(f"{measure}_max", m) - m for n, m in zip(names, medians, strict=True)],
        ]
        axis.barh(y, medians, color=colours, xerr=whiskers, capsize=3,
                  error_kw={"elinewidth": 1, "ecolor": "#2d3748"})  # fmt: skip
    left.set_yticks(list(y), [LABELS[n] for n in names], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("wall time, s (lower is better)")
    arrow_gb = results["arrow_size"]["arrow_bytes"] / 1e9
    right.axvline(arrow_gb, color="#c53030", linestyle="--", linewidth=1)
    right.text(arrow_gb, -0.45, " Arrow size", color="#c53030", fontsize=8, va="top")
    right.set_xlabel("peak RSS, GB")
    runs = results["route"].get("runs", 1)
    spread = f"; median of {runs} runs, whiskers min–max" if runs > 1 else ""
    fig.suptitle(f"{figures['pairs']:,} synthetic pairs ({figures['parquet_gb']:.2f} GB Parquet), "
                 f"{figures['machine']['cores']} cores{spread}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(figures: dict) -> str:
    results, r = figures["results"], figures["ratios"]
    floor, route = results["floor"], results["route"]
    runs = route["runs"]

    def cell(res: dict, measure: str, digits: int) -> str:
        median = f"{res[measure]:.{digits}f}"
        if runs == 1:
            return median
        return f"{median} ({res[measure + '_min']:.{digits}f}–{res[measure + '_max']:.{digits}f})"

    spread = "" if runs == 1 else f", median (min–max) of {runs} runs"
    lines = [
        f"| {figures['pairs']:,} pairs{spread} | wall s | × I/O floor | × route | CPU s | "
        "× I/O floor | peak RSS GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (*VARIANTS[:5], *EXTRA_VARIANTS, *VARIANTS[5:]):
        if name not in results:
            continue
        res = results[name]
        lines.append(
            f"| {LABELS[name]} | {cell(res, 'wall_s', 1)} | {res['wall_s'] / floor['wall_s']:.2f} "
            f"| {res['wall_s'] / route['wall_s']:.2f} | {cell(res, 'cpu_s', 1)} | "
            f"{res['cpu_s'] / floor['cpu_s']:.2f} | {cell(res, 'rss_gb', 2)} |"
        )
    arrow = results["arrow_size"]["arrow_bytes"] / 1e9
    lines.append("")
    datasets = (f", datasets {r['datasets_over_route']}× slower than route"
                if "datasets_over_route" in r else "")  # fmt: skip
    lines.append(f"Parquet {figures['parquet_gb']:.2f} GB; in Arrow {arrow:.2f} GB. "
                 f"route: {r['route_over_floor']}× the floor's wall time and "
                 f"{r['route_over_pandas']}× pandas'{datasets}; peak RSS "
                 f"{r['route_rss_over_arrow']}× the Arrow size.")  # fmt: skip
    if runs > 1:
        lines.append("per run, route × floor: " + ", ".join(
            str(e["route_over_floor"]) for e in r["each_run"]) + "; route × pandas: " + ", ".join(
            str(e["route_over_pandas"]) for e in r["each_run"]))  # fmt: skip
        lines.append("load average (1 min) before → after each route run: " + ", ".join(
            f"{a} → {b}" for a, b in route["load_each"]))  # fmt: skip
    lines.append("goals: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}"
                                      for k, v in r["goals"].items()))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, src, out, result = sys.argv[2:6]
        Path(result).write_text(json.dumps(WORKERS[name](src, out)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--only", help="comma-separated variants to run (default: all)")
    parser.add_argument("--work", type=Path, help="keep the synthetic file here (reused if there)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (median)")
    parser.add_argument("--smoke", action="store_true", help="2,000 pairs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--chart", type=Path, help="write a PNG chart here")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if args.smoke:
        args.pairs = 2_000
    only = args.only.split(",") if args.only else list(VARIANTS)
    for needed in ("floor", "route", "arrow_size", "pandas"):
        if needed not in only:
            only.append(needed)
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / f"synth-{args.pairs}.parquet"
        synth_s = None
        if not data.exists():
            synth_s = round(synthesise(args.pairs, data), 2)
        runs: dict[str, list[dict]] = {}
        for turn in range(args.repeat):
            for name in (*VARIANTS[:5], *EXTRA_VARIANTS, *VARIANTS[5:]):
                if name in only:
                    load_before = os.getloadavg()[0]
                    run = run_variant(name, data, work)
                    run["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                    runs.setdefault(name, []).append(run)
                    print(f"run {turn + 1}/{args.repeat} {name}: {run['wall_s']:.2f} s, "
                          f"{run['cpu_s']:.2f} s CPU, {run['rss_gb']:.2f} GB, load "
                          f"{os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)  # fmt: skip
        results = {name: summarise(r) for name, r in runs.items()}
        figures = {
            "command": " ".join(["python", "benchmarks/data_bench.py", *sys.argv[1:]]),
            "pairs": args.pairs,
            "parquet_gb": data.stat().st_size / 1e9,
            "synth_s": synth_s,
            "machine": describe(torch=False),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "repeat": args.repeat,
            "results": {k: _rounded(r) for k, r in results.items()},
        }
        sft = {k: r["sft"] for k, r in results.items() if "sft" in r}
        if len(set(sft.values())) > 1:
            raise SystemExit(f"the variants disagree on the SFT count: {sft}")
        figures["sft"] = results["route"]["sft"]
        figures["ratios"] = ratios(results)
        print(table(figures))
        if args.chart:
            args.chart.parent.mkdir(parents=True, exist_ok=True)
            chart(figures, args.chart)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    main()
