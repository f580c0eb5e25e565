"""Export a routed split as a LLaMA-Factory dataset folder: two datasets, two training stages.

LLaMA-Factory (hiyouga/LLaMA-Factory) reads a folder with a ``dataset_info.json`` that names each
dataset's file, format and columns (its data/README.md). It trains one objective per run, so it
cannot route per pair; the export gives it MixDPO as two stages in curriculum order — DPO on the
clear pairs (largest margin first), then SFT on the chosen responses of the ambiguous ones:

* ``dpo.jsonl`` → dataset ``mixdpo_dpo`` (``ranking: true``), the dpo pairs in rank order;
* ``sft.jsonl`` → dataset ``mixdpo_sft``, the sft pairs in rank order, chosen response only;
* ``dataset_info.json`` with both entries, and ``README.md`` with the two commands.

String pairs use the *alpaca* format (``instruction``, ``input``, ``chosen``/``rejected`` or
``output``). Conversations use the *sharegpt* format with OpenAI-style tags (``role``/
``content``): ``messages`` holds the prompt (an optional first system message, then user and
assistant turns alternating, ending with the user), and ``chosen``/``rejected`` one assistant
message each — LLaMA-Factory's converter skips any other shape with only a warning, so such a
pair is refused here instead (naming the pair), and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT
from prefcurate.routing.exports.common import DPO_FILE, SFT_FILE, mixdpo_frame

DPO_NAME, SFT_NAME = "mixdpo_dpo", "mixdpo_sft"
INFO_FILE = "dataset_info.json"
#: sharegpt tags for messages stored as {"role", "content"} (LLaMA-Factory's "OpenAI format").
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def export_llamafactory(split: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write dpo.jsonl, sft.jsonl, dataset_info.json and README.md into ``out_dir``.

    ``split`` is a routed train.parquet. Returns the written paths by name. Raises
    :class:`~prefcurate.base.errors.InputError` for a conversation LLaMA-Factory would skip.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = mixdpo_frame(pl.scan_parquet(split), where=split)
    conversational = isinstance(pairs.collect_schema()["chosen"], pl.List)
    if conversational:
        check_conversations(pairs, where=split)
        dpo, sft, info = _sharegpt(pairs)
    else:
        dpo, sft, info = _alpaca(pairs)
    files = {
        "dpo": out_dir / DPO_FILE,
        "sft": out_dir / SFT_FILE,
        "dataset_info": out_dir / INFO_FILE,
        "readme": out_dir / "README.md",
    }
    # one query plan: the split is read and sorted once for both files and the counts
    *_, counts = pl.collect_all(
        [
            dpo.sink_ndjson(files["dpo"], maintain_order=True, lazy=True),
            sft.sink_ndjson(files["sft"], maintain_order=True, lazy=True),
            pairs.group_by("route").len(),
        ]
    )
    files["dataset_info"].write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    n = dict(zip(counts["route"].to_list(), counts["len"].to_list(), strict=True))
    readme = _README.format(
        dpo=n.get(ROUTE_DPO, 0),
        sft=n.get(ROUTE_SFT, 0),
        format="sharegpt" if conversational else "alpaca",
    )
    files["readme"].write_text(readme, encoding="utf-8")
    return files


def dataset_info(conversational: bool) -> dict[str, Any]:
    """The dataset_info.json entries of the two datasets (LLaMA-Factory's data/README.md)."""
    if not conversational:
        return {
            DPO_NAME: {
                "file_name": DPO_FILE,
                "ranking": True,
                "columns": {
                    "prompt": "instruction",
                    "query": "input",
                    "chosen": "chosen",
                    "rejected": "rejected",
                },
            },
            SFT_NAME: {
                "file_name": SFT_FILE,
                "columns": {"prompt": "instruction", "query": "input", "response": "output"},
            },
        }
    return {
        DPO_NAME: {
            "file_name": DPO_FILE,
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
            "tags": dict(OPENAI_TAGS),
        },
        SFT_NAME: {
            "file_name": SFT_FILE,
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": dict(OPENAI_TAGS),
        },
    }


def _alpaca(pairs: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame, dict[str, Any]]:
    common = [pl.col("prompt").alias("instruction"), pl.lit("").alias("input")]
    dpo = pairs.filter(pl.col("route") == ROUTE_DPO).select(*common, "chosen", "rejected")
    sft = pairs.filter(pl.col("route") == ROUTE_SFT).select(
        *common, pl.col("chosen").alias("output")
    )
    return dpo, sft, dataset_info(False)


def _sharegpt(pairs: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame, dict[str, Any]]:
    messages = pl.col("prompt").alias("messages")
    dpo = pairs.filter(pl.col("route") == ROUTE_DPO).select(
        messages,
        pl.col("chosen").list.first().alias("chosen"),
        pl.col("rejected").list.first().alias("rejected"),
    )
    sft = pairs.filter(pl.col("route") == ROUTE_SFT).select(
        pl.concat_list("prompt", "chosen").alias("messages")
    )
    return dpo, sft, dataset_info(True)


def check_conversations(pairs: pl.LazyFrame, *, where: object) -> None:
    """Refuse a pair whose messages LLaMA-Factory's sharegpt converter would skip.

    The prompt: an optional first ``system`` message, then ``user`` and ``assistant`` turns
    alternating, starting and ending with ``user``. Each response (of a dpo pair: both; of an
    sft pair: the chosen one) is exactly one ``assistant`` message.
    """
    roles = pairs.select(
        "pair_id",
        "route",
        pl.col("prompt").list.eval(pl.element().struct.field("role")).alias("prompt"),
        pl.col("chosen").list.eval(pl.element().struct.field("role")).alias("chosen"),
        pl.col("rejected").list.eval(pl.element().struct.field("role")).alias("rejected"),
    ).collect()
    for row in roles.iter_rows(named=True):
        problem = _prompt_problem(row["prompt"])
        responses = ("chosen", "rejected") if row["route"] == ROUTE_DPO else ("chosen",)
        for name in responses:
            if problem is None and row[name] != ["assistant"]:
                problem = f"its {name} response is {row[name]} (needs one assistant message)"
        if problem is not None:
            raise InputError(
                f"pair {row['pair_id']!r} cannot be read by LLaMA-Factory: {problem}",
                where=where,
                fix="fix or drop that pair, or export with --export trl-mixdpo",
            )


def _prompt_problem(roles: list[str]) -> str | None:
    turns = roles[1:] if roles[:1] == ["system"] else roles
    if not turns:
        return "its prompt has no user message"
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if turns != expected or len(turns) % 2 == 0:
        return f"its prompt roles {roles} do not alternate user/assistant ending with user"
    return None


_README = """\
# MixDPO for LLaMA-Factory

Written by `prefcurate route --export llamafactory`. Two datasets ({format} format), each in
curriculum order (largest margin first):

| dataset | file | pairs | train with |
|---|---|---|---|
| `mixdpo_dpo` | dpo.jsonl | {dpo} | `--stage dpo` (preference pairs, `ranking: true`) |
| `mixdpo_sft` | sft.jsonl | {sft} | `--stage sft` (the chosen response of each ambiguous pair) |

LLaMA-Factory trains one objective per run, so it cannot route per pair: run the two stages in
this order, the second starting from the first one's model. Keep the order with
`--disable_shuffling true` (LLaMA-Factory shuffles otherwise).

```bash
# stage 1: DPO on the clear pairs (the paper's cDPO: beta 0.01, label smoothing 0.1)
llamafactory-cli train --stage dpo --do_train true --model_name_or_path BASE_MODEL \\
  --dataset_dir THIS_FOLDER --dataset mixdpo_dpo --template TEMPLATE \\
  --pref_loss sigmoid --pref_beta 0.01 --dpo_label_smoothing 0.1 \\
  --disable_shuffling true --num_train_epochs 1 --output_dir stage1-dpo
# stage 2: SFT on the chosen responses of the ambiguous pairs
llamafactory-cli train --stage sft --do_train true --model_name_or_path stage1-dpo \\
  --dataset_dir THIS_FOLDER --dataset mixdpo_sft --template TEMPLATE \\
  --disable_shuffling true --num_train_epochs 1 --output_dir stage2-sft
```

What differs from MixDPO: the two routes are trained one after the other instead of mixed in one
loss, and LLaMA-Factory's SFT loss averages over tokens of the batch, not per response. For the
per-pair routed loss use `--export trl-mixdpo` with `prefcurate.integrations.trl.MixDPOTrainer`
or `prefcurate train` (docs/integrations.md).
"""
