"""PNG figures of a report: the margin histogram, its CDF, margin vs length difference, lengths.

Every figure marks the SFT/DPO cut when a threshold τ is given (pairs with ``margin < τ`` go to SFT,
shaded), so ``route`` can reuse them to show its split. Figures are drawn on Matplotlib's Agg canvas
directly (no pyplot, no window, no global state) and saved without a timestamp or version stamp, so
the same input gives the same bytes. Example::

    >>> from prefcurate.reporting.analyze import analyze
    >>> report = analyze(source, threshold=0.5)          # doctest: +SKIP
    >>> write_plots(report, "out/")                      # doctest: +SKIP
    [PosixPath('out/margin_hist.png'), PosixPath('out/margin_cdf.png'), ...]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from prefcurate.data.narrow import describe_unroutable, unroutable_counts
from prefcurate.reporting.analyze import Histogram, Report
from prefcurate.reporting.analyze import histogram as make_histogram
from prefcurate.reporting.palette import (
    CUT_COLOR,
    DPO_COLOR,
    MARGIN_LABEL,
    NEUTRAL_COLOR,
    SFT_COLOR,
)

#: File names :func:`write_plots` writes (the margin plots only when the data has margins).
PLOT_FILES = ("margin_hist.png", "margin_cdf.png", "margin_vs_length.png", "lengths.png")

SCATTER_MAX_POINTS = 20_000  # above this, margin vs length is a 2-D histogram
_DPI = 110


def write_plots(
    report: Report,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    prefix: str = "",
    on_written: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write the report's figures as PNGs into ``out_dir``; return their paths.

    ``threshold`` defaults to the report's routing threshold. ``prefix`` is prepended to each file
    name (``route`` may write ``routed_margin_hist.png``); ``on_written(path)`` is called after each
    file (for a progress bar). Needs ``report.frame`` (set by
    :func:`~prefcurate.reporting.analyze.analyze` and
    :func:`~prefcurate.reporting.analyze.analyze_frame`).
    """
    if report.frame is None:
        msg = "the report has no frame to plot (build it with analyze or analyze_frame)"
        raise ValueError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reported = report.routing.threshold if report.routing is not None else None
    if threshold is None:
        threshold = reported
    frame = report.frame
    written: list[Path] = []

    def done(path: Path) -> None:
        written.append(path)
        if on_written is not None:
            on_written(path)

    rated = frame.filter(pl.col("margin").is_finite())  # drops nulls (and NaN in hand-made frames)
    if rated.height:
        margins = rated.get_column("margin").to_numpy()
        diff = (rated.get_column("chosen_chars") - rated.get_column("rejected_chars")).to_numpy()
        hist = report.histogram
        if hist is None or threshold != reported:  # the bins must put this τ on an edge
            hist = make_histogram(rated.get_column("margin"), threshold=threshold)
        done(
            margin_histogram(
                hist,
                out / f"{prefix}margin_hist.png",
                threshold=threshold,
                negative=report.margin.negative,
                dropped=unroutable_counts(frame) if threshold is not None else None,
            )
        )
        done(margin_cdf(margins, out / f"{prefix}margin_cdf.png", threshold=threshold))
        done(
            margin_vs_length(
                margins,
                diff,
                out / f"{prefix}margin_vs_length.png",
                threshold=threshold,
                corr=report.lengths.margin_length_corr,
                grid=hist.grid,
            )
        )
    done(
        lengths(
            frame.get_column("chosen_chars").to_numpy(),
            frame.get_column("rejected_chars").to_numpy(),
            out / f"{prefix}lengths.png",
        )
    )
    return written


# --------------------------------------------------------------------------------------------------
# the figures


def margin_histogram(
    hist: Histogram,
    path: str | Path,
    *,
    threshold: float | None = None,
    negative: int | None = None,
    dropped: dict[str, int] | None = None,
) -> Path:
    """Bars of ``hist`` (from :func:`prefcurate.reporting.analyze.histogram`), SFT bins in orange.

    ``negative`` (the count of negative margins) is named in the subtitle, since a few label
    inversions are invisible as bars next to hundreds of thousands of pairs; ``dropped`` (the
    pairs route drops whatever τ, by reason) too.
    """
    edges = np.asarray(hist.edges)
    counts = np.asarray(hist.counts)
    total = int(counts.sum())
    left, width = edges[:-1], np.diff(edges)
    centres = left + width / 2
    # Margins on a rating grid are discrete: one bar per value, centred on it and narrower than
    # the grid step, so τ's line (drawn at τ itself, as in every plot) sits between the values
    # below τ and the values at or above it.
    discrete = hist.grid is not None and np.allclose(width, hist.grid)
    bar_width = width * (0.7 if discrete else 1.0)
    fig, ax = _figure()
    colors, subtitle = _route_colors(ax, hist, threshold, dropped, discrete=discrete)
    ax.bar(
        centres, counts, width=bar_width, color=colors, edgecolor="white", linewidth=0.6, zorder=2
    )
    if counts.size <= 30:
        _label_bars(ax, centres, counts)
    if hist.grid is not None:
        _grid_ticks(ax, edges, hist.grid)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, max(1, counts.max()) * 1.22)
    if negative:
        subtitle += f"; {negative:,} pairs have a negative margin (label inversions)"
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_xlabel(MARGIN_LABEL)
    ax.set_ylabel("pairs")
    _title(ax, f"Margin histogram — {total:,} pairs", subtitle)
    return _save(fig, path)


