"""Where a run computes and in what precision: ``--device`` and ``--precision`` resolved."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from prefcurate.errors import InputError


def resolve_device(requested: str) -> torch.device:
    """``auto`` → CUDA if present else CPU; ``cuda`` without CUDA is the user's error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was given but CUDA is not available", fix="use --device cpu or auto"
        )
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def autocast_factory(device: torch.device, precision: str) -> Callable[[], Any]:
    """bf16 autocast (fp32 master weights) on CUDA by default; plain fp32 on the CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
