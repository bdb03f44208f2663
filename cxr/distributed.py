"""Multi-process training with PyTorch's own DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc_per_node=N train.py ...          (one machine, N GPUs)

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each process; without them (plain
`python train.py`) everything here is a no-op for a single process. NCCL joins GPUs, gloo CPUs.
Only rank 0 prints, shows progress bars and writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from config import PipelineError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_name: str) -> World:
    """Join the process group torchrun set up, or return the single-process world."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), size)
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        if torch.cuda.device_count() <= world.local_rank:
            raise PipelineError(f"rank {world.rank} wants GPU {world.local_rank} but only "
                                f"{torch.cuda.device_count()} are visible: lower --nproc_per_node")
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """Each process drives its own GPU (cuda:LOCAL_RANK); CPU processes share the CPU."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def any_rank(world: World, flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on every process when it is true on at least one (one all-reduce)."""
    if not world.distributed:
        return flags
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def sum_over_ranks(world: World, values: list[float], device: torch.device) -> list[float]:
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast(world: World, value):
    """Rank 0's `value` (any picklable object) on every process."""
    if not world.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_to_main(world: World, value) -> list | None:
    """Every process's `value` on rank 0, in rank order (None on the other ranks)."""
    if not world.distributed:
        return [value]
    gathered = [None] * world.size if world.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def all_gather(world: World, value) -> list:
    """Every process's `value` on every process, in rank order."""
    if not world.distributed:
        return [value]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def sync_buffers(world: World, model: torch.nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics. DDP broadcasts buffers at the start of
    each training forward pass, but that pass then updates each process's copy with its own
    batch: without this, the processes would validate slightly different models."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def merge_shards(shards: list[tuple[torch.Tensor, ...]], world_size: int) -> tuple[torch.Tensor, ...]:
    """Undo ShardSampler's interleaving: rank r held items r, r + world_size, ..."""
    count = sum(len(shard[0]) for shard in shards)
    merged = []
    for part in range(len(shards[0])):
        out = torch.empty((count, *shards[0][part].shape[1:]), dtype=shards[0][part].dtype)
        for rank, shard in enumerate(shards):
            out[rank::world_size] = shard[part]
        merged.append(out)
    return tuple(merged)
