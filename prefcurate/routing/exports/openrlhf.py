"""Export a routed split for OpenRLHF: its default keys, the margin kept, two training stages.

OpenRLHF (OpenRLHF/OpenRLHF) reads JSONL through ``datasets``. Its preference trainers
(``openrlhf.cli.train_dpo``, ``train_rm``) take the keys ``--chosen_key`` (default ``chosen``),
``--rejected_key`` (default ``rejected``) and ``--prompt_key`` (no default: pass ``prompt``), and
read an optional ``margin`` column (``RewardDataset``; the reward model's margin loss uses it, a
missing or null margin counts as 0). Its SFT trainer takes ``--input_key`` (default ``input``)
and ``--output_key``. With ``--apply_chat_template`` conversations stay message lists and the
tokenizer's template renders them; without it the strings are concatenated as they are (after
``--input_template``, which OpenRLHF's DPO script sets to ``"User: {}\\nAssistant: "`` by default).

* ``dpo.jsonl`` — the dpo pairs in rank order: ``prompt``, ``chosen``, ``rejected``, ``margin``;
* ``sft.jsonl`` — the sft pairs in rank order: ``input`` (the prompt), ``output`` (the chosen
  response), ``margin``;
* ``README.md`` — the two commands.

OpenRLHF cannot route per pair and shuffles its training set, so it gets MixDPO as two stages
(DPO, then SFT) without the curriculum inside each stage.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT
from prefcurate.routing.exports.common import DPO_FILE, SFT_FILE, mixdpo_frame


def export_openrlhf(split: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write dpo.jsonl, sft.jsonl and README.md for the routed train.parquet ``split``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = mixdpo_frame(pl.scan_parquet(split), where=split)
    conversational = isinstance(pairs.collect_schema()["chosen"], pl.List)
    files = {
        "dpo": out_dir / DPO_FILE,
        "sft": out_dir / SFT_FILE,
        "readme": out_dir / "README.md",
    }
    dpo = pairs.filter(pl.col("route") == ROUTE_DPO).select(
        "prompt", "chosen", "rejected", "margin"
    )
    sft = pairs.filter(pl.col("route") == ROUTE_SFT).select(
        pl.col("prompt").alias("input"), pl.col("chosen").alias("output"), "margin"
    )
    pl.collect_all(  # one query plan: the split is read and sorted once for both files
        [
            dpo.sink_ndjson(files["dpo"], maintain_order=True, lazy=True),
            sft.sink_ndjson(files["sft"], maintain_order=True, lazy=True),
        ]
    )
    template = " --apply_chat_template" if conversational else " --input_template '{}'"
    files["readme"].write_text(_README.replace("TEMPLATE_FLAG", template), encoding="utf-8")
    return files


_README = """\
# MixDPO for OpenRLHF

Written by `prefcurate route --export openrlhf`, each file in curriculum order (largest margin
first); `margin` is score_chosen − score_rejected (null when the data had no ratings).

| file | keys | train with |
|---|---|---|
| dpo.jsonl | prompt, chosen, rejected, margin | `openrlhf.cli.train_dpo` (or `train_rm`) |
| sft.jsonl | input, output, margin | `openrlhf.cli.train_sft` |

OpenRLHF cannot route per pair and shuffles its training data: run the two stages in this
order, the second from the first one's model (the paper's cDPO: beta 0.01, label smoothing 0.1).

```bash
deepspeed --module openrlhf.cli.train_dpo --pretrain BASE_MODEL --dataset dpo.jsonl \\
  --prompt_key prompt --chosen_key chosen --rejected_key rejectedTEMPLATE_FLAG \\
  --beta 0.01 --label_smoothing 0.1 --max_epochs 1 --save_path stage1-dpo
deepspeed --module openrlhf.cli.train_sft --pretrain stage1-dpo --dataset sft.jsonl \\
  --input_key input --output_key outputTEMPLATE_FLAG \\
  --max_epochs 1 --save_path stage2-sft
```

`--input_template '{}'` keeps a string prompt as it is (OpenRLHF's DPO script otherwise wraps it
in "User: {}\\nAssistant: "). A reward model trained with `openrlhf.cli.train_rm` on dpo.jsonl
reads the margin column. For the per-pair routed loss use `--export trl-mixdpo` with
`prefcurate.integrations.trl.MixDPOTrainer`, or `prefcurate train` (docs/integrations.md).
"""
