"""train.py's TensorBoard events and curves.png: the tags and their steps, PR curves over the
labelled images only, and a killed run whose resume continues the same curves, no step twice."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import STORE_EVERYTHING_SIZE_GUIDANCE, \
    EventAccumulator
from tensorboard.util.tensor_util import make_ndarray
from test_resume import TRAIN_ARGS, interrupt_after_first_checkpoint
from torch.utils.tensorboard import SummaryWriter

from config import Config
from cxr.data.labels import LABELS
from cxr.training.tensorboard_log import GRID_COLUMNS, GRID_IMAGES, log_pr_curves

STEPS_PER_EPOCH, EPOCHS = 4, 2  # TRAIN_ARGS: 8 micro-batches of 4 in 4 optimizer steps, 2 epochs
PER_STEP = ("train/loss", "train/lr_head", "train/lr_backbone", "train/images_per_s")
PER_EPOCH = ("train/epoch_loss", "val/loss", "val/mean_auc")


def train_here(data_args, run_name: str, *extra: str) -> None:
    """train.py's main in this process (no interpreter start-up to pay)."""
    import train
    from cxr.cli import apply_overrides

    train.main(apply_overrides(Config(), [*data_args[0], *TRAIN_ARGS, "--run_name", run_name,
                                          "--num_workers", "0", *extra], "train.py"))


def read_events(run_dir, purge: bool = True) -> EventAccumulator:
    """Every event of the folder's event files, nothing sampled away; `purge` False ignores
    the purge a resumed launch asks for (what a reader sees without it)."""
    return EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE,
                            purge_orphaned_data=purge).Reload()


