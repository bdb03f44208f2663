"""Training mechanics: accumulation, the frozen warm-up, mixed precision, schedule, class weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from config import Config
from cxr.data.labels import positive_class_weights
from cxr.errors import PipelineError
from cxr.training.losses import MaskedBCE, masked_bce
from cxr.training.state import Progress, Trainer
from model_architecture import CheXpertNet
from train import accumulation_plan, lr_multiplier, set_backbone_frozen, train_one_epoch


def test_accumulation_plan_weights_groups_including_the_last_partial_one():
    plan = accumulation_plan(n_images=10, batch_size=3, steps=2)
    # micro-batches of 3, 3 | 3, 1: groups of 6 and 4 images
    assert plan == [(0.5, False), (0.5, True), (0.75, False), (0.25, True)]
    assert sum(step for _, step in accumulation_plan(100, 16, 2)) == 4  # ceil(7 / 2)


def run_epoch(model, images, targets, batch_size, steps, dtype=None, scaler=None, frozen=True,
              criterion=None, **cfg_changes):
    cfg = Config(batch_size=batch_size, accumulation_steps=steps, channels_last=False,
                 **cfg_changes)
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch_size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = Trainer(model, model, criterion or MaskedBCE(torch.full((14,), 2.0)), optimizer,
                      scheduler, scaler or torch.amp.GradScaler("cpu", enabled=False), cfg,
                      torch.device("cpu"), dtype)
    return train_one_epoch(trainer, loader, Progress(), frozen, desc="test"), trainer


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return CheXpertNet(14, gem_p=3.0, dropout=0.0)


def masked_targets(n, seed=1):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (n, 14), generator=generator).float()
    targets[torch.rand(n, 14, generator=generator) < 0.3] = float("nan")  # masked (ignored)
    return targets


def accumulated_gradients(model, images, targets, batch_size, steps):
    """Gradients after the first optimizer-step group of each size, as train_one_epoch weighs
    them; returns one {name: grad} per group."""
    criterion = MaskedBCE(torch.full((14,), 2.0))
    plan, groups, start = accumulation_plan(len(images), batch_size, steps), [], 0
    for weight, step_now in plan:
        end = min(start + batch_size, len(images))
        (criterion(model(images[start:end]), targets[start:end]) * weight).backward()
        start = end
        if step_now:
            groups.append({n: p.grad.clone() for n, p in model.named_parameters()})
            model.zero_grad()
    return groups


def test_accumulated_gradient_equals_the_large_batch_gradient_with_masks_and_a_partial_group():
    torch.manual_seed(1)
    images, targets = torch.rand(7, 1, 32, 32), masked_targets(7)
    model = tiny_model().eval()  # fp32, dropout off, BatchNorm on its running statistics
    accumulated = accumulated_gradients(model, images, targets, batch_size=2, steps=2)
    large = accumulated_gradients(model, images, targets, batch_size=4, steps=1)
    # micro-batches 2+2 | 2+1 against batches 4 | 3: the last group is the partial one
    assert len(accumulated) == len(large) == 2
    for group_a, group_b in zip(accumulated, large):
        for name, grad in group_a.items():
            assert torch.allclose(grad, group_b[name], atol=1e-5, rtol=1e-4), name
    assert accumulated[0]["backbone.conv0.weight"].abs().sum() > 0  # the backbone is included


def test_masked_labels_add_nothing_to_the_loss():
    logits, targets = torch.randn(4, 14), masked_targets(4)
    full = masked_bce(logits, torch.nan_to_num(targets, nan=1.0))
    observed = ~torch.isnan(targets)
    changed = logits.clone()
    changed[~observed] += 100.0  # masked logits may be anything
    assert torch.equal(masked_bce(logits, targets), masked_bce(changed, targets))
    assert masked_bce(logits, targets) < full
    plain = torch.nn.BCEWithLogitsLoss()(logits, torch.nan_to_num(targets, nan=0.0))
    assert torch.isclose(masked_bce(logits, torch.nan_to_num(targets, nan=0.0)), plain)


def test_accumulated_steps_equal_large_batch_steps_in_fp32():
    torch.manual_seed(1)
    images, targets = torch.randn(10, 3, 32, 32), masked_targets(10)
    small, large = tiny_model(), tiny_model()
    set_backbone_frozen(small, True)  # frozen BatchNorm: batch size cannot change the result
    set_backbone_frozen(large, True)
    (progress, trainer), _ = run_epoch(small, images, targets, batch_size=4, steps=2), None
    run_epoch(large, images, targets, batch_size=8, steps=1)  # the same groups, one batch each
    for (name, a), b in zip(small.named_parameters(), large.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert not torch.equal(small.head.weight, tiny_model().head.weight)  # it did train
    # the schedule advanced once per optimizer step (2 groups), not per micro-batch (3)
    assert trainer.scheduler.last_epoch == 2 and progress.global_step == 2


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
    progress, _ = run_epoch(model, torch.randn(8, 3, 32, 32), torch.ones(8, 14), batch_size=4,
                            steps=2, dtype=torch.float16, scaler=scaler, frozen=False)
    assert np.isfinite(progress.loss_sum) and progress.seen == 8
    assert scaler.get_scale() > 0 and scaler.is_enabled()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_warmup_then_cosine_schedule():
    values = [lr_multiplier(step, warmup_steps=4, total_steps=14) for step in range(14)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0) and values[9] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))  # decays monotonically
    assert lr_multiplier(14, 4, 14) == pytest.approx(0.0)


def test_the_backbone_gets_its_own_warm_up_from_zero_when_it_is_unfrozen():
    from model_architecture import CheXpertNet
    from train import make_optimizer, make_scheduler

    cfg = Config(epochs=3, frozen_epochs=1, warmup_steps=2, lr_head=1e-3, lr_backbone=1e-4)
    optimizer = make_optimizer(CheXpertNet(), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=4)
    trace = []
    for _ in range(12):  # the LR each optimizer step is taken with
        trace.append({group["name"]: group["lr"] for group in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    head, backbone = [t["head"] for t in trace], [t["backbone"] for t in trace]
    assert backbone[:4] == [0.0] * 4  # frozen epoch: nothing spent of the backbone's warm-up
    assert backbone[4:6] == pytest.approx([0.5e-4, 1e-4])  # then from 0, over warmup_steps
    assert head[:2] == pytest.approx([0.5e-3, 1e-3])  # the head warms up from the first step
    for lrs in (head[1:], backbone[5:]):
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # cosine decay to the last step
    assert head[-1] < 0.05 * 1e-3 and backbone[-1] < 0.1 * 1e-4


def test_positive_class_weights_are_neg_over_pos_and_capped():
    targets = np.zeros((100, 3), dtype=np.float32)
    targets[:20, 0] = 1  # 80 / 20 = 4
    targets[:1, 1] = 1  # 99 / 1 = 99 -> capped at 50
    weights = positive_class_weights(targets, max_weight=50.0)  # class 2 has no positives -> 1
    assert weights.tolist() == [4.0, 50.0, 1.0]


def test_constant_schedule_after_warm_up():
    assert [lr_multiplier(s, 2, 10, "constant") for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


class NaNOnBatches(nn.Module):
    """BCE whose loss is NaN on chosen micro-batches (by call order)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, logits, targets):
        loss = masked_bce(logits, targets)
        self.calls += 1
        return loss * float("nan") if self.calls in self.bad_calls else loss


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_a_nonfinite_loss_skips_its_step_and_is_counted(dtype, capsys):
    model = tiny_model()
    set_backbone_frozen(model, True)
    head_before = model.head.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", enabled=dtype is not None)
    # 3 optimizer steps of one micro-batch: the second one's loss is NaN
    progress, trainer = run_epoch(model, torch.randn(6, 1, 32, 32), torch.ones(6, 14),
                                  batch_size=2, steps=1, dtype=dtype, scaler=scaler,
                                  criterion=NaNOnBatches({2}))
    assert progress.nonfinite_total == 1 and progress.nonfinite_in_a_row == 0
    assert progress.global_step == 3 and trainer.scheduler.last_epoch <= 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.head.weight, head_before)  # the other steps were taken
    assert "non-finite loss" in capsys.readouterr().out


