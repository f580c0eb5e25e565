"""``--preset paper`` and soft routing (``route --soft T``), through the real route and trainer."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch
from split_helpers import synthetic_rows
from torch.testing import assert_close

from prefcurate.data.io import open_pairs
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.presets import PRESETS, resolve
from prefcurate.routing.writer import write_route
from trainers.data import collate, read_split, tokenize_split
from trainers.logps import SequenceLogps, reference_logps
from trainers.losses import routed_pair_losses
from trainers.model import load_model
from trainers.objective import Objective

FAST = ("--model", "tiny", "--max-length", "64", "--seed", "0", "--max-steps", "1")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(24, seed=4)))
    return path


# --------------------------------------------------------------------------- --preset paper


def test_paper_recipe_is_the_papers_numbers():
    assert resolve("route", "paper", {}) == {
        "mode": "mixdpo",
        "threshold": 0.5,
        "order": "curriculum",
    }
    train = resolve("train", "paper", {})
    assert (train["beta"], train["label_smoothing"], train["lr"]) == (0.01, 0.1, 1e-6)
    assert (train["lr_schedule"], train["warmup_ratio"], train["epochs"]) == ("cosine", 0.1, 1)
    assert train["shuffle"] is False and train["loss"] == "sigmoid"
    assert resolve("train", "paper", {"beta": 0.05})["beta"] == 0.05
    assert "threshold" not in resolve("route", "paper", {"sft_fraction": 0.3})
    assert set(PRESETS) == {"paper"}


def test_route_recipe_paper_writes_the_papers_plan(cli, data, tmp_path):
    result = cli("route", data, "--preset", "paper", "--out", tmp_path / "s")
    assert result.code == 0, result.err
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert (plan["mode"], plan["threshold"], plan["order"]) == ("mixdpo", 0.5, "curriculum")
    assert plan["preset"] == "paper" and plan["soft"] is None
    assert "largest margin first" in result.out
    # an explicit flag beats the preset, and the preset is still recorded
    result = cli("route", data, "--preset", "paper", "--threshold", "1", "--out", tmp_path / "t")
    assert result.code == 0, result.err
    plan = json.loads((tmp_path / "t" / "plan.json").read_text())
    assert plan["threshold"] == 1.0 and plan["preset"] == "paper"


def test_train_recipe_paper_records_settings_and_flags_override(cli, data, tmp_path):
    assert cli("route", data, "--preset", "paper", "--out", tmp_path / "s").code == 0
    result = cli("train", tmp_path / "s", "--preset", "paper", "--out", tmp_path / "r", *FAST)
    assert result.code == 0, result.err
    config = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert config["preset"] == "paper"
    assert (config["beta"], config["label_smoothing"], config["lr"]) == (0.01, 0.1, 1e-6)
    assert (config["lr_schedule"], config["warmup_ratio"]) == ("cosine", 0.1)
    result = cli(
        "train", tmp_path / "s", "--preset", "paper", "--beta", "0.2", "--lr", "1e-4",
        "--out", tmp_path / "r2", *FAST,
    )  # fmt: skip
    assert result.code == 0, result.err
    config = json.loads((tmp_path / "r2" / "run.json").read_text())["config"]
    assert (config["beta"], config["lr"], config["label_smoothing"]) == (0.2, 1e-4, 0.1)
    bad = cli("train", tmp_path / "s", "--preset", "nope", "--out", tmp_path / "r3", *FAST)
    assert bad.code == 2 and "unknown --preset 'nope'" in bad.err


def test_dpo_mode_defaults_to_a_shuffle_and_says_so(cli, data, tmp_path):
    result = cli("route", data, "--mode", "dpo", "--out", tmp_path / "d")
    assert result.code == 0, result.err
    assert "order random (seeded shuffle)" in result.out
    plan = json.loads((tmp_path / "d" / "plan.json").read_text())
    assert plan["order"] == "random"
    margins = pl.read_parquet(tmp_path / "d" / "train.parquet").sort("rank")["margin"].to_list()
    assert margins != sorted(margins, reverse=True)  # not margin-sorted
    asked = cli("route", data, "--mode", "dpo", "--order", "curriculum", "--out", tmp_path / "c")
    assert asked.code == 0
    assert json.loads((tmp_path / "c" / "plan.json").read_text())["order"] == "curriculum"


# --------------------------------------------------------------------------- soft routing


def test_soft_weights_are_the_logistic_of_the_gap_to_the_centre(data, tmp_path):
    """τ = 0.5 on half-point margins (0, 0.5, 1, 2, 3): the largest margin below τ is 0, so the
    sigmoid is centred at c = 0.25, and with T = 0.25: margin 0 → σ(1) = 0.731059,
    0.5 → σ(−1) = 0.268941, 1 → σ(−3) = 0.047426, 2 → σ(−7) = 0.000911, 3 → σ(−11) = 0.0000167."""
    plan = plan_routes(open_pairs(data), threshold=0.5, soft=0.25)
    write_route(plan, tmp_path / "soft")
    frame = pl.read_parquet(tmp_path / "soft" / "train.parquet")
    expected = {0.0: 0.731059, 0.5: 0.268941, 1.0: 0.047426, 2.0: 0.000911, 3.0: 0.0000167}
    for margin, weight in zip(frame["margin"], frame["weight"], strict=True):
        assert weight == pytest.approx(expected[margin], abs=1e-6)
    # the route column stays the hard route, for readers that ignore weights
    assert frame.filter(pl.col("margin") < 0.5)["route"].unique().to_list() == ["sft"]
    plan_json = json.loads((tmp_path / "soft" / "plan.json").read_text())
    assert (plan_json["soft"], plan_json["soft_center"]) == (0.25, 0.25)
    assert plan_json["counts"]["weight_mean"] == pytest.approx(frame["weight"].mean())


def test_soft_weights_at_t_to_zero_are_the_hard_route(data):
    """τ = 0.75: the centre is 0.625 (between margin 0.5 and τ); the margins nearest to it are
    0.5 (0.125 below) and 1 (0.375 above), so no weight is further than σ(−0.125/T) from the
    hard route's."""
    hard = plan_routes(open_pairs(data), threshold=0.75).keys.sort("pair_id")
    hard_sft = (hard["route"] == "sft").cast(pl.Float64).to_list()
    zero = plan_routes(open_pairs(data), threshold=0.75, soft=0.0).keys.sort("pair_id")
    assert zero["weight"].to_list() == hard_sft
    for temperature in (0.1, 0.01, 0.001):
        soft = plan_routes(open_pairs(data), threshold=0.75, soft=temperature)
        assert soft.soft_center == 0.625
        weights = soft.keys.sort("pair_id")["weight"].to_list()
        worst = max(abs(w - h) for w, h in zip(weights, hard_sft, strict=True))
        assert worst <= 1 / (1 + math.exp(0.125 / temperature)) + 1e-12
    assert worst < 1e-50


