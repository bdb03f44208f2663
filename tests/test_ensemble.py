"""Ensembles: several checkpoints (or predictions files) whose calibrated probabilities are
averaged, evaluated beside each member, and served by predict.py, app.py and export.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from scipy.special import expit, logit
from test_score import shared_file

import evaluate
import export
from config import Config
from conftest import app_with_upload, shared, tiny_checkpoint
from cxr.data.labels import LABELS
from cxr.data.splits import read_split
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.calibration import calibrated_logits
from cxr.evaluation.ensemble import EnsembleModel, check_members, checkpoint_paths, \
    ensemble_logits, mean_probability_logit
from cxr.evaluation.predictions import combined_predictions, load_model, predict_split
from cxr.inference.predictor import load_predictor
from cxr.scoring.files import read_reference
from cxr.scoring.results import score
from dataset import make_dataset
from model_architecture import model_from_checkpoint

# ---- the arithmetic --------------------------------------------------------------------------------

def test_the_ensemble_logit_is_the_logit_of_the_mean_probability_even_when_members_are_sure():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 50, 4))
    expected = logit(expit(logits).mean(axis=0))
    assert np.allclose(mean_probability_logit(logits), expected, atol=1e-9)
    # members sure beyond float64's 1 - p: still finite, still ordered (no ties at p = 1)
    sure = np.array([[[60.0], [70.0]], [[65.0], [80.0]]])
    combined = mean_probability_logit(sure)
    assert np.isfinite(combined).all() and combined[1, 0] > combined[0, 0]


def test_the_torch_ensemble_gives_the_numpy_ensembles_logits():
    torch.manual_seed(0)
    members = [torch.nn.Linear(6, len(LABELS)) for _ in range(3)]
    calibrations = [{label: {"scale": 0.5 + m, "bias": 0.1 * m} for label in LABELS}
                    for m in range(3)]
    calibrations[1]["Edema"] = None  # a class without a map: identity
    x = torch.randn(5, 6)
    with torch.no_grad():
        from_torch = EnsembleModel(members, calibrations, LABELS)(x).double().numpy()
        raw = [member(x).double().numpy() for member in members]
    assert np.allclose(from_torch, ensemble_logits(raw, calibrations, LABELS), atol=1e-5)


# ---- which checkpoints -----------------------------------------------------------------------------

def test_checkpoints_come_as_a_list_a_folder_or_an_ensemble_file(tmp_path):
    a, b = (tiny_checkpoint(tmp_path / "top_k" / f"epoch_00{i}.pth", seed=i) for i in (1, 2))
    assert checkpoint_paths(f"{a},{b}") == [a, b]
    assert checkpoint_paths(str(tmp_path / "top_k")) == [a, b]
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(
        {"members": [{"checkpoint": str(b)}, {"checkpoint": str(a)}]}))
    assert checkpoint_paths(str(tmp_path / "ens")) == [b, a]
    with pytest.raises(PipelineError, match="appears twice"):
        checkpoint_paths(f"{a},{a}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="folder without .pth files"):
        checkpoint_paths(str(tmp_path / "empty"))


def test_members_that_see_other_images_are_refused(tmp_path):
    paths = [tmp_path / "a.pth", tmp_path / "b.pth"]
    with pytest.raises(PipelineError, match="b.pth was trained with --image_size 96"):
        check_members(paths, [LABELS, LABELS], [Config(image_size=64), Config(image_size=96)])


def test_external_validation_of_an_ensemble_is_refused(tmp_path):
    a, b = (tiny_checkpoint(tmp_path / f"{name}.pth", seed=i) for i, name in enumerate("ab"))
    with pytest.raises(ConfigError, match="an ensemble is not supported there yet"):
        evaluate.main(Config(checkpoint=f"{a},{b}", dataset="nih", data_root=str(tmp_path)),
                      given={"checkpoint", "dataset", "data_root"})


# ---- evaluate.py, predict.py, export.py, app.py on one ensemble ---------------------------------------

@pytest.fixture(scope="module")
def ensemble(data_args):
    """Two random-weight members in a run's top_k/ folder, evaluated as an ensemble."""
    data_dir = data_args[0][1]
    top_k = data_args[1] / "ens-run" / "top_k"
    members = [tiny_checkpoint(top_k / f"epoch_00{i}.pth", image_size=32, seed=i)
               for i in (1, 2)]
    cfg = Config(data_dir=data_dir, models_dir=str(data_args[1]), checkpoint=str(top_k),
                 bootstrap_resamples=40, min_positives=1, device="cpu", num_workers=0,
                 precision="fp32",
                 use_cache=False)
    evaluate.main(cfg)
    return cfg, top_k, members