def test_too_many_nonfinite_steps_in_a_row_stop_the_run():
    model = tiny_model()
    set_backbone_frozen(model, True)
    head_before = model.head.weight.detach().clone()
    with pytest.raises(PipelineError, match="3 optimizer steps in a row"):
        run_epoch(model, torch.randn(8, 1, 32, 32), torch.ones(8, 14), batch_size=2, steps=1,
                  criterion=NaNOnBatches({1, 2, 3}), max_nonfinite_steps=3)
    assert torch.equal(model.head.weight, head_before)  # no NaN reached the weights


def test_gradient_clipping_applies_to_unscaled_fp16_gradients():
    model = tiny_model()
    set_backbone_frozen(model, True)
    before = [p.detach().clone() for p in model.head_parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    run_epoch(model, torch.randn(4, 1, 32, 32), torch.ones(4, 14), batch_size=4, steps=1,
              dtype=torch.float16, scaler=scaler, grad_clip_norm=1e-3)
    # plain SGD with lr 1: the update is minus the clipped gradient, whose norm is the clip
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.head_parameters(), before)])
    assert moved.norm().item() == pytest.approx(1e-3, rel=0.02)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_takes_bf16_on_a_cpu_only_where_it_is_native(native, monkeypatch):
    """Emulated bf16 is several times slower than fp32 (an AVX2 CPU), so auto falls back to fp32
    there; explicit choices are kept."""
    import cxr.training.runtime as engine
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert engine.autocast_dtype("auto", cpu) is (torch.bfloat16 if native else None)
    assert engine.autocast_dtype("auto", torch.device("cuda")) is torch.float16
    assert engine.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert engine.autocast_dtype("fp32", cpu) is None


