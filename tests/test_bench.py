"""``prefcurate bench mixdpo`` and ``prefcurate demo`` end to end, at a tiny size.

A small base policy (200 demonstrations, one epoch) and its weak and strong siblings are trained
once per module into a shared cache; the benchmark then samples from the mixture, labels, routes,
trains and judges for real, just with few pairs, prompts and seeds.
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
ARMS = ("oracle", "dpo", "filter", "mixdpo-0.5", "soft-0.5")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def small(out: Path, cache: Path, **kwargs) -> BenchConfig:
    settings = {"seeds": 2, "pairs": 48, "eval_prompts": 40, "arms": ARMS, "base": SMALL_BASE}
    settings["workers"] = 1
    return BenchConfig(out=out, cache_dir=cache, **{**settings, **kwargs})


@pytest.fixture(scope="module")
def result(tmp_path_factory, cache) -> dict:
    return run_bench(small(tmp_path_factory.mktemp("bench") / "out", cache))


def test_bench_table_has_every_arm_and_figure(result):
    rows = {r["arm"]: r for r in result["table"]}
    assert list(rows) == ["base", "base-redraw", *ARMS]
    for row in rows.values():
        for key in ("gold", "win_rate", "lc_win_rate", "invalid"):
            assert key in row and f"{key}_sd" in row and f"{key}_ci" in row
        assert 0.0 <= row["gold"] <= 1.0 and 0.0 <= row["win_rate"] <= 100.0
    # the base policy judged against itself: every prompt a tie
    assert rows["base"]["win_rate"] == 50.0 and rows["base"]["lc_win_rate"] == 50.0
    pairs = result["seeds"][0]["pairs"]
    assert pairs["pairs"] == 48
    # τ = 0.5 on half-point ratings routes exactly the ties; filter drops exactly them
    tie_share = [s["pairs"]["tie_share"] for s in result["seeds"]]
    assert rows["mixdpo-0.5"]["sft_share"] == pytest.approx(sum(tie_share) / 2)
    assert rows["filter"]["pairs_trained"] == pytest.approx(
        sum(round(48 * (1 - t)) for t in tie_share) / 2
    )
    assert rows["dpo"]["pairs_trained"] == 48 and rows["dpo"]["steps"] == 3  # 48 / 16
    assert set(result["gates"]) >= {"oracle_beats_base", "eval_noise_small", "eval_noise_gold"}
    assert result["cpu_seconds"] > 0 and "start" in result["load_average"]


def test_pairs_come_from_the_policy_mixture_and_are_checked(result):
    assert set(result["policies"]) == {"weak", "base", "strong"}
    rows = [
        json.loads(line)
        for line in (Path(result["config"]["out"]) / "seed-0" / "pairs.jsonl")
        .read_text()
        .splitlines()
    ]
    assert {r["policy_chosen"] for r in rows} | {r["policy_rejected"] for r in rows} <= {
        "weak",
        "base",
        "strong",
    }
    assert len({r["policy_chosen"] for r in rows}) > 1
    pairs = result["seeds"][0]["pairs"]
    for key in ("tie_chosen_beats_base", "chosen_beats_base", "inverted_margin_0.5"):
        assert key in pairs
    ties = [r for r in rows if r["score_chosen"] == r["score_rejected"]]
    wins = [
        0.5 if r["gold_chosen"] == r["gold_base"] else float(r["gold_chosen"] > r["gold_base"])
        for r in ties
    ]
    assert pairs["tie_chosen_beats_base"] == pytest.approx(sum(wins) / len(wins))


def test_claims_are_paired_intervals_with_holm(result):
    from prefcurate.reporting.stats import holm, paired

    claims = {c["name"]: c for c in result["comparisons"] if c["metric"] == "gold"}
    assert set(claims) == {
        "routing vs DPO",
        "routing vs discarding",
        "soft vs hard routing",
        "label noise costs",
    }
    primary = claims["routing vs DPO"]
    assert primary["primary"] and primary["p_holm"] is None
    gold = {
        arm: [s["evaluation"][arm]["gold"] for s in result["seeds"]]
        for arm in ("mixdpo-0.5", "dpo")
    }
    again = paired(gold["mixdpo-0.5"], gold["dpo"], seed=0)
    assert (primary["mean"], primary["t_low"], primary["t_high"]) == (
        again.mean,
        again.t_low,
        again.t_high,
    )
    adjusted = holm({n: c["p"] for n, c in claims.items() if not c["primary"]})
    for name, p in adjusted.items():
        assert claims[name]["p_holm"] == p


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
        assert row[0] in text and row[1] in text


def test_bench_outputs_markdown_table_and_chart(result, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(result))
    paths = write_outputs(result, tmp_path)
    md = paths["results.md"].read_text()
    assert md.splitlines()[0] == "| " + " | ".join(HEADER) + " |"
    assert len(table_rows(result)) == 2 + len(ARMS)
    assert "ties" in md and "oracle beats base" in md
    assert "routing vs DPO (primary)" in md and "95% CI (bootstrap)" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_uses_the_real_route_split(result):
    out = Path(result["config"]["out"]) / "seed-0"
    plan = json.loads((out / "mixdpo-0.5" / "split" / "plan.json").read_text())
    assert plan["mode"] == "mixdpo" and plan["threshold"] == 0.5 and plan["order"] == "curriculum"
    train = pl.read_parquet(out / "mixdpo-0.5" / "split" / "train.parquet")
    assert (train["route"] == "sft").to_list() == (train["margin"] < 0.5).to_list()
    # curriculum: margins descend along the rank, so the sft pairs come last
    assert train["margin"].to_list() == sorted(train["margin"].to_list(), reverse=True)
    assert json.loads((out / "dpo" / "split" / "plan.json").read_text())["order"] == "random"
    soft = pl.read_parquet(out / "soft-0.5" / "split" / "train.parquet")
    assert soft["weight"].min() > 0 and soft["weight"].max() < 1
    run = json.loads((out / "dpo" / "run" / "run.json").read_text())["config"]
    assert (run["beta"], run["label_smoothing"], run["lr_schedule"]) == (0.01, 0.1, "cosine")


def test_same_seed_gives_the_same_numbers(result, tmp_path, cache):
    """Run again, the seeds now in two processes: the same table, the same claims."""
    again = run_bench(small(tmp_path / "again", cache, workers=2))

    def without_cost(md: str) -> list[str]:  # wall time, CPU time and load change run to run
        return [line for line in md.splitlines() if not line.startswith("- run:")]

    assert without_cost(markdown(again)) == without_cost(markdown(result))
    assert again["table"] == result["table"]
    assert again["comparisons"] == result["comparisons"]


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
