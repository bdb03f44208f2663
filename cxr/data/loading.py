"""DataLoaders of the pipeline's datasets: worker count, worker process group, seeded order,
and the collate function of datasets that stack their own batches."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

if TYPE_CHECKING:
    from config import Config


def keep_batch(batch):
    """collate_fn for CheXpertDataset: __getitems__ already returns the stacked batch."""
    return batch


def default_workers(requested: int) -> int:
    """-1 = one worker per spare core (the main process needs one), between 1 and 8."""
    if requested >= 0:
        return requested
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def own_process_group(_worker_id: int) -> None:
    """Move a DataLoader worker out of the terminal's process group: Ctrl-C (and a SIGTERM sent
    to the whole group) then reaches only the main process, which finishes its optimizer step,
    saves and shuts the workers down itself. Workers keep the default signal handlers, so
    Python's exit can still terminate them."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()


def make_loader(dataset: Dataset, cfg: Config, train: bool, device: torch.device,
                sampler: Sampler | None = None) -> DataLoader:
    """Batches of `dataset`; the order comes from `sampler` when given (train.py passes an
    EpochSampler), else shuffled for training and in file order otherwise."""
    workers = default_workers(cfg.num_workers)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=own_process_group,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=getattr(dataset, "collate_fn", None),  # e.g. keep_batch
    )
