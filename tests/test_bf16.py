"""``--precision bf16`` trains at DPO learning rates: stochastic rounding (torchao's AdamW) makes
fp32's update in expectation, where round-to-nearest loses almost all of it
(benchmarks/bf16_check.py; docs/training.md shows the figure)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from split_helpers import synthetic_rows, write_split

from trainers.optim import adamw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def test_bf16_precision_uses_stochastic_rounding_adamw():
    weight = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    optimizer = adamw([weight], lr=1e-4, weight_decay=0.0, precision="bf16")
    weight.grad = torch.ones_like(weight)
    torch.manual_seed(0)
    optimizer.step()
    # Adam's first step moves every weight by lr = 1e-4, an eightieth of bf16's spacing at 1.0
    # (2⁻⁷): rounding to nearest keeps 1.0 everywhere, stochastic rounding moves about 1/78 of
    # the weights down one step, so the mean update is lr.
    moved = weight.detach() != 1.0
    assert 0 < int(moved.sum()) < 4096 // 20
    assert float(1.0 - weight.detach().double().mean()) == pytest.approx(1e-4, rel=0.35)
    assert optimizer.state[weight]["exp_avg"].dtype == torch.bfloat16  # 8 bytes per parameter


def test_fp32_and_bf16_mixed_keep_torch_adamw():
    weight = torch.nn.Parameter(torch.ones(4))
    for precision in ("fp32", "bf16-mixed"):
        assert type(adamw([weight], lr=1, weight_decay=0, precision=precision)) is torch.optim.AdamW


def test_bf16_follows_fp32_at_lr_5e_7_over_20_steps(tmp_path):
    """The tiny model, 20 steps at lr 5e-7: bf16 with stochastic rounding makes fp32's update
    (slope 1.01 on UltraFeedback, 0.7..1.3 asserted) and its preference loss stays within 2e-3 of
    fp32's at every step; round-to-nearest makes almost none of it (0.01)."""
    from bf16_check import RUNS, changed_share, initial_weights, run, update_slope

    split = write_split(tmp_path / "split", synthetic_rows(160, seed=3), threshold=-1.0)  # all dpo
    runs = {name: run(split, name, tmp_path / name, 20) for name in RUNS}
    initial = initial_weights()
    fp32 = runs["fp32"]["weights"]
    slope = {name: update_slope(r["weights"], fp32, initial) for name, r in runs.items()}
    share = {name: changed_share(r["weights"], initial) for name, r in runs.items()}
    assert 0.7 < slope["bf16"] < 1.3
    assert slope["bf16-nearest"] < 0.2
    assert share["fp32"] > 0.8 and share["bf16"] > 2 * share["bf16-nearest"]
    gaps = [
        abs(a - b) for a, b in zip(runs["fp32"]["loss/dpo"], runs["bf16"]["loss/dpo"], strict=True)
    ]
    assert max(gaps) < 2e-3
