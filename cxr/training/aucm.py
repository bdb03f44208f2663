"""--loss aucm: LibAUC's AUC-margin loss and its PESG optimizer, used as LibAUC ships them (libauc,
an optional install: requirements-libauc.txt; cxr/training/losses.py imports this module only
for --loss aucm and says how to install it).

LibAUC's CheXpert recipe: DenseNet121 trained with BCE, then fine-tuned on sigmoid scores with
MultiLabelAUCMLoss and PESG (train.py --loss aucm --init RUN/best.pth). What is adapted here,
and why:
- the class prior p of each class (imratio) is the training split's, fixed: LibAUC otherwise
  takes each mini-batch's, which makes a micro-batch's loss depend on its neighbours and breaks
  gradient accumulation;
- a, b and alpha become nn.Parameters of the loss (LibAUC keeps plain tensors), so that they
  travel in its state_dict (the checkpoint's "loss"), and follow .to() and zero_grad();
- PESG gets train.py's parameter groups (GroupedPESG), so LambdaLR, the frozen epochs and the
  backbone's own warm-up work as with AdamW.
LibAUC 2.0.1's MultiLabelAUCMLoss v1 writes its margin term as p(1 - p), without the margin: the
loss value logged is the one at margin 1 whatever --aucm_margin. Training follows the margin
all the same: PESG's closed-form step of alpha, the only place the margin acts on the weights,
reads it from its own parameter group (--aucm_margin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from libauc.losses import MultiLabelAUCMLoss
from libauc.optimizers import PESG
from torch import nn

from cxr.training.losses import LOSS_GROUP

if TYPE_CHECKING:
    from config import Config

PESG_MOMENTUM = 0.9  # PESG's default, as LibAUC's CheXpert recipe trains


class AUCMargin(nn.Module):
    """LibAUC's MultiLabelAUCMLoss (v1: one AUC-margin loss per class, with its class prior,
    averaged over the classes) on the sigmoid of the head's outputs.

    Each of its terms is a mean over the batch's images, with a target of 1 or 0 selecting the
    image; a masked (NaN) target selects neither and adds nothing, and with the priors fixed the
    size-weighted mean of micro-batch losses is the large batch's loss. A soft target (the LSR
    policies) counts as positive above 0.5, as class_priors counts it."""

    def __init__(self, priors: list[float], margin: float, device: torch.device):
        super().__init__()
        self.priors = list(priors)
        self.auc = MultiLabelAUCMLoss(margin=margin, version="v1", imratio=list(self.priors),
                                      num_labels=len(self.priors), device=device)
        for name in ("a", "b", "alpha"):
            setattr(self.auc, name, nn.Parameter(getattr(self.auc, name).detach()))

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels = torch.where(torch.isnan(targets), targets, (targets > 0.5).to(targets.dtype))
        return self.auc(torch.sigmoid(outputs), labels, auto=False)  # auto: batch priors


class GroupedPESG(PESG):
    """LibAUC's PESG over named parameter groups: train.py's (backbone, head), then the loss's a
    and b as LOSS_GROUP, every group at PESG's lr, which train.py's LambdaLR then scales per
    group (PESG reads group["lr"] at each step and skips parameters without a gradient, so the
    frozen backbone stays as it is).

    PESG is written for one group: its step indexes the reference point (model_ref) and the
    running sum of the weights (model_acc) by a parameter's position within its group, and moves
    alpha once per group. So each group gets its own slices of those lists, and alpha belongs to
    the loss's group alone; PESG's update rules are its own, untouched.

    Under DDP, PESG all-reduces a's and b's gradients itself (DDP averages the network's), and
    alpha's step reads only a and b: every process keeps the same a, b, alpha and weights."""

    def __init__(self, groups: list[dict], loss: AUCMargin, **options):
        super().__init__([p for group in groups for p in group["params"]], loss.auc, **options)
        # LibAUC draws the first reference point from N(0, 0.01^2) with the global generator,
        # which differs between DDP processes (seeded seed + rank): its mean, 0, is everywhere
        # the same. The end of each epoch moves it (next_reference_point).
        for reference in self.model_ref or []:
            reference.zero_()
        defaults = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        self.param_groups.clear()
        for group in [*groups, {"params": [self.a, self.b], "name": LOSS_GROUP}]:
            self.add_param_group({**defaults, **group})
        self.share_out()

    def share_out(self) -> None:
        """Each group its slices of model_ref and model_acc (in PESG's order of self.params:
        the groups' parameters, then a and b), alpha to the loss's group only."""
        start = 0
        for group in self.param_groups:
            end = start + len(group["params"])
            for key in ("model_ref", "model_acc"):
                whole = getattr(self, key)
                group[key] = None if whole is None else whole[start:end]
            group["alpha"] = self.alpha if group["name"] == LOSS_GROUP else None
            start = end

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(dict(state_dict))  # PESG pops its own keys from the dict
        self.share_out()  # PESG gives every group the whole lists and alpha again

    @torch.no_grad()
    def next_reference_point(self) -> None:
        """End of an epoch: the reference point becomes the average of the weights the epoch's
        steps left (PESG's update_regularizer), as LibAUC's recipe does at each of its decay
        epochs. It is called without a decay_factor: the learning rate is the LambdaLR schedule's
        (update_regularizer would divide the first group's alone, and LambdaLR overwrite it).
        A parameter that took no step this epoch (the frozen backbone: its running sum is 0)
        keeps its value as its reference, which is the average of its unchanged weights."""
        if self.model_ref is None or self.T == 0:
            return
        idle = [not total.any() for total in self.model_acc]
        self.update_regularizer()
        for param, reference, unchanged in zip(self.params, self.model_ref, idle):
            if unchanged:
                reference.copy_(param)


def pesg_optimizer(groups: list[dict], loss: AUCMargin, cfg: Config) -> GroupedPESG:
    """PESG over `groups` and the loss's a, b, alpha: lr --aucm_lr, epoch_decay
    --aucm_epoch_decay, weight_decay --weight_decay; the margin is the loss's (--aucm_margin)."""
    device = groups[0]["params"][0].device  # PESG's default is cuda:0, whatever the process's
    return GroupedPESG(groups, loss, lr=cfg.aucm_lr, momentum=PESG_MOMENTUM,
                       weight_decay=cfg.weight_decay, epoch_decay=cfg.aucm_epoch_decay,
                       verbose=False, device=device)
