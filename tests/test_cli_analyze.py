"""`prefcurate analyze` and `prefcurate synth` end to end, on the real data where it matters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prefcurate.base.outdir import MANIFEST
from prefcurate.reporting.plots import PLOT_FILES

CORE_KEYS = {
    "rows": None,
    "layout": None,
    "margin": {"count", "null", "min", "p05", "p25", "median", "p75", "p95", "max", "mean"}
    | {"ties", "negative"},
    "routing": {"threshold", "sft", "dpo", "sft_share"},
    "lengths": {
        "chosen_chars_mean",
        "rejected_chars_mean",
        "chosen_longer_share",
        "margin_length_corr",
    },
    "flags": {"identical", "empty", "duplicate_pairs", "duplicate_prompts"},
}


def test_show_ultrafeedback_threshold_with_out(cli, uf1k, tmp_path):
    """The issue's Show item: nested ratings found, 1000 rows, 111 ties, 110 → SFT, 884 → DPO
    (the 4 identical pairs and the one with an empty chosen response are left out, as route drops
    them)."""
    out = tmp_path / "report"
    result = cli("analyze", uf1k, "--threshold", "0.5", "--out", out)
    assert result.code == 0, result.err
    assert "1,000 pairs" in result.out
    assert "scores=metadata.score_chosen,metadata.score_rejected" in result.out
    assert "ties (margin = 0) 111 (11.1%)" in result.out
    assert "110 pairs (11.1%) to SFT, 885 (88.9%) to DPO" in result.out
    shown = " ".join(result.out.split())
    assert (
        "route drops 4 pairs with chosen = rejected, 1 pair with an empty chosen response" in shown
    )
    report = json.loads((out / "report.json").read_text())
    for key, inner in CORE_KEYS.items():
        assert key in report
        if inner:
            assert inner <= set(report[key]), key
    assert (report["rows"], report["layout"]) == (1000, "standard")
    assert report["margin"]["ties"] == 111
    assert report["routing"] == {
        "threshold": 0.5,
        "sft_fraction": None,
        "sft": 110,
        "dpo": 885,
        "sft_share": 0.110553,
        "unrouted": 0,
        "identical": 4,
        "empty_chosen": 1,
    }
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["report.json", "index.html", *PLOT_FILES, MANIFEST])
    for name in PLOT_FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sft_fraction_picks_the_ties(cli, uf1k):
    result = cli("analyze", uf1k, "--sft-fraction", "0.12", "--json")
    assert result.code == 0, result.err
    routing = json.loads(result.out)["routing"]
    assert (routing["threshold"], routing["sft_fraction"]) == (0.5, 0.12)
    assert (routing["sft"], routing["dpo"]) == (110, 885)


def test_json_prints_only_json(cli, uf1k):
    result = cli("analyze", uf1k, "--json")
    assert result.code == 0
    report = json.loads(result.out)  # nothing but the JSON on stdout
    assert report["rows"] == 1000 and "routing" not in report
    assert report["input"]["path"] == str(uf1k)


def test_show_hh_without_margins(cli, hh):
    result = cli("analyze", hh)
    assert result.code == 0, result.err
    assert "2,312 pairs" in result.out and "layout implicit_prompt" in result.out
    assert "prefcurate score" in result.out
    report = json.loads(cli("analyze", hh, "--json").out)
    assert report["rows"] == 2312
    assert report["margin"]["count"] == 0 and report["margin"]["median"] is None
    assert "prefcurate score" in report["hint"]
    assert report["lengths"]["prompt_chars_mean"] > 0  # the prompts were extracted


def test_hh_out_writes_the_lengths_figure_only(cli, hh, tmp_path):
    result = cli("analyze", hh, "--out", tmp_path / "r")
    assert result.code == 0, result.err
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == sorted([MANIFEST, "index.html", "lengths.png", "report.json"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "0.5", "--sft-fraction", "0.1"], "mutually exclusive"),
        (["--sft-fraction", "1.5"], "between 0 and 1"),
        (["--threshold", "nan"], "finite"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(cli, uf1k, tmp_path, args, message):
    out = tmp_path / "never"
    result = cli("analyze", uf1k, *args, "--out", out)
    assert result.code == 2
    assert result.err.count("\n") == 1 and message in result.err
    assert result.out == "" and not out.exists()


def test_threshold_on_data_without_margins(cli, hh, tmp_path):
    out = tmp_path / "never"
    result = cli("analyze", hh, "--threshold", "0.5", "--out", out)
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "no margins" in result.err and "prefcurate score" in result.err
    assert not out.exists()


def test_existing_out_needs_force_and_force_replaces_only_a_report(cli, hh, tmp_path):
    out = tmp_path / "report"
    assert cli("analyze", hh, "--out", out).code == 0
    result = cli("analyze", hh, "--out", out)
    assert result.code == 2 and result.err.count("\n") == 1 and "--force" in result.err
    assert cli("analyze", hh, "--out", out, "--force").code == 0
    assert (out / "report.json").exists()


def test_force_never_replaces_a_folder_of_the_users(cli, hh, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    for extra in ((), ("--force",)):
        result = cli("analyze", hh, "--out", out, *extra)
        assert result.code == 2 and result.err.count("\n") == 1
        assert "did not write (old.txt)" in result.err
        assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_missing_file(cli, tmp_path):
    result = cli("analyze", tmp_path / "nope.jsonl", "--out", tmp_path / "r")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "no such file" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_synth_then_analyze(cli, tmp_path):
    data = tmp_path / "pairs.parquet"
    result = cli("synth", data, "--n", "3000", "--seed", "7")
    assert result.code == 0, result.err
    report = json.loads(cli("analyze", data, "--json", "--threshold", "0.5").out)
    assert report["rows"] == 3000
    assert 0.09 < report["margin"]["ties"] / 3000 < 0.15
    assert len(report["sources"]) == 7
    again = cli("synth", data, "--n", "10")
    assert again.code == 2 and "--force" in again.err


def test_synth_bad_suffix(cli, tmp_path):
    result = cli("synth", tmp_path / "pairs.csv")
    assert result.code == 2 and result.err.count("\n") == 1 and ".jsonl or .parquet" in result.err
    assert list(tmp_path.iterdir()) == []


def test_data_side_never_imports_torch_or_pyplot():
    code = (
        "import sys, prefcurate.cli, prefcurate.reporting.analyze, prefcurate.reporting.plots, "
        "prefcurate.reporting.terminal, prefcurate.data.synth; "
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
