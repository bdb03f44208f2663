"""Device and precision: chosen once, shared by every script that runs the model.

Device and precision are chosen once: `auto` takes cuda, then mps, then cpu; autocast runs fp16
(with a GradScaler in training) on CUDA, and on the CPU bf16 where the CPU computes it natively
(AVX512-BF16, AMX or Arm BF16), else fp32: without that support bf16 is emulated and several times
slower than fp32, and fp16 matmuls are slow on every CPU.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from config import Config, PipelineError

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
