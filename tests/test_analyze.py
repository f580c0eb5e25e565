"""The report's figures, checked against values worked out by hand on small frames."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefcurate.base.errors import InputError
from prefcurate.data.io import open_pairs
from prefcurate.data.schema import MESSAGE_DTYPE
from prefcurate.reporting.analyze import NO_MARGIN_HINT, analyze, analyze_frame, histogram


def pairs(margins, *, chosen=None, rejected=None, prompts=None, sources=None) -> pl.DataFrame:
    """A canonical frame (pair_id as the loader computes it); texts default to distinct strings."""
    n = len(margins)
    return pl.DataFrame(
        {
            "prompt": prompts or [f"prompt {i}" for i in range(n)],
            "chosen": chosen or [f"chosen {i}" for i in range(n)],
            "rejected": rejected or [f"rejected {i}" for i in range(n)],
            "margin": margins,
            "source": sources or [None] * n,
            "history_mismatch": [False] * n,
        },
        schema_overrides={"margin": pl.Float64, "source": pl.String},
    )


# --------------------------------------------------------------------------------------------------
# margin statistics


def test_margin_quantiles_ties_and_negatives_by_hand():
    """Margins -1, 0, 0, 0.5, 1, 2, 3, 4.5 (n = 8) and one null.

    Linear interpolation at position q·(n−1) of the sorted values: p25 → 1.75 → between 0 and 0 = 0;
    median → 3.5 → 0.5 + 0.5·(1 − 0.5) = 0.75; p75 → 5.25 → 2 + 0.25·1 = 2.25;
    p05 → 0.35 → −1 + 0.35·1 = −0.65; p95 → 6.65 → 3 + 0.65·1.5 = 3.975.
    Mean = 10 / 8 = 1.25. Ties: 2 (the zeros). Negative: 1.
    """
    margins = [-1.0, 0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.5, None]
    report = analyze_frame(pairs(margins), layout="standard")
    m = report.margin
    assert (m.count, m.null) == (8, 1)
    assert (m.min, m.max, m.mean) == (-1.0, 4.5, 1.25)
    assert m.p05 == pytest.approx(-0.65)
    assert m.p25 == 0.0
    assert m.median == pytest.approx(0.75)
    assert m.p75 == pytest.approx(2.25)
    assert m.p95 == pytest.approx(3.975)
    assert (m.ties, m.negative) == (2, 1)
    assert report.rows == 9
    assert report.hint is None


def test_no_margins_gives_nulls_and_the_hint():
    report = analyze_frame(pairs([None, None, None]), layout="implicit_prompt")
    m = report.margin
    assert (m.count, m.null) == (0, 3)
    assert m.median is None and m.ties is None and m.negative is None
    assert report.histogram is None and report.routing is None
    assert "prefcurate score" in report.hint and report.hint == NO_MARGIN_HINT
    assert report.lengths.margin_length_corr is None


# --------------------------------------------------------------------------------------------------
# routing


def test_routing_counts_margin_below_tau_strictly():
    """τ = 0.5 on margins 0, 0, 0.5, 1, null: SFT = 2 (the ties), DPO = 2, one unrouted."""
    report = analyze_frame(pairs([0.0, 0.0, 0.5, 1.0, None]), layout="standard", threshold=0.5)
    r = report.routing
    assert (r.threshold, r.sft_fraction, r.sft, r.dpo, r.unrouted) == (0.5, None, 2, 2, 1)
    assert r.sft_share == 0.5


def test_sft_fraction_picks_tau_and_reports_it():
    """q = 0.3 of margins [0, 0, 0.5, 0.5, 0.5, 1, 1, 1, 1, 2]: target 3 pairs. Candidates route
    0 (τ=0), 2 (τ=0.5), 5 (τ=1), ...: 2 is closest to 3, so τ = 0.5."""
    margins = [0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 2.0]
    r = analyze_frame(pairs(margins), layout="standard", sft_fraction=0.3).routing
    assert (r.threshold, r.sft_fraction, r.sft, r.dpo) == (0.5, 0.3, 2, 8)


def test_fraction_one_routes_everything_and_reports_an_exact_tau():
    """q = 1 picks τ just above the largest margin; rounding it would send that pair to DPO."""
    r = analyze_frame(pairs([0.0, 8.0]), layout="standard", sft_fraction=1.0).routing
    assert (r.sft, r.dpo) == (2, 0)
    assert r.threshold > 8.0


def test_routing_arguments_are_checked():
    frame = pairs([0.0, 1.0])
    with pytest.raises(InputError, match="mutually exclusive"):
        analyze_frame(frame, layout="standard", threshold=0.5, sft_fraction=0.1)
    with pytest.raises(InputError, match="between 0 and 1"):
        analyze_frame(frame, layout="standard", sft_fraction=1.5)
    with pytest.raises(InputError, match="finite"):
        analyze_frame(frame, layout="standard", threshold=math.inf)
    with pytest.raises(InputError, match="no margins"):
        analyze_frame(pairs([None, None]), layout="standard", threshold=0.5)


# --------------------------------------------------------------------------------------------------
# lengths and flags


def test_lengths_share_and_correlation_sign():
    """chosen lengths 5, 3, 10, 2; rejected 3, 3, 4, 6 → differences +2, 0, +6, −4.

    Means 5.0 and 4.0; chosen strictly longer in 2 of 4 pairs. Margins 1, 0.5, 3, −1 rise with
    the difference, so the correlation is positive; by hand, with dx = (0.125, −0.375, 2.125,
    −1.875) and dy = (1, −1, 5, −5): Σdxdy = 20.5, Σdx² = 8.1875, Σdy² = 52, so
    r = 20.5 / √(8.1875·52) = 0.99351.
    """
    frame = pairs(
        [1.0, 0.5, 3.0, -1.0],
        chosen=["aaaaa", "bbb", "cccccccccc", "dd"],
        rejected=["xxx", "yyy", "zzzz", "wwwwww"],
    )
    lengths = analyze_frame(frame, layout="standard").lengths
    assert (lengths.chosen_chars_mean, lengths.rejected_chars_mean) == (5.0, 4.0)
    assert (lengths.chosen_chars_median, lengths.rejected_chars_median) == (4.0, 3.5)
    assert lengths.chosen_longer_share == 0.5
    assert lengths.margin_length_corr == pytest.approx(20.5 / math.sqrt(8.1875 * 52), abs=1e-6)


def test_length_difference_does_not_wrap_around():
    """str.len_chars is unsigned; a shorter chosen must give a negative difference, not 4e9."""
    frame = pairs([1.0, 2.0, 3.0], chosen=["a", "b", "c"], rejected=["xxxx", "yyyy", "zzzzzz"])
    assert analyze_frame(frame, layout="standard").lengths.margin_length_corr < 0


def test_characters_not_bytes():
    frame = pairs([1.0], chosen=["héllo wörld"], rejected=["日本語"])
    lengths = analyze_frame(frame, layout="standard").lengths
    assert (lengths.chosen_chars_mean, lengths.rejected_chars_mean) == (11.0, 3.0)


def test_flags_by_hand():
    """Row 1 is row 0 again (a duplicate pair, so also a duplicate prompt); row 2 repeats row 0's
    prompt with new responses; row 3 is identical and has a blank prompt; row 4 has an empty
    rejected and a whitespace-only prompt. Blank prompts never count as duplicate prompts."""
    frame = pairs(
        [1.0, 1.0, 2.0, 0.0, 3.0],
        prompts=["p", "p", "p", "   ", "\n"],
        chosen=["a", "a", "b", "same", "c"],
        rejected=["x", "x", "y", "same", ""],
    ).with_columns(history_mismatch=pl.Series([False, False, False, False, True]))
    f = analyze_frame(frame, layout="standard").flags
    assert f.duplicate_pairs == 1
    assert f.duplicate_prompts == 2
    assert f.identical == 1
    assert (f.empty_prompt, f.empty_chosen, f.empty_rejected, f.empty) == (2, 0, 1, 2)
    assert f.history_mismatch == 1


def test_conversational_lengths_sum_message_contents():
    def msgs(*texts):
        return [{"role": "assistant", "content": t} for t in texts]

    frame = pl.DataFrame(
        {
            "prompt": [[{"role": "user", "content": "hi"}], []],
            "chosen": [msgs("abc", "de"), msgs("  ")],
            "rejected": [msgs("x"), msgs("  ")],
            "margin": [1.0, 0.0],
        },
        schema={
            "prompt": MESSAGE_DTYPE,
            "chosen": MESSAGE_DTYPE,
            "rejected": MESSAGE_DTYPE,
            "margin": pl.Float64,
        },
    )
    report = analyze_frame(frame.lazy(), layout="conversational")
    assert report.lengths.chosen_chars_mean == 3.5  # (3 + 2 + 2) / 2
    assert report.lengths.rejected_chars_mean == 1.5  # (1 + 2) / 2
    f = report.flags
    assert (f.empty_prompt, f.empty_chosen, f.empty_rejected, f.identical) == (1, 1, 1, 1)


# --------------------------------------------------------------------------------------------------
# sources


def test_sources_breakdown_largest_first():
    frame = pairs(
        [0.0, 1.0, 2.0, 0.0, 4.0, None],
        sources=["b", "a", "a", "a", "b", None],
    )
    sources = analyze_frame(frame, layout="standard", threshold=0.5).sources
    assert [s.source for s in sources] == ["a", "b", None]
    a, b, none = sources
    assert (a.rows, a.share, a.margin_mean, a.margin_median, a.ties) == (3, 0.5, 1.0, 1.0, 1)
    assert (a.sft, a.sft_share) == (1, pytest.approx(1 / 3, abs=1e-6))
    assert (b.rows, b.ties, b.sft, b.margin_mean) == (2, 1, 1, 2.0)
    assert (none.rows, none.ties, none.sft, none.margin_mean) == (1, None, None, None)


def test_no_source_column_gives_none():
    assert analyze_frame(pairs([1.0]), layout="standard").sources is None


# --------------------------------------------------------------------------------------------------
# histogram


def test_histogram_on_the_half_point_grid_centres_bins_on_ratings():
    h = histogram(pl.Series([0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 2.0]), threshold=0.5)
    assert h.grid == 0.5 and h.width == 0.5
    assert h.edges == [-0.25, 0.25, 0.75, 1.25, 1.75, 2.25]
    assert h.counts == [2, 1, 3, 0, 1]
    assert h.cut == 0.25  # between the ties and the 0.5 bin: margin < 0.5 is exactly bin one


def test_histogram_off_grid_tau_cuts_between_grid_values():
    """τ = 0.7 routes 0 and 0.5; the cut is the edge below 1.0."""
    h = histogram(pl.Series([0.0, 0.5, 1.0, 1.5]), threshold=0.7)
    assert h.cut == 0.75
    assert sum(c for c, e in zip(h.counts, h.edges[1:], strict=True) if e <= h.cut) == 2


def test_histogram_skips_non_finite_margins():
    h = histogram(pl.Series([0.0, float("nan"), 1.0, float("inf")]))
    assert sum(h.counts) == 2
    assert histogram(pl.Series([float("nan")])) is None


def test_histogram_of_continuous_margins_puts_tau_on_an_edge():
    values = pl.Series(np.linspace(-3.3, 7.1, 500))
    h = histogram(values, threshold=0.37)
    assert h.grid is None
    assert 0.37 in h.edges and h.cut == 0.37
    assert sum(h.counts) == 500 and len(h.counts) <= 40
    below = sum(c for c, e in zip(h.counts, h.edges[1:], strict=True) if e <= h.cut)
    assert below == int((values < 0.37).sum())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-18, 18), min_size=1, max_size=200),
    st.integers(-4, 12),
    st.integers(3, 40),
)
def test_histogram_property_no_value_on_an_edge_and_cut_matches_routing(halves, tau2, max_bins):
    """On the 0.5 grid: counts sum to n, no margin sits on an edge, and the bins left of the cut
    hold exactly the pairs with margin < τ, however many grid steps a bin spans."""
    values = pl.Series([h / 2 for h in halves], dtype=pl.Float64)
    tau = tau2 / 2 + 0.1 * (tau2 % 3 == 0)  # on and off the grid
    h = histogram(values, threshold=tau, max_bins=max_bins)
    assert sum(h.counts) == len(halves)
    assert len(h.counts) <= max_bins + 1
    edges = np.asarray(h.edges)
    assert not np.isin(values.to_numpy(), edges).any()
    below = sum(c for c, e in zip(h.counts, h.edges[1:], strict=True) if e <= h.cut + 1e-9)
    assert below == int((values < tau).sum())


# --------------------------------------------------------------------------------------------------
# report.json


def test_to_dict_is_json_native_and_stable():
    report = analyze_frame(pairs([0.0, 0.0, 1.0]), layout="standard", threshold=0.5)
    d = report.to_dict()
    text = json.dumps(d, allow_nan=False)  # raises on NaN or numpy types
    assert json.loads(text) == d
    assert list(d) == [
        "version",
        "rows",
        "layout",
        "input",
        "fields",
        "margin",
        "histogram",
        "routing",
        "lengths",
        "flags",
        "sources",
        "hint",
    ]
    assert set(d["margin"]) >= {"count", "null", "min", "p05", "p25", "median", "p75", "p95"}
    assert set(d["routing"]) >= {"threshold", "sft", "dpo", "sft_share", "sft_fraction"}
    # identical lengths everywhere: no spread, so the correlation is undefined → null, not NaN
    same = pairs([1.0, 2.0], chosen=["a", "b"], rejected=["c", "d"])
    assert analyze_frame(same, layout="standard").to_dict()["lengths"]["margin_length_corr"] is None


def test_routing_key_only_with_a_threshold():
    assert "routing" not in analyze_frame(pairs([1.0]), layout="standard").to_dict()


# --------------------------------------------------------------------------------------------------
# analyze(source) on a file


def test_analyze_reads_a_file_once_narrowly(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "p1", "chosen": "aa", "rejected": "b", "score_chosen": 8, "score_rejected": 8},
        {"prompt": "p2", "chosen": "a", "rejected": "bbb", "score_chosen": 9, "score_rejected": 6},
        {"prompt": "p2", "chosen": "c", "rejected": "c", "score_chosen": 5, "score_rejected": 7},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = analyze(open_pairs(path), threshold=0.5)
    assert report.rows == 3
    assert (report.margin.ties, report.margin.negative, report.margin.max) == (1, 1, 3.0)
    # the identical pair (margin -2) is left out of the routing, as route drops it
    assert (report.routing.sft, report.routing.dpo, report.routing.identical) == (1, 1, 1)
    assert (report.flags.identical, report.flags.duplicate_prompts) == (1, 1)
    assert report.input == {
        "path": str(path),
        "format": "jsonl",
        "files": 1,
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert report.fields["score_chosen"] == "score_chosen"
    assert set(report.frame.columns) >= {"margin", "chosen_chars", "rejected_chars"}
    assert "chosen" not in report.frame.columns  # no texts kept


def test_analyze_refuses_a_threshold_without_margins_before_reading(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(InputError, match="prefcurate score"):
        analyze(open_pairs(path), sft_fraction=0.1)


def test_analyze_ultrafeedback_sample(uf1k):
    report = analyze(open_pairs(uf1k), threshold=0.5)
    assert report.rows == 1000
    assert (report.margin.ties, report.margin.negative, report.margin.max) == (111, 0, 8.0)
    routing = report.routing
    assert (routing.sft, routing.dpo, routing.sft_share) == (110, 885, 0.110553)
    assert report.routing.identical == 4  # chosen == rejected: left out, as route drops them
    assert report.routing.empty_chosen == 1  # the empty rejected response is routed (DPO)
    assert report.histogram.counts[:4] == [111, 193, 193, 120]  # checked facts of the sample
    assert report.lengths.chosen_longer_share == 0.552
    assert report.flags.identical == 4


def test_every_report_key_is_documented(tmp_path):
    """docs/report.md names every key report.json can hold (sqlite-utils habit: docs coverage)."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text()
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "rating_chosen": 5, "rating_rejected": 4}
        | {"source": source}
        for source in ("x", "y")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = analyze(open_pairs(path), sft_fraction=0.5).to_dict()
    keys = set(d)
    for value in d.values():
        if isinstance(value, dict):
            keys |= set(value)
    keys |= set(d["sources"][0])
    missing = sorted(k for k in keys if f"`{k}`" not in docs)
    assert not missing, f"undocumented report.json keys: {missing}"
    assert {"routing", "sources", "histogram", "input", "fields"} <= keys


def test_analyze_conversational_file(tmp_path):
    """UltraFeedback-binarized style: the shared user turn becomes the prompt; lengths count the
    assistant turns only (6 and 1 chars chosen; 7 and 9 rejected)."""

    def conv(user, reply):
        return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]

    rows = [
        {"chosen": conv("hi there", "hello!"), "rejected": conv("hi there", "go away")}
        | {"score_chosen": 8, "score_rejected": 8, "source": "a"},
        {"chosen": conv("2+2?", "4"), "rejected": conv("2+2?", "5, surely")}
        | {"score_chosen": 9, "score_rejected": 3, "source": "b"},
    ]
    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = analyze(open_pairs(path), threshold=0.5)
    assert report.layout == "conversational"
    assert (report.lengths.chosen_chars_mean, report.lengths.rejected_chars_mean) == (3.5, 8.0)
    assert report.lengths.prompt_chars_mean == 6.0  # "hi there" and "2+2?"
    assert (report.routing.sft, report.routing.dpo) == (1, 1)
    assert [s.source for s in report.sources] == ["a", "b"]
