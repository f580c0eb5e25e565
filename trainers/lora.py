"""LoRA and QLoRA adapters through PEFT: only the adapter trains, the base model is the reference.

With ``--lora-r R`` the policy becomes a :class:`peft.PeftModel`: every targeted linear layer
``W`` gains a trainable low-rank update ``(alpha / r) · B A`` (``B`` starts at zero, so the first
step sees exactly the base model) and every base weight is frozen. The reference needs no second
copy: it is the same model with the adapter disabled (:func:`reference_mode`), scored once before
training like any reference. ``--load-in-4bit`` (QLoRA) stores the frozen base in 4-bit NF4
through bitsandbytes, which needs CUDA.

At the end the run saves the adapter (loadable with ``peft.PeftModel.from_pretrained``) and, with
``--merge-lora``, the merged model (``W + (alpha / r) · B A``) in Hugging Face format.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefcurate.base.errors import InputError

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraSettings:
    """``--lora-r``, ``--lora-alpha``, ``--lora-dropout``, ``--lora-target``, ``--load-in-4bit``."""

    r: int
    alpha: float = 16.0
    dropout: float = 0.0
    target: str = ALL_LINEAR  # all-linear, or comma-separated module names (q_proj,v_proj)
    load_in_4bit: bool = False

    def target_modules(self) -> str | list[str]:
        if self.target == ALL_LINEAR:
            return ALL_LINEAR
        return [name.strip() for name in self.target.split(",") if name.strip()]

    def validate(self) -> None:
        if self.r < 1:
            raise InputError(f"--lora-r {self.r} is out of range", fix="use a rank of 1 or more")
        if self.alpha <= 0:
            raise InputError(f"--lora-alpha {self.alpha} is out of range", fix="use alpha > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"--lora-dropout {self.dropout} is out of range", fix="use [0, 1)")
        if not self.target_modules():
            raise InputError("--lora-target is empty", fix="use all-linear or module names")


def check_4bit(device: torch.device) -> None:
    """QLoRA's 4-bit base needs CUDA and bitsandbytes; say so before anything loads."""
    if device.type != "cuda":
        raise InputError(
            "--load-in-4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels)",
            fix="train on a GPU, or drop --load-in-4bit (LoRA alone runs on the CPU)",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError(
            "--load-in-4bit needs the bitsandbytes package", fix="pip install bitsandbytes"
        )


def quantization_config() -> Any:
    """NF4 with double quantisation and bf16 compute, the QLoRA paper's settings."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def apply_lora(model: nn.Module, settings: LoraSettings, *, checkpointing: bool = False) -> Any:
    """Freeze ``model`` and add the adapter; returns the :class:`peft.PeftModel`."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules(),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise InputError(
            f"--lora-target {settings.target!r} matches no layer of the model ({exc})",
            fix="use all-linear or names of linear layers such as q_proj,v_proj",
        ) from exc


def language_model(peft_model: Any) -> nn.Module:
    """The transformers model inside the adapter wrapper, its linear layers now LoRA layers."""
    return peft_model.get_base_model()


def reference_mode(peft_model: Any | None) -> contextlib.AbstractContextManager:
    """The base model, adapter off: LoRA's reference, without a second copy of the weights."""
    if peft_model is None:
        return contextlib.nullcontext()
    return peft_model.disable_adapter()


def save_adapter(peft_model: Any, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
    """Write the adapter from ``state_dict`` (the language model's names, full tensors)."""
    full = {f"base_model.model.{name}": tensor for name, tensor in state_dict.items()}
    peft_model.save_pretrained(directory, state_dict=full)


def merged_model(state_dict: dict[str, torch.Tensor], settings: LoraSettings, config: Any) -> Any:
    """A plain transformers model with the adapter merged in, by PEFT, on the CPU.

    Rebuilds the adapter model on a fresh copy of the architecture, loads ``state_dict`` (the
    trained language model's weights with their LoRA layers) and lets PEFT's
    ``merge_and_unload`` fold each ``(alpha / r) · B A`` into its base weight.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    base = base.to_empty(device="cpu")  # every saved tensor is overwritten below
    peft_model = apply_lora(base, LoraSettings(settings.r, settings.alpha, 0.0, settings.target))
    dtype = next(t.dtype for n, t in state_dict.items() if "lora_" not in n)
    peft_model.get_base_model().load_state_dict(state_dict, strict=True)
    return peft_model.merge_and_unload().to(dtype)