def _route_colors(
    ax, hist: Histogram, threshold, dropped: dict[str, int] | None, *, discrete: bool
):
    """Each bar's colour (SFT bins orange, DPO blue, or neutral without τ), the legend and τ's
    line on ``ax``, and the subtitle that says what was cut."""
    edges, counts = np.asarray(hist.edges), np.asarray(hist.counts)
    if threshold is None or hist.cut is None:
        subtitle = f"bins of {_fmt(hist.width)}" + (
            f", centred on the {_fmt(hist.grid)} rating grid" if hist.grid else ""
        )
        return np.full(counts.size, NEUTRAL_COLOR), subtitle
    total = int(counts.sum())
    sft = edges[1:] <= hist.cut + 1e-9
    n_sft = int(counts[sft].sum())
    tau = _fmt(threshold)
    _mark_cut(ax, threshold, zorder=1.5 if discrete else 4)
    ax.legend(
        handles=[
            Patch(color=SFT_COLOR, label=f"SFT (margin < {tau}): {n_sft:,}"),
            Patch(color=DPO_COLOR, label=f"DPO (margin ≥ {tau}): {total - n_sft:,}"),
        ],
        loc="upper right",
        frameon=False,
    )
    subtitle = f"τ = {_fmt(threshold)}: {n_sft:,} pairs ({_pct(n_sft, total)}) have margin < τ"
    if dropped and any(dropped.values()):
        subtitle += f"; route drops {describe_unroutable(dropped)}"
    return np.where(sft, SFT_COLOR, DPO_COLOR), subtitle


def _label_bars(ax, centres: np.ndarray, counts: np.ndarray) -> None:
    """Each non-empty bar's count above it (few bars only)."""
    for x, c in zip(centres, counts, strict=True):
        if c:
            ax.annotate(
                f"{c:,}",
                (x, c),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color="#333333",
            )


def margin_cdf(margins: np.ndarray, path: str | Path, *, threshold: float | None = None) -> Path:
    """Empirical CDF of the margins: the share of pairs with margin ≤ x, τ marked."""
    values = np.sort(np.asarray(margins, dtype=np.float64))
    n = values.size
    xs, first = np.unique(values, return_index=True)
    below = np.append(first[1:], n) / n  # share of pairs ≤ each distinct value
    fig, ax = _figure()
    lo, hi = float(xs[0]), float(xs[-1])
    pad = max((hi - lo) * 0.03, 0.25)
    ax.step(
        np.concatenate([[lo - pad], xs, [hi + pad]]),
        np.concatenate([[0.0], below, [1.0]]),
        where="post",
        color=DPO_COLOR,
        linewidth=1.8,
    )
    subtitle = f"share of pairs with margin ≤ x; median {_fmt(float(np.median(values)))}"
    if threshold is not None:
        share = float(np.searchsorted(values, threshold, side="left")) / n
        _mark_cut(ax, threshold)
        ax.axhline(share, color=SFT_COLOR, linewidth=1, linestyle=":")
        ax.plot([threshold], [share], "o", color=SFT_COLOR, markersize=6, zorder=5)
        ax.annotate(
            f"{share:.1%} have margin < τ",
            (threshold, share),
            xytext=(8, -14 if share > 0.1 else 6),
            textcoords="offset points",
            fontsize=9,
            color=SFT_COLOR,
        )
        subtitle = f"τ = {_fmt(threshold)}: {share:.1%} of pairs have a margin below it (SFT)"
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel(MARGIN_LABEL)
    ax.set_ylabel("pairs with margin ≤ x")
    _title(ax, f"Margin CDF — {n:,} pairs", subtitle)
    return _save(fig, path)


