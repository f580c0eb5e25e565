"""The one-off work before the loop: token ids and reference log-probs, both cached on disk.

Under torchrun the tokens are built once per node and read by the other ranks from the cache; the
reference pass is shared out across ranks (:func:`trainers.logps.reference_logps`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefcurate.base.errors import InputError
from trainers import cache, dist
from trainers.config import TrainConfig
from trainers.data import Split, TokenizedPairs, tokenize_split
from trainers.logps import SequenceLogps, reference_logps
from trainers.model import LoadedModel, directory_fingerprint, load_reference


def tokenized_pairs(split: Split, loaded: LoadedModel, config: TrainConfig) -> TokenizedPairs:
    """Tokenise the split once; later runs and other ranks read the token cache."""
    key = cache.cache_key(
        split=split.sha256,
        tokenizer=cache.tokenizer_fingerprint(loaded.tokenizer),
        max_length=config.max_length,
    )
    hit = cache.load(config.cache_dir, "tokens", key)
    if hit is None and dist.launched().local_rank == 0:
        pairs = tokenize_split(split, loaded.tokenizer, max_length=config.max_length)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of the dpo pairs: from the cache, else one pass then freed.

    ``only``: the pairs a ``--max-steps`` run will reach; a quick five-step try on a large split
    scores those, not the whole split (they are cached under their own key). ``module`` is the
    policy's log-prob module (sharded or not), used when the reference is the initial policy;
    ``shard(model, root)`` shards a ``--ref-model`` the same way under fsdp.
    """
    ref_path = Path(config.ref_model) if config.ref_model else None
    ref_fingerprint = directory_fingerprint(ref_path) if ref_path else policy.fingerprint
    key = cache.cache_key(
        model=ref_fingerprint,
        tokens=pairs.digest(),
        max_length=config.max_length,
        precision=f"{device.type}:{config.precision}",
        dtype=str(next(policy.model.parameters()).dtype),
        packed=config.packed,
        **({"allowed": config.allowed_token_ids} if config.allowed_token_ids else {}),
        **({"only": cache.cache_key(pairs=only.tolist())} if only is not None else {}),
    )
    hit = cache.load(config.cache_dir, "reference", key)
    hits = dist.sum_(torch.tensor([int(hit is not None)], device=dist.collective_device()))
    if int(hits) == dist.info().world_size:
        return hit[0]["chosen"], hit[0]["rejected"]
    ref = None
    if ref_path is not None:
        ref = load_reference(
            str(ref_path),
            policy,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
        )
    if ref is not None:
        model = ref.model.to(device)
        module = SequenceLogps(
            model, allowed_token_ids=config.allowed_token_ids, packed=config.packed
        )
        if shard is not None:
            module = shard(model, module)
    elif module is None:
        model = policy.model
        module = SequenceLogps(model, allowed_token_ids=config.allowed_token_ids)
    else:
        model = module.model
    chosen, rejected = reference_logps(
        module,
        pairs,
        batch_size=2 * config.batch_size,
        device=device,
        autocast=autocast(),
        pad_id=policy.tokenizer.pad_token_id,
        only=only,
        lockstep=shard is not None,
    )
    del module, model, ref  # the reference model is freed before training starts
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if dist.info().main:
        cache.save(
            config.cache_dir,
            "reference",
            key,
            {"chosen": chosen, "rejected": rejected},
            {"model": ref_fingerprint},
        )
    return chosen, rejected
