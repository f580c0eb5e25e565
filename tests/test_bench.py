"""``prefcurate bench mixdpo`` and ``prefcurate demo`` end to end, at a tiny size; the declared
comparisons and gates on figures written here; docs/results.md rebuilt from its results.json.

Each seed trains its own small policies (200 demonstrations, one epoch) into a shared cache; the
benchmark then samples from the mixture, labels, routes, trains and judges for real, with few
pairs, prompts and seeds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from prefcurate.recipes import benchclaims
from prefcurate.recipes.basepolicy import BaseConfig
from prefcurate.recipes.bench import ARMS_BY_NAME, BenchConfig, run_bench
from prefcurate.recipes.benchreport import (
    BLOCKS,
    HEADER,
    markdown,
    rebuild_page,
    table_rows,
    write_outputs,
)
from prefcurate.recipes.demo import run_demo
from prefcurate.reporting.stats import holm, paired

REPO = Path(__file__).resolve().parent.parent
SMALL_BASE = BaseConfig(demos=200, epochs=1)
ARMS = (
    "oracle",
    "dpo",
    "dpo-curriculum",
    "filter",
    "filter-same-lr",
    "mixdpo-0.5",
    "mixdpo-0.5-spread",
    "mixdpo-0.5-phased",
    "soft-0.5-phased",
    "dpo/fair-judge",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def small(out: Path, cache: Path, **kwargs) -> BenchConfig:
    settings = {"seeds": 2, "pairs": 48, "eval_prompts": 40, "arms": ARMS, "base": SMALL_BASE}
    settings["workers"] = 1
    return BenchConfig(out=out, cache_dir=cache, **{**settings, **kwargs})


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench") / "out"


@pytest.fixture(scope="module")
def result(out, cache) -> dict:
    return run_bench(small(out, cache))


def test_bench_table_has_every_arm_figure_and_rate_share(result):
    rows = {r["arm"]: r for r in result["table"]}
    assert list(rows) == ["base", "base-redraw", *ARMS]
    for row in rows.values():
        for key in ("gold", "win_rate", "lc_win_rate", "invalid", "length", "length_valid"):
            assert key in row and f"{key}_sd" in row and f"{key}_ci" in row
        assert 0.0 <= row["gold"] <= 1.0 and 0.0 <= row["win_rate"] <= 100.0
    # the base policy judged against itself: every prompt a tie
    assert rows["base"]["win_rate"] == 50.0 and rows["base"]["lc_win_rate"] == 50.0
    # τ = 0.5 on half-point ratings routes exactly the ties; filter drops exactly them
    tie_share = [s["pairs"]["tie_share"] for s in result["seeds"]]
    assert rows["mixdpo-0.5"]["sft_share"] == pytest.approx(sum(tie_share) / 2)
    assert rows["filter"]["pairs_trained"] == pytest.approx(
        sum(round(48 * (1 - t)) for t in tie_share) / 2
    )
    assert rows["dpo"]["pairs_trained"] == 48 and rows["dpo"]["steps"] == 3  # 48 / 16
    # 3 steps, warmup 1, cosine: factors 1, 1, 0.5; the same dpo pairs at the same rates
    for seed in result["seeds"]:
        same, mixdpo = seed["arms"]["filter-same-lr"], seed["arms"]["mixdpo-0.5"]
        assert same["lr_share"]["dpo"] == pytest.approx(mixdpo["lr_share"]["dpo"], abs=0.05)
        assert seed["arms"]["mixdpo-0.5-phased"]["schedule_aware"]
    assert [g["id"] for g in result["gates"]] == ["G1", "G2", "G3", "G4", "G5"]
    cost = result["cost"]
    assert cost["cpu_seconds"] > 0 and cost["load_average"]["samples"] >= 2


def test_each_seed_has_its_own_policies_and_held_out_prompts(result, out):
    first, second = result["seeds"]
    assert set(first["policies"]) == {"weak", "base", "strong"}
    assert all(first["policies"][p] != second["policies"][p] for p in first["policies"])
    rows = [json.loads(x) for x in (out / "seed-0" / "judge.jsonl").read_text().splitlines()]
    names = {r["policy_chosen"] for r in rows} | {r["policy_rejected"] for r in rows}
    assert names <= {"weak", "base", "strong"} and len({r["policy_chosen"] for r in rows}) > 1
    ties = [r for r in rows if r["score_chosen"] == r["score_rejected"]]
    wins = [
        0.5 if r["gold_chosen"] == r["gold_base"] else float(r["gold_chosen"] > r["gold_base"])
        for r in ties
    ]
    assert first["pairs"]["tie_chosen_beats_base"] == pytest.approx(sum(wins) / len(wins))


def test_the_fair_judge_rates_the_same_answers_without_the_length_term(out):
    """Same answers, same noise draws: an answer of the ideal length (no excess, so no length
    term) gets the same rating from both judges."""
    judged, fair = (
        [json.loads(x) for x in (out / "seed-0" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("judge", "fair-judge")
    )
    assert len(judged) == len(fair) == 48
    ideal_length = 0
    for a, b in zip(judged, fair, strict=True):
        assert a["prompt"] == b["prompt"]
        assert {a["chosen"], a["rejected"]} == {b["chosen"], b["rejected"]}
        rated = {b["chosen"]: b["score_chosen"], b["rejected"]: b["score_rejected"]}
        ideal = len(a["prompt"]) - len("sort:=")
        for side in ("chosen", "rejected"):
            if len(a[side]) == ideal:
                ideal_length += 1
                assert rated[a[side]] == a[f"score_{side}"]
    assert ideal_length > 0


def test_claims_are_paired_intervals_with_holm_within_each_family(result):
    gold = [c for c in result["comparisons"] if c["metric"] == "gold"]
    assert {c["id"] for c in gold} == {
        *("P1", "P2", "P3", "P4", "E1", "E3", "E5", "E6", "E7", "E10", "E18", "E19"),
    }
    seeds = result["seeds"]
    for c in (c for c in gold if c["stopped"] is None):
        again = paired(
            [s["evaluation"][c["a"]]["gold"] for s in seeds],
            [s["evaluation"][c["b"]]["gold"] for s in seeds],
            seed=next(
                i
                for i, k in enumerate(benchclaims.present_claims(set(ARMS) | {"base"}))
                if k.id == c["id"]
            ),  # fmt: skip
        )
        assert (c["mean"], c["t_low"], c["boot_high"]) == (again.mean, again.t_low, again.boot_high)
    for family in ("primary", "exploratory"):
        computed = [c for c in gold if c["family"] == family and c["stopped"] is None]
        adjusted = holm({f"{c['id']} gold": c["p"] for c in computed})
        assert {c["id"]: c["p_holm"] for c in computed} == {
            c["id"]: adjusted[f"{c['id']} gold"] for c in computed
        }
    lengths = {c["id"] for c in result["comparisons"] if c["family"] == "length"}
    assert lengths == {"L1", "L2", "L3"}


def _seed(gold: dict[str, float], sft: dict[str, float], dpo_share: float = 0.5) -> dict:
    """A seed's figures as run_seed returns them, with only what the claims read."""
    evaluation = {a: {"gold": g, "lc_win_rate": 50 + 100 * (g - 0.6)} for a, g in gold.items()}
    arms = {
        a: {
            "description": a,
            "schedule": "cosine",
            "placement": None,
            "threshold": 0.5,
            "sft_share": 0.12 if a in sft else 0.0,
            "pairs": {"pairs": 2000},
            "steps": 125,
            "schedule_aware": a in sft,
            "lr_share": {"dpo": dpo_share, "sft": sft.get(a)},
        }
        for a in gold
        if a not in ("base", "base-redraw")
    }
    pairs = {"tie_share": 0.12}
    return {"evaluation": evaluation, "arms": arms, "pairs": pairs, "pairs_fair_judge": pairs}


