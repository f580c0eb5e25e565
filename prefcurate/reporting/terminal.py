"""Render an analyze :class:`~prefcurate.reporting.analyze.Report` with rich; nothing computed.

The layout reads top to bottom the way a user checks a dataset: what was read, how the margins are
distributed (table and a bar histogram with the τ cut), what τ would route, lengths and length
bias, flags worth a look, and a per-source table. Example::

    >>> from rich.console import Console
    >>> render_report(report, Console())   # doctest: +SKIP
"""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from prefcurate.data.narrow import EMPTY_CHOSEN, IDENTICAL, describe_unroutable
from prefcurate.reporting.analyze import Histogram, Report, Routing

SFT_STYLE = "dark_orange"
DPO_STYLE = "steel_blue"
NEUTRAL_STYLE = "grey62"
BAR_WIDTH = 40
_EIGHTHS = " ▏▎▍▌▋▊▉"

#: What each flag means, in the words shown next to its count.
FLAG_HELP: dict[str, str] = {
    "identical": "chosen == rejected",
    "empty": "some field empty (the three below)",
    "empty_prompt": "blank prompt",
    "empty_chosen": "blank chosen",
    "empty_rejected": "blank rejected",
    "duplicate_pairs": "repeats an earlier pair",
    "duplicate_prompts": "repeats an earlier prompt",
    "history_mismatch": "chosen/rejected histories differ",
}


def render_report(report: Report, console: Console, *, description: str | None = None) -> None:
    """Print ``report`` to ``console``; ``description`` is the detected-layout line to show."""
    for i, part in enumerate(report_renderables(report, description=description)):
        if i:
            console.print()
        console.print(part)


def report_renderables(report: Report, *, description: str | None = None) -> list[RenderableType]:
    """The report as a list of rich renderables (a notebook can display them one by one)."""
    parts: list[RenderableType] = [_header(report, description)]
    parts.append(_margin_section(report))
    if report.histogram is not None:
        parts.append(histogram_text(report.histogram, threshold=_threshold(report)))
    if report.routing is not None:
        parts.append(_routing(report))
    parts.append(_lengths(report))
    parts.append(_flags(report))
    if report.sources:
        parts.append(_sources(report))
    if report.hint:
        parts.append(Text.assemble(("hint: ", "bold yellow"), (report.hint, "yellow")))
    return parts


# --------------------------------------------------------------------------------------------------
# sections


def _header(report: Report, description: str | None) -> RenderableType:
    path = (report.input or {}).get("path", "data")
    title = Text.assemble(
        (str(path), "bold"),
        "  ",
        (f"{report.rows:,} pairs", "bold cyan"),
        # the description line names the layout with its columns; say it once
        *(() if description else ("  layout ", (report.layout, "bold"))),
    )
    lines: list[RenderableType] = [title]
    if description:
        lines.append(Text(description, style="dim"))
    return Panel(Group(*lines), expand=False, border_style="cyan")


def _margin_section(report: Report) -> RenderableType:
    m = report.margin
    if m.count == 0:
        return Text.assemble(
            ("margin  ", "bold"), (f"none: all {report.rows:,} pairs lack a margin", "yellow")
        )
    names = ["count", "null", "min", "p05", "p25", "median", "p75", "p95", "max", "mean"]
    table = _FittedRow("margin", names, [fmt(getattr(m, name), significant=5) for name in names])
    ties = Text.assemble(
        ("ties (margin = 0) ", "bold"),
        f"{m.ties:,} ({_share(m.ties, m.count)})",
        "   ",
        ("negative (label inversions) ", "bold"),
        (f"{m.negative:,} ({_share(m.negative, m.count)})", "yellow" if m.negative else ""),
    )
    return Group(table, ties)


