"""Safe model loading: pickle weights only with ``--allow-pickle``, and never code inside them.

A model directory whose weights are a pickle (``pytorch_model.bin``) can run code when it is read.
``train`` and ``score`` refuse it unless asked; when asked they warn, and a pickle that holds
anything but tensors is still refused (``weights_only=True``), so a hostile file runs nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.split_helpers import synthetic_rows, write_split
from trainers.model import build_tiny

FAST = ("--max-length", "64", "--lr", "1e-3", "--seed", "0", "--max-steps", "2")


class _RunsCode:
    """Unpickling this touches a file: the proof that a loader ran code it should not have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def pickled(tmp_path) -> Path:
    """The tiny Llama saved with its weights as a pickle ``pytorch_model.bin``, no safetensors."""
    tiny = build_tiny(0)
    path = tmp_path / "pickled"
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(tiny.model.state_dict(), path / "pytorch_model.bin")
    return path


@pytest.fixture
def hostile(pickled, tmp_path) -> tuple[Path, Path]:
    """A model directory whose pickle runs ``touch MARKER`` when unpickled unsafely."""
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": _RunsCode(marker)}, pickled / "pytorch_model.bin")
    return pickled, marker


@pytest.fixture
def split(tmp_path) -> Path:
    return write_split(tmp_path / "split", synthetic_rows(12, seed=3))


@pytest.fixture
def pairs(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_train_refuses_pickle_weights_without_the_flag(cli, split, pickled, tmp_path):
    result = cli("train", split, "--model", pickled, "--out", tmp_path / "run", *FAST)
    assert result.code == 2
    line = result.err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "refusing pickle weights pytorch_model.bin" in line and str(pickled) in line
    assert "--allow-pickle" in line  # the fix is named
    assert not (tmp_path / "run").exists()


def test_train_with_allow_pickle_warns_and_trains_like_the_safetensors_model(
    cli, split, pickled, tmp_path
):
    safe = tmp_path / "safe"
    tiny = build_tiny(0)
    tiny.model.save_pretrained(safe)
    tiny.tokenizer.save_pretrained(safe)
    ran = cli("train", split, "--model", pickled, "--allow-pickle", "--out", tmp_path / "a", *FAST)
    assert ran.code == 0, ran.err
    assert "warning: loading pickle weights pytorch_model.bin" in ran.err
    assert cli("train", split, "--model", safe, "--out", tmp_path / "b", *FAST).code == 0
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").open()]
        for run in ("a", "b")
    ]
    assert losses[0] == losses[1]  # same weights, same run
    assert (tmp_path / "a" / "model" / "model.safetensors").is_file()  # saved back safely
    assert not list((tmp_path / "a" / "model").glob("*.bin"))


def test_a_pickle_holding_code_is_refused_even_with_allow_pickle(cli, split, hostile, tmp_path):
    model, marker = hostile
    for flags in ((), ("--allow-pickle",)):
        result = cli("train", split, "--model", model, *flags, "--out", tmp_path / "run", *FAST)
        assert result.code == 2
        assert "Traceback" not in result.err
        assert not (tmp_path / "run").exists()
    assert "hold objects other than tensors" in result.err.splitlines()[-1]
    assert not marker.exists()


def test_score_refuses_pickle_reference_unless_allowed(cli, pairs, pickled, tmp_path):
    out = tmp_path / "scored.parquet"
    refused = cli("score", pairs, "--reference", pickled, "--out", out)
    assert refused.code == 2 and "refusing pickle weights" in refused.err
    assert not out.exists()
    allowed = cli("score", pairs, "--reference", pickled, "--allow-pickle", "--out", out)
    assert allowed.code == 0, allowed.err
    assert allowed.err.count("warning: loading pickle weights") == 1
    import polars as pl

    assert pl.read_parquet(out)["margin_ref"].is_not_null().all()


def test_remote_code_is_off_unless_asked(cli, split, tmp_path):
    """A config that names its own code is refused without ``--trust-remote-code``."""
    path = tmp_path / "custom"
    tiny = build_tiny(0)
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    config["model_type"] = "evil-llama"
    (path / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = cli("train", split, "--model", path, "--out", tmp_path / "run", *FAST)
    assert result.code == 2 and "Traceback" not in result.err
    assert "defined by code in its directory" in result.err
    assert "pass --trust-remote-code" in result.err
    assert not marker.exists() and not (tmp_path / "run").exists()
    scored = cli(
        "score", split / "train.parquet", "--reference", path, "--out", tmp_path / "s.parquet"
    )
    assert scored.code == 2 and "pass --trust-remote-code" in scored.err
    assert not marker.exists() and not (tmp_path / "s.parquet").exists()
