"""Export a routed split in the layouts TRL's trainers read unchanged.

* ``dpo.jsonl`` — the DPO-routed pairs in curriculum (rank) order, one ``{"prompt", "chosen",
  "rejected"}`` object a line: TRL's *preference* format for ``DPOTrainer``.
* ``sft.jsonl`` — the SFT-routed pairs in rank order, ``{"prompt", "completion"}`` with the chosen
  response as the completion: TRL's *prompt-completion* format for ``SFTTrainer``.

Standard data stays strings; conversational data stays conversational (``prompt`` a list of
``{role, content}`` messages, ``chosen``/``rejected``/``completion`` lists of assistant messages),
so a chat template is applied by TRL, not baked in here. A conversational pair without a prompt
gets ``[]``. Bytes are deterministic: Polars' NDJSON writer, keys in a fixed order. Example::

    >>> from prefcurate.export import export_trl
    >>> export_trl("out/uf-mixdpo/train.parquet", "out/uf-mixdpo")   # doctest: +SKIP
    {'dpo': PosixPath('out/uf-mixdpo/dpo.jsonl'), 'sft': PosixPath('out/uf-mixdpo/sft.jsonl')}
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prefcurate.schema import ROUTE_DPO, ROUTE_SFT

DPO_FILE = "dpo.jsonl"
SFT_FILE = "sft.jsonl"


def export_trl(split: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write dpo.jsonl and sft.jsonl for the split file ``split`` into ``out_dir``.

    Reads the split lazily and streams each file, so memory stays bounded on large splits. Both
    files are always written (an empty file when no pair took that route).
    """
    out_dir = Path(out_dir)
    frame = pl.scan_parquet(split)
    schema = frame.collect_schema()
    if "route" not in schema or "rank" not in schema:
        msg = f"{split} is not a routed split (no route/rank columns)"
        raise ValueError(msg)
    conversational = isinstance(schema["chosen"], pl.List)
    prompt = pl.col("prompt")
    if conversational:
        prompt = prompt.fill_null(pl.lit([], dtype=schema["prompt"]))
    else:
        prompt = prompt.fill_null("")
    ordered = frame.sort("rank")
    dpo = ordered.filter(pl.col("route") == ROUTE_DPO).select(
        prompt.alias("prompt"), pl.col("chosen"), pl.col("rejected")
    )
    sft = ordered.filter(pl.col("route") == ROUTE_SFT).select(
        prompt.alias("prompt"), pl.col("chosen").alias("completion")
    )
    files = {"dpo": out_dir / DPO_FILE, "sft": out_dir / SFT_FILE}
    for name, query in (("dpo", dpo), ("sft", sft)):
        query.sink_ndjson(files[name], maintain_order=True)
    return files
