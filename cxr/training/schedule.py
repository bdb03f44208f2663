"""A run's length rules: the warm-up each parameter group gets, from when early stopping counts
epochs, and whether the val split is large enough to rank epochs at all.

A short run (a few hundred optimizer steps) must still train at its learning rate and must not
be stopped, or have its best epoch picked, on noise:
- warm-up: --warmup_steps when given; by default warmup_share of the steps each group trains,
  at most AUTO_WARMUP_MAX_STEPS, so that a long run keeps the recipe's 100 steps and a 130-step
  run warms up over 13.
- early stopping counts an epoch without improvement only once every group that trains has
  finished its warm-up (the backbone's starts after the frozen epochs).
- the val split ranks epochs when at least half of the classes with positives in the training
  split have --min_positives positives and negatives in val; otherwise best.pth is the last
  epoch and early stopping is off (unless --select_on_small_val true).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from config import Config


AUTO_WARMUP_MAX_STEPS = 100  # the automatic warm-up's longest: the recipe's (CheXpert, 5 epochs)
GROUPS = ("head", "backbone")  # the optimizer's parameter groups (train.make_optimizer)


# ---- warm-up ------------------------------------------------------------------------------------

def group_steps(cfg: Config, steps_per_epoch: int) -> dict[str, tuple[int, int]]:
    """Per parameter group: (the optimizer step it starts training at, the steps it trains).
    The head trains from the first step, the backbone once the frozen epochs are over."""
    frozen, total = cfg.frozen_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    return {"head": (0, total), "backbone": (frozen, total - frozen)}


def warmup_plan(cfg: Config, steps_per_epoch: int) -> dict[str, int]:
    """Per parameter group, its linear warm-up in optimizer steps: --warmup_steps as given, or
    (by default) warmup_share of the steps the group trains, rounded up, at most
    AUTO_WARMUP_MAX_STEPS. Resolved once, when a run starts: the checkpoint keeps it, so that a
    resumed run (even with other --epochs) warms up as it began."""
    if cfg.warmup_steps is not None:
        return dict.fromkeys(GROUPS, cfg.warmup_steps)
    return {group: min(AUTO_WARMUP_MAX_STEPS, math.ceil(cfg.warmup_share * steps))
            for group, (_, steps) in group_steps(cfg, steps_per_epoch).items()}


def warmup_end(warmup: dict[str, int], cfg: Config, steps_per_epoch: int) -> int:
    """The optimizer steps taken once every group that trains has finished its warm-up."""
    spans = group_steps(cfg, steps_per_epoch)
    return max((start + warmup[group] for group, (start, steps) in spans.items() if steps > 0),
               default=0)


def warmup_line(warmup: dict[str, int], cfg: Config, steps_per_epoch: int) -> str:
    """What the run warms up over and why, e.g. 'head 13, backbone 12 optimizer steps (10 % of
    the 130 and 117 steps each trains, at most 100)'."""
    spans = group_steps(cfg, steps_per_epoch)
    training = [group for group in GROUPS if spans[group][1] > 0]
    steps = ", ".join(f"{group} {warmup[group]}" for group in training)
    trained = " and ".join(str(spans[group][1]) for group in training)
    if cfg.warmup_steps is None:
        why = (f"{cfg.warmup_share:.0%} of the {trained} steps each trains, at most "
               f"{AUTO_WARMUP_MAX_STEPS}; --warmup_steps N sets it")
    else:
        why = f"--warmup_steps, of the {trained} steps each trains"
    short = [group for group in training if warmup[group] > spans[group][1]]
    warning = (f"; warning: longer than the {' and '.join(short)}'s training, which never "
               "reaches its learning rate" if short else "")
    return f"train: warm-up: {steps} optimizer steps ({why}){warning}"


# ---- can the val split rank epochs? ------------------------------------------------------------

@dataclass(frozen=True)
class ValRanking:
    """Whether the val split ranks epochs (picks best.pth, drives early stopping), and why."""
    trained: tuple[str, ...]  # classes with at least one positive label in the training split
    ranked: tuple[str, ...]  # of those, the ones with min_positives positives and negatives in val
    n_val: int  # val images (studies in study mode)
    unit: str  # "images" or "studies"
    min_positives: int
    told: bool  # --select_on_small_val: rank on a small val split anyway

    @property
    def too_small(self) -> bool:
        """Fewer than half of the trained classes can be ranked on val."""
        return 2 * len(self.ranked) < len(self.trained)

    @property
    def ranks(self) -> bool:
        return not self.too_small or self.told

    def line(self) -> str | None:
        """The one line a run prints about it; None when val ranks epochs as usual."""
        if not self.too_small:
            return None
        ranked = len(self.ranked)
        why = (f"the val split is too small to rank epochs: of the {len(self.trained)} classes "
               f"with positives in train, {ranked} ({', '.join(self.ranked) or 'none'}) "
               f"{'has' if ranked == 1 else 'have'} at least {self.min_positives} positives and "
               f"{self.min_positives} negatives among its {self.n_val:,} {self.unit}, fewer than "
               f"half ({math.ceil(len(self.trained) / 2)})")
        if self.told:
            return f"train: warning: {why}; ranking epochs on it anyway (--select_on_small_val)"
        return (f"train: {why}. best.pth is the last epoch and early stopping is off; "
                "--select_on_small_val true ranks epochs on it anyway")

    def record(self) -> dict:
        """What run_info.json and every checkpoint keep of it (plain types)."""
        return {"best_pth": "best val mean AUC" if self.ranks else "last epoch",
                "val_too_small": self.too_small, "select_on_small_val": self.told,
                "min_positives": self.min_positives, "n_val": self.n_val,
                "classes_with_train_positives": len(self.trained),
                "classes_ranked_on_val": list(self.ranked)}


def val_ranking(train_targets: np.ndarray, val_targets: np.ndarray, labels: tuple[str, ...],
                cfg: Config) -> ValRanking:
    """From the reference-standard targets of both splits (rows x labels, NaN = masked): which
    classes train has positives of, and which of those val can rank (as the val mean AUC
    counts them: min_positives positives and negatives)."""
    def count(targets: np.ndarray, positive: bool) -> np.ndarray:
        return ((targets > 0.5) if positive else (targets <= 0.5)).sum(axis=0)  # NaN: neither

    has_positives = count(train_targets, True) > 0
    enough = (count(val_targets, True) >= cfg.min_positives) & \
        (count(val_targets, False) >= cfg.min_positives)
    trained = tuple(label for label, yes in zip(labels, has_positives) if yes)
    ranked = tuple(label for label, yes, ok in zip(labels, has_positives, enough) if yes and ok)
    unit = "studies" if cfg.view_mode == "study" else "images"
    return ValRanking(trained, ranked, len(val_targets), unit, cfg.min_positives,
                      cfg.select_on_small_val)


# ---- early stopping ----------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochRules:
    """How the epochs of a run are judged: the optimizer steps taken when its warm-up is over
    (warmup_end) and whether val ranks them."""
    warmup_end: int
    ranking: ValRanking

    def counts_toward_patience(self, steps_taken: int) -> bool:
        """Whether an epoch without a better val mean AUC, ending after `steps_taken` optimizer
        steps, counts toward early stopping: only once the warm-up is over, and only when val
        ranks epochs."""
        return self.ranking.ranks and steps_taken >= self.warmup_end
