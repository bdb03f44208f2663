"""Recalibration for a new site (evaluate.py --dataset nih --recalibrate true): the split of the
site's patients, the refit on synthetic scores, and one run of the demo model on the 404 real
NIH images (the fitting half's file read back by thresholds.read_thresholds, the scoring half's
ECE before and after, its AUCs unchanged)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from config import Config
from conftest import run_script, shared
from cxr.errors import PipelineError
from cxr.evaluation.calibration import IDENTITY, calibrated_probs, mean_ece, per_class_ece
from cxr.evaluation.metrics import per_class_auc
from cxr.evaluation.predictions import Predictions
from cxr.evaluation.recalibration import fit_site, split_predictions, split_site
from cxr.evaluation.thresholds import read_thresholds
from cxr.reporting.evaluation_report import read_report
from cxr.training.checkpoint import load_checkpoint, model_id

NIH = "nih-native"


# ---- the split of the site's patients -----------------------------------------------------------

def patients_frame(n_patients: int = 30) -> pd.DataFrame:
    """Patients with one to three images each."""
    ids = [f"p{p}" for p in range(n_patients) for _ in range(p % 3 + 1)]
    return pd.DataFrame({"patient_id": ids, "image_path": [f"{i}.png" for i in range(len(ids))]})


def test_the_split_keeps_each_patient_on_one_side_and_follows_the_seed():
    frame = patients_frame()
    fit = split_site(frame["patient_id"], 0.5, seed=42)
    fitting, scoring = set(frame["patient_id"][fit]), set(frame["patient_id"][~fit])
    assert not fitting & scoring and len(fitting | scoring) == 30
    assert len(fitting) == 15  # the share of the patients, not of the images
    assert (split_site(frame["patient_id"], 0.5, seed=42) == fit).all()  # reproducible
    assert not (split_site(frame["patient_id"], 0.5, seed=7) == fit).all()  # another seed
    assert len(set(frame["patient_id"][split_site(frame["patient_id"], 0.2, 42)])) == 6
    # the row order does not change who is drawn
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert set(shuffled["patient_id"][split_site(shuffled["patient_id"], 0.5, 42)]) == fitting


def test_each_half_needs_a_patient():
    with pytest.raises(PipelineError, match="at least 2 patients"):
        split_site(pd.Series(["p1", "p1"]), 0.5, 42)
    with pytest.raises(PipelineError, match=r"--recalibration_share 0.1 .* 4 patients puts 0"):
        split_site(pd.Series(["a", "b", "c", "d"]), 0.1, 42)
    with pytest.raises(PipelineError, match="puts 4 in the fitting half"):
        split_site(pd.Series(["a", "b", "c", "d"]), 0.9, 42)


def test_recalibrate_needs_a_dataset():
    needs = r"--recalibrate refits .* it needs --dataset nih\|mimic\|padchest"
    with pytest.raises(AssertionError, match=needs):
        run_script("evaluate.py", "--recalibrate", "true")


# ---- the refit, on scores shifted away from a site's frequencies -----------------------------

LABELS = ("Shifted", "Absent")


def site_predictions(n_patients: int = 400, seed: int = 0) -> Predictions:
    """Two images per patient; "Shifted" has logits 2 above the site's true log-odds (the site's
    prevalence lower than val's), "Absent" is negative on every row."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"patient_id": np.repeat(np.arange(n_patients), 2).astype(str),
                          "study_id": np.tile(["1", "2"], n_patients)})
    truth = rng.normal(-1.0, 1.5, len(frame))
    positive = (rng.random(len(frame)) < 1 / (1 + np.exp(-truth))).astype(float)
    logits = np.column_stack([truth + 2.0, rng.normal(0, 1, len(frame))])
    targets = np.column_stack([positive, np.zeros(len(frame))])
    return Predictions(frame, logits, targets, LABELS)


