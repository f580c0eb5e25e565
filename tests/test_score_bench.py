"""The scoring benchmark runs end to end at a tiny size (its figures are in docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_score_benchmark_smoke(hh, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "score_bench.py"), "--smoke",
         "--data", str(hh), "--json", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["pairs"] == 12
    batching = figures["batching"]
    # the same texts either way; sorted batches carry less padding, whatever the machine
    assert batching["padded_tokens"]["sorted"] < batching["padded_tokens"]["random"]
    assert batching["padded_tokens"]["sorted"] >= batching["tokens"]
    assert figures["cache"]["cold_cpu_median_s"] > figures["cache"]["cached_cpu_median_s"] > 0
    assert "| cold run → cached rerun" in done.stdout
