"""Seeds, deterministic kernels, and the random generators' state a checkpoint carries."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


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
