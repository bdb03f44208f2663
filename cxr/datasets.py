"""The datasets preprocess.py and evaluate.py --dataset read besides CheXpert, by name: each is
cxr/<name>.py with read_<name>(root) -> adapters.Adapted."""

from __future__ import annotations

import importlib
from pathlib import Path

from config import PipelineError
from cxr.adapters import Adapted

DATASETS = {"nih": "NIH ChestX-ray14", "mimic": "MIMIC-CXR-JPG", "padchest": "PadChest"}


def read_dataset(name: str, root: str | Path) -> Adapted:
    """The dataset `name` unpacked under `root`, in this pipeline's schema (only its own module
    is imported)."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"--data_root {root} is not a folder: point it at the folder "
                            f"{DATASETS[name]} was unpacked into")
    reader = getattr(importlib.import_module(f"cxr.{name}"), f"read_{name}")
    return reader(root)
