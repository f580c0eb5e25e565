"""Property tests: round trips through the loader, and the invariants every routing plan keeps."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from prefcurate.data.io import PAIR_COLUMNS, open_pairs, read_pairs
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.writer import write_route

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that exercises the loader: any Unicode but surrogates and NUL, empty strings included.
texts = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40
)
ratings = st.one_of(st.none(), st.integers(2, 20).map(lambda x: x / 2))
pair_rows = st.lists(
    st.fixed_dictionaries(
        {
            "prompt": texts,
            "chosen": texts,
            "rejected": texts,
            "score_chosen": ratings,
            "score_rejected": ratings,
        }
    ),
    min_size=1,
    max_size=30,
)
rated_rows = st.lists(
    st.fixed_dictionaries(
        {
            "prompt": texts,
            "chosen": texts,
            "rejected": texts,
            "score_chosen": st.integers(2, 20).map(lambda x: x / 2),
            "score_rejected": st.integers(2, 20).map(lambda x: x / 2),
        }
    ),
    min_size=2,
    max_size=40,
)


def _blank(text: str) -> bool:
    """Empty or only whitespace, as Polars' strip_chars reads it (Unicode White_Space, which,
    unlike Python's isspace, leaves the separators \x1c-\x1f)."""
    return all(c.isspace() and c not in "\x1c\x1d\x1e\x1f" for c in text)


def _routable(row: dict) -> bool:
    """Route keeps a pair whose responses differ and whose chosen one is written, in any mode."""
    return row["chosen"] != row["rejected"] and not _blank(row["chosen"])


def _write(rows: list[dict], folder: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        path = folder / "pairs.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        path = folder / "pairs.parquet"
        schema = {"score_chosen": pl.Float64, "score_rejected": pl.Float64}
        pl.DataFrame(rows, schema_overrides=schema).write_parquet(path)
    return path


@SETTINGS
@given(rows=pair_rows, fmt=st.sampled_from(["jsonl", "parquet"]))
def test_write_then_read_round_trips(rows, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        df = read_pairs(_write(rows, Path(tmp), fmt))
    assert df.columns == list(PAIR_COLUMNS)
    assert df.select("prompt", "chosen", "rejected", "score_chosen", "score_rejected").rows() == [
        (r["prompt"], r["chosen"], r["rejected"], r["score_chosen"], r["score_rejected"])
        for r in rows
    ]
    for row, margin in zip(rows, df["margin"], strict=True):
        if row["score_chosen"] is None or row["score_rejected"] is None:
            assert margin is None
        else:
            assert margin == row["score_chosen"] - row["score_rejected"]
    difficulty = df["difficulty"].drop_nulls()
    assert difficulty.is_between(0.0, 1.0).all()
    assert difficulty.len() == df["margin"].drop_nulls().len()
    # equal texts, equal ids; different texts, different ids
    keys = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    assert df["pair_id"].n_unique() == len(set(keys))


@SETTINGS
@given(rows=rated_rows)
def test_a_routed_split_reads_back_as_the_same_pairs(rows):
    """train.parquet is itself preference data: loading it gives back the pairs and margins.

    (Route drops pairs with chosen = rejected or an empty chosen one; difficulty, a percentile over
    the input's margins, is then compared only when none was dropped.)
    """
    kept = [r for r in rows if _routable(r)]
    assume(kept)
    with tempfile.TemporaryDirectory() as tmp:
        source = open_pairs(_write(rows, Path(tmp), "jsonl"))
        write_route(plan_routes(source, threshold=1.0), Path(tmp) / "split")
        again = read_pairs(Path(tmp) / "split" / "train.parquet")
        loaded = source.collect()
        routable = pl.Series([_routable(r) for r in loaded.iter_rows(named=True)])
        original = loaded.filter(routable)
    columns = ["pair_id", "prompt", "chosen", "rejected", "margin"]
    columns += ["difficulty"] if len(kept) == len(rows) else []
    assert (
        again.select(columns)
        .sort("pair_id", "margin")
        .equals(original.select(columns).sort("pair_id", "margin"))
    )


@SETTINGS
@given(rows=rated_rows, low=st.integers(0, 8), step=st.integers(0, 8))
def test_routing_invariants(rows, low, step):
    tau_low, tau_high = low / 2, (low + step) / 2
    # route drops identical responses and empty ones, whatever the mode
    n = sum(_routable(r) for r in rows)  # route drops the rest, whatever the mode
    assume(n > 0)
    with tempfile.TemporaryDirectory() as tmp:
        source = open_pairs(_write(rows, Path(tmp), "parquet"))
        lower = plan_routes(source, threshold=tau_low)
        higher = plan_routes(source, threshold=tau_high)
    for plan, tau in ((lower, tau_low), (higher, tau_high)):
        train = plan.split()
        # every pair once; counts add up; rank is a permutation in curriculum order
        assert train.height == n == plan.counts["dpo"] + plan.counts["sft"]
        assert plan.counts["in"] == len(rows)
        reasons = plan.counts["dropped_by_reason"]
        assert plan.counts["dropped"] == reasons["identical"] + reasons["empty_chosen"]
        assert plan.counts["dropped"] == len(rows) - n
        assert sorted(train["rank"].to_list()) == list(range(n))
        assert train["rank"].to_list() == list(range(n))  # rows are written in rank order
        margins = train["margin"].to_list()
        assert all(a >= b for a, b in zip(margins, margins[1:], strict=False))
        assert ((train["route"] == "sft") == (train["margin"] < tau)).all()
        assert train["difficulty"].is_between(0.0, 1.0).all()
        sft_ranks = train.filter(pl.col("route") == "sft")["rank"]
        dpo_ranks = train.filter(pl.col("route") == "dpo")["rank"]
        if sft_ranks.len() and dpo_ranks.len():
            assert dpo_ranks.max() < sft_ranks.min()  # the sft pairs come last
    # raising τ never moves a pair from sft to dpo
    low_routes = dict(zip(lower.split()["pair_id"], lower.split()["route"], strict=True))
    high_routes = dict(zip(higher.split()["pair_id"], higher.split()["route"], strict=True))
    assert all(high_routes[p] == "sft" for p, r in low_routes.items() if r == "sft")


@SETTINGS
@given(rows=rated_rows, fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_sft_fraction_and_random_order_invariants(rows, fraction, seed):
    # route drops identical responses and empty ones, whatever the mode
    n = sum(_routable(r) for r in rows)  # route drops the rest, whatever the mode
    assume(n > 0)
    with tempfile.TemporaryDirectory() as tmp:
        source = open_pairs(_write(rows, Path(tmp), "jsonl"))
        plan = plan_routes(source, sft_fraction=fraction, order="random", seed=seed)
    train = plan.split()
    # τ is a margin in the data (or just above the largest), and margin < τ is exactly the sft set
    assert ((train["route"] == "sft") == (train["margin"] < plan.threshold)).all()
    # the routed share is the closest achievable to q·n without splitting equal margins
    margins = sorted(train["margin"].to_list())
    achievable = {sum(m < t for m in margins) for t in [*margins, float("inf")]}
    best = min(abs(a - fraction * n) for a in achievable)
    assert abs(plan.counts["sft"] - fraction * n) == best
    assert sorted(train["rank"].to_list()) == list(range(n))