def test_soft_routing_at_t_1e_6_is_hard_routing_with_margins_exactly_at_tau(data, tmp_path):
    """Half-point ratings, τ = 0.5: the ties (margin 0) go to sft and the pairs at exactly τ
    (margin 0.5) to dpo under hard routing (margin < τ is strict). At T = 1e-6 soft routing
    gives every pair the hard route's weight, those at τ included (centred at τ they would keep
    w = ½ at any T), and the trainer's per-pair losses are the hard split's."""
    hard = plan_routes(open_pairs(data), threshold=0.5)
    soft = plan_routes(open_pairs(data), threshold=0.5, soft=1e-6)
    margins = hard.keys.get_column("margin")
    assert (margins == 0.5).sum() > 0 and (margins == 0.0).sum() > 0
    sft = (hard.keys["route"] == "sft").cast(pl.Float64)
    expected = dict(zip(hard.keys["pair_id"], sft, strict=True))
    weights = dict(zip(soft.keys["pair_id"], soft.keys["weight"], strict=True))
    assert weights == expected
    at_tau = soft.keys.filter(pl.col("margin") == 0.5)
    assert at_tau["weight"].to_list() == [0.0] * at_tau.height
    assert at_tau["route"].unique().to_list() == ["dpo"]
    write_route(hard, tmp_path / "hard")
    write_route(soft, tmp_path / "soft")
    loaded = load_model("tiny", seed=0)
    module = SequenceLogps(loaded.model)
    _, hard_terms = _terms(tmp_path / "hard", loaded, module)
    _, soft_terms = _terms(tmp_path / "soft", loaded, module)
    assert torch.equal(hard_terms.is_dpo, soft_terms.is_dpo)
    assert_close(soft_terms.loss, hard_terms.loss)


