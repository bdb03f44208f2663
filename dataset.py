"""Images and labels for training and evaluation: datasets, samplers, split files, loaders.

Every image becomes a uint8 1 x image_size x image_size tensor; the model normalises it with
the training pixel mean/std and copies it to 3 channels on the device (model_architecture.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from config import DATA_FIELDS, Config
from cxr.data.augment import centre_view, random_view
from cxr.data.image_cache import ImageCache, drop_unreadable, open_cache
from cxr.data.imaging import decode_square
from cxr.data.labels import LABELS, evaluation_targets, training_targets
from cxr.data.loading import keep_batch
from cxr.errors import ConfigError

# ---- dataset ------------------------------------------------------------------------------------

def batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 batch; in a DataLoader worker, allocated in shared memory right away (as
    torch's default_collate does), so sending it to the main process copies nothing."""
    batch = torch.empty(shape, dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        batch.share_memory_()
    return batch


class CheXpertDataset(Dataset):
    """Rows of a processed/split CSV: `image_path` plus targets (default: the label columns,
    each row's reference standard, blank masked).

    An item is (uint8 1 x image_size x image_size tensor, float targets); a target of NaN is a
    masked label that the loss ignores. Items are asked for by index, or by the
    (index, epoch, real) triples of EpochSampler: then the augmentation of an image comes from
    (seed, epoch, index) alone, the same in any worker and after a resume, and real=False (the
    padding of a distributed epoch) masks all of the item's labels. Pixels stay 8-bit until
    they reach the device, where the model normalises them: a batch crosses from the workers
    in a twelfth of the bytes of normalised 3-channel float32. Each image starts as the
    side x side square from the cache when one is given, else decoded and resized the same way
    (imaging.decode_square), so both give identical tensors.
    """
    collate_fn = staticmethod(keep_batch)  # __getitems__ returns the stacked batch

    def __init__(self, frame: pd.DataFrame, image_size: int, side: int, augment: bool,
                 labels: tuple[str, ...] = LABELS, cache: ImageCache | None = None,
                 seed: int = 0, targets: np.ndarray | None = None):
        self.paths = frame["image_path"].tolist()
        if targets is None:  # the label columns: the reference standard, blank masked
            targets = frame[list(labels)].to_numpy(dtype=np.float32)
        self.targets = torch.tensor(targets)
        self.image_size, self.side, self.augment, self.cache = image_size, side, augment, cache
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def square(self, index: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache.image(self.paths[index])
        return decode_square(self.paths[index], self.side)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = self.__getitems__([index])
        return images[0], targets[0]

    def view(self, index: int, epoch: int | None) -> np.ndarray:
        if not self.augment:
            return centre_view(self.square(index), self.image_size)
        # Without an epoch (a plain index), DataLoader's per-worker torch seed picks the view.
        seed = [self.seed, epoch, index] if epoch is not None else int(torch.randint(2**62, ()))
        return random_view(self.square(index), self.image_size, np.random.default_rng(seed))

    def __getitems__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch (DataLoader calls this): the views go straight into one uint8 array,
        with no per-image tensors to collate, which roughly halves the cost of a cached batch."""
        triples = [item if isinstance(item, tuple) else (item, None, True) for item in items]
        batch = batch_tensor((len(items), 1, self.image_size, self.image_size))
        images = batch.numpy()
        for slot, (index, epoch, _) in enumerate(triples):
            images[slot, 0] = self.view(index, epoch)
        targets = self.targets[[index for index, _, _ in triples]]
        targets[[not real for _, _, real in triples]] = float("nan")  # padding: all labels masked
        return batch, targets


def frontal_rows(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """view_mode frontal: the frontal images only (the data may hold laterals for study mode)."""
    if "Frontal/Lateral" not in frame.columns:
        return frame
    frontal = frame["Frontal/Lateral"] == "Frontal"
    if not frontal.all():
        print(f"{name}: leaving out {int((~frontal).sum())} lateral image(s) (view_mode frontal)")
    return frame[frontal]


def make_dataset(frame: pd.DataFrame, model_cfg: Config, data_dir: str, augment: bool,
                 name: str, labels: tuple[str, ...] = LABELS,
                 use_cache: bool = True, policies: dict[str, str] | None = None
                 ) -> CheXpertDataset:
    """A split's dataset at the model's image size, read from the cache when there is one.

    Targets are the reference standard every split is scored against (labels.evaluation_targets:
    uncertain masked as NaN, whatever the policy), or with `policies` (train.py's training split)
    the raw columns under those uncertainty policies (labels.training_targets).
    """
    side = model_cfg.stored_side
    if model_cfg.view_mode == "frontal":
        frame = frontal_rows(frame, name)
    cache = open_cache(data_dir, side, frame["image_path"].tolist(), use_cache)
    frame = drop_unreadable(frame, cache, name)
    targets = (training_targets(frame, policies, model_cfg.seed) if policies
               else evaluation_targets(frame, labels).astype(np.float32))
    images = CheXpertDataset(frame, model_cfg.image_size, side, augment, labels, cache,
                             seed=model_cfg.seed, targets=targets)
    if model_cfg.view_mode == "study":
        return StudyDataset(frame, images, model_cfg.max_views, name)
    return images


class StudyDataset(Dataset):
    """Studies as items (view_mode study): up to max_views images of a study, frontal first.

    An item is ((V x 1 x S x S uint8 views, V bool "present" mask), targets); CheXpert labels
    belong to the study, so its first image's targets are the study's. Each view is augmented
    on its own, from (seed, epoch, image). `paths` holds each study's first image, in the order
    the studies first appear in the frame, so evaluation can line its rows up with the items.
    """
    collate_fn = staticmethod(keep_batch)  # __getitems__ returns the stacked batch

    def __init__(self, frame: pd.DataFrame, images: CheXpertDataset, max_views: int, name: str):
        self.images, self.max_views = images, max_views
        frontal_last = (frame.get("Frontal/Lateral", pd.Series("Frontal", index=frame.index))
                        != "Frontal").to_numpy()
        groups = frame.reset_index(drop=True).groupby(["patient_id", "study_id"], sort=False)
        self.studies = [sorted(rows, key=lambda row: (frontal_last[row], row))
                        for rows in groups.indices.values()]
        dropped = sum(max(0, len(rows) - max_views) for rows in self.studies)
        if dropped:
            print(f"{name}: {dropped} view(s) beyond --max_views {max_views} left out")
        self.studies = [rows[:max_views] for rows in self.studies]
        first = [rows[0] for rows in self.studies]
        self.paths = [images.paths[row] for row in first]
        self.targets = images.targets[first]
        self.cache = images.cache

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int):
        (views, present), targets = self.__getitems__([index])
        return (views[0], present[0]), targets[0]

    def __getitems__(self, items: list):
        triples = [item if isinstance(item, tuple) else (item, None, True) for item in items]
        size = self.images.image_size
        views = np.zeros((len(items), self.max_views, 1, size, size), dtype=np.uint8)
        present = np.zeros((len(items), self.max_views), dtype=bool)
        for slot, (index, epoch, _) in enumerate(triples):
            for view, row in enumerate(self.studies[index]):
                views[slot, view, 0] = self.images.view(row, epoch)
                present[slot, view] = True
        targets = self.targets[[index for index, _, _ in triples]]
        targets[[not real for _, _, real in triples]] = float("nan")
        return (torch.from_numpy(views), torch.from_numpy(present)), targets


# ---- sampling -------------------------------------------------------------------------------------

class EpochSampler(Sampler):
    """The training order: this process's share of a permutation drawn from (seed, epoch).

    The order depends on nothing else (not on workers or earlier epochs), so `set_epoch(epoch,
    start)` resumes an interrupted epoch at the same image with the same augmentations. With
    world_size > 1 (DDP), process `rank` takes every world_size-th image; the permutation is first
    padded to a multiple of world_size with repeats marked real=False, whose labels the dataset
    masks, so every image counts exactly once per epoch and every process runs the same number
    of batches (DDP's collective calls need that). torch's DistributedSampler pads with real
    duplicates instead, and cannot start mid-epoch.
    """

    def __init__(self, n_items: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n_items, self.seed, self.rank, self.world_size = n_items, seed, rank, world_size
        self.num_samples = math.ceil(n_items / world_size)  # per process
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch` (1-based) from this process's `start`-th sample on."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)
        padding = self.num_samples * self.world_size - self.n_items
        order = np.concatenate([order, order[:padding]])
        real = np.arange(len(order)) < self.n_items
        mine, mine_real = order[self.rank::self.world_size], real[self.rank::self.world_size]
        for position in range(self.start, self.num_samples):
            yield int(mine[position]), self.epoch, bool(mine_real[position])


class ShardSampler(Sampler):
    """Evaluation under DDP: process `rank` takes items rank, rank + world_size, ... (no padding,
    so gathering every process's predictions gives each image exactly once)."""

    def __init__(self, n_items: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, n_items, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


# ---- split files and loaders ----------------------------------------------------------------------

def data_settings(cfg: Config) -> dict:
    """What the data in --data_dir were built with: preprocess.py's settings (stats.json) and
    make_splits.py's (splits.json); a field an older version did not record is absent (older
    stats.json files kept data_root and frontal_only at their top level)."""
    settings = {}
    for path in (cfg.processed_dir / "stats.json", cfg.splits_dir / "splits.json"):
        if path.is_file():
            stored = json.loads(path.read_text())
            settings.update({key: stored[key] for key in ("data_root", "frontal_only")
                             if key in stored})
            settings.update(stored.get("settings", {}))
    return settings


def check_data_options(cfg: Config, given: set[str], script: str) -> Config:
    """Refuse a data-building option (config.DATA_FIELDS) given on the command line of `script`
    when it differs from what the data were built with; return cfg holding the data's own values
    (so a checkpoint records what the data were built with, not the command line)."""
    if not (cfg.processed_dir / "stats.json").is_file():
        return cfg  # no data yet: the script says to run preprocess.py when it needs them
    settings = data_settings(cfg)
    for name in sorted(given & set(DATA_FIELDS)):
        value, built = getattr(cfg, name), settings.get(name)
        same = built is not None and (Path(value).resolve() == Path(built).resolve()
                                      if name == "data_root" else value == built)
        if not same:
            reads = DATA_FIELDS[name]
            was = f"were built with --{name} {built}" if built is not None else \
                f"do not record --{name} (made by an older version)"
            raise ConfigError(
                f"--{name} is read by {reads}, not {script}: the data in {cfg.data_dir} {was}. "
                f"To use --{name} {value}, run {reads} (and the scripts after it) with it and "
                f"another --data_dir, then point {script} at that --data_dir")
    known = {name: settings[name] for name in DATA_FIELDS if name in settings}
    return dataclasses.replace(cfg, **known)
