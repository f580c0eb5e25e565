"""Atomic training checkpoints: ``RUN_DIR/checkpoints/step-N/``.

A checkpoint holds everything a resumed run needs to continue bit for bit: the weights
(``model.safetensors``), the optimizer and scheduler states, every rank's RNG states, and
``state.json`` (the step, the data position and the run's configuration). It is written into a
temporary directory that is renamed into place only when complete (``os.replace`` is atomic), so
a run killed at any moment leaves either the whole checkpoint or none of it. Tensors are loaded
back with ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from trainers import dist

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> Path:
    """Write ``step-{step}`` atomically (collective: every rank must call it)."""
    info = dist.info()
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    if info.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    torch.save(rng_states(), tmp / f"rng-rank{info.rank}.pt")
    if info.main:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    dist.barrier()
    if info.main:
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        if final.exists():  # a rerun reaching the same step replaces it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    complete = [
        (int(m.group(1)), path)
        for path in root.iterdir()
        if (m := _STEP_DIR.match(path.name)) and (path / "state.json").is_file()
    ]
    return max(complete)[1] if complete else None


def remove_partial(run_dir: Path) -> None:
    """Delete temporary directories left by a run killed while checkpointing."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.glob(".step-*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "state.json").read_text())


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG states; return ``state.json``."""
    path = Path(path)
    load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{dist.info().rank}.pt"
    if rng_file.is_file():
        set_rng_states(torch.load(rng_file, weights_only=True))
    return read_state(path)


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, in weights_only-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
