"""Shared fixtures: the real data in ../shared/data, a CLI runner, an isolated catalog."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefcurate.cli import main

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"CI=true but {path} is missing: CI must run with ../shared beside the checkout"
            )
        pytest.skip(f"real data ../shared/data/{name} is not beside this clone")
    return path


@pytest.fixture
def uf1k() -> Path:
    """../shared/data/ultrafeedback_1k.jsonl: 1000 UltraFeedback pairs, nested ratings."""
    return _shared_file("ultrafeedback_1k.jsonl")


@pytest.fixture
def uf_eval() -> Path:
    """../shared/data/ultrafeedback_eval_200.jsonl: a disjoint 200-pair sample."""
    return _shared_file("ultrafeedback_eval_200.jsonl")


@pytest.fixture
def hh() -> Path:
    """../shared/data/hh_rlhf_harmless_test.jsonl.gz: 2312 HH-RLHF transcripts, no ratings."""
    return _shared_file("hh_rlhf_harmless_test.jsonl.gz")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``prefcurate ARGS`` in-process and return its exit code, stdout and stderr."""

    def invoke(*args: object) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(autouse=True)
def _isolated_catalog(tmp_path_factory, monkeypatch):
    """Every test records into its own catalog, never the user's working directory."""
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.duckdb"
    monkeypatch.setenv("PREFCURATE_CATALOG", str(catalog))
    monkeypatch.setenv("COLUMNS", "120")
    yield
