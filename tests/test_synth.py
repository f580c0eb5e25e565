"""Synthetic data: reproducible to the byte, and shaped like UltraFeedback."""

from __future__ import annotations

import polars as pl
import pytest

from prefcurate.base.errors import InputError
from prefcurate.data.io import open_pairs
from prefcurate.data.synth import CHUNK_ROWS, SOURCES, synth, write_synth
from prefcurate.reporting.analyze import analyze

N = 20_000  # more than one chunk, so chunk boundaries are exercised


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return synth(N, seed=7).with_columns(
        margin=pl.col("score_chosen") - pl.col("score_rejected"),
        c=pl.col("chosen").str.len_chars().cast(pl.Int64),
        r=pl.col("rejected").str.len_chars().cast(pl.Int64),
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_same_seed_same_bytes(tmp_path, suffix):
    a = write_synth(tmp_path / f"a{suffix}", n=2000, seed=7)
    b = write_synth(tmp_path / f"b{suffix}", n=2000, seed=7)
    c = write_synth(tmp_path / f"c{suffix}", n=2000, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_a_smaller_n_is_a_prefix_of_a_larger_one(sample):
    small = synth(CHUNK_ROWS + 10, seed=7)
    assert small.equals(sample.select(small.columns).head(CHUNK_ROWS + 10))


def test_ratings_on_the_half_point_grid_in_range(sample):
    for col in ("score_chosen", "score_rejected"):
        scores = sample.get_column(col)
        assert scores.min() >= 1.0 and scores.max() <= 10.0
        assert ((scores * 2) == (scores * 2).round()).all()


def test_ultrafeedback_like_margins(sample):
    """≈12% ties, most margins small, a long tail reaching 8 or more; the model's figures at
    n = 20,000 (see docs/synth.md)."""
    margin = sample.get_column("margin")
    tie_share = float((margin == 0).mean())
    assert 0.105 < tie_share < 0.135
    assert 0.20 < float((margin == 0.5).mean()) < 0.28
    assert margin.max() >= 8.0
    assert 1.5 < margin.mean() < 2.1
    assert float((margin >= 4).mean()) > 0.08  # the long tail


def test_realistic_lengths_chosen_slightly_longer(sample):
    c, r = sample.get_column("c"), sample.get_column("r")
    assert 1000 < c.mean() < 1450 and 900 < r.mean() < 1250
    assert c.mean() > r.mean()
    assert 0.52 < float((c > r).mean()) < 0.60
    assert c.median() < c.mean()  # lognormal: a long right tail
    assert c.min() >= 2 and c.max() <= 16_100
    prompt = sample.get_column("prompt").str.len_chars()
    assert 400 < prompt.mean() < 900


def test_texts_are_word_like(sample):
    text = sample.get_column("chosen")[0]
    words = text.split()
    assert text[0].isupper()  # responses start at a sentence
    assert 3 < sum(len(w) for w in words) / len(words) < 8
    common = " ".join(sample.get_column("chosen").head(50)).split()
    assert common.count("the") > 0.01 * len(common)  # Zipf: function words are frequent


def test_sources_have_their_shares(sample):
    shares = sample.get_column("source").value_counts(normalize=True)
    got = dict(zip(shares["source"], shares["proportion"], strict=True))
    for name, share, _, _ in SOURCES:
        assert abs(got[name] - share) < 0.02, name


def test_planted_flaws_are_found_by_analyze(tmp_path):
    path = write_synth(tmp_path / "flawed.parquet", n=5000, seed=8, flaw_rate=0.01)
    report = analyze(open_pairs(path))
    # each flaw hits ~1% of 5000 rows: ~50 (an inverted tie stays a tie, so a few less negatives)
    assert 25 < report.flags.identical < 80
    assert 25 < report.margin.negative < 80
    assert 25 < report.flags.duplicate_pairs < 80
    assert report.flags.duplicate_prompts > report.flags.duplicate_pairs
    assert report.layout == "standard" and report.fields["source"] == "source"
    assert len(report.sources) == len(SOURCES)


def test_clean_data_without_flaws(tmp_path):
    clean = write_synth(tmp_path / "clean.parquet", n=4000, seed=7, flaw_rate=0)
    report = analyze(open_pairs(clean))
    f = report.flags
    assert (report.margin.negative, f.identical, f.duplicate_pairs, f.duplicate_prompts) == (
        0,
        0,
        0,
        0,
    )
    assert f.empty == 0


def test_bad_arguments_write_nothing(tmp_path):
    with pytest.raises(InputError, match="unknown output type"):
        write_synth(tmp_path / "x.csv", n=10)
    with pytest.raises(InputError, match="at least 0"):
        write_synth(tmp_path / "x.jsonl", n=-1)
    with pytest.raises(InputError, match="flaw-rate"):
        write_synth(tmp_path / "x.jsonl", n=10, flaw_rate=0.5)
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "x.jsonl"
    existing.write_text("keep me")
    with pytest.raises(InputError, match="exists"):
        write_synth(existing, n=10)
    assert existing.read_text() == "keep me"
    write_synth(existing, n=10, seed=7, force=True)
    assert len(existing.read_text().splitlines()) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]  # no temporary leftovers


def test_zero_pairs():
    assert synth(0).height == 0
