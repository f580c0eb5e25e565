"""``prefcurate route``'s output folder: the split files and plan.json, with its figures.

:func:`prefcurate.routing.writer.write_split_files` writes what the plan decided; the figures of the
routed pairs (analyze's PNGs with τ and the SFT region marked) are drawn here, into the same folder
before it is swapped in, so a split and its figures appear together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefcurate.base.atomic import atomic_dir
from prefcurate.data.narrow import NARROW_COLUMNS
from prefcurate.reporting.analyze import analyze_frame
from prefcurate.reporting.plots import write_plots
from prefcurate.routing.exports.registry import check_export
from prefcurate.routing.plan import RoutePlan
from prefcurate.routing.writer import write_split_files


def route_dir(
    plan: RoutePlan,
    out_dir: str | Path,
    *,
    force: bool = False,
    export: str | Sequence[str] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write the split of ``plan`` into the new folder ``out_dir`` (atomically); return plan.json.

    ``plots`` adds the figures of the routed pairs (:func:`split_plots`).
    """
    check_export(export, weighted=plan.soft is not None)
    with atomic_dir(Path(out_dir), force=force, kind="route") as tmp:
        document = write_split_files(plan, tmp, export=export)
        if plots:
            split_plots(plan, tmp)
    return document


def split_plots(plan: RoutePlan, directory: Path) -> list[Path]:
    """The analyze plots of the routed pairs (train and eval), with τ and the SFT region marked."""
    kept = plan.narrow.select(NARROW_COLUMNS)[plan.keys.get_column("_pos").sort()]
    report = analyze_frame(kept, layout=plan.layout, threshold=plan.threshold)
    return write_plots(report, directory, threshold=plan.threshold)