def test_evaluate_writes_the_ensemble_beside_each_member(ensemble):
    cfg, top_k, members = ensemble
    stored = json.loads((top_k / "ensemble.json").read_text())
    assert [m["checkpoint"] for m in stored["members"]] == [str(p) for p in members]
    thresholds = json.loads((top_k / "thresholds.json").read_text())
    assert thresholds["model_id"] == stored["model_id"] and thresholds["scores"]["ensemble"] == 2
    report = json.loads((top_k / "eval_test.json").read_text())
    beside = report["ensemble"]["members"]
    assert [m["checkpoint"] for m in beside] == [str(p) for p in members]
    for member in beside:
        mean = member["means"]["all"]
        assert mean["difference"] == pytest.approx(mean["ensemble"] - mean["member"])
        assert mean["ci_low"] <= mean["difference"] <= mean["ci_high"]
        assert mean["ensemble"] == pytest.approx(report["image"]["means"]["all"]["auc"])
    markdown = (top_k / "eval_test.md").read_text()
    assert "an ensemble of 2 checkpoints" in markdown and "## The ensemble beside each member" \
        in markdown
    assert not (top_k.parent / "thresholds.json").exists()  # no member's own file was touched


def test_evaluation_and_prediction_give_the_ensemble_the_same_scores(ensemble):
    """predict.py's ensemble (EnsembleModel, ensemble.json's calibrations) scores an image as
    evaluate.py's combination of the members' predictions does."""
    cfg, top_k, members = ensemble
    stored = json.loads((top_k / "ensemble.json").read_text())
    calibrations = [m["calibration"] for m in stored["members"]]
    device = torch.device("cpu")
    per_member = []
    for path in members:
        model, checkpoint, trained = load_model(path, cfg, device, rebuild=model_from_checkpoint)
        per_member.append(predict_split(model, "test", path, checkpoint, trained, cfg, device,
                                        make_dataset=make_dataset))
    combined = combined_predictions(per_member, calibrations)
    predictor = load_predictor(str(top_k), cfg, rebuild=model_from_checkpoint)
    assert predictor.model_id == stored["model_id"]
    assert not [w for w in predictor.warnings if "ensemble.json" in w or "mismatch" in w]
    frame = read_split(Path(cfg.data_dir) / "splits" / "test.csv")
    _, trained = load_model(members[0], cfg, device, rebuild=model_from_checkpoint)[1:]
    data = make_dataset(frame, trained, cfg.data_dir, augment=False, name="test", use_cache=False)
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        served = predictor.scorer(images).double().numpy()
    rows = pd.Index(combined.frame["image_path"]).get_indexer(data.paths)
    assert np.allclose(served, combined.logits[rows], atol=1e-4)
    probabilities = expit(calibrated_logits(served, predictor.thresholds.calibration, LABELS))
    assert np.isfinite(probabilities).all()


