"""The datasets preprocess.py and evaluate.py --dataset read besides CheXpert, by name: each is
cxr/<name>.py with read_<name>(root, **options) -> adapters.Adapted. read_dataset then applies
--label_hierarchy, the rule preprocess.py applies to CheXpert's own labels."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.data.adapters import Adapted, with_hierarchy
from cxr.errors import PipelineError

if TYPE_CHECKING:
    from config import Config

DATASETS = {"nih": "NIH ChestX-ray14", "mimic": "MIMIC-CXR-JPG", "padchest": "PadChest"}
# A reader's keyword options -> the config fields that give them.
READER_OPTIONS: dict[str, dict[str, str]] = {"padchest": {"label_source": "padchest_label_source"}}


def read_dataset(name: str, root: str | Path, cfg: Config) -> Adapted:
    """The dataset `name` unpacked under `root`, in this pipeline's schema, read with its options
    from `cfg` and under cfg.label_hierarchy (only its own module is imported)."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"--data_root {root} is not a folder: point it at the folder "
                            f"{DATASETS[name]} was unpacked into")
    reader = getattr(importlib.import_module(f"cxr.data.{name}"), f"read_{name}")
    options = {keyword: getattr(cfg, field) for keyword, field in
               READER_OPTIONS.get(name, {}).items()}
    return with_hierarchy(reader(root, **options), cfg.label_hierarchy)
