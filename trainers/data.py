"""From a routed split to token batches: reading, tokenising, truncating, collating, ordering.

The split is the contract (docs/schema.md): ``train.parquet`` with the canonical pair columns plus
``route``, ``rank`` and ``stage``, and ``plan.json``. This module reads only those files, refuses a
split that lacks a required column (naming the column and the file), and never re-derives a margin
or a route.

Text becomes tokens in one of two ways:

* conversational data (message lists) with a tokenizer that has a chat template: the template
  renders the prompt (with the generation prompt) and prompt + response; the response is the
  rendered suffix;
* otherwise ``prompt + response + EOS``: messages are first joined as ``"role: content"`` blocks
  separated by blank lines, the prompt ending in ``"assistant: "``; the tokenizer's own leading
  special tokens (a BOS, if it adds one) start the prompt.

``--max-length`` truncation keeps the start of the prompt and the start of both responses; a pair
whose two responses become identical carries no preference signal and is trained as sft.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from prefcurate.base.errors import InputError
from prefcurate.data.schema import (
    ROUTES,
    SPLIT_EXTRA_COLUMNS,
    WEIGHT_COLUMN,
    is_messages,
    sft_mix,
    takes_preference,
)
from trainers.shared_prompt import SharedPrompt, share_prompts

#: Columns the trainer reads; a split without any of them is refused.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "pair_id",
    "prompt",
    "chosen",
    "rejected",
    *SPLIT_EXTRA_COLUMNS,
)
TEXT_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")


# --------------------------------------------------------------------------- reading the split


@dataclass(frozen=True)
class Split:
    """A validated split: its pairs in curriculum (rank) order and its plan."""

    path: Path
    frame: pl.DataFrame
    plan: dict[str, Any]
    conversational: bool
    sha256: str

    def summary(self) -> dict[str, Any]:
        """What run.json records about the split."""
        routes = self.frame["route"].value_counts().rows()
        return {
            "path": str(self.path),
            "train_sha256": self.sha256,
            "rows": self.frame.height,
            "routes": dict(sorted(routes)),
            "conversational": self.conversational,
            "plan": {k: self.plan.get(k) for k in ("mode", "threshold", "order", "counts")},
        }


def read_split(split_dir: str | Path, *, name: str = "train") -> Split:
    """Read and validate ``SPLIT_DIR/train.parquet`` (or ``{name}.parquet``: ``eval``) and
    ``SPLIT_DIR/plan.json``.

    Raises :class:`InputError` naming the file and the column (or pair) when the contract is
    broken: a missing ``route`` column is an error, never a default.
    """
    split_dir = Path(split_dir)
    train_path = split_dir / f"{name}.parquet"
    plan_path = split_dir / "plan.json"
    fix = "pass a directory written by 'prefcurate route'"
    if not split_dir.is_dir():
        raise InputError("split directory not found", where=split_dir, fix=fix)
    for needed in (train_path, plan_path):
        if not needed.is_file():
            raise InputError(f"the split has no {needed.name}", where=split_dir, fix=fix)
    try:
        plan = json.loads(plan_path.read_text())
        frame = pl.read_parquet(train_path)
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"cannot read the split: {exc}", where=split_dir, fix=fix) from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"missing column {', '.join(repr(c) for c in missing)}",
            where=train_path,
            fix="route the data with 'prefcurate route': the route column decides each pair's loss",
        )
    if frame.height == 0:
        raise InputError("the split has no pairs", where=train_path, fix=fix)
    conversational = _check_text_columns(frame, train_path)
    _check_routes(frame, train_path)
    _check_weights(frame, train_path)
    frame = _check_rank(frame, train_path)
    digest = hashlib.sha256(train_path.read_bytes()).hexdigest()
    return Split(split_dir, frame, plan, conversational, digest)


def _check_text_columns(frame: pl.DataFrame, where: Path) -> bool:
    dtypes = {c: frame.schema[c] for c in TEXT_COLUMNS}
    if all(d == pl.String for d in dtypes.values()):
        conversational = False
    elif all(is_messages(d) for d in dtypes.values()):
        conversational = True
    else:
        shown = ", ".join(f"{c}: {d}" for c, d in dtypes.items())
        raise InputError(
            f"prompt, chosen and rejected must all be strings or all message lists ({shown})",
            where=where,
        )
    for column in ("pair_id", *TEXT_COLUMNS):
        nulls = frame.filter(pl.col(column).is_null())
        if nulls.height:
            raise InputError(
                f"column {column!r} is null for pair {nulls['pair_id'][0]!r}",
                where=where,
                fix="drop or repair those pairs before routing",
            )
    return conversational


def _check_routes(frame: pl.DataFrame, where: Path) -> None:
    bad = frame.filter(pl.col("route").is_null() | ~pl.col("route").is_in(list(ROUTES)))
    if bad.height:
        raise InputError(
            f"route {bad['route'][0]!r} of pair {bad['pair_id'][0]!r} is not one of "
            f"{', '.join(ROUTES)}",
            where=f"{where}, column route",
            fix="route the data with 'prefcurate route'",
        )


def _check_weights(frame: pl.DataFrame, where: Path) -> None:
    """The optional soft-routing column: a float in [0, 1] for every pair, or absent."""
    if WEIGHT_COLUMN not in frame.columns:
        return
    if not frame.schema[WEIGHT_COLUMN].is_float():
        raise InputError(
            f"weight must be a float column, not {frame.schema[WEIGHT_COLUMN]}",
            where=f"{where}, column weight",
            fix="route the data with 'prefcurate route --soft T'",
        )
    weight = pl.col(WEIGHT_COLUMN)
    bad = frame.filter(weight.is_null() | weight.is_nan() | (weight < 0) | (weight > 1))
    if bad.height:
        raise InputError(
            f"weight {bad[WEIGHT_COLUMN][0]!r} of pair {bad['pair_id'][0]!r} is not in [0, 1]",
            where=f"{where}, column weight",
            fix="route the data with 'prefcurate route --soft T'",
        )


def split_mixes(frame: pl.DataFrame) -> list[float]:
    """Each pair's SFT mix of its loss, by the split contract's one rule (:func:`sft_mix`)."""
    routes = frame["route"].to_list()
    weights = frame[WEIGHT_COLUMN].to_list() if WEIGHT_COLUMN in frame.columns else None
    return [sft_mix(r, None if weights is None else weights[i]) for i, r in enumerate(routes)]


def _check_rank(frame: pl.DataFrame, where: Path) -> pl.DataFrame:
    if not frame["rank"].dtype.is_integer():
        raise InputError(f"rank must be an integer column, not {frame['rank'].dtype}", where=where)
    ranks = frame["rank"]
    n = frame.height
    if ranks.null_count() or ranks.n_unique() != n or ranks.min() != 0 or ranks.max() != n - 1:
        raise InputError(
            "rank must number the pairs 0..n-1 without gaps or repeats",
            where=f"{where}, column rank",
        )
    return frame.sort("rank")


# --------------------------------------------------------------------------- tokenising


@dataclass
class Ragged:
    """Variable-length token sequences stored flat: ``values[offsets[i]:offsets[i+1]]``."""

    values: Tensor
    offsets: Tensor

    @classmethod
    def from_lists(cls, sequences: list[list[int]]) -> Ragged:
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
        offsets = torch.zeros(len(sequences) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        flat = np.fromiter(chain.from_iterable(sequences), dtype=np.int64, count=int(offsets[-1]))
        return cls(torch.from_numpy(flat), offsets)

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> Tensor:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]


@dataclass
class TokenizedPairs:
    """A tokenised split, in rank order, with each pair's effective route.

    ``is_dpo`` marks the pairs with a preference term (they need the rejected response and
    reference log-probs); ``sft_mix`` is each pair's SFT mix of its loss: 0 or 1 under the
    hard route, the split's ``weight`` column under soft routing (a pair is dpo when it is < 1).
    """

    pair_ids: list[str]
    prompt: Ragged
    chosen: Ragged
    rejected: Ragged
    is_dpo: Tensor
    truncated: int
    identical: int
    chat_template: bool
    sft_mix: Tensor | None = None

    def __post_init__(self) -> None:
        if self.sft_mix is None:
            self.sft_mix = (~self.is_dpo).to(torch.float64)

    def __len__(self) -> int:
        return len(self.pair_ids)

    def digest(self) -> str:
        """SHA-256 of every token and route: the data key of the reference cache."""
        h = hashlib.sha256()
        for part in (self.prompt, self.chosen, self.rejected):
            h.update(part.values.numpy().tobytes())
            h.update(part.offsets.numpy().tobytes())
        h.update(self.is_dpo.numpy().tobytes())
        if not bool(((self.sft_mix == 0) | (self.sft_mix == 1)).all()):  # soft: in the key
            h.update(self.sft_mix.numpy().tobytes())
        h.update("\n".join(self.pair_ids).encode())
        return h.hexdigest()

    def counts(self) -> dict[str, int]:
        dpo = int(self.is_dpo.sum())
        return {
            "pairs": len(self),
            "dpo": dpo,
            "sft": len(self) - dpo,
            "truncated": self.truncated,
            "identical_after_truncation": self.identical,
        }

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat tensors for the on-disk token cache (pair ids travel in the metadata)."""
        out = {"is_dpo": self.is_dpo.to(torch.uint8), "sft_mix": self.sft_mix}
        for name in TEXT_COLUMNS:
            part: Ragged = getattr(self, name)
            out[f"{name}.values"] = part.values
            out[f"{name}.offsets"] = part.offsets
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> TokenizedPairs:
        parts = {n: Ragged(tensors[f"{n}.values"], tensors[f"{n}.offsets"]) for n in TEXT_COLUMNS}
        return cls(
            pair_ids=meta["pair_ids"],
            is_dpo=tensors["is_dpo"].bool(),
            sft_mix=tensors.get("sft_mix"),
            truncated=meta["truncated"],
            identical=meta["identical"],
            chat_template=meta["chat_template"],
            **parts,
        )


