"""Shared-prompt batches: a pair's prompt runs through the model once, and both responses read it.

A dpo pair's chosen and rejected sequences start with the same prompt, so an ordinary batch
(:class:`trainers.data.Batch`: each pair's prompt + chosen, then each dpo pair's prompt +
rejected) computes every prompt token twice, and pads every sequence to the longest. Here the
micro-batch's tokens are laid out once, in one padding-free row — per pair its prompt, its chosen
response and, for a dpo pair, its rejected response, each token at the position it has in its own
sequence, a rejected response after its own copy of the prompt's last token — and the model runs
on that row:

* every layer except attention works token by token (embeddings, projections, MLP, norms), so it
  now runs once per distinct token: no prompt twice, no padding;
* attention gathers each sequence's queries, keys and values from the row into the ordinary
  batch's padded shape (``rows``: prompt + chosen, prompt + rejected), attends causally there
  exactly as the ordinary batch does, and each token of the row takes its output from the one
  sequence that owns it (``owner``: a prompt token from its chosen sequence).

With that copy, every scored token in the row follows the position that predicts it, so the row
is an ordinary causal-LM row whose attention is special: a trainer that scores a causal LM's
shifted labels (TRL's fused head) scores it as it is (:meth:`SharedPrompt.labels`).

A prompt's keys and values are read by both of its sequences, so its gradient is the sum of both
uses: the same function of the weights as the ordinary batch, hence the same per-pair log-probs,
losses and gradients up to float rounding (``tests/test_shared_prompt.py``), with the prompt's
share of the token-wise compute gone. On ../shared/data/ultrafeedback_1k.jsonl at max length 512
(byte tokens) a batch of 8 pairs shrinks from 8,192 padded positions to about 5,700.

The attention runs through transformers' attention interface, under the name
:data:`ATTENTION` (registered by :func:`enable`), so any model whose attention layers call that
interface can use it. Without a layout it is transformers' own SDPA attention, so every other
forward (the reference of another model, sampling) is unchanged. It refuses what it cannot
reproduce — sliding windows, logit soft-capping, attention sinks — and :func:`unsupported` says
which models and settings keep the ordinary batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The attention implementation's name in transformers' registry while prompts are shared.
ATTENTION = "prefcurate_shared_prompt"
#: The base implementation it stands in for, and falls back to without a layout.
BASE_ATTENTION = "sdpa"
#: A micro-batch takes the shared layout when it computes at most this share of the positions of
#: the ordinary batch. Gathering and scattering the sequences costs about 5% of a step (a 26M
#: Llama on a CPU), so a smaller saving is not worth it.
MAX_SHARE = 0.9
#: Below this hidden size the gathers cost more than the token-wise compute they save, so a
#: smaller model keeps the ordinary batch: one step of 8 UltraFeedback pairs (max length 512) on
#: a CPU took 1.08× as long shared at hidden size 64, 0.93× at 128, 0.76× at 256.
MIN_HIDDEN_SIZE = 128
#: Per-call attention arguments this function cannot honour; a model that passes one is refused.
_UNSUPPORTED_KWARGS = ("sliding_window", "softcap", "s_aux")


class SharedPromptUnsupported(RuntimeError):
    """The model's attention asked for something the shared layout cannot reproduce."""


