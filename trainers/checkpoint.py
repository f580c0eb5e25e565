"""Atomic training checkpoints: ``RUN_DIR/checkpoints/step-N/``.

A checkpoint holds everything a resumed run needs to continue bit for bit: the weights, the
optimizer and scheduler states, every rank's RNG states, and ``state.json`` (the step, the data
position and the run's configuration). Two formats, one per strategy:

* replicated (ddp, one process): rank 0 writes ``model.safetensors`` and ``optimizer.pt``;
* sharded (fsdp): every rank writes its own shards through PyTorch's Distributed Checkpoint
  (DCP) into ``dcp/``. DCP records where each shard belongs, so a run may resume on another
  number of processes (it reshards on load), or on one process without FSDP.

Either way the checkpoint is written into a temporary directory that is renamed into place only
when complete (``os.replace`` is atomic), so a run killed at any moment leaves either the whole
checkpoint or none of it; ``keep`` (``--save-total-limit``) then deletes the oldest beyond the
newest N. Tensors are loaded back with ``weights_only=True``: a checkpoint cannot run code.
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
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_model, save_model
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from prefcurate.base.errors import InputError
from trainers import dist
from trainers.dist import initialized as dist_initialized

CHECKPOINTS = "checkpoints"
#: The sub-directory of a sharded (DCP) checkpoint.
SHARDED = "dcp"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    root: nn.Module | None = None,
    sharded: bool = False,
    keep: int = 0,
) -> Path:
    """Write ``step-{step}`` atomically (collective: every rank must call it).

    ``model`` is the language model the optimizer trains; with ``sharded``, ``root`` (the
    FSDP2 root module that holds it) and the optimizer are written shard by shard through DCP.
    ``keep`` > 0 keeps only the newest ``keep`` checkpoints.
    """
    info = dist.info()
    checkpoints = Path(run_dir) / CHECKPOINTS
    final = checkpoints / f"step-{step}"
    tmp = checkpoints / f".step-{step}.tmp"
    if info.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    torch.save(rng_states(), tmp / f"rng-rank{info.rank}.pt")
    if sharded:
        model_state, optim_state = get_state_dict(root or model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDED)
    elif info.main:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if info.main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    dist.barrier()
    if info.main:
        payload = {**state, "step": step, "format": SHARDED if sharded else "safetensors"}
        (tmp / "state.json").write_text(json.dumps(payload, indent=2))
        if final.exists():  # a rerun reaching the same step replaces it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep:
            prune(run_dir, keep)
    dist.barrier()
    return final


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; return the deleted ones."""
    steps = sorted(complete_checkpoints(run_dir))
    doomed = [path for _, path in steps[:-keep]] if keep else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint of a run, in no particular order."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return [
        (int(m.group(1)), path)
        for path in root.iterdir()
        if (m := _STEP_DIR.match(path.name)) and (path / "state.json").is_file()
    ]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    complete = complete_checkpoints(run_dir)
    return max(complete)[1] if complete else None


def remove_partial(run_dir: Path) -> None:
    """Delete temporary directories left by a run killed while checkpointing."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.glob(".step-*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's state.json; a broken one is exit 2 naming it."""
    path = Path(checkpoint) / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read the checkpoint state ({exc})",
            where=path,
            fix="remove this checkpoint folder to resume from an older one",
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise InputError("the checkpoint state has no step", where=path)
    return state


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    root: nn.Module | None = None,
    sharded: bool = False,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG states; return ``state.json``.

    A sharded checkpoint loads into ``root`` at any world size, sharded or not (``root`` must
    hold ``model`` the way the saving run's did); a replicated one only into an unsharded model.
    """
    path = Path(path)
    if (path / SHARDED).is_dir():
        model_state, optim_state = get_state_dict(root or model, optimizer)
        loaded = {"model": model_state, "optimizer": optim_state}
        dcp.load(loaded, checkpoint_id=path / SHARDED, no_dist=not dist_initialized())
        set_state_dict(
            root or model,
            optimizer,
            model_state_dict=loaded["model"],
            optim_state_dict=loaded["optimizer"],
        )
    elif sharded:
        raise InputError(
            "this checkpoint was written unsharded (--strategy ddp) and cannot be loaded into "
            "FSDP shards",
            where=path,
            fix="resume with --strategy ddp",
        )
    else:
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
