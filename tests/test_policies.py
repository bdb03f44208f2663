"""Uncertainty policies applied at load time from the raw columns, and the U-MultiClass head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from config import Config
from conftest import shared
from cxr.data.labels import LABELS, UNCERTAINTY_POLICIES, class_policies, multiclass_flags, \
    parse_raw_labels, positive_class_weights, raw_column, training_targets
from cxr.data.splits import read_split
from cxr.errors import ConfigError
from cxr.training.losses import MaskedBCE, masked_bce
from dataset import make_dataset
from model_architecture import CheXpertNet, model_from_checkpoint


@pytest.fixture(scope="module")
def real_raw():
    """The real CheXpert train.csv's labels as preprocess.py keeps them: '<label> (raw)'."""
    frame = pd.read_csv(shared("chexpert-train-labels/train.csv.gz"), dtype=str,
                        keep_default_na=False)
    return parse_raw_labels(frame).rename(columns=raw_column)


def targets_for(raw: pd.DataFrame, policy: str, seed: int = 0) -> pd.DataFrame:
    values = training_targets(raw, class_policies(policy), seed)
    return pd.DataFrame(values, columns=list(LABELS), index=raw.index)


@pytest.mark.parametrize("policy", UNCERTAINTY_POLICIES)
def test_each_policy_on_the_real_train_csv(real_raw, policy):
    targets = targets_for(real_raw, policy)
    raw = real_raw.rename(columns=lambda c: c.replace(" (raw)", ""))
    uncertain, blank = raw == -1, raw.isna()
    assert int(uncertain["Atelectasis"].sum()) == 33_739  # published count
    # certain labels are kept, blanks are negatives, whatever the policy
    assert (targets[raw == 1] == 1).sum().sum() == (raw == 1).sum().sum()
    assert (targets[raw == 0] == 0).sum().sum() == (raw == 0).sum().sum()
    assert (targets[blank] == 0).sum().sum() == blank.sum().sum()
    at_uncertain = targets.to_numpy()[uncertain.to_numpy()]
    expected = {"U-Ones": 1.0, "U-Zeros": 0.0, "U-MultiClass": 2.0}
    if policy in expected:
        assert (at_uncertain == expected[policy]).all()
    elif policy == "U-Ignore":
        assert np.isnan(at_uncertain).all()
        assert int(targets.isna().sum().sum()) == int(uncertain.sum().sum())  # only those
    else:
        low, high = (0.55, 0.85) if policy == "U-Ones-LSR" else (0.0, 0.30)
        assert (at_uncertain >= low).all() and (at_uncertain <= high).all()
        assert at_uncertain.std() > 0.05  # spread over the range, not one value
        assert np.array_equal(targets.to_numpy(), targets_for(real_raw, policy).to_numpy())
        assert not np.array_equal(targets.to_numpy(), targets_for(real_raw, policy, 1).to_numpy())


def test_per_class_policies_and_their_errors(real_raw):
    policies = class_policies("U-Zeros", ("Atelectasis=U-Ones", "Edema = U-Ignore"))
    assert policies["Atelectasis"] == "U-Ones" and policies["Edema"] == "U-Ignore"
    assert policies["Cardiomegaly"] == "U-Zeros"
    head = real_raw.head(5000)
    targets = pd.DataFrame(training_targets(head, policies, 0), columns=list(LABELS))
    uncertain = (head[raw_column("Atelectasis")] == -1).to_numpy()
    assert (targets["Atelectasis"][uncertain] == 1).all()
    assert targets["Edema"][(head[raw_column("Edema")] == -1).to_numpy()].isna().all()
    assert (targets["Cardiomegaly"][(head[raw_column("Cardiomegaly")] == -1).to_numpy()] == 0).all()
    with pytest.raises(ConfigError, match="unknown label 'Atelektasis'"):
        class_policies("U-Ones", ("Atelektasis=U-Ones",))
    with pytest.raises(ConfigError, match="policy must be one of"):
        class_policies("U-Ones", ("Edema=U-Twos",))
    assert multiclass_flags(class_policies("U-Ones", ("Edema=U-MultiClass",))) == tuple(
        label == "Edema" for label in LABELS)


def test_positive_weights_ignore_masked_and_uncertain_class_targets():
    targets = np.array([[1, 0.7, np.nan, 2], [0, 0.2, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]],
                       dtype=np.float32)
    weights = positive_class_weights(targets, max_weight=50.0)
    assert weights.tolist() == [3.0, 3.0, 2.0, 2.0]  # neg / pos over the counted targets


