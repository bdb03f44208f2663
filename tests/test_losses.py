"""--loss focal and aucm: masked labels, accumulation, mixed precision, resume, DDP, calibration.

Most tests train TinyNet, a stand-in with CheXpertNet's parameter groups (backbone, head) that
costs nothing; the end-to-end ones run train.py and evaluate.py on the tests' tiny dataset."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from config import Config, validate
from cxr.errors import ConfigError, PipelineError
from cxr.training.losses import LIBAUC_INSTALL, MaskedBCE, class_priors, loss_offsets, \
    make_criterion, masked_bce, masked_focal
from cxr.training.runtime import World
from cxr.training.state import Progress, Trainer
from train import accumulation_plan, make_optimizer, make_scheduler, set_backbone_frozen, \
    train_one_epoch

LOSSES = ("focal", "aucm")


class TinyNet(nn.Module):
    """CheXpertNet's interface in miniature: a convolutional backbone, a linear head, raw=."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Linear(4, 14)

    def forward(self, images, raw: bool = False):
        return self.head(self.backbone(images))

    def head_parameters(self):
        return list(self.head.parameters())


def masked_targets(n: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (n, 14), generator=generator).float()
    targets[torch.rand(n, 14, generator=generator) < 0.3] = float("nan")  # masked
    return targets


def criterion_for(loss: str, targets: torch.Tensor) -> nn.Module:
    return make_criterion(Config(loss=loss), torch.full((14,), 2.0), (False,) * 14,
                          targets.numpy(), torch.device("cpu"))


def trainer_for(loss: str, model: nn.Module, targets: torch.Tensor, steps_per_epoch: int,
                scaler=None, dtype=None, world: World = World(), **cfg_changes) -> Trainer:
    """What train.make_trainer builds for `loss`, around `model`."""
    cfg = Config(**{"loss": loss, "channels_last": False, "epochs": 2, "frozen_epochs": 0,
                    "warmup_steps": 0, **cfg_changes})
    criterion = criterion_for(loss, targets)
    optimizer = make_optimizer(model, cfg, criterion)
    return Trainer(model, model, criterion, optimizer,
                   make_scheduler(optimizer, cfg, steps_per_epoch),
                   scaler or torch.amp.GradScaler("cpu", enabled=False), cfg,
                   torch.device("cpu"), dtype, world)


def run_epoch(trainer: Trainer, images, targets, batch_size: int, steps: int) -> Progress:
    trainer.cfg = dataclasses.replace(trainer.cfg, batch_size=batch_size,
                                      accumulation_steps=steps)
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch_size)
    return train_one_epoch(trainer, loader, Progress(), frozen=False, desc="test")


def loss_parameters(criterion: nn.Module) -> dict[str, torch.Tensor]:
    return {f"loss.{name}": p for name, p in criterion.named_parameters() if name != "auc.alpha"}


# ---- the losses themselves ---------------------------------------------------------------------

def test_focal_with_gamma_0_is_the_positive_weighted_bce():
    logits, targets = torch.randn(5, 14), masked_targets(5)
    weight = torch.linspace(0.5, 4.0, 14)
    assert torch.allclose(masked_focal(logits, targets, weight, gamma=0.0),
                          masked_bce(logits, targets, weight), atol=1e-6)
    assert masked_focal(logits, targets, weight, 2.0) < masked_bce(logits, targets, weight)


def test_class_priors_count_the_labelled_targets_only():
    targets = torch.tensor([[1.0, float("nan")], [0.0, float("nan")], [0.7, 1.0],
                            [float("nan"), 0.0]])
    assert class_priors(targets.numpy()) == pytest.approx([2 / 3, 1 / 2])
    criterion = criterion_for("aucm", masked_targets(40))
    assert criterion.priors == pytest.approx(class_priors(masked_targets(40).numpy()))


@pytest.mark.parametrize("loss", LOSSES)
def test_masked_labels_add_nothing(loss):
    """A masked (NaN) target's prediction may be anything: the loss and every gradient (the
    other outputs', a's and b's) are the same."""
    targets = masked_targets(6)
    masked = torch.isnan(targets)
    criterion = criterion_for(loss, targets)
    results = []
    for shift in (0.0, 7.0):
        outputs = torch.randn(6, 14, generator=torch.Generator().manual_seed(0))
        outputs = (outputs + shift * masked).requires_grad_()
        value = criterion(outputs, targets)
        value.backward()
        grads = [outputs.grad.clone(), *(p.grad.clone() for p in loss_parameters(criterion)
                                         .values())]
        criterion.zero_grad()
        results.append((value.detach(), grads))
    (value_a, grads_a), (value_b, grads_b) = results
    assert torch.equal(value_a, value_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)
    assert (grads_a[0][masked] == 0).all() and (grads_a[0][~masked] != 0).any()


