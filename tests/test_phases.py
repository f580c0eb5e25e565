"""Progress on the phases before and between the steps (loading, tokenizing, the reference pass,
evaluations, checkpoints, the export), in a terminal and piped."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console
from split_helpers import synthetic_rows, write_split

from prefcurate.base import progress
from prefcurate.base.progress import RichReporter


def test_piped_phase_prints_a_heartbeat_while_it_runs_and_a_line_at_the_end(monkeypatch):
    monkeypatch.setattr(progress, "PHASE_QUIET_S", 0.05)
    monkeypatch.setattr(progress, "PHASE_HEARTBEAT_S", 0.05)
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=False, width=200))
    with reporter.phase("tokenizing pairs", unit="pairs") as advance:
        advance(0, total=1000)
        advance(400)
        time.sleep(0.3)
        advance(600)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("tokenizing pairs 400/1,000 pairs;") for line in lines)
    assert lines[-1].startswith("tokenizing pairs: 1,000 pairs in ")


def test_a_short_phase_leaves_no_line():
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=False, width=200))
    with reporter.phase("reference log-probs", total=3, unit="pairs") as advance:
        advance(3)
    assert out.getvalue() == ""


def test_terminal_phase_draws_a_bar_then_a_line(monkeypatch):
    monkeypatch.setattr(progress, "PHASE_QUIET_S", 0.0)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    reporter = RichReporter(console)
    with reporter.phase("reference log-probs", unit="pairs") as advance:
        advance(0, total=10)
        advance(10)
    text = out.getvalue()
    assert "reference log-probs" in text and "10/10" in text  # the live bar
    assert "reference log-probs: 10 pairs in" in text  # the line it leaves
    # during training the same display holds the phase as a second row of the train bar
    reporter.start(total_steps=4, first_step=0)
    with reporter.phase("evaluating held-out pairs", total=5, unit="pairs") as advance:
        advance(5)
    reporter.close()
    assert "evaluating held-out pairs" in out.getvalue()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


def test_train_reports_every_phase_when_piped(cli, tmp_path, monkeypatch):
    """With the quiet threshold at 0, each phase of a run leaves its line on stderr (piped)."""
    monkeypatch.setattr(progress, "PHASE_QUIET_S", 0.0)
    split = write_split(tmp_path / "split", synthetic_rows(12, seed=1))
    result = cli("train", split, "--model", "tiny", "--out", tmp_path / "run", "--max-length",
                 "64", "--max-steps", "2", "--save-every", "2", "--catalog", "off")  # fmt: skip
    assert result.code == 0, result.err
    for phase in (
        "loading tiny:",
        "tokenizing pairs: 12 pairs in",
        "reference log-probs:",
        "checkpoint step-2:",
        "saving the final model:",
    ):
        assert phase in result.err, phase
