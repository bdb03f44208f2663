"""What the numbers are measured against: uncertain val labels masked for every policy, training's
val AUC equal to evaluate.py's, the positive-weight offset removed from the probabilities,
thresholds bound to the weights and TTA they were fitted for, and data-building options refused
where they would change nothing.

One small run on a dataset whose training CSV holds uncertain (-1) labels, trained and evaluated
once (32 px, 2 epochs, random weights), serves every test here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import cxr.evaluation.predictions as evaluation
import evaluate
import make_splits
import predict
import preprocess
import train
from config import Config
from conftest import ROOT, make_root, row, tiny_checkpoint
from cxr.cli import run_cli
from cxr.data.augment import TTAModel
from cxr.data.labels import LABELS, UNCERTAINTY_POLICIES, class_policies, evaluation_targets, \
    positive_class_weights, training_targets
from cxr.data.splits import read_split
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.calibration import calibrated_probs
from cxr.inference.predictor import load_predictor, predict_sources
from cxr.training.checkpoint import checkpoint_warnings, load_checkpoint, model_id
from cxr.training.losses import MaskedBCE
from dataset import check_data_options, make_dataset
from model_architecture import model_from_checkpoint

FOUR = ("Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion")


def labels_row(split: str, patient: int, rng: np.random.Generator, uncertain: bool) -> dict:
    choices = ["1.0", "0.0", "-1.0", ""] if uncertain else ["1.0", "0.0"]
    weights = [0.35, 0.3, 0.2, 0.15] if uncertain else [0.4, 0.6]
    return row(split, patient, **{label.replace(" ", "_"): rng.choice(choices, p=weights)
                                  for label in FOUR})


@pytest.fixture(scope="module")
def uncertain_data(tmp_path_factory):
    """80 training patients with uncertain labels (so the val split has some), 16 test patients;
    built with --frontal_only false, which a checkpoint must then record."""
    tmp = tmp_path_factory.mktemp("uncertain")
    rng = np.random.default_rng(5)
    root = make_root(tmp, [labels_row("train", p, rng, True) for p in range(80)],
                     [labels_row("valid", 200 + p, rng, False) for p in range(16)])
    cfg = Config(data_root=str(root), data_dir=str(tmp / "data"), models_dir=str(tmp / "models"),
                 val_fraction=0.3, stats_sample=10, frontal_only=False, pretrained=False,
                 image_size=32, batch_size=8, accumulation_steps=1, epochs=2, frozen_epochs=1,
                 warmup_steps=2, num_workers=0, device="cpu", precision="fp32",
                 early_stopping_patience=0, min_positives=3, bootstrap_resamples=50)
    preprocess.main(cfg)
    make_splits.main(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(uncertain_data):
    """A U-Ones run trained and evaluated: its run folder."""
    cfg = dataclasses.replace(uncertain_data, run_name="u-ones", frontal_only=True)  # ignored:
    train.main(cfg)  # called from Python, no option counts as given on the command line
    evaluate.main(dataclasses.replace(cfg, checkpoint=str(cfg.run_dir / "best.pth")))
    return cfg.run_dir


def val_predictions(run_dir, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """best.pth's label logits (float64) on the val split, as evaluate.py makes them, and the
    targets they are scored against."""
    path, cpu = run_dir / "best.pth", torch.device("cpu")
    model, checkpoint, trained_cfg = evaluation.load_model(path, cfg, cpu,
                                                           rebuild=model_from_checkpoint)
    preds = evaluation.predict_split(model, "val", path, checkpoint, trained_cfg, cfg, cpu,
                                     make_dataset=make_dataset)
    return preds.logits, preds.targets


# ---- 1. the val split's reference standard ------------------------------------------------------

def test_val_is_scored_against_its_raw_labels_with_uncertain_masked(trained, uncertain_data):
    val = read_split(uncertain_data.splits_dir / "val.csv")
    uncertain = {label: int((val[f"{label} (raw)"] == -1).sum()) for label in LABELS}
    assert all(uncertain[label] > 0 for label in FOUR)
    metrics = pd.read_csv(trained / "metrics.csv")
    assert all((metrics[f"masked {label}"] == uncertain[label]).all() for label in LABELS)
    report = json.loads((trained / "eval_val.json").read_text())
    assert report["masked_uncertain"] == uncertain
    assert report["image"]["classes"]["Edema"]["masked"] == uncertain["Edema"]
    thresholds = json.loads((trained / "thresholds.json").read_text())
    assert thresholds["masked_uncertain"] == uncertain
    logits, targets = val_predictions(trained, uncertain_data)
    assert np.array_equal(np.isnan(targets), np.isnan(evaluation_targets(val)))
    best = metrics.loc[metrics["val_mean_auc"].idxmax()]
    for label in FOUR:
        keep = ~np.isnan(targets[:, LABELS.index(label)])
        masked_auc = roc_auc_score(targets[keep, LABELS.index(label)],
                                   logits[keep, LABELS.index(label)])
        assert best[f"auc {label}"] == pytest.approx(masked_auc, abs=1e-12)
        assert report["auc"][label] == pytest.approx(masked_auc, abs=1e-12)


def test_every_policy_and_preprocessing_is_scored_on_the_same_reference(uncertain_data, tmp_path):
    frame = read_split(uncertain_data.splits_dir / "val.csv")
    reference = None
    for policy in UNCERTAINTY_POLICIES:  # the val targets whatever the training policy
        cfg = dataclasses.replace(uncertain_data, uncertainty_policy=policy)
        targets = make_dataset(frame, cfg, cfg.data_dir, False, "val").targets.numpy()
        reference = targets if reference is None else reference
        assert np.array_equal(targets, reference, equal_nan=True), policy
    zeros = dataclasses.replace(uncertain_data, data_dir=str(tmp_path / "zeros"),
                                uncertainty_policy="U-Zeros")
    preprocess.main(zeros)
    make_splits.main(zeros)
    zeros_frame = read_split(zeros.splits_dir / "val.csv")
    pd.testing.assert_frame_equal(zeros_frame, frame)  # preprocess.py does not read the policy
    zeros_targets = make_dataset(zeros_frame, zeros, zeros.data_dir, False, "val").targets
    assert np.array_equal(zeros_targets.numpy(), reference, equal_nan=True)
    label_columns = frame[list(FOUR)].to_numpy(dtype=float)  # the columns are that reference
    assert np.array_equal(label_columns, reference[:, [LABELS.index(l) for l in FOUR]],
                          equal_nan=True)


# ---- 5. training's val AUC is evaluate.py's ------------------------------------------------------

def test_training_val_auc_equals_evaluate_val_auc_of_that_checkpoint(trained):
    metrics = pd.read_csv(trained / "metrics.csv")
    checkpoint = load_checkpoint(trained / "best.pth")
    epoch = metrics[metrics["epoch"] == checkpoint["epoch"]].iloc[0]
    report = json.loads((trained / "eval_val.json").read_text())
    assert report["epoch"] == checkpoint["epoch"]
    for label in LABELS:
        if report["auc"][label] is None:
            assert pd.isna(epoch[f"auc {label}"])
        else:
            assert epoch[f"auc {label}"] == pytest.approx(report["auc"][label], abs=1e-12)
    assert epoch["val_mean_auc"] == pytest.approx(report["mean_auc"], abs=1e-12)
    assert epoch["mean_auc_classes"] == len(report["image"]["means"]["all"]["classes"])


class BigLogits(torch.nn.Module):
    """Logits above 16.7, where a float32 sigmoid is exactly 1.0: distinct, and ranked right."""

    def forward(self, images):
        return 20.0 + images.float().mean(dim=(1, 2, 3))[:, None].repeat(1, len(LABELS))


def test_val_auc_ranks_float64_logits_without_false_ties():
    images = torch.arange(8, dtype=torch.uint8).repeat_interleave(16).view(8, 1, 4, 4)
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float32)[:, None]
    targets = targets.repeat(1, len(LABELS))
    model = BigLogits()
    trainer = train.Trainer(model, model, MaskedBCE(), None, None,
                            torch.amp.GradScaler("cpu", enabled=False),
                            Config(min_positives=1, channels_last=False), torch.device("cpu"),
                            None)
    val = train.validation_metrics(trainer, [(images, targets)], "validate")
    assert torch.sigmoid(model(images)).unique().tolist() == [1.0]  # float32 would tie them all
    assert val["val_mean_auc"] == 1.0 and val["val_auc"]["Edema"] == 1.0


# ---- 2. the positive-weight offset ---------------------------------------------------------------

def test_checkpoint_holds_pos_weight_and_the_offset_is_removed_from_the_logits(trained,
                                                                              uncertain_data):
    checkpoint = load_checkpoint(trained / "best.pth")
    frame = read_split(uncertain_data.splits_dir / "train.csv")
    targets = training_targets(frame, class_policies("U-Ones"), uncertain_data.seed)
    expected = positive_class_weights(targets, uncertain_data.max_pos_weight)
    assert list(checkpoint["pos_weight"]) == list(LABELS)
    assert np.allclose(list(checkpoint["pos_weight"].values()), expected)
    assert checkpoint["pos_weight"]["Fracture"] == 1.0  # no positives: weight 1, offset 0
    model, _ = model_from_checkpoint(checkpoint)
    assert torch.allclose(model.logit_offset, torch.log(torch.from_numpy(expected)))
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        raw, label_logits = model(images, raw=True), model(images)
    assert torch.allclose(label_logits, raw - torch.log(torch.from_numpy(expected)), atol=1e-6)
    assert checkpoint_warnings(checkpoint) == []


def test_multiclass_labels_get_no_offset():
    from cxr.data.labels import logit_offsets
    offsets = logit_offsets(np.array([4.0, 9.0]), (False, True))
    assert offsets.tolist() == pytest.approx([np.log(4.0), 0.0])


def test_a_checkpoint_without_the_offset_loads_with_a_warning(tmp_path):
    path = tiny_checkpoint(tmp_path / "old" / "best.pth")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["model"]["logit_offset"]  # as written before the offset existed
    torch.save(checkpoint, path)
    predictor = load_predictor(path, Config(device="cpu", num_workers=0),
                               rebuild=model_from_checkpoint)
    assert any("predates the removal of the positive-weight offset" in w
               for w in predictor.warnings)
    assert torch.equal(predictor.model.logit_offset, torch.zeros(len(LABELS)))


def test_calibration_and_thresholds_are_fitted_on_val_and_applied_by_predict(trained,
                                                                             uncertain_data):
    thresholds = json.loads((trained / "thresholds.json").read_text())
    assert thresholds["calibration"]["method"] == "platt"
    assert thresholds["calibration"]["parameters"]["Fracture"] is None  # no val positives
    assert thresholds["model_id"] == model_id(load_checkpoint(trained / "best.pth"))
    val = read_split(uncertain_data.splits_dir / "val.csv")
    paths = val["image_path"].tolist()[:6]
    predictor = load_predictor(trained / "best.pth", Config(device="cpu", num_workers=0,
                                                            precision="fp32"),
                               rebuild=model_from_checkpoint)
    table = predict_sources(predictor, paths, progress=False).table
    logits, _ = val_predictions(trained, uncertain_data)
    expected = calibrated_probs(logits[:6], thresholds["calibration"]["parameters"], LABELS)
    assert np.allclose(table[list(LABELS)].to_numpy(), expected, atol=1e-6)
    report = json.loads((trained / "eval_val.json").read_text())
    assert report["calibration"]["method"] == "platt"
    assert report["calibration"]["mean_ece"] is not None


# ---- 3. thresholds belong to one predictor --------------------------------------------------------

def copy_run(run_dir, target):
    shutil.copytree(run_dir, target)
    return target / "best.pth"


def test_thresholds_of_other_weights_are_refused_naming_evaluate(trained, tmp_path, capsys):
    checkpoint = copy_run(trained, tmp_path / "run")
    cpu = Config(device="cpu", num_workers=0)
    load_predictor(checkpoint, cpu, rebuild=model_from_checkpoint)  # fitted for these weights: fine
    saved = torch.load(checkpoint, weights_only=True)  # a resumed run rewrites best.pth
    saved["model"]["head.bias"] += 0.1
    torch.save(saved, checkpoint)
    with pytest.raises(PipelineError, match=r"fitted for other weights.*evaluate\.py --checkpoint"):
        load_predictor(checkpoint, cpu, rebuild=model_from_checkpoint)
    allowed = load_predictor(checkpoint, dataclasses.replace(cpu, allow_threshold_mismatch=True),
                             rebuild=model_from_checkpoint)
    assert any("used anyway" in warning for warning in allowed.warnings)
    other = tiny_checkpoint(tmp_path / "other" / "best.pth", image_size=32)
    shutil.copy(trained / "thresholds.json", other.parent)  # copied from another run
    with pytest.raises(PipelineError, match="fitted for other weights"):
        load_predictor(other, cpu, rebuild=model_from_checkpoint)
    image = read_split(Path(trained.parent.parent) / "data" / "splits" / "val.csv")["image_path"][0]
    with pytest.raises(SystemExit) as stop:
        run_cli(predict.main, script="predict.py", defaults=Config(),
                argv=[image, "--checkpoint", str(other), "--device", "cpu", "--output",
                      str(tmp_path / "p.csv")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "run evaluate.py --checkpoint" in err.lower()


def test_thresholds_fitted_with_tta_are_applied_with_tta_only(trained, uncertain_data, tmp_path):
    checkpoint = copy_run(trained, tmp_path / "run")
    cfg = dataclasses.replace(uncertain_data, checkpoint=str(checkpoint), tta=True)
    evaluate.main(cfg)
    stored = json.loads((checkpoint.parent / "thresholds.json").read_text())
    assert stored["scores"]["tta"] is True
    cpu = Config(device="cpu", num_workers=0)
    with pytest.raises(PipelineError, match="with test-time augmentation.*--tta true"):
        load_predictor(checkpoint, cpu, rebuild=model_from_checkpoint)
    predictor = load_predictor(checkpoint, dataclasses.replace(cpu, tta=True),
                               rebuild=model_from_checkpoint)
    assert isinstance(predictor.scorer, TTAModel) and predictor.tta
    untta = dict(stored, scores={**stored["scores"], "tta": False})
    (checkpoint.parent / "thresholds.json").write_text(json.dumps(untta))
    with pytest.raises(PipelineError, match="without test-time augmentation"):
        load_predictor(checkpoint, dataclasses.replace(cpu, tta=True),
                       rebuild=model_from_checkpoint)


# ---- 4. options only preprocessing reads ----------------------------------------------------------

def run_train(cfg: Config, *options: str) -> subprocess.CompletedProcess:
    common = ["--data_dir", cfg.data_dir, "--models_dir", cfg.models_dir, "--pretrained", "false",
              "--image_size", "32", "--epochs", "1", "--frozen_epochs", "0", "--num_workers", "0"]
    return subprocess.run([sys.executable, "train.py", *common, *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("option, value, script", [
    ("--frontal_only", "true", "preprocess.py"),  # the data were built with false
    ("--val_fraction", "0.5", "make_splits.py"),
    ("--stats_sample", "99", "preprocess.py"),
])
def test_options_only_preprocessing_reads_are_refused_by_train(uncertain_data, option, value,
                                                                script):
    result = run_train(uncertain_data, "--run_name", "refused", option, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{option} is read by {script}, not train.py" in result.stderr
    assert not (uncertain_data.run_dir.parent / "refused" / "last.pth").exists()


def test_the_checkpoint_records_what_the_data_were_built_with(trained, uncertain_data):
    checkpoint = load_checkpoint(trained / "best.pth")
    assert checkpoint["config"]["frontal_only"] is False  # the data's, not the Config given
    assert checkpoint["config"]["val_fraction"] == 0.3
    assert checkpoint["data"]["frontal_only"] is False and checkpoint["data"]["val_fraction"] == 0.3
    same = dataclasses.replace(uncertain_data, frontal_only=False, val_fraction=0.3)
    assert check_data_options(same, {"frontal_only", "val_fraction"}, "train.py") == same
    with pytest.raises(ConfigError, match="--frontal_only is read by preprocess.py, not x.py"):
        check_data_options(dataclasses.replace(uncertain_data, frontal_only=True),
                           {"frontal_only"}, "x.py")
