"""PNG figures: written, valid, deterministic, and marking the route split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from prefcurate.reporting.analyze import analyze_frame, histogram
from prefcurate.reporting.plots import PLOT_FILES, margin_histogram, margin_vs_length, write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report_of(margins, *, threshold=0.5, seed=0):
    rng = np.random.default_rng(seed)
    n = len(margins)
    chosen = rng.integers(1, 3000, n)
    rejected = rng.integers(1, 3000, n)
    frame = pl.DataFrame(
        {
            "prompt": [f"p{i}" for i in range(n)],
            "chosen": ["c" * int(k) for k in chosen],
            "rejected": ["r" * int(k) for k in rejected],
            "margin": margins,
        },
        schema_overrides={"margin": pl.Float64},
    )
    return analyze_frame(frame, layout="standard", threshold=threshold)


@pytest.fixture(scope="module")
def grid_report():
    rng = np.random.default_rng(1)
    return report_of((rng.integers(0, 17, 400) / 2).tolist())


@pytest.fixture(scope="module")
def written_twice(grid_report, tmp_path_factory):
    """The figures written twice into two folders; the first time with a progress callback."""
    root = tmp_path_factory.mktemp("plots")
    seen = []
    first = write_plots(grid_report, root / "a", on_written=seen.append)
    second = write_plots(grid_report, root / "b")
    return first, second, seen


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_write_plots_writes_every_figure_as_a_sane_png(written_twice):
    written, _, _ = written_twice
    assert [p.name for p in written] == list(PLOT_FILES)
    for path in written:
        width, height = png_size(path)
        assert (width, height) == (880, 506)  # 8 × 4.6 inches at 110 dpi
        assert 10_000 < path.stat().st_size < 1_000_000


def test_same_input_same_bytes(written_twice):
    first, second, _ = written_twice
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_progress_callback_sees_each_file(written_twice):
    first, _, seen = written_twice
    assert seen == first


def test_threshold_changes_the_histogram(tmp_path, grid_report, written_twice):
    """route reuses the writers with its own τ: the bins are recut and the figure changes."""
    hist = histogram(grid_report.frame.get_column("margin"), threshold=1.5)
    assert hist.cut == 1.25
    other = margin_histogram(hist, tmp_path / "routed_margin_hist.png", threshold=1.5)
    assert other.read_bytes() != written_twice[0][0].read_bytes()


def test_without_margins_only_the_lengths_figure(tmp_path):
    report = report_of([None, None, None], threshold=None)
    assert [p.name for p in write_plots(report, tmp_path)] == ["lengths.png"]


def test_many_points_become_a_2d_histogram_deterministically(tmp_path):
    """Above 20,000 pairs the scatter would be a blot: a 2-D histogram instead, same bytes."""
    rng = np.random.default_rng(2)
    margins = rng.normal(1.0, 2.0, 30_000)  # continuous (model-style) margins
    diff = rng.normal(0, 500, 30_000) + 40 * margins
    a = margin_vs_length(margins, diff, tmp_path / "a.png", threshold=0.3, corr=0.15)
    b = margin_vs_length(margins, diff, tmp_path / "b.png", threshold=0.3, corr=0.15)
    assert png_size(a) == png_size(b) and a.read_bytes() == b.read_bytes()
