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

    >>> from prefcurate.routing.exports import export_trl
    >>> export_trl("out/uf-mixdpo/train.parquet", "out/uf-mixdpo")   # doctest: +SKIP
    {'dpo': PosixPath('out/uf-mixdpo/dpo.jsonl'), 'sft': PosixPath('out/uf-mixdpo/sft.jsonl')}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.data.schema import ROUTE_DPO, ROUTE_SFT

DPO_FILE = "dpo.jsonl"
SFT_FILE = "sft.jsonl"
MIXDPO_FILE = "mixdpo.jsonl"
#: The columns of mixdpo.jsonl, in order.
MIXDPO_COLUMNS: tuple[str, ...] = (
    "pair_id",
    "prompt",
    "chosen",
    "rejected",
    "margin",
    "route",
    "rank",
)


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


def mixdpo_frame(frame: pl.LazyFrame, *, where: object) -> pl.LazyFrame:
    """The routed pairs of a split in rank order, columns :data:`MIXDPO_COLUMNS`.

    A missing prompt becomes ``""`` (or ``[]`` for conversations), as the trainers expect; a
    split without route or rank columns is an :class:`~prefcurate.base.errors.InputError`.
    """
    schema = frame.collect_schema()
    missing = [c for c in ("route", "rank", "prompt", "chosen", "rejected") if c not in schema]
    if missing:
        raise InputError(
            f"not a routed split: no {', '.join(repr(c) for c in missing)} column",
            where=where,
            fix="pass a split written by 'prefcurate route'",
        )
    prompt = pl.col("prompt")
    if isinstance(schema["chosen"], pl.List):
        prompt = prompt.fill_null(pl.lit([], dtype=schema["prompt"]))
    else:
        prompt = prompt.fill_null("")
    columns = {
        "pair_id": pl.col("pair_id") if "pair_id" in schema else pl.lit(None, pl.String),
        "prompt": prompt,
        "chosen": pl.col("chosen"),
        "rejected": pl.col("rejected"),
        "margin": pl.col("margin") if "margin" in schema else pl.lit(None, pl.Float64),
        "route": pl.col("route"),
        "rank": pl.col("rank"),
    }
    return frame.sort("rank").select(columns[name].alias(name) for name in MIXDPO_COLUMNS)


Exporter = Callable[[Path, Path], dict[str, Path]]


def _llamafactory(split: Path, out_dir: Path) -> dict[str, Path]:
    from prefcurate.routing.exports.llamafactory import export_llamafactory

    return export_llamafactory(split, out_dir / "llamafactory")


def _openrlhf(split: Path, out_dir: Path) -> dict[str, Path]:
    from prefcurate.routing.exports.openrlhf import export_openrlhf

    return export_openrlhf(split, out_dir / "openrlhf")


#: ``--export`` name → writer of its files into the split directory (a tool's own subfolder
#: where the tool reads a whole folder).
EXPORTS: dict[str, Exporter] = {
    "trl": export_trl,
    "trl-mixdpo": export_trl_mixdpo,
    "llamafactory": _llamafactory,
    "openrlhf": _openrlhf,
}


def check_export(name: str | None) -> None:
    """Refuse an unknown ``--export`` name before anything is written."""
    if name is not None and name not in EXPORTS:
        raise InputError(
            f"--export must be one of {', '.join(EXPORTS)}, got {name!r}",
            fix="pick one of the listed formats",
        )


def export_split(name: str, split: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write the ``--export name`` files for ``split`` (a train.parquet) into ``out_dir``."""
    check_export(name)
    return EXPORTS[name](Path(split), Path(out_dir))