def tokenize_split(
    split: Split, tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> TokenizedPairs:
    """Tokenise every pair once, truncate to ``max_length``, and fix each pair's effective route.

    A dpo pair whose chosen and rejected tokens are identical after truncation is counted in
    ``identical`` and trained as sft (the preference loss of identical responses is constant).
    """
    if max_length < 2:
        raise InputError(f"--max-length must be at least 2, not {max_length}")
    frame = split.frame
    use_template = split.conversational and bool(getattr(tokenizer, "chat_template", None))
    prompts, chosens, rejecteds = [], [], []
    for prompt, chosen, rejected in zip(
        frame["prompt"].to_list(),
        frame["chosen"].to_list(),
        frame["rejected"].to_list(),
        strict=True,
    ):
        if use_template:
            p, c, r = _render_template(tokenizer, prompt, chosen, rejected, split.path)
        elif split.conversational:
            p, c, r = render_messages(prompt), render_response(chosen), render_response(rejected)
        else:
            p, c, r = prompt, chosen, rejected
        prompts.append(p)
        chosens.append(c)
        rejecteds.append(r)
    p_ids, c_ids, r_ids = _encode(tokenizer, prompts, chosens, rejecteds, use_template)
    mixes = split_mixes(frame)
    is_dpo = [takes_preference(w) for w in mixes]
    truncated = identical = 0
    for i in range(len(p_ids)):
        p, c, r = truncate_pair(p_ids[i], c_ids[i], r_ids[i], max_length)
        truncated += (len(p), len(c), len(r)) != (len(p_ids[i]), len(c_ids[i]), len(r_ids[i]))
        if is_dpo[i] and c == r:
            is_dpo[i] = False
            mixes[i] = 1.0
            identical += 1
        p_ids[i], c_ids[i], r_ids[i] = p, c, r
    return TokenizedPairs(
        pair_ids=frame["pair_id"].cast(pl.String).to_list(),
        prompt=Ragged.from_lists(p_ids),
        chosen=Ragged.from_lists(c_ids),
        rejected=Ragged.from_lists(r_ids),
        is_dpo=torch.tensor(is_dpo, dtype=torch.bool),
        sft_mix=torch.tensor(mixes, dtype=torch.float64),
        truncated=truncated,
        identical=identical,
        chat_template=use_template,
    )


def encode_responses(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    responses: list[Any],
    *,
    conversational: bool,
    where: str | Path = "the data",
) -> tuple[list[list[int]], list[list[int]], bool]:
    """Token ids of each prompt and its one response, by the rules of :func:`tokenize_split`.

    For callers that score responses one at a time (``prefcurate score --reference``); returns
    the prompt ids, the response ids (untruncated) and whether the chat template was used.
    """
    use_template = conversational and bool(getattr(tokenizer, "chat_template", None))
    if use_template:
        rendered = [
            _render_template(tokenizer, p, r, r, where)[:2]
            for p, r in zip(prompts, responses, strict=True)
        ]
        prompts, responses = [p for p, _ in rendered], [r for _, r in rendered]
    elif conversational:
        prompts = [render_messages(p) for p in prompts]
        responses = [render_response(r) for r in responses]
    p_ids, r_ids, _ = _encode(tokenizer, prompts, responses, [], use_template)
    return p_ids, r_ids, use_template


def render_messages(messages: list[dict[str, str]]) -> str:
    """Plain-text prompt of a conversation: ``"role: content"`` blocks, then ``"assistant: "``."""
    blocks = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n\n".join([*blocks, "assistant: "])


def render_response(messages: list[dict[str, str]]) -> str:
    """Plain-text response: the first turn's content, later turns as ``"role: content"`` blocks."""
    if not messages:
        return ""
    rest = [f"{m['role']}: {m['content']}" for m in messages[1:]]
    return "\n\n".join([messages[0]["content"], *rest])


def _render_template(tokenizer, prompt, chosen, rejected, where) -> tuple[str, str, str]:
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    responses = []
    for response in (chosen, rejected):
        full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
        if not full.startswith(prompt_text):
            raise InputError(
                "the tokenizer's chat template does not render the prompt as a prefix of the "
                "conversation, so the response cannot be separated",
                where=where,
                fix="use a model whose template is prefix-consistent, or plain-text pairs",
            )
        responses.append(full[len(prompt_text) :])
    return prompt_text, responses[0], responses[1]


def _encode(tokenizer, prompts, chosens, rejecteds, use_template):
    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    p_ids, c_ids, r_ids = ids(prompts), ids(chosens), ids(rejecteds)
    if use_template:  # the template already writes BOS and end-of-turn tokens
        return p_ids, c_ids, r_ids
    lead = leading_special_tokens(tokenizer)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return [lead + p for p in p_ids], [c + eos for c in c_ids], [r + eos for r in r_ids]


def leading_special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer itself puts before a text (Llama's BOS; none for ByT5)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(special) - len(plain) + 1):
        if special[start : start + len(plain)] == plain:
            return list(special[:start])
    return []


def truncate_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int
) -> tuple[list[int], list[int], list[int]]:
    """Fit prompt + each response into ``max_length``, keeping the start of all three.

    The prompt keeps ``min(len(prompt), max(max_length − longest response, max_length // 2))``
    tokens: the responses are guaranteed at least half the budget, and get the whole remainder.
    """
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected
    keep_prompt = min(len(prompt), max(max_length - longest, max_length // 2))
    keep_response = max_length - keep_prompt
    return prompt[:keep_prompt], chosen[:keep_response], rejected[:keep_response]


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One micro-batch: every pair's chosen sequence, then the rejected sequences of dpo pairs.

    Rows ``0..P-1`` of ``input_ids`` are the chosen responses of the ``P`` pairs in order; rows
    ``P..`` the rejected responses of the dpo pairs, in order. ``response_mask`` marks the tokens
    whose log-probability counts (the response, never the prompt or padding).
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    is_dpo: Tensor
    index: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    sft_mix: Tensor | None = None  # per pair; None: 0 for dpo pairs, 1 for sft pairs
    shared: SharedPrompt | None = None  # the one-row layout that runs each prompt once

    @property
    def pairs(self) -> int:
        return self.is_dpo.numel()

    def to(self, device: torch.device) -> Batch:
        return Batch(**{k: None if v is None else v.to(device) for k, v in self.__dict__.items()})


def collate(
    pairs: TokenizedPairs,
    index: Tensor,
    *,
    pad_id: int,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    only_dpo: bool = False,
    shared_prompt: bool = False,
) -> Batch:
    """Build a right-padded batch of the pairs ``index``, padded to its own longest sequence.

    sft pairs contribute only their chosen sequence; dpo pairs their chosen and rejected.
    ``only_dpo`` treats every pair as dpo (the reference pass). ``shared_prompt`` adds the layout
    that runs each prompt once and drops the padding (:mod:`trainers.shared_prompt`), when it
    saves enough to be worth it.
    """
    is_dpo = torch.ones(len(index), dtype=torch.bool) if only_dpo else pairs.is_dpo[index]
    rows: list[tuple[Tensor, Tensor]] = [(pairs.prompt[i], pairs.chosen[i]) for i in index.tolist()]
    rows += [
        (pairs.prompt[i], pairs.rejected[i])
        for i, dpo in zip(index.tolist(), is_dpo.tolist(), strict=True)
        if dpo
    ]
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (prompt, response) in enumerate(rows):
        n_prompt, n = len(prompt), len(prompt) + len(response)
        input_ids[row, :n_prompt] = prompt
        input_ids[row, n_prompt:n] = response
        attention_mask[row, :n] = True
        response_mask[row, n_prompt:n] = True
    nan = torch.full((len(index),), float("nan"))
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        is_dpo=is_dpo,
        index=index.clone(),
        ref_chosen=nan if ref_chosen is None else ref_chosen[index],
        ref_rejected=nan if ref_rejected is None else ref_rejected[index],
        sft_mix=(~is_dpo).to(torch.float64) if only_dpo else pairs.sft_mix[index],
        shared=share_prompts(input_ids, attention_mask, response_mask, is_dpo)
        if shared_prompt
        else None,
    )


# --------------------------------------------------------------------------- order


@dataclass(frozen=True)
class Curriculum:
    """The order pairs are read in, and which of them each rank trains at each step.

    By default pairs are read sequentially in rank order (the curriculum); ``shuffle`` draws a
    fresh permutation per epoch from ``seed``. An optimizer step takes the next ``global_batch``
    pairs of the order (the last step of an epoch may take fewer); under DDP rank ``r`` of ``W``
    takes the strided mix ``r, r+W, r+2W, …`` of them, so the curriculum holds across ranks.
    """

    n_pairs: int
    global_batch: int
    epochs: int = 1
    max_steps: int | None = None
    shuffle: bool = False
    seed: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_pairs / self.global_batch)

    @property
    def total_steps(self) -> int:
        total = self.epochs * self.steps_per_epoch
        return total if self.max_steps is None else min(total, self.max_steps)

    def epoch_order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n_pairs)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n_pairs, generator=generator)

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, first position within the epoch's order)`` of 0-based optimizer step."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return epoch, within * self.global_batch

    def step_pairs(self, step: int) -> Tensor:
        """Indices of all pairs (every rank's) in 0-based optimizer step ``step``."""
        epoch, start = self.position(step)
        return self.epoch_order(epoch)[start : start + self.global_batch]

    def micro_batches(
        self, step: int, *, rank: int, world_size: int, batch_size: int, grad_accum: int
    ) -> list[Tensor]:
        """This rank's ``grad_accum`` micro-batches of ``step`` (some may be empty at the end)."""
        mix = self.step_pairs(step)[rank::world_size]
        return [mix[m * batch_size : (m + 1) * batch_size] for m in range(grad_accum)]