@dataclass
class SharedPrompt:
    """Where each sequence of a batch lives in its one padding-free row.

    ``input_ids`` and ``position_ids`` (``1 × T``): each distinct token once, at its position in
    its own sequence. ``rows`` (``R × W``, the ordinary batch's shape): the index in the row of
    each position of each sequence (0 on padding). ``owner`` (``T``): for each token of the row,
    the flat index ``r · W + c`` of the sequence position whose attention output it takes.
    """

    input_ids: Tensor
    position_ids: Tensor
    rows: Tensor
    owner: Tensor

    def to(self, device: torch.device) -> SharedPrompt:
        return SharedPrompt(*(t.to(device) for t in self.__dict__.values()))

    @property
    def tokens(self) -> int:
        """Positions the token-wise layers compute (the ordinary batch: ``R × W``)."""
        return self.input_ids.shape[1]

    def model_inputs(self) -> dict[str, object]:
        """The keyword arguments of a transformers causal LM's forward over the row."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            # all ones: transformers then builds no mask and does not read the positions as packing
            "attention_mask": torch.ones_like(self.input_ids),
            "shared_prompt": self,
        }

    def labels(self, response_mask: Tensor, ignore: int = -100) -> Tensor:
        """``1 × T``: each scored response token's id, ``ignore`` elsewhere.

        In the row every scored token follows the position that predicts it, so a causal LM's
        shifted loss over these labels scores exactly the batch's response tokens (the first token
        of a sequence has nothing before it and is not scored, as in the ordinary batch).
        """
        width = self.rows.shape[1]
        scored = response_mask.reshape(-1)[self.owner].bool() & (self.owner % width > 0)
        return torch.where(scored, self.input_ids[0], ignore)[None]

    def per_sequence(
        self, shifted: Tensor, labels: Tensor, ignore: int = -100
    ) -> tuple[Tensor, Tensor]:
        """Per sequence of the batch: the sum of ``shifted`` (``T − 1``: entry ``t`` scores token
        ``t + 1`` of the row) over its scored tokens, and how many tokens were scored.

        Each value is summed at the column of the position that predicted it, as an ordinary
        batch's shifted log-probs are, so the two sums add the same numbers in the same order.
        """
        n_rows, width = self.rows.shape
        scored = labels[1:] != ignore
        column = self.owner[1:][scored] - 1  # a scored token is never first in its sequence
        flat = shifted.new_zeros(n_rows * width).index_put_((column,), shifted[scored])
        counts = scored.new_zeros(n_rows * width).index_put_((column,), scored[scored])
        sums = flat.view(n_rows, width)[:, :-1].sum(-1)
        return sums, counts.view(n_rows, width).sum(-1)


def share_prompts(
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    is_dpo: Tensor,
    *,
    max_share: float = MAX_SHARE,
) -> SharedPrompt | None:
    """The shared layout of a right-padded batch of ``P`` chosen rows, then the dpo pairs' rejected.

    ``response_mask`` marks each row's response tokens, which follow its prompt. None when the
    layout would keep more than ``max_share`` of the batch's ``R × W`` positions, or when a row is
    not prompt then response then padding, or a rejected row's prompt is not its chosen row's
    (then the ordinary batch is exact and the shared one would not be).
    """
    n_rows, width = input_ids.shape
    device = input_ids.device
    lengths = attention_mask.sum(-1)
    prompts = lengths - response_mask.sum(-1)
    positions = torch.arange(width, device=device)
    expected = (positions < lengths[:, None], positions >= prompts[:, None])
    real = attention_mask.bool()
    if not torch.equal(real, expected[0]) or not torch.equal(
        response_mask.bool(), real & expected[1]
    ):
        return None
    lengths, prompts = lengths.tolist(), prompts.tolist()
    rejected_row = {p: is_dpo.numel() + k for k, p in enumerate(is_dpo.nonzero()[:, 0].tolist())}
    rows = torch.zeros((n_rows, width), dtype=torch.int64, device=device)
    owned: list[Tensor] = []
    start = 0
    for pair in range(is_dpo.numel()):
        for row in (pair, rejected_row.get(pair)):
            if row is None:
                continue
            first = 0
            if row != pair:  # a rejected row: the chosen row's prompt, but its own last token
                prompt = prompts[row]
                if prompt != prompts[pair] or not torch.equal(
                    input_ids[row, :prompt], input_ids[pair, :prompt]
                ):
                    return None
                first = max(prompt - 1, 0)
                rows[row, :first] = rows[pair, :first]
            count = lengths[row] - first
            rows[row, first : lengths[row]] = torch.arange(start, start + count, device=device)
            owned.append(row * width + torch.arange(first, lengths[row], device=device))
            start += count
    if start > max_share * n_rows * width:
        return None
    owner = torch.cat(owned)
    return SharedPrompt(
        input_ids=input_ids.reshape(-1)[owner][None],
        position_ids=(owner % width)[None],
        rows=rows,
        owner=owner,
    )


# --------------------------------------------------------------------------- the attention


def shared_prompt_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_prompt: SharedPrompt | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers' attention-function signature: ``query`` etc. are ``1 × heads × T × d``.

    Without ``shared_prompt`` this is transformers' SDPA attention, unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_prompt is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    asked = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    if asked:
        msg = f"the model's attention uses {', '.join(asked)}, which a shared prompt cannot honour"
        raise SharedPromptUnsupported(msg)
    rows = shared_prompt.rows
    q, k, v = (_by_sequence(x, rows) for x in (query, key, value))
    grouped = q.shape[1] != k.shape[1]
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=grouped
    )  # sequences × heads × W × d
    out = out.transpose(1, 2).reshape(-1, out.shape[1], out.shape[3])
    return out.index_select(0, shared_prompt.owner)[None], None


def _by_sequence(states: Tensor, rows: Tensor) -> Tensor:
    """``1 × heads × T × d`` → ``R × heads × W × d``: each sequence's positions from the row."""
    by_token = states[0].transpose(0, 1)  # T × heads × d: each token's heads are contiguous
    picked = by_token.index_select(0, rows.reshape(-1))
    return picked.view(*rows.shape, *by_token.shape[1:]).transpose(1, 2)


# --------------------------------------------------------------------------- switching it on


def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` keeps the ordinary batch, or None when it shares prompts (a probe still
    checks the math).

    It needs attention layers that call transformers' attention interface (the model class says
    so with ``_supports_attention_backend``), SDPA as the attention chosen (flash-attention and
    eager attention have their own kernels) and no sliding window; and a hidden size of at least
    :data:`MIN_HIDDEN_SIZE`, below which sharing is slower.
    """
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__}'s attention does not go through transformers' interface"
    chosen = model.config._attn_implementation
    if chosen not in (BASE_ATTENTION, ATTENTION):
        return f"attention {chosen!r} (the shared prompt runs on sdpa)"
    config = model.config
    hidden = getattr(config.get_text_config(), "hidden_size", MIN_HIDDEN_SIZE)
    if hidden < MIN_HIDDEN_SIZE:
        return f"hidden size {hidden}: below {MIN_HIDDEN_SIZE} sharing is slower than not"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return "the model uses sliding-window attention"
    return None


def enable(model: nn.Module) -> str | None:
    """Switch ``model`` to the shared-prompt attention; if it cannot, leave it and say why."""
    reason = unsupported(model)
    if reason is not None:
        return reason
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, shared_prompt_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # masks as for sdpa, its fallback
    model.set_attn_implementation(ATTENTION)
    return None


def disable(model: nn.Module) -> None:
    """Back to transformers' SDPA (before a model is saved, so its config names no function of
    prefcurate's)."""
    if model.config._attn_implementation == ATTENTION:
        model.set_attn_implementation(BASE_ATTENTION)


def is_enabled(model: nn.Module) -> bool:
    return model.config._attn_implementation == ATTENTION