def test_soft_routing_is_refused_outside_mixdpo_and_below_zero(cli, data, tmp_path):
    bad = cli("route", data, "--mode", "dpo", "--soft", "0.2", "--out", tmp_path / "a")
    assert bad.code == 2 and "--soft mixes" in bad.err
    bad = cli("route", data, "--threshold", "0.5", "--soft", "-1", "--out", tmp_path / "b")
    assert bad.code == 2 and "--soft must be 0 or a temperature" in bad.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_soft_routed_losses_by_hand():
    """Preference (0.3, 0.7) for two dpo pairs, NLL (2, 4, 6), sft shares (0.25, 1, 0):
    pair 0: 0.75 · 0.3 + 0.25 · 2 = 0.725; pair 1 (sft): 4; pair 2: 0.7 (share 0 = hard)."""
    is_dpo = torch.tensor([True, False, True])
    nll = torch.tensor([2.0, 4.0, 6.0])
    shares = torch.tensor([0.25, 1.0, 0.0], dtype=torch.float64)
    loss = routed_pair_losses(is_dpo, torch.tensor([0.3, 0.7]), nll, sft_mix=shares)
    assert_close(loss, torch.tensor([0.725, 4.0, 0.7]))


def _terms(split_dir, loaded, module):
    split = read_split(split_dir)
    pairs = tokenize_split(split, loaded.tokenizer, max_length=64)
    ref = reference_logps(
        module,
        pairs,
        batch_size=24,
        device=torch.device("cpu"),
        autocast=torch.autocast("cpu", enabled=False),
        pad_id=0,
    )
    index = torch.arange(len(pairs))
    batch = collate(pairs, index, pad_id=0, ref_chosen=ref[0], ref_rejected=ref[1])
    with torch.no_grad():
        out = Objective("sigmoid", 0.1, 0.1, 1.0, 0.0)(module, batch)
    return pairs, out


def test_trainer_mixes_by_weight_and_t_zero_is_the_hard_loss(data, tmp_path):
    """The same pairs through read → tokenise → collate → objective: a split with weights 0/1
    (T = 0) gives bit-identical per-pair losses to the hard split, and a soft split gives
    w · NLL + (1 − w) · DPO per pair (at the reference policy DPO with ε = 0.1 is log 2)."""
    loaded = load_model("tiny", seed=0)
    module = SequenceLogps(loaded.model)
    for name, soft in (("hard", None), ("zero", 0.0), ("soft", 0.5)):
        write_route(plan_routes(open_pairs(data), threshold=0.5, soft=soft), tmp_path / name)
    hard_pairs, hard = _terms(tmp_path / "hard", loaded, module)
    _, zero = _terms(tmp_path / "zero", loaded, module)
    assert torch.equal(hard.loss, zero.loss)
    soft_pairs, soft = _terms(tmp_path / "soft", loaded, module)
    assert soft_pairs.pair_ids == hard_pairs.pair_ids
    weights = pl.read_parquet(tmp_path / "soft" / "train.parquet").sort("rank")["weight"]
    expected = [
        w * nll + (1 - w) * math.log(2)
        for w, nll in zip(weights, soft.chosen_nll.tolist(), strict=True)
    ]
    assert soft.loss.tolist() == pytest.approx(expected, abs=1e-5)
    assert bool(soft.is_dpo.all())  # every weight < 1: each pair has a preference term


def test_soft_split_trains_through_the_cli(cli, data, tmp_path):
    assert (
        cli("route", data, "--threshold", "0.5", "--soft", "0.25", "--out", tmp_path / "s").code
        == 0
    )
    result = cli("train", tmp_path / "s", "--out", tmp_path / "r", *FAST, "--batch-size", "24")
    assert result.code == 0, result.err
    (row,) = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert row["pairs/dpo"] == 24 and row["pairs/sft"] == 0