NAMES = ["base", "base-redraw", "oracle", "dpo", "mixdpo-0.5", "mixdpo-0.5-spread", "filter"]


def _seeds(oracle: tuple[float, ...], spread_sft: float = 0.5) -> list[dict]:
    seeds = []
    for i, o in enumerate(oracle):
        gold = {"base": 0.60, "base-redraw": 0.601, "oracle": o, "dpo": 0.62 + 0.001 * i}
        gold |= {"mixdpo-0.5": 0.63 + 0.002 * i, "mixdpo-0.5-spread": 0.64 - 0.001 * i}
        gold["filter"] = 0.625 + 0.003 * (i % 2)
        seeds.append(_seed(gold, {"mixdpo-0.5-spread": spread_sft}))
    return seeds


def test_a_failed_gate_stops_the_comparisons_it_invalidates():
    """Four seeds of made-up figures. The spread arm's sft pairs at 5% of the peak rate (G3):
    every comparison with it (P1, P3, E7) is stopped — no interval, p or verdict — and leaves its
    Holm family; the others are computed and corrected among themselves."""
    seeds = _seeds((0.7, 0.7, 0.7, 0.7), spread_sft=0.05)
    result = benchclaims.summarize(seeds, NAMES)
    gates = {g["id"]: g for g in result["gates"]}
    assert gates["G3"]["passed"] is False and gates["G3"]["stops"] == ["P1", "P3", "E7"]
    assert gates["G1"]["passed"] and gates["G2"]["passed"]
    gold = {c["id"]: c for c in result["comparisons"] if c["metric"] == "gold"}
    for stopped in ("P1", "P3", "E7"):
        assert gold[stopped]["stopped"] == "G3"
        assert "mean" not in gold[stopped] and gold[stopped]["verdict"] is None
    computed = [c for c in gold.values() if c["family"] == "exploratory" and not c["stopped"]]
    assert {c["id"] for c in computed} == {"E19"}
    assert computed[0]["p_holm"] == pytest.approx(computed[0]["p"], rel=1e-9)  # alone now
    md = BLOCKS["exploratory"]({**result, "seeds": seeds})
    assert "| E7 routing vs discarding, spread | mixdpo-0.5-spread − filter | — |" in md
    assert "stopped by G3 |" in md