VAL = ({"youden": {"Shifted": 0.5, "Absent": 0.3}, "target_sensitivity": {"Shifted": 0.4,
                                                                            "Absent": 0.2}},
       {"method": "platt", "parameters": {"Shifted": dict(IDENTITY),
                                          "Absent": {"scale": 2.0, "bias": -1.0}}})


def test_the_refit_lowers_the_scoring_halfs_ece_and_keeps_its_aucs():
    preds = site_predictions()
    halves = split_predictions(preds, preds.frame, 0.5, seed=42)
    assert len(halves.fit.frame) + len(halves.score.frame) == len(preds.frame)
    assert not set(halves.fit.frame["patient_id"]) & set(halves.score.frame["patient_id"])
    thresholds, calibration, kept = fit_site(halves.fit, VAL, Config(calibration="platt"))
    score = halves.score
    before = calibrated_probs(score.logits, VAL[1]["parameters"], LABELS)
    after = calibrated_probs(score.logits, calibration["parameters"], LABELS)
    ece_before = per_class_ece(score.targets, before, LABELS, 10)["Shifted"]
    ece_after = per_class_ece(score.targets, after, LABELS, 10)["Shifted"]
    assert ece_after < ece_before / 3
    assert calibration["parameters"]["Shifted"]["bias"] < -1.0  # the shift taken back
    auc_before = per_class_auc(score.targets[:, :1], before[:, :1], LABELS[:1])
    auc_after = per_class_auc(score.targets[:, :1], after[:, :1], LABELS[:1])
    assert auc_after["Shifted"] == pytest.approx(auc_before["Shifted"], abs=1e-12)
    assert thresholds["youden"]["Shifted"] != VAL[0]["youden"]["Shifted"]
    # one label value in the fitting half: val's map and thresholds, together
    assert kept == ["Absent"]
    assert calibration["parameters"]["Absent"] == VAL[1]["parameters"]["Absent"]
    assert thresholds["youden"]["Absent"] == 0.3
    assert thresholds["target_sensitivity"]["Absent"] == 0.2


def test_calibration_none_refits_only_the_thresholds():
    preds = site_predictions()
    halves = split_predictions(preds, preds.frame, 0.5, seed=42)
    none = ({"youden": {label: 0.5 for label in LABELS},
             "target_sensitivity": {label: 0.5 for label in LABELS}},
            {"method": "none", "parameters": {label: dict(IDENTITY) for label in LABELS}})
    thresholds, calibration, _ = fit_site(halves.fit, none, Config(calibration="none"))
    assert calibration["method"] == "none"
    assert all(value == IDENTITY for value in calibration["parameters"].values())
    assert thresholds["youden"]["Shifted"] != 0.5  # the thresholds still move to the site


# ---- the demo model on the 404 real NIH images --------------------------------------------------

@pytest.fixture(scope="module")
def recalibrated(demo_model, tmp_path_factory):
    """One evaluate.py --dataset nih --recalibrate true run of the demo checkpoint, copied into
    a run folder of its own: (checkpoint, its printed output)."""
    trained, _ = demo_model
    run = tmp_path_factory.mktemp("recalibration") / "run"
    run.mkdir()
    checkpoint = run / "best.pth"
    shutil.copy(trained, checkpoint)
    output = run_script("evaluate.py", "--checkpoint", str(checkpoint),
                        "--data_dir", str(trained.parents[2] / "data"), "--dataset", "nih",
                        "--data_root", str(shared(NIH)), "--missing_images", "skip",
                        "--recalibrate", "true", "--seed", "42")
    return checkpoint, output


