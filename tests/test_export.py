"""The TRL export: dpo.jsonl / sft.jsonl load with `datasets` in the layouts TRL's trainers take."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from prefcurate.base.errors import InputError
from prefcurate.data.io import open_pairs
from prefcurate.routing.exports.trl import export_trl
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.writer import write_route

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _load(path: Path, tmp_path: Path):
    return datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache")
    )


def test_standard_export_loads_with_datasets_in_rank_order(uf1k, tmp_path):
    out = tmp_path / "uf"
    write_route(plan_routes(open_pairs(uf1k), threshold=0.5), out, export="trl")
    train = pl.read_parquet(out / "train.parquet")
    dpo, sft = _load(out / "dpo.jsonl", tmp_path), _load(out / "sft.jsonl", tmp_path)

    assert dpo.column_names == ["prompt", "chosen", "rejected"]
    assert sft.column_names == ["prompt", "completion"]
    assert (dpo.num_rows, sft.num_rows) == (885, 110)  # no identical pair, no empty chosen one
    want_dpo = train.filter(pl.col("route") == "dpo").sort("rank")
    want_sft = train.filter(pl.col("route") == "sft").sort("rank")
    assert dpo["prompt"] == want_dpo["prompt"].to_list()  # curriculum order, largest margin first
    assert dpo["chosen"] == want_dpo["chosen"].to_list()
    assert dpo["rejected"] == want_dpo["rejected"].to_list()
    assert sft["prompt"] == want_sft["prompt"].to_list()
    assert sft["completion"] == want_sft["chosen"].to_list()  # SFT on the chosen response
    assert dpo.features["prompt"].dtype == "string"


def _conversation(i: int, prompt: str, good: str, bad: str) -> dict:
    user = {"role": "user", "content": prompt}
    return {
        "prompt": prompt,
        "chosen": [user, {"role": "assistant", "content": good}],
        "rejected": [user, {"role": "assistant", "content": bad}],
        "score_chosen": 8.0 - i,
        "score_rejected": 4.0,
    }


def test_conversational_data_stays_conversational(tmp_path):
    """UltraFeedback-binarized style: the responses repeat the user turn as history."""
    rows = [_conversation(i, f"question {i}?", f"answer {i}", f"bad {i}") for i in range(6)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "chat"
    # margins 4, 3, 2, 1, 0, -1: with τ = 1.5 the last three go to SFT
    write_route(plan_routes(open_pairs(data), threshold=1.5), out, export="trl")
    dpo, sft = _load(out / "dpo.jsonl", tmp_path), _load(out / "sft.jsonl", tmp_path)

    assert dpo.column_names == ["prompt", "chosen", "rejected"]
    assert [p[0]["content"] for p in dpo["prompt"]] == ["question 0?", "question 1?", "question 2?"]
    assert dpo[0]["prompt"] == [{"role": "user", "content": "question 0?"}]
    assert dpo[0]["chosen"] == [{"role": "assistant", "content": "answer 0"}]
    assert dpo[0]["rejected"] == [{"role": "assistant", "content": "bad 0"}]
    assert sft.column_names == ["prompt", "completion"]
    assert sft[0]["prompt"] == [{"role": "user", "content": "question 3?"}]
    assert sft["completion"] == [
        [{"role": "assistant", "content": f"answer {i}"}] for i in (3, 4, 5)
    ]


def test_implicit_prompt_transcripts_export_as_strings(hh, tmp_path):
    out = tmp_path / "hh"
    write_route(plan_routes(open_pairs(hh), mode="dpo", order="as-is"), out, export="trl")
    first = json.loads((out / "dpo.jsonl").open(encoding="utf-8").readline())
    assert list(first) == ["prompt", "chosen", "rejected"]
    assert first["prompt"].startswith("\n\nHuman:") and first["prompt"].endswith("Assistant:")
    assert "Human:" not in first["chosen"]
    assert (out / "sft.jsonl").read_bytes() == b""  # no pair took the SFT route


def test_the_eval_split_is_exported_beside_the_train_files(uf1k, tmp_path):
    """--eval-fraction 0.1: dpo_eval.jsonl, sft_eval.jsonl and mixdpo_eval.jsonl hold exactly the
    held-out pairs of eval.parquet, in its rank order, in the train files' formats; plan.json
    names every file."""
    out = tmp_path / "uf"
    plan = plan_routes(open_pairs(uf1k), threshold=0.5, eval_fraction=0.1)
    document = write_route(plan, out, export=["trl", "trl-mixdpo"])
    held = pl.read_parquet(out / "eval.parquet").sort("rank")
    dpo, sft = _load(out / "dpo_eval.jsonl", tmp_path), _load(out / "sft_eval.jsonl", tmp_path)
    mixdpo = _load(out / "mixdpo_eval.jsonl", tmp_path)
    assert (dpo.num_rows, sft.num_rows, mixdpo.num_rows) == (89, 11, 100)
    assert (plan.counts["eval_dpo"], plan.counts["eval_sft"]) == (89, 11)
    want_dpo = held.filter(pl.col("route") == "dpo")
    assert dpo["prompt"] == want_dpo["prompt"].to_list()
    assert dpo["rejected"] == want_dpo["rejected"].to_list()
    assert sft["completion"] == held.filter(pl.col("route") == "sft")["chosen"].to_list()
    assert mixdpo["pair_id"] == held["pair_id"].to_list()
    assert mixdpo["rank"] == list(range(100))
    train_ids = set(pl.read_parquet(out / "train.parquet")["pair_id"])
    assert train_ids.isdisjoint(mixdpo["pair_id"])
    assert document["outputs"]["trl"] == {
        "dpo": "dpo.jsonl",
        "sft": "sft.jsonl",
        "dpo_eval": "dpo_eval.jsonl",
        "sft_eval": "sft_eval.jsonl",
    }
    assert document["outputs"]["trl-mixdpo"] == {
        "mixdpo": "mixdpo.jsonl",
        "mixdpo_eval": "mixdpo_eval.jsonl",
    }


def test_a_split_without_eval_pairs_gets_no_eval_files(uf1k, tmp_path):
    out = tmp_path / "uf"
    write_route(plan_routes(open_pairs(uf1k), threshold=0.5), out, export="trl,trl-mixdpo")
    assert not list(out.glob("*_eval.jsonl"))


def test_export_from_an_existing_split_is_deterministic(uf1k, tmp_path):
    out = tmp_path / "uf"
    write_route(plan_routes(open_pairs(uf1k), threshold=1.0, stages=2), out)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = export_trl(out / "train.parquet", tmp_path / "a")
    b = export_trl(out / "train.parquet", tmp_path / "b")
    assert a["dpo"].read_bytes() == b["dpo"].read_bytes()
    assert a["sft"].read_bytes() == b["sft"].read_bytes()
    assert sum(1 for _ in a["sft"].open()) == 110 + 192  # margin < 1, chosen ≠ rejected


def test_export_refuses_a_file_that_is_not_a_split(tmp_path):
    plain = tmp_path / "plain.parquet"
    pl.DataFrame({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]}).write_parquet(plain)
    with pytest.raises(InputError, match="not a routed split: no 'route', 'rank' column"):
        export_trl(plain, tmp_path)
