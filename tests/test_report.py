"""Terminal rendering: what a user reads in the report."""

from __future__ import annotations

import polars as pl
from rich.console import Console

from prefcurate.reporting.analyze import analyze_frame, histogram
from prefcurate.reporting.terminal import histogram_text, render_report


def frame(margins, sources=None) -> pl.DataFrame:
    n = len(margins)
    return pl.DataFrame(
        {
            "prompt": [f"p{i}" for i in range(n)],
            "chosen": ["c" * (i + 2) for i in range(n)],
            "rejected": ["r" * 3 for _ in range(n)],
            "margin": margins,
            "source": sources or [None] * n,
        },
        schema_overrides={"margin": pl.Float64, "source": pl.String},
    )


def render(report, **kwargs) -> str:
    console = Console(record=True, width=100, color_system=None)
    render_report(report, console, **kwargs)
    return console.export_text()


def test_report_shows_margins_routing_lengths_and_flags():
    margins = [0.0, 0.0, 0.5, 1.0, 1.0, 2.0, -0.5, 3.0, 1.0, 0.5]
    report = analyze_frame(frame(margins), layout="standard", threshold=0.5)
    text = render(report, description="jsonl; layout standard chosen=chosen rejected=rejected")
    assert "10 pairs" in text and "layout standard" in text
    assert "jsonl; layout standard chosen=chosen" in text
    assert "ties (margin = 0) 2 (20.0%)" in text
    assert "negative (label inversions) 1 (10.0%)" in text
    # margin < 0.5: the −0.5 and the two ties
    assert "τ = 0.5: 3 pairs (30.0%) to SFT, 7 (70.0%) to DPO" in text
    assert "chosen longer in" in text
    for flag in ("identical", "duplicate_pairs", "duplicate_prompts", "history_mismatch"):
        assert flag in text
    assert "hint:" not in text


def test_histogram_marks_the_cut_between_the_routes():
    hist = histogram(pl.Series([0.0, 0.0, 0.5, 1.0, 1.0, 1.0]), threshold=0.5)
    lines = histogram_text(hist, threshold=0.5).plain.splitlines()
    bins = [line.split("│")[0].strip() for line in lines if "│" in line]
    assert bins == ["0", "0.5", "1"]
    cut = next(i for i, line in enumerate(lines) if "τ = 0.5" in line)
    assert "0 │" in lines[cut - 1] and lines[cut + 1].lstrip().startswith("0.5 │")
    peak = next(line for line in lines if line.lstrip().startswith("1 │"))
    assert "█" * 40 in peak and peak.rstrip().endswith("3  50.0%")


def test_histogram_cut_above_every_bin_is_still_drawn():
    hist = histogram(pl.Series([0.0, 0.5]), threshold=5.0)
    lines = histogram_text(hist, threshold=5.0).plain.splitlines()
    assert "τ = 5" in lines[-1]


def test_sft_fraction_is_named_in_the_routing_line():
    report = analyze_frame(frame([0.0, 0.5, 1.0, 2.0]), layout="standard", sft_fraction=0.25)
    assert "τ = 0.5 (picked for --sft-fraction 0.25): 1 pair (25.0%) to SFT" in render(report)


def test_no_margins_shows_the_hint_instead_of_a_histogram():
    text = render(analyze_frame(frame([None, None]), layout="implicit_prompt"))
    assert "all 2 pairs lack a margin" in text
    assert "margin histogram" not in text
    assert "hint:" in text and "prefcurate score" in text


def test_sources_table():
    report = analyze_frame(
        frame([0.0, 1.0, 2.0, 4.0], sources=["alpha", "alpha", "alpha", "beta"]),
        layout="standard",
        threshold=0.5,
    )
    rows = {line.split()[0]: line.split() for line in render(report).splitlines() if line.strip()}
    assert rows["alpha"][1:4] == ["3", "75.0%", "1.00"]
    assert rows["alpha"][-2:] == ["1", "(33.3%)"]
    assert rows["beta"][1:3] == ["1", "25.0%"]


def test_thin_tails_collapse_into_one_row_but_never_across_the_cut():
    """1000 pairs: margins −3…−0.5 hold 1 pair each (0.1%, six bins), the bulk sits at 0…2.
    The six thin bins become one row "-3…-0.5" with 6 pairs, still on the SFT side."""
    margins = [-3.0, -2.5, -2.0, -1.5, -1.0, -0.5] + [0.0] * 300 + [1.0] * 500 + [2.0] * 194
    hist = histogram(pl.Series(margins), threshold=0.5)
    lines = histogram_text(hist, threshold=0.5).plain.splitlines()[1:]
    assert lines[0].split("│")[0].strip() == "-3…-0.5"
    assert lines[0].rstrip().endswith("6   0.6%")
    assert lines[1].lstrip().startswith("0 │") and "τ = 0.5" in lines[2]
    # empty bins inside the bulk stay: 0.5 and 1.5 hold no pair but are shown
    assert [line.split("│")[0].strip() for line in lines[3:]] == ["0.5", "1", "1.5", "2"]
