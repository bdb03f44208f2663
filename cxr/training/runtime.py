"""What a run's processes run on: device and precision, the processes of a DDP run, the random
generators, and the stop signals.

Device and precision are chosen once: `auto` takes cuda, then mps, then cpu; autocast runs fp16
(with a GradScaler in training) on CUDA, and on the CPU bf16 where the CPU computes it natively
(AVX512-BF16, AMX or Arm BF16), else fp32: without that support bf16 is emulated and several times
slower than fp32, and fp16 matmuls are slow on every CPU.

Multi-process training is PyTorch's own DistributedDataParallel, launched by torchrun:

    torchrun --standalone --nproc_per_node=N train.py ...          (one machine, N GPUs)

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each process; without them (plain
`python train.py`) every process helper is a no-op for a single process. NCCL joins GPUs, gloo
CPUs. Only rank 0 prints, shows progress bars and writes files.

Randomness: seeds, deterministic kernels, and the random generators' state a checkpoint carries.
Stop signals: a training run stops cleanly on Ctrl-C (SIGINT) or SIGTERM (schedulers, preemption).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import random
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cxr.errors import PipelineError

if TYPE_CHECKING:
    if TYPE_CHECKING:
        from config import Config


# ---- device and precision -----------------------------------------------------------------

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def choose_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; "
                            "use --device auto or --device cpu")
    return torch.device(name)


@functools.cache  # asked by every autocast_dtype call; the CPU does not change
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU, the check PyTorch's own compiler makes.

    Measured on a 2-core AVX2 EPYC without it: DenseNet121 training at 96 px, 2.1 img/s under bf16
    autocast against 21.1 img/s in fp32 (benchmarks/bench_precision.py); with it (AVX512-BF16), bf16 is 3-5x faster than fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: ask about the ISA directly
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a --precision value; None means plain fp32."""
    if precision == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return {"cuda": torch.float16}.get(device.type)
    return PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def prepare_model(model: nn.Module, device: torch.device, cfg: Config) -> nn.Module:
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(images, device: torch.device, channels_last: bool):
    """A batch on the device: a B x 1 x H x W tensor, or a study batch (B x V x 1 x H x W views,
    B x V mask), which the model flattens itself."""
    if isinstance(images, (tuple, list)):
        return tuple(part.to(device, non_blocking=True) for part in images)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


# ---- processes (DDP) ----------------------------------------------------------------------

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


# ---- randomness ---------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def set_deterministic(enabled: bool) -> None:
    """Bitwise-reproducible kernels (--deterministic true), or the fastest ones (cuDNN autotuning)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled


def rng_state() -> dict:
    """This process's random generators as plain types (a checkpoint must load weights_only)."""
    numpy_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                      "pos": numpy_state["state"]["pos"], "has_gauss": numpy_state["has_gauss"],
                      "gauss": numpy_state["gauss"]}}


def restore_rng(state: dict) -> None:
    """Put back the generators rng_state() saved, so a resumed run draws what it would have."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": numpy_state["has_gauss"],
                         "gauss": numpy_state["gauss"],
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32),
                                   "pos": numpy_state["pos"]}})


# ---- stop signals -------------------------------------------------------------------------

class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (schedulers, preemption) ask the run to stop: it finishes the
    optimizer step under way, writes last.pth and exits. A second Ctrl-C stops at once (the
    last checkpoint on disk stays intact)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        tqdm.write(f"train: {signal.Signals(signum).name} received: stopping after this "
                   "optimizer step and saving a checkpoint (Ctrl-C again to stop at once)")


class TrainingStopped(Exception):
    """Raised once last.pth is written after a stop signal; the process exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
