"""Training mechanics: accumulation, the frozen warm-up, mixed precision, schedule, class weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from config import Config
from labels import positive_class_weights
from model_architecture import CheXpertNet
from train import accumulation_plan, set_backbone_frozen, train_one_epoch, warmup_cosine


def test_accumulation_plan_weights_groups_including_the_last_partial_one():
    plan = accumulation_plan(n_images=10, batch_size=3, steps=2)
    # micro-batches of 3, 3 | 3, 1: groups of 6 and 4 images
    assert plan == [(0.5, False), (0.5, True), (0.75, False), (0.25, True)]
    assert sum(step for _, step in accumulation_plan(100, 16, 2)) == 4  # ceil(7 / 2)


def run_epoch(model, images, targets, batch_size, steps, dtype=None, scaler=None, frozen=True):
    cfg = Config(batch_size=batch_size, accumulation_steps=steps, channels_last=False)
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch_size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.full((14,), 2.0))
    return train_one_epoch(model, loader, criterion, optimizer, scheduler, scaler, cfg,
                           torch.device("cpu"), dtype, frozen, desc="test")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return CheXpertNet(14, gem_p=3.0, dropout=0.0)


def test_accumulated_steps_equal_large_batch_steps_in_fp32():
    torch.manual_seed(1)
    images, targets = torch.randn(10, 3, 32, 32), torch.randint(0, 2, (10, 14)).float()
    small, large = tiny_model(), tiny_model()
    set_backbone_frozen(small, True)  # frozen BatchNorm: batch size cannot change the result
    set_backbone_frozen(large, True)
    run_epoch(small, images, targets, batch_size=4, steps=2)  # groups of 8 and 2 images
    run_epoch(large, images, targets, batch_size=8, steps=1)  # the same groups, one batch each
    for (name, a), b in zip(small.named_parameters(), large.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert not torch.equal(small.head.weight, tiny_model().head.weight)  # it did train


def test_frozen_epoch_leaves_backbone_and_its_batchnorm_untouched():
    model = tiny_model()
    before = copy.deepcopy(model.backbone.state_dict())
    set_backbone_frozen(model, True)
    run_epoch(model, torch.randn(6, 3, 32, 32), torch.ones(6, 14), batch_size=3, steps=1)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    set_backbone_frozen(model, False)
    run_epoch(model, torch.randn(6, 3, 32, 32), torch.ones(6, 14), batch_size=3, steps=1,
              frozen=False)
    assert not torch.equal(model.backbone.conv0.weight, before["conv0.weight"])


def test_fp16_autocast_with_grad_scaler_trains_on_cpu():
    model = tiny_model()
    set_backbone_frozen(model, False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    loss, images_per_s = run_epoch(model, torch.randn(8, 3, 32, 32), torch.ones(8, 14),
                                   batch_size=4, steps=2, dtype=torch.float16, scaler=scaler,
                                   frozen=False)
    assert np.isfinite(loss) and images_per_s > 0
    assert scaler.get_scale() > 0 and scaler.is_enabled()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_warmup_then_cosine_schedule():
    values = [warmup_cosine(step, warmup_steps=4, total_steps=14) for step in range(14)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0) and values[9] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))  # decays monotonically
    assert warmup_cosine(14, 4, 14) == pytest.approx(0.0)


def test_positive_class_weights_are_neg_over_pos_and_capped():
    targets = np.zeros((100, 3), dtype=np.float32)
    targets[:20, 0] = 1  # 80 / 20 = 4
    targets[:1, 1] = 1  # 99 / 1 = 99 -> capped at 50
    weights = positive_class_weights(targets, max_weight=50.0)  # class 2 has no positives -> 1
    assert weights.tolist() == [4.0, 50.0, 1.0]
