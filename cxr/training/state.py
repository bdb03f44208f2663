"""What a training run is made of: the objects a step updates (Trainer), where it stands inside
the epoch under way (Progress), what carries over between epochs (RunState) and its fixed facts
(RunRecords). Every checkpoint saves them all (cxr/training/checkpoint.py), and a resumed run
continues from them (cxr/training/resume.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cxr.training.runtime import StopSignals, World

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from config import Config


@dataclass
class RunState:
    """What carries over between epochs (and into every checkpoint)."""
    history: list  # the metrics.csv rows so far
    best: float | None = None
    epochs_without_improvement: int = 0
    val_auc: dict | None = None


@dataclass
class Progress:
    """Where training stands: the epoch under way and how far into it (this process's
    micro-batches), plus the counters a resumed run continues from."""
    epoch: int = 1
    batches_done: int = 0
    global_step: int = 0  # optimizer steps attempted, skipped ones included
    loss_sum: float = 0.0
    seen: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    stopped_by: int | None = None


@dataclass
class RunRecords:
    """The run's fixed facts, which every checkpoint carries (cxr/training/checkpoint.py)."""
    # {"mean", "std"} of the pixels (per channel with --init), "channels", "source",
    # "source_size": stats.json or --init's convention, or the resumed checkpoint's
    normalization: dict
    data: dict  # what the data were built with (dataset.data_settings)
    pos_weight: dict  # {label: BCE positive weight} of the training split
    warmup: dict  # {"head": steps, "backbone": steps}: the warm-up the run began with
    trained_labels: list  # the labels the training split labels (labels.trained_labels)
    epoch_selection: dict  # how best.pth is chosen (schedule.ValRanking.record)


@dataclass
class Trainer:
    """What a training step touches. `net` runs the forward pass: the model itself, or the model
    wrapped in DistributedDataParallel (or compiled); checkpoints and validation use the plain
    `model`, or its moving average `ema`.
    `state` lives here, not in a variable of the epoch loop, so that a mid-epoch checkpoint
    (`on_step`) always saves the current one; `records` are the run's fixed facts
    (normalization, pos_weight, data settings...; None where no checkpoint is written)."""
    model: nn.Module  # model_architecture.CheXpertNet
    net: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    cfg: Config
    device: torch.device
    dtype: torch.dtype | None
    world: World = World()
    stop: StopSignals | None = None
    on_step: Callable[[Progress], None] | None = None  # called every cfg.checkpoint_every_steps
    state: RunState = field(default_factory=lambda: RunState(history=[]))
    records: RunRecords | None = None  # the run's fixed facts every checkpoint carries
    ema: AveragedModel | None = None  # the weights' moving average (--ema_decay), else None
    # TensorBoard events, rank 0 (cxr/training/tensorboard_log.py)
    events: SummaryWriter | None = None

    @property
    def validated(self) -> nn.Module:
        """The weights that are validated and saved as the checkpoint's model: the moving
        average when there is one, else the model that trains."""
        return self.ema.module if self.ema is not None else self.model