def accumulated_gradients(loss: str, images, targets, batch_size: int, steps: int):
    """The gradients (network, a and b) after each optimizer-step group, weighed as
    train_one_epoch weighs its micro-batches."""
    model, criterion = TinyNet(), criterion_for(loss, targets)
    parameters = {**dict(model.named_parameters()), **loss_parameters(criterion)}
    plan, groups, start = accumulation_plan(len(images), batch_size, steps), [], 0
    for weight, step_now in plan:
        end = min(start + batch_size, len(images))
        (criterion(model(images[start:end], raw=True), targets[start:end]) * weight).backward()
        start = end
        if step_now:
            groups.append({name: p.grad.clone() for name, p in parameters.items()})
            model.zero_grad()
            criterion.zero_grad()
    return groups


@pytest.mark.parametrize("loss", LOSSES)
def test_accumulated_gradient_equals_the_large_batch_gradient(loss):
    """Micro-batches 2+2 | 2+1 against batches 4 | 3, masks included: the same gradients (the
    AUC-margin loss's class priors are the training split's, not each micro-batch's)."""
    images, targets = torch.rand(7, 1, 12, 12), masked_targets(7)
    accumulated = accumulated_gradients(loss, images, targets, batch_size=2, steps=2)
    large = accumulated_gradients(loss, images, targets, batch_size=4, steps=1)
    assert len(accumulated) == len(large) == 2
    for group_a, group_b in zip(accumulated, large):
        for name, grad in group_a.items():
            assert torch.allclose(grad, group_b[name], atol=1e-6, rtol=0), name
            assert grad.abs().sum() > 0, name


def test_focal_and_aucm_need_binary_labels():
    for loss in LOSSES:
        with pytest.raises(ConfigError, match=f"--loss {loss} needs binary labels.*Edema"):
            validate(Config(loss=loss, uncertainty_policy_by_class=("Edema=U-MultiClass",)))
        with pytest.raises(ConfigError, match="every label"):
            validate(Config(loss=loss, uncertainty_policy="U-MultiClass"))
    validate(Config(loss="bce", uncertainty_policy="U-MultiClass"))


def test_aucm_without_libauc_says_how_to_install_it(monkeypatch):
    for name in [name for name in sys.modules if name.startswith("libauc")] + ["libauc"]:
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    monkeypatch.delitem(sys.modules, "cxr.training.aucm", raising=False)
    with pytest.raises(PipelineError, match=re.escape(LIBAUC_INSTALL)):
        criterion_for("aucm", masked_targets(4))
    assert isinstance(criterion_for("focal", masked_targets(4)), nn.Module)  # needs no libauc


# ---- PESG: parameter groups, schedule, reference point, fp16, state ----------------------------

def test_pesg_takes_the_groups_the_schedule_and_the_frozen_backbone():
    model, targets = TinyNet(), masked_targets(8)
    trainer = trainer_for("aucm", model, targets, steps_per_epoch=2, frozen_epochs=1,
                          warmup_steps=1, aucm_lr=0.05)
    optimizer = trainer.optimizer
    assert [group["name"] for group in optimizer.param_groups] == ["backbone", "head", "aucm"]
    assert [group["alpha"] is not None for group in optimizer.param_groups] == [False] * 2 + [True]
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.05, 0.05]  # frozen, warmed up
    backbone = [p.detach().clone() for p in model.backbone.parameters()]
    set_backbone_frozen(model, True)
    images = torch.rand(8, 1, 12, 12)
    run_epoch(trainer, images, targets, batch_size=4, steps=1)
    assert all(torch.equal(p, b) for p, b in zip(model.backbone.parameters(), backbone))
    head = model.head.weight.detach().clone()
    assert optimizer.T == 2
    trainer.optimizer.next_reference_point()  # the epoch's end
    # the frozen backbone keeps its weights as reference; the head's is its average
    assert all(torch.equal(r, p) for r, p in zip(optimizer.model_ref, model.backbone.parameters()))
    assert not torch.equal(optimizer.param_groups[1]["model_ref"][0], head)
    assert optimizer.T == 0 and not any(total.any() for total in optimizer.model_acc)
    set_backbone_frozen(model, False)
    run_epoch(trainer, images, targets, batch_size=4, steps=1)
    assert not torch.equal(next(model.backbone.parameters()), backbone[0])