def histogram_text(
    hist: Histogram, *, threshold: float | None = None, width: int = BAR_WIDTH
) -> Text:
    """Horizontal bars, SFT bins orange, with a τ line between the two routes.

    Runs of three or more nearly empty bins at either end (each under 0.5% of the pairs, such as a
    thin tail of label inversions) are shown as one row naming their range, so the bulk stays
    readable; the figures in report.json keep every bin.
    """
    rows = _histogram_rows(hist, threshold)
    total = sum(hist.counts) or 1
    peak = max(row[2] for row in rows) or 1
    labels = [_range_label(hist, first, last) for first, last, _, _ in rows]
    pad = max(len(label) for label in labels)
    digits = len(f"{peak:,}")
    out = Text()
    out.append("margin histogram", style="bold")
    out.append(f"  ({total:,} pairs, bins of {fmt(hist.width)})\n", style="dim")
    cut_line = f"{'':>{pad}} ┼{'╌' * (width + 2)} τ = {fmt(threshold)}\n"
    drew_cut = threshold is None or hist.cut is None
    for label, (_, _, count, sft) in zip(labels, rows, strict=True):
        if not drew_cut and not sft:
            out.append(cut_line, style="red")
            drew_cut = True
        style = SFT_STYLE if sft else (NEUTRAL_STYLE if threshold is None else DPO_STYLE)
        out.append(f"{label:>{pad}} │", style="dim")
        out.append(_bar(count / peak * width, nonzero=count > 0).ljust(width), style=style)
        out.append(f" {count:>{digits},} ")
        out.append(f"{count / total:6.1%}\n", style="dim")
    if not drew_cut:  # every bin is SFT: the cut lies above the last bin
        out.append(cut_line, style="red")
    out.rstrip()
    return out


_TAIL_SHARE = 0.005


def _histogram_rows(hist: Histogram, threshold: float | None) -> list[tuple[int, int, int, bool]]:
    """(first bin, last bin, count, is SFT) per row, thin end runs merged (never across τ)."""
    cut = hist.cut if threshold is not None else None
    rows = [
        (i, i, count, cut is not None and hist.edges[i + 1] <= cut + 1e-9)
        for i, count in enumerate(hist.counts)
    ]
    thin = _TAIL_SHARE * sum(hist.counts)

    def merge_head(rows: list) -> list:
        k = 0
        while k < len(rows) - 1 and rows[k][2] < thin and rows[k][3] == rows[0][3]:
            k += 1
        if k < 3:
            return rows
        run = rows[:k]
        return [(run[0][0], run[-1][1], sum(r[2] for r in run), run[0][3]), *rows[k:]]

    rows = merge_head(rows)
    tail = merge_head([(last, first, c, sft) for first, last, c, sft in reversed(rows)])
    return [(first, last, c, sft) for last, first, c, sft in reversed(tail)]


def _routing(report: Report) -> RenderableType:
    r = report.routing
    routed = r.sft + r.dpo
    picked = ""
    if r.sft_fraction is not None:
        picked = f" (picked for --sft-fraction {fmt(r.sft_fraction)})"
    line = Text.assemble(
        ("routing  ", "bold"),
        f"τ = {fmt(r.threshold)}",
        picked,
        ": ",
        (f"{_pairs(r.sft)} ({_share(r.sft, routed)}) to SFT", f"bold {SFT_STYLE}"),
        ", ",
        (f"{r.dpo:,} ({_share(r.dpo, routed)}) to DPO", f"bold {DPO_STYLE}"),
        (f"; {r.unrouted:,} without a margin are not routed" if r.unrouted else ""),
        (f"; route drops {_dropped(r)}" if r.identical or r.empty_chosen else ""),
        "\n         order: mixdpo reads largest margin first; dpo, a seeded shuffle",
    )
    return line


def _dropped(r: Routing) -> str:
    return describe_unroutable({IDENTICAL: r.identical, EMPTY_CHOSEN: r.empty_chosen})


def _lengths(report: Report) -> RenderableType:
    lengths = report.lengths
    table = Table(title="lengths (characters)", title_justify="left", title_style="bold", box=None)
    table.add_column("")
    table.add_column("mean", justify="right")
    table.add_column("median", justify="right")
    table.add_row("prompt", fmt(lengths.prompt_chars_mean, 0), "")
    table.add_row("chosen", fmt(lengths.chosen_chars_mean, 0), fmt(lengths.chosen_chars_median, 0))
    table.add_row(
        "rejected", fmt(lengths.rejected_chars_mean, 0), fmt(lengths.rejected_chars_median, 0)
    )
    longer = lengths.chosen_longer_share
    corr = lengths.margin_length_corr
    bias = Text.assemble(
        ("length bias  ", "bold"),
        "chosen longer in ",
        ("n/a" if longer is None else f"{longer:.1%}", "bold"),
        " of pairs\n             correlation of margin with chosen − rejected length: ",
        ("n/a" if corr is None else f"{corr:+.3f}", "bold"),
    )
    return Group(table, bias)


