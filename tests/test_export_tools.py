"""--export trl-mixdpo, llamafactory and openrlhf on the real UltraFeedback 1k, both layouts.

LLaMA-Factory is not installed in the test environment (its package pins its own torch and TRL),
so its files are checked field by field against its documented schema (data/README.md of
hiyouga/LLaMA-Factory: the alpaca and sharegpt formats, ``ranking: true`` for preference data,
the OpenAI-style tags) and against the rules its sharegpt converter applies before it skips a
row: roles alternate user/assistant after an optional system message, a preference prompt ends
with the user, chosen and rejected are single assistant messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from prefcurate.base.errors import InputError
from prefcurate.data.io import open_pairs
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.writer import write_route

OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def conversational_copy(source: Path, target: Path) -> Path:
    """The same pairs in TRL's conversational layout (prompt/chosen/rejected message lists)."""
    with source.open(encoding="utf-8") as rows, target.open("w", encoding="utf-8") as out:
        for line in rows:
            r = json.loads(line)
            out.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": r["prompt"]}],
                        "chosen": [{"role": "assistant", "content": r["chosen"]}],
                        "rejected": [{"role": "assistant", "content": r["rejected"]}],
                        "score_chosen": r["metadata"]["score_chosen"],
                        "score_rejected": r["metadata"]["score_rejected"],
                    }
                )
                + "\n"
            )
    return target


@pytest.fixture(params=["standard", "conversational"])
def uf_data(request, uf1k, tmp_path) -> tuple[str, Path]:
    if request.param == "standard":
        return request.param, uf1k
    return request.param, conversational_copy(uf1k, tmp_path / "uf_chat.jsonl")


def route(data: Path, out: Path, export: str) -> pl.DataFrame:
    write_route(plan_routes(open_pairs(data), threshold=0.5), out, export=export)
    return pl.read_parquet(out / "train.parquet").sort("rank")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- LLaMA-Factory


def read_like_llamafactory(row: dict, entry: dict) -> tuple[list[dict], list[dict]]:
    """The documented reading of one row: (prompt messages, response messages); fails where
    LLaMA-Factory would skip the row or not find a column."""
    columns, ranking = entry["columns"], entry.get("ranking", False)
    if entry.get("formatting", "alpaca") == "alpaca":
        assert set(row) == set(columns.values())
        query = [row[columns["prompt"]], row[columns["query"]]]
        prompt = [{"role": "user", "content": "\n".join(q for q in query if q)}]
        if ranking:
            chosen, rejected = row[columns["chosen"]], row[columns["rejected"]]
            assert isinstance(chosen, str) and isinstance(rejected, str)
            return prompt, [{"role": "assistant", "content": c} for c in (chosen, rejected)]
        assert isinstance(row[columns["response"]], str)
        return prompt, [{"role": "assistant", "content": row[columns["response"]]}]
    tags = entry["tags"]
    assert tags == OPENAI_TAGS
    assert set(row) == set(columns.values())
    messages = row[columns["messages"]]
    if messages and messages[0]["role"] == "system":
        messages = messages[1:]
    for i, message in enumerate(messages):  # odd turns user, even turns assistant
        assert set(message) == {"role", "content"}
        assert message["role"] == ("user" if i % 2 == 0 else "assistant")
    if ranking:
        assert len(messages) % 2 == 1  # a preference prompt ends with the user
        responses = [row[columns["chosen"]], row[columns["rejected"]]]
        for response in responses:
            assert isinstance(response, dict) and response["role"] == "assistant"
        return messages, responses
    assert len(messages) % 2 == 0 and messages
    return messages[:-1], messages[-1:]


