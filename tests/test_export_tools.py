"""--export trl-mixdpo, llamafactory and openrlhf on real data: UltraFeedback 1k in both
layouts, HH-RLHF's implicit-prompt transcripts, with an eval split.

Neither LLaMA-Factory nor OpenRLHF is installed in the test environment (each pins its own torch,
TRL, DeepSpeed), so their reading is restated here from their source, by reading it:

* LLaMA-Factory (hiyouga/LLaMA-Factory, src/llamafactory/data/converter.py and data/README.md):
  the alpaca and sharegpt formats, ``ranking: true`` for preference data, the OpenAI-style tags,
  and the rules its sharegpt converter applies before it skips a row: roles alternate
  user/assistant after an optional system message, a preference prompt ends with the user,
  chosen and rejected are single assistant messages.
* OpenRLHF 0.11 (openrlhf/datasets/reward_dataset.py: ``preprocess_data`` with
  ``--data.apply_chat_template`` and ``RewardDataset.__getitem__``; openrlhf/datasets/
  sft_dataset.py): the prompt is the chat template of the prompt messages with the generation
  prompt, a response is what the template renders after it for prompt + response, the training
  text is their concatenation ending in the tokenizer's EOS; SFT drops a row whose prompt or
  response renders empty. :func:`openrlhf_dpo_row` and :func:`openrlhf_sft_row` build a row that
  way with a real transformers tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from prefcurate.base.errors import InputError
from prefcurate.data.io import open_pairs
from prefcurate.routing.exports.openrlhf import PLAIN_TEMPLATE, TEMPLATE_FILE
from prefcurate.routing.plan import plan_routes
from prefcurate.routing.presets import PAPER
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


def route(data: Path, out: Path, export: str) -> dict[str, pl.DataFrame]:
    """UltraFeedback at τ = 0.5 with 10% held out: the train and eval splits, in rank order."""
    write_route(plan_routes(open_pairs(data), threshold=0.5, eval_fraction=0.1), out, export=export)
    return {s: pl.read_parquet(out / f"{s}.parquet").sort("rank") for s in ("train", "eval")}


#: (rows of dpo, sft, dpo_eval, sft_eval) at τ = 0.5 with 10% held out: 995 pairs (1000 less 4
#: identical and 1 with an empty chosen response), 100 held out, 110 ties (less the identical
#: one) → sft.
ROWS = {"dpo": 796, "sft": 99, "dpo_eval": 89, "sft_eval": 11}


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
    """UltraFeedback 1k at τ = 0.5, 10% held out: the dpo and sft pairs of each split in its
    dataset, each in curriculum order, every row read the documented way with nothing skipped."""
    layout, data = uf_data
    out = tmp_path / "uf"
    splits = route(data, out, "llamafactory")
    folder = out / "llamafactory"
    info = json.loads((folder / "dataset_info.json").read_text())
    names = {"dpo": "mixdpo_dpo", "sft": "mixdpo_sft"}
    names |= {f"{k}_eval": f"{v}_eval" for k, v in names.items()}
    assert sorted(info) == sorted(names.values())
    for name, dataset in names.items():
        entry = info[dataset]
        assert entry["file_name"] == f"{name}.jsonl"
        assert entry.get("ranking", False) is name.startswith("dpo")
        assert entry.get("formatting", "alpaca") == (
            "alpaca" if layout == "standard" else "sharegpt"
        )
        rows = jsonl(folder / entry["file_name"])
        assert len(rows) == ROWS[name]
        split = splits["eval" if name.endswith("_eval") else "train"]
        route_name = name.split("_")[0]
        expected = split.filter(pl.col("route") == route_name)
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
    assert "--eval_dataset mixdpo_dpo_eval" in readme and "--eval_dataset mixdpo_sft_eval" in readme
    assert "| `mixdpo_dpo_eval` | dpo_eval.jsonl | 89 |" in readme
    assert "--disable_shuffling true" in readme and "cannot route per pair" in readme
    assert f"--pref_beta {PAPER.beta:g} --dpo_label_smoothing {PAPER.label_smoothing:g}" in readme


def test_llamafactory_gets_implicit_prompt_transcripts_as_sharegpt_turns(hh, tmp_path):
    """HH-RLHF's "\\n\\nHuman: … \\n\\nAssistant: …" transcripts: each turn of the history is
    one message, user and assistant alternating, so --template renders the conversation it was
    (not one user turn holding the whole transcript)."""
    out = tmp_path / "hh"
    write_route(
        plan_routes(open_pairs(hh), mode="dpo", order="as-is", eval_fraction=0.05),
        out,
        export="llamafactory",
    )
    folder = out / "llamafactory"
    info = json.loads((folder / "dataset_info.json").read_text())
    entry = info["mixdpo_dpo"]
    assert entry["formatting"] == "sharegpt" and entry["tags"] == OPENAI_TAGS
    split = pl.read_parquet(out / "train.parquet").sort("rank")
    rows = jsonl(folder / "dpo.jsonl")
    assert len(rows) == split.height == 2193  # 2312 distinct pairs, 4 with an empty chosen one
    assert len(jsonl(folder / "dpo_eval.jsonl")) == 115
    turns = []
    for row, pair in zip(rows, split.iter_rows(named=True), strict=True):
        prompt, responses = read_like_llamafactory(row, entry)
        transcript = pair["prompt"]
        if len(prompt) > 1 or transcript.startswith("\n\nHuman: " + prompt[0]["content"]):
            assert len(prompt) == transcript.count("\n\nHuman:") * 2 - 1
            assert all("\n\nHuman:" not in m["content"] for m in prompt)
            assert responses[0]["content"] == pair["chosen"].strip()
        turns.append(len(prompt))
    assert max(turns) > 9  # long conversations keep every turn
    whole = [
        n
        for row, n in zip(rows, turns, strict=True)
        if "\n\nHuman:" in row["messages"][0]["content"]
    ]
    assert len(whole) == 8  # transcripts whose turns do not alternate stay one user turn


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


def openrlhf_dpo_row(tokenizer, row: dict, response: str = "chosen") -> tuple[str, str, str]:
    """(prompt text, response text, training text) of a dpo.jsonl row as OpenRLHF builds it
    with --data.apply_chat_template (reward_dataset.py: preprocess_data, __getitem__)."""
    prompt = tokenizer.apply_chat_template(
        row["prompt"], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(row["prompt"] + row[response], tokenize=False)
    assert full.startswith(prompt)  # else OpenRLHF's slice at len(prompt) cuts a wrong text
    answer = full[len(prompt) :]
    text = (prompt + answer).rstrip("\n")
    if not text.endswith(tokenizer.eos_token):
        text += " " + tokenizer.eos_token
    return prompt, answer, text


def openrlhf_sft_row(tokenizer, row: dict) -> tuple[str, str]:
    """(prompt text, response text) of an sft.jsonl row as OpenRLHF's SFTDataset renders it."""
    prompt = tokenizer.apply_chat_template(row["input"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["input"] + row["output"], tokenize=False)
    assert full.startswith(prompt)
    return prompt, full[len(prompt) :]


#: A ChatML template, the kind instruct models (Qwen2.5-Instruct among them) ship.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(params=["chatml", "plain"])
def chat_tokenizer(request):
    """A real transformers tokenizer with the ChatML template, or the export's plain one."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.ByT5Tokenizer()
    tokenizer.chat_template = CHATML if request.param == "chatml" else PLAIN_TEMPLATE
    header = "<|im_start|>assistant\n" if request.param == "chatml" else "assistant: "
    return tokenizer, header


def glued(prompt: str, response: str) -> bool:
    """The prompt's last character runs into the response's first: "…?Hello!"."""
    return bool(prompt) and not prompt[-1].isspace() and not response[:1].isspace()


def test_openrlhf_rows_keep_the_prompt_and_the_response_apart(uf_data, chat_tokenizer, tmp_path):
    """Every dpo and sft row of both splits, built the way OpenRLHF builds it: the prompt text
    ends with the template's assistant header and the response follows it, for both layouts;
    no row renders empty (OpenRLHF's SFT would drop it silently). The export before this (strings,
    with --input_template '{}') glued prompt and response in 734 of these 796 dpo rows (816 of
    885 without the held-out pairs)."""
    layout, data = uf_data
    tokenizer, header = chat_tokenizer
    out = tmp_path / "uf"
    splits = route(data, out, "openrlhf")
    folder = out / "openrlhf"
    for name, n in ROWS.items():
        rows = jsonl(folder / f"{name}.jsonl")
        assert len(rows) == n
        split = splits["eval" if name.endswith("_eval") else "train"]
        expected = split.filter(pl.col("route") == name.split("_")[0])
        for row, pair in zip(rows, expected.iter_rows(named=True), strict=True):
            if name.startswith("dpo"):
                for side in ("chosen", "rejected"):
                    prompt, answer, text = openrlhf_dpo_row(tokenizer, row, side)
                    content = pair[side] if layout == "standard" else pair[side][0]["content"]
                    assert prompt.endswith(header) and answer.startswith(content)
                    assert text.startswith(prompt + content.rstrip("\n"))  # it strips "\n"
                    assert row["margin"] == pair["margin"]
            else:
                prompt, answer = openrlhf_sft_row(tokenizer, row)
                assert prompt.endswith(header) and prompt and answer.strip()
    strings = splits["train"].filter(pl.col("route") == "dpo")
    if layout == "standard":  # what '{}' made of the same pairs: prompt + chosen, glued
        pairs = zip(strings["prompt"], strings["chosen"], strict=True)
        assert sum(glued(p, c) for p, c in pairs) == 734
    readme = (folder / "README.md").read_text()
    assert "--data.prompt_key prompt --data.chosen_key chosen" in readme
    assert "--data.input_key input --data.output_key output" in readme
    commands = readme.split("```bash")[1].split("```")[0]
    assert commands.count("--data.apply_chat_template") == 2
    assert "input_template" not in commands
    assert "--eval.dataset dpo_eval.jsonl --eval.split train" in readme
    cdpo = f"--model.beta {PAPER.beta:g} --model.label_smoothing {PAPER.label_smoothing:g}"
    assert cdpo in readme
    assert (folder / TEMPLATE_FILE).read_text() == PLAIN_TEMPLATE


def test_openrlhf_gets_implicit_prompt_transcripts_as_turns(hh, tmp_path):
    """HH-RLHF: the history becomes alternating turns, so the chat template renders each one."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.ByT5Tokenizer()
    tokenizer.chat_template = CHATML
    out = tmp_path / "hh"
    write_route(plan_routes(open_pairs(hh), mode="dpo", order="as-is"), out, export="openrlhf")
    rows = jsonl(out / "openrlhf" / "dpo.jsonl")
    long = next(r for r in rows if len(r["prompt"]) >= 5)
    prompt, answer, _ = openrlhf_dpo_row(tokenizer, long)
    assert prompt.count("<|im_start|>user\n") == 3 and "Human:" not in prompt
    assert answer.startswith(long["chosen"][0]["content"] + "<|im_end|>")


# --------------------------------------------------------------------------- trl-mixdpo


def test_trl_mixdpo_export_is_every_pair_with_route_and_rank(uf1k, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "uf"
    train = route(uf1k, out, "trl-mixdpo")["train"]
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
    assert pairs["rank"] == list(range(895))  # 995 routed pairs less the 100 held out
    assert pairs["pair_id"] == train["pair_id"].to_list()
    assert pairs["route"].count("sft") == 99 and pairs["route"][-99:] == ["sft"] * 99
    plan = json.loads((out / "plan.json").read_text())
    assert plan["outputs"]["trl-mixdpo"] == {
        "mixdpo": "mixdpo.jsonl",
        "mixdpo_eval": "mixdpo_eval.jsonl",
    }


def test_unknown_export_is_exit_2_and_writes_nothing(cli, uf1k, tmp_path):
    out = tmp_path / "out"
    result = cli("route", uf1k, "--threshold", "0.5", "--out", out, "--export", "axolotl")
    assert result.code == 2
    assert "--export must be one of trl, trl-mixdpo, llamafactory, openrlhf" in result.err
    assert not out.exists()


def test_several_engines_at_once_and_a_repeat_written_once(cli, uf1k, tmp_path):
    """--export trl,openrlhf --export trl --export llamafactory: three engines' files, trl's
    once; plan.json names them in the order given."""
    out = tmp_path / "out"
    result = cli(
        "route", uf1k, "--threshold", "0.5", "--out", out,
        "--export", "trl,openrlhf", "--export", "trl", "--export", " llamafactory",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "exported for trl, openrlhf, llamafactory" in " ".join(result.out.split())
    plan = json.loads((out / "plan.json").read_text())
    assert [k for k in plan["outputs"] if k not in ("train", "eval")] == [
        "trl",
        "openrlhf",
        "llamafactory",
    ]
    for engine, files in plan["outputs"].items():
        if isinstance(files, dict):
            assert all((out / path).is_file() for path in files.values()), engine
    assert len(jsonl(out / "dpo.jsonl")) == len(jsonl(out / "openrlhf" / "dpo.jsonl")) == 885


def test_a_config_file_names_several_engines_as_on_the_command_line(cli, uf1k, tmp_path):
    """route --config: `export: trl,openrlhf` (one string, as typed) or a YAML list."""
    for name, value in (("one", "trl,openrlhf"), ("list", "[trl, openrlhf]")):
        config = tmp_path / f"{name}.yaml"
        out = tmp_path / name
        config.write_text(f"data: {uf1k}\nthreshold: 0.5\nout: {out}\nexport: {value}\n")
        result = cli("route", "--config", config)
        assert result.code == 0, result.err
        outputs = json.loads((out / "plan.json").read_text())["outputs"]
        assert {"trl", "openrlhf"} <= set(outputs) and (out / "openrlhf" / "dpo.jsonl").is_file()


def test_a_soft_split_refuses_each_engine_that_cannot_weight_pairs(cli, uf1k, tmp_path):
    out = tmp_path / "out"
    args = ("route", uf1k, "--threshold", "0.5", "--soft", "0.5", "--out", out)
    result = cli(*args, "--export", "trl-mixdpo,openrlhf")
    assert result.code == 2 and "--export openrlhf cannot weight pairs" in result.err
    assert not out.exists()
    assert cli(*args, "--export", "trl-mixdpo").code == 0
