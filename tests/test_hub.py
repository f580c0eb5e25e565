"""Hugging Face names read from the local Hugging Face cache, offline; a missing one is one line.

Each test builds a cache folder the way huggingface_hub lays it out (``models--owner--name/``:
``refs/main`` naming a commit, ``snapshots/<commit>/`` whose files link to ``blobs/``) and points
``HF_HUB_CACHE`` at it. Opening a network connection fails the test: nothing may be fetched.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import polars as pl
import pytest

from prefcurate.base.errors import InputError
from prefcurate.base.hub import DATASET, MODEL, download_command, is_hub_name, resolve_hub
from prefcurate.data.io import open_pairs

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_type: str, name: str, files: dict[str, bytes]) -> Path:
    """Put ``files`` (path in the repository → bytes) into ``cache`` as huggingface_hub does;
    return the snapshot folder."""
    folder = cache / f"{repo_type}s--{name.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    for relative, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in ``tmp_path``, offline, with the network closed."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was opened: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache


def parquet_bytes(frame: pl.DataFrame, tmp_path: Path) -> bytes:
    path = tmp_path / "shard.parquet"
    frame.write_parquet(path)
    return path.read_bytes()


def test_a_hub_dataset_name_is_read_from_its_cached_snapshot(uf1k, hf_cache, tmp_path, cli):
    """trl-lib/ultrafeedback_binarized's layout: data/train-*.parquet and data/test-*.parquet;
    DATA = the name reads the train shard, as datasets would."""
    rows = [json.loads(line) for line in uf1k.read_text(encoding="utf-8").splitlines()]
    frame = pl.DataFrame(
        {
            "prompt": [r["prompt"] for r in rows],
            "chosen": [r["chosen"] for r in rows],
            "rejected": [r["rejected"] for r in rows],
            "score_chosen": [r["metadata"]["score_chosen"] for r in rows],
            "score_rejected": [r["metadata"]["score_rejected"] for r in rows],
        }
    )
    cache_repo(
        hf_cache,
        DATASET,
        "acme/uf-small",
        {
            "README.md": b"# uf-small\n",
            "data/train-00000-of-00001.parquet": parquet_bytes(frame.head(900), tmp_path),
            "data/test-00000-of-00001.parquet": parquet_bytes(frame.tail(100), tmp_path),
        },
    )
    pairs = open_pairs("acme/uf-small")
    assert pairs.raw.display == "acme/uf-small"
    assert [p.name for p in pairs.raw.paths] == ["train-00000-of-00001.parquet"]
    assert COMMIT in str(pairs.raw.paths[0])
    result = cli("analyze", "acme/uf-small", "--threshold", "0.5", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["rows"] == 900
    test = cli("analyze", "acme/uf-small", "--split", "test", "--json")
    assert json.loads(test.out)["rows"] == 100


def test_a_hub_dataset_not_in_the_cache_is_one_line_with_the_download_command(hf_cache, cli):
    result = cli("analyze", "trl-lib/ultrafeedback_binarized")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "hf download trl-lib/ultrafeedback_binarized --repo-type dataset" in result.err
    assert "pass trl-lib/ultrafeedback_binarized again" in result.err
    assert str(hf_cache) in result.err


def test_a_hub_model_name_trains_from_its_cached_snapshot(uf1k, hf_cache, tmp_path, cli):
    """--model acme/tiny-llama: the tiny Llama saved into the cache trains, and run.json names
    the snapshot it was read from."""
    from trainers.model import load_model

    tiny = load_model("tiny", seed=0)
    saved = tmp_path / "saved"
    tiny.model.save_pretrained(saved)
    tiny.tokenizer.save_pretrained(saved)
    files = {p.name: p.read_bytes() for p in saved.iterdir() if p.is_file()}
    snapshot = cache_repo(hf_cache, MODEL, "acme/tiny-llama", files)
    split = tmp_path / "split"
    routed = cli("route", uf1k, "--threshold", "0.5", "--out", split)
    assert routed.code == 0, routed.err
    run = tmp_path / "run"
    args = ("train", split, "--model", "acme/tiny-llama", "--out", run, "--max-steps", "2")
    result = cli(*args, "--max-length", "64", "--cache-dir", tmp_path / "cache")
    assert result.code == 0, result.err
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["config"]["model"] == recorded["model"]["name"] == str(snapshot)
    assert recorded["model"]["parameters"] == sum(p.numel() for p in tiny.model.parameters())


def test_a_hub_model_not_in_the_cache_is_one_line_with_the_download_command(hf_cache, cli):
    result = cli("train", "split", "--model", "Qwen/Qwen2.5-0.5B", "--out", "run", "--dry-run")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "'hf download Qwen/Qwen2.5-0.5B' and pass --model Qwen/Qwen2.5-0.5B again" in result.err
    assert "no such model directory" in result.err


def test_score_reads_a_hub_model_name_from_the_cache(hf_cache, tmp_path):
    """score's model flags go through the same lookup (recipes.score)."""
    snapshot = cache_repo(hf_cache, MODEL, "acme/minilm", {"config.json": b"{}"})
    assert resolve_hub("acme/minilm", repo_type=MODEL, flag="--embedding") == snapshot
    with pytest.raises(InputError, match="hf download acme/other' and pass --embedding"):
        resolve_hub("acme/other", repo_type=MODEL, flag="--embedding")


def test_a_path_that_exists_is_a_path_whatever_it_looks_like(hf_cache, tmp_path):
    (tmp_path / "acme" / "local").mkdir(parents=True)
    cache_repo(hf_cache, MODEL, "acme/local", {"config.json": b"{}"})
    assert not is_hub_name("acme/local")  # the folder in the working directory wins
    assert resolve_hub("acme/local", repo_type=MODEL, flag="--model") is None
    assert not is_hub_name("data/pairs.jsonl") and not is_hub_name("tiny")
    assert not is_hub_name("/abs/owner/name") and is_hub_name("Qwen/Qwen2.5-0.5B")
    assert download_command("a/b", DATASET) == "hf download a/b --repo-type dataset"