def margin_vs_length(
    margins: np.ndarray,
    length_diff: np.ndarray,
    path: str | Path,
    *,
    threshold: float | None = None,
    corr: float | None = None,
    grid: float | None = None,
) -> Path:
    """Length difference (chosen − rejected, characters) against margin, with its median per margin.

    Up to :data:`SCATTER_MAX_POINTS` pairs are drawn as points (jittered sideways on a rating
    grid, with a fixed seed); more are drawn as a 2-D histogram with a log colour scale. The y axis
    shows the 1st–99th percentile range; the title says how many pairs fall outside.
    """
    x = np.asarray(margins, dtype=np.float64)
    y = np.asarray(length_diff, dtype=np.float64)
    n = x.size
    y_lo, y_hi = np.percentile(y, [1, 99])
    span = max(y_hi - y_lo, 1.0)
    y_lo, y_hi = y_lo - 0.05 * span, y_hi + 0.05 * span
    outside = int(((y < y_lo) | (y > y_hi)).sum())
    fig, ax = _figure()
    if threshold is not None:
        _mark_cut(ax, threshold)
    _pairs_layer(fig, ax, x, y, (y_lo, y_hi), threshold=threshold, grid=grid)
    centres, medians = _medians_by_margin(x, y, grid)
    ax.plot(
        centres,
        medians,
        "-o",
        color="#222222",
        markersize=3,
        linewidth=1.4,
        label="median per margin",
    )
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.legend(loc="upper right", frameon=False)
    x_pad = grid if grid is not None else max(float(x.max() - x.min()) * 0.03, 1e-6)
    ax.set_xlim(float(x.min()) - x_pad, float(x.max()) + x_pad)
    ax.set_ylim(y_lo, y_hi)
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_xlabel(MARGIN_LABEL)
    ax.set_ylabel("len(chosen) − len(rejected), characters")
    r = "n/a" if corr is None else f"{corr:+.3f}"
    clipped = f"; {outside:,} pairs beyond the 1st–99th percentile not shown" if outside else ""
    _title(ax, f"Margin vs length difference — Pearson r = {r}", f"{n:,} pairs{clipped}")
    return _save(fig, path)


#: A log length axis only pays when lengths span at least this ratio (max / min, ignoring 0).
LOG_LENGTH_RATIO = 50


def _pairs_layer(fig, ax, x, y, y_range, *, threshold, grid) -> None:
    """The pairs themselves: points (jittered on a rating grid), or a 2-D histogram with a log
    colour scale beyond :data:`SCATTER_MAX_POINTS`."""
    n = x.size
    if n <= SCATTER_MAX_POINTS:
        jitter = 0.0
        if grid is not None:
            # to the right only: a column of points starts at its value, so the pairs at τ
            # (DPO) stay right of τ's line and the values below τ (SFT) stay left of it
            jitter = np.random.default_rng(0).uniform(0.0, 0.4, n) * grid
        colors = (
            NEUTRAL_COLOR if threshold is None else np.where(x < threshold, SFT_COLOR, DPO_COLOR)
        )
        size = 6 if n > 2_000 else 16  # a few points are drawn larger, to be seen
        ax.scatter(x + jitter, y, s=size, c=colors, alpha=0.45, linewidths=0, rasterized=False)
    else:
        x_edges = _x_edges(x, grid)
        y_edges = np.linspace(*y_range, 61)
        counts, _, _ = np.histogram2d(x, y, bins=[x_edges, y_edges])
        mesh = ax.pcolormesh(
            x_edges,
            y_edges,
            np.ma.masked_equal(counts.T, 0),
            cmap="viridis",
            norm=LogNorm(vmin=1, vmax=max(1.0, counts.max())),
        )
        fig.colorbar(mesh, ax=ax, label="pairs", pad=0.01)


