"""The training losses (--loss), on the head's raw outputs and the training targets, where NaN is
a masked label that adds nothing:

    bce    masked_bce: BCE with the positive-class weights (multiclass_loss when some labels are
           U-MultiClass)
    focal  masked_focal: torchvision's sigmoid focal loss, positive-weighted the same way
    aucm   LibAUC's AUC-margin loss on sigmoid scores, trained with LibAUC's PESG optimizer
           (cxr/training/aucm.py, imported only for it: libauc is an optional install)

Each is a sum over the batch divided by its images (x classes), never by the number of unmasked
labels or by a statistic of the batch, so the loss of a group of micro-batches is the
size-weighted mean of theirs: gradient accumulation (train.accumulation_plan) equals one large
batch wherever the masks fall.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from cxr.data.labels import logit_offsets
from cxr.errors import PipelineError

if TYPE_CHECKING:
    from config import Config

LIBAUC_INSTALL = "pip install --no-deps -r requirements-libauc.txt"
# --loss aucm: the optimizer's parameter group of the loss's own a and b (cxr/training/aucm.py)
LOSS_GROUP = "aucm"


def output_starts(multiclass: tuple[bool, ...]) -> torch.Tensor:
    """Index of each label's first output: one logit per binary label, three (negative,
    positive, uncertain) per U-MultiClass label, in label order: the layout of
    model_architecture.CheXpertNet's head."""
    widths = torch.tensor([3 if flag else 1 for flag in multiclass])
    return torch.cumsum(widths, 0) - widths


# ---- bce ---------------------------------------------------------------------------------------

