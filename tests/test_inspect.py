"""The inspect page's data: analyze's figures, seeded samples per bin, the τ table, the run view.

The browser half (the page really renders, clicks, escapes) is tests/test_inspect_browser.py.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import polars as pl
import polars_hash as plh
import pytest

from prefcurate.base.errors import InputError
from prefcurate.commands.inspect import build_page
from prefcurate.data.io import open_pairs, read_pairs
from prefcurate.data.runs import RunView
from prefcurate.data.synth import write_synth
from prefcurate.reporting import inspection as inspection_module
from prefcurate.reporting.analyze import analyze, analyze_frame
from prefcurate.reporting.inspection import inspect_source
from prefcurate.reporting.page import page_data, render_page, script_json, write_page
from prefcurate.reporting.runstats import accuracy_by_margin


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def smallest_keys(pairs: pl.DataFrame, bins: pl.Series, k: int, seed: int = 0) -> set[str]:
    """The sample by its definition: per bin, the k pair_ids with the smallest XXH3 keys."""
    keyed = pairs.select("pair_id").with_columns(
        plh.concat_str([pl.lit(str(seed)), pl.col("pair_id")], separator=":")
        .nchash.xxh3_64()
        .alias("key"),
        bins.alias("bin"),
    )
    picked = keyed.filter(pl.col("key").rank("ordinal").over("bin") <= k)
    return set(picked.get_column("pair_id"))


@pytest.fixture(scope="module")
def uf_seen():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "ultrafeedback_1k.jsonl"
    if not path.exists():
        pytest.skip("real data ../shared/data/ultrafeedback_1k.jsonl is not beside this clone")
    source = open_pairs(path)
    return source, inspect_source(source, threshold=0.5)


# --------------------------------------------------------------------------------------------------
# one pass, analyze's numbers


def test_inspect_reports_exactly_what_analyze_reports(uf1k, uf_seen):
    source, seen = uf_seen
    assert seen.report.to_dict() == analyze(source, threshold=0.5).to_dict()
    by_fraction = inspect_source(source, sft_fraction=0.3)
    assert by_fraction.report.to_dict() == analyze(source, sft_fraction=0.3).to_dict()


def test_each_bin_holds_up_to_k_samples_all_inside_the_bin(uf1k, uf_seen):
    _, seen = uf_seen
    hist = seen.report.histogram
    samples = seen.samples
    for i, count in enumerate(hist.counts):
        in_bin = samples.filter(pl.col("bin") == i)
        assert in_bin.height == min(20, count)
        margins = in_bin.get_column("margin")
        assert margins.min() >= hist.edges[i] and margins.max() < hist.edges[i + 1]
    ties = samples.filter(pl.col("bin") == 0)
    assert ties.get_column("margin").unique().to_list() == [0.0]  # the tie bin: only margin 0


def test_samples_are_the_smallest_seeded_keys_of_each_bin_and_change_with_the_seed(uf1k, uf_seen):
    source, seen = uf_seen
    pairs = read_pairs(uf1k)
    bins = pairs.select(inspection_module.bin_index(pl.col("margin"), seen.report.histogram))
    expected = smallest_keys(pairs, bins.to_series(), 20)
    assert set(seen.samples.get_column("pair_id")) == expected
    other = inspect_source(source, threshold=0.5, seed=1)
    assert set(other.samples.get_column("pair_id")) == smallest_keys(
        pairs, bins.to_series(), 20, seed=1
    )
    assert set(other.samples.get_column("pair_id")) != expected


def test_sample_rows_carry_their_texts_ratings_and_row_number(uf1k, uf_seen):
    _, seen = uf_seen
    pairs = read_pairs(uf1k).with_row_index("row")
    for sample in seen.samples.head(5).iter_rows(named=True):
        original = pairs.filter(pl.col("row") == sample["row"]).row(0, named=True)
        assert original["pair_id"] == sample["pair_id"]
        assert sample["chosen"] == original["chosen"][: inspection_module.TEXT_LIMIT]
        assert sample["score_chosen"] - sample["score_rejected"] == sample["margin"]
        assert sample["chosen_chars"] == len(original["chosen"])


def test_tau_control_gives_analyzes_counts_at_every_position(uf1k, uf_seen):
    _, seen = uf_seen
    t = seen.thresholds
    # the paper's τ on UltraFeedback: the 111 ties, less the one identical pair route drops
    assert t.initial == 0.5 and t.sft_at(0.5) == 110
    assert t.values == [i / 2 for i in range(18)]  # the rating grid, 0 … 8.5
    for tau, sft, dpo in zip(t.values, t.sft, t.dpo, strict=True):
        routing = analyze_frame(seen.report.frame, layout="standard", threshold=tau).routing
        assert (sft, dpo) == (routing.sft, routing.dpo)


def test_the_page_counts_and_tags_the_pairs_route_drops_whatever_tau(uf1k, uf_seen, tmp_path):
    """The one rule of route (chosen = rejected, an empty chosen response) on the page: the τ
    control's counts leave the pairs out, the routing line names them, and each listed pair
    carries its reason, which its tag shows instead of a route. An empty rejected response is
    routed like any pair."""
    _, seen = uf_seen
    data = page_data(seen)
    assert data["dropped"] == "4 pairs with chosen = rejected, 1 pair with an empty chosen response"
    # the τ of the paper: 995 pairs routed (1000 less 4 identical, less 1 empty chosen response)
    index = seen.thresholds.values.index(0.5)
    assert seen.thresholds.sft[index] + seen.thresholds.dpo[index] == 995
    rows = [
        ("same", "same", 7.0, 3.0),  # identical
        ("", "a real answer", 6.0, 2.0),  # empty chosen
        ("a real answer", "  ", 9.0, 1.0),  # empty rejected: routed
        ("good", "bad", 8.0, 4.0),
    ]
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text(
        "".join(
            json.dumps(
                {"prompt": f"q{i}", "chosen": c, "rejected": r, "score_chosen": sc,
                 "score_rejected": sr}
            ) + "\n"
            for i, (c, r, sc, sr) in enumerate(rows)
        ),
        encoding="utf-8",
    )  # fmt: skip
    small = inspect_source(open_pairs(data_file), threshold=0.5)
    tags = dict(small.samples.select("chosen", "unroutable").iter_rows())
    assert tags == {"same": "identical", "": "empty_chosen", "a real answer": None, "good": None}
    assert page_data(small)["dropped"] == (
        "1 pair with chosen = rejected, 1 pair with an empty chosen response"
    )


def test_per_source_tau_counts_match_analyzes_per_source_figures(tmp_path):
    data = tmp_path / "synth.parquet"
    write_synth(data, n=3000, seed=3)
    seen = inspect_source(open_pairs(data))
    t = seen.thresholds
    assert len(t.by_source) == 7
    for tau in (0.5, 1.0, 2.5):
        sources = analyze_frame(seen.report.frame, layout="standard", threshold=tau).sources
        index = t.values.index(tau)
        for s in sources:
            assert t.by_source[s.source][index] == s.sft
            assert t.rows_by_source[s.source] == s.rows
    assert seen.source_margins[0]["n"] == max(t.rows_by_source.values())


def test_continuous_margins_are_sampled_through_coarser_strata(tmp_path, monkeypatch):
    """1000 distinct margins in (-1, 1) with at most 400 strata: the pass regroups the margins by
    0.01, which nests in the histogram's bins of 0.05, so each bin's sample is still exactly its
    smallest keys."""
    monkeypatch.setattr(inspection_module, "MAX_STRATA", 400)
    rng = random.Random(0)
    rows = [
        {
            "prompt": f"p{i}",
            "chosen": f"c{i}",
            "rejected": f"r{i}",
            "score_chosen": round(rng.uniform(0, 1), 6),
            "score_rejected": round(rng.uniform(0, 1), 6),
        }
        for i in range(1000)
    ]
    data = write_jsonl(tmp_path / "cont.jsonl", rows)
    seen = inspect_source(open_pairs(data), samples_per_bin=5)
    hist = seen.report.histogram
    assert hist.grid is None and hist.width == 0.05
    assert seen.report.to_dict() == analyze(open_pairs(data)).to_dict()
    pairs = read_pairs(data)
    bins = pairs.select(inspection_module.bin_index(pl.col("margin"), hist)).to_series()
    assert set(seen.samples.get_column("pair_id")) == smallest_keys(pairs, bins, 5)
    t = seen.thresholds
    for tau in t.values[::7]:
        routing = analyze_frame(seen.report.frame, layout="standard", threshold=tau).routing
        assert t.sft_at(tau) == routing.sft


def test_a_bad_row_is_the_same_located_error_as_analyze(tmp_path):
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 5.0, "score_rejected": 4}
    data = write_jsonl(tmp_path / "bad.jsonl", [row] * 3 + [{**row, "score_chosen": float("nan")}])
    with pytest.raises(InputError) as ours:
        inspect_source(open_pairs(data))
    with pytest.raises(InputError) as theirs:
        analyze(open_pairs(data))
    assert str(ours.value) == str(theirs.value)
    assert "line 4" in str(ours.value)
    good = write_jsonl(tmp_path / "good.jsonl", [row])
    with pytest.raises(InputError, match="--samples-per-bin"):
        inspect_source(open_pairs(good), samples_per_bin=0)


# --------------------------------------------------------------------------------------------------
# the page's text


def test_script_json_leaves_no_markup_and_round_trips():
    hostile = {"t": "</script><script>alert(1)</script> & <!-- \u2028"}
    text = script_json(hostile)
    assert not re.search(r"[<>&]", text)
    assert json.loads(text) == hostile


def test_the_page_is_self_contained_and_carries_data_only_as_escaped_json(tmp_path):
    rows = [
        {
            "prompt": "<script>window.pwned = 1</script>",
            "chosen": '<img src=x onerror="window.pwned = 2"> & </script>',
            "rejected": "plain",
            "score_chosen": 5.0,
            "score_rejected": 5.0 - i % 3,
            "source": "<b>src</b>",
        }
        for i in range(30)
    ]
    data = write_jsonl(tmp_path / "hostile.jsonl", rows)
    page = render_page(inspect_source(open_pairs(data)))
    assert page.count("<script") == 3  # plotly.js, the JSON data, the page's script
    assert "<script>window.pwned" not in page and "<img src=x" not in page
    assert "&lt;b&gt;src&lt;/b&gt;" in page or "<b>src</b>" not in page
    from plotly.offline import get_plotlyjs

    ours = page.replace(get_plotlyjs(), "")  # the browser test checks plotly.js fetches nothing
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", ours)


def test_page_size_stays_a_few_megabytes(uf1k, uf_seen, tmp_path):
    _, seen = uf_seen
    out = write_page(seen, tmp_path / "uf.html")
    size = out.stat().st_size
    from plotly.offline import get_plotlyjs

    assert size - len(get_plotlyjs().encode()) < 1_500_000  # the samples and figures
    assert render_page(seen) == out.read_text(encoding="utf-8")  # deterministic


# --------------------------------------------------------------------------------------------------
# split and run directories


def test_a_split_dir_page_starts_at_the_plans_threshold(uf1k, tmp_path, cli):
    split = tmp_path / "split"
    assert cli("route", uf1k, "--threshold", "1", "--out", split).code == 0
    seen, run = build_page(split, tmp_path / "split.html")
    assert run is None
    assert seen.thresholds.initial == 1.0
    assert seen.report.routing.sft == 302  # 304 pairs below 1, less 2 identical ones route dropped
    assert "mode mixdpo" in seen.extra["header"]


def test_reward_accuracy_per_margin_bin_by_hand():
    """Six pairs in rank order, margins 2, 2, 1, 1, 0.5, 0 (the last two routed sft), batch 2.

    Step 1 holds ranks 0-1 (both margin 2, dpo), accuracy 0.5 → bin of 2: 1 of 2 right.
    Step 2 holds ranks 2-3 (margin 1, dpo), accuracy 1.0 → bin of 1: 2 of 2.
    Step 3 holds ranks 4-5 (sft only): no accuracy is logged, nothing is credited.
    Step 4 (second epoch) holds ranks 0-1 again with accuracy 1.0 → bin of 2: (1 + 2) / 4 = 0.75.
    """
    from prefcurate.reporting.analyze import histogram

    split = pl.DataFrame(
        {
            "rank": [0, 1, 2, 3, 4, 5],
            "margin": [2.0, 2.0, 1.0, 1.0, 0.5, 0.0],
            "route": ["dpo", "dpo", "dpo", "dpo", "sft", "sft"],
        }
    )
    metrics = [
        {"step": 1, "rewards/accuracies": 0.5, "pairs/dpo": 2},
        {"step": 2, "rewards/accuracies": 1.0, "pairs/dpo": 2},
        {"step": 3, "rewards/accuracies": None, "pairs/dpo": 0},
        {"step": 4, "rewards/accuracies": 1.0, "pairs/dpo": 2},
    ]
    view = RunView(
        Path("run"), {"config": {"batch_size": 2, "grad_accum": 1}, "world_size": 1}, metrics, None
    )
    hist = histogram(split.get_column("margin"), threshold=0.5)
    rows = {hist.edges[r["bin"]] + 0.25: r for r in accuracy_by_margin(view, split, hist)}
    assert rows[2.0]["accuracy"] == 0.75 and rows[2.0]["steps"] == 2
    assert rows[2.0]["dpo_pairs"] == 2
    assert rows[1.0]["accuracy"] == 1.0 and rows[1.0]["mixed_steps"] == 0
    assert set(rows) == {1.0, 2.0}
    shuffled = RunView(Path("run"), {"config": {"shuffle": True}}, metrics, None)
    assert accuracy_by_margin(shuffled, split, hist) is None


# --------------------------------------------------------------------------------------------------
# the command


def test_inspect_writes_the_page_and_replaces_only_its_own(uf1k, tmp_path, cli):
    out = tmp_path / "uf.html"
    result = cli("inspect", uf1k, "--threshold", "0.5", "--out", out)
    assert result.code == 0, result.err
    assert "285 sample pairs of 1,000" in result.err
    first = out.read_bytes()
    assert b'<meta name="generator" content="prefcurate inspect">' in first
    assert cli("inspect", uf1k, "--threshold", "0.5", "--out", out).code == 0
    assert out.read_bytes() == first  # rerun: replaced, same bytes
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>")
    refused = cli("inspect", uf1k, "--out", mine)
    assert refused.code == 2 and "not written by prefcurate inspect" in refused.err
    assert mine.read_text() == "<p>my notes</p>"
    assert cli("inspect", tmp_path / "missing.jsonl", "--out", tmp_path / "x.html").code == 2
    assert not (tmp_path / "x.html").exists()


def test_analyze_out_writes_the_page_as_index_html(uf1k, tmp_path, cli):
    out = tmp_path / "report"
    assert cli("analyze", uf1k, "--threshold", "0.5", "--out", out).code == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '"initial":0.5' in page
    report = json.loads((out / "report.json").read_text())
    assert report["routing"]["sft"] == 110  # the 4 pairs with chosen = rejected are left out
    assert "index.html" in {p.name for p in out.iterdir()}
