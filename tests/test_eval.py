"""Evaluation during training (``train --eval-every``), trackers (``--report-to``), and what the
run directory, curves.png and the inspect page show of them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from split_helpers import synthetic_rows, write_split

from prefcurate.routing.plan import plan_routes
from prefcurate.routing.writer import write_route
from trainers.evaluation import (
    EvalSet,
    MarginBin,
    bin_of,
    eval_metrics,
    margin_bins,
    response_tokens,
)
from trainers.objective import Objective

FAST = ("--model", "tiny", "--max-length", "64", "--lr", "1e-3", "--seed", "0", "--catalog", "off")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def held_out_split(tmp_path) -> Path:
    """60 synthetic pairs routed at τ 0.5 with 20 held out (eval.parquet)."""
    from prefcurate.data.io import open_pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(60, seed=5)))
    split = tmp_path / "split"
    write_route(plan_routes(open_pairs(data), threshold=0.5, eval_fraction=1 / 3), split)
    return split


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- the figures


def test_margin_bins_put_tau_on_an_edge_and_split_the_rest_in_terciles():
    margins = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, float("nan")], dtype=torch.float64)
    bins = margin_bins(margins, 0.5)
    # at or above τ: 0.5 1 1.5 2 3; terciles (linear interpolation) at 1.1667 and 1.8333
    assert [b.label for b in bins] == ["< 0.5", "[0.5, 1.17)", "[1.17, 1.83)", ">= 1.83"]
    assert bins[0] == MarginBin(-math.inf, 0.5)
    # without a τ, quartiles of all 7 margins: the first at position 1.5 of 0 0 0.5 …: 0.25
    assert margin_bins(margins, None)[0].hi == pytest.approx(0.25)
    nothing = torch.full((3,), float("nan"), dtype=torch.float64)  # no margins: one bin, "all"
    assert [b.label for b in margin_bins(nothing, 0.5)] == ["all"]


def test_eval_metrics_by_hand():
    """Two pairs, β = 0.1, sigmoid DPO. Pair 0 is dpo: chosen −10 (ref −12), rejected −20 (ref
    −19), so h = 2 − (−1) = 3, rewards 0.2 and −0.1, loss −log σ(0.3) = 0.55436. Pair 1 is sft
    (margin < τ): its loss is the NLL of its chosen response, 8 / 4 tokens = 2; with its own
    reference (−7 and −9) its rewards are 0.1·(−8+7) = −0.1 and 0.1·(−6+9) = 0.3: a wrong
    order, counted in its margin bin but not in the dpo pairs' accuracy."""
    from trainers.data import Ragged, TokenizedPairs

    pairs = TokenizedPairs(
        pair_ids=["a", "b"],
        prompt=Ragged.from_lists([[1, 2], [1, 2]]),
        chosen=Ragged.from_lists([[3, 4, 5, 6], [3, 4, 5, 6]]),
        rejected=Ragged.from_lists([[7, 8], [7, 8, 9]]),
        is_dpo=torch.tensor([True, False]),
        truncated=0,
        identical=0,
        chat_template=False,
    )
    margins = torch.tensor([2.0, 0.0], dtype=torch.float64)
    bins = margin_bins(margins, 0.5)
    index = bin_of(margins, bins)
    eval_set = EvalSet(Path("eval.parquet"), pairs, margins, bins, index,
                       torch.tensor([-12.0, -7.0]), torch.tensor([-19.0, -9.0]))  # fmt: skip
    objective = Objective(loss="sigmoid", beta=0.1, label_smoothing=0.0, sft_weight=1.0,
                          nll_weight=0.0)  # fmt: skip
    assert response_tokens(pairs).tolist() == [4, 4]
    out = eval_metrics(eval_set, torch.tensor([-10.0, -8.0]), torch.tensor([-20.0, -6.0]),
                       objective)  # fmt: skip
    dpo_loss = -math.log(1 / (1 + math.exp(-0.3)))
    assert out["eval/loss/dpo"] == pytest.approx(dpo_loss, abs=1e-6)
    assert out["eval/loss/sft"] == pytest.approx(2.0)
    assert out["eval/loss"] == pytest.approx((dpo_loss + 2.0) / 2, abs=1e-6)
    assert out["eval/rewards/accuracies"] == 1.0
    assert out["eval/rewards/margins"] == pytest.approx(0.3, abs=1e-6)
    assert out["eval/pairs/dpo"] == out["eval/pairs/sft"] == 1
    by_bin = {r["bin"]: r for r in out["eval/by_margin"]}
    assert by_bin["< 0.5"]["rewards/accuracies"] == 0.0  # the sft pair, ordered wrongly
    assert by_bin["< 0.5"]["rewards/margins"] == pytest.approx(-0.4, abs=1e-6)
    assert by_bin["< 0.5"]["dpo"] == 0
    assert by_bin[bins[int(index[0])].label]["rewards/accuracies"] == 1.0


