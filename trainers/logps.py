"""Sequence log-probabilities without full-vocabulary logits, and the one-off reference pass.

``packed`` runs each micro-batch padding-free: the rows' real tokens are concatenated into one
sequence whose position ids restart at every row, and transformers turns those positions into a
block-diagonal causal mask (flash-attention's varlen kernel on CUDA), so no row sees another and
no compute is spent on padding. The per-row log-probs are the same as the padded batch's.

A causal LM's logits for a whole batch are ``rows × length × vocab`` floats: 4 GiB in fp32 for 8
sequences of 1k tokens of a 128k-vocabulary model. Only the response positions matter, so
:class:`SequenceLogps` runs the decoder to hidden states, gathers the response positions, and
applies the output head to them in chunks of at most ``chunk_elements`` logits; under autograd each
chunk is checkpointed, so its logits are recomputed in the backward pass instead of kept.

``allowed_token_ids`` restricts the distribution to a task's alphabet: the other tokens' logits
are treated as −inf, so the log-softmax normalises over the allowed columns only (gathered, so
the chunk is smaller, not larger). A tiny model trained by DPO otherwise pushes probability onto
bytes the task never uses, and a benchmark then measures that collapse instead of the method.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from prefcurate.base.errors import InputError
from trainers import dist, shared_prompt
from trainers.data import TokenizedPairs, collate
from trainers.shared_prompt import SharedPrompt

#: At most this many logits (2**26 fp32 = 256 MiB) exist at once: 512 tokens of a 128k vocabulary.
CHUNK_ELEMENTS = 2**26


class SequenceLogps(nn.Module):
    """Summed log-probability of each row's response tokens, and how many tokens were summed.

    Wrap this module (not the bare LM) in DDP: its forward is the whole differentiable path.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        chunk_elements: int = CHUNK_ELEMENTS,
        allowed_token_ids: list[int] | None = None,
        packed: bool = False,
    ):
        super().__init__()
        self.model = model
        self.packed = packed
        self.chunk_tokens = max(1, chunk_elements // model.config.vocab_size)
        self.allowed: Tensor | None = None
        if allowed_token_ids is not None:
            self.allowed = torch.tensor(sorted(set(allowed_token_ids)), dtype=torch.int64)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        shared: SharedPrompt | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per row: the summed log-probs of its response tokens, and their count.

        ``shared``: the batch's shared-prompt layout (:mod:`trainers.shared_prompt`); the model
        then runs on that one row, and the result is the same.
        """
        # position t predicts token t+1: a response token's log-prob comes from the position before
        targets = response_mask[:, 1:]
        if shared is not None:
            hidden = self._shared_hidden(shared)
            states = hidden[shared.rows[:, :-1][targets]]
        else:
            states = self._hidden(input_ids, attention_mask)[:, :-1][targets]
        labels = input_ids[:, 1:][targets]
        token_logps = self._token_logps(states, labels)
        per_token = torch.zeros(targets.shape, dtype=token_logps.dtype, device=states.device)
        per_token = per_token.masked_scatter(targets, token_logps)
        return per_token.sum(-1), targets.sum(-1)

    def _hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # A right-padded batch needs no mask: causal attention already hides the padding, which
        # only ever follows a row's real tokens, and padded positions are never read. Without a
        # mask the attention takes its causal fast path (no per-batch mask tensor to build).
        if self.packed:
            return self._packed_hidden(input_ids, attention_mask)
        mask = None if is_right_padded(attention_mask) else attention_mask.long()
        return self.model.get_decoder()(
            input_ids=input_ids, attention_mask=mask, use_cache=False
        ).last_hidden_state

    def _shared_hidden(self, shared: SharedPrompt) -> Tensor:
        """Hidden states of the shared layout's one row (``T × hidden``)."""
        if not shared_prompt.is_enabled(self.model):  # sdpa would ignore the layout: say so
            msg = "a shared-prompt batch needs trainers.shared_prompt.enable(model) first"
            raise RuntimeError(msg)
        decoder = self.model.get_decoder()
        return decoder(**shared.model_inputs(), use_cache=False).last_hidden_state[0]

    def _packed_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Hidden states of the rows run as one padding-free sequence, put back in row shape."""
        keep = attention_mask.bool()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        packed = self.model.get_decoder()(
            input_ids=input_ids[keep][None],
            position_ids=positions[keep][None],
            attention_mask=None,
            use_cache=False,
        ).last_hidden_state[0]
        hidden = packed.new_zeros((*input_ids.shape, packed.shape[-1]))
        return hidden.masked_scatter(keep[..., None], packed)

    def logits(self, states: Tensor) -> Tensor:
        """The output head on hidden states, in fp32, with the model's logit scaling if any."""
        logits = self.model.get_output_embeddings()(states).float()
        config = self.model.config
        if getattr(config, "logit_scale", None):  # Cohere
            logits = logits * config.logit_scale
        if getattr(config, "logits_scaling", None):  # Granite
            logits = logits / config.logits_scaling
        if getattr(config, "final_logit_softcapping", None):  # Gemma 2
            cap = config.final_logit_softcapping
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _chunk_logps(self, states: Tensor, labels: Tensor) -> Tensor:
        logits = self.logits(states)
        picked = logits.gather(1, labels[:, None]).squeeze(1)
        if self.allowed is None:
            return picked - logits.logsumexp(-1)
        allowed = self.allowed.to(logits.device)
        # a label outside the alphabet has probability 0 (check_allowed refuses such data first)
        outside = ~torch.isin(labels, allowed)
        picked = picked.masked_fill(outside, float("-inf"))
        return picked - logits.index_select(1, allowed).logsumexp(-1)

    def _token_logps(self, states: Tensor, labels: Tensor) -> Tensor:
        n = states.shape[0]
        if n <= self.chunk_tokens:
            return self._chunk_logps(states, labels)
        recompute = torch.is_grad_enabled() and states.requires_grad
        parts = []
        for start in range(0, n, self.chunk_tokens):
            chunk = (
                states[start : start + self.chunk_tokens],
                labels[start : start + self.chunk_tokens],
            )
            if recompute:
                parts.append(checkpoint(self._chunk_logps, *chunk, use_reentrant=False))
            else:
                parts.append(self._chunk_logps(*chunk))
        return torch.cat(parts)

    @torch.no_grad()
    def check_head(self) -> None:
        """Refuse a model whose logits are not this module's head of its decoder's states."""
        ids = torch.arange(1, 9, device=self.model.device)[None] % self.model.config.vocab_size
        reference = self.model(input_ids=ids, use_cache=False).logits.float()
        try:
            hidden = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            same = torch.allclose(self.logits(hidden), reference, rtol=1e-3, atol=1e-3)
        except (AttributeError, TypeError, RuntimeError):
            same = False
        if not same:
            raise InputError(
                f"{type(self.model).__name__}'s logits are not its output head applied to its "
                "decoder's hidden states, so response log-probs cannot be chunked",
                fix="use a standard causal LM architecture",
            )


@torch.no_grad()
def check_shared_prompt(module: SequenceLogps) -> str | None:
    """Switch ``module``'s model to the shared prompt and check it on a probe pair.

    Returns why the model keeps the ordinary batch (:func:`trainers.shared_prompt.unsupported`,
    an attention argument it cannot honour, or a probe whose log-probs differ), else None.
    """
    model = module.model
    reason = shared_prompt.enable(model)
    if reason is not None:
        return reason
    pool = module.allowed.tolist() if module.allowed is not None else range(model.config.vocab_size)
    token = [pool[(7 * i + 3) % len(pool)] for i in range(12)]
    ids = torch.tensor([token[:9], token[:5] + token[9:12] + token[:1]], device=model.device)
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[0, 8:] = False  # prompt of 5, chosen of 3 (then padding), rejected of 4
    response = attention.clone()
    response[:, :5] = False
    layout = shared_prompt.share_prompts(
        ids, attention, response, torch.tensor([True], device=ids.device), max_share=1.0
    )
    try:
        plain = module(ids, attention, response)[0]
        shared = module(ids, attention, response, shared=layout)[0]
    except shared_prompt.SharedPromptUnsupported as exc:
        reason = str(exc)
    else:  # rounding differs with the matmul shapes: more so in 16 bits than in 32
        tolerance = 1e-3 if model.dtype in (torch.float32, torch.float64) else 3e-2
        if not torch.allclose(shared.float(), plain.float(), rtol=tolerance, atol=tolerance):
            reason = "a probe pair's log-probs differ with the prompt shared"
    if reason is not None:
        shared_prompt.disable(model)
    return reason


def check_allowed(pairs: TokenizedPairs, allowed_token_ids: list[int], where: object) -> None:
    """Refuse a split whose responses use a token outside ``allowed_token_ids`` (log-prob −inf)."""
    allowed = torch.tensor(sorted(set(allowed_token_ids)), dtype=torch.int64)
    for name in ("chosen", "rejected"):
        values = getattr(pairs, name).values
        outside = values[~torch.isin(values, allowed)]
        if outside.numel():
            raise InputError(
                f"a {name} response uses token id {int(outside[0])}, outside allowed_token_ids",
                where=where,
                fix="allow that token, or train without allowed_token_ids",
            )


def is_right_padded(attention_mask: Tensor) -> bool:
    """Whether every row's mask is ones then zeros (real tokens first, padding after)."""
    lengths = attention_mask.sum(-1, keepdim=True)
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return bool(torch.equal(attention_mask.bool(), positions < lengths))


def reference_logps(
    module: SequenceLogps,
    pairs: TokenizedPairs,
    *,
    batch_size: int,
    device: torch.device,
    autocast: AbstractContextManager,
    pad_id: int,
    only: Tensor | None = None,
    lockstep: bool = False,
    progress: Callable[..., None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the chosen and rejected response of every dpo pair under ``module``.

    Runs once, in inference mode; each rank scores a strided share of the dpo pairs (longest
    first, to waste little padding) and the shares are gathered. Entries of sft pairs are NaN:
    they never need a reference. ``only``: the pair indices the run will train (``--max-steps``
    short of the split); the others stay NaN, unscored. ``lockstep`` (a sharded module, whose
    every forward is a collective) makes every rank run as many batches as the busiest one, the
    extra ones on a spare pair whose result is dropped. ``progress(n, total=…)`` hears of this
    rank's pairs as they are scored. When the module's model shares prompts
    (:func:`check_shared_prompt`), so do the batches of this pass.
    """
    info = dist.info()
    dpo_index = pairs.is_dpo.nonzero().squeeze(1)
    if only is not None:
        dpo_index = dpo_index[torch.isin(dpo_index, only)]
    share = dpo_index[info.rank :: info.world_size]
    lengths = pairs.prompt.lengths() + torch.maximum(
        pairs.chosen.lengths(), pairs.rejected.lengths()
    )
    share = share[torch.argsort(lengths[share], descending=True, stable=True)]
    chosen = torch.full((len(pairs),), float("nan"))
    rejected = torch.full((len(pairs),), float("nan"))
    batches = -(-share.numel() // batch_size)
    if lockstep:
        batches = int(dist.max_(torch.tensor([batches], device=dist.collective_device())))
    shared = shared_prompt.is_enabled(module.model)  # the policy's setting (loop._shared_prompt)
    if progress is not None:
        progress(0, total=share.numel())
    was_training = module.training
    module.eval()
    # FSDP2 gathers parameters into tensors that inference mode would forbid it to reuse
    with torch.no_grad() if lockstep else torch.inference_mode():
        for b in range(batches):
            index = share[b * batch_size : (b + 1) * batch_size]
            spare = index.numel() == 0
            if spare:
                index = dpo_index[:1] if dpo_index.numel() else torch.tensor([0])
            batch = collate(pairs, index, pad_id=pad_id, only_dpo=True, shared_prompt=shared)
            batch = batch.to(device)
            with autocast:
                logps, _ = module(
                    batch.input_ids, batch.attention_mask, batch.response_mask, shared=batch.shared
                )
            if spare:
                continue
            logps = logps.float().cpu()
            chosen[index] = logps[: len(index)]
            rejected[index] = logps[len(index) :]
            if progress is not None:
                progress(len(index))
    module.train(was_training)
    if info.world_size > 1:
        chosen, rejected = dist.merge_shares(chosen), dist.merge_shares(rejected)
    return chosen, rejected
