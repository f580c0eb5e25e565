"""Where a run computes: ``--device`` resolved (the precision is trainers.strategy's)."""

from __future__ import annotations

import torch

from prefcurate.base.errors import InputError


def resolve_device(requested: str) -> torch.device:
    """``auto`` → CUDA if present else CPU; ``cuda`` without CUDA is the user's error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was given but CUDA is not available", fix="use --device cpu or auto"
        )
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)
