"""The reference log-prob cache cannot mix runs: everything that changes a reference log-prob is
in its key (trainers.prepare.reference_identity), and every precision starts at h = 0."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from split_helpers import synthetic_rows, write_split
from transformers import BitsAndBytesConfig

from trainers import cache
from trainers.data import read_split
from trainers.loop import TrainConfig, train
from trainers.model import load_model
from trainers.prepare import SEPARATE_REFERENCE, reference_identity, tokenized_pairs

CPU = torch.device("cpu")


@pytest.fixture
def setting(tmp_path):
    """A tiny policy, its tokenised split and the run's config: the inputs of the key."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(8, seed=2))
    config = TrainConfig(split_dir, model="tiny", out=tmp_path / "run", max_length=48,
                         cache_dir=tmp_path / "cache")  # fmt: skip
    policy = load_model("tiny", seed=0)
    pairs = tokenized_pairs(read_split(split_dir), policy, config)
    return config, policy, pairs


def key(config, policy, pairs, *, model=None, fingerprint=None, device=CPU, only=None) -> str:
    identity = reference_identity(
        pairs,
        policy.model if model is None else model,
        policy.tokenizer,
        config,
        device,
        fingerprint=fingerprint or policy.fingerprint,
        only=only,
    )
    return cache.cache_key(**identity)


def test_the_same_inputs_give_the_same_key(setting):
    config, policy, pairs = setting
    assert key(config, policy, pairs) == key(config, policy, pairs)


def test_model_fingerprint_is_in_the_key(setting):
    config, policy, pairs = setting
    other = load_model("tiny", seed=1)  # other initial weights
    assert key(config, policy, pairs) != key(config, policy, pairs, fingerprint=other.fingerprint)


def test_tokenizer_is_in_the_key(setting):
    config, policy, pairs = setting
    before = key(config, policy, pairs)
    policy.tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_token>"]})
    assert key(config, policy, pairs) != before


def test_chat_template_is_in_the_key(setting):
    config, policy, pairs = setting
    templated = dataclasses.replace(pairs, chat_template=True)
    before = key(config, policy, templated)
    policy.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert key(config, policy, templated) != before


def test_token_ids_are_in_the_key(setting):
    config, policy, pairs = setting
    flipped = dataclasses.replace(pairs, is_dpo=~pairs.is_dpo)  # another route, another digest
    assert key(config, policy, pairs) != key(config, policy, flipped)


def test_max_length_is_in_the_key(setting):
    config, policy, pairs = setting
    longer = dataclasses.replace(config, max_length=64)
    assert key(config, policy, pairs) != key(longer, policy, pairs)


def test_dtype_is_in_the_key(setting):
    config, policy, pairs = setting
    before = key(config, policy, pairs)
    assert key(config, policy, pairs, model=policy.model.to(torch.bfloat16)) != before


def test_precision_and_device_are_in_the_key(setting):
    config, policy, pairs = setting
    mixed = dataclasses.replace(config, precision="bf16-mixed")
    assert key(config, policy, pairs) != key(mixed, policy, pairs)
    # auto is resolved first: on a CPU it is fp32, so the key is fp32's
    assert key(dataclasses.replace(config, precision="auto"), policy, pairs) == key(
        dataclasses.replace(config, precision="fp32"), policy, pairs
    )


def test_quantization_is_in_the_key(setting):
    """A QLoRA base (4-bit, as transformers records it on the model's config) and the same model
    in bf16 never share an entry."""
    config, policy, pairs = setting
    model = policy.model.to(torch.bfloat16)
    before = key(config, policy, pairs, model=model)
    model.config.quantization_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    assert key(config, policy, pairs, model=model) != before


def test_attention_implementation_is_in_the_key(setting):
    config, policy, pairs = setting
    before = key(config, policy, pairs)
    assert policy.model.config._attn_implementation == "sdpa"
    policy.model.set_attn_implementation("eager")
    assert key(config, policy, pairs) != before


def test_packing_and_allowed_tokens_and_subset_are_in_the_key(setting):
    config, policy, pairs = setting
    before = key(config, policy, pairs)
    assert key(dataclasses.replace(config, packed=True), policy, pairs) != before
    allowed = dataclasses.replace(config, allowed_token_ids=list(range(3, 200)))
    assert key(allowed, policy, pairs) != before
    assert key(config, policy, pairs, only=torch.tensor([0, 1])) != before


def test_a_separate_reference_is_keyed_by_how_it_is_loaded(setting):
    config, policy, pairs = setting
    identity = reference_identity(
        pairs, None, policy.tokenizer, config, CPU, fingerprint="directory-sha"
    )
    assert {k: identity[k] for k in SEPARATE_REFERENCE} == SEPARATE_REFERENCE
    assert identity["model"] == "directory-sha"


def test_every_precision_starts_at_h_zero_with_one_shared_cache(tmp_path):
    """fp32, bf16-mixed and bf16 runs of the same model share a --cache-dir: each gets its own
    reference entry, so at step 1 (before any update) every reward is exactly 0. Reusing the
    fp32 entry in a bf16 run would not be: its log-probs differ (-124.5930 vs -124.5944 here)."""
    split_dir = write_split(tmp_path / "split", synthetic_rows(16, seed=1))
    cache_dir = tmp_path / "cache"
    first_rows = {}
    for precision in ("fp32", "bf16-mixed", "bf16"):
        out = tmp_path / f"run-{precision}"
        config = TrainConfig(split_dir, model="tiny", out=out, max_length=64, batch_size=4,
                             max_steps=1, precision=precision, cache_dir=cache_dir)  # fmt: skip
        train(config)
        first_rows[precision] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for precision, row in first_rows.items():
        assert row["rewards/chosen"] == 0.0, precision
        assert row["rewards/rejected"] == 0.0, precision
        assert row["rewards/margins"] == 0.0, precision
    assert len(list(Path(cache_dir, "reference").glob("*.safetensors"))) == 3
    logps = {p: r["logps/chosen"] for p, r in first_rows.items()}
    assert len(set(logps.values())) == 3  # the three precisions do compute different log-probs
