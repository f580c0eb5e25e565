"""Kill harness: SIGKILL route and train at random points; nothing half-written, nothing lost.

Each run is killed at a seeded random moment of its expected duration. Afterwards the output must
be the old complete result or the new complete one (route), a rerun/resume must finish with
exactly the uninterrupted result (train), and the catalog must stay readable with every run that
had completed. One kill per command runs in every test session; ``pytest -m slow`` runs 20 more.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from prefcurate.catalog import store as catalog

FAST_KILLS = [0]
SLOW_KILLS = [pytest.param(i, marks=pytest.mark.slow) for i in range(1, 21)]


def _prefcurate(*args: object, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "prefcurate", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _run(*args: object, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = _prefcurate(*args, env=env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return time.perf_counter() - started


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``proc`` after ``delay`` seconds; False if it had already finished."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix in (".parquet", ".json")
    }


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PREFCURATE_CATALOG": str(tmp_path / "catalog.duckdb")}


def _completed_runs(tmp_path: Path) -> list[str]:
    rows = catalog.list_runs(tmp_path / "catalog.duckdb", limit=1000)
    return [r["run_id"] for r in rows]


@pytest.fixture(scope="module")
def route_data(tmp_path_factory) -> Path:
    """Enough synthetic pairs that a route run takes a second or two to write."""
    path = tmp_path_factory.mktemp("data") / "pairs.parquet"
    code = subprocess.run(
        [sys.executable, "-m", "prefcurate", "synth", path, "--n", "30000", "--seed", "3"],
        capture_output=True,
        env={**os.environ, "PREFCURATE_CATALOG": "off"},
    )
    assert code.returncode == 0, code.stderr.decode()
    return path


@pytest.mark.parametrize("kill", FAST_KILLS + SLOW_KILLS)
def test_route_killed_leaves_old_or_new_output(route_data, tmp_path, kill):
    env = _env(tmp_path)
    # Reference outputs of the old and the new run, each written without interruption.
    old_ref, new_ref, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    _run("route", route_data, "--threshold", "1.0", "--out", old_ref, env=env)
    duration = _run("route", route_data, "--threshold", "0.5", "--out", new_ref, env=env)
    _run("route", route_data, "--threshold", "1.0", "--out", out, env=env)
    before = _completed_runs(tmp_path)

    delay = random.Random(kill).uniform(0.05, duration * 1.1)
    proc = _prefcurate("route", route_data, "--threshold", "0.5", "--out", out, "--force", env=env)
    killed = _kill_after(proc, delay)

    assert _digest(out) in (_digest(old_ref), _digest(new_ref))
    after = _completed_runs(tmp_path)  # the catalog opens, and no completed run is lost
    assert set(before) <= set(after)
    assert len(after) in (len(before), len(before) + 1)
    if not killed:
        assert _digest(out) == _digest(new_ref)
    # a rerun succeeds, yields the new result, and sweeps the killed run's temporary folder
    _run("route", route_data, "--threshold", "0.5", "--out", out, "--force", env=env)
    assert _digest(out) == _digest(new_ref)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


TRAIN_FLAGS = (
    "--model", "tiny", "--max-length", "64", "--batch-size", "4", "--max-steps", "12",
    "--save-every", "2", "--lr", "1e-3", "--shuffle", "--seed", "5",
)  # fmt: skip


@pytest.fixture(scope="module")
def train_split(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("split")
    rows = [
        {"prompt": f"q{i}", "chosen": f"good answer {i}" * 2, "rejected": f"bad {i}",
         "score_chosen": 5.0 + (i % 4) / 2, "score_rejected": 5.0}
        for i in range(60)
    ]  # fmt: skip
    pl.DataFrame(rows).write_parquet(folder / "pairs.parquet")
    split = folder / "split"
    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    _run("route", folder / "pairs.parquet", "--threshold", "0.5", "--out", split, env=env)
    return split


@pytest.fixture(scope="module")
def uninterrupted(train_split, tmp_path_factory) -> tuple[bytes, float]:
    run = tmp_path_factory.mktemp("ref") / "run"
    env = {**os.environ, "PREFCURATE_CATALOG": "off"}
    duration = _run("train", train_split, "--out", run, *TRAIN_FLAGS, env=env)
    return (run / "model" / "model.safetensors").read_bytes(), duration


@pytest.mark.parametrize("kill", FAST_KILLS + SLOW_KILLS)
def test_train_killed_then_resumed_matches_uninterrupted(
    train_split, uninterrupted, tmp_path, kill
):
    weights, duration = uninterrupted
    env = _env(tmp_path)
    run = tmp_path / "run"
    delay = random.Random(100 + kill).uniform(0.5, duration * 1.1)
    proc = _prefcurate("train", train_split, "--out", run, *TRAIN_FLAGS, env=env)
    killed = _kill_after(proc, delay)

    checkpoints = run / "checkpoints"
    if killed:
        # every checkpoint on disk is complete: a half-written one never has the final name
        for step in checkpoints.glob("step-*") if checkpoints.exists() else []:
            state = json.loads((step / "state.json").read_text())
            assert state["step"] == int(step.name.split("-")[1])
            assert (step / "model.safetensors").stat().st_size > 0
        resumable = checkpoints.exists() and any(checkpoints.glob("step-*"))
        again = "--resume" if resumable else "--force"
        _run("train", train_split, "--out", run, *TRAIN_FLAGS, again, env=env)
    assert (run / "model" / "model.safetensors").read_bytes() == weights
    assert len(_completed_runs(tmp_path)) == 1  # the finished run is recorded once
