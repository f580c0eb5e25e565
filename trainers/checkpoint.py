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

import contextlib
import json
import os
import random
import re
import shutil
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_model, save_model
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import prefcurate.base.interrupt as interrupt
from prefcurate.base.errors import InputError, one_line
from prefcurate.base.log import get_logger
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
    # registered before it exists: once a signal is ending the process no checkpoint begins,
    # and one in progress is removed, never left half-written
    interrupt.register(tmp)
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
    interrupt.unregister(tmp)
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


class DamagedCheckpointError(InputError):
    """A checkpoint file is truncated or unreadable (the message names it)."""


def newest_intact(run_dir: Path) -> Path:
    """The newest complete checkpoint whose files are whole (:func:`check_intact`).

    A damaged newer one is skipped with one warning naming its file; with none intact, one line
    names the newest damaged file and says how to start over.
    """
    damaged: list[DamagedCheckpointError] = []
    for _, path in sorted(complete_checkpoints(run_dir), reverse=True):
        try:
            check_intact(path)
        except DamagedCheckpointError as exc:
            damaged.append(exc)
            continue
        for exc in damaged:
            get_logger("trainers.checkpoint").warning("%s; resuming from %s", exc, path.name)
        return path
    first = damaged[0] if damaged else None
    raise InputError(
        f"{first.what if first else 'no complete checkpoint'}, and no older checkpoint is intact",
        where=first.where if first else Path(run_dir) / CHECKPOINTS,
        fix="start over with --force (it replaces the run's outputs), or restore the file",
    )


def check_intact(path: Path) -> None:
    """Refuse a checkpoint with a truncated or unreadable file, before anything is loaded.

    Cheap structural checks, not a second read of the weights: state.json parses; a safetensors
    file is exactly as long as its header says; a torch file's zip directory is whole and every
    member lies inside the file; every shard a DCP checkpoint's metadata names is long enough.
    """
    path = Path(path)
    try:
        read_state(path)
    except InputError as exc:
        raise DamagedCheckpointError(
            f"damaged checkpoint file ({exc.what})", where=path / "state.json"
        ) from exc
    if (path / SHARDED).is_dir():
        _check_dcp(path / SHARDED)
    else:
        _check_safetensors(path / "model.safetensors")
        _check_zip(path / "optimizer.pt")
    for name in ("scheduler.pt", *sorted(p.name for p in path.glob("rng-rank*.pt"))):
        _check_zip(path / name)


def _damaged(file: Path, why: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"damaged checkpoint file ({why})", where=file)


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError as exc:
        raise _damaged(file, f"cannot be read: {exc.strerror or exc}") from exc


def _check_zip(file: Path) -> None:
    """A torch.save file: a zip archive whose directory and members are all in the file."""
    size = _size(file)
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _damaged(
            file, "empty" if size == 0 else f"{size:,} bytes, not a whole torch file"
        ) from exc
    for info in members:
        if info.header_offset + 30 + len(info.filename) + info.compress_size > size:
            raise _damaged(file, f"{info.filename} runs past the end of the file")


def _check_safetensors(file: Path) -> None:
    """Exactly 8 + header + data bytes, as its header says."""
    size = _size(file)
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length)) if 0 < length <= size - 8 else None
    except (OSError, ValueError, struct.error) as exc:
        raise _damaged(file, f"{size:,} bytes, no whole header") from exc
    if not isinstance(header, dict):
        raise _damaged(file, f"{size:,} bytes, no whole header")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    needed = 8 + length + max(ends, default=0)
    if size != needed:
        raise _damaged(file, f"{size:,} bytes, its header needs {needed:,}")


def _check_dcp(folder: Path) -> None:
    """Every byte range a DCP checkpoint's .metadata names exists in its shard files."""
    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except Exception as exc:  # noqa: BLE001 - torch raises pickle and OS errors alike
        raise _damaged(folder / ".metadata", one_line(exc, 100)) from exc
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        size = _size(folder / name)
        if size < end:
            raise _damaged(folder / name, f"{size:,} bytes, the checkpoint needs {end:,}")


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
        with _reading(path / SHARDED):
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
        with _reading(path / "model.safetensors"):
            load_model(model, str(path / "model.safetensors"))
        optimizer.load_state_dict(_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_load(path / "scheduler.pt"))
    rng_file = path / f"rng-rank{dist.info().rank}.pt"
    if rng_file.is_file():
        set_rng_states(_load(rng_file))
    return read_state(path)


def _load(file: Path) -> Any:
    with _reading(file):
        return torch.load(file, weights_only=True)


@contextlib.contextmanager
def _reading(file: Path) -> Iterator[None]:
    """A file whose bytes are damaged past what :func:`check_intact` sees is one line naming it."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch, safetensors and DCP raise their own types
        raise _damaged(file, one_line(f"{type(exc).__name__}: {exc}", 160)) from exc


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