def test_changing_policy_needs_no_new_preprocessing(data_args):
    options, _ = data_args
    cfg = Config(data_dir=options[1], image_size=32)
    frame = read_split(cfg.splits_dir / "train.csv")
    frame.loc[frame.index[:3], raw_column("Edema")] = -1  # make sure some labels are uncertain
    ones = make_dataset(frame, cfg, cfg.data_dir, False, "t", policies=class_policies("U-Ones"))
    ignore = make_dataset(frame, cfg, cfg.data_dir, False, "t",
                          policies=class_policies("U-Ignore"))
    column = LABELS.index("Edema")
    assert (ones.targets[:3, column] == 1).all() and ignore.targets[:3, column].isnan().all()
    reference = make_dataset(frame, cfg, cfg.data_dir, False, "t")  # evaluation: uncertain
    assert reference.targets[:3, column].isnan().all()  # masked, whatever the policy
    assert reference.targets.isnan().sum() == (frame[[raw_column(l) for l in LABELS]] == -1).sum().sum()


def test_multiclass_head_gives_one_logit_per_label_from_positive_against_negative():
    torch.manual_seed(0)
    flags = tuple(label in ("Atelectasis", "Edema") for label in LABELS)
    model = CheXpertNet(len(LABELS), multiclass=flags).eval()
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    raw, logits = model(images, raw=True), model(images)
    assert raw.shape == (3, len(LABELS) + 4) and logits.shape == (3, len(LABELS))
    edema, cardiomegaly = LABELS.index("Edema"), LABELS.index("Cardiomegaly")
    start = int(model.output_start[edema])  # Edema's outputs: negative, positive, uncertain
    assert start == edema and int(model.output_start[LABELS.index("Atelectasis")]) == 8 + 2
    restricted = F.softmax(raw[:, start:start + 2], dim=1)[:, 1]  # p(pos) among (neg, pos)
    assert torch.allclose(torch.sigmoid(logits[:, edema]), restricted, atol=1e-6)
    assert torch.equal(logits[:, cardiomegaly], raw[:, cardiomegaly])  # before any 3-way label
    assert torch.equal(logits[:, edema + 1], raw[:, start + 3])  # Consolidation, after Edema's 3


def test_multiclass_loss_is_cross_entropy_there_and_bce_elsewhere():
    flags = (True, False)
    outputs = torch.randn(4, 4)  # label 0: 3 outputs, label 1: 1 output
    targets = torch.tensor([[0, 1], [1, 0], [2, float("nan")], [float("nan"), 1]])
    loss = MaskedBCE(torch.ones(2), flags)(outputs, targets)
    cross = F.cross_entropy(outputs[:3, :3], torch.tensor([0, 1, 2]), reduction="sum")
    bce = masked_bce(outputs[:, 3:], targets[:, 1:]) * 4  # its sum over the 4 x 1 targets
    assert torch.isclose(loss, (cross + bce) / targets.numel())


def test_a_multiclass_checkpoint_rebuilds_its_head(tmp_path):
    import dataclasses
    cfg = Config(uncertainty_policy="U-MultiClass", pretrained=False)
    model = CheXpertNet(len(LABELS), multiclass=(True,) * len(LABELS))
    checkpoint = {"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                  "labels": list(LABELS), "normalization": {"mean": 0.5, "std": 0.25}}
    rebuilt, trained = model_from_checkpoint(checkpoint)
    assert trained.uncertainty_policy == "U-MultiClass"
    assert rebuilt.head.out_features == 3 * len(LABELS)


@pytest.mark.parametrize("policy", ["U-MultiClass", "U-Ignore"])
def test_training_runs_under_the_policy_from_the_same_split_files(data_args, policy):
    import train
    options, models = data_args
    cfg = Config(data_dir=options[1], models_dir=str(models), run_name=f"policy-{policy}",
                 uncertainty_policy=policy, pretrained=False, image_size=32, batch_size=8,
                 epochs=1, frozen_epochs=0, num_workers=0, early_stopping_patience=0)
    train.main(cfg)
    checkpoint = torch.load(models / cfg.run_name / "best.pth", weights_only=True)
    model, trained = model_from_checkpoint(checkpoint)
    assert trained.uncertainty_policy == policy
    assert model.head.out_features == len(LABELS) * (3 if policy == "U-MultiClass" else 1)
    row = checkpoint["history"][0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