def steps_of(events: EventAccumulator) -> dict[str, list[int]]:
    """Each scalar, PR-curve and image tag's steps, in file order."""
    scalars = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    tensors = {tag: [e.step for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}
    images = {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
    return {**scalars, **tensors, **images}


def values_of(events: EventAccumulator, tag: str) -> list[float]:
    return [e.value for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(data_args):
    """An uninterrupted run's folder."""
    train_here(data_args, "tb-reference")
    return data_args[1] / "tb-reference"


def test_events_hold_each_step_each_epoch_the_best_pr_curves_and_the_image_grid(reference):
    events, metrics = read_events(reference), pd.read_csv(reference / "metrics.csv")
    steps = steps_of(events)
    every_step = list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    epoch_ends = [epoch * STEPS_PER_EPOCH for epoch in range(1, EPOCHS + 1)]
    for tag in PER_STEP:
        assert steps[tag] == every_step, tag
    for tag in PER_EPOCH:
        assert steps[tag] == epoch_ends, tag
    assert values_of(events, "val/mean_auc") == pytest.approx(metrics["val_mean_auc"].tolist())
    assert values_of(events, "train/epoch_loss") == pytest.approx(metrics["train_loss"].tolist())
    frozen, fine_tune = np.split(values_of(events, "train/lr_backbone"), [STEPS_PER_EPOCH])
    assert (frozen == 0).all() and (fine_tune > 0).all()  # the backbone trains from epoch 2

    # one AUC curve per class with an AUC, tagged by its name
    scored = [label for label in LABELS if metrics[f"auc {label}"].notna().all()]
    assert scored and "val_auc/Pleural Effusion" in steps
    assert sorted(tag for tag in steps if tag.startswith("val_auc/")) == \
        sorted(f"val_auc/{label}" for label in scored)
    for label in scored:
        assert steps[f"val_auc/{label}"] == epoch_ends
        assert values_of(events, f"val_auc/{label}") == \
            pytest.approx(metrics[f"auc {label}"].tolist())

    # PR curves of the same classes at every new best epoch
    auc = metrics["val_mean_auc"].tolist()
    best_steps = [end for i, end in enumerate(epoch_ends) if auc[i] > max([-1.0, *auc[:i]])]
    assert best_steps
    assert sorted(tag for tag in steps if tag.startswith("val_pr/")) == \
        sorted(f"val_pr/{label}" for label in scored)
    for label in scored:
        assert steps[f"val_pr/{label}"] == best_steps, label

    # the grid of augmented training images, at step 0
    (grid,) = events.Images("train/augmented_images")
    side, rows = 32 + 2, GRID_IMAGES // GRID_COLUMNS  # make_grid pads 2 px
    assert grid.step == 0 and (grid.width, grid.height) == (GRID_COLUMNS * side + 2,
                                                            rows * side + 2)

    curves = reference / "curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(reference.glob(".*.tmp"))  # written atomically, nothing left behind


def test_pr_curves_count_only_the_labelled_images(tmp_path):
    """An uncertain (masked, NaN) label is left out of its class's curve, not counted negative;
    a class with one label value, or none, has no curve."""
    targets = np.full((6, len(LABELS)), np.nan)
    edema, cardiomegaly = LABELS.index("Edema"), LABELS.index("Cardiomegaly")
    targets[:, edema] = [1, 0, np.nan, 1, np.nan, 0]
    targets[:, cardiomegaly] = 0.0
    probabilities = np.random.default_rng(0).uniform(size=targets.shape)
    with SummaryWriter(str(tmp_path)) as writer:
        log_pr_curves(writer, 3, targets, probabilities)
    events = read_events(tmp_path)
    assert events.Tags()["tensors"] == ["val_pr/Edema"]
    (curve,) = events.Tensors("val_pr/Edema")
    tp, fp, tn, fn = make_ndarray(curve.tensor_proto)[:4, 0]  # at threshold 0: all positive
    assert curve.step == 3 and (tp, fp, tn, fn) == (2, 2, 0, 0)


def test_a_killed_run_resumes_the_same_curves_with_no_step_twice(data_args, reference):
    """Killed once a checkpoint newer than the one it resumes from was written: the events of
    the steps in between were flushed and are logged again after the resume; purge_step hides
    the first copies."""
    run_dir = data_args[1] / "tb-killed"
    last, older = run_dir / "last.pth", run_dir / "older.pth"

    def kill_after_a_newer_checkpoint(process):
        os.link(last, older)  # keeps this checkpoint: the next one replaces last.pth's file
        deadline = time.monotonic() + 300
        while os.stat(last).st_ino == os.stat(older).st_ino and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)

    code, stdout = interrupt_after_first_checkpoint(data_args, "tb-killed",
                                                    kill_after_a_newer_checkpoint)
    assert code == -signal.SIGKILL, stdout
    resume_step = torch.load(older, weights_only=True)["global_step"]
    assert torch.load(last, weights_only=True)["global_step"] > resume_step
    os.replace(older, last)  # resume from the older checkpoint
    train_here(data_args, "tb-killed", "--resume", "auto")

    unpurged = steps_of(read_events(run_dir, purge=False))
    assert any(len(steps) > len(set(steps)) for steps in unpurged.values())  # there were copies
    events, uninterrupted = read_events(run_dir), read_events(reference)
    assert steps_of(events) == steps_of(uninterrupted)
    for tag in ("train/loss", "train/lr_head", "val/mean_auc", "val/loss"):
        assert values_of(events, tag) == pytest.approx(values_of(uninterrupted, tag)), tag


def test_a_resumed_launch_writes_its_events_file_in_a_later_second(tmp_path):
    """TensorBoard reads event files in name order (creation second, host, process id): a
    launch resumed within the second of the one it continues waits, so it is read after it."""
    from cxr.training.tensorboard_log import wait_for_a_later_second
    now = int(time.time())
    (tmp_path / f"events.out.tfevents.{now}.host.99999.0").touch()
    wait_for_a_later_second(tmp_path)
    assert int(time.time()) > now
    start = time.monotonic()
    wait_for_a_later_second(tmp_path / "elsewhere")  # no event file: no wait
    assert time.monotonic() - start < 0.01
