"""An exponential moving average (EMA) of the weights, kept beside the model that trains.

After every optimizer step actually taken, each floating-point weight and buffer (BatchNorm's
running statistics too) moves toward the trained model's:

    ema = decay_t * ema + (1 - decay_t) * weight,   decay_t = min(decay, (1 + n) / (10 + n))

with n the updates so far. The warm-up of decay_t (as timm's ModelEmaV2 and TensorFlow's
ExponentialMovingAverage with num_updates do) keeps a short run's average from being mostly the
random initial weights: at decay 0.999 the plain average would still hold 37 % of them after
1000 steps. Integer buffers (BatchNorm's batch counter) are copied.

torch.optim.swa_utils.AveragedModel holds the copy and its update count; this module only gives it
the warm-up rule and turns its state into the checkpoint's plain types.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

WARMUP = 10.0  # decay_t = (1 + n) / (WARMUP + n) until that reaches --ema_decay


def warmed_decay(decay: float, updates: int) -> float:
    """The decay of the update after `updates` earlier ones."""
    return min(decay, (1.0 + updates) / (WARMUP + updates))


def ema_rule(decay: float):
    """AveragedModel's multi_avg_fn: every tensor of one device and dtype at once."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        if not averaged[0].is_floating_point():
            for target, source in zip(averaged, current):
                target.copy_(source)
            return
        # n_averaged counts the first update too, which copied the weights
        torch._foreach_lerp_(averaged, current, 1.0 - warmed_decay(decay, int(n_averaged) - 1))
    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """The EMA of `model` (a copy on its device), or None when decay is 0 (off)."""
    if decay <= 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=ema_rule(decay), use_buffers=True)


def ema_record(ema: AveragedModel, decay: float) -> dict:
    """What a checkpoint carries of the average besides its weights."""
    return {"decay": decay, "updates": int(ema.n_averaged)}


def load_ema(ema: AveragedModel, weights: dict, record: dict) -> None:
    """Restore the average from a checkpoint's weights and record (exact resume)."""
    ema.module.load_state_dict(weights)
    ema.n_averaged.fill_(int(record["updates"]))
