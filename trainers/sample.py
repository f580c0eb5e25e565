"""Seeded, batched sampling of responses from a causal LM, optionally within a token alphabet.

The benchmark and the demo judge a policy by what it writes, so sampling has to be as
reproducible as training: the same model, prompts and seed give the same responses. Prompts are
encoded exactly as the trainer encodes them (:func:`trainers.data.leading_special_tokens` then the
text, no special tokens), grouped by token length so that a batch needs no padding, and extended
one token at a time with the full sequence recomputed (the answers are short; no KV cache to get
wrong). A row stops at EOS; ``allowed_token_ids`` gives every other token probability 0, the same
restriction :class:`trainers.logps.SequenceLogps` applies in training. Example::

    >>> from trainers.model import load_model
    >>> from trainers.sample import sample
    >>> loaded = load_model("tiny")
    >>> out = sample(loaded.model, loaded.tokenizer, ["sort:321="], seed=0, max_new_tokens=4)
    >>> len(out[0].token_ids) <= 4
    True
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.data import leading_special_tokens


@dataclass(frozen=True)
class Sample:
    """One sampled response: its text (without EOS), its token ids, and whether it reached EOS."""

    text: str
    token_ids: tuple[int, ...]
    finished: bool


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    seed: int,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    allowed_token_ids: list[int] | None = None,
    batch_size: int = 256,
) -> list[Sample]:
    """Sample one response per prompt, in the prompts' order; ``temperature`` 0 is greedy.

    Each length group draws from its own generator seeded by ``seed`` and the group's position,
    so the result does not depend on anything but the arguments.
    """
    if temperature < 0:
        msg = f"temperature must be >= 0, not {temperature}"
        raise ValueError(msg)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    lead = leading_special_tokens(tokenizer)
    encoded = [lead + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    mask = None
    if allowed_token_ids is not None:
        mask = torch.full((model.config.vocab_size,), float("-inf"), device=device)
        mask[torch.tensor(sorted(set(allowed_token_ids)), device=device)] = 0.0
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    results: list[Sample | None] = [None] * len(prompts)
    for g, length in enumerate(sorted(groups)):
        members = groups[length]
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + g)
        for start in range(0, len(members), batch_size):
            rows = members[start : start + batch_size]
            ids = torch.tensor([encoded[i] for i in rows], dtype=torch.int64, device=device)
            new = _extend(model, ids, generator, temperature, max_new_tokens, mask, eos)
            for row, tokens in zip(rows, new, strict=True):
                finished = eos in tokens
                tokens = tokens[: tokens.index(eos)] if finished else tokens
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                results[row] = Sample(text, tuple(tokens), finished)
    model.train(was_training)
    return [r for r in results if r is not None]


def _extend(model, ids, generator, temperature, max_new_tokens, mask, eos) -> list[list[int]]:
    """Append up to ``max_new_tokens`` tokens to every row; rows past EOS keep writing EOS."""
    prompt_length = ids.shape[1]
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1].float()
        if mask is not None:
            logits = logits + mask
        if temperature == 0:
            nxt = logits.argmax(-1).cpu()
        else:
            probs = torch.softmax(logits / temperature, -1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        ids = torch.cat([ids, nxt[:, None].to(ids.device)], 1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return ids[:, prompt_length:].cpu().tolist()