# --------------------------------------------------------------------------- a run


def test_eval_every_writes_held_out_figures_to_metrics_run_json_curves_and_the_page(
    cli, held_out_split, tmp_path
):
    out = tmp_path / "run"
    result = cli(
        "train", held_out_split, "--out", out, *FAST, "--batch-size", "4", "--eval-every", "3",
        "--report-to", "tensorboard",
    )  # fmt: skip
    assert result.code == 0, result.err
    rows = metrics(out)
    evaluated = [r["step"] for r in rows if "eval/loss" in r]
    assert evaluated == [3, 6, 9, 10]  # every 3 steps and after the last (40 pairs / 4 = 10)
    last = rows[-1]
    assert last["eval/pairs/dpo"] + last["eval/pairs/sft"] == 20
    assert sum(b["pairs"] for b in last["eval/by_margin"]) == 20
    assert 0.0 <= last["eval/rewards/accuracies"] <= 1.0
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["eval"]["pairs"] == 20 and run_json["eval"]["every"] == 3
    assert run_json["eval"]["final"]["eval/loss"] == last["eval/loss"]
    assert run_json["result"]["final"]["eval/loss"] == last["eval/loss"]
    _tensorboard_has_trl_names(out / "tensorboard", rows)
    assert cli("plot", out).code == 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    page = tmp_path / "page.html"
    assert cli("inspect", out, "--out", page).code == 0
    html = page.read_text()
    assert "held-out pairs per margin bin, evaluated at step 10" in html


def _tensorboard_has_trl_names(directory: Path, rows: list[dict]) -> None:
    """The event file holds every step's metrics under TRL's names (train/…, eval/…)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    names = ("train/loss", "train/learning_rate", "train/grad_norm", "train/rewards/accuracies",
             "train/loss/dpo", "train/epoch", "eval/loss", "eval/rewards/accuracies")  # fmt: skip
    for tag in names:
        assert tag in tags, tag
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [r["step"] for r in rows]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    lr = events.Scalars("train/learning_rate")
    assert [e.value for e in lr] == pytest.approx([r["lr"] for r in rows], rel=1e-6)
    by_bin = [t for t in tags if t.startswith("eval/by_margin/")]
    assert by_bin and all(t.endswith(("/rewards/accuracies", "/rewards/margins")) for t in by_bin)


def test_eval_split_flag_evaluates_another_split_at_the_end(cli, held_out_split, tmp_path):
    other = write_split(tmp_path / "other", synthetic_rows(12, seed=9))
    out = tmp_path / "run"
    result = cli("train", held_out_split, "--out", out, *FAST, "--max-steps", "2",
                 "--eval-split", other)  # fmt: skip
    assert result.code == 0, result.err
    rows = metrics(out)
    assert (
        "eval/loss" not in rows[0] and rows[-1]["eval/pairs/dpo"] + rows[-1]["eval/pairs/sft"] == 12
    )  # other has no eval.parquet: its train.parquet


def test_eval_every_without_held_out_pairs_is_exit_2(cli, tmp_path):
    split = write_split(tmp_path / "split", synthetic_rows(8, seed=1))
    result = cli("train", split, "--out", tmp_path / "run", *FAST, "--eval-every", "5")
    assert result.code == 2
    assert "--eval-every needs held-out pairs" in result.err and "--eval-fraction" in result.err
    assert not (tmp_path / "run").exists()


def test_wandb_offline_run_logs_the_metrics(cli, held_out_split, tmp_path, monkeypatch):
    """W&B through its own library, offline (WANDB_MODE=offline): the run file W&B writes
    (``run-<id>.wandb``, protobuf records whose values are JSON text) holds every step's loss
    under TRL's names, the evaluation's, and the run's settings as its config."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    result = cli("train", held_out_split, "--out", out, *FAST, "--max-steps", "3",
                 "--eval-every", "3", "--report-to", "wandb")  # fmt: skip
    assert result.code == 0, result.err
    run_id = (out / "wandb" / "run_id").read_text().strip()
    files = list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()
    for key in (b"train/loss", b"train/learning_rate", b"train/rewards/accuracies", b"eval/loss"):
        assert key in data, key
    rows = metrics(out)
    for row in rows:  # each step's loss, as the JSON W&B stores
        assert json.dumps(row["loss"]).encode() in data
    assert json.dumps(rows[-1]["eval/loss"]).encode() in data
    assert b"max_length" in data and b"eval_every" in data  # the config


def test_report_to_a_missing_tracker_is_exit_2(cli, held_out_split, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    result = cli("train", held_out_split, "--out", tmp_path / "run", *FAST, "--report-to", "wandb")
    assert result.code == 2 and "needs the wandb package" in result.err
    assert os.path.exists(tmp_path / "run") is False
