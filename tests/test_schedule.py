"""Where the routed pairs sit and what learning rate they get: placements, schedules, shares.

Every figure is worked out by hand in the test's docstring: 10 pairs, 2 per step (5 steps), the
last two of the curriculum routed to sft, 10% warmup (1 step). Cosine: step 0 warms up to 1,
steps 1–4 decay as ½(1 + cos(π·(s − 1)/4)) = 1, 0.853553, 0.5, 0.146447.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
from split_helpers import synthetic_rows

from prefcurate.base.errors import InputError
from prefcurate.data.io import open_pairs
from prefcurate.routing.plan import plan_routes, spread_sft
from prefcurate.routing.writer import write_route
from trainers.config import TrainConfig
from trainers.loop import train
from trainers.reporter import Reporter
from trainers.schedule import (
    LOW_LR_SHARE,
    Schedule,
    low_lr_warnings,
    route_lr,
    sequential_steps,
    sft_phase_start,
)

STEPS = sequential_steps(10, 2, 5)
LAST = [0.0] * 8 + [1.0] * 2
#: spread: the j-th of 2 sft pairs among 10 at ⌊(2j + 1)·10 / 4⌋ = 2 and 7
SPREAD = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
COS = [1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]


def test_cosine_with_the_sft_pairs_last_starves_them():
    """last: the sft pairs are step 4's, at 0.146447; the dpo pairs average steps 0–3:
    (1 + 1 + 0.853553 + 0.5) / 4 = 0.838388."""
    cosine = Schedule("cosine", warmup_ratio=0.1, total=5)
    assert [cosine.factor(s) for s in range(5)] == pytest.approx(COS)
    lr = route_lr(LAST, STEPS, cosine.factor)
    assert lr.shares["sft"] == pytest.approx(0.146447, abs=1e-6)
    assert lr.shares["dpo"] == pytest.approx(0.838388, abs=1e-6)
    assert lr.mass == {"dpo": 8.0, "sft": 2.0}


def test_spread_gives_the_sft_pairs_the_runs_average_rate():
    """spread: sft pairs at positions 2 and 7, i.e. steps 1 and 3: (1 + 0.5) / 2 = 0.75; the dpo
    pairs take the rest: (2·1 + 1 + 2·0.853553 + 0.5 + 2·0.146447) / 8 = 5.5 / 8 = 0.6875."""
    lr = route_lr(SPREAD, STEPS, Schedule("cosine", 0.1, 5).factor)
    assert lr.shares["sft"] == pytest.approx(0.75)
    assert lr.shares["dpo"] == pytest.approx(0.6875)


def test_phased_gives_the_sft_phase_its_own_warmup_and_decay():
    """phased, sft pairs last: the sft phase starts at step 4. dpo phase: steps 0–3, warmup
    ⌈0.4⌉ = 1, then ½(1 + cos(π·(s − 1)/3)) = 1, 0.75, 0.25 → mean (1 + 1 + 0.75 + 0.25)/4 = 0.75.
    sft phase: step 4 alone, warmup ⌈0.1⌉ = 1 → 1.0."""
    sft = [share == 1.0 for share in LAST]
    assert sft_phase_start(sft, STEPS) == 4
    phased = Schedule("phased", 0.1, 5, sft_start=4)
    assert phased.phases == ((0, 4), (4, 5))
    assert [phased.factor(s) for s in range(5)] == pytest.approx([1.0, 1.0, 0.75, 0.25, 1.0])
    lr = route_lr(LAST, STEPS, phased.factor)
    assert (lr.shares["dpo"], lr.shares["sft"]) == pytest.approx((0.75, 1.0))
    assert phased.to_json()["phases"] == [[0, 4], [4, 5]]


def test_constant_gives_every_route_the_peak_after_warmup():
    lr = route_lr(LAST, STEPS, Schedule("constant", 0.1, 5).factor)
    assert lr.shares == {"dpo": 1.0, "sft": 1.0}


def test_a_soft_pair_counts_towards_each_route_by_its_weight():
    """Weights 0.5 and 1 on the last two pairs (step 4, factor 0.146447): sft mass 1.5, all at
    0.146447; dpo mass 8.5 = 8 pairs over steps 0–3 (sum 2·3.353553) + 0.5 at step 4:
    (6.707107 + 0.073223) / 8.5 = 0.797686."""
    shares = [0.0] * 8 + [0.5, 1.0]
    lr = route_lr(shares, STEPS, Schedule("cosine", 0.1, 5).factor)
    assert lr.mass == {"dpo": 8.5, "sft": 1.5}
    assert lr.shares["sft"] == pytest.approx(0.146447, abs=1e-6)
    assert lr.shares["dpo"] == pytest.approx(0.797686, abs=1e-6)


def test_a_longer_schedule_trains_a_filtered_split_at_mixdpos_rates():
    """The 8 dpo pairs of the filter baseline, their schedule spanning the 5 steps of the MixDPO
    run: steps 0–3 at MixDPO's factors, so the same 0.838388 as the dpo pairs inside MixDPO."""
    lr = route_lr([0.0] * 8, sequential_steps(8, 2, 4), Schedule("cosine", 0.1, 5).factor)
    assert lr.shares["dpo"] == pytest.approx(0.838388, abs=1e-6)
    assert lr.shares["sft"] is None


