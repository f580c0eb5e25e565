"""The run's final model: full weights gathered from the shards, written in Hugging Face format.

* full fine-tuning: ``RUN_DIR/model/``, ``save_pretrained`` safetensors shards of at most
  ``--max-shard-size``, loadable with ``AutoModelForCausalLM.from_pretrained``;
* LoRA: ``RUN_DIR/adapter/``, loadable with ``peft.PeftModel.from_pretrained`` over the base
  model, and with ``--merge-lora`` also ``RUN_DIR/model/``, the merged model.

Under fsdp every rank takes part in gathering the full state dict (PyTorch's
``get_model_state_dict`` with ``full_state_dict=True``); only rank 0 receives it, on the CPU,
and writes. Each directory is swapped in atomically, so a resumed run that saves again replaces
it whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from prefcurate.base.atomic import atomic_dir
from trainers.lora import LoraSettings, merged_model, save_adapter
from trainers.model import LoadedModel
from trainers.rundir import ADAPTER_DIR, MODEL_DIR

__all__ = ["ADAPTER_DIR", "MODEL_DIR", "full_state_dict", "save_final"]


def full_state_dict(root: nn.Module, model: nn.Module, *, sharded: bool) -> dict[str, torch.Tensor]:
    """``model``'s full weights under its own names (collective under fsdp; empty off rank 0).

    ``root`` is the sharded module that holds ``model`` as its ``model`` attribute.
    """
    if not sharded:
        return model.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(root, options=options)
    return {name.removeprefix("model."): tensor for name, tensor in full.items()}


def save_final(
    policy: LoadedModel,
    out: Path,
    state_dict: dict[str, torch.Tensor],
    *,
    peft_model: Any = None,
    adapter: LoraSettings | None = None,
    merge: bool = False,
    max_shard_size: int | str = "5GB",
) -> None:
    """Write the model (or adapter, or both) from ``state_dict``; rank 0 only."""
    policy.restore_config()
    config = policy.model.config
    config.use_cache = True
    if adapter is not None:
        with atomic_dir(Path(out) / ADAPTER_DIR, force=True) as tmp:
            save_adapter(peft_model, state_dict, tmp)
            policy.tokenizer.save_pretrained(tmp)
        if not merge:
            return
        model = merged_model(state_dict, adapter, config)
    else:
        model = policy.model
    with atomic_dir(Path(out) / MODEL_DIR, force=True) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict if adapter is None else None,
                              max_shard_size=max_shard_size)  # fmt: skip
        policy.tokenizer.save_pretrained(tmp)