def test_the_native_bf16_check_answers_on_this_cpu():
    import cxr.training.runtime as engine
    assert isinstance(engine.cpu_has_native_bf16(), bool)


def test_ema_follows_the_warmed_up_decay_and_copies_integer_buffers():
    """ema = d_t * ema + (1 - d_t) * weight after each update, d_t = min(decay, (1+n)/(10+n));
    the first update copies the weights; BatchNorm's counter is copied, not averaged."""
    from cxr.training.ema import make_ema, warmed_decay

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = make_ema(model, 0.5)
    assert make_ema(model, 0.0) is None  # 0 = off
    expected = None
    for update in range(6):
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
        model(torch.randn(8, 3))  # train mode: BatchNorm's running stats and counter move
        weight = model[0].weight.detach().clone()
        if expected is None:
            expected = weight
        else:
            decay = warmed_decay(0.5, update - 1)
            expected = decay * expected + (1 - decay) * weight
        ema.update_parameters(model)
    assert [warmed_decay(0.5, n) for n in (0, 1, 8, 100)] == [0.1, 2 / 11, 0.5, 0.5]
    assert torch.allclose(ema.module[0].weight, expected, atol=1e-6)
    assert not torch.allclose(ema.module[0].weight, model[0].weight)
    assert ema.module[1].num_batches_tracked.item() == model[1].num_batches_tracked.item() == 6
    assert int(ema.n_averaged) == 6


def test_keep_top_k_keeps_the_k_best_epochs_and_deletes_the_rest(tmp_path):
    from train import prune_top_k, top_epochs, top_k_path

    history = [{"epoch": 1, "val_mean_auc": 0.70}, {"epoch": 2, "val_mean_auc": 0.80},
               {"epoch": 3, "val_mean_auc": None}, {"epoch": 4, "val_mean_auc": 0.75},
               {"epoch": 5, "val_mean_auc": 0.80}]
    assert top_epochs(history, 3) == [2, 5, 4]  # the earlier of equals first, as best.pth
    assert top_epochs(history, 10) == [2, 5, 4, 1]
    for epoch in (1, 2, 4, 5):
        top_k_path(tmp_path, epoch).parent.mkdir(exist_ok=True)
        top_k_path(tmp_path, epoch).write_bytes(b"x")
    prune_top_k(tmp_path, top_epochs(history, 2))
    assert sorted(p.name for p in (tmp_path / "top_k").iterdir()) == ["epoch_002.pth",
                                                                       "epoch_005.pth"]
