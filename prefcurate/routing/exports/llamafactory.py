"""Export a routed split as a LLaMA-Factory dataset folder: two datasets, two training stages.

LLaMA-Factory (hiyouga/LLaMA-Factory) reads a folder with a ``dataset_info.json`` that names each
dataset's file, format and columns (its data/README.md). It trains one objective per run, so it
cannot route per pair; the export gives it MixDPO as two stages in curriculum order — DPO on the
clear pairs (largest margin first), then SFT on the chosen responses of the ambiguous ones:

* ``dpo.jsonl`` → dataset ``mixdpo_dpo`` (``ranking: true``), the dpo pairs in rank order;
* ``sft.jsonl`` → dataset ``mixdpo_sft``, the sft pairs in rank order, chosen response only;
* with held-out pairs (``route --eval-fraction``), ``dpo_eval.jsonl`` → ``mixdpo_dpo_eval`` and
  ``sft_eval.jsonl`` → ``mixdpo_sft_eval``, each stage's ``--eval_dataset``;
* ``dataset_info.json`` with every entry, and ``README.md`` with the two commands.

Standard string pairs use the *alpaca* format (``instruction``, ``input``, ``chosen``/
``rejected`` or ``output``): LLaMA-Factory's ``--template`` wraps the instruction as the user's
turn. Conversations, and implicit-prompt transcripts (HH-RLHF's ``"\\n\\nHuman: … \\n\\n
Assistant:"``, split into their turns by :func:`~prefcurate.routing.exports.common.as_messages`),
use the *sharegpt* format with OpenAI-style tags (``role``/``content``): ``messages`` holds the
prompt (an optional first system message, then user and assistant turns alternating, ending with
the user), and ``chosen``/``rejected`` one assistant message each — LLaMA-Factory's converter
skips any other shape with only a warning, so such a pair is refused here instead (naming the
pair), and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT, Layout
from prefcurate.routing.exports.common import (
    SplitFiles,
    as_messages,
    eval_name,
    is_conversational,
    per_split,
    warn_kept_whole,
    write_jsonl,
)
from prefcurate.routing.presets import PAPER

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


def export_llamafactory(split: SplitFiles | str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write dpo.jsonl, sft.jsonl (+ their ``_eval`` twins), dataset_info.json and README.md.

    ``split`` is a split folder, its train.parquet, or a
    :class:`~prefcurate.routing.exports.common.SplitFiles`. Returns the written paths by name.
    Raises :class:`~prefcurate.base.errors.InputError` for a conversation LLaMA-Factory would skip.
    """
    out_dir = Path(out_dir)
    split = SplitFiles.of(split)
    sharegpt = split.layout == str(Layout.IMPLICIT) or is_conversational(split.pairs()[""])
    kept_whole: list[str] = []

    def stages(pairs: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
        if not sharegpt:
            return _alpaca(pairs)
        turns = as_messages(pairs, split.layout, kept_whole)
        check_conversations(turns, where=split.train)
        return _sharegpt(turns)

    written = write_jsonl(out_dir, per_split(split, stages))
    warn_kept_whole(kept_whole, "llamafactory")
    names = [name for name in written if name in DATASETS]
    info = {DATASETS[name]: dataset_entry(name, sharegpt) for name in names}
    files = {name: path for name, (path, _) in written.items()}
    files["dataset_info"] = out_dir / INFO_FILE
    files["dataset_info"].write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    files["readme"] = out_dir / "README.md"
    rows = {name: n for name, (_, n) in written.items()}
    files["readme"].write_text(_readme(rows, "sharegpt" if sharegpt else "alpaca"), "utf-8")
    return files


#: The files of the export (``dpo``: dpo.jsonl, ...) → the dataset names dataset_info.json gives.
DATASETS = {
    "dpo": DPO_NAME,
    "sft": SFT_NAME,
    "dpo_eval": eval_name(DPO_NAME),
    "sft_eval": eval_name(SFT_NAME),
}


def dataset_entry(name: str, sharegpt: bool) -> dict[str, Any]:
    """The dataset_info.json entry of the export's file ``name`` (``dpo``, ``sft_eval``, ...):
    its file, format and columns, as LLaMA-Factory's data/README.md describes them."""
    ranking = name.startswith("dpo")
    entry: dict[str, Any] = {"file_name": f"{name}.jsonl"}
    if sharegpt:
        entry["formatting"] = "sharegpt"
    if ranking:
        entry["ranking"] = True
    if sharegpt:
        entry["columns"] = (
            {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}
            if ranking
            else {"messages": "messages"}
        )
        entry["tags"] = dict(OPENAI_TAGS)
    else:
        answer = {"chosen": "chosen", "rejected": "rejected"} if ranking else {"response": "output"}
        entry["columns"] = {"prompt": "instruction", "query": "input", **answer}
    return entry


def _alpaca(pairs: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    common = [pl.col("prompt").alias("instruction"), pl.lit("").alias("input")]
    dpo = pairs.filter(pl.col("route") == ROUTE_DPO).select(*common, "chosen", "rejected")
    sft = pairs.filter(pl.col("route") == ROUTE_SFT).select(
        *common, pl.col("chosen").alias("output")
    )
    return {"dpo": dpo, "sft": sft}


def _sharegpt(pairs: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    messages = pl.col("prompt").alias("messages")
    dpo = pairs.filter(pl.col("route") == ROUTE_DPO).select(
        messages,
        pl.col("chosen").list.first().alias("chosen"),
        pl.col("rejected").list.first().alias("rejected"),
    )
    sft = pairs.filter(pl.col("route") == ROUTE_SFT).select(
        pl.concat_list("prompt", "chosen").alias("messages")
    )
    return {"dpo": dpo, "sft": sft}


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


def _readme(rows: dict[str, int], data_format: str) -> str:
    held = "dpo_eval" in rows
    table = "".join(
        f"| `{DATASETS[name]}` | {name}.jsonl | {rows[name]} | {_USE[name]} |\n"
        for name in DATASETS
        if name in rows
    )
    evals = " \\\n  --eval_dataset {} --eval_strategy epoch --per_device_eval_batch_size 8"
    stage1 = evals.format(eval_name(DPO_NAME)) if held else ""
    stage2 = evals.format(eval_name(SFT_NAME)) if held else ""
    return _README.format(
        format=data_format, table=table, stage1=stage1, stage2=stage2, **PAPER.words()
    )


_USE = {
    "dpo": "`--stage dpo` (preference pairs, `ranking: true`)",
    "sft": "`--stage sft` (the chosen response of each ambiguous pair)",
    "dpo_eval": "`--eval_dataset` of the dpo stage (held-out pairs routed to dpo)",
    "sft_eval": "`--eval_dataset` of the sft stage (held-out pairs routed to sft)",
}

_README = """\
# MixDPO for LLaMA-Factory

Written by `prefcurate route --export llamafactory`. Datasets in {format} format, each in
curriculum order (largest margin first):

| dataset | file | pairs | train with |
|---|---|---|---|
{table}
LLaMA-Factory trains one objective per run, so it cannot route per pair: run the two stages in
this order, the second starting from the first one's model. Keep the order with
`--disable_shuffling true` (LLaMA-Factory shuffles otherwise).

```bash
# stage 1: DPO on the clear pairs (the paper's cDPO: beta {beta}, label smoothing {label_smoothing})
llamafactory-cli train --stage dpo --do_train true --model_name_or_path BASE_MODEL \\
  --dataset_dir THIS_FOLDER --dataset mixdpo_dpo --template TEMPLATE{stage1} \\
  --pref_loss {loss} --pref_beta {beta} --dpo_label_smoothing {label_smoothing} \\
  --disable_shuffling true --num_train_epochs {epochs} --output_dir stage1-dpo
# stage 2: SFT on the chosen responses of the ambiguous pairs
llamafactory-cli train --stage sft --do_train true --model_name_or_path stage1-dpo \\
  --dataset_dir THIS_FOLDER --dataset mixdpo_sft --template TEMPLATE{stage2} \\
  --disable_shuffling true --num_train_epochs {epochs} --output_dir stage2-sft
```

What differs from MixDPO: the two routes are trained one after the other instead of mixed in one
loss, and LLaMA-Factory's SFT loss averages over tokens of the batch, not per response. For the
per-pair routed loss use `--export trl-mixdpo` with `prefcurate.integrations.trl.MixDPOTrainer`
or `prefcurate train` (docs/integrations.md).
"""
