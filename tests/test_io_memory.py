"""Data in from Python: open_pairs on DataFrames and datasets, and distilabel's raw layout."""

from __future__ import annotations

import json

import polars as pl
import pytest

from prefcurate.base.errors import InputError
from prefcurate.data.io import open_pairs
from prefcurate.data.schema import Layout
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.writer import write_route


@pytest.fixture
def uf_frame(uf1k) -> pl.DataFrame:
    return pl.DataFrame([json.loads(line) for line in uf1k.read_text().splitlines()])


def test_dataframes_and_datasets_give_the_same_pairs_as_the_file(uf1k, uf_frame):
    """Polars (eager and lazy), pandas and datasets.Dataset: the same 1000 canonical pairs as
    reading the JSONL file, margins included (sum 1897 over UltraFeedback 1k)."""
    datasets = pytest.importorskip("datasets")
    want = open_pairs(uf1k).collect()
    assert want["margin"].sum() == 1897.0
    inputs = {
        "polars DataFrame": uf_frame,
        "polars LazyFrame": uf_frame.lazy(),
        "pandas DataFrame": uf_frame.to_pandas(),
        "datasets Dataset": datasets.Dataset.from_polars(uf_frame),
    }
    for kind, data in inputs.items():
        source = open_pairs(data)
        got = source.collect()
        assert source.raw.display == f"a {kind} of 1000 rows"
        assert source.layout is Layout.STANDARD
        assert got["pair_id"].to_list() == want["pair_id"].to_list(), kind
        assert got["margin"].to_list() == want["margin"].to_list(), kind


def test_a_dataframe_routes_with_a_content_digest(uf_frame, tmp_path):
    """plan.json names an in-memory input and fingerprints its rows: the same frame gives the
    same sha256, a changed row another."""
    docs = []
    for name, frame in (
        ("a", uf_frame),
        ("b", uf_frame),
        ("c", uf_frame.with_columns(pl.col("prompt").str.replace("^", "x"))),
    ):
        docs.append(write_route(plan_routes(open_pairs(frame), threshold=0.5), tmp_path / name))
    assert docs[0]["input"]["path"] == "a polars DataFrame of 1000 rows"
    assert docs[0]["counts"]["sft"] == 110  # the 111 ties less the identical pair route drops
    assert docs[0]["input"]["sha256"] == docs[1]["input"]["sha256"]
    assert docs[0]["input"]["sha256"] != docs[2]["input"]["sha256"]
    assert len(docs[0]["input"]["sha256"]) == 64


def test_an_object_that_is_not_data_is_one_clear_error():
    with pytest.raises(InputError, match="cannot read pairs from a builtins dict"):
        open_pairs({"prompt": ["p"]})


def test_distilabel_raw_layout_is_multi_completion():
    """distilabel's UltraFeedback output: instruction, generations, ratings (a failed rating is
    null): best vs worst rated generation, nulls skipped."""
    frame = pl.DataFrame(
        {
            "instruction": ["name a colour", "2+2?"],
            "generations": [["red", "sky", "blue"], ["4", "5"]],
            "ratings": [[5, 1, None], [4, 4]],
            "model_names": [["a", "b", "c"], ["a", "b"]],
        }
    )
    source = open_pairs(frame)
    pairs = source.collect()
    assert source.layout is Layout.MULTI_COMPLETION
    assert source.detected.completions == "generations"
    assert pairs.select("prompt", "chosen", "rejected", "margin").rows() == [
        ("name a colour", "red", "sky", 4.0),
        ("2+2?", "4", "5", 0.0),
    ]
