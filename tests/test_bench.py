"""``prefcurate bench mixdpo`` and ``prefcurate demo`` end to end, at a tiny size.

A small base policy (200 demonstrations, one epoch) is trained once per module into a shared
cache; the benchmark then samples, labels, routes, trains and judges for real, just with few
pairs and prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from prefcurate.recipes.basepolicy import BaseConfig
from prefcurate.recipes.bench import BenchConfig, run_bench
from prefcurate.recipes.benchreport import HEADER, markdown, table_rows, write_outputs
from prefcurate.recipes.demo import run_demo

SMALL_BASE = BaseConfig(demos=200, epochs=1)
ARMS = ("oracle", "dpo", "filter", "mixdpo-ties")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def small(out: Path, cache: Path, **kwargs) -> BenchConfig:
    settings = {"seeds": 1, "pairs": 48, "eval_prompts": 40, "arms": ARMS, "base": SMALL_BASE}
    return BenchConfig(out=out, cache_dir=cache, **{**settings, **kwargs})


@pytest.fixture(scope="module")
def result(tmp_path_factory, cache) -> dict:
    return run_bench(small(tmp_path_factory.mktemp("bench") / "out", cache))


def test_bench_table_has_every_arm_and_figure(result):
    rows = {r["arm"]: r for r in result["table"]}
    assert list(rows) == ["base", "base-redraw", *ARMS]
    for row in rows.values():
        for key in ("gold", "win_rate", "lc_win_rate", "invalid"):
            assert key in row and f"{key}_sd" in row
        assert 0.0 <= row["gold"] <= 1.0 and 0.0 <= row["win_rate"] <= 100.0
    # the base policy judged against itself: every prompt a tie
    assert rows["base"]["win_rate"] == 50.0 and rows["base"]["lc_win_rate"] == 50.0
    pairs = result["seeds"][0]["pairs"]
    assert pairs["pairs"] == 48
    # τ = 0.5 on half-point ratings routes exactly the ties; filter drops exactly them
    assert rows["mixdpo-ties"]["sft_share"] == pytest.approx(pairs["tie_share"])
    assert rows["filter"]["pairs_trained"] == round(48 * (1 - pairs["tie_share"]))
    assert rows["dpo"]["pairs_trained"] == 48 and rows["dpo"]["steps"] == 3  # 48 / 16
    assert set(result["gates"]) >= {"oracle_beats_base", "eval_noise_small", "eval_noise_gold"}


def test_terminal_table_keeps_every_arm_name_when_piped(result):
    """Piped to a log (80 columns, not a terminal), no arm name or figure is cut short."""
    import io

    from rich.console import Console

    from prefcurate.recipes.benchreport import render

    buffer = io.StringIO()
    render(result, Console(file=buffer, width=80))
    text = buffer.getvalue()
    assert "…" not in text
    for row in table_rows(result):
        assert row[0] in text and row[1].split(" ± ")[0] in text  # one seed: no "± 0.000"
    assert "±" not in text


def test_bench_outputs_markdown_table_and_chart(result, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(result))
    paths = write_outputs(result, tmp_path)
    md = paths["results.md"].read_text()
    assert md.splitlines()[0] == "| " + " | ".join(HEADER) + " |"
    assert len(table_rows(result)) == 2 + len(ARMS)
    assert "ties" in md and "oracle beats base" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_uses_the_real_route_split(result):
    out = Path(result["config"]["out"]) / "seed-0"
    plan = json.loads((out / "mixdpo-ties" / "split" / "plan.json").read_text())
    assert plan["mode"] == "mixdpo" and plan["threshold"] == 0.5 and plan["order"] == "curriculum"
    train = pl.read_parquet(out / "mixdpo-ties" / "split" / "train.parquet")
    assert (train["route"] == "sft").to_list() == (train["margin"] < 0.5).to_list()
    # curriculum: margins descend along the rank, so the sft pairs come last
    assert train["margin"].to_list() == sorted(train["margin"].to_list(), reverse=True)


def test_same_seed_gives_the_same_numbers(result, tmp_path, cache):
    again = run_bench(small(tmp_path / "again", cache))
    assert markdown(again) == markdown(result)
    assert again["table"] == result["table"]


def test_bad_bench_arguments_are_one_clear_line(cli, tmp_path):
    bad = cli("bench", "mixdpo", "--seeds", "0", "--out", tmp_path / "b")
    assert bad.code == 2 and bad.err.strip() == "error: --seeds must be at least 1, not 0"
    bad = cli("bench", "mixdpo", "--arms", "dpo,magic", "--out", tmp_path / "b")
    assert bad.code == 2 and "unknown arm 'magic'" in bad.err
    assert len(bad.err.strip().splitlines()) == 1


def test_demo_writes_report_plots_split_model_and_summary(tmp_path, cache):
    out = tmp_path / "demo"
    demo = run_demo(out, pairs=48, eval_prompts=40, cache_dir=cache, base=SMALL_BASE, quiet=True)
    for name in ("margin_hist.png", "margin_cdf.png", "report.json"):
        assert (out / "report" / name).is_file()
    assert (out / "split" / "train.parquet").is_file() and (out / "split" / "plan.json").is_file()
    assert any(p.suffix == ".png" for p in (out / "split").iterdir())
    assert (out / "run" / "model" / "config.json").is_file()
    assert (out / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["rows"] == 48 and report["routing"]["threshold"] == 0.5
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["base"]["win_rate"] == 50.0
    summary = demo.summary()
    for path in demo.artefacts.values():
        assert path.exists() and str(path) in summary
    assert demo.figures["dpo"] + demo.figures["sft"] == 48
    assert (out / "README.md").read_text().count(str(out / "eval.json")) == 1
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "Training run: run" in page and '"accuracy"' in page  # the run's figures
    readme = (out / "README.md").read_text()
    assert readme.index("index.html") < readme.index("eval.json")  # the page comes first


def test_demo_refuses_an_existing_folder(cli, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep")
    bad = cli("demo", "--out", tmp_path / "d")
    assert bad.code == 2 and "prefcurate did not write (x)" in bad.err
    assert (tmp_path / "d" / "x").read_text() == "keep"


def test_base_policy_key_covers_the_held_out_prompts():
    """The demo and the benchmark hold out different prompts, so they must not share a cache."""
    from prefcurate.recipes.basepolicy import BaseConfig

    config = BaseConfig()
    assert config.key(frozenset({"sort:12=", "sort:31="})) == config.key(
        frozenset({"sort:31=", "sort:12="})
    )
    assert config.key(frozenset({"sort:12="})) != config.key(frozenset({"sort:13="}))
    assert config.key(frozenset()) != BaseConfig(seed=1).key(frozenset())
