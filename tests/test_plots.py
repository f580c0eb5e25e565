"""PNG figures: written, valid, deterministic, and marking the route split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from prefcurate.analyze import analyze_frame
from prefcurate.plots import PLOT_FILES, margin_vs_length, write_plots

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


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_write_plots_writes_every_figure_as_a_sane_png(tmp_path, grid_report):
    written = write_plots(grid_report, tmp_path)
    assert [p.name for p in written] == list(PLOT_FILES)
    for path in written:
        width, height = png_size(path)
        assert (width, height) == (880, 506)  # 8 × 4.6 inches at 110 dpi
        assert 10_000 < path.stat().st_size < 1_000_000


def test_same_input_same_bytes(tmp_path, grid_report):
    a = write_plots(grid_report, tmp_path / "a")
    b = write_plots(grid_report, tmp_path / "b")
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes(), x.name


def test_threshold_changes_the_histogram(tmp_path, grid_report):
    """route reuses the writers with its own τ: the figure must change with it."""
    default = write_plots(grid_report, tmp_path / "a")[0]
    other = write_plots(grid_report, tmp_path / "b", threshold=1.5, prefix="routed_")[0]
    assert other.name == "routed_margin_hist.png"
    assert default.read_bytes() != other.read_bytes()


def test_without_margins_only_the_lengths_figure(tmp_path):
    report = report_of([None, None, None], threshold=None)
    assert [p.name for p in write_plots(report, tmp_path)] == ["lengths.png"]


def test_progress_callback_sees_each_file(tmp_path, grid_report):
    seen = []
    write_plots(grid_report, tmp_path, on_written=seen.append)
    assert [p.name for p in seen] == list(PLOT_FILES)


def test_many_points_become_a_2d_histogram_deterministically(tmp_path):
    """Above 20,000 pairs the scatter would be a blot: a 2-D histogram instead, same bytes."""
    rng = np.random.default_rng(2)
    margins = rng.normal(1.0, 2.0, 30_000)  # continuous (model-style) margins
    diff = rng.normal(0, 500, 30_000) + 40 * margins
    a = margin_vs_length(margins, diff, tmp_path / "a.png", threshold=0.3, corr=0.15)
    b = margin_vs_length(margins, diff, tmp_path / "b.png", threshold=0.3, corr=0.15)
    assert png_size(a) == png_size(b) and a.read_bytes() == b.read_bytes()
