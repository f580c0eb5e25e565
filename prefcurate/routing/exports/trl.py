"""Export a routed split in the layouts TRL's trainers read unchanged.

* ``trl-mixdpo`` — ``mixdpo.jsonl``: every pair in rank order with its ``route`` and ``rank``,
  the one file :class:`prefcurate.integrations.trl.MixDPOTrainer` reads (per-pair routing in TRL);
* ``trl`` — the two stages for TRL's own DPOTrainer and SFTTrainer:

  * ``dpo.jsonl`` — the DPO-routed pairs in curriculum (rank) order, one ``{"prompt", "chosen",
    "rejected"}`` object a line: TRL's *preference* format for ``DPOTrainer``;
  * ``sft.jsonl`` — the SFT-routed pairs in rank order, ``{"prompt", "completion"}`` with the
    chosen response as the completion: TRL's *prompt-completion* format for ``SFTTrainer``.

A split with held-out pairs (``route --eval-fraction``) gets the same files for them beside the
train ones: ``mixdpo_eval.jsonl``, ``dpo_eval.jsonl``, ``sft_eval.jsonl`` (each trainer's
``eval_dataset``). Standard data stays strings; conversational data stays conversational
(``prompt`` a list of ``{role, content}`` messages, ``chosen``/``rejected``/``completion`` lists
of assistant messages), so a chat template is applied by TRL, not baked in here. A conversational
pair without a prompt gets ``[]``. Bytes are deterministic: Polars' NDJSON writer, keys in a
fixed order. Example::

    >>> from prefcurate.routing.exports.trl import export_trl
    >>> export_trl("out/uf-mixdpo", "out/uf-mixdpo")   # doctest: +SKIP
    {'dpo': PosixPath('out/uf-mixdpo/dpo.jsonl'), 'sft': PosixPath('out/uf-mixdpo/sft.jsonl')}
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT
from prefcurate.routing.exports.common import SplitFiles, per_split, write_jsonl


def export_trl(split: SplitFiles | str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write dpo.jsonl and sft.jsonl (+ dpo_eval.jsonl, sft_eval.jsonl) into ``out_dir``.

    ``split`` is a split folder, its train.parquet, or a :class:`SplitFiles`. Both files of a
    split are always written (an empty file when no pair took that route).
    """

    def stages(pairs: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
        return {
            "dpo": pairs.filter(pl.col("route") == ROUTE_DPO).select(
                "prompt", "chosen", "rejected"
            ),
            "sft": pairs.filter(pl.col("route") == ROUTE_SFT).select(
                "prompt", pl.col("chosen").alias("completion")
            ),
        }

    written = write_jsonl(Path(out_dir), per_split(SplitFiles.of(split), stages))
    return {name: path for name, (path, _) in written.items()}


def export_trl_mixdpo(split: SplitFiles | str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write mixdpo.jsonl (+ mixdpo_eval.jsonl): every pair in rank order, with route and rank.

    Columns :data:`~prefcurate.routing.exports.common.MIXDPO_COLUMNS`;
    ``datasets.load_dataset("json", data_files=...)`` reads it and
    :class:`prefcurate.integrations.trl.MixDPOTrainer` trains on it unchanged.
    """
    written = write_jsonl(
        Path(out_dir), per_split(SplitFiles.of(split), lambda pairs: {"mixdpo": pairs})
    )
    return {name: path for name, (path, _) in written.items()}
