"""Device and precision choice, and batched prediction: shared by train.py and evaluate.py.

Device and precision are chosen once: `auto` takes cuda, then mps, then cpu; autocast runs fp16
(with a GradScaler in training) on CUDA and bf16 on the CPU, where fp16 matmuls are slow.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a --precision value; None means plain fp32."""
    if precision == "auto":
        return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type)
    return PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device,
                   dtype: torch.dtype | None, channels_last: bool, desc: str, show: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and targets (on the CPU) for every image of a loader, in loader order."""
    model.eval()
    outputs, targets = [], []
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not show):
        with autocast(device, dtype):
            logits = model(to_device(images, device, channels_last))
        outputs.append(logits.float().cpu())
        targets.append(labels)
    logits = torch.cat(outputs)
    if not torch.isfinite(logits).all():
        raise PipelineError("the model produced NaN/inf outputs: its weights are broken "
                            "(diverged training?); use an earlier checkpoint")
    return logits, torch.cat(targets)
