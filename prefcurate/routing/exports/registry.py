"""``--export NAME``: which engine's files a split gets, and the one call that writes them.

* ``trl`` / ``trl-mixdpo`` — :mod:`prefcurate.routing.exports.trl`
* ``llamafactory`` — :mod:`prefcurate.routing.exports.llamafactory`
* ``openrlhf`` — :mod:`prefcurate.routing.exports.openrlhf`
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from prefcurate.base.errors import InputError
from prefcurate.data.schema import WEIGHT_COLUMN
from prefcurate.routing.exports.llamafactory import export_llamafactory
from prefcurate.routing.exports.openrlhf import export_openrlhf
from prefcurate.routing.exports.trl import export_trl, export_trl_mixdpo

Exporter = Callable[[Path, Path], dict[str, Path]]


def _llamafactory(split: Path, out_dir: Path) -> dict[str, Path]:
    return export_llamafactory(split, out_dir / "llamafactory")


def _openrlhf(split: Path, out_dir: Path) -> dict[str, Path]:
    return export_openrlhf(split, out_dir / "openrlhf")


#: The engines that weight each pair's loss by the split's ``weight`` column (``route --soft``).
WEIGHTED = frozenset({"trl-mixdpo"})

#: ``--export`` name → writer of its files into the split directory (a tool's own subfolder
#: where the tool reads a whole folder).
EXPORTS: dict[str, Exporter] = {
    "trl": export_trl,
    "trl-mixdpo": export_trl_mixdpo,
    "llamafactory": _llamafactory,
    "openrlhf": _openrlhf,
}


def check_export(name: str | None, *, weighted: bool = False) -> None:
    """Refuse an unknown ``--export`` name, or a soft-routed split (``weighted``) for an engine
    that cannot weight pairs, before anything is written."""
    if name is None:
        return
    if name not in EXPORTS:
        raise InputError(
            f"--export must be one of {', '.join(EXPORTS)}, got {name!r}",
            fix="pick one of the listed formats",
        )
    if weighted and name not in WEIGHTED:
        raise InputError(
            f"--export {name} cannot weight pairs: the soft routing (--soft, the weight column) "
            "would be lost and each pair trained by its hard route",
            fix="export trl-mixdpo (MixDPOTrainer reads the weights), or route without --soft",
        )


def export_split(name: str, split: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write the ``--export name`` files for ``split`` (a train.parquet) into ``out_dir``."""
    check_export(name, weighted=WEIGHT_COLUMN in pl.read_parquet_schema(split))
    return EXPORTS[name](Path(split), Path(out_dir))
