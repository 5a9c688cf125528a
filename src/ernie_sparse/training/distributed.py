"""Data parallelism through torch.distributed (launched by torchrun), or a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """torchrun's environment -> a process group (gloo on CPU, nccl on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if size == 1:
        return World(device=torch.device("cuda" if cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return World(rank=rank, size=size, device=device)


def close_world() -> None:
    """Tear the process group down before the interpreter exits: a gloo group left to the
    exit handlers can abort a rank ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: float, world: World) -> float:
    if world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return float(tensor) / world.size


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        values = values.to(world.device)
        dist.all_reduce(values)
    return values.cpu()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
