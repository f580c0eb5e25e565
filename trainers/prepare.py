"""The one-off work before the loop: token ids and reference log-probs, both cached on disk.

Under torchrun the tokens are built once per node and read by the other ranks from the cache; the
reference pass is shared out across ranks (:func:`trainers.logps.reference_logps`).

A cached reference is reused only by a run that would compute the same numbers:
:func:`reference_identity` names everything that changes a reference log-prob (the model's
weights, the tokenizer and chat template, the token ids, ``--max-length``, the dtype the model
computes in, the precision and device, the quantization, the attention implementation, packing,
the allowed tokens), and the cache key is its hash. A QLoRA run and a bf16-mixed run of the same
model therefore never share an entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefcurate.base.errors import InputError
from trainers import cache, dist
from trainers.config import TrainConfig
from trainers.data import Ragged, Split, TokenizedPairs, tokenize_split
from trainers.logps import SequenceLogps, reference_logps
from trainers.model import LoadedModel, directory_fingerprint, load_reference
from trainers.strategy import resolve_precision

#: Pairs tokenised at a time, so a long split reports its progress.
TOKENIZE_CHUNK = 512


def tokenized_pairs(
    split: Split,
    loaded: LoadedModel,
    config: TrainConfig,
    *,
    progress: Callable[..., None] | None = None,
) -> TokenizedPairs:
    """Tokenise the split once; later runs and other ranks read the token cache.

    ``progress(n, total=…)`` hears of the pairs as they are tokenised (a cache hit is instant).
    """
    key = cache.cache_key(
        split=split.sha256,
        tokenizer=cache.tokenizer_fingerprint(loaded.tokenizer),
        max_length=config.max_length,
    )
    hit = cache.load(config.cache_dir, "tokens", key)
    if hit is None and dist.launched().local_rank == 0:
        pairs = tokenize_in_chunks(split, loaded, config.max_length, progress=progress)
        meta = {
            "pair_ids": pairs.pair_ids,
            "truncated": pairs.truncated,
            "identical": pairs.identical,
            "chat_template": pairs.chat_template,
        }
        cache.save(config.cache_dir, "tokens", key, pairs.to_tensors(), meta)
        hit = (pairs.to_tensors(), meta)
    dist.barrier()
    if hit is None:
        hit = cache.load(config.cache_dir, "tokens", key)
    if hit is None:
        raise InputError(
            "the token cache is not shared between ranks",
            where=config.cache_dir,
            fix="pass a --cache-dir that every process can read",
        )
    return TokenizedPairs.from_tensors(*hit)


def tokenize_in_chunks(
    split: Split,
    loaded: LoadedModel,
    max_length: int,
    *,
    progress: Callable[..., None] | None = None,
    chunk: int = TOKENIZE_CHUNK,
) -> TokenizedPairs:
    """:func:`trainers.data.tokenize_split` over ``chunk`` pairs at a time, joined: the same
    tokens (every pair is tokenised on its own), with progress between chunks."""
    n = split.frame.height
    if progress is not None:
        progress(0, total=n)
    parts = []
    for start in range(0, n, chunk):
        part = dataclasses.replace(split, frame=split.frame.slice(start, chunk))
        parts.append(tokenize_split(part, loaded.tokenizer, max_length=max_length))
        if progress is not None:
            progress(part.frame.height)
    return _joined(parts)


def _joined(parts: list[TokenizedPairs]) -> TokenizedPairs:
    if len(parts) == 1:
        return parts[0]

    def ragged(name: str) -> Ragged:
        pieces = [getattr(p, name) for p in parts]
        starts = torch.cumsum(torch.tensor([0] + [r.values.numel() for r in pieces[:-1]]), 0)
        offsets = [r.offsets[:-1] + s for r, s in zip(pieces, starts, strict=True)]
        total = torch.tensor([sum(r.values.numel() for r in pieces)])
        return Ragged(torch.cat([r.values for r in pieces]), torch.cat([*offsets, total]))

    return TokenizedPairs(
        pair_ids=[i for p in parts for i in p.pair_ids],
        prompt=ragged("prompt"),
        chosen=ragged("chosen"),
        rejected=ragged("rejected"),
        is_dpo=torch.cat([p.is_dpo for p in parts]),
        sft_mix=torch.cat([p.sft_mix for p in parts]),
        truncated=sum(p.truncated for p in parts),
        identical=sum(p.identical for p in parts),
        chat_template=parts[0].chat_template,
    )


def reference_identity(
    pairs: TokenizedPairs,
    model: nn.Module | None,
    tokenizer: Any,
    config: TrainConfig,
    device: torch.device,
    *,
    fingerprint: str,
    only: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Everything a reference log-prob depends on, for ``model`` scoring ``pairs``.

    ``fingerprint`` is the weights' (the reference model's directory, or the policy's initial
    weights). The dtype, quantization and attention are read from ``model`` as loaded; ``None``
    is a ``--ref-model`` not loaded yet, which :func:`load_reference` always loads the same way
    (:data:`SEPARATE_REFERENCE`).
    """
    if model is None:
        loaded = dict(SEPARATE_REFERENCE)
    else:
        quantization = getattr(model.config, "quantization_config", None)
        loaded = {
            "dtype": str(next(model.parameters()).dtype),
            "quantization": quantization.to_dict()
            if hasattr(quantization, "to_dict")
            else quantization,
            "attention": getattr(model.config, "_attn_implementation", None),
        }
    template = getattr(tokenizer, "chat_template", None)
    identity = {
        "model": fingerprint,
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
        "chat_template": hashlib.sha256(str(template).encode()).hexdigest()
        if pairs.chat_template
        else None,
        "tokens": pairs.digest(),
        "max_length": config.max_length,
        **loaded,
        "precision": f"{device.type}:{resolve_precision(config.precision, device)}",
        "packed": config.packed,
        "allowed": config.allowed_token_ids,
    }
    if only is not None:
        identity["only"] = cache.cache_key(pairs=only.tolist())
    return identity


