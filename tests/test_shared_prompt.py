"""The shared prompt changes where the prompt is computed, never the math: the per-pair log-probs,
losses and gradients equal the ordinary batch's (padded or packed) within 1e-5, on plain-text,
conversational (chat template) and truncated pairs, dpo and sft pairs mixed."""

from __future__ import annotations

import json

import pytest
import torch
from split_helpers import synthetic_rows, write_split
from test_train import FAST, assert_same_losses
from torch.testing import assert_close
from transformers import ByT5Tokenizer, LlamaForCausalLM

from trainers.data import collate, read_split, tokenize_split
from trainers.logps import SequenceLogps, check_shared_prompt, reference_logps
from trainers.model import build_tiny, tiny_config
from trainers.objective import Objective
from trainers.shared_prompt import MIN_HIDDEN_SIZE, share_prompts

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
OBJECTIVE = Objective(loss="sigmoid", beta=0.1, label_smoothing=0.1, sft_weight=1.0, nll_weight=0.0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE_DIR", str(tmp_path / "cache"))


def small_model() -> LlamaForCausalLM:
    """A random Llama just large enough to share prompts (hidden 128; grouped-query attention)."""
    torch.manual_seed(0)
    shape = {"hidden_size": MIN_HIDDEN_SIZE, "intermediate_size": 352}
    return LlamaForCausalLM(tiny_config(**shape, num_attention_heads=4, num_key_value_heads=2))


def _batch(tmp_path, kind: str):
    """8 pairs (4 clear, 4 ambiguous: dpo and sft) of one kind of data, ready to collate."""
    rows = synthetic_rows(24, seed=5, conversational=kind == "conversational")
    split = read_split(write_split(tmp_path / kind, rows))
    tokenizer = ByT5Tokenizer()
    if kind == "conversational":
        tokenizer.chat_template = TEMPLATE
    pairs = tokenize_split(split, tokenizer, max_length=24 if kind == "truncated" else 96)
    if kind == "truncated":
        assert pairs.truncated >= 8
    assert pairs.chat_template == (kind == "conversational")
    index = torch.cat([torch.arange(4), torch.arange(len(pairs) - 4, len(pairs))])
    ref = torch.linspace(-90.0, -60.0, len(pairs))
    return pairs, index, {"pad_id": tokenizer.pad_token_id, "ref_chosen": ref, "ref_rejected": ref}


def _terms_and_grads(module: SequenceLogps, batch):
    module.model.zero_grad()
    terms = OBJECTIVE(module, batch)
    terms.loss.sum().backward()
    return terms, [p.grad.clone() for p in module.model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["plain", "conversational", "truncated", "packed"])
def test_shared_prompt_gives_the_same_log_probs_losses_and_gradients(tmp_path, kind, dtype):
    pairs, index, extra = _batch(tmp_path, kind)
    model = small_model().to(dtype)
    ordinary = SequenceLogps(model, packed=kind == "packed")
    expected, expected_grads = _terms_and_grads(ordinary, collate(pairs, index, **extra))

    shared_module = SequenceLogps(model)
    assert check_shared_prompt(shared_module) is None
    batch = collate(pairs, index, **extra, shared_prompt=True)
    assert batch.is_dpo.any() and not batch.is_dpo.all()  # sft pairs included
    assert batch.shared is not None
    # every prompt token once, no padding: Σ prompt + chosen (+ the prompt's last token and the
    # rejected response of each dpo pair)
    lengths = [len(pairs.prompt[i]) + len(pairs.chosen[i]) for i in index.tolist()]
    lengths += [1 + len(pairs.rejected[i]) for i in index[batch.is_dpo].tolist()]  # + its copy
    assert batch.shared.tokens == sum(lengths) < batch.input_ids.numel()
    got, grads = _terms_and_grads(shared_module, batch)

    # fp64: 1e-5 absolute; fp32 sums hundreds of log-probs, so 1e-5 of their size
    tol = {"atol": 1e-5, "rtol": 0.0 if dtype == torch.float64 else 1e-5}
    assert_close(got.chosen_logps, expected.chosen_logps, **tol)
    assert_close(got.rejected_logps, expected.rejected_logps, **tol)
    assert_close(got.loss, expected.loss, **tol)
    for g, e in zip(grads, expected_grads, strict=True):
        assert_close(g, e, **tol)


def test_the_reference_pass_shares_prompts_and_gives_the_same_log_probs(tmp_path):
    pairs, _, extra = _batch(tmp_path, "plain")
    model = small_model().to(torch.float64)
    args = {"batch_size": 4, "device": torch.device("cpu"), "pad_id": extra["pad_id"]}
    ordinary = reference_logps(SequenceLogps(model), pairs, autocast=torch.autocast("cpu",
                               enabled=False), **args)  # fmt: skip
    module = SequenceLogps(model)
    assert check_shared_prompt(module) is None
    shared = reference_logps(module, pairs, autocast=torch.autocast("cpu", enabled=False), **args)
    dpo = pairs.is_dpo
    for got, want in zip(shared, ordinary, strict=True):
        assert_close(got[dpo], want[dpo], atol=1e-5, rtol=0)
        assert got[~dpo].isnan().all()


def test_a_batch_whose_rejected_prompt_differs_keeps_the_ordinary_layout():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 4, 3, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]).bool()
    response = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]]).bool()
    dpo = torch.tensor([True])
    assert share_prompts(ids, attention, response, dpo, max_share=1.0) is not None
    other = ids.clone()
    other[1, 1] = 2  # the rejected sequence's prompt is not the chosen sequence's
    assert share_prompts(other, attention, response, dpo, max_share=1.0) is None
    # 5 + 2 distinct tokens of 10 positions: not shared when at most 60% may remain
    assert share_prompts(ids, attention, response, dpo, max_share=0.6) is None