def test_llamafactory_export_reads_as_documented(uf_data, tmp_path):
    """UltraFeedback 1k at τ = 0.5: 886 dpo pairs in mixdpo_dpo, the 110 ties (less the
    identical one) in mixdpo_sft,
    each in curriculum order, every row read the documented way with nothing skipped."""
    layout, data = uf_data
    out = tmp_path / "uf"
    train = route(data, out, "llamafactory")
    folder = out / "llamafactory"
    info = json.loads((folder / "dataset_info.json").read_text())
    assert sorted(info) == ["mixdpo_dpo", "mixdpo_sft"]
    dpo_entry, sft_entry = info["mixdpo_dpo"], info["mixdpo_sft"]
    assert dpo_entry["ranking"] is True and "ranking" not in sft_entry
    if layout == "standard":
        assert "formatting" not in dpo_entry  # alpaca is the default
        assert dpo_entry["columns"] == {
            "prompt": "instruction",
            "query": "input",
            "chosen": "chosen",
            "rejected": "rejected",
        }
        assert sft_entry["columns"] == {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
        }
    else:
        assert dpo_entry["formatting"] == sft_entry["formatting"] == "sharegpt"
        assert dpo_entry["columns"] == {
            "messages": "messages",
            "chosen": "chosen",
            "rejected": "rejected",
        }
        assert sft_entry["columns"] == {"messages": "messages"}

    dpo_rows = jsonl(folder / dpo_entry["file_name"])
    sft_rows = jsonl(folder / sft_entry["file_name"])
    assert (len(dpo_rows), len(sft_rows)) == (886, 110)  # route drops the 4 identical pairs
    want = {r: train.filter(pl.col("route") == r) for r in ("dpo", "sft")}
    for rows, entry, route_name in ((dpo_rows, dpo_entry, "dpo"), (sft_rows, sft_entry, "sft")):
        expected = want[route_name]
        for row, pair in zip(rows, expected.iter_rows(named=True), strict=True):
            prompt, responses = read_like_llamafactory(row, entry)
            text = pair["prompt"] if layout == "standard" else pair["prompt"][0]["content"]
            assert prompt == [{"role": "user", "content": text}]  # same pair, rank order
            chosen = pair["chosen"] if layout == "standard" else pair["chosen"][0]["content"]
            assert responses[0]["content"] == chosen
            if route_name == "dpo":
                rejected = pair["rejected"]
                rejected = rejected if layout == "standard" else rejected[0]["content"]
                assert responses[1]["content"] == rejected
    readme = (folder / "README.md").read_text()
    assert "--stage dpo" in readme and "--dataset mixdpo_sft" in readme
    assert "--disable_shuffling true" in readme and "cannot route per pair" in readme


def test_llamafactory_refuses_a_conversation_it_would_skip(tmp_path):
    """Two user turns in a row: LLaMA-Factory would drop the pair with a warning; the export
    names the pair and writes nothing."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}, {"role": "user", "content": "and?"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        }
        for i in range(3)
    ]
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="cannot be read by LLaMA-Factory.*do not alternate"):
        write_route(plan_routes(open_pairs(data), threshold=0.5), out, export="llamafactory")
    assert not out.exists()


# --------------------------------------------------------------------------- OpenRLHF


def test_openrlhf_export_keeps_the_margin_under_default_keys(uf_data, tmp_path):
    layout, data = uf_data
    out = tmp_path / "uf"
    train = route(data, out, "openrlhf")
    folder = out / "openrlhf"
    dpo, sft = jsonl(folder / "dpo.jsonl"), jsonl(folder / "sft.jsonl")
    assert (len(dpo), len(sft)) == (886, 110)  # route drops the 4 identical pairs
    assert list(dpo[0]) == ["prompt", "chosen", "rejected", "margin"]
    assert list(sft[0]) == ["input", "output", "margin"]
    want_dpo = train.filter(pl.col("route") == "dpo")
    want_sft = train.filter(pl.col("route") == "sft")
    assert [r["margin"] for r in dpo] == want_dpo["margin"].to_list()  # largest first
    assert [r["margin"] for r in sft] == [0.0] * 110  # the ties
    assert [r["prompt"] for r in dpo] == want_dpo["prompt"].to_list()
    assert [r["rejected"] for r in dpo] == want_dpo["rejected"].to_list()
    assert [r["output"] for r in sft] == want_sft["chosen"].to_list()
    if layout == "conversational":  # message lists, for --apply_chat_template
        assert dpo[0]["prompt"][0]["role"] == "user"
        assert dpo[0]["chosen"] == [
            {"role": "assistant", "content": want_dpo["chosen"][0][0]["content"]}
        ]
    readme = (folder / "README.md").read_text()
    assert "--prompt_key prompt --chosen_key chosen --rejected_key rejected" in readme
    assert "--input_key input --output_key output" in readme
    assert ("--apply_chat_template" in readme) == (layout == "conversational")


# --------------------------------------------------------------------------- trl-mixdpo


def test_trl_mixdpo_export_is_every_pair_with_route_and_rank(uf1k, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "uf"
    train = route(uf1k, out, "trl-mixdpo")
    pairs = datasets.load_dataset(
        "json",
        data_files=str(out / "mixdpo.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert pairs.column_names == [
        "pair_id",
        "prompt",
        "chosen",
        "rejected",
        "margin",
        "route",
        "rank",
    ]
    assert pairs["rank"] == list(range(996))  # 1000 pairs less the 4 identical ones
    assert pairs["pair_id"] == train["pair_id"].to_list()
    assert pairs["route"].count("sft") == 110 and pairs["route"][-110:] == ["sft"] * 110
    plan = json.loads((out / "plan.json").read_text())
    assert plan["outputs"]["trl-mixdpo"] == {"mixdpo": "mixdpo.jsonl"}


def test_unknown_export_is_exit_2_and_writes_nothing(cli, uf1k, tmp_path):
    out = tmp_path / "out"
    result = cli("route", uf1k, "--threshold", "0.5", "--out", out, "--export", "axolotl")
    assert result.code == 2
    assert "--export must be one of trl, trl-mixdpo, llamafactory, openrlhf" in result.err
    assert not out.exists()
