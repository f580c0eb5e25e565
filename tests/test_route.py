"""Routing plans and split writing (library): modes, orders, stages, drops, eval, determinism.

The figures on ../shared/data/ultrafeedback_1k.jsonl are facts of that file (its README): margins
are multiples of 0.5; 111 pairs have margin 0, 193 have 0.5, 193 have 1.0, 120 have 1.5, and the
largest margin is 8.0 (one pair).
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from prefcurate.base.errors import InputError
from prefcurate.base.outdir import MANIFEST
from prefcurate.base.sizes import estimate_input_bytes
from prefcurate.commands.route import route_dir
from prefcurate.data.io import open_pairs
from prefcurate.routing import texts
from prefcurate.routing import writer as splitwriter
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.texts import SPLIT_COLUMNS
from prefcurate.routing.writer import write_route


@pytest.fixture
def uf(uf1k):
    """The loaded ../shared/data/ultrafeedback_1k.jsonl."""
    return open_pairs(uf1k)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# modes


def test_mixdpo_tau_half_routes_exactly_the_ties(uf):
    plan = plan_routes(uf, threshold=0.5)
    assert (plan.counts["dpo"], plan.counts["sft"], plan.counts["dropped"]) == (885, 110, 5)
    assert plan.counts["dropped_by_reason"]["identical"] == 4
    assert plan.counts["dropped_by_reason"]["empty_chosen"] == 1
    train = plan.split("train")
    assert train.columns == list(SPLIT_COLUMNS)
    assert train.get_column("rank").to_list() == list(range(995))
    assert train.get_column("margin")[0] == 8.0
    margins = train.get_column("margin").to_list()
    assert all(a >= b for a, b in zip(margins, margins[1:], strict=False))
    routes = train.get_column("route").to_list()
    assert routes == ["dpo"] * 885 + ["sft"] * 110  # every sft pair after every dpo pair
    assert set(train.filter(pl.col("route") == "sft").get_column("margin")) == {0.0}
    assert set(train.get_column("stage")) == {0}


def test_curriculum_breaks_margin_ties_by_pair_id(uf):
    train = plan_routes(uf, threshold=0.5).split("train")
    for _, group in train.group_by("margin"):
        by_rank = group.sort("rank").get_column("pair_id").to_list()
        assert by_rank == sorted(by_rank)


def test_filter_mode_drops_the_small_margins(uf):
    plan = plan_routes(uf, mode="filter", threshold=0.5)
    train = plan.split("train")
    assert train.height == 885
    assert set(train.get_column("route")) == {"dpo"}
    assert train.get_column("margin").min() == 0.5
    assert plan.counts["dropped_by_reason"] == {
        "identical": 4,
        "empty_chosen": 1,
        "null_margin": 0,
        "below_threshold": 110,
    }
    assert plan.counts["dropped"] == 115


@pytest.mark.parametrize(("mode", "route"), [("dpo", "dpo"), ("sft", "sft")])
def test_single_route_modes_need_no_threshold_and_record_one(uf, mode, route):
    plain = plan_routes(uf, mode=mode)
    assert plain.threshold is None
    assert set(plain.split().get_column("route")) == {route}
    assert plain.counts[route] == 995  # 4 with chosen = rejected, 1 with an empty chosen one
    recorded = plan_routes(uf, mode=mode, threshold=1.0)
    assert recorded.threshold == 1.0
    assert recorded.counts[route] == 995  # τ is recorded, not applied
    assert recorded.counts["below_threshold"] == 110 + 192  # identical: margins 0 and 0.5


@pytest.mark.parametrize(
    ("fraction", "tau", "sft"), [(0.12, 0.5, 110), (0.3, 1.0, 302), (0.5, 1.5, 494), (0, 0, 0)]
)
def test_sft_fraction_picks_tau_and_keeps_ties_together(uf, fraction, tau, sft):
    plan = plan_routes(uf, sft_fraction=fraction)
    assert plan.threshold == tau
    assert plan.sft_fraction == fraction
    assert plan.counts["sft"] == sft
    assert plan.to_json()["threshold"] == tau


def test_sft_fraction_one_routes_everything(uf):
    plan = plan_routes(uf, sft_fraction=1.0)
    assert plan.counts["sft"] == 995 and plan.threshold > 8.0


# --------------------------------------------------------------------------------------------------
# orders and stages


def _distinct(uf) -> pl.DataFrame:
    """The input's pairs that route keeps: chosen ≠ rejected (4 of the 1000 are identical) and a
    chosen response written (one is empty)."""
    blank = pl.col("chosen").str.strip_chars().str.len_chars() == 0
    return uf.collect().filter(pl.col("chosen") != pl.col("rejected"), ~blank)


def test_as_is_keeps_the_input_order(uf):
    train = plan_routes(uf, threshold=0.5, order="as-is").split()
    assert train.get_column("pair_id").to_list() == _distinct(uf).get_column("pair_id").to_list()


def test_random_order_is_a_seeded_permutation_independent_of_file_order(uf, tmp_path):
    a = plan_routes(uf, threshold=0.5, order="random", seed=7).split()
    b = plan_routes(uf, threshold=0.5, order="random", seed=7).split()
    c = plan_routes(uf, threshold=0.5, order="random", seed=8).split()
    ids = a.get_column("pair_id").to_list()
    assert ids == b.get_column("pair_id").to_list()
    assert ids != c.get_column("pair_id").to_list()
    assert sorted(ids) == sorted(_distinct(uf).get_column("pair_id").to_list())
    assert a.get_column("rank").to_list() == list(range(995))
    # the shuffle keys on content: the same pairs listed in another order shuffle the same way
    lines = Path(uf.raw.paths[0]).read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines) + "\n", encoding="utf-8")
    d = plan_routes(open_pairs(shuffled), threshold=0.5, order="random", seed=7).split()
    assert d.get_column("pair_id").to_list() == ids


def test_stages_are_equal_contiguous_difficulty_chunks_shuffled_inside(uf):
    train = plan_routes(uf, threshold=0.5, stages=4, seed=3).split()
    sizes = train.group_by("stage").len().sort("stage").get_column("len").to_list()
    assert sizes == [249, 249, 249, 248]  # 995 pairs: stage s holds ranks [s·n/4, (s+1)·n/4)
    assert train.get_column("stage").to_list() == sorted(train.get_column("stage").to_list())
    bounds = train.group_by("stage").agg(
        pl.col("margin").min().alias("lo"), pl.col("margin").max().alias("hi")
    )
    bounds = bounds.sort("stage")
    lo, hi = bounds.get_column("lo").to_list(), bounds.get_column("hi").to_list()
    assert hi[0] == 8.0  # stage 0 holds the easiest pairs
    assert all(lo[s] >= hi[s + 1] for s in range(3))  # stages never overlap in margin
    first = train.filter(pl.col("stage") == 0).get_column("margin").to_list()
    assert first != sorted(first, reverse=True)  # shuffled within the stage
    again = plan_routes(uf, threshold=0.5, stages=4, seed=3).split()
    assert again.get_column("pair_id").to_list() == train.get_column("pair_id").to_list()


def test_stages_need_the_curriculum_order(uf):
    with pytest.raises(InputError, match="--stages"):
        plan_routes(uf, threshold=0.5, stages=3, order="random")
    with pytest.raises(InputError, match="at least 1"):
        plan_routes(uf, threshold=0.5, stages=0)


# --------------------------------------------------------------------------------------------------
# drops


def test_drop_predicates_count_by_reason_first_match_wins(uf):
    plan = plan_routes(
        uf, threshold=0.5, drop=["margin >= 7", "margin >= 6.5 OR chosen = rejected"]
    )
    reasons = plan.counts["dropped_by_reason"]
    assert reasons["drop: margin >= 7"] == 9 + 3 + 1
    assert reasons["drop: margin >= 6.5 OR chosen = rejected"] >= 17
    assert plan.counts["dropped"] == sum(reasons.values())
    train = plan.split()
    assert train.get_column("margin").max() == 6.0
    assert plan.counts["in"] == train.height + plan.counts["dropped"]


def test_drop_predicate_over_text_columns(uf):
    frame = uf.collect()
    short = frame.filter(pl.col("chosen").str.len_chars() < 50).height
    assert short > 0
    plan = plan_routes(uf, threshold=0.5, drop="length(chosen) < 50")
    assert plan.counts["dropped_by_reason"]["drop: length(chosen) < 50"] == short
    assert plan.split().get_column("chosen").str.len_chars().min() >= 50


@pytest.mark.parametrize(
    ("predicate", "duckdb_says"),
    [("margin <", "Parser Error"), ("no_such_column > 1", "Binder Error"), ("  ", "empty")],
)
def test_invalid_drop_predicate_is_one_line_with_duckdbs_message(uf, predicate, duckdb_says):
    with pytest.raises(InputError) as info:
        plan_routes(uf, threshold=0.5, drop=predicate)
    assert duckdb_says in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# held-out split


def test_eval_split_is_stratified_by_difficulty_and_seeded(uf):
    plan = plan_routes(uf, threshold=0.5, eval_fraction=0.1, seed=1)
    train, held = plan.split("train"), plan.split("eval")
    assert held.height == 100 and train.height == 895  # of the 995 pairs route keeps
    assert plan.counts["eval"] == 100 and plan.counts["dpo"] + plan.counts["sft"] == 895
    assert set(train.get_column("pair_id")).isdisjoint(held.get_column("pair_id"))
    assert held.get_column("rank").to_list() == list(range(100))
    decile = (pl.col("difficulty") * 10).floor().clip(0, 9).alias("decile")
    everyone = _distinct(uf).group_by(decile).len().rename({"len": "all"})
    picked = held.group_by(decile).len().rename({"len": "eval"})
    joined = everyone.join(picked, on="decile", how="left").fill_null(0)
    for row in joined.iter_rows(named=True):
        assert abs(row["eval"] - 0.1 * row["all"]) < 1, row  # each stratum gives its share
    assert held.filter(pl.col("route") == "sft").height == plan.counts["eval_sft"]
    assert plan.counts["eval_sft"] in (11, 12)
    same = plan_routes(uf, threshold=0.5, eval_fraction=0.1, seed=1).split("eval")
    other = plan_routes(uf, threshold=0.5, eval_fraction=0.1, seed=2).split("eval")
    assert same.get_column("pair_id").to_list() == held.get_column("pair_id").to_list()
    assert set(other.get_column("pair_id")) != set(held.get_column("pair_id"))


def test_every_mode_holds_out_the_same_pairs(uf):
    held = {
        mode: set(
            plan_routes(uf, mode=mode, threshold=0.5, eval_fraction=0.1).split("eval")["pair_id"]
        )
        for mode in ("mixdpo", "filter", "dpo", "sft")
    }
    assert held["mixdpo"] == held["filter"] == held["dpo"] == held["sft"]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_eval_fraction_out_of_range(uf, fraction):
    with pytest.raises(InputError, match="--eval-fraction"):
        plan_routes(uf, threshold=0.5, eval_fraction=fraction)


# --------------------------------------------------------------------------------------------------
# margins that are missing


def test_null_margins_are_dropped_when_a_threshold_routes(tmp_path):
    rows = [
        {
            "prompt": f"p{i}",
            "chosen": f"c{i}",
            "rejected": f"r{i}",
            "score_chosen": s,
            "score_rejected": 1,
        }
        for i, s in enumerate([5, 3, None, 1, None, 2])
    ]
    source = open_pairs(_write_jsonl(tmp_path / "gaps.jsonl", rows))
    plan = plan_routes(source, threshold=1.0)
    assert plan.counts["dropped_by_reason"]["null_margin"] == 2
    assert (plan.counts["dpo"], plan.counts["sft"]) == (3, 1)
    # no threshold: nothing is dropped; in curriculum order the nulls go last
    kept = plan_routes(source, mode="dpo", order="curriculum")
    train = kept.split()
    assert train.height == 6
    assert train.get_column("margin").tail(2).is_null().all()


def test_all_null_margins_say_how_to_get_margins(tmp_path):
    rows = [
        {
            "prompt": "p",
            "chosen": f"c{i}",
            "rejected": "r",
            "score_chosen": None,
            "score_rejected": None,
        }
        for i in range(3)
    ]
    rows[0]["score_chosen"] = None
    source = open_pairs(_write_jsonl(tmp_path / "empty_scores.jsonl", rows))
    with pytest.raises(InputError, match="prefcurate score"):
        plan_routes(source, threshold=0.5)


def test_no_margin_data(hh):
    source = open_pairs(hh)
    with pytest.raises(InputError, match="prefcurate score"):
        plan_routes(source, threshold=0.5)
    with pytest.raises(InputError, match="--order as-is"):
        plan_routes(source, mode="dpo", order="curriculum")
    plan = plan_routes(source, mode="dpo", order="as-is")
    assert plan.counts["dpo"] == 2308  # 4 of the 2312 distinct pairs have an empty chosen one
    shuffled = plan_routes(source, mode="dpo")  # DPO's default order, a shuffle, needs no margin
    assert shuffled.order.value == "random" and shuffled.counts["dpo"] == 2308


# --------------------------------------------------------------------------------------------------
# writing


def test_same_inputs_give_byte_identical_files(uf, tmp_path):
    plan_a = plan_routes(uf, threshold=0.5, eval_fraction=0.1, stages=3, seed=5)
    plan_b = plan_routes(uf, threshold=0.5, eval_fraction=0.1, stages=3, seed=5)
    write_route(plan_a, tmp_path / "a", export="trl")
    write_route(plan_b, tmp_path / "b", export="trl")
    for name in ("train.parquet", "eval.parquet", "plan.json", "dpo.jsonl", "sft.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_gather_windows_write_the_same_bytes_as_one_window(uf, tmp_path, monkeypatch):
    """Large inputs are gathered a window of ranks at a time; the bytes must not depend on it."""
    plan = plan_routes(uf, threshold=0.5, eval_fraction=0.1, stages=3, seed=5)
    write_route(plan, tmp_path / "whole")
    monkeypatch.setattr(splitwriter, "ROW_GROUP_ROWS", 100)
    write_route(
        plan_routes(uf, threshold=0.5, eval_fraction=0.1, stages=3, seed=5), tmp_path / "rg"
    )
    text = int(plan.keys.get_column("_bytes").sum())
    monkeypatch.setattr(texts, "GATHER_WINDOW_BYTES", text // 3)  # 3 windows of 300+ rows
    windowed = plan_routes(
        uf, threshold=0.5, eval_fraction=0.1, stages=3, seed=5, memory_budget=text
    )
    assert windowed.strategy == "two-pass" and not windowed.texts.whole
    write_route(windowed, tmp_path / "windows")
    for name in ("train.parquet", "eval.parquet"):
        assert (tmp_path / "rg" / name).read_bytes() == (tmp_path / "windows" / name).read_bytes()
    whole = pl.read_parquet(tmp_path / "whole" / "train.parquet")
    assert whole.equals(pl.read_parquet(tmp_path / "windows" / "train.parquet"))
    assert whole.height == 895 and whole.get_column("rank").to_list() == list(range(895))


def test_spilled_texts_write_the_bytes_of_a_second_read_and_are_removed(uf, tmp_path, monkeypatch):
    """Two passes, three gather windows: the texts spilled to $TMPDIR by the plan's pass give the
    same files as reading the input again, and the spill file goes with the plan."""
    import gc
    import tempfile

    from prefcurate.routing import plan as planning

    spill_dir = tmp_path / "tmp"
    spill_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    text = int(plan_routes(uf, threshold=0.5).keys.get_column("_bytes").sum())
    monkeypatch.setattr(texts, "GATHER_WINDOW_BYTES", text // 3)
    args = {"threshold": 0.5, "eval_fraction": 0.1, "stages": 3, "seed": 5, "memory_budget": 0}
    spilled = plan_routes(uf, **args)
    assert spilled.strategy == "two-pass" and not spilled.texts.whole
    assert [f.suffix for f in spill_dir.iterdir()] == [".arrow"]  # the texts, uncompressed
    write_route(spilled, tmp_path / "spilled")
    del spilled
    gc.collect()
    assert list(spill_dir.iterdir()) == []
    monkeypatch.setattr(planning, "_spill_for", lambda estimate: None)  # read the input again
    again = plan_routes(uf, **args)
    assert again.texts.spilled is None and not list(spill_dir.iterdir())
    write_route(again, tmp_path / "again")
    for name in ("train.parquet", "eval.parquet", "plan.json"):
        spilled_bytes = (tmp_path / "spilled" / name).read_bytes()
        assert spilled_bytes == (tmp_path / "again" / name).read_bytes(), name


@pytest.mark.parametrize("conversational", [False, True])
def test_one_pass_and_two_pass_write_the_same_bytes(uf1k, tmp_path, monkeypatch, conversational):
    """An input that fits the memory budget is read once, a larger one twice: same files."""
    monkeypatch.setattr(splitwriter, "ROW_GROUP_ROWS", 128)  # several row groups and windows
    data = uf1k
    if conversational:
        rows = [json.loads(line) for line in uf1k.read_text(encoding="utf-8").splitlines()[:400]]
        for r in rows:
            prompt = [{"role": "user", "content": r["prompt"]}]
            for side in ("chosen", "rejected"):
                r[side] = [*prompt, {"role": "assistant", "content": r[side]}]
        data = _write_jsonl(tmp_path / "chat.jsonl", rows)
    files = {}
    for budget, strategy, whole in (("100GB", "one-pass", True), (0, "two-pass", False)):
        plan = plan_routes(
            open_pairs(data), threshold=0.5, eval_fraction=0.1, stages=2, memory_budget=budget
        )
        assert (plan.strategy, plan.texts.whole) == (strategy, whole)
        write_route(plan, tmp_path / strategy, export="trl")
        files[strategy] = {
            f.name: f.read_bytes() for f in sorted((tmp_path / strategy).iterdir()) if f.is_file()
        }
    assert files["one-pass"].keys() == files["two-pass"].keys() >= {"train.parquet", "eval.parquet"}
    for name, content in files["one-pass"].items():
        assert content == files["two-pass"][name], name
    train = pl.read_parquet(tmp_path / "one-pass" / "train.parquet")
    assert train.columns == list(SPLIT_COLUMNS)
    assert train.get_column("rank").to_list() == list(range(train.height))
    assert pq.ParquetFile(tmp_path / "one-pass" / "train.parquet").metadata.num_row_groups > 2


def test_memory_budget_sizes():
    from prefcurate.base.sizes import default_budget, parse_size

    assert parse_size("4GB") == 4_000_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5g") == 1_500_000_000
    assert parse_size("0") == 0 and parse_size(123) == 123
    for bad in ("", "2x", "-1GB", "GB"):
        with pytest.raises(InputError, match="--text-memory"):
            parse_size(bad)
    assert default_budget() > 0


def test_the_budget_bounds_the_one_pass_peak_not_the_input(uf1k):
    """One pass holds about 1.4× the input: an input that fits the budget, but whose one pass
    does not, takes two passes and is never held whole."""
    from prefcurate.base.sizes import DEFAULT_RAM_SHARE, ONE_PASS_PEAK, default_budget

    estimate = estimate_input_bytes([uf1k], "jsonl")
    assert estimate == uf1k.stat().st_size
    for budget, strategy in (
        (estimate, "two-pass"),
        (math.ceil(estimate * ONE_PASS_PEAK) - 1, "two-pass"),
        (math.ceil(estimate * ONE_PASS_PEAK), "one-pass"),
    ):
        plan = plan_routes(open_pairs(uf1k), threshold=0.5, memory_budget=budget)
        assert plan.strategy == strategy
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_budget() == int(ram * DEFAULT_RAM_SHARE) and DEFAULT_RAM_SHARE == 0.125


def test_memory_budget_estimate_reads_parquet_metadata(uf1k, tmp_path):
    from prefcurate.base.sizes import estimate_input_bytes

    frame = pl.read_ndjson(uf1k)
    frame.write_parquet(tmp_path / "uf.parquet", compression="zstd")
    on_disk = (tmp_path / "uf.parquet").stat().st_size
    estimate = estimate_input_bytes([tmp_path / "uf.parquet"], "parquet")
    assert estimate > on_disk  # uncompressed, not the file size
    text = sum(frame.get_column(c).str.len_bytes().sum() for c in ("prompt", "chosen", "rejected"))
    assert text <= estimate <= 3 * text
    assert estimate_input_bytes([uf1k], "jsonl") == uf1k.stat().st_size


def test_split_file_schema_and_row_groups(uf, tmp_path, monkeypatch):
    monkeypatch.setattr(splitwriter, "ROW_GROUP_ROWS", 300)
    plan = plan_routes(uf, threshold=0.5)
    document = write_route(plan, tmp_path / "out")
    meta = pq.ParquetFile(tmp_path / "out" / "train.parquet").metadata
    assert meta.num_row_groups == 4 and meta.num_rows == 995
    train = pl.read_parquet(tmp_path / "out" / "train.parquet")
    assert train.columns == list(SPLIT_COLUMNS)
    assert train.schema["route"] == pl.String
    assert train.schema["rank"] == pl.Int64
    assert train.schema["stage"] == pl.Int32
    assert train.get_column("rank").to_list() == list(range(995))  # rows in rank order
    assert train.equals(plan.split())
    on_disk = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert on_disk == document
    assert document["outputs"] == {"train": "train.parquet", "eval": None}


def test_plan_json_has_the_core_keys(uf, tmp_path):
    document = write_route(plan_routes(uf, sft_fraction=0.12, eval_fraction=0.05), tmp_path / "o")
    for key in (
        "version", "input", "mode", "threshold", "sft_fraction", "order", "stages", "seed",
        "counts", "outputs",
    ):  # fmt: skip
        assert key in document, key
    assert set(document["input"]) >= {"path", "sha256", "rows"}
    assert document["input"]["rows"] == 1000 and len(document["input"]["sha256"]) == 64
    assert set(document["counts"]) >= {"in", "dpo", "sft", "dropped", "dropped_by_reason"}
    assert document["threshold"] == 0.5 and document["sft_fraction"] == 0.12
    assert document["outputs"]["eval"] == "eval.parquet"
    assert pl.read_parquet(tmp_path / "o" / "eval.parquet").height == 50


def test_existing_directory_needs_force(uf, tmp_path):
    out = tmp_path / "o"
    write_route(plan_routes(uf, threshold=0.5), out)
    with pytest.raises(InputError, match="--force"):
        write_route(plan_routes(uf, threshold=1.0), out)
    assert json.loads((out / "plan.json").read_text())["threshold"] == 0.5
    write_route(plan_routes(uf, threshold=1.0), out, force=True)
    assert json.loads((out / "plan.json").read_text())["threshold"] == 1.0


def test_plots_are_written_into_the_split_directory_only_when_asked(uf, tmp_path):
    write_route(plan_routes(uf, threshold=0.5), tmp_path / "bare")
    bare = sorted(p.name for p in (tmp_path / "bare").iterdir())
    assert bare == sorted([MANIFEST, "plan.json", "train.parquet"])
    route_dir(plan_routes(uf, threshold=0.5), tmp_path / "o", plots=True)
    written = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"margin_hist.png", "margin_cdf.png", "lengths.png"} <= written
    assert (tmp_path / "o" / "margin_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
