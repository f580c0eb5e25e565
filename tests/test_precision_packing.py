"""Throughput switches that must not change the math: padding-free (packed) batches and the
attention implementation give the same per-pair losses; ``--precision bf16`` trains in bf16."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from split_helpers import synthetic_rows, write_split
from test_train import FAST, assert_same_losses, metrics
from torch.testing import assert_close

from trainers.data import collate, read_split, tokenize_split
from trainers.logps import SequenceLogps
from trainers.model import build_tiny
from trainers.objective import Objective


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("packing") / "split", synthetic_rows(24, seed=5))


@pytest.fixture(scope="module")
def batch(split):
    """8 pairs of different lengths, dpo and sft mixed, with made-up reference log-probs."""
    tokenizer = build_tiny(0).tokenizer
    pairs = tokenize_split(read_split(split), tokenizer, max_length=64)
    index = torch.cat([torch.arange(4), torch.arange(len(pairs) - 4, len(pairs))])  # easy, hard
    ref = torch.linspace(-90.0, -60.0, len(pairs))
    batch = collate(pairs, index, pad_id=tokenizer.pad_token_id, ref_chosen=ref, ref_rejected=ref)
    assert batch.is_dpo.any() and not batch.is_dpo.all()
    assert len(set(batch.attention_mask.sum(-1).tolist())) > 1  # padding to remove
    return batch


def test_packed_batch_gives_the_same_per_pair_losses_and_gradients(batch):
    model = build_tiny(0).model
    objective = Objective(
        loss="sigmoid", beta=0.1, label_smoothing=0.1, sft_weight=1.0, nll_weight=0.0
    )
    padded = objective(SequenceLogps(model), batch)
    padded.loss.sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    packed = objective(SequenceLogps(model, packed=True), batch)
    packed.loss.sum().backward()
    assert_close(packed.loss, padded.loss, atol=1e-5, rtol=0)
    assert_close(packed.chosen_logps, padded.chosen_logps, atol=1e-4, rtol=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), expected, strict=True):
        assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_eager_attention_gives_the_same_log_probs_as_sdpa(batch):
    model = build_tiny(0).model
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    with torch.no_grad():
        sdpa = SequenceLogps(model)(*args)[0]
        model.set_attn_implementation("eager")
        eager = SequenceLogps(model)(*args)[0]
    assert_close(eager, sdpa, atol=1e-4, rtol=1e-6)


def test_packed_run_logs_the_same_losses(cli, split, tmp_path):
    args = [split, *FAST, "--batch-size", "4", "--max-steps", "3"]
    assert cli("train", *args, "--out", tmp_path / "padded").code == 0
    result = cli("train", *args, "--out", tmp_path / "packed", "--packed")
    assert result.code == 0, result.err
    assert_same_losses(tmp_path / "packed", tmp_path / "padded")


def test_bf16_precision_trains_and_saves_bf16_weights(cli, split, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", split, *FAST, "--max-steps", "2", "--precision", "bf16", "--out", out,
        "--attn-implementation", "eager",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(out))
    with safe_open(out / "model" / "model.safetensors", "pt") as handle:
        assert handle.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    run = json.loads((out / "run.json").read_text())
    assert run["precision"] == "bf16"
    assert run["memory_plan"]["settings"]["precision"] == "bf16"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--precision", "fp16"], "unknown --precision 'fp16'"),
        (["--strategy", "zero3"], "unknown --strategy 'zero3'"),
        (["--attn-implementation", "flash"], "unknown --attn-implementation 'flash'"),
        (["--offload"], "--offload needs --strategy fsdp"),
        (["--offload", "--strategy", "fsdp"], "--offload keeps FSDP shards in CPU memory"),
        (["--save-total-limit", "-1"], "--save-total-limit -1 is out of range"),
    ],
)
def test_bad_scale_flags_are_exit_2(cli, split, tmp_path, flags, message):
    result = cli("train", split, *FAST, "--out", tmp_path / "run", *flags)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