def test_recalibration_lowers_the_ece_of_the_scoring_half(recalibrated):
    checkpoint, output = recalibrated
    report = json.loads((checkpoint.parent / "eval_nih_recalibrated.json").read_text())
    rec = report["recalibration"]
    assert rec["n_fit"] + rec["n_score"] == 404 and rec["n_score"] == report["n_images"]
    whole = json.loads((checkpoint.parent / "eval_nih.json").read_text())  # still written
    assert whole["n_images"] == 404
    assert rec["n_fit_patients"] + rec["n_score_patients"] == whole["n_patients"]
    assert rec["n_score_patients"] == report["n_patients"]
    assert (rec["share"], rec["seed"], rec["method"]) == (0.5, 42, "platt")
    assert rec["ece_after"] < rec["ece_before"]
    eces = [values["before"] for values in rec["ece_per_class"].values()]
    assert rec["ece_before"] == pytest.approx(mean_ece(dict(enumerate(eces))))
    assert rec["ece_after"] == pytest.approx(report["calibration"]["mean_ece"])
    for label, auc in rec["auc_per_class"].items():
        if auc["before"] is None:
            assert auc["after"] is None
        else:
            assert auc["after"] == pytest.approx(auc["before"], abs=1e-9), label
    # NIH does not label them: the fitting half cannot fit them, they keep val's
    assert set(rec["kept_from_val"]) >= {"Fracture", "Support Devices"}
    for when in ("before", "after"):
        point = next(p for p in rec["operating_points"][when]
                     if p["pathology"] == "Cardiomegaly" and p["method"] == "youden")
        assert point["sensitivity_ci"][0] <= point["sensitivity"] <= point["sensitivity_ci"][1]
    assert read_report(checkpoint.parent / "eval_nih_recalibrated.json").recalibration \
        .as_dict() == rec
    markdown = (checkpoint.parent / "eval_nih_recalibrated.md").read_text()
    assert "## Recalibration for this site" in markdown and "Threshold (site)" in markdown
    assert (checkpoint.parent / "reliability_nih_recalibrated.png").is_file()
    assert "recalibration on nih: fitted on" in output and "mean AUC unchanged" in output
    assert f"--thresholds {checkpoint.parent / 'thresholds_nih.json'}" in output


def test_the_sites_thresholds_file_is_bound_to_the_checkpoint(recalibrated, tmp_path):
    checkpoint, _ = recalibrated
    site = json.loads((checkpoint.parent / "thresholds_nih.json").read_text())
    val = json.loads((checkpoint.parent / "thresholds.json").read_text())
    weights = load_checkpoint(checkpoint)
    assert site["model_id"] == model_id(weights) == val["model_id"]
    rec = read_report(checkpoint.parent / "eval_nih_recalibrated.json").recalibration
    after = {(p.pathology, p.method): p.threshold for p in rec.operating_points["after"]}
    assert site["thresholds"] == {label: after[(label, "youden")] for label in site["labels"]}
    assert site["target_sensitivity"]["thresholds"] == {
        label: after[(label, "target_sensitivity")] for label in site["labels"]}
    assert site["split"] == site["calibration"]["fitted_on"] == rec.fitted_on
    assert site["split"].startswith(f"nih: fitting half ({rec.n_fit} images")
    assert site["scores"]["site"] == {"dataset": "nih", "data_root": str(shared(NIH)),
                                      "n_images": rec.n_fit, "n_patients": rec.n_fit_patients,
                                      "share": 0.5, "seed": 42}
    assert site["scores"]["tta"] == val["scores"]["tta"]
    assert site.get("input_gate") == val.get("input_gate")  # the training distribution's
    assert site["thresholds"] != val["thresholds"]
    # read as predict.py reads a thresholds file: beside a copy of the checkpoint
    copy = tmp_path / "best.pth"
    shutil.copy(checkpoint, copy)
    shutil.copy(checkpoint.parent / "thresholds_nih.json", tmp_path / "thresholds.json")
    if site.get("input_gate"):
        shutil.copy(checkpoint.parent / site["input_gate"]["file"], tmp_path)
    read = read_thresholds(copy, weights["labels"], model_id(weights))
    assert read.method == "platt" and not read.warnings
    assert read.values["Cardiomegaly"] == pytest.approx(site["thresholds"]["Cardiomegaly"])