def test_an_oracle_that_does_not_beat_base_stops_every_comparison():
    result = benchclaims.summarize(_seeds((0.7, 0.59, 0.7, 0.7)), NAMES)
    assert result["gates"][0]["passed"] is False
    assert all(c["stopped"] and "G1" in c["stopped"] for c in result["comparisons"])
    passing = benchclaims.summarize(_seeds((0.7, 0.7, 0.7, 0.7)), NAMES)
    assert not any(c["stopped"] for c in passing["comparisons"])
    assert {c["verdict"] for c in passing["comparisons"] if c["metric"] == "gold"} <= {
        "supported", "contradicted", "inconclusive",
    }  # fmt: skip


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


def test_bench_outputs_markdown_blocks_and_chart(result, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(result))
    paths = write_outputs(result, tmp_path)
    md = paths["results.md"].read_text()
    assert "| " + " | ".join(HEADER) + " |" in md
    assert len(table_rows(result)) == 2 + len(ARMS)
    assert "ties (margin 0)" in md and "G1 oracle beats base" in md
    assert "P2 phased MixDPO vs shuffled DPO" in md and "95% CI (bootstrap)" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md == markdown(json.loads((tmp_path / "results.json").read_text()))


def test_bench_uses_the_real_route_split_placement_and_schedule(out):
    seed = out / "seed-0"
    plan = json.loads((seed / "mixdpo-0.5" / "split" / "plan.json").read_text())
    assert (plan["mode"], plan["threshold"], plan["placement"]) == ("mixdpo", 0.5, "last")
    train = pl.read_parquet(seed / "mixdpo-0.5" / "split" / "train.parquet")
    assert (train["route"] == "sft").to_list() == (train["margin"] < 0.5).to_list()
    # curriculum: margins descend along the rank, so the sft pairs come last
    assert train["margin"].to_list() == sorted(train["margin"].to_list(), reverse=True)
    spread = json.loads((seed / "mixdpo-0.5-spread" / "split" / "plan.json").read_text())
    assert spread["placement"] == "spread"
    assert json.loads((seed / "dpo" / "split" / "plan.json").read_text())["order"] == "random"
    soft = pl.read_parquet(seed / "soft-0.5-phased" / "split" / "train.parquet")
    assert soft["weight"].min() > 0 and soft["weight"].max() < 1
    run = json.loads((seed / "mixdpo-0.5-phased" / "run" / "run.json").read_text())
    assert (run["config"]["beta"], run["config"]["label_smoothing"]) == (0.01, 0.1)
    assert run["lr_schedule"]["kind"] == "phased"
    same = json.loads((seed / "filter-same-lr" / "run" / "run.json").read_text())
    assert same["config"]["schedule_steps"] == 3 and same["lr_schedule"]["steps"] == 3
    assert ARMS_BY_NAME["dpo/fair-judge"].labels == "fair-judge"


