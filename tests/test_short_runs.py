"""A recipe that scales down to a short run (cxr/training/schedule.py): the warm-up a share of the
run, early stopping counted only after it, and a val split too small to rank epochs keeping the last
epoch. The runs: 32 px, 4 optimizer steps an epoch on the 40-patient dataset (8 val patients)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from config import Config
from cxr.data.labels import LABELS
from model_architecture import CheXpertNet

STEPS_PER_EPOCH = 4  # 32 train images, batch 4, 2 accumulation steps
SHORT_RUN = ["--pretrained", "false", "--image_size", "32", "--batch_size", "4",
             "--accumulation_steps", "2", "--num_workers", "0", "--precision", "fp32"]
# learning rates of 0 and the backbone (and its BatchNorm) frozen: the val AUC never improves
# after epoch 1, so any stop is early stopping's and the best epoch is 1
FLAT = ["--lr_head", "0", "--lr_backbone", "0", "--frozen_epochs", "5", "--epochs", "5"]


def train_here(data_args, run_name: str, *extra: str) -> None:
    """train.py's main in this process, on the short run's settings."""
    import train
    from cxr.cli import apply_overrides

    train.main(apply_overrides(Config(), [*data_args[0], *SHORT_RUN, "--run_name", run_name,
                                          *extra], "train.py"))


def lr_trace(cfg: Config, steps_per_epoch: int) -> dict[str, list[float]]:
    """The learning rate each optimizer step of the whole run is taken with, per group."""
    from train import make_optimizer, make_scheduler

    optimizer = make_optimizer(CheXpertNet(), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    trace = {"head": [], "backbone": []}
    for _ in range(cfg.epochs * steps_per_epoch):
        for group in optimizer.param_groups:
            trace[group["name"]].append(group["lr"])
        optimizer.step()
        scheduler.step()
    return trace


def kept_epoch(run_dir) -> int:
    return torch.load(run_dir / "best.pth", weights_only=True)["history"][-1]["epoch"]


def epoch_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("epoch ")]


# ---- the warm-up -------------------------------------------------------------------------------

@pytest.mark.parametrize("frozen_epochs", [0, 1])
def test_a_short_run_reaches_its_learning_rates_after_a_tenth_of_its_steps(frozen_epochs):
    """The NIH run of issue 26: 10 epochs of 13 steps. With 100 warm-up steps the head was
    still at 0.61 of its rate at epoch 5 and the backbone at 0.49."""
    cfg = Config(epochs=10, frozen_epochs=frozen_epochs, lr_head=1e-3, lr_backbone=1e-4)
    trace, spe = lr_trace(cfg, 13), 13
    start = frozen_epochs * spe  # the backbone trains from here
    head_warmup, backbone_warmup = 13, 13 if frozen_epochs == 0 else 12  # 10 % of 130, 117
    head, backbone = trace["head"], trace["backbone"]
    assert head[:head_warmup] == pytest.approx([1e-3 * (i + 1) / head_warmup
                                                for i in range(head_warmup)])
    assert backbone[:start] == [0.0] * start  # frozen: nothing spent of its warm-up
    assert backbone[start:start + backbone_warmup] == pytest.approx(
        [1e-4 * (i + 1) / backbone_warmup for i in range(backbone_warmup)])
    # at its target at the end of its warm-up, then on the cosine from it to 0 at the last step
    assert head[head_warmup - 1] == pytest.approx(1e-3)
    assert backbone[start + backbone_warmup - 1] == pytest.approx(1e-4)
    for lrs, target, begin, warmup in ((head, 1e-3, 0, head_warmup),
                                       (backbone, 1e-4, start, backbone_warmup)):
        decay = np.arange(begin + warmup, 130)
        expected = 0.5 * (1 + np.cos(np.pi * (decay - begin - warmup) / (130 - begin - warmup)))
        assert lrs[begin + warmup:] == pytest.approx(target * expected)
    epoch_5 = 4 * spe  # epoch 5's first step: 0.75-0.85 of the targets (100 steps: 0.40-0.53)
    assert head[epoch_5] > 0.74e-3 and backbone[epoch_5] > 0.74e-4
    from cxr.training.schedule import warmup_plan
    assert warmup_plan(cfg, spe) == {"head": head_warmup, "backbone": backbone_warmup}


def test_a_long_run_keeps_100_steps_and_an_explicit_warm_up_is_taken_as_given():
    from cxr.training.schedule import warmup_plan

    assert warmup_plan(Config(epochs=5, frozen_epochs=1), 5000) == {"head": 100, "backbone": 100}
    # the demo (make demo): 8 epochs of ~68 steps with --warmup_steps 50, unchanged
    assert warmup_plan(Config(epochs=8, warmup_steps=50), 68) == {"head": 50, "backbone": 50}
    trace = lr_trace(Config(epochs=3, frozen_epochs=1, warmup_steps=6), STEPS_PER_EPOCH)
    assert trace["head"][5] == pytest.approx(1e-3) and trace["head"][4] < 1e-3
    assert trace["backbone"][4 + 5] == pytest.approx(1e-4) and trace["backbone"][4 + 4] < 1e-4


def test_a_short_run_prints_and_records_its_warm_up_and_resumes_with_it(data_args, capsys):
    """3 epochs of 4 steps: the head warms up over 2 steps (10 % of 12), the backbone over 1
    (of 8); the epoch-end rates are the cosine's. Resumed with more epochs, the run keeps the
    warm-up it began with."""
    train_here(data_args, "warmup", "--epochs", "3", "--frozen_epochs", "1")
    output = capsys.readouterr().out
    run = data_args[1] / "warmup"
    metrics = pd.read_csv(run / "metrics.csv")

    def cosine(step, warmup, start):  # the rate of the next step, once warmed up
        return 0.5 * (1 + np.cos(np.pi * (step - start - warmup) / (12 - start - warmup)))

    assert metrics["lr_head"].tolist() == pytest.approx(
        [1e-3 * cosine(step, 2, 0) for step in (4, 8, 12)], abs=1e-12)
    assert metrics["lr_backbone"].tolist()[1:] == pytest.approx(
        [1e-4 * cosine(step, 1, 4) for step in (8, 12)], abs=1e-12)
    assert "train: warm-up: head 2, backbone 1 optimizer steps (10% of the 12 and 8 steps" in output
    assert json.loads((run / "run_info.json").read_text())["warmup"] == {"head": 2, "backbone": 1}

    train_here(data_args, "warmup", "--resume", "auto", "--epochs", "4")
    output = capsys.readouterr().out
    assert "train: warm-up: head 2, backbone 1 optimizer steps" in output  # not 2 and 2
    assert len(pd.read_csv(run / "metrics.csv")) == 4


# ---- early stopping after the warm-up ----------------------------------------------------------

def test_early_stopping_counts_only_the_epochs_after_the_warm_up(data_args, capsys):
    """Patience 1 and a warm-up of 10 steps (it ends in epoch 3): epoch 2, still warming up,
    does not count, epoch 3 does. Before, the run stopped after epoch 2."""
    train_here(data_args, "patience", *FLAT, "--early_stopping_patience", "1",
               "--warmup_steps", "10", "--min_positives", "1")
    output = capsys.readouterr().out
    assert len(epoch_lines(output)) == 3
    assert "early stop: no better val mean AUC for 1 epochs after the warm-up" in output
    assert kept_epoch(data_args[1] / "patience") == 1


# ---- a val split too small to rank epochs ------------------------------------------------------

def test_the_too_small_rule_counts_the_classes_trained_that_val_can_rank():
    from cxr.training.schedule import val_ranking

    train = np.zeros((50, len(LABELS)))
    val = np.zeros((30, len(LABELS)))
    four = [LABELS.index(label) for label in ("Atelectasis", "Cardiomegaly", "Edema",
                                              "Pleural Effusion")]
    train[:5, four] = 1  # four classes with positives in train; the other ten have none
    val[:12, four[:2]] = 1  # val: 12 positives and 18 negatives of two of them, 3 of the others
    val[:3, four[2:]] = 1
    val[:, LABELS.index("Fracture")] = np.r_[np.ones(15), np.zeros(15)]  # not trained: ignored
    ranking = val_ranking(train, val, LABELS, Config())
    assert ranking.ranked == ("Cardiomegaly", "Atelectasis")  # in LABELS' order
    assert len(ranking.trained) == 4 and not ranking.too_small and ranking.ranks  # 2 of 4: half
    val[:, four[1]] = np.nan  # one class masked out: 1 of 4
    ranking = val_ranking(train, val, LABELS, Config())
    assert ranking.too_small and not ranking.ranks
    assert ("of the 4 classes with positives in train, 1 (Atelectasis) has at least 10 "
            "positives and 10 negatives among its 30 images, fewer than half (2)") in ranking.line()
    assert ranking.record()["best_pth"] == "last epoch"
    told = val_ranking(train, val, LABELS, Config(select_on_small_val=True))
    assert told.too_small and told.ranks and "anyway" in told.line()


def test_a_val_split_too_small_to_rank_epochs_keeps_the_last_epoch(data_args, capsys):
    """8 val patients, --min_positives 10: no class reaches it. The run says so, trains every
    epoch (no early stop) and keeps the last; before, it stopped after epoch 1 (its val mean
    AUC undefined, never better) keeping epoch 1."""
    train_here(data_args, "small-val", *FLAT, "--epochs", "3", "--frozen_epochs", "3",
               "--early_stopping_patience", "1", "--warmup_steps", "1")
    output = capsys.readouterr().out
    run = data_args[1] / "small-val"
    assert len(epoch_lines(output)) == 3 and "(early stop:" not in output
    assert kept_epoch(run) == 3
    assert ("train: the val split is too small to rank epochs: of the 4 classes with "
            "positives in train, 0 (none) have at least 10 positives and 10 negatives among its "
            "8 images, fewer than half (2)") in output
    assert "best.pth is the last epoch and early stopping is off" in output
    selection = json.loads((run / "run_info.json").read_text())["epoch_selection"]
    assert selection["best_pth"] == "last epoch" and selection["val_too_small"]
    assert torch.load(run / "best.pth", weights_only=True)["epoch_selection"] == selection

    # told to rank on it anyway: the usual rules; with no val mean AUC no epoch is better, so
    # the run stops after epoch 1, which best.pth keeps
    train_here(data_args, "small-val-ranked", *FLAT, "--epochs", "3", "--frozen_epochs", "3",
               "--early_stopping_patience", "1", "--warmup_steps", "1",
               "--select_on_small_val", "true")
    output = capsys.readouterr().out
    assert "ranking epochs on it anyway" in output and len(epoch_lines(output)) == 1
    assert kept_epoch(data_args[1] / "small-val-ranked") == 1