def _flags(report: Report) -> RenderableType:
    table = Table(title="flags", title_justify="left", title_style="bold", box=None)
    table.add_column("flag")
    table.add_column("pairs", justify="right")
    table.add_column("share", justify="right")
    table.add_column("meaning", style="dim")
    for name, count in vars(report.flags).items():
        style = "yellow" if count else ""
        table.add_row(
            Text(name, style=style),
            Text(f"{count:,}", style=style),
            _share(count, report.rows),
            FLAG_HELP.get(name, ""),
        )
    return table


def _sources(report: Report) -> RenderableType:
    routed = report.routing is not None
    table = Table(title="sources", title_justify="left", title_style="bold", box=None)
    for name, justify in (
        ("source", "left"),
        ("pairs", "right"),
        ("share", "right"),
        ("margin mean", "right"),
        ("median", "right"),
        ("ties", "right"),
    ):
        table.add_column(name, justify=justify)
    if routed:
        table.add_column("to SFT", justify="right")
    for s in report.sources:
        row = [
            "(none)" if s.source is None else s.source,
            f"{s.rows:,}",
            _pct(s.share),
            fmt(s.margin_mean, 2),
            fmt(s.margin_median),
            "" if s.ties is None else f"{s.ties:,}",
        ]
        if routed:
            row.append("" if s.sft is None else f"{s.sft:,} ({_pct(s.sft_share)})")
        table.add_row(*row)
    return table


# --------------------------------------------------------------------------------------------------
# formatting


def _threshold(report: Report) -> float | None:
    return report.routing.threshold if report.routing is not None else None


def _range_label(hist: Histogram, first: int, last: int) -> str:
    """A row's label: the margin value on a grid, its range if the row spans several values."""
    lo, hi = hist.edges[first], hist.edges[last + 1]
    if hist.grid is None:
        return f"[{fmt(lo)}, {fmt(hi)})"
    low, high = round(lo + hist.grid / 2, 10), round(hi - hist.grid / 2, 10)
    return fmt(low) if low == high else f"{fmt(low)}…{fmt(high)}"


def _bar(length: float, *, nonzero: bool) -> str:
    whole = int(length)
    eighths = int(round((length - whole) * 8))
    if eighths == 8:
        whole, eighths = whole + 1, 0
    bar = "█" * whole + (_EIGHTHS[eighths] if eighths else "")
    return bar or ("▏" if nonzero else "")


class _FittedRow:
    """One titled row of figures; on a console too narrow for it, two rows, never a cut figure.

    (Rich shrinks a table wider than the console by cutting cells: ``0.002…``.)
    """

    def __init__(self, title: str, names: list[str], cells: list[str]):
        self.title, self.names, self.cells = title, names, cells

    def _table(self, title: str | None, names: list[str], cells: list[str]) -> Table:
        table = Table(title=title, title_justify="left", title_style="bold", box=None)
        for name in names:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_row(*cells)
        return table

    def __rich_console__(self, console, options):
        need = sum(max(len(n), len(c)) + 2 for n, c in zip(self.names, self.cells, strict=True))
        if need <= options.max_width:
            yield self._table(self.title, self.names, self.cells)
            return
        half = (len(self.names) + 1) // 2
        yield self._table(self.title, self.names[:half], self.cells[:half])
        yield self._table(None, self.names[half:], self.cells[half:])


def fmt(
    value: float | int | None, digits: int | None = None, *, significant: int | None = None
) -> str:
    """A figure as the report and the page print it: "–" for none, thousands separated."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if digits is not None:
        return f"{value:,.{digits}f}"
    if significant is not None:
        return f"{value:.{significant}g}"
    return f"{value:g}"


def _pairs(n: int) -> str:
    return f"{n:,} pair" if n == 1 else f"{n:,} pairs"


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share:.1%}"


def _share(part: int | None, whole: int) -> str:
    if part is None or not whole:
        return "–"
    return f"{part / whole:.1%}"


def print_json(report: Report) -> None:
    """report.json to stdout, nothing else (for ``--json`` and pipes)."""
    import sys

    sys.stdout.write(report.to_json())
    sys.stdout.flush()
