"""Images and labels for training and evaluation: robust image reading, transforms, loaders.

Every image becomes a 3 x image_size x image_size float tensor normalised with the dataset's
pixel mean/std (grayscale replicated to 3 channels, as ImageNet-pretrained backbones expect).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from config import LABELS, Config, PipelineError
from imaging import read_grayscale, resize_square

# ---- transforms and dataset ---------------------------------------------------------------------

def _gray_to_three_channels(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1)  # module-level, so "spawn" DataLoader workers can pickle it


def build_transform(mean: float, std: float, augment: bool) -> v2.Compose:
    """uint8 1 x H x W tensor -> normalised float 3 x H x W tensor.

    Augmentation is a small random affine only. No horizontal flip: the heart sits on the
    patient's left, and Cardiomegaly and device findings depend on that side.
    """
    steps = []
    if augment:
        steps.append(v2.RandomAffine(degrees=7, translate=(0.04, 0.04), scale=(0.95, 1.05)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std]),
              v2.Lambda(_gray_to_three_channels)]
    return v2.Compose(steps)


class CheXpertDataset(Dataset):
    """Rows of a processed/split CSV: `image_path` plus the 14 label columns as 0/1 targets."""

    def __init__(self, frame: pd.DataFrame, image_size: int, mean: float, std: float,
                 augment: bool, labels: tuple[str, ...] = LABELS):
        self.paths = frame["image_path"].tolist()
        self.targets = torch.tensor(frame[list(labels)].to_numpy(dtype=np.float32))
        self.image_size = image_size
        self.transform = build_transform(mean, std, augment)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_grayscale(self.paths[index], size_hint=self.image_size)
        image = torch.from_numpy(resize_square(image, self.image_size))[None]
        return self.transform(image), self.targets[index]


# ---- split files and loaders ----------------------------------------------------------------------

def read_split(path: Path, labels: tuple[str, ...] = LABELS) -> pd.DataFrame:
    """A split CSV written by make_splits.py, checked for the columns training needs."""
    if not path.is_file():
        raise PipelineError(f"{path} not found: run preprocess.py and make_splits.py first "
                            "(with the same --data_dir)")
    frame = pd.read_csv(path)
    missing = [c for c in ("image_path", "patient_id", *labels) if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path} lacks column(s) {missing}: re-run preprocess.py and "
                            "make_splits.py with this version of the code")
    not_binary = ~frame[list(labels)].isin([0, 1]).all()
    if not_binary.any():
        raise PipelineError(f"{path}: label column(s) {list(not_binary[not_binary].index)} hold "
                            "values other than 0/1; re-run preprocess.py")
    if frame.empty:
        raise PipelineError(f"{path} has no rows")
    return frame


def default_workers(requested: int) -> int:
    """-1 = one worker per spare core (the main process needs one), between 1 and 8."""
    if requested >= 0:
        return requested
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def make_loader(dataset: Dataset, cfg: Config, train: bool, device: torch.device) -> DataLoader:
    workers = default_workers(cfg.num_workers)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
