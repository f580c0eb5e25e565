"""Sampling and the alphabet restriction: seeded, batched, one mask for training and sampling.

A tiny random Llama; the restricted log-probs are checked against a log-softmax over the allowed
columns computed here by hand.
"""

from __future__ import annotations

import pytest
import torch
from split_helpers import write_split
from torch.testing import assert_close

from prefcurate.base.errors import InputError
from prefcurate.recipes import toytask
from trainers.data import read_split, tokenize_split
from trainers.logps import SequenceLogps, check_allowed
from trainers.loop import lr_factor
from trainers.model import load_model
from trainers.sample import sample

PROMPTS = ["sort:4917=", "sort:321=", "sort:88017=", "sort:12=", "sort:999="]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=0)


def test_restricted_logps_are_a_log_softmax_over_the_allowed_tokens(tiny):
    allowed = toytask.allowed_token_ids(tiny.tokenizer)
    ids = torch.tensor([[ord(c) + 3 for c in "sort:21="] + [ord("1") + 3, ord("2") + 3, 1]])
    attention = torch.ones_like(ids, dtype=torch.bool)
    response = torch.zeros_like(attention)
    response[0, -3:] = True  # "12" and EOS
    restricted, n = SequenceLogps(tiny.model, allowed_token_ids=allowed)(ids, attention, response)
    full, _ = SequenceLogps(tiny.model)(ids, attention, response)
    logits = tiny.model(input_ids=ids).logits[0, -4:-1].float()
    masked = torch.full_like(logits, float("-inf"))
    masked[:, allowed] = logits[:, allowed]
    by_hand = masked.log_softmax(-1).gather(1, ids[0, -3:, None]).sum()
    assert int(n) == 3
    assert_close(restricted[0], by_hand, rtol=1e-5, atol=1e-5)
    # renormalising over 11 of 384 tokens can only raise each token's probability
    assert restricted[0] > full[0]


def test_a_split_outside_the_alphabet_is_refused(tiny, tmp_path):
    rows = [{"prompt": "sort:21=", "chosen": "12", "rejected": "x1", "score_chosen": 9.0,
             "score_rejected": 2.0}]  # fmt: skip
    split = read_split(write_split(tmp_path / "split", rows))
    pairs = tokenize_split(split, tiny.tokenizer, max_length=32)
    with pytest.raises(InputError, match="rejected response uses token id 123"):
        check_allowed(pairs, toytask.allowed_token_ids(tiny.tokenizer), tmp_path)


def test_sampling_is_seeded_and_stays_in_the_alphabet(tiny):
    allowed = toytask.allowed_token_ids(tiny.tokenizer)
    kwargs = {"max_new_tokens": 6, "allowed_token_ids": allowed}
    first = sample(tiny.model, tiny.tokenizer, PROMPTS, seed=3, **kwargs)
    again = sample(tiny.model, tiny.tokenizer, PROMPTS, seed=3, **kwargs)
    other = sample(tiny.model, tiny.tokenizer, PROMPTS, seed=4, **kwargs)
    assert first == again
    assert first != other
    assert len(first) == len(PROMPTS)
    for s in first:
        assert set(s.token_ids) <= set(allowed) - {tiny.tokenizer.eos_token_id}
        assert all(c in toytask.ALPHABET for c in s.text)
        assert len(s.token_ids) <= 6
    # unrestricted, a random model writes bytes outside the alphabet
    free = sample(tiny.model, tiny.tokenizer, PROMPTS, seed=3, max_new_tokens=6)
    assert any(not set(s.text) <= set(toytask.ALPHABET) for s in free)


def test_greedy_sampling_follows_the_argmax(tiny):
    out = sample(tiny.model, tiny.tokenizer, ["sort:21="], seed=0, temperature=0, max_new_tokens=3)
    ids = torch.tensor([[ord(c) + 3 for c in "sort:21="]])
    expected = []
    for _ in range(3):
        nxt = int(tiny.model(input_ids=ids).logits[0, -1].argmax())
        if nxt == tiny.tokenizer.eos_token_id:
            break
        expected.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert list(out[0].token_ids) == expected


def test_constant_lr_schedule_holds_the_peak_after_warmup():
    """warmup 2 of 10: 1/2, 1, then 1 until the last step; 0 after it."""
    factors = [lr_factor(s, warmup=2, total=10, schedule="constant") for s in range(11)]
    assert factors == [0.5] + [1.0] * 9 + [0.0]
