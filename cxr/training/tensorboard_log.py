"""TensorBoard event files in the run folder, written by train.py on rank 0 alone.

    tensorboard --logdir models            (each run folder is one run)

A step is the number of optimizer steps taken so far (Progress.global_step, skipped non-finite
steps included), so the per-step and the per-epoch curves share one x axis:

    train/loss, train/lr_head,        every optimizer step, at its own number (1, 2, ...): the
    train/lr_backbone,                step's loss (rank 0's micro-batches), the learning rates
    train/images_per_s                it used, images per second since the step before
    train/epoch_loss, val/loss,       every epoch, at the step that ended it (the epoch's rows
    val/mean_auc, val_auc/<label>     in metrics.csv; with --ema_decay the val numbers are the
                                      moving average's, as there); a class without an AUC
                                      (one label value in val) is left out that epoch
    val_pr/<label>                    at each new best epoch, the precision-recall curve of
                                      every class with both label values, over its labelled val
                                      images only (uncertain masked, never counted negative)
    train/augmented_images            at step 0 of a fresh run, the first training images as
                                      the first step takes them, augmented

A resumed run opens a new event file in the same folder with purge_step = its checkpoint's step
+ 1: TensorBoard then hides what the interrupted launch logged after that checkpoint (those steps
are logged again), so the curves continue with no step twice. Everything logged up to a
checkpoint is flushed before the checkpoint is written (flush_events), so nothing the purge keeps
can be missing; a SIGKILL loses at most what followed the last checkpoint. A fresh run purges
from step 0: the events of an earlier launch under the same --run_name that never reached a
checkpoint are hidden. (TensorBoard's data server needs no purge event: within a tag, a step not
above the last one replaces the steps from it on, and every tag's steps here only grow.)
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from cxr.data.labels import LABELS, has_both_values, observed
from cxr.training.runtime import World

GRID_IMAGES = 16  # training images in the grid at the start
GRID_COLUMNS = 8
FLUSH_SECONDS = 30  # between the writer's own flushes (a live TensorBoard sees new steps)
EPOCH_SCALARS = {"train/epoch_loss": "train_loss", "val/loss": "val_loss",
                 "val/mean_auc": "val_mean_auc"}  # tag: metrics.csv column


EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")  # the writer's creation second


def wait_for_a_later_second(run_dir: Path) -> None:
    """Wait (under a second) until the clock has passed the second in which the folder's newest
    event file was created. TensorBoard reads a folder's event files in the order of their
    names, which start with that second and go on with the host and the process id: a launch
    resumed within the same second (from a process of smaller id) would be read first, and its
    purge would then wipe the earlier launch's steps instead of the ones it replaces."""
    seconds = [int(m.group(1)) for path in run_dir.glob("events.out.tfevents.*")
               if (m := EVENT_FILE.match(path.name))]
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


@contextlib.contextmanager
def event_log(run_dir: Path, world: World, first_step: int) -> Iterator[SummaryWriter | None]:
    """The run folder's TensorBoard writer on rank 0 (None on the other ranks), closed, so
    flushed, on the way out: at the run's end, after a stop signal, or an error. `first_step`
    is the first step this launch logs (0 for a fresh run, the checkpoint's step + 1 on resume):
    whatever an earlier launch logged from it on is purged."""
    if not world.is_main:
        yield None
        return
    wait_for_a_later_second(run_dir)
    writer = SummaryWriter(str(run_dir), purge_step=first_step, flush_secs=FLUSH_SECONDS)
    try:
        yield writer
    finally:
        writer.close()


def flush_events(events: SummaryWriter | None) -> None:
    """Write what is logged so far to disk (before each checkpoint: see the module docstring)."""
    if events is not None:
        events.flush()


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of each parameter group as the next step uses it, by the group's name
    (train.py's: head, backbone; an unnamed group by its index)."""
    return {str(group.get("name", index)): group["lr"]
            for index, group in enumerate(optimizer.param_groups)}


def log_step(events: SummaryWriter | None, step: int, loss: float, lrs: dict[str, float],
             images_per_s: float) -> None:
    """One optimizer step's scalars, at its number `step` (1 for the run's first step)."""
    if events is None:
        return
    events.add_scalar("train/loss", loss, step)
    for name, lr in lrs.items():
        events.add_scalar(f"train/lr_{name}", lr, step)
    events.add_scalar("train/images_per_s", images_per_s, step)


def log_epoch(events: SummaryWriter | None, step: int, row: dict, val: dict, is_best: bool
              ) -> None:
    """An epoch's metrics.csv row at the step that ended it; the val PR curves too when it is
    the best epoch so far. `val` is validation_metrics' result (its targets and probabilities)."""
    if events is None:
        return
    for tag, column in EPOCH_SCALARS.items():
        if row[column] is not None:
            events.add_scalar(tag, row[column], step)
    for label in LABELS:
        if row[f"auc {label}"] is not None:
            events.add_scalar(f"val_auc/{label}", row[f"auc {label}"], step)
    if is_best:
        log_pr_curves(events, step, val["targets"], val["probabilities"])


def log_pr_curves(events: SummaryWriter, step: int, targets: np.ndarray, probabilities: np.ndarray
                  ) -> None:
    """Each class's precision-recall curve over its labelled images: a masked (NaN) target is
    left out, not taken as negative. A class with one label value there has no curve."""
    for column, label in enumerate(LABELS):
        y, p = observed(targets[:, column], probabilities[:, column])
        if has_both_values(y):
            events.add_pr_curve(f"val_pr/{label}", y.astype(bool), p, step)


def log_training_images(events: SummaryWriter | None, loader: DataLoader, model: torch.nn.Module
                        ) -> None:
    """A grid of the epoch's first training images (this process's share of its order) at step
    0, as the model sees them: the backbone's normalised input (model.normalize, one of its
    channels), un-normalised with its pixel mean/std for display. A study
    batch shows the views present. Reads the items straight from the dataset: the augmentation
    comes from (seed, epoch, image), so this draws no random number of the run."""
    if events is None:
        return
    items = list(itertools.islice(iter(loader.sampler), GRID_IMAGES))
    images, _ = loader.dataset.__getitems__(items)
    if isinstance(images, (tuple, list)):  # view_mode study: (views, present)
        views, present = images
        images = views[present][:GRID_IMAGES]
    with torch.no_grad():
        seen = model.normalize(images.to(model.pixel_mean.device))[:, :1].float().cpu()
    mean, std = model.pixel_mean[0].item(), model.pixel_std[0].item()  # the first channel's
    shown = (seen * std + mean).clamp(0.0, 1.0)
    events.add_image("train/augmented_images", make_grid(shown, nrow=GRID_COLUMNS, pad_value=1.0),
                     0)
