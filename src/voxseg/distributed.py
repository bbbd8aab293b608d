"""torch.distributed set-up for `torchrun --nproc_per_node=K -m voxseg train|predict ...`.

torchrun's own protocol (RANK, WORLD_SIZE, LOCAL_RANK in the environment) is the one place voxseg
reads environment variables: that is how torchrun hands each process its identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, array: np.ndarray) -> np.ndarray:
        """Sum a small numpy array over ranks (float64, on the CPU side of the process group)."""
        if self.world_size == 1:
            return array
        t = torch.as_tensor(np.asarray(array, dtype=np.float64))
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().numpy()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj` (a small picklable object), on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size  # filled with every rank's object
        dist.all_gather_object(out, obj)
        return out


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process (usable before or after the process group)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun prepared; a single process gets DistInfo() untouched."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