def test_pesg_state_reloads_exactly():
    """PESG's state (momentum, reference point, running sum, step counts) and the loss's a, b,
    alpha, through a checkpoint (weights_only): the next steps are the same."""
    import io

    images, targets = torch.rand(8, 1, 12, 12), masked_targets(8)
    first = trainer_for("aucm", TinyNet(), targets, steps_per_epoch=2)
    run_epoch(first, images, targets, batch_size=4, steps=1)
    buffer = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(),
                "loss": first.criterion.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    second = trainer_for("aucm", TinyNet(seed=5), targets, steps_per_epoch=2)
    second.model.load_state_dict(saved["model"])
    second.criterion.load_state_dict(saved["loss"])
    second.optimizer.load_state_dict(saved["optimizer"])
    second.scheduler.load_state_dict(first.scheduler.state_dict())
    assert [g["alpha"] is not None for g in second.optimizer.param_groups] == [False, False, True]
    for trainer in (first, second):
        run_epoch(trainer, images.flip(0), targets.flip(0), batch_size=4, steps=1)
    for a, b in zip([*first.model.parameters(), *first.criterion.parameters()],
                    [*second.model.parameters(), *second.criterion.parameters()]):
        assert torch.equal(a, b)


def test_aucm_with_grad_scaler_steps_on_the_unscaled_gradients():
    """PESG clamps each gradient to [-1, 1]: a step on scaled gradients would differ. With
    GradScaler (fp32, scale 2^16) the steps equal the unscaled ones; under fp16 autocast
    training stays finite."""
    images, targets = torch.rand(8, 1, 12, 12), masked_targets(8)
    plain = trainer_for("aucm", TinyNet(), targets, steps_per_epoch=2)
    scaled = trainer_for("aucm", TinyNet(), targets, steps_per_epoch=2,
                         scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    for trainer in (plain, scaled):
        run_epoch(trainer, images, targets, batch_size=2, steps=2)
    for a, b in zip([*plain.model.parameters(), *plain.criterion.parameters()],
                    [*scaled.model.parameters(), *scaled.criterion.parameters()]):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)
    fp16 = trainer_for("aucm", TinyNet(), targets, steps_per_epoch=2, dtype=torch.float16,
                       scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    progress = run_epoch(fp16, images, targets, batch_size=2, steps=2)
    assert progress.global_step == 2 and fp16.scaler.get_scale() > 0
    assert all(torch.isfinite(p).all() for p in [*fp16.model.parameters(),
                                                 *fp16.criterion.parameters()])
    assert fp16.criterion.auc.a.abs().sum() > 0


# ---- DDP: two gloo processes -------------------------------------------------------------------

def ddp_process(rank: int, store: str, out: str) -> None:
    """One of two processes: its own share of the data, DDP over TinyNet, PESG; writes what it
    ends with."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # each process its own data, as ShardSampler gives it
        images, targets = torch.rand(8, 1, 12, 12), masked_targets(8, seed=rank)
        trainer = trainer_for("aucm", TinyNet(seed=rank), masked_targets(16), steps_per_epoch=2,
                              world=World(rank, rank, 2))
        trainer.net = DistributedDataParallel(trainer.model)  # takes rank 0's weights
        run_epoch(trainer, images, targets, batch_size=2, steps=2)
        trainer.optimizer.next_reference_point()
        torch.save({"loss": trainer.criterion.state_dict(), "model": trainer.model.state_dict(),
                    "reference": trainer.optimizer.model_ref}, f"{out}/rank{rank}.pth")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_end_with_the_same_a_b_alpha_and_weights(tmp_path):
    """a, b and alpha live outside the model, so DDP does not average their gradients: PESG
    all-reduces a's and b's, and alpha's step reads only them."""
    torch.multiprocessing.spawn(ddp_process, args=(str(tmp_path / "store"), str(tmp_path)),
                                nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in (0, 1))
    for key in ("loss", "model"):
        for name, value in zero[key].items():
            assert torch.equal(value, one[key][name]), (key, name)
    assert all(torch.equal(a, b) for a, b in zip(zero["reference"], one["reference"]))
    assert zero["loss"]["auc.a"].abs().sum() > 0 and zero["loss"]["auc.alpha"].abs().sum() > 0


# ---- train.py and evaluate.py: resume, offset, calibration -------------------------------------

# 32 px, epochs of 4 micro-batches in 2 optimizer steps, a checkpoint every step.
RUN_ARGS = ["--pretrained", "false", "--image_size", "32", "--batch_size", "8",
            "--accumulation_steps", "2", "--warmup_steps", "1", "--checkpoint_every_steps", "1",
            "--deterministic", "true", "--precision", "fp32", "--early_stopping_patience", "0",
            "--min_positives", "1", "--num_workers", "0", "--aucm_lr", "0.05"]
# aucm: a frozen epoch, then one that fine-tunes, to cross PESG's end of an epoch (its reference
# point) and the unfreezing; focal has no state of its own: one epoch that fine-tunes
EPOCHS = {"aucm": ("--epochs", "2", "--frozen_epochs", "1"),
          "focal": ("--epochs", "1", "--frozen_epochs", "0")}


def train_here(data_args, *extra: str) -> None:
    import train
    from cxr.cli import apply_overrides

    train.main(apply_overrides(Config(), [*data_args[0], *RUN_ARGS, *extra], "train.py"))


def train_and_keep_the_first_mid_epoch_state(data_args, name: str, loss: str, monkeypatch):
    """Train run `name`; the run folder as it stood right after its first mid-epoch checkpoint
    (what a SIGKILL just then leaves: tests/test_resume.py kills real processes) is copied to
    `name`-killed."""
    import train

    write, killed = train.save_checkpoint, data_args[1] / f"{name}-killed"

    def write_and_copy(payload, path):
        write(payload, path)
        if payload.get("in_epoch") and not killed.exists():
            shutil.copytree(path.parent, killed)

    monkeypatch.setattr(train, "save_checkpoint", write_and_copy)
    train_here(data_args, "--run_name", name, "--loss", loss, *EPOCHS[loss])
    monkeypatch.setattr(train, "save_checkpoint", write)
    return killed


@pytest.mark.parametrize("loss", LOSSES)
def test_killed_then_resumed_gives_the_uninterrupted_run(data_args, loss, monkeypatch, capsys):
    killed = train_and_keep_the_first_mid_epoch_state(data_args, loss, loss, monkeypatch)
    assert torch.load(killed / "last.pth", weights_only=True)["in_epoch"]["epoch"] == 1
    train_here(data_args, "--resume", str(killed / "last.pth"), "--loss", loss, *EPOCHS[loss])
    assert "resuming" in capsys.readouterr().out
    reference, resumed = (torch.load(path / "last.pth", weights_only=True)
                          for path in (data_args[1] / loss, killed))
    assert resumed["epoch"] == int(EPOCHS[loss][1]) and resumed["in_epoch"] is None
    for key in ("model", *(("loss",) if loss == "aucm" else ())):
        for name, value in reference[key].items():
            assert torch.allclose(value.float(), resumed[key][name].float(), atol=1e-6,
                                  rtol=0), (key, name)
    if loss == "aucm":  # PESG's reference point came back and moved on as it did
        for a, b in zip(reference["optimizer"]["model_ref"], resumed["optimizer"]["model_ref"]):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_aucm_trains_without_offset_and_evaluate_calibrates_it(data_args, capsys):
    """The aucm run of the resume test: its checkpoint's logit offset is 0 (only weighted BCE
    shifts the logit by log w), and evaluate.py's report gives the ECE of its calibrated
    scores."""
    import evaluate
    from cxr.cli import apply_overrides

    best = data_args[1] / "aucm" / "best.pth"
    if not best.exists():
        train_here(data_args, "--run_name", "aucm", "--loss", "aucm", *EPOCHS["aucm"])
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["config"]["loss"] == "aucm"
    assert torch.equal(checkpoint["model"]["logit_offset"], torch.zeros(14))
    assert set(checkpoint["loss"]) == {"auc.a", "auc.b", "auc.alpha"}
    evaluate.main(apply_overrides(Config(), [*data_args[0], "--checkpoint", str(best),
                                             "--num_workers", "0", "--min_positives", "1"],
                                  "evaluate.py"))
    report = json.loads((best.parent / "eval_test.json").read_text())
    assert report["calibration"]["mean_ece"] is not None
    assert "mean ECE" in capsys.readouterr().out


def test_bce_keeps_its_offset_and_its_criterion():
    """--loss bce is unchanged: MaskedBCE, the log(pos_weight) offset, no "loss" key."""
    criterion = make_criterion(Config(), torch.full((14,), 2.0), (False,) * 14,
                               masked_targets(4).numpy(), torch.device("cpu"))
    assert type(criterion) is MaskedBCE
    assert loss_offsets("bce", [2.0] * 14, (False,) * 14) == pytest.approx([0.6931472] * 14)
    assert not loss_offsets("focal", [2.0] * 14, (False,) * 14).any()
