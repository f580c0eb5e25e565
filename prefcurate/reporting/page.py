"""Render an :class:`~prefcurate.reporting.inspection.Inspection` as one self-contained HTML page.

The charts are Plotly figures (built and validated with ``plotly.graph_objects``, drawn by
plotly.js, which is inlined: the page opens from disk with no network). The page's own script
(``page_assets/inspect.js``) only does what no chart library does: the pair browser and the τ
control. All text from the data reaches the page as JSON inside a
``<script type="application/json">`` element with ``<``, ``>`` and ``&`` escaped, and the script
writes it with ``textContent``, so a pair holding ``<script>`` or HTML shows as text, never runs.
The server-rendered summary goes through :func:`html.escape`. Example::

    >>> seen = inspect_source(open_pairs("../shared/data/ultrafeedback_1k.jsonl"))  # doctest: +SKIP
    >>> write_page(seen, "inspect.html")                                  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from prefcurate.base.atomic import atomic_file
from prefcurate.data.narrow import UNROUTABLE_LABELS, describe_unroutable, unroutable_counts
from prefcurate.reporting.analyze import Histogram, Report
from prefcurate.reporting.figures import (
    histogram_figure,
    length_figure,
    ratings_figure,
    sources_figure,
)
from prefcurate.reporting.inspection import TEXT_LIMIT, Inspection
from prefcurate.reporting.palette import DPO_COLOR, SFT_COLOR
from prefcurate.reporting.terminal import FLAG_HELP, fmt

MIXED_COLOR = "#9aa5b1"
_CONFIG = {"displaylogo": False, "responsive": True}

#: Marks a page this module wrote: ``inspect`` replaces such a file without ``--force``.
GENERATOR = "prefcurate inspect"


def write_page(
    inspection: Inspection, out: str | Path, *, run: dict[str, Any] | None = None
) -> Path:
    """Write the page for ``inspection`` (and a run's figures, see
    :func:`prefcurate.reporting.runstats.run_figures`) to ``out``, atomically."""
    out = Path(out)
    with atomic_file(out) as tmp:
        tmp.write_text(render_page(inspection, run=run), encoding="utf-8")
    return out


def render_page(inspection: Inspection, *, run: dict[str, Any] | None = None) -> str:
    """The page's HTML text (deterministic: the same inspection gives the same bytes)."""
    from plotly.offline import get_plotlyjs

    report = inspection.report
    data = page_data(inspection, run=run)
    title = f"prefcurate inspect · {(report.input or {}).get('path', 'data')}"
    css = _asset("inspect.css")
    js = _asset("inspect.js")
    body = "\n".join(
        [
            _header(inspection),
            _summary(report),
            _routing_section(inspection),
            _histogram_section(report),
            _pairs_section(inspection),
            _figures_section(data["figures"]),
            _run_section(run),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="{GENERATOR}">\n'
        f"<title>{_e(title)}</title>\n<style>\n{css}\n</style>\n"
        f"<script>{get_plotlyjs()}</script>\n</head>\n<body>\n{body}\n"
        f'<script type="application/json" id="page-data">{script_json(data)}</script>\n'
        f"<script>\n{js}\n</script>\n</body>\n</html>\n"
    )


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` survive as such."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def page_data(inspection: Inspection, *, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the page's script reads: samples, τ table, histogram and the Plotly figures."""
    report = inspection.report
    samples = inspection.samples
    columns = list(samples.columns)
    rows = [list(r) for r in samples.iter_rows()] if samples.height else []
    t = inspection.thresholds
    figures = {
        "histogram": histogram_figure(report),
        "ratings": ratings_figure(inspection.ratings),
        "length": length_figure(report.histogram, inspection.length_by_bin),
        "sources": sources_figure(inspection.source_margins),
    }
    if run is not None:
        figures.update(run.get("figures", {}))
    hist = report.histogram
    return {
        "histogram": None if hist is None else _hist_dict(hist),
        "null_margins": report.margin.null,
        "dropped": describe_unroutable(unroutable_counts(report.frame))
        if report.frame is not None
        else "",
        "dropped_labels": UNROUTABLE_LABELS,
        "thresholds": None
        if t is None
        else {
            "values": t.values,
            "sft": t.sft,
            "dpo": t.dpo,
            "by_source": t.by_source,
            "rows_by_source": t.rows_by_source,
            "initial": t.initial,
        },
        "samples": {"columns": columns, "rows": _json_rows(rows)},
        "samples_per_bin": inspection.samples_per_bin,
        "seed": inspection.seed,
        "text_limit": TEXT_LIMIT,
        "colors": {"sft": SFT_COLOR, "dpo": DPO_COLOR, "mixed": MIXED_COLOR},
        "figures": {k: v for k, v in figures.items() if v is not None},
        "config": _CONFIG,
    }


# --------------------------------------------------------------------------------------------------
# server-rendered sections (every data value escaped)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _header(inspection: Inspection) -> str:
    report = inspection.report
    info = report.input or {}
    extra = inspection.extra.get("header")
    return (
        "<header><h1>prefcurate inspect</h1>"
        f'<p class="path">{_e(info.get("path", "data"))}</p>'
        f"<p><b>{report.rows:,} pairs</b> · "
        f"{_e(inspection.description or 'layout ' + report.layout)}</p>"
        + (f"<p>{_e(extra)}</p>" if extra else "")
        + "</header>"
    )


def _share(part: int | None, whole: int) -> str:
    return "–" if part is None or not whole else f"{part / whole:.1%}"


def _summary(report: Report) -> str:
    m, f, lengths = report.margin, report.flags, report.lengths
    cards = [
        ("pairs", f"{report.rows:,}", report.layout),
        ("ties (margin = 0)", fmt(m.ties), _share(m.ties, m.count)),
        ("label inversions (margin < 0)", fmt(m.negative), _share(m.negative, m.count)),
        ("identical chosen = rejected", fmt(f.identical), _share(f.identical, report.rows)),
        ("duplicate pairs", fmt(f.duplicate_pairs), _share(f.duplicate_pairs, report.rows)),
        (
            "chosen longer",
            "–" if lengths.chosen_longer_share is None else f"{lengths.chosen_longer_share:.1%}",
            "corr(margin, length diff) "
            + (
                "n/a"
                if lengths.margin_length_corr is None
                else f"{lengths.margin_length_corr:+.3f}"
            ),
        ),
    ]
    card_html = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="s">{_e(s)}</div></div>'
        for k, v, s in cards
    )
    names = ["count", "null", "min", "p05", "p25", "median", "p75", "p95", "max", "mean"]
    quant = (
        '<table class="num"><tr>'
        + "".join(f"<th>{n}</th>" for n in names)
        + "</tr><tr>"
        + "".join(f"<td>{_e(fmt(getattr(m, n)))}</td>" for n in names)
        + "</tr></table>"
    )
    flag_rows = "".join(
        f'<tr class="{"warn" if count else ""}"><td>{_e(name)}</td><td>{count:,}</td>'
        f"<td>{_share(count, report.rows)}</td><td>{_e(FLAG_HELP.get(name, ''))}</td></tr>"
        for name, count in vars(f).items()
    )
    length_rows = (
        f"<tr><td>prompt</td><td>{fmt(lengths.prompt_chars_mean, 0)}</td><td></td></tr>"
        f"<tr><td>chosen</td><td>{fmt(lengths.chosen_chars_mean, 0)}</td>"
        f"<td>{fmt(lengths.chosen_chars_median, 0)}</td></tr>"
        f"<tr><td>rejected</td><td>{fmt(lengths.rejected_chars_mean, 0)}</td>"
        f"<td>{fmt(lengths.rejected_chars_median, 0)}</td></tr>"
    )
    hint = f'<p class="hint">{_e(report.hint)}</p>' if report.hint else ""
    return (
        '<section id="summary"><h2>Summary (as <code>prefcurate analyze</code>)</h2>'
        f'<div class="cards">{card_html}</div>{hint}'
        f"<h3>margin</h3>{quant}"
        '<div class="cols"><div><h3>flags</h3><table><tr><th>flag</th><th>pairs</th>'
        f"<th>share</th><th>meaning</th></tr>{flag_rows}</table></div>"
        '<div><h3>lengths (characters)</h3><table class="num"><tr><th></th><th>mean</th>'
        f"<th>median</th></tr>{length_rows}</table></div></div></section>"
    )


def _routing_section(inspection: Inspection) -> str:
    t = inspection.thresholds
    if t is None:
        return (
            '<section id="routing"><h2>Routing</h2><p>No margins: nothing to route. '
            "Compute margins with <code>prefcurate score</code>.</p></section>"
        )
    report = inspection.report
    source_table = ""
    if t.by_source:
        rows = "".join(
            f'<tr data-source="{_e(name)}"><td>{_e(name)}</td><td>{n:,}</td>'
            '<td class="src-sft"></td><td class="src-share"></td></tr>'
            for name, n in t.rows_by_source.items()
        )
        source_table = (
            '<h3>per source</h3><table id="source-table" class="num"><tr><th>source</th>'
            f"<th>pairs with a margin</th><th>to SFT</th><th>SFT share</th></tr>{rows}</table>"
        )
    picked = ""
    if report.routing is not None and report.routing.sft_fraction is not None:
        picked = f" (τ picked for --sft-fraction {report.routing.sft_fraction:g})"
    return (
        '<section id="routing"><h2>Routing: SFT below τ, DPO from τ up</h2>'
        '<div class="tau"><label for="tau">τ</label>'
        f'<input type="range" id="tau" min="0" max="{len(t.values) - 1}" step="1" value="0">'
        '<output id="tau-value"></output>'
        f'<span class="dim">{_e(picked)}</span></div>'
        '<p id="routing-line" class="routing"></p>'
        '<div class="bar" id="share-bar"><div id="share-sft"></div><div id="share-dpo"></div></div>'
        '<p class="dim">A pair goes to SFT when its margin is strictly below τ (analyze\'s '
        "definition); pairs without a margin are not routed, and route drops the pairs with "
        "chosen = rejected or an empty chosen response whatever τ.</p>"
        f"{source_table}</section>"
    )


def _histogram_section(report: Report) -> str:
    if report.histogram is None:
        return ""
    return (
        '<section id="histogram"><h2>Margin histogram</h2>'
        '<div id="fig-histogram" class="fig"></div></section>'
    )


def _pairs_section(inspection: Inspection) -> str:
    hist = inspection.report.histogram
    range_inputs = ""
    if hist is not None:
        lo, hi = hist.edges[0], hist.edges[-1]
        range_inputs = (
            '<form id="range-form" class="range">margin from '
            f'<input type="number" id="range-lo" step="any" value="{lo:g}"> to '
            f'<input type="number" id="range-hi" step="any" value="{hi:g}"> '
            '<button type="submit">show pairs</button></form>'
        )
    return (
        '<section id="pairs"><h2>Pairs</h2>'
        f'<p class="dim">Up to {inspection.samples_per_bin} pairs per histogram bin, drawn with '
        f"seed {inspection.seed} (the same pairs on every run). Click a bar of the histogram or "
        "choose a margin range. Texts longer than "
        f"{TEXT_LIMIT:,} characters are cut; long texts are folded.</p>"
        f'{range_inputs}<p id="pairs-title" class="routing"></p>'
        '<div id="pairs-list"></div></section>'
    )


def _figures_section(figures: dict[str, Any]) -> str:
    parts = []
    for key, title in (
        ("ratings", "Chosen × rejected ratings"),
        ("length", "Margin vs length difference"),
        ("sources", "Margins per source"),
    ):
        if key in figures:
            parts.append(f'<div><h3>{title}</h3><div id="fig-{key}" class="fig"></div></div>')
    if not parts:
        return ""
    return '<section id="figures"><h2>Figures</h2>' + "".join(parts) + "</section>"


def _run_section(run: dict[str, Any] | None) -> str:
    if run is None:
        return ""
    notes = "".join(f'<p class="dim">{_e(n)}</p>' for n in run.get("notes", []))
    figs = "".join(f'<div id="fig-{key}" class="fig"></div>' for key in run.get("figures", {}))
    return (
        f'<section id="run"><h2>Training run: {_e(run.get("name"))}</h2>'
        f"<p>{_e(run.get('summary', ''))}</p>{notes}{figs}</section>"
    )


# --------------------------------------------------------------------------------------------------
# helpers


def _hist_dict(hist: Histogram) -> dict[str, Any]:
    return {
        "edges": hist.edges,
        "counts": hist.counts,
        "width": hist.width,
        "grid": hist.grid,
        "labels": [hist.label(i) for i in range(len(hist.counts))],
    }


def _json_rows(rows: list[list[Any]]) -> list[list[Any]]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return [[clean(v) for v in row] for row in rows]


def _asset(name: str) -> str:
    assets = resources.files("prefcurate.reporting").joinpath("page_assets")
    return assets.joinpath(name).read_text(encoding="utf-8")