def test_predict_and_export_serve_the_ensemble(ensemble, tmp_path, capsys):
    from test_predict import run_in_process

    cfg, top_k, members = ensemble
    image = tmp_path / "view1_frontal.png"
    shutil.copy(shared("bad-inputs/images/gray16_xray.png"), image)
    output = tmp_path / "p.csv"
    code, out, err = run_in_process(capsys, str(image), "--checkpoint", str(top_k), "--output",
                                    str(output), "--device", "cpu", "--gradcam", "Edema",
                                    "--models_dir", cfg.models_dir)
    assert code == 0, err
    assert "thresholds.json" in out and len(pd.read_csv(output)) == 1
    assert len(list((tmp_path / "p_gradcam").glob("*.png"))) == 1
    onnx = tmp_path / "ensemble.onnx"
    export.main(Config(checkpoint=str(top_k), output=str(onnx), models_dir=cfg.models_dir))
    spec = json.loads(onnx.with_suffix(".json").read_text())
    assert spec["ensemble"] == [str(p) for p in members]
    predictor = load_predictor(str(top_k), Config(device="cpu", channels_last=False),
                               rebuild=model_from_checkpoint)
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    exported = session.run(["probabilities"], {"images": images.numpy()})[0]
    with torch.no_grad():
        logits = predictor.scorer(images).double().numpy()
    expected = expit(calibrated_logits(logits, predictor.thresholds.calibration, LABELS))
    assert np.abs(exported - expected).max() < 1e-4


def test_a_comma_list_gets_its_own_folder_and_other_members_are_noticed(ensemble, tmp_path):
    cfg, top_k, members = ensemble
    spec = ",".join(map(str, members))
    # not evaluated as a list: uncalibrated, 0.5
    predictor = load_predictor(spec, cfg, rebuild=model_from_checkpoint)
    assert any("ensemble.json not found" in w for w in predictor.warnings)
    assert predictor.checkpoint.parent.name.startswith("ensemble-")
    other = tiny_checkpoint(tmp_path / "other.pth", image_size=32, seed=7)
    shutil.copy(other, top_k / "epoch_009.pth")  # the folder now holds another member
    try:
        with pytest.raises(PipelineError, match="written for other members"):
            load_predictor(str(top_k), cfg, rebuild=model_from_checkpoint)
    finally:
        (top_k / "epoch_009.pth").unlink()


@pytest.mark.usefixtures("keep_main_module")
def test_the_app_takes_an_ensemble_folder(ensemble, monkeypatch):
    cfg, top_k, members = ensemble
    at = app_with_upload(top_k, monkeypatch)
    assert not [e.value for e in at.error]
    assert sorted(at.dataframe[0].value["finding"]) == sorted(LABELS)


# ---- score.py: an ensemble of predictions files ---------------------------------------------------

def test_score_averages_predictions_files_and_compares_each_with_the_ensemble():
    """Three leaderboard entries on CheXpert's real test set (500 studies, radiologists'
    majority vote): the ensemble is their mean probability, each file is paired against it."""
    members = tuple(shared_file(f"leaderboard/{m}_predictions.csv")
                    for m in ("drnet", "hieupham", "jfaboy"))
    cfg = Config(predictions=",".join(members), labels=shared_file("groundtruth.csv"),
                 bootstrap_resamples=100)
    result, model, _ = score(cfg, read_reference(Path(cfg.labels)))
    assert result.ensemble.members == list(members)
    assert set(result.compare) == set(members)
    frames = [pd.read_csv(m).set_index("Study") for m in members]
    labels = [label for label in frames[0].columns if all(label in f for f in frames)]
    mean = sum(f[labels] for f in frames) / 3
    reference = pd.read_csv(cfg.labels).set_index("Study")
    from sklearn.metrics import roc_auc_score
    for label in labels:
        expected = roc_auc_score(reference.loc[mean.index, label], mean[label])
        assert result.auc[label] == pytest.approx(expected, abs=1e-9)
    for member in members:
        rows = {row["pathology"]: row for row in result.compare_rows[member]}
        for label in labels:
            assert rows[label]["auc_b"] == pytest.approx(result.auc[label], abs=1e-9)
    with pytest.raises(PipelineError, match="needs --score_scale probability"):
        score(Config(predictions=",".join(members), labels=cfg.labels, score_scale="any"),
              read_reference(Path(cfg.labels)))