def test_running_shares_end_at_the_runs_shares():
    lr = route_lr(LAST, STEPS, Schedule("cosine", 0.1, 5).factor)
    assert len(lr.running) == 5 and lr.running[-1] == lr.shares
    assert lr.running[0] == {"dpo": 1.0, "sft": None}


def test_phased_refuses_sft_pairs_that_are_not_last():
    with pytest.raises(ValueError, match="step 3 holds a dpo pair"):
        sft_phase_start([s == 1.0 for s in SPREAD], STEPS)
    assert sft_phase_start([False] * 10, STEPS) is None


def test_a_starved_route_is_warned_with_the_fix():
    lr = route_lr(LAST, STEPS, Schedule("cosine", 0.1, 5).factor)
    assert low_lr_warnings(lr, "fix it") == []  # 14.6% is above the 10% line
    tail = [0.0] * 998 + [1.0] * 2  # 2 sft pairs in the last of 500 steps
    lr = route_lr(tail, sequential_steps(1000, 2, 500), Schedule("cosine", 0.1, 500).factor)
    assert lr.shares["sft"] < LOW_LR_SHARE
    (line,) = low_lr_warnings(lr, "route with --placement spread")
    assert line.startswith("warning: the sft pairs (2 pair visits) train at 0.0% of the peak")
    assert line.endswith("; route with --placement spread")


# --------------------------------------------------------------------------- route --placement


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(40, seed=4)))
    return path


def test_spread_places_the_jth_sft_pair_at_its_slot():
    """6 pairs, 2 sft: slots ⌊(2j + 1)·6 / 4⌋ = 1 and 4."""
    frame = pl.DataFrame({"x": list("abcdef"), "route": ["dpo"] * 4 + ["sft"] * 2})
    assert spread_sft(frame)["x"].to_list() == ["a", "e", "b", "c", "f", "d"]