def lengths(chosen_chars: np.ndarray, rejected_chars: np.ndarray, path: str | Path) -> Path:
    """Distributions of chosen and rejected lengths (characters), means marked.

    The axis is logarithmic when the lengths span more than :data:`LOG_LENGTH_RATIO` (chat data:
    10 to 10,000 characters), linear otherwise (a toy task's 1-12 characters would get only two
    ticks on a log axis). Empty responses (0 characters) cannot sit on a log axis; there they are
    counted in the subtitle.
    """
    c = np.asarray(chosen_chars, dtype=np.float64)
    r = np.asarray(rejected_chars, dtype=np.float64)
    both = np.concatenate([c, r])
    hi = float(both.max()) if both.size else 1.0
    positive = both[both >= 1]
    lo = float(positive.min()) if positive.size else 1.0
    log = hi / lo >= LOG_LENGTH_RATIO
    if log:
        hi = max(hi, 10.0)
        edges = np.unique(np.round(np.geomspace(1, hi + 1, 41)))  # integer edges: no slivers
    else:
        step = max(1.0, float(np.ceil((hi + 1) / 40)))
        edges = np.arange(-0.5, hi + step, step)  # integer lengths sit in the middle of a bin
    fig, ax = _figure()
    for values, color, name in ((c, DPO_COLOR, "chosen"), (r, SFT_COLOR, "rejected")):
        mean = float(values.mean())
        ax.hist(
            values[values >= 1] if log else values,
            bins=edges,
            histtype="step",
            linewidth=1.8,
            color=color,
            label=f"{name} (mean {mean:,.{0 if log else 1}f}, "
            f"median {float(np.median(values)):,.0f})",
        )
        ax.axvline(max(mean, 1.0) if log else mean, color=color, linestyle="--", linewidth=1)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(1, edges[-1])
    else:
        from matplotlib.ticker import MaxNLocator

        ax.set_xlim(edges[0], edges[-1])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    scale = "log scale" if log else "linear scale"
    ax.set_xlabel(f"length (characters, {scale}; dashed: means)")
    ax.set_ylabel("responses")
    ax.yaxis.set_major_formatter(_thousands())
    ax.legend(loc="upper left" if log else "upper right", frameon=False)
    longer = float((c > r).mean()) if c.size else 0.0
    empty = int((c < 1).sum() + (r < 1).sum())
    note = f"; {empty:,} empty responses not drawn" if empty and log else ""
    _title(
        ax,
        f"Response lengths — {c.size:,} pairs",
        f"the chosen response is longer in {longer:.1%} of pairs{note}",
    )
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# helpers


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(8, 4.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _title(ax, title: str, subtitle: str) -> None:
    ax.set_title(f"{title}\n", fontsize=12, loc="left", fontweight="bold")
    ax.text(0, 1.02, subtitle, transform=ax.transAxes, fontsize=9, color="#555555", va="bottom")


def _mark_cut(ax, threshold: float, *, zorder: float = 4) -> None:
    """The SFT region shaded, and the cut as a dashed line at τ: "SFT ◂" on its left, "▸ DPO"
    and τ on its right, at the top.

    ``zorder`` below the bars' (2) puts the line behind a bar standing on τ (a discrete margin
    equal to τ goes to DPO): the bar stays whole and the line shows above it.
    """
    ax.axvspan(-1e9, threshold, color=SFT_COLOR, alpha=0.08, linewidth=0, zorder=0)
    ax.axvline(threshold, color=CUT_COLOR, linestyle="--", linewidth=1.3, zorder=zorder)
    box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}
    for text, dx, dy, ha in (
        (f"τ = {_fmt(threshold)}", 4, -13, "left"),
        ("SFT ◂", -4, -27, "right"),
        ("▸ DPO", 4, -27, "left"),
    ):
        ax.annotate(
            text,
            (threshold, 1),
            xycoords=("data", "axes fraction"),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            fontsize=9,
            color=CUT_COLOR,
            bbox=box,
            zorder=6,
        )


def _grid_ticks(ax, edges: np.ndarray, grid: float) -> None:
    lo, hi = edges[0], edges[-1]
    step = grid
    while (hi - lo) / step > 20:
        step *= 2
    first = np.ceil(lo / step) * step
    ax.set_xticks(np.arange(first, hi, step))


def _x_edges(x: np.ndarray, grid: float | None) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if grid is not None:
        return np.arange(lo - grid / 2, hi + grid, grid)
    return np.linspace(lo, hi if hi > lo else lo + 1, 61)


def _medians_by_margin(
    x: np.ndarray, y: np.ndarray, grid: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Median of y per grid value (or per one of 30 equal-width bins) holding ≥ 5 pairs."""
    if grid is not None:
        keys = np.round(x / grid).astype(np.int64)
    else:
        lo, hi = float(x.min()), float(x.max())
        keys = np.floor((x - lo) / max(hi - lo, 1e-12) * 30).clip(0, 29).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, xs, ys = keys[order], x[order], y[order]
    uniq, start, count = np.unique(keys, return_index=True, return_counts=True)
    centres, medians = [], []
    for s, c in zip(start, count, strict=True):
        if c >= 5:
            centres.append(float(np.median(xs[s : s + c])))
            medians.append(float(np.median(ys[s : s + c])))
    return np.asarray(centres), np.asarray(medians)


def _thousands():
    """``1,500`` for large ticks, ``2.5`` for small fractional ones (never rounded to ``2``)."""
    from matplotlib.ticker import FuncFormatter

    def label(x: float, _pos: int) -> str:
        return f"{x:,.0f}" if abs(x) >= 1000 or float(x).is_integer() else f"{x:g}"

    return FuncFormatter(label)


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path
