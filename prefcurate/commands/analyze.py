"""``prefcurate analyze --out``: report.json, the PNG plots and the inspect page in one folder.

The figures are computed by :mod:`prefcurate.reporting.analyze` (or, with the page's samples, by
:mod:`prefcurate.reporting.inspection`); this module only decides what the folder holds and makes
it appear whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefcurate.base.atomic import atomic_dir
from prefcurate.reporting.analyze import Report
from prefcurate.reporting.inspection import Inspection
from prefcurate.reporting.page import write_page
from prefcurate.reporting.plots import write_plots


def write_report_dir(
    report: Report,
    out: str | Path,
    *,
    force: bool = False,
    threshold: float | None = None,
    on_written: Callable[[Path], None] | None = None,
    inspection: Inspection | None = None,
) -> list[str]:
    """Write ``report.json`` and the PNG plots into the folder ``out``, all or nothing.

    The folder is built aside and swapped in whole (:func:`prefcurate.base.atomic.atomic_dir`); an
    existing ``out`` needs ``force``. Returns the names written, report.json first. With an
    ``inspection`` (:func:`prefcurate.reporting.inspection.inspect_source`, whose report is
    ``report``) the folder also gets ``index.html``, the inspect page.
    """
    with atomic_dir(out, force=force, kind="analyze") as tmp:
        (tmp / "report.json").write_text(report.to_json(), encoding="utf-8")
        written = write_plots(report, tmp, threshold=threshold, on_written=on_written)
        if inspection is not None:
            written.append(write_page(inspection, tmp / "index.html"))
    return ["report.json", *(p.name for p in written)]
