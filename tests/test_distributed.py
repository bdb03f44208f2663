"""DistributedDataParallel through torchrun: two gloo processes on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from config import Config
from conftest import ROOT
from cxr.data.labels import LABELS
from cxr.data.loading import make_loader
from cxr.evaluation.metrics import per_class_auc
from cxr.evaluation.predictions import predict_logits
from dataset import make_dataset
from model_architecture import model_from_checkpoint


def test_two_gloo_processes_train_and_validate_on_the_whole_val_split(data_args):
    options, models = data_args
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "train.py", *options, "--run_name", "ddp",
               "--pretrained", "false", "--image_size", "32", "--batch_size", "4",
               "--epochs", "2", "--frozen_epochs", "1", "--warmup_steps", "2",
               "--num_workers", "0", "--precision", "fp32"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x 2 process(es), effective batch 16" in result.stdout
    assert result.stdout.count("train: wrote") == 1  # rank 0 alone reports and writes
    assert len([line for line in result.stdout.splitlines() if line.startswith("epoch ")]) == 2

    # the checkpoint loads into a plain (not DDP) model ...
    checkpoint = torch.load(models / "ddp" / "best.pth", weights_only=True)
    model, trained = model_from_checkpoint(checkpoint)
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    # ... and one process evaluating it on the whole val split gets the AUCs the two
    # processes computed from their gathered shards
    frame = pd.read_csv(models.parent / "data" / "splits" / "val.csv")
    cfg = Config(data_dir=str(models.parent / "data"), num_workers=0, batch_size=3,
                 channels_last=False)
    loader = make_loader(make_dataset(frame, trained, cfg.data_dir, False, "val"), cfg,
                         train=False, device=torch.device("cpu"))
    logits, targets, _ = predict_logits(model, loader, torch.device("cpu"), None, False, "val")
    single = per_class_auc(targets.numpy(), torch.sigmoid(logits).numpy(), LABELS)
    assert checkpoint["history"][-1]["n_val"] == len(frame)
    evaluable = [label for label, auc in single.items() if auc is not None]
    assert evaluable
    for label in LABELS:
        if single[label] is None:
            assert checkpoint["val_auc"][label] is None
        else:
            assert checkpoint["val_auc"][label] == pytest.approx(single[label], abs=1e-6), label
