"""Chunked sequence log-probs equal the full-logits computation; the reference cache is reused."""

from __future__ import annotations

import pytest
import torch
from split_helpers import synthetic_rows, write_split
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from trainers import prepare
from trainers.config import TrainConfig
from trainers.data import collate, read_split, tokenize_split
from trainers.logps import SequenceLogps, is_right_padded
from trainers.model import load_model
from trainers.strategy import autocast_for


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def batch(tmp_path):
    loaded = load_model("tiny", seed=0)
    split = read_split(write_split(tmp_path / "s", synthetic_rows(6)))
    pairs = tokenize_split(split, loaded.tokenizer, max_length=48)
    return loaded, collate(pairs, torch.arange(6), pad_id=0)


def full_logits_logps(model, batch):
    """The textbook way: every position's fp32 logits, log-softmax, gather, mask, sum."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    logps = logits[:, :-1].float().log_softmax(-1)
    token = logps.gather(2, batch.input_ids[:, 1:, None]).squeeze(2)
    mask = batch.response_mask[:, 1:]
    return (token * mask).sum(-1), mask.sum(-1)


@pytest.mark.parametrize("chunk_elements", [384 * 5, 384 * 1000])  # 5 tokens a chunk, or one chunk
def test_chunked_logps_equal_full_logits(batch, chunk_elements):
    loaded, batch = batch
    module = SequenceLogps(loaded.model, chunk_elements=chunk_elements)
    expected, expected_n = full_logits_logps(loaded.model, batch)
    logps, n = module(batch.input_ids, batch.attention_mask, batch.response_mask)
    assert_close(logps, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(n, expected_n)


def test_right_padded_batches_need_no_attention_mask(batch):
    """The decoder runs unmasked on right-padded batches; the response log-probs are unchanged."""
    loaded, batch = batch
    assert is_right_padded(batch.attention_mask)
    assert batch.attention_mask.sum() < batch.attention_mask.numel()  # the batch has padding
    module = SequenceLogps(loaded.model)
    masked = full_logits_logps(loaded.model, batch)[0]
    logps, _ = module(batch.input_ids, batch.attention_mask, batch.response_mask)
    assert_close(logps, masked, rtol=1e-5, atol=1e-4)
    # a left-padded row is not right-padded: such a batch keeps its mask
    left = batch.attention_mask.clone()
    shortest = int(left.sum(-1).argmin())
    left[shortest] = left[shortest].flip(0)
    assert not is_right_padded(left)


def test_chunked_gradients_equal_full_logits_gradients(batch):
    loaded, batch = batch
    module = SequenceLogps(loaded.model, chunk_elements=384 * 7)  # checkpointed chunks
    module(batch.input_ids, batch.attention_mask, batch.response_mask)[0].sum().backward()
    chunked = [p.grad.clone() for p in loaded.model.parameters()]
    loaded.model.zero_grad()
    full_logits_logps(loaded.model, batch)[0].sum().backward()
    for got, want in zip(chunked, (p.grad for p in loaded.model.parameters()), strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_128k_vocabulary_never_has_more_than_one_chunk_of_logits():
    """A 131072-token vocabulary: the head sees at most 2**26 / 131072 = 512 positions at once,
    only response positions, and the backward pass recomputes each chunk."""
    config = LlamaConfig(
        vocab_size=131072,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    module = SequenceLogps(LlamaForCausalLM(config))
    input_ids = torch.randint(0, 131072, (2, 700))
    response = torch.zeros(2, 700, dtype=torch.bool)
    response[:, 100:] = True  # 2 × 600 response tokens (the first is predicted from position 99)
    rows = []
    head = module.logits
    module.logits = lambda states: rows.append(states.shape[0]) or head(states)
    logps, n = module(input_ids, torch.ones_like(response), response)
    assert n.tolist() == [600, 600]
    assert rows == [512, 512, 176]  # 1200 response positions, never a full 2 × 700 × 131072
    logps.sum().backward()
    assert sorted(rows[3:]) == [176, 512, 512]  # recomputed in backward (last chunk first)
    assert torch.isfinite(logps).all()


def test_head_check_accepts_llama():
    SequenceLogps(load_model("tiny", seed=0).model).check_head()


def test_reference_logps_are_cached_by_model_data_and_length(tmp_path, monkeypatch):
    split_dir = write_split(tmp_path / "s", synthetic_rows(8))
    split = read_split(split_dir)
    config = TrainConfig(split_dir, model="tiny", out=tmp_path / "run", max_length=48)
    policy = load_model("tiny", seed=0)
    pairs = prepare.tokenized_pairs(split, policy, config)
    args = (policy, config, torch.device("cpu"), autocast_for("ddp", "fp32", torch.device("cpu")))
    chosen, rejected = prepare.reference_for(pairs, *args)
    assert chosen.isnan().tolist() == (~pairs.is_dpo).tolist()  # sft pairs need no reference

    def no_pass(*_, **__):
        raise AssertionError("the reference pass ran although the cache holds the result")

    monkeypatch.setattr(prepare, "reference_logps", no_pass)
    again = prepare.reference_for(pairs, *args)
    assert torch.equal(again[0].nan_to_num(), chosen.nan_to_num())
    assert torch.equal(again[1].nan_to_num(), rejected.nan_to_num())

    shorter = TrainConfig(split_dir, model="tiny", out=tmp_path / "run", max_length=40)
    with pytest.raises(AssertionError, match="reference pass ran"):  # a new key: recomputed
        prepare.reference_for(
            prepare.tokenized_pairs(split, policy, shorter), policy, shorter, *args[2:]
        )
    other_seed = load_model("tiny", seed=1)  # other initial weights: a new key too
    with pytest.raises(AssertionError, match="reference pass ran"):
        prepare.reference_for(pairs, other_seed, config, *args[2:])
