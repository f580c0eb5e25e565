"""LoRA through PEFT: only the adapter trains, the reference is the base with the adapter off, and
what the run saves (adapter, merged model) gives the trained model's log-probs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from split_helpers import synthetic_rows, write_split
from test_train import FAST, assert_same_losses
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from trainers.data import collate, read_split, tokenize_split
from trainers.logps import SequenceLogps
from trainers.lora import LoraSettings, apply_lora, reference_mode
from trainers.model import build_tiny

LORA = ("--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-2")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("lora") / "split", synthetic_rows(24, seed=3))


@pytest.fixture(scope="module")
def batch(split):
    tokenizer = build_tiny(0).tokenizer
    pairs = tokenize_split(read_split(split), tokenizer, max_length=64)
    return collate(pairs, torch.arange(6), pad_id=tokenizer.pad_token_id, only_dpo=True)


def logps_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return SequenceLogps(model)(batch.input_ids, batch.attention_mask, batch.response_mask)[0]


@pytest.fixture(scope="module")
def lora_run(split, tmp_path_factory) -> Path:
    """6 steps of LoRA r=4 on the tiny model, with the merged model and a final checkpoint."""
    from prefcurate.cli import main

    root = tmp_path_factory.mktemp("lora-run")
    out = root / "run"
    saved = {k: os.environ.get(k) for k in ("PREFCURATE_CACHE_DIR", "PREFCURATE_CATALOG")}
    os.environ["PREFCURATE_CACHE_DIR"] = str(root / "cache")
    os.environ["PREFCURATE_CATALOG"] = str(root / "catalog.duckdb")
    try:
        code = main(
            ["train", str(split), "--out", str(out), *FAST, *LORA, "--batch-size", "4"]
            + ["--merge-lora", "--save-every", "6"]
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert code == 0
    return out


def test_only_adapter_parameters_change(lora_run):
    """The final checkpoint holds every tensor of the trained model: each base weight is the
    initial one bit for bit; each lora_B (zero at the start) moved."""
    initial = build_tiny(0).model.state_dict()
    trained = load_file(lora_run / "checkpoints" / "step-6" / "model.safetensors")
    adapters = [name for name in trained if "lora_" in name]
    assert len(adapters) == 2 * 7 * 2  # A and B × 7 linear layers × 2 decoder layers
    for name, tensor in trained.items():
        if "lora_" in name:
            continue
        base = name.replace(".base_layer", "")
        assert torch.equal(tensor, initial[base]), name
    moved = [n for n in adapters if "lora_B" in n and trained[n].abs().max() > 0]
    assert len(moved) == len(adapters) // 2
    run = json.loads((lora_run / "run.json").read_text())
    assert run["result"]["model_dir"].endswith("model")  # --merge-lora


def test_reference_with_adapter_disabled_is_the_base_model(batch):
    base = build_tiny(0).model
    peft_model = apply_lora(build_tiny(0).model, LoraSettings(r=4, alpha=8))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # an adapter that changes the model
    adapted = peft_model.get_base_model()
    assert not torch.allclose(logps_of(adapted, batch), logps_of(base, batch), atol=1e-3)
    with reference_mode(peft_model):
        assert_close(logps_of(adapted, batch), logps_of(base, batch), atol=1e-5, rtol=0)


def test_saved_adapter_and_merged_model_give_the_trained_log_probs(lora_run, batch, tmp_path):
    trained = apply_lora(build_tiny(0).model, LoraSettings(r=4, alpha=8)).get_base_model()
    trained.load_state_dict(load_file(lora_run / "checkpoints" / "step-6" / "model.safetensors"))
    expected = logps_of(trained, batch)
    assert not torch.allclose(expected, logps_of(build_tiny(0).model, batch), atol=1e-3)

    base_dir = tmp_path / "base"
    build_tiny(0).model.save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    loaded = PeftModel.from_pretrained(base, lora_run / "adapter")
    assert_close(logps_of(loaded.get_base_model(), batch), expected, atol=1e-5, rtol=0)

    merged = AutoModelForCausalLM.from_pretrained(lora_run / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    # merging rounds W + (alpha/r)·BA once in fp32: the sums of ~50 log-probs agree to 1e-7
    assert_close(logps_of(merged, batch), expected, atol=1e-5, rtol=1e-6)


def test_lora_under_fsdp_trains_like_lora_under_ddp(cli, split, tmp_path):
    """FSDP2 on a 1-rank group, adapter parameters sharded beside frozen ones: same losses."""
    args = [split, *FAST, *LORA, "--batch-size", "4", "--max-steps", "4"]
    assert cli("train", *args, "--out", tmp_path / "ddp").code == 0
    result = cli("train", *args, "--out", tmp_path / "fsdp", "--strategy", "fsdp")
    assert result.code == 0, result.err
    assert_same_losses(tmp_path / "fsdp", tmp_path / "ddp")
    assert (tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora-r", "4", "--load-in-4bit"], "--load-in-4bit needs a CUDA GPU"),
        (["--merge-lora"], "--merge-lora needs a LoRA adapter"),
        (["--lora-r", "4", "--lora-target", "nope_proj"], "matches no layer"),
        (["--lora-r", "4", "--lora-dropout", "1.5"], "--lora-dropout 1.5 is out of range"),
    ],
)
def test_bad_lora_flags_are_exit_2(cli, split, tmp_path, flags, message):
    out = tmp_path / "run"
    result = cli("train", split, *FAST, "--out", out, *flags)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (out / "model").exists()
