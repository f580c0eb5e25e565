"""How the policy is spread over processes: replicated (DDP) or sharded (FSDP2), and in what dtype.

Both strategies are PyTorch's own engines; this module only decides how to apply them.

* ``ddp`` keeps a whole copy of the weights, gradients and AdamW state on every rank
  (:class:`torch.nn.parallel.DistributedDataParallel`); a single process needs no wrapper.
* ``fsdp`` shards them (:func:`torch.distributed.fsdp.fully_shard`, FSDP2): each decoder layer is
  one unit, gathered just before its forward and backward and freed after, and the root unit
  (:class:`trainers.logps.SequenceLogps`, whose forward is the whole differentiable path) holds the
  embeddings, the final norm and the output head. A single process gets a 1-rank process group so
  the same code runs (and resumes a sharded checkpoint) alone.

Precision (``--precision``):

* ``fp32``: everything in float32 (the CPU default);
* ``bf16-mixed``: float32 master weights and optimizer state; compute in bfloat16 (autocast under
  ddp, FSDP2's :class:`~torch.distributed.fsdp.MixedPrecisionPolicy` under fsdp, which also keeps
  gradient reductions in float32);
* ``bf16``: weights, gradients and AdamW state in bfloat16 (half the memory); the optimizer is
  torchao's AdamW with stochastic rounding (:mod:`trainers.optim`), so updates far below a
  weight's bfloat16 spacing still move it on average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.nn.parallel import DistributedDataParallel

from prefcurate.base.errors import InputError
from trainers.config import PRECISIONS, STRATEGIES

__all__ = ["PRECISIONS", "STRATEGIES", "autocast_for", "resolve_precision", "wrap"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16-mixed`` on CUDA, ``fp32`` on the CPU; the others as given."""
    if precision == "auto":
        return "bf16-mixed" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(strategy: str, precision: str, device: torch.device) -> Callable[[], Any]:
    """The context each forward runs in: bf16 autocast for ddp's bf16-mixed, else nothing.

    Under fsdp the mixed-precision policy casts the gathered weights itself, so no autocast.
    """
    if precision == "bf16-mixed" and strategy == "ddp":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: the classes transformers lists in ``_no_split_modules``.

    These are the units FSDP gathers one at a time (and activation checkpointing recomputes).
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise InputError(
            f"{type(model).__name__} does not name its decoder layers (_no_split_modules)",
            fix="use --strategy ddp for this architecture",
        )
    return layers


def shard(module: nn.Module, model: nn.Module, *, precision: str, offload: bool) -> nn.Module:
    """Apply FSDP2 to ``module`` (the root) and to each decoder layer of ``model`` inside it."""
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16-mixed"
        else MixedPrecisionPolicy()
    )
    kwargs: dict[str, Any] = {
        "mp_policy": mp,
        "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy(),
    }
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(module, **kwargs)
    return module


def wrap(
    module: nn.Module,
    model: nn.Module,
    *,
    strategy: str,
    world_size: int,
    precision: str,
    offload: bool = False,
) -> nn.Module:
    """The module the loop calls: FSDP2-sharded, DDP-wrapped (several processes), or as is."""
    if strategy == "fsdp":
        return shard(module, model, precision=precision, offload=offload)
    if world_size > 1:
        # gradients are views into DDP's all-reduce buckets, not a second copy beside them
        return DistributedDataParallel(module, gradient_as_bucket_view=True)
    return module


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def gradient_sync(module: nn.Module, *, enabled: bool) -> contextlib.AbstractContextManager:
    """Under ddp, skip the all-reduce on all but the last micro-batch of an accumulated step.

    Under fsdp every micro-batch reduce-scatters: skipping it would keep each layer's full
    unsharded gradient until the last micro-batch (the whole model's gradient in fp32 per rank,
    as much as ddp), while reducing every time keeps only the shard.
    """
    if isinstance(module, DistributedDataParallel) and not enabled:
        return module.no_sync()
    return contextlib.nullcontext()


def keeps_gradients(module: nn.Module) -> bool:
    """Whether the gradients stay allocated between steps (``zero_grad(set_to_none=False)``).

    DDP's gradients are views into its bucket buffers (``gradient_as_bucket_view``), which live
    as long as the wrapper: zeroing them in place lets every micro-batch accumulate into the
    buckets; setting them to None would free nothing and make the next backward allocate a
    second copy beside the buckets.
    """
    return isinstance(module, DistributedDataParallel)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (e.g. FSDP's gradient norm); a plain tensor as is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