#: How :func:`trainers.model.load_reference` loads a ``--ref-model``: in fp32, unquantized, with
#: transformers' default attention (autocast sets the compute dtype, which ``precision`` keys).
SEPARATE_REFERENCE = {"dtype": "torch.float32", "quantization": None, "attention": "default"}


def _reference_module(
    ref_path: Path | None,
    policy: LoadedModel,
    config: TrainConfig,
    device: torch.device,
    module: SequenceLogps | None,
    shard: Callable[[nn.Module, nn.Module], nn.Module] | None,
) -> tuple[SequenceLogps, LoadedModel | None]:
    """The module that scores the reference: ``--ref-model`` loaded (and sharded like the
    policy), else the policy's own; returns the loaded reference too, so the caller frees it."""
    if ref_path is None:
        if module is None:
            module = SequenceLogps(policy.model, allowed_token_ids=config.allowed_token_ids)
        return module, None
    ref = load_reference(
        str(ref_path),
        policy,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    model = ref.model.to(device)
    module = SequenceLogps(model, allowed_token_ids=config.allowed_token_ids, packed=config.packed)
    if shard is not None:
        module = shard(model, module)
    return module, ref


def reference_for(
    pairs: TokenizedPairs,
    policy: LoadedModel,
    config: TrainConfig,
    device: torch.device,
    autocast: Callable[[], Any],
    *,
    only: torch.Tensor | None = None,
    module: SequenceLogps | None = None,
    shard: Callable[[nn.Module, nn.Module], nn.Module] | None = None,
    progress: Callable[..., None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of the dpo pairs: from the cache, else one pass then freed.

    ``only``: the pairs a ``--max-steps`` run will reach; a quick five-step try on a large split
    scores those, not the whole split (they are cached under their own key). ``module`` is the
    policy's log-prob module (sharded or not), used when the reference is the initial policy;
    ``shard(model, root)`` shards a ``--ref-model`` the same way under fsdp. ``progress(n,
    total=…)`` hears of this rank's pairs as they are scored.
    """
    ref_path = Path(config.ref_model) if config.ref_model else None
    if ref_path is not None:
        scorer, fingerprint = None, directory_fingerprint(ref_path)
    else:
        scorer = module.model if module is not None else policy.model
        fingerprint = policy.fingerprint
    identity = reference_identity(
        pairs, scorer, policy.tokenizer, config, device, fingerprint=fingerprint, only=only
    )
    key = cache.cache_key(**identity)
    hit = cache.load(config.cache_dir, "reference", key)
    hits = dist.sum_(torch.tensor([int(hit is not None)], device=dist.collective_device()))
    if int(hits) == dist.info().world_size:
        return hit[0]["chosen"], hit[0]["rejected"]
    module, ref = _reference_module(ref_path, policy, config, device, module, shard)
    chosen, rejected = reference_logps(
        module,
        pairs,
        batch_size=2 * config.batch_size,
        device=device,
        autocast=autocast(),
        pad_id=policy.tokenizer.pad_token_id,
        only=only,
        lockstep=shard is not None,
        progress=progress,
    )
    del module, ref  # the reference model is freed before training starts
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if dist.info().main:
        cache.save(
            config.cache_dir,
            "reference",
            key,
            {"chosen": chosen, "rejected": rejected},
            {"model": fingerprint, "identity": identity},
        )
    return chosen, rejected