def test_route_writes_the_spread_order_and_records_it(data, tmp_path):
    last = plan_routes(open_pairs(data), threshold=1.0)
    spread = plan_routes(open_pairs(data), threshold=1.0, placement="spread")
    write_route(spread, tmp_path / "s")
    frame = pl.read_parquet(tmp_path / "s" / "train.parquet").sort("rank")
    n, k = frame.height, int((frame["route"] == "sft").sum())
    slots = [(2 * j + 1) * n // (2 * k) for j in range(k)]
    assert [i for i, r in enumerate(frame["route"]) if r == "sft"] == slots
    # each route keeps its curriculum order (largest margin first)
    same = last.split().sort("rank")
    for route in ("dpo", "sft"):
        mine = frame.filter(pl.col("route") == route)["pair_id"].to_list()
        assert mine == same.filter(pl.col("route") == route)["pair_id"].to_list()
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["placement"] == "spread" and last.to_json()["placement"] == "last"
    assert plan_routes(open_pairs(data), mode="dpo").to_json()["placement"] is None


def test_placement_outside_a_mixdpo_curriculum_is_refused(data):
    with pytest.raises(InputError, match="--placement places the sft pairs"):
        plan_routes(open_pairs(data), mode="dpo", placement="spread")
    with pytest.raises(InputError, match="--order random"):
        plan_routes(open_pairs(data), threshold=0.5, order="random", placement="last")
    with pytest.raises(InputError, match="--stages shuffles"):
        plan_routes(open_pairs(data), threshold=0.5, stages=2, placement="spread")


# --------------------------------------------------------------------------- prefcurate train


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def _train(split, out, **settings):
    fixed = {"model": "tiny", "max_length": 64, "lr": 1e-3, "batch_size": 2, "seed": 0}
    config = TrainConfig(split, out=out, **{**fixed, **settings})
    messages = Messages()
    return train(config, reporter=messages), messages.lines


def _ten_pairs(tmp_path, **plan) -> Path:
    """10 pairs whose two smallest margins route to sft (τ between them and the rest)."""
    rows = synthetic_rows(10, seed=0)
    for i, row in enumerate(rows):
        row["score_rejected"] = row["score_chosen"] - (0.0 if i < 2 else 1.0 + i)
    data = tmp_path / "ten.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = tmp_path / ("split-" + "-".join(f"{v}" for v in plan.values()))
    write_route(plan_routes(open_pairs(data), threshold=0.5, **plan), split)
    return split


def test_train_reports_each_routes_share_in_run_json_metrics_and_terminal(tmp_path):
    """The ten-pair split of the hand computations above, trained by prefcurate train."""
    last = _ten_pairs(tmp_path)
    result, lines = _train(last, tmp_path / "last")
    assert result.lr_share == pytest.approx({"dpo": 0.838388, "sft": 0.146447}, abs=1e-6)
    run = json.loads((tmp_path / "last" / "run.json").read_text())
    assert run["lr_share"] == result.lr_share
    assert run["lr_schedule"] == {
        "kind": "cosine", "warmup_ratio": 0.1, "steps": 5, "phases": [[0, 5]]
    }  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "last" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr_share/dpo"] == 1.0 and rows[0]["lr_share/sft"] is None
    assert (rows[-1]["lr_share/dpo"], rows[-1]["lr_share/sft"]) == (
        result.lr_share["dpo"],
        result.lr_share["sft"],
    )
    assert lines[0] == (
        "mean learning rate, as a share of the peak: dpo 83.8%, sft 14.6% "
        "(cosine schedule, sft pairs last)"
    )
    spread, lines = _train(_ten_pairs(tmp_path, placement="spread"), tmp_path / "spread")
    assert spread.lr_share == pytest.approx({"dpo": 0.6875, "sft": 0.75})
    assert lines[0].endswith("(cosine schedule, sft pairs spread)")
    phased, _ = _train(last, tmp_path / "phased", lr_schedule="phased")
    assert phased.lr_share == pytest.approx({"dpo": 0.75, "sft": 1.0})
    run = json.loads((tmp_path / "phased" / "run.json").read_text())
    assert run["lr_schedule"]["phases"] == [[0, 4], [4, 5]]


def test_train_warns_when_the_sft_pairs_barely_train(tmp_path):
    """One pair per step: 10 steps, 1 of warmup, the two sft pairs in steps 8 and 9, at
    f(8) = ½(1 + cos(π·7/9)) = 0.116978 and f(9) = ½(1 + cos(π·8/9)) = 0.030154: 7.4% on
    average, below 10%. With --schedule-steps 100 the run stops inside the schedule's 10 warmup
    steps: (9/10 + 10/10) / 2 = 95%, no warning."""
    last = _ten_pairs(tmp_path)
    result, lines = _train(last, tmp_path / "one", batch_size=1, warmup_ratio=0.1)
    assert result.lr_share["sft"] == pytest.approx((0.116978 + 0.030154) / 2, abs=1e-6)
    assert lines[1].startswith("warning: the sft pairs (2 pair visits) train at 7.4% of the peak")
    assert "--placement spread" in lines[1] and "--lr-schedule phased" in lines[1]
    longer, lines = _train(last, tmp_path / "long", batch_size=1, schedule_steps=100)
    assert longer.lr_share["sft"] == pytest.approx(0.95)
    assert not any(line.startswith("warning") for line in lines)


def test_phased_needs_the_sft_pairs_last_and_a_schedule_the_run_fits(tmp_path):
    spread = _ten_pairs(tmp_path, placement="spread")
    with pytest.raises(InputError, match="--lr-schedule phased .* step 3 holds a dpo pair"):
        _train(spread, tmp_path / "bad", lr_schedule="phased")
    with pytest.raises(InputError, match="--schedule-steps 3 is fewer than the run's 5 steps"):
        _train(spread, tmp_path / "short", schedule_steps=3)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "short").exists()


def test_route_and_train_take_the_placement_and_the_schedule_from_the_command_line(
    cli, data, tmp_path
):
    split = tmp_path / "s"
    assert (
        cli("route", data, "--preset", "paper", "--placement", "spread", "--out", split).code == 0
    )
    assert json.loads((split / "plan.json").read_text())["placement"] == "spread"
    bad = cli("route", data, "--threshold", "0.5", "--placement", "middle", "--out", tmp_path / "b")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1 and "middle" in bad.err
    bad = cli("train", split, "--model", "tiny", "--out", tmp_path / "r", "--lr-schedule", "phased")
    assert bad.code == 2 and "--lr-schedule phased" in bad.err and "--placement last" in bad.err
    assert not (tmp_path / "b").exists() and not (tmp_path / "r").exists()
