"""`prefcurate route` end to end: the issue's Show items, bad inputs, and atomic writing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from prefcurate.base.outdir import MANIFEST

REPO = Path(__file__).resolve().parent.parent

PLOTS = ["lengths.png", "margin_cdf.png", "margin_hist.png", "margin_vs_length.png"]
SPLIT_FILES = sorted([*PLOTS, "plan.json", "train.parquet", MANIFEST])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------------------------------
# Show


def test_route_ultrafeedback_at_tau_half(cli, uf1k, tmp_path):
    out = tmp_path / "uf"
    result = cli("route", uf1k, "--threshold", "0.5", "--out", out)
    assert result.code == 0, result.err
    assert "885 dpo, 110 sft, 5 dropped (4 identical, 1 empty_chosen)" in result.out
    train = pl.read_parquet(out / "train.parquet")
    routes = train.get_column("route").to_list()
    assert (routes.count("dpo"), routes.count("sft")) == (885, 110)
    assert train.filter(pl.col("rank") == 0).get_column("margin").item() == 8.0
    by_rank = train.sort("rank").get_column("margin").to_list()
    assert all(a >= b for a, b in zip(by_rank, by_rank[1:], strict=False))
    ranks = train.group_by("route").agg(pl.col("rank").min().alias("lo"), pl.col("rank").max())
    ranks = dict(zip(ranks["route"], zip(ranks["lo"], ranks["rank"], strict=True), strict=True))
    assert ranks["dpo"][1] < ranks["sft"][0]  # every sft pair after every dpo pair
    plan = json.loads((out / "plan.json").read_text())
    assert plan["mode"] == "mixdpo" and plan["threshold"] == 0.5 and plan["order"] == "curriculum"
    assert plan["counts"]["in"] == 1000 and plan["counts"]["dropped"] == 5
    assert plan["counts"]["dropped_by_reason"]["identical"] == 4
    assert plan["counts"]["dropped_by_reason"]["empty_chosen"] == 1
    assert sorted(p.name for p in out.iterdir()) == SPLIT_FILES


def test_route_plots_mark_the_split(cli, uf1k, tmp_path):
    """The analyze figures of the routed pairs: real PNGs of a readable size."""
    out = tmp_path / "split"
    assert cli("route", uf1k, "--threshold", "0.5", "--out", out).code == 0
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name


def test_filter_mode_writes_885_pairs_and_no_sft(cli, uf1k, tmp_path):
    result = cli("route", uf1k, "--threshold", "0.5", "--mode", "filter", "--out", tmp_path / "f")
    assert result.code == 0, result.err
    train = pl.read_parquet(tmp_path / "f" / "train.parquet")
    assert train.height == 885
    assert train.filter(pl.col("route") == "sft").height == 0


def test_flags_reach_the_plan(cli, uf1k, tmp_path):
    result = cli(
        "route", uf1k, "--sft-fraction", "0.3", "--stages", "3", "--seed", "4",
        "--eval-fraction", "0.2", "--drop", "chosen = rejected", "--export", "trl",
        "--out", tmp_path / "o", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert plan == json.loads((tmp_path / "o" / "plan.json").read_text())
    assert (plan["threshold"], plan["sft_fraction"], plan["stages"], plan["seed"]) == (
        1.0,
        0.3,
        3,
        4,
    )
    assert plan["drop"] == ["chosen = rejected"]
    assert plan["outputs"] == {
        "train": "train.parquet",
        "eval": "eval.parquet",
        "trl": {
            "dpo": "dpo.jsonl",
            "sft": "sft.jsonl",
            "dpo_eval": "dpo_eval.jsonl",
            "sft_eval": "sft_eval.jsonl",
        },
    }
    counts = plan["counts"]
    held = pl.read_parquet(tmp_path / "o" / "eval.parquet")
    kept = 1000 - counts["dropped"]
    assert held.height == counts["eval"] == int(0.2 * kept + 0.5)
    assert counts["in"] == counts["train"] + counts["eval"] + counts["dropped"]
    assert counts["train"] == counts["dpo"] + counts["sft"]
    train = pl.read_parquet(tmp_path / "o" / "train.parquet")
    assert sorted(set(train.get_column("stage"))) == [0, 1, 2]


def test_random_order_changes_only_the_order(cli, uf1k, tmp_path):
    for name, order in (("c", "curriculum"), ("r", "random")):
        assert (
            cli(
                "route", uf1k, "--threshold", "0.5", "--order", order, "--out", tmp_path / name
            ).code
            == 0
        )
    curriculum = pl.read_parquet(tmp_path / "c" / "train.parquet")
    shuffled = pl.read_parquet(tmp_path / "r" / "train.parquet")
    assert shuffled.get_column("pair_id").to_list() != curriculum.get_column("pair_id").to_list()
    same = curriculum.select("pair_id", "route").sort("pair_id")
    assert shuffled.select("pair_id", "route").sort("pair_id").equals(same)


def test_two_runs_write_identical_bytes(cli, uf1k, tmp_path):
    for name in ("a", "b"):
        assert (
            cli(
                "route",
                uf1k,
                "--threshold",
                "0.5",
                "--eval-fraction",
                "0.1",
                "--out",
                tmp_path / name,
            ).code
            == 0
        )
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")


def test_memory_budget_chooses_the_pass_not_the_bytes(cli, uf1k, tmp_path):
    """--memory-budget 0 forces the bounded two-pass path; the files are the same bytes."""
    for name, budget in (("one", "1GB"), ("two", "0")):
        flags = ("--threshold", "0.5", "--eval-fraction", "0.1", "--memory-budget", budget)
        assert cli("route", uf1k, *flags, "--out", tmp_path / name).code == 0
    assert _snapshot(tmp_path / "one") == _snapshot(tmp_path / "two")


# --------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written, nothing recorded


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--threshold", "nan"], "--threshold must be a finite number"),
        (["--threshold", "inf"], "--threshold must be a finite number"),
        (["--threshold", "-inf"], "--threshold must be a finite number"),
        (["--sft-fraction", "-0.1"], "--sft-fraction must be between 0 and 1"),
        (["--sft-fraction", "1.5"], "--sft-fraction must be between 0 and 1"),
        (["--sft-fraction", "nan"], "--sft-fraction must be between 0 and 1"),
        (["--threshold", "0.5", "--sft-fraction", "0.1"], "mutually exclusive"),
        (["--threshold", "0.5", "--drop", "margin <"], "Parser Error"),
        (["--threshold", "0.5", "--drop", "no_col = 1"], 'column "no_col" not found'),
        ([], "needs a threshold"),
        (["--threshold", "0.5", "--mode", "mix"], "--mode must be one of"),
        (["--threshold", "0.5", "--order", "sorted"], "--order must be one of"),
        (["--threshold", "0.5", "--export", "csv"], "--export must be one of trl, trl-mixdpo"),
        (["--threshold", "0.5", "--eval-fraction", "1"], "--eval-fraction"),
        (["--threshold", "0.5", "--stages", "2", "--order", "random"], "--stages"),
        (["--threshold", "0.5", "--memory-budget", "2x"], "--text-memory must be a size"),
        (["--threshold", "0.5", "--memory-budget", "-1GB"], "--text-memory must be a size"),
    ],
)
def test_bad_arguments(cli, uf1k, tmp_path, flags, says):
    out = tmp_path / "never"
    result = cli("route", uf1k, "--out", out, *flags)
    assert result.code == 2, result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    assert says in result.err
    assert not out.exists() and not list(tmp_path.glob(".never*"))
    assert json.loads(cli("runs", "--json").out) == []


def test_invalid_drop_reports_duckdbs_message_in_one_line(cli, uf1k, tmp_path):
    result = cli(
        "route",
        uf1k,
        "--threshold",
        "0.5",
        "--drop",
        "chosen = = rejected",
        "--out",
        tmp_path / "o",
    )
    assert result.code == 2
    assert 'Parser Error: syntax error at or near "="' in result.err
    assert "invalid --drop predicate 'chosen = = rejected'" in result.err
    assert result.err.count("\n") == 1


def test_threshold_on_data_without_margins_says_how_to_get_them(cli, hh, tmp_path):
    result = cli("route", hh, "--threshold", "0.5", "--out", tmp_path / "o")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "no margins" in result.err
    assert "--score-chosen" in result.err and "prefcurate score" in result.err
    assert not (tmp_path / "o").exists()


def test_existing_directory_without_force_is_left_untouched(cli, uf1k, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for extra in ((), ("--force",)):
        result = cli("route", uf1k, "--threshold", "0.5", "--out", out, *extra)
        assert result.code == 2 and result.err.count("\n") == 1
        assert "prefcurate did not write (notes.txt)" in result.err
        assert _snapshot(out) == {"notes.txt": b"keep me"}


def test_missing_out_is_an_input_error(cli, uf1k):
    result = cli("route", uf1k, "--threshold", "0.5")
    assert result.code == 2 and "--out is required" in result.err


def test_bad_data_is_located_by_the_loader(cli, tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": 5, "score_rejected": 1}]
    rows.append({**rows[0], "chosen": "c2", "score_chosen": "five"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("route", data, "--threshold", "0.5", "--out", tmp_path / "o")
    assert result.code == 2 and "line 2" in result.err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------
# atomic writing: a run killed in the middle of the write


#: Runs ``prefcurate route`` with a fault injected from outside: after the first chunk of
#: train.parquet has gone to the writer, it creates the file READY and sleeps, so the test can
#: kill the process in the middle of the write.
PAUSED_ROUTE = """
import sys, time
from pathlib import Path
import prefcurate.routing.writer as writer
from prefcurate.cli import main

