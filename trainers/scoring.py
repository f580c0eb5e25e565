"""Scores from models for ``prefcurate score``: a reward model, a reference policy, an encoder.

Each *text* is one response, with its prompt where the kind of model reads one:

* ``reward`` — a sequence-classification model with one logit: r(prompt, response), the prompt and
  response rendered with the tokenizer's chat template when it has one, else encoded as a text
  pair (``[CLS] prompt [SEP] response [SEP]`` for BERT-like tokenizers);
* ``reference`` — a causal LM: the summed log-probability of the response given the prompt and its
  token count, computed by :class:`trainers.logps.SequenceLogps` on tokens built by the trainer's
  own rules (:func:`trainers.data.encode_responses`), so the numbers are the trainer's;
* ``embedding`` — a sentence encoder (a base model without a task head): the mean-pooled (or CLS,
  when its sentence-transformers pooling config says so), L2-normalised last hidden state of the
  response alone.

Models load from local directories only, with safetensors and without remote code unless asked
(:func:`trainers.model.load_pretrained`). :func:`inspect_model` checks a directory is the right
kind of model and fixes its cache identity from the config, tokenizer and weight hashes without
loading the weights, so a run served from the cache never loads the model. Scoring runs in
inference mode over batches of texts of similar length (:func:`plan_batches`), bf16 on CUDA.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from prefcurate.base.errors import InputError
from prefcurate.scoring.spec import FLAGS, ModelIdentity
from trainers import cache
from trainers.data import (
    Ragged,
    TokenizedPairs,
    collate,
    encode_responses,
    render_messages,
    render_response,
    truncate_pair,
)
from trainers.device import resolve_device
from trainers.logps import SequenceLogps
from trainers.model import (
    TINY,
    LoadedModel,
    directory_fingerprint,
    load_model,
    load_pretrained,
    load_tokenizer,
    read_config,
    weights_format,
)

REWARD, REFERENCE, EMBEDDING = "reward", "reference", "embedding"
KINDS: tuple[str, ...] = (REWARD, REFERENCE, EMBEDDING)


#: What each flag needs, as the error line says it.
NEEDS = {
    REWARD: "a sequence-classification model with one output "
    "(AutoModelForSequenceClassification, num_labels=1)",
    REFERENCE: "a causal language model (AutoModelForCausalLM)",
    EMBEDDING: "a sentence encoder: a base model without a task head (AutoModel), "
    "such as a sentence-transformers directory",
}

#: A tokenizer's ``model_max_length`` above this is "no limit" (transformers' sentinel is 1e30).
_NO_LIMIT = 1_000_000

_HEAD = re.compile(r"(For[A-Z]\w*|LMHeadModel)$")


# --------------------------------------------------------------------------- identity


def resolve_precision(device: str, precision: str) -> tuple[torch.device, str]:
    """``auto``: CUDA if present; bf16 weights on CUDA, fp32 on the CPU."""
    resolved = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if resolved.type == "cuda" else "fp32"
    return resolved, precision


def inspect_model(
    kind: str,
    spec: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    max_length: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> ModelIdentity:
    """Check that ``spec`` is the kind of model ``kind`` needs; return its identity.

    Reads config.json and the tokenizer and hashes the weight files; loads no weights. Raises
    :class:`InputError` for a missing directory, the wrong kind of model (saying which kind is
    needed), a reward model with several outputs, or no safetensors weights.
    """
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device, precision = resolve_precision(device, precision)
    pooling, st_limit = None, None
    if kind == REFERENCE and spec == TINY:
        tiny = load_model(TINY)
        architecture, config, tokenizer = "LlamaForCausalLM", tiny.model.config, tiny.tokenizer
        fingerprint = tiny.fingerprint
    else:
        path = Path(spec)
        fix = f"pass {NEEDS[kind]} to {FLAGS[kind]}"
        config = read_config(path, trust_remote_code=trust_remote_code, fix=fix)
        architecture = _check_kind(kind, config, path)
        weights_format(path, allow_pickle=allow_pickle, quiet=True)  # warned at load
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        if kind == EMBEDDING:
            pooling, st_limit = _sentence_transformers(path)
        fingerprint = directory_fingerprint(path)
    length, limit = _text_limit(config, tokenizer, st_limit, max_length, spec)
    return ModelIdentity(
        kind=kind,
        spec=str(spec),
        architecture=architecture,
        fingerprint=fingerprint,
        tokenizer=cache.tokenizer_fingerprint(tokenizer),
        max_length=length,
        limit=limit,
        pooling=pooling,
        device=device.type,
        precision=precision,
        width={REWARD: 1, REFERENCE: 2}.get(kind) or _hidden_size(config, spec),
    )


def _text_limit(
    config, tokenizer, st_limit: int | None, max_length: int | None, spec: str
) -> tuple[int, str]:
    """Tokens per text: the smallest limit the model, its tokenizer or the user states."""
    limits: list[tuple[int, str]] = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append((positions, "the model's max_position_embeddings"))
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < _NO_LIMIT:
        limits.append((model_max, "the tokenizer's model_max_length"))
    if st_limit:
        limits.append((st_limit, "the sentence-transformers max_seq_length"))
    if max_length is not None:
        limits.append((max_length, "--max-length"))
    if not limits:
        raise InputError(
            "the model states no length limit", where=spec, fix="pass --max-length N (tokens)"
        )
    return min(limits, key=lambda item: item[0])


def _hidden_size(config, spec: str) -> int:
    for name in ("hidden_size", "d_model", "dim"):
        size = getattr(config, name, None)
        if isinstance(size, int) and size > 0:
            return size
    raise InputError(
        "config.json states no hidden size", where=spec, fix=f"pass {NEEDS[EMBEDDING]}"
    )


def _check_kind(kind: str, config, path: Path) -> str:
    """The architecture, when it is the kind of model ``kind`` needs (by its class name)."""
    architectures = list(getattr(config, "architectures", None) or [])
    shown = architectures[0] if architectures else getattr(config, "model_type", "unknown")
    if kind == REWARD:
        ok = any(a.endswith("ForSequenceClassification") for a in architectures)
        if ok and config.num_labels != 1:
            raise InputError(
                f"{shown} has {config.num_labels} outputs; a reward model has one",
                where=path,
                fix="pass a model saved with num_labels=1",
            )
    elif kind == REFERENCE:
        ok = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    else:
        ok = bool(architectures) and not any(_HEAD.search(a) for a in architectures)
        ok = ok and not getattr(config, "is_decoder", False)
    if not ok:
        raise InputError(f"{FLAGS[kind]} needs {NEEDS[kind]}, not {shown}", where=path)
    return shown


def _sentence_transformers(path: Path) -> tuple[str, int | None]:
    """Pooling and text limit of a sentence-transformers directory (mean and none otherwise)."""
    limit = None
    settings = path / "sentence_bert_config.json"
    if settings.is_file():
        limit = json.loads(settings.read_text()).get("max_seq_length")
    pooling = "mean"
    modules = path / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Pooling"):
                config = json.loads((path / module["path"] / "config.json").read_text())
                modes = [k[len("pooling_mode_") :] for k, v in config.items() if v is True]
                if modes == ["cls_token"]:
                    pooling = "cls"
                elif modes != ["mean_tokens"]:
                    raise InputError(
                        f"pooling {', '.join(modes) or 'none'} is not supported",
                        where=path / module["path"] / "config.json",
                        fix="use an encoder pooled by mean or by the CLS token",
                    )
    return pooling, limit if isinstance(limit, int) and limit > 0 else None


# --------------------------------------------------------------------------- texts to tokens


@dataclass
class Encoded:
    """Token sequences ready to batch. ``scored_from[i]``: where the scored response starts
    (reference); ``token_types``: segment ids of text pairs (BERT-like reward models)."""

    sequences: list[list[int]]
    truncated: np.ndarray
    scored_from: list[int] | None = None
    token_types: list[list[int]] | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.sequences), dtype=np.int64)


def special_layout(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """The special tokens the tokenizer puts around one text and between a text pair.

    Found by encoding placeholders, so any tokenizer works without transformers' removed
    ``build_inputs_with_special_tokens``: ``lead a tail`` and ``pair_lead a mid b pair_tail``,
    with the token-type ids of the pair's two segments.
    """
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    one = tokenizer("a")["input_ids"]
    pair = tokenizer("a", "b")
    start = _find(one, a, 0)
    layout = {"lead": [], "tail": [], "pair_lead": [], "mid": [], "pair_tail": [], "types": [0, 0]}
    if start is not None:
        layout["lead"], layout["tail"] = one[:start], one[start + len(a) :]
    ids = pair["input_ids"]
    first = _find(ids, a, 0)
    second = None if first is None else _find(ids, b, first + len(a))
    if first is not None and second is not None:
        layout["pair_lead"], layout["mid"] = ids[:first], ids[first + len(a) : second]
        layout["pair_tail"] = ids[second + len(b) :]
        types = pair.get("token_type_ids")
        if types:
            layout["types"] = [types[first], types[second]]
    return layout


def _find(sequence: list[int], part: list[int], start: int) -> int | None:
    for i in range(start, len(sequence) - len(part) + 1):
        if sequence[i : i + len(part)] == part:
            return i
    return None


def _as_messages(text: Any, role: str) -> list[dict[str, str]]:
    return text if isinstance(text, list) else [{"role": role, "content": text or ""}]


def _as_text(value: Any, *, prompt: bool) -> str:
    if isinstance(value, list):
        return render_messages(value) if prompt else render_response(value)
    return value or ""


# --------------------------------------------------------------------------- batching


def plan_batches(
    lengths: np.ndarray,
    *,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    order: str = "length",
    seed: int = 0,
) -> list[np.ndarray]:
    """Split texts into batches; each is padded to its own longest text.

    ``order="length"``: longest first, so a batch holds texts of nearly equal length (little
    padding) and the largest batch runs first (an out-of-memory shows at once). ``"random"``: a
    seeded shuffle, the usual data-loader order (the benchmark's baseline). A batch takes at most
    ``batch_size`` texts and at most ``max_tokens`` padded tokens (texts × its longest text); a
    text longer than ``max_tokens`` gets a batch of its own.
    """
    if order == "length":
        index = np.argsort(-lengths, kind="stable")
    elif order == "random":
        index = np.random.default_rng(seed).permutation(len(lengths))
    else:
        raise ValueError(f"unknown order {order!r}")
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for i in index.tolist():
        width = max(longest, int(lengths[i]))
        full = batch_size is not None and len(current) >= batch_size
        over = max_tokens is not None and width * (len(current) + 1) > max_tokens
        if current and (full or over):
            batches.append(np.asarray(current, dtype=np.int64))
            current, width = [], int(lengths[i])
        current.append(i)
        longest = width
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


# --------------------------------------------------------------------------- the models


@dataclass
class Scorer:
    """A loaded model of one kind: :meth:`encode` texts, then :meth:`run` batches of them."""

    identity: ModelIdentity
    loaded: LoadedModel
    device: torch.device
    layout: dict[str, list[int]] = field(default_factory=dict)
    logps: SequenceLogps | None = None

    # ------------------------------------------------------------------ encode

    def encode(self, prompts: list[Any], responses: list[Any]) -> Encoded:
        """Tokenise each (prompt, response); truncate to ``max_length`` and flag what was cut.

        ``prompts`` are ignored by the embedding model. Truncation keeps the start of the prompt
        and of the response by the trainer's rule (:func:`trainers.data.truncate_pair`).
        """
        kind, limit = self.identity.kind, self.identity.max_length
        tokenizer = self.loaded.tokenizer
        conversational = bool(responses) and isinstance(responses[0], list)
        if kind == EMBEDDING:
            texts = [_as_text(r, prompt=False) for r in responses]
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
            lead, tail = self.layout["lead"], self.layout["tail"]
            room = max(1, limit - len(lead) - len(tail))
            truncated = np.fromiter((len(i) > room for i in ids), dtype=bool, count=len(ids))
            return Encoded([lead + i[:room] + tail for i in ids], truncated)
        if kind == REFERENCE:
            p_ids, r_ids, _ = encode_responses(
                tokenizer, prompts, responses, conversational=conversational
            )
            return self._join(p_ids, r_ids, [], [], [], limit, scored=True)
        if getattr(tokenizer, "chat_template", None):
            p_ids, r_ids, _ = encode_responses(
                tokenizer,
                [_as_messages(p, "user") for p in prompts],
                [_as_messages(r, "assistant") for r in responses],
                conversational=True,
            )
            return self._join(p_ids, r_ids, [], [], [], limit, scored=False)
        p_texts = [_as_text(p, prompt=True) for p in prompts]
        r_texts = [_as_text(r, prompt=False) for r in responses]
        p_ids = tokenizer(p_texts, add_special_tokens=False)["input_ids"] if p_texts else []
        r_ids = tokenizer(r_texts, add_special_tokens=False)["input_ids"] if r_texts else []
        layout = self.layout
        return self._join(
            p_ids, r_ids, layout["pair_lead"], layout["mid"], layout["pair_tail"], limit,
            scored=False, types=layout["types"],
        )  # fmt: skip

    @staticmethod
    def _join(p_ids, r_ids, lead, mid, tail, limit, *, scored, types=None) -> Encoded:
        room = max(2, limit - len(lead) - len(mid) - len(tail))
        sequences, starts, segments = [], [], []
        truncated = np.zeros(len(p_ids), dtype=bool)
        for i, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
            kept_p, kept_r, _ = truncate_pair(p, r, r, room)
            truncated[i] = len(kept_p) + len(kept_r) < len(p) + len(r)
            first = lead + kept_p + mid
            sequences.append(first + kept_r + tail)
            starts.append(len(first))
            if types is not None:
                segments.append([types[0]] * len(first) + [types[1]] * (len(kept_r) + len(tail)))
        return Encoded(
            sequences,
            truncated,
            scored_from=starts if scored else None,
            token_types=segments if types is not None else None,
        )

    # ------------------------------------------------------------------ run

    @torch.inference_mode()
    def run(self, encoded: Encoded, index: np.ndarray) -> np.ndarray:
        """The numbers of texts ``index`` (one batch), as a float64 array of ``width`` columns."""
        kind = self.identity.kind
        if kind == REFERENCE:
            return self._run_reference(encoded, index)
        pad = self.loaded.tokenizer.pad_token_id or 0
        rows = [encoded.sequences[i] for i in index.tolist()]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        types = torch.zeros((len(rows), width), dtype=torch.int64)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            mask[row, : len(ids)] = 1
            if encoded.token_types is not None:
                types[row, : len(ids)] = torch.as_tensor(encoded.token_types[index[row]])
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.loaded.tokenizer.model_input_names:
            inputs["token_type_ids"] = types
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if kind == REWARD:
            logits = self.loaded.model(**inputs).logits.float()
            return logits[:, :1].double().cpu().numpy()
        hidden = self.loaded.model(**inputs).last_hidden_state.float()
        if self.identity.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1).cpu().numpy().astype(np.float64)

    def _run_reference(self, encoded: Encoded, index: np.ndarray) -> np.ndarray:
        assert self.logps is not None and encoded.scored_from is not None
        prompts = [encoded.sequences[i][: encoded.scored_from[i]] for i in index.tolist()]
        responses = [encoded.sequences[i][encoded.scored_from[i] :] for i in index.tolist()]
        responses_ragged = Ragged.from_lists(responses)
        pairs = TokenizedPairs(
            pair_ids=[""] * len(index),
            prompt=Ragged.from_lists(prompts),
            chosen=responses_ragged,
            rejected=responses_ragged,
            is_dpo=torch.zeros(len(index), dtype=torch.bool),
            truncated=0,
            identical=0,
            chat_template=False,
        )
        pad = self.loaded.tokenizer.pad_token_id
        batch = collate(pairs, torch.arange(len(index)), pad_id=pad).to(self.device)
        summed, count = self.logps(batch.input_ids, batch.attention_mask, batch.response_mask)
        return torch.stack([summed.double(), count.double()], dim=1).cpu().numpy()


def load_scorer(
    identity: ModelIdentity,
    *,
    local_rank: int = 0,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Scorer:
    """Load the model behind ``identity`` for inference (eval mode, bf16 weights when asked)."""
    device = torch.device("cuda", local_rank) if identity.device == "cuda" else torch.device("cpu")
    dtype = torch.bfloat16 if identity.precision == "bf16" else torch.float32
    kind = identity.kind
    fix = f"pass {NEEDS[kind]} to {FLAGS[kind]}"
    if kind == REFERENCE:
        loaded = load_model(
            identity.spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
        )
        loaded.model.to(dtype)
    else:
        auto = AutoModelForSequenceClassification if kind == REWARD else AutoModel
        loaded = load_pretrained(
            Path(identity.spec), auto, trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle, dtype=dtype, what=NEEDS[kind], fix=fix,
        )  # fmt: skip
    if loaded.fingerprint != identity.fingerprint:
        raise InputError("the model changed on disk while it was being scored", where=identity.spec)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if kind == REWARD and loaded.model.config.pad_token_id is None:
        loaded.model.config.pad_token_id = tokenizer.pad_token_id  # where the reward is read
    model = loaded.model.to(device).eval()
    scorer = Scorer(identity, loaded, device, layout=special_layout(tokenizer))
    if kind == REFERENCE:
        scorer.logps = SequenceLogps(model).eval()
        scorer.logps.check_head()
    return scorer
