"""The data and training benchmarks run end to end at a tiny size (figures in docs/benchmarks.md).

Timings are not checked (they depend on the machine); the structure of the figures is, and so is
what does not depend on the machine: every variant routes the same pairs, and prefcurate's first
training step computes the same loss and log-probs as TRL's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_data_benchmark_smoke(tmp_path):
    out, chart = tmp_path / "data.json", tmp_path / "data.png"
    done = _run("data_bench.py", "--repeat", "2", "--json", str(out), "--chart", str(chart))
    figures = json.loads(out.read_text())
    results = figures["results"]
    expected = {"floor", "polars_floor", "arrow_size", "analyze", "route", "pandas", "datasets"}
    assert set(results) == expected
    assert all(r["wall_s"] > 0 and r["rss_gb"] > 0 for r in results.values())
    # two runs of each variant: the median lies between their minimum and maximum
    for r in results.values():
        assert r["runs"] == 2 and len(r["wall_s_each"]) == 2
        assert r["wall_s_min"] <= r["wall_s"] <= r["wall_s_max"]
        assert abs(r["wall_s"] - sum(r["wall_s_each"]) / 2) <= 1e-3
        # the load average before and after every run, so each figure carries its load
        assert len(r["load_each"]) == 2 and all(len(pair) == 2 for pair in r["load_each"])
    # every tool routed the same 2,000 pairs the same way (the script refuses to report otherwise)
    assert figures["pairs"] == 2000
    # the rows written: the pairs less the few synth plants with chosen = rejected
    assert 1990 <= results["route"]["rows"] == results["pandas"]["rows"] <= 2000
    assert 0 < results["route"]["sft"] == results["pandas"]["sft"] == results["datasets"]["sft"]
    assert results["route"]["sft"] == results["analyze"]["sft"]
    assert results["arrow_size"]["arrow_bytes"] > 0
    assert set(figures["ratios"]["goals"]) == {
        "route <= 1.25x floor",
        "route <= 0.6x pandas",
        "route peak RSS <= Arrow size",
    }
    assert len(figures["ratios"]["each_run"]) == 2
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| prefcurate route --threshold 0.5 | " in done.stdout
    assert "median (min–max) of 2 runs" in done.stdout
    assert "load average (1 min) before → after each route run: " in done.stdout


def test_train_benchmark_smoke_agrees_with_trl(uf1k, tmp_path):
    out, chart = tmp_path / "train.json", tmp_path / "train.png"
    done = _run("train_bench.py", "--data", str(uf1k), "--json", str(out), "--chart", str(chart))
    figures = json.loads(out.read_text())
    results = figures["results"]
    assert set(results) == {"trl", "trl_precomputed", "prefcurate_unshared", "prefcurate"}
    assert all(res["pairs"] == 8 for res in results.values())
    # every trainer against TRL's default: step 1 has the same loss (ln 2: policy = reference)
    # and the same summed log-probs, so the same token ids went through the same model
    assert set(figures["agreement"]) == {"trl_precomputed", "prefcurate_unshared", "prefcurate"}
    for name, agreement in figures["agreement"].items():
        assert agreement["first_step_agrees"], (name, agreement)
        assert agreement["losses_agree"], (name, agreement)
        assert math.isclose(agreement["first_loss"]["trl"], math.log(2), abs_tol=1e-6)
        assert agreement["first_logps_rel_diff"] <= 1e-4
        assert agreement["first_logps_chosen"]["trl"] < -100  # summed over a response's tokens
    # the shared prompt computes each prompt once: fewer distinct tokens than sequence tokens
    tokens = figures["tokens"]
    assert 0 < tokens["distinct_tokens"] < tokens["sequence_tokens"]
    for res in results.values():
        assert res["training_pairs_per_s"] > 0 and res["loop_tokens_per_s"] > 0
        assert res["rss_gb"] > 0 and len(res["load_runs"]) == 1
        assert len(res["train_s_runs"]) == figures["repeats"] == 1  # --smoke: one run each
    assert set(figures["ratios"]) == {
        f"{ours}/{trl}"
        for ours in ("prefcurate", "prefcurate_unshared")
        for trl in ("trl", "trl_precomputed")
    }
    assert figures["threads"] == 2  # every trainer pinned to the same torch thread count
    assert figures["model"]["name"] == "tiny"
    # the tiny model is below the size where sharing the prompt pays: the default keeps it off
    why_not = "hidden size 64: below 128 sharing is slower than not"
    assert results["prefcurate"]["shared_prompt"] == {"on": False, "why_not": why_not}
    assert results["prefcurate_unshared"]["shared_prompt"]["why_not"] == "--no-shared-prompt"
    assert "| prefcurate train (defaults: shared prompt) | " in done.stdout
    assert f"prefcurate's defaults kept the ordinary batch here: {why_not}" in done.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_check_without_cuda_is_exit_2_in_one_line():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
        env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: no CUDA GPU here")
    assert len(done.stderr.strip().splitlines()) == 1


def test_gpu_check_cpu_smoke_runs_every_part(tmp_path):
    """The GPU check's code paths on tiny shapes on the CPU (its figures mean nothing here)."""
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-smoke"]
        + ["--json", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report  # one JSON object on stdout
    smoke = report["smoke"]
    assert smoke["ddp"]["tokens_per_s"] > 0 and smoke["fsdp"]["tokens_per_s"] > 0
    assert smoke["fsdp_vs_ddp_max_loss_diff"] < 1e-5  # fp32: the same step either way
    assert smoke["flops_per_step"] == 88_080_384  # test_gpu_check_flops_by_hand
    assert report["lora"]["tokens_per_s"] > 0
    trl = report["trl"]
    assert trl["trl_over_prefcurate"] > 0 and trl["steps_timed"] == 2  # 3 steps, 1 warm-up
    # the same token ids and reference log-probs: TRL's first loss is prefcurate's
    assert trl["first_loss"]["trl"] == pytest.approx(trl["first_loss"]["prefcurate"], abs=1e-5)


def test_gpu_check_flops_by_hand():
    """The smoke shape (hidden 64, MLP 176, 2 layers, 4 heads of 16, 2 KV heads, vocabulary
    384), 2 pairs of prompt 8 + response 24 tokens: 4 rows of S = 32, R = 24.

    * one layer's matmul weights: q and o 64·64 each, k and v 64·32 each, gate, up and down
      64·176 each: 8192 + 4096 + 33792 = 46,080;
    * per row: 6 · 46,080 · 2 layers · 32 tokens = 17,694,720 (every token, forward + backward);
      causal attention 6 · 2 · 64 · 32² = 786,432; the head on the 24 response positions only,
      6 · 64 · 384 · 24 = 3,538,944; the embedding lookup 0;
    * 4 rows: 4 · 22,020,096 = 88,080,384 FLOPs per step.

    Counting every one of the 141,632 parameters on every token (6·N·128 + attention), as the
    check did, gives 111,919,104: 1.27 times too many, and 1.51 at Llama-3-8B's shape (11.64
    GFLOP per token against the 7.70 computed), since the embedding is a lookup and the head
    never sees a prompt token.
    """
    from gpu_check import FULL, SHAPES, SMOKE, SMOKE_SHAPE, flops_per_step, linear_parameters

    assert linear_parameters(SMOKE_SHAPE) == 46_080
    assert flops_per_step(SMOKE_SHAPE, SMOKE) == 88_080_384
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**SMOKE_SHAPE))
    layer = model.model.layers[0]
    linear = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert linear == 46_080  # the config's count is the built layer's
    old = 6 * sum(p.numel() for p in model.parameters()) * 128 + 6 * 2 * 64 * 32 * 128
    assert old == 111_919_104
    llama = SHAPES["llama-3-8b-shape-4-layers"]
    tokens = 2 * FULL["pairs"] * (FULL["prompt"] + FULL["response"])
    assert flops_per_step(llama, FULL) / tokens / 1e9 == pytest.approx(7.70, abs=0.005)


def test_gpu_check_scores_a_device_by_its_exact_name():
    from gpu_check import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == (989.4, "data sheet")
    assert peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.5  # not the SXM's 989
    assert peak_tflops("NVIDIA H100 PCIe", 700.0) == (700.0, "--peak-tflops")
    peak, source = peak_tflops("NVIDIA H100 something new", None)
    assert peak is None and "--peak-tflops" in source