def test_same_seed_gives_the_same_numbers(result, tmp_path, cache):
    """Run again, the seeds now in two processes: the same table, the same comparisons."""
    again = run_bench(small(tmp_path / "again", cache, workers=2))

    def without_cost(md: str) -> list[str]:  # wall time, CPU time and load change run to run
        return [line for line in md.splitlines() if not line.startswith("- run:")]

    assert without_cost(markdown(again)) == without_cost(markdown(result))
    assert again["table"] == result["table"]
    assert again["comparisons"] == result["comparisons"]


def test_docs_results_md_is_rebuilt_from_results_json_byte_for_byte():
    """Every table of docs/results.md is a block rebuilt from docs/bench_results.json."""
    page = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    result = json.loads((REPO / "docs" / "bench_results.json").read_text())
    assert rebuild_page(result, page) == page
    for name in ("arms", "gates", "primary", "exploratory", "length", "pairs", "seeds", "cost"):
        assert f"<!-- bench:{name} -->" in page
    assert len(result["seeds"]) == result["config"]["seeds"] == 10


def test_bench_report_rewrites_a_page_and_draws_the_chart(cli, tmp_path):
    shutil.copy(REPO / "docs" / "bench_results.json", tmp_path / "results.json")
    page = tmp_path / "page.md"
    page.write_text("# a page\n\n<!-- bench:primary -->\nstale\n<!-- /bench:primary -->\n")
    done = cli("bench", "report", tmp_path / "results.json", "--page", page)
    assert done.code == 0, done.err
    result = json.loads((tmp_path / "results.json").read_text())
    expected = "# a page\n\n<!-- bench:primary -->\n" + BLOCKS["primary"](result)
    assert page.read_text() == expected + "<!-- /bench:primary -->\n"
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = cli("bench", "report", tmp_path / "missing.json")
    assert bad.code == 2 and "no such file" in bad.err and len(bad.err.strip().splitlines()) == 1
    (tmp_path / "plain.md").write_text("no blocks\n")
    bad = cli("bench", "report", tmp_path / "results.json", "--page", tmp_path / "plain.md")
    assert bad.code == 2 and "no <!-- bench:NAME --> block" in bad.err
    assert (tmp_path / "plain.md").read_text() == "no blocks\n"


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
    config = BaseConfig()
    assert config.key(frozenset({"sort:12=", "sort:31="})) == config.key(
        frozenset({"sort:31=", "sort:12="})
    )
    assert config.key(frozenset({"sort:12="})) != config.key(frozenset({"sort:13="}))
    assert config.key(frozenset()) != BaseConfig(seed=1).key(frozenset())
