"""Export a routed split for OpenRLHF: messages its chat template renders, the margin, two stages.

OpenRLHF (OpenRLHF/OpenRLHF, 0.10.2 and later: the ``--data.*`` flags) reads JSONL through
``datasets``. How its dataset code builds a training row decides the format written here:

* DPO and reward models (``openrlhf/datasets/reward_dataset.py``, ``preprocess_data`` and
  ``RewardDataset.__getitem__``): without ``--data.apply_chat_template`` the prompt string goes
  through ``--data.input_template`` (``train_dpo`` defaults it to None, so it stays as it is) and
  the row is the text ``prompt + chosen``, with nothing between them: "…?Hello!". With the flag,
  the prompt is rendered by the tokenizer's chat template with the generation prompt, and the
  response is what ``prompt + response`` renders to after it, so the boundary is the template's
  assistant header. That path needs ``prompt`` and the responses as message lists.
* SFT (``openrlhf/datasets/sft_dataset.py``): with the flag, ``--data.input_key`` and
  ``--data.output_key`` name message lists (or strings, wrapped as one user and one assistant
  turn) rendered the same way; it drops a row whose prompt or response renders empty.

So every layout is written as messages (:func:`~prefcurate.routing.exports.common.as_messages`):
a string prompt is one user turn, each response one assistant turn, an implicit-prompt
transcript (HH-RLHF) its alternating turns, a conversation as it is; the documented commands pass
``--data.apply_chat_template`` (and ``--data.tokenizer_chat_template`` for a model without one).

* ``dpo.jsonl`` — the dpo pairs in rank order: ``prompt``, ``chosen``, ``rejected``, ``margin``
  (``RewardDataset`` reads ``margin`` for the reward model's margin loss; null counts as 0);
* ``sft.jsonl`` — the sft pairs in rank order: ``input`` (the prompt), ``output`` (the chosen
  response), ``margin``;
* with held-out pairs, ``dpo_eval.jsonl`` and ``sft_eval.jsonl`` (``--eval.dataset``);
* ``plain_chat_template.jinja`` — a chat template for a model without one;
* ``README.md`` — the two commands.

OpenRLHF cannot route per pair and shuffles its training set, so it gets MixDPO as two stages
(DPO, then SFT) without the curriculum inside each stage.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT
from prefcurate.routing.exports.common import (
    SplitFiles,
    as_messages,
    per_split,
    warn_kept_whole,
    write_jsonl,
)
from prefcurate.routing.presets import PAPER


def export_openrlhf(split: SplitFiles | str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write dpo.jsonl, sft.jsonl (+ their ``_eval`` twins) and README.md into ``out_dir``.

    ``split`` is a split folder, its train.parquet, or a
    :class:`~prefcurate.routing.exports.common.SplitFiles`.
    """
    out_dir = Path(out_dir)
    split = SplitFiles.of(split)
    kept_whole: list[str] = []

    def stages(pairs: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
        turns = as_messages(pairs, split.layout, kept_whole)
        return {
            "dpo": turns.filter(pl.col("route") == ROUTE_DPO).select(
                "prompt", "chosen", "rejected", "margin"
            ),
            "sft": turns.filter(pl.col("route") == ROUTE_SFT).select(
                pl.col("prompt").alias("input"), pl.col("chosen").alias("output"), "margin"
            ),
        }

    written = write_jsonl(out_dir, per_split(split, stages))
    warn_kept_whole(kept_whole, "openrlhf")
    files = {name: path for name, (path, _) in written.items()}
    files["chat_template"] = out_dir / TEMPLATE_FILE
    files["chat_template"].write_text(PLAIN_TEMPLATE, encoding="utf-8")
    files["readme"] = out_dir / "README.md"
    files["readme"].write_text(_readme({n: rows for n, (_, rows) in written.items()}), "utf-8")
    return files


#: A chat template for a model that has none (written beside the data as :data:`TEMPLATE_FILE`):
#: ``role: content`` blocks, the prompt ending with ``assistant:``; prefix-consistent, as
#: OpenRLHF's slicing of the rendered text needs.
TEMPLATE_FILE = "plain_chat_template.jinja"
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _readme(rows: dict[str, int]) -> str:
    held = "dpo_eval" in rows
    table = "".join(f"| {name}.jsonl | {n} | {_USE[name]} |\n" for name, n in rows.items())
    eval_dpo = " \\\n  --eval.dataset dpo_eval.jsonl --eval.split train" if held else ""
    eval_sft = " \\\n  --eval.dataset sft_eval.jsonl --eval.split train" if held else ""
    return _README.format(table=table, eval_dpo=eval_dpo, eval_sft=eval_sft, **PAPER.words())


_USE = {
    "dpo": "prompt, chosen, rejected, margin | `openrlhf.cli.train_dpo` (or `train_rm`)",
    "sft": "input, output, margin | `openrlhf.cli.train_sft`",
    "dpo_eval": "as dpo.jsonl, held-out pairs | `--eval.dataset` of `train_dpo`",
    "sft_eval": "as sft.jsonl, held-out pairs | `--eval.dataset` of `train_sft`",
}

_README = """\
# MixDPO for OpenRLHF

Written by `prefcurate route --export openrlhf`, each file in curriculum order (largest margin
first); `margin` is score_chosen − score_rejected (null when the data had no ratings). Prompts
and responses are message lists (`role`, `content`): OpenRLHF renders them with the model's chat
template (`--data.apply_chat_template`), so the prompt and the response stay apart
("…?<assistant header>Hello!", never "…?Hello!").

| file | pairs | keys | train with |
|---|---|---|---|
{table}
OpenRLHF cannot route per pair and shuffles its training data: run the two stages in this
order, the second from the first one's model (the paper's cDPO: beta {beta}, label smoothing
{label_smoothing}).
For OpenRLHF 0.10.2 and later (the `--data.*` flags):

```bash
deepspeed --module openrlhf.cli.train_dpo --model.model_name_or_path BASE_MODEL \\
  --data.dataset dpo.jsonl --data.prompt_key prompt --data.chosen_key chosen \\
  --data.rejected_key rejected --data.apply_chat_template{eval_dpo} \\
  --model.beta {beta} --model.label_smoothing {label_smoothing} --train.max_epochs {epochs} \\
  --ckpt.output_dir stage1-dpo
deepspeed --module openrlhf.cli.train_sft --model.model_name_or_path stage1-dpo \\
  --data.dataset sft.jsonl --data.input_key input --data.output_key output \\
  --data.apply_chat_template{eval_sft} \\
  --train.max_epochs 1 --ckpt.output_dir stage2-sft
```

`--eval.split train` is needed because a JSON file loads as one split named `train` (train_dpo's
default is `test`). A model without a chat template needs one: add
`--data.tokenizer_chat_template "$(cat plain_chat_template.jinja)"` (`role: content` blocks, in
this folder). A reward model trained with `openrlhf.cli.train_rm` on dpo.jsonl
(same `--data.*` flags) reads the margin column with `--model.margin_loss_enable`. For the
per-pair routed loss use `--export trl-mixdpo` with `prefcurate.integrations.trl.MixDPOTrainer`,
or `prefcurate train` (docs/integrations.md).
"""