def test_eager_attention_and_a_tiny_model_keep_the_ordinary_batch():
    model = small_model()
    model.set_attn_implementation("eager")
    reason = check_shared_prompt(SequenceLogps(model))
    assert reason == "attention 'eager' (the shared prompt runs on sdpa)"
    assert model.config._attn_implementation == "eager"
    tiny = build_tiny(0).model  # hidden size 64: the gathers would cost more than they save
    reason = check_shared_prompt(SequenceLogps(tiny))
    assert reason == "hidden size 64: below 128 sharing is slower than not"
    assert tiny.config._attn_implementation == "sdpa"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("shared") / "split", synthetic_rows(24, seed=5))


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("small") / "model"
    small_model().save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return directory


def test_a_run_shares_prompts_by_default_and_logs_the_losses_of_an_unshared_run(
    cli, split, small_model_dir, tmp_path
):
    small = ["--model", small_model_dir, *FAST[2:]]
    args = [split, *small, "--batch-size", "4", "--max-steps", "3"]
    off = cli("train", *args, "--out", tmp_path / "off", "--no-shared-prompt")
    assert off.code == 0, off.err
    on = cli("train", *args, "--out", tmp_path / "on")
    assert on.code == 0, on.err
    assert_same_losses(tmp_path / "on", tmp_path / "off")
    shared = {
        name: json.loads((tmp_path / name / "run.json").read_text())["shared_prompt"]
        for name in ("on", "off")
    }
    assert shared == {
        "on": {"on": True, "why_not": None},
        "off": {"on": False, "why_not": "--no-shared-prompt"},
    }


def test_a_run_with_eager_attention_says_why_prompts_are_not_shared(
    cli, split, small_model_dir, tmp_path
):
    args = [split, "--model", small_model_dir, *FAST[2:], "--max-steps", "1"]
    result = cli("train", *args, "--attn-implementation", "eager", "--out", tmp_path / "eager")
    assert result.code == 0, result.err
    run = json.loads((tmp_path / "eager" / "run.json").read_text())
    assert run["shared_prompt"] == {
        "on": False,
        "why_not": "attention 'eager' (the shared prompt runs on sdpa)",
    }