ready, args = Path(sys.argv[1]), sys.argv[2:]
chunks = writer.split_chunks

def paused(*a, **k):
    for i, chunk in enumerate(chunks(*a, **k)):
        yield chunk
        if i == 0 and not ready.exists():
            ready.write_text("paused")
            time.sleep(60)

writer.split_chunks = paused
sys.exit(main(args))
"""


def _start_paused_route(uf1k: Path, out: Path, ready: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["route", str(uf1k), "--out", str(out), *flags]
    return subprocess.Popen(
        [sys.executable, "-c", PAUSED_ROUTE, str(ready), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when_paused(proc: subprocess.Popen, ready: Path) -> None:
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"route exited before the write: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "route never reached the write"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_killed_during_the_write_leaves_the_old_directory(cli, uf1k, tmp_path):
    out = tmp_path / "split"
    assert cli("route", uf1k, "--threshold", "0.5", "--out", out).code == 0
    before = _snapshot(out)
    ready = tmp_path / "ready"
    proc = _start_paused_route(uf1k, out, ready, "--threshold", "1.0", "--force", "--export", "trl")
    _kill_when_paused(proc, ready)

    (partial,) = tmp_path.glob(".split.tmp-*")  # the new split, half written, beside DIR
    assert (partial / "train.parquet").exists() and not (partial / "plan.json").exists()
    assert _snapshot(out) == before  # DIR is the old split, whole
    assert len(json.loads(cli("runs", "--json").out)) == 1  # the killed run recorded nothing

    result = cli("route", uf1k, "--threshold", "1.0", "--out", out, "--force")
    assert result.code == 0, result.err
    assert not list(tmp_path.glob(".split.*"))  # the leftover is cleaned up
    plan = json.loads((out / "plan.json").read_text())
    assert plan["threshold"] == 1.0 and plan["counts"]["sft"] == 302
    assert pl.read_parquet(out / "train.parquet").height == 995


def test_killed_first_write_leaves_no_directory(cli, uf1k, tmp_path):
    out = tmp_path / "fresh"
    ready = tmp_path / "ready"
    proc = _start_paused_route(uf1k, out, ready, "--threshold", "0.5")
    _kill_when_paused(proc, ready)
    assert not out.exists()
    result = cli("route", uf1k, "--threshold", "0.5", "--out", out)  # no --force needed
    assert result.code == 0, result.err
    assert not list(tmp_path.glob(".fresh.*"))
    assert sorted(p.name for p in out.iterdir()) == SPLIT_FILES
