"""``--export NAME[,NAME...]``: which engines' files a split gets, and the call that writes them.

* ``trl`` / ``trl-mixdpo`` — :mod:`prefcurate.routing.exports.trl`
* ``llamafactory`` — :mod:`prefcurate.routing.exports.llamafactory`
* ``openrlhf`` — :mod:`prefcurate.routing.exports.openrlhf`

Several engines at once are one run: ``--export trl,openrlhf`` or ``--export trl --export
openrlhf``. Their files never collide (TRL's sit in the split folder under distinct names, the
others in a subfolder each), so every name asked for is written; a name given twice is written
once (:func:`export_names`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from prefcurate.base.errors import InputError
from prefcurate.routing.exports.common import SplitFiles
from prefcurate.routing.exports.llamafactory import export_llamafactory
from prefcurate.routing.exports.openrlhf import export_openrlhf
from prefcurate.routing.exports.trl import export_trl, export_trl_mixdpo

Exporter = Callable[[SplitFiles, Path], dict[str, Path]]


def _llamafactory(split: SplitFiles, out_dir: Path) -> dict[str, Path]:
    return export_llamafactory(split, out_dir / "llamafactory")


def _openrlhf(split: SplitFiles, out_dir: Path) -> dict[str, Path]:
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


def export_names(export: str | Sequence[str] | None) -> tuple[str, ...]:
    """The engines ``--export`` asks for, in the order first given, each once.

    ``export`` is one value or several (a repeated flag); each value may list names separated by
    commas (``"trl,openrlhf"``). A name given twice is merged into one; blanks around names are
    ignored. An unknown or empty name is an :class:`~prefcurate.base.errors.InputError`.
    """
    values = [export] if isinstance(export, str) else list(export or ())
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name not in EXPORTS:
                raise InputError(
                    f"--export must be one of {', '.join(EXPORTS)} (or several, comma-separated), "
                    f"got {name!r}",
                    fix="pick from the listed formats, e.g. --export trl-mixdpo,llamafactory",
                )
            if name not in names:
                names.append(name)
    return tuple(names)


def check_export(export: str | Sequence[str] | None, *, weighted: bool = False) -> tuple[str, ...]:
    """The engines asked for (:func:`export_names`); refuse a soft-routed split (``weighted``)
    for an engine that cannot weight pairs, before anything is written."""
    names = export_names(export)
    for name in names:
        if weighted and name not in WEIGHTED:
            raise InputError(
                f"--export {name} cannot weight pairs: the soft routing (--soft, the weight "
                "column) would be lost and each pair trained by its hard route",
                fix="export trl-mixdpo (MixDPOTrainer reads the weights), or route without --soft",
            )
    return names


def export_split(
    export: str | Sequence[str], split: SplitFiles | str | Path, out_dir: str | Path
) -> dict[str, dict[str, Path]]:
    """Write the files of every engine ``export`` names for ``split`` into ``out_dir``.

    ``split`` is a split folder, its train.parquet, or a :class:`SplitFiles`. Returns, by
    engine, the paths it wrote by name (``{"trl": {"dpo": ..., "dpo_eval": ...}, ...}``).
    """
    import polars as pl

    from prefcurate.data.schema import WEIGHT_COLUMN

    split = SplitFiles.of(split)
    names = check_export(export, weighted=WEIGHT_COLUMN in pl.read_parquet_schema(split.train))
    return {name: EXPORTS[name](split, Path(out_dir)) for name in names}
