"""Export a routed split in the layouts other trainers read unchanged.

``--export`` takes one of :data:`EXPORTS`:

* ``trl-mixdpo`` — ``mixdpo.jsonl``: every pair in rank order with its ``route`` and ``rank``,
  the one file :class:`prefcurate.integrations.trl.MixDPOTrainer` reads (per-pair routing in TRL);
* ``llamafactory`` / ``openrlhf`` — a folder for each tool
(:mod:`prefcurate.routing.exports.llamafactory`,
  :mod:`prefcurate.routing.exports.openrlhf`): those tools cannot route per pair, so the dpo and sft
  pairs become two datasets for two training stages;
* ``trl`` — the same two stages for TRL's own DPOTrainer and SFTTrainer:

* ``dpo.jsonl`` — the DPO-routed pairs in curriculum (rank) order, one ``{"prompt", "chosen",
  "rejected"}`` object a line: TRL's *preference* format for ``DPOTrainer``.
* ``sft.jsonl`` — the SFT-routed pairs in rank order, ``{"prompt", "completion"}`` with the chosen
  response as the completion: TRL's *prompt-completion* format for ``SFTTrainer``.

Standard data stays strings; conversational data stays conversational (``prompt`` a list of
``{role, content}`` messages, ``chosen``/``rejected``/``completion`` lists of assistant messages),
so a chat template is applied by TRL, not baked in here. A conversational pair without a prompt
gets ``[]``. Bytes are deterministic: Polars' NDJSON writer, keys in a fixed order. Example::

    >>> from prefcurate.routing.exports.trl import export_trl
    >>> export_trl("out/uf-mixdpo/train.parquet", "out/uf-mixdpo")   # doctest: +SKIP
    {'dpo': PosixPath('out/uf-mixdpo/dpo.jsonl'), 'sft': PosixPath('out/uf-mixdpo/sft.jsonl')}
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT
from prefcurate.routing.exports.common import DPO_FILE, MIXDPO_FILE, SFT_FILE, mixdpo_frame


def export_trl(split: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write dpo.jsonl and sft.jsonl for the split file ``split`` into ``out_dir``.

    Reads the split lazily and streams each file, so memory stays bounded on large splits. Both
    files are always written (an empty file when no pair took that route).
    """
    out_dir = Path(out_dir)
    ordered = mixdpo_frame(pl.scan_parquet(split), where=split)
    dpo = ordered.filter(pl.col("route") == ROUTE_DPO).select("prompt", "chosen", "rejected")
    sft = ordered.filter(pl.col("route") == ROUTE_SFT).select(
        "prompt", pl.col("chosen").alias("completion")
    )
    files = {"dpo": out_dir / DPO_FILE, "sft": out_dir / SFT_FILE}
    for name, query in (("dpo", dpo), ("sft", sft)):
        query.sink_ndjson(files[name], maintain_order=True)
    return files


def export_trl_mixdpo(split: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write mixdpo.jsonl: every pair of ``split`` in rank order, with its route and rank.

    Columns :data:`MIXDPO_COLUMNS`; ``datasets.load_dataset("json", data_files=...)`` reads it
    and :class:`prefcurate.integrations.trl.MixDPOTrainer` trains on it unchanged.
    """
    path = Path(out_dir) / MIXDPO_FILE
    mixdpo_frame(pl.scan_parquet(split), where=split).sink_ndjson(path, maintain_order=True)
    return {"mixdpo": path}
