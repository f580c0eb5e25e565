"""torch.distributed in the few words the trainer needs; a no-op in a single process.

``torchrun --nproc_per_node=N -m prefcurate train …`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` then joins the process group (gloo on CPU, nccl on CUDA). Without them every helper
here does nothing, so the loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor

from prefcurate.base.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> DistInfo:
    """The rank layout torchrun announced in the environment (rank 0 of 1 when not launched)."""
    info = DistInfo(
        rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1),
        local_rank=_env_int("LOCAL_RANK", 0),
    )  # fmt: skip
    if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
        raise InputError(
            f"RANK={info.rank}, WORLD_SIZE={info.world_size}, LOCAL_RANK={info.local_rank} is "
            "not a process layout",
            fix="launch with torchrun, which sets them, or unset them to run one process",
        )
    return info


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"{name} must be a whole number, got {text!r}",
            fix="launch with torchrun, which sets it, or unset it to run one process",
        ) from None


def setup(device_type: str) -> DistInfo:
    """Join the process group when launched with more than one process."""
    layout = launched()
    if layout.world_size > 1 and not tdist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(layout.local_rank)
        tdist.init_process_group(backend=backend)
    return layout


def single_process_group(device_type: str) -> None:
    """A 1-rank process group, so that FSDP2 and DCP run the same code in a single process."""
    if not tdist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, store=tdist.HashStore(), rank=0, world_size=1)


def info() -> DistInfo:
    if not tdist.is_initialized():
        return DistInfo()
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), launched().local_rank)


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()


def sum_(tensor: Tensor) -> Tensor:
    """Element-wise sum over ranks (in place, returned for chaining)."""
    if tdist.is_initialized():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def max_(tensor: Tensor) -> Tensor:
    """Element-wise maximum over ranks (in place, returned for chaining)."""
    if tdist.is_initialized():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
    return tensor


def merge_shares(values: Tensor) -> Tensor:
    """Combine per-rank tensors that are NaN except on each rank's own share."""
    known = ~values.isnan()
    device = collective_device()
    total = sum_(torch.where(known, values, 0.0).to(device)).cpu()
    count = sum_(known.to(torch.int32).to(device)).cpu()
    return torch.where(count > 0, total, float("nan"))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not tdist.is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def collective_device() -> torch.device:
    """Where tensors must live for collectives: the GPU under nccl, else the CPU."""
    if tdist.is_initialized() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def initialized() -> bool:
    return tdist.is_initialized()