def masked_bce(logits: torch.Tensor, targets: torch.Tensor,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with positive-class weights; a NaN target is a masked label and adds nothing.

    The sum is divided by images x classes, not by the number of unmasked labels, so the loss of
    a group of micro-batches is the size-weighted mean of theirs: gradient accumulation stays
    exact wherever the masks fall. Without masks this equals BCEWithLogitsLoss's mean.
    """
    observed = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits, torch.where(observed, targets, 0.0),
                                                pos_weight=pos_weight, reduction="none")
    return torch.where(observed, losses, 0.0).sum() / targets.numel()


def multiclass_loss(outputs: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None,
                    starts: torch.Tensor, multiclass: torch.Tensor) -> torch.Tensor:
    """masked_bce for the binary labels plus cross-entropy over (negative, positive, uncertain)
    for the U-MultiClass ones (target 0, 1 or 2), both summed and divided by images x labels."""
    observed = ~torch.isnan(targets)
    safe = torch.where(observed, targets, 0.0)
    bce = F.binary_cross_entropy_with_logits(outputs[:, starts], safe, pos_weight=pos_weight,
                                             reduction="none")
    total = torch.where(observed & ~multiclass, bce, 0.0).sum()
    three = outputs[:, starts[multiclass, None] + torch.arange(3, device=outputs.device)]
    cross = F.cross_entropy(three.reshape(-1, 3), safe[:, multiclass].long().reshape(-1),
                            reduction="none").reshape(len(outputs), -1)
    total = total + torch.where(observed[:, multiclass], cross, 0.0).sum()
    return total / targets.numel()


class MaskedBCE(nn.Module):
    """The training loss: masked_bce, or multiclass_loss when some labels are U-MultiClass (then
    it takes the model's raw outputs, CheXpertNet.forward(images, raw=True))."""

    def __init__(self, pos_weight: torch.Tensor | None = None,
                 multiclass: tuple[bool, ...] | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.multiclass = multiclass if multiclass and any(multiclass) else None
        if self.multiclass:
            self.register_buffer("starts", output_starts(multiclass))
            self.register_buffer("multiclass_mask", torch.tensor(multiclass))

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multiclass is None:
            return masked_bce(outputs, targets, self.pos_weight)
        return multiclass_loss(outputs, targets, self.pos_weight, self.starts,
                               self.multiclass_mask)


# ---- focal -------------------------------------------------------------------------------------

def masked_focal(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None,
                 gamma: float) -> torch.Tensor:
    """torchvision's sigmoid focal loss (BCE x (1 - p_t)^gamma, no alpha) times the positive
    weight on positive targets (1 + (w - 1) x target: w for a positive, 1 for a negative, BCE's
    mix for a soft target); NaN targets add nothing; summed and divided by images x classes, as
    masked_bce, so that accumulation stays exact."""
    observed = ~torch.isnan(targets)
    safe = torch.where(observed, targets, 0.0)
    losses = sigmoid_focal_loss(logits, safe, alpha=-1, gamma=gamma, reduction="none")
    if pos_weight is not None:
        losses = losses * (1.0 + (pos_weight - 1.0) * safe)
    return torch.where(observed, losses, 0.0).sum() / targets.numel()


class MaskedFocal(nn.Module):
    """--loss focal: masked_focal with the training split's positive weights (binary labels
    only: config.validate refuses U-MultiClass)."""

    def __init__(self, pos_weight: torch.Tensor | None = None, gamma: float = 2.0):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.gamma = gamma

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return masked_focal(outputs, targets, self.pos_weight, self.gamma)


# ---- choosing the loss -------------------------------------------------------------------------

def class_priors(targets: np.ndarray) -> list[float]:
    """Per class, the share of positives among the training split's labelled targets (a target
    above 0.5 is positive, as positive_class_weights counts; NaN is not labelled; 0 for a class
    nobody labels): the AUC-margin loss's class prior p, LibAUC's imratio."""
    targets = np.asarray(targets, dtype=np.float64)
    observed = ~np.isnan(targets)
    positives = (np.nan_to_num(targets, nan=0.0) > 0.5).sum(axis=0)
    return (positives / np.maximum(observed.sum(axis=0), 1)).tolist()


def aucm_module():
    """cxr.training.aucm, which imports libauc: a clear error when it is not installed."""
    try:
        return importlib.import_module("cxr.training.aucm")
    except ImportError as err:
        raise PipelineError(f"--loss aucm needs LibAUC, which is not importable ({err}): install "
                            f"it with `{LIBAUC_INSTALL}`") from None


def make_criterion(cfg: Config, pos_weight: torch.Tensor, multiclass: tuple[bool, ...],
                   targets: np.ndarray, device: torch.device) -> nn.Module:
    """The --loss of the run on `device`: its positive weights (bce, focal) or class priors
    (aucm) from the training split's `targets` (rows x labels, under the uncertainty policy)."""
    if cfg.loss == "focal":
        return MaskedFocal(pos_weight, cfg.focal_gamma).to(device)
    if cfg.loss == "aucm":
        return aucm_module().AUCMargin(class_priors(targets), cfg.aucm_margin, device)
    return MaskedBCE(pos_weight, multiclass).to(device)


def pesg_optimizer(groups: list[dict], criterion: nn.Module, cfg: Config
                   ) -> torch.optim.Optimizer:
    """--loss aucm's optimizer: LibAUC's PESG over train.py's parameter `groups` and the loss's
    a and b (cxr/training/aucm.py)."""
    return aucm_module().pesg_optimizer(groups, criterion, cfg)


def loss_offsets(loss: str, pos_weight: np.ndarray, multiclass: tuple[bool, ...]) -> np.ndarray:
    """The logit offset the model subtracts (CheXpertNet.logit_offset). Weighted BCE's optimum is
    the calibrated logit + log w (labels.logit_offsets), so bce removes log w. The focal loss's
    and the AUC-margin loss's optima are no logit + a known constant (focal pulls confident
    scores towards 0.5, AUC-M only ranks): their offset is 0, and evaluate.py's per-class
    calibration, fitted on val, maps the scores to probabilities."""
    if loss == "bce":
        return logit_offsets(pos_weight, multiclass)
    return np.zeros(len(multiclass), dtype=np.float32)
