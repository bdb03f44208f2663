"""Statistics of evaluate.py against references: scikit-learn on explicit resamples, hand cases.

Patient bootstrap (weighted AUC, stratified resamples: readers, seeds), the report card's
intervals (never conditional on a rare patient), the means' min_positives rule, masked (uncertain) labels, paired comparison, operating points, calibration
(ECE, per-class Platt and temperature), study aggregation, the thresholds.json contract,
degenerate splits, and the report files written from synthetic predictions (no model needed).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from config import Config
from cxr.cli import parse_args
from cxr.data.augment import TTAModel, shifted_view
from cxr.data.labels import LABELS
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.bootstrap import Resamples, bootstrap_auc_matrix, bootstrap_aucs, \
    draw_resamples, weighted_aucs
from cxr.evaluation.calibration import calibrated_logits, calibrated_probs, \
    expected_calibration_error, fit_calibration, reliability_bins, sigmoid
from cxr.evaluation.compare import paired_auc_differences
from cxr.evaluation.metrics import COMPETITION_LABELS, aggregate_studies, summarise
from cxr.evaluation.operating_points import choose_thresholds, metrics_at, operating_point_table, \
    sensitivity_threshold, youden_threshold
from cxr.evaluation.predictions import Predictions, evaluate_predictions
from cxr.evaluation.thresholds import thresholds_payload, write_thresholds
from cxr.reporting.evaluation_report import comparison_text, read_report, write_reports
from cxr.reporting.plots import pr_grid, reliability_grid, roc_grid
from cxr.training.checkpoint import require_finite


def synthetic(n_images: int, n_patients: int, n_classes: int, seed: int = 0, ties: bool = False):
    """Patient ids, 0/1 targets and scores that separate them moderately."""
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, n_patients, n_images)
    targets = (rng.random((n_images, n_classes)) < 0.3).astype(float)
    scores = sigmoid(rng.normal(size=(n_images, n_classes)) + 1.2 * targets)
    return patients, targets, np.round(scores, 1) if ties else scores


def repeated_rows(resamples: Resamples, b: int) -> np.ndarray:
    """Resample b built explicitly: every image repeated as often as its patient was drawn."""
    repeats = resamples.counts[b, resamples.patient_of_image].astype(int)
    return np.repeat(np.arange(len(repeats)), repeats)


# ---- patient bootstrap ------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
def test_weighted_auc_equals_roc_auc_score_on_explicit_resamples(ties):
    patients, targets, scores = synthetic(300, 40, 3, ties=ties)
    resamples = draw_resamples(patients, 25, seed=1)
    matrix = bootstrap_auc_matrix(scores, targets, resamples)
    for b in range(25):
        rows = repeated_rows(resamples, b)
        for c in range(3):
            expected = roc_auc_score(targets[rows, c], scores[rows, c])
            assert matrix[b, c] == pytest.approx(expected, abs=1e-12)


def test_weighted_auc_hand_computed_on_four_patients():
    # one image per patient: scores 0.9 (pos), 0.3 (neg), 0.3 (pos), 0.1 (neg)
    scores, targets = np.array([0.9, 0.3, 0.3, 0.1]), np.array([1, 0, 1, 0])
    counts = np.array([[1, 1, 1, 1],   # wins 1 + 1 + 0.5 (tie) + 1 over 2 x 2 pairs = 0.875
                       [0, 2, 1, 1],   # pos 0.3 vs neg 0.3 (x2, ties) and 0.1: 2 / 3
                       [2, 0, 0, 1],   # every positive above the negative: 1
                       [1, 0, 1, 0]],  # no negative drawn: undefined
                      dtype=float)
    aucs = weighted_aucs(scores, targets, np.arange(4), counts)
    assert aucs[:3] == pytest.approx([0.875, 2 / 3, 1.0])
    assert np.isnan(aucs[3])


def test_resamples_draw_patients_with_all_their_images():
    resamples = draw_resamples(np.array(["p2", "p1", "p2", "p3"]), 50, seed=3)
    assert resamples.counts.shape == (50, 3) and (resamples.counts.sum(axis=1) == 3).all()
    assert list(resamples.patient_of_image) == [1, 0, 1, 2]  # both p2 images share one weight
    again = draw_resamples(np.array(["p2", "p1", "p2", "p3"]), 50, seed=3)
    assert (again.counts == resamples.counts).all()  # seeded


def test_intervals_are_never_conditional_on_a_rare_patient_being_drawn():
    patients, targets, scores = synthetic(400, 80, 5, seed=2)
    targets[:, 4] = 0
    targets[patients == 7, 4] = 1  # one positive patient: a plain bootstrap lacks it 37 % of the time
    labels = ("A", "B", "C", "D", "E")
    plain = bootstrap_auc_matrix(scores, targets, draw_resamples(patients, 300, seed=0))
    assert np.isnan(plain[:, 4]).sum() > 50  # what the old intervals were conditional on
    summary = summarise(scores, targets, labels, patients, 0.95)
    for label in labels:
        values = summary["classes"][label]
        assert values["ci"]["low"] - 1e-12 <= values["auc"] <= values["ci"]["high"] + 1e-12
        assert values["ci"]["high"] > values["ci"]["low"]
    # one positive patient: an interval, marked approximate, and very wide
    assert summary["classes"]["E"]["ci_note"].startswith("approximate")
    assert summary["classes"]["E"]["ci"]["high"] - summary["classes"]["E"]["ci"]["low"] > 0.3
    mean = summary["means"]["all"]
    assert mean["classes"] == ["A", "B", "C", "D"] and "E" in mean["left_out"]
    assert "fewer than 10" in mean["left_out"]["E"] and mean["title"] == "AVERAGE (4 of 5 classes)"
    assert mean["auc"] == pytest.approx(np.mean([summary["classes"][lb]["auc"] for lb in "ABCD"]))
    assert mean["ci"]["low"] <= mean["auc"] <= mean["ci"]["high"] and mean["ci_note"] == ""
    assert not summary["classes"]["E"]["in_means"] and summary["classes"]["A"]["in_means"]


def test_stratified_resamples_keep_the_positive_patients_and_vary_the_rest():
    patients, targets, scores = synthetic(300, 60, 1, seed=9)
    boot = bootstrap_aucs(scores, targets, patients, 400, seed=1)
    plain = bootstrap_auc_matrix(scores, targets, draw_resamples(patients, 400, seed=1))
    assert boot.per_class.shape == boot.joint.shape == (400, 1)
    assert np.allclose(boot.joint, plain)  # the means' resamples are the plain ones
    auc = roc_auc_score(targets[:, 0], scores[:, 0])
    assert abs(np.mean(boot.per_class) - auc) < 0.02 and np.std(boot.per_class) > 0.005
    again = bootstrap_aucs(scores, targets, patients, 400, seed=1)
    assert np.array_equal(again.per_class, boot.per_class)  # from (seed, class) alone


def test_masked_labels_take_no_part_in_any_number():
    patients, targets, scores = synthetic(300, 60, 2, seed=10)
    masked = targets.copy()
    masked[::7, 0] = np.nan
    keep = ~np.isnan(masked[:, 0])
    summary = summarise(scores, masked, ("A", "B"), patients, 0.95)
    values = summary["classes"]["A"]
    assert values["auc"] == pytest.approx(roc_auc_score(targets[keep, 0], scores[keep, 0]))
    assert values["masked"] == int((~keep).sum()) and values["positives"] == targets[keep, 0].sum()
    assert values["prevalence"] == pytest.approx(targets[keep, 0].mean())
    assert expected_calibration_error(masked[:, 0], scores[:, 0], 10) == pytest.approx(
        expected_calibration_error(targets[keep, 0], scores[keep, 0], 10))
    thresholds = choose_thresholds(masked, scores, ("A", "B"), 0.9)
    assert thresholds["youden"]["A"] == youden_threshold(targets[keep, 0], scores[keep, 0])
    study_frame = pd.DataFrame({"patient_id": ["p1", "p1", "p2"], "study_id": ["s1"] * 3})
    _, _, study_targets = aggregate_studies(study_frame, np.zeros((3, 1)),
                                            np.array([[np.nan], [0.0], [np.nan]]), "max")
    assert study_targets[0, 0] == 0 and np.isnan(study_targets[1, 0])


def test_competition_mean_covers_the_five_observations():
    patients, targets, scores = synthetic(300, 60, len(LABELS), seed=4)
    summary = summarise(scores, targets, LABELS, patients, 0.95)
    competition = summary["means"]["competition"]
    assert competition["classes"] == [label for label in LABELS if label in COMPETITION_LABELS]
    assert competition["title"] == "COMPETITION 5 (5 of 5 classes)"
    assert competition["ci"]["low"] < competition["auc"] < competition["ci"]["high"]


def test_paired_comparison_of_a_model_with_itself_is_exactly_zero():
    patients, targets, scores = synthetic(300, 50, 4, seed=5)
    labels = ("A", "B", "C", "D")
    rows = paired_auc_differences(scores, scores, targets, pd.Series(patients), labels, 0.95)
    assert len(rows) == 4 + 1  # classes, then the mean (no competition five among A-D)
    for row in rows:
        assert row["difference"] == 0.0 and row["ci_low"] == 0.0 and row["ci_high"] == 0.0
        assert row["verdict"] == "no clear difference"


def test_paired_comparison_detects_a_better_model():
    patients, targets, scores = synthetic(600, 150, 2, seed=6)
    noise = np.random.default_rng(0).normal(size=scores.shape)
    better = sigmoid(3 * targets + noise)  # B separates the classes far better than A
    rows = paired_auc_differences(scores, better, targets, pd.Series(patients), ("A", "B"), 0.95)
    for row in rows:
        assert row["difference"] > 0 and row["ci_low"] > 0 and row["verdict"] == "B better"
    text = comparison_text(rows, 0.95)
    assert "B better" in text and "AVERAGE (2 classes)" in text


# ---- operating points -------------------------------------------------------------------------

def test_youden_threshold_and_metrics_on_a_hand_case():
    targets = np.array([0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.6, 0.5, 0.9])
    # J at 0.9: 0.5 - 0 = 0.5; at 0.6: 0.5 - 1/3; at 0.5: 1 - 1/3 = 0.67 (the maximum)
    assert youden_threshold(targets, probs) == 0.5
    values = metrics_at(targets, probs, 0.5)  # calls 0.6, 0.5 and 0.9 positive
    assert (values["tp"], values["fp"], values["tn"], values["fn"]) == (2, 1, 2, 0)
    assert values["sensitivity"] == 1.0 and values["specificity"] == pytest.approx(2 / 3)
    assert values["ppv"] == pytest.approx(2 / 3) and values["npv"] == 1.0
    assert values["f1"] == pytest.approx(0.8)
    # a model no better than chance anywhere: Youden's J is 0 at best, nothing is called positive
    assert youden_threshold(targets, 1 - probs) == pytest.approx(0.9, abs=1e-9)
    assert youden_threshold(np.array([0, 1]), np.array([1.0, 0.0])) == 1.0  # still a probability
    nothing = metrics_at(targets, probs, 0.95)
    assert nothing["ppv"] is None and nothing["sensitivity"] == 0.0  # no predicted positives


def test_target_sensitivity_is_reached_on_val_with_the_highest_threshold():
    _, targets, scores = synthetic(500, 100, 1, seed=7)
    y, p = targets[:, 0], scores[:, 0]
    threshold = sensitivity_threshold(y, p, 0.9)
    assert metrics_at(y, p, threshold)["sensitivity"] >= 0.9
    next_higher = p[p > threshold].min()
    assert metrics_at(y, p, next_higher)["sensitivity"] < 0.9


def test_thresholds_json_contract(tmp_path):
    targets = np.array([[0, 0], [1, 0], [0, 0], [1, 0]], dtype=float)  # B: one value only
    probs = np.array([[0.2, 0.1], [0.7, 0.2], [0.4, 0.3], [0.9, 0.4]])
    thresholds = choose_thresholds(targets, probs, ("A", "B"), 0.9)
    assert thresholds["youden"]["B"] is None and thresholds["target_sensitivity"]["B"] is None
    calibration = {"method": "platt", "parameters": {"A": {"scale": 1.5, "bias": -0.2},
                                                     "B": None}}
    scores = {"tta": False, "view_mode": "frontal", "logit_offset_removed": True}
    write_thresholds(thresholds_payload(tmp_path / "best.pth", "0123abcd", ("A", "B"), thresholds,
                                        0.9, calibration, scores, {"A": 3, "B": 0}),
                     tmp_path / "thresholds.json")
    payload = json.loads((tmp_path / "thresholds.json").read_text())
    assert payload == {"checkpoint": str(tmp_path / "best.pth"), "model_id": "0123abcd",
                       "split": "val", "method": "youden", "labels": ["A", "B"],
                       "thresholds": {"A": 0.7, "B": None},
                       "target_sensitivity": {"value": 0.9, "thresholds": {"A": 0.7, "B": None}},
                       "scores": {**scores, "calibration": "platt"},
                       "calibration": {"method": "platt", "fitted_on": "val",
                                       "parameters": calibration["parameters"]},
                       "masked_uncertain": {"A": 3, "B": 0}}
    rows = operating_point_table(targets, probs, ("A", "B"), thresholds,
                                 np.arange(len(targets)), 0.95)
    assert [row["threshold"] for row in rows] == [0.7, None, 0.7, None]
    # the rates' Wilson intervals (one image per patient: scipy's)
    point = metrics_at(targets[:, 0], probs[:, 0], 0.7)
    expected = stats.binomtest(point["tp"], point["tp"] + point["fn"]).proportion_ci(
        0.95, method="wilson")
    assert rows[0]["sensitivity_ci"] == pytest.approx([expected.low, expected.high])


# ---- calibration ------------------------------------------------------------------------------

def test_ece_of_a_calibrated_model_is_near_zero_and_a_hand_case():
    rng = np.random.default_rng(0)
    probs = rng.random(200_000)
    assert expected_calibration_error(rng.random(200_000) < probs, probs, 10) < 0.01
    # bins: [0, .1): p .05 seen 0 -> gap .05; [.1, .2): p .15 seen 1/2 -> gap .35 (2 images);
    # [.9, 1]: p .95 seen 1 -> gap .05. ECE = (.05 + 2 x .35 + .05) / 4 = 0.2
    probs, targets = np.array([0.05, 0.15, 0.15, 0.95]), np.array([0, 1, 0, 1])
    assert expected_calibration_error(targets, probs, 10) == pytest.approx(0.2)
    bins = reliability_bins(targets, probs, 10)
    assert bins["count"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert expected_calibration_error(np.array([1.0]), np.array([1.0]), 10) == 0.0  # p = 1 binned


def test_per_class_calibration_recovers_known_maps_and_keeps_every_auc():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(loc=-1.0, scale=2.0, size=(20_000, 3))
    targets = (rng.random(true_logits.shape) < sigmoid(true_logits)).astype(float)
    # class 0 over-confident (T = 2.5), class 1 shifted by log(40) as pos_weight 40 would,
    # class 2 already calibrated: one shared temperature could fix only one of them
    logits = true_logits * np.array([2.5, 1.0, 1.0]) + np.array([0.0, np.log(40), 0.0])
    labels = ("A", "B", "C")
    platt = fit_calibration(logits, targets, labels, "platt")
    assert platt["A"]["scale"] == pytest.approx(1 / 2.5, rel=0.05)
    assert platt["B"]["bias"] == pytest.approx(-np.log(40), abs=0.1)
    assert platt["C"]["scale"] == pytest.approx(1.0, rel=0.05) and abs(platt["C"]["bias"]) < 0.05
    temperature = fit_calibration(logits, targets, labels, "temperature")
    assert temperature["A"] == {"scale": pytest.approx(0.4, rel=0.05), "bias": 0.0}
    assert fit_calibration(logits, targets, labels, "none")["B"] == {"scale": 1.0, "bias": 0.0}
    before = [expected_calibration_error(targets[:, c], sigmoid(logits[:, c]), 10) for c in range(3)]
    probs = calibrated_probs(logits, platt, labels)
    after = [expected_calibration_error(targets[:, c], probs[:, c], 10) for c in range(3)]
    assert after[0] < before[0] / 3 and after[1] < before[1] / 3 and max(after) < 0.02
    for c in range(3):  # a positive scale keeps every image's rank: AUCs do not change
        assert roc_auc_score(targets[:, c], probs[:, c]) == roc_auc_score(targets[:, c],
                                                                           logits[:, c])
    one_value = fit_calibration(logits, np.zeros_like(targets), labels, "platt")
    assert one_value == {"A": None, "B": None, "C": None}
    assert np.array_equal(calibrated_logits(logits, one_value, labels), logits)


def test_a_class_the_model_separates_perfectly_on_val_gets_a_finite_map():
    logits = np.array([[-3.0], [-2.0], [-1.0], [4.0], [5.0], [6.0]])
    targets = np.array([[0.0], [0.0], [0.0], [1.0], [1.0], [1.0]])
    fitted = fit_calibration(logits, targets, ("A",), "platt")["A"]
    probs = calibrated_probs(logits, {"A": fitted}, ("A",))
    assert np.isfinite(fitted["scale"]) and 0.5 < probs[3:, 0].min() and probs[3:, 0].max() < 0.9


# ---- study level --------------------------------------------------------------------------------

def test_study_aggregation_groups_by_patient_and_study():
    frame = pd.DataFrame({"patient_id": ["p1", "p1", "p1", "p2", "p2"],
                          "study_id": ["s1", "s1", "s2", "s1", "s1"]})  # s1 in two patients
    probs = np.array([[0.2], [0.6], [0.3], [0.9], [0.1]])
    targets = np.array([[0], [1], [0], [0], [0]], dtype=float)
    studies, top, labels = aggregate_studies(frame, probs, targets, "max")
    assert studies[["patient_id", "study_id"]].values.tolist() == [["p1", "s1"], ["p1", "s2"],
                                                                   ["p2", "s1"]]
    assert studies["n_images"].tolist() == [2, 1, 2]
    assert top[:, 0].tolist() == [0.6, 0.3, 0.9] and labels[:, 0].tolist() == [1, 0, 0]
    _, mean, _ = aggregate_studies(frame, probs, targets, "mean")
    assert mean[:, 0] == pytest.approx([0.4, 0.3, 0.5])
    with pytest.raises(PipelineError, match="study_id"):
        aggregate_studies(frame[["patient_id"]], probs, targets, "max")


# ---- degenerate splits --------------------------------------------------------------------------

def test_one_label_value_and_one_patient_give_notes_not_crashes():
    targets = np.array([[0, 1], [1, 1], [0, 1], [1, 1]], dtype=float)  # B: every image positive
    probs = np.array([[0.1, 0.5], [0.8, 0.6], [0.3, 0.2], [0.7, 0.9]])
    one_patient = pd.Series(["p1"] * 4)
    summary = summarise(probs, targets, ("A", "B"), one_patient, 0.95, min_positives=1)
    a = summary["classes"]["A"]
    assert a["auc"] == 1.0 and a["ci"]["high"] == 1.0 and a["ci"]["low"] < 0.5  # one patient
    assert a["ci_note"].startswith("approximate")
    assert summary["classes"]["B"]["auc"] is None
    assert summary["classes"]["B"]["status"] == "n/a: every image in this split is positive"
    assert summary["means"]["all"]["title"] == "AVERAGE (1 of 2 classes)"
    rows = paired_auc_differences(probs, probs, targets, one_patient, ("A", "B"), 0.95,
                                  min_positives=1)
    # a model against itself: exactly 0, even where both rank perfectly (zero variance)
    assert rows[0]["verdict"] == "no clear difference" and rows[0]["ci_low"] == 0 == \
        rows[0]["ci_high"]
    other = np.array([[0.3, 0.5], [0.7, 0.6], [0.1, 0.2], [0.8, 0.9]])  # A: perfect, reordered
    two = paired_auc_differences(probs, other, targets, one_patient, ("A", "B"), 0.95,
                                 min_positives=1)[0]
    assert two["difference"] == 0 and two["ci_low"] < 0 < two["ci_high"]
    assert two["note"].startswith("approximate")
    assert rows[1]["difference"] is None and rows[1]["verdict"] == "n/a"


def test_nan_predictions_are_an_error_naming_the_checkpoint(tmp_path):
    logits = torch.zeros((3, 2))
    require_finite(logits, f"checkpoint {tmp_path / 'best.pth'}")  # finite: fine
    logits[1, 0] = float("nan")
    with pytest.raises(PipelineError, match=f"checkpoint {tmp_path / 'best.pth'} gives NaN/inf "
                                            "outputs for 1 input"):
        require_finite(logits, f"checkpoint {tmp_path / 'best.pth'}")


# ---- the report of one split, from synthetic predictions ---------------------------------------

def synthetic_predictions(seed: int, n_images: int = 240) -> Predictions:
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, 60, n_images)
    frame = pd.DataFrame({"patient_id": [f"patient{p:05d}" for p in patients],
                          "study_id": [f"study{s}" for s in rng.integers(1, 3, n_images)]})
    calibrated = rng.normal(loc=-1.0, scale=2.0, size=(n_images, len(LABELS)))
    targets = (rng.random(calibrated.shape) < sigmoid(calibrated)).astype(float)
    targets[:, LABELS.index("Fracture")] = 0  # a class with one label value
    targets[::9, LABELS.index("Edema")] = np.nan  # uncertain: masked
    offset = np.linspace(0.0, 3.0, len(LABELS))  # a per-class offset, as pos_weight leaves
    return Predictions(frame, 2.0 * calibrated + offset, targets, LABELS)  # over-confident too


def test_report_of_a_split_is_written_with_thresholds_from_val(tmp_path):
    cfg = Config(bootstrap_resamples=200, study_aggregation="mean")
    val, test = synthetic_predictions(0), synthetic_predictions(1)
    calibration = {"method": "platt",
                   "parameters": fit_calibration(val.logits, val.targets, LABELS, "platt")}
    assert calibration["parameters"]["Fracture"] is None  # one label value on val
    probs = calibrated_probs(val.logits, calibration["parameters"], LABELS)
    thresholds = choose_thresholds(val.targets, probs, LABELS, 0.9)
    source = {"split": "test", "checkpoint": "models/x/best.pth", "epoch": 3}
    result = evaluate_predictions(test, thresholds, calibration, cfg, **source)
    assert result.n_studies < result.n_images and result.study.aggregation == "mean"
    assert result.auc["Fracture"] is None and result.mean_auc is not None
    assert result.calibration.method == "platt"
    assert result.calibration.mean_ece < 0.75 * result.calibration.mean_ece_uncalibrated
    assert result.masked_uncertain["Edema"] == int(np.isnan(test.targets[:, 5]).sum()) > 0
    uncalibrated = evaluate_predictions(test, thresholds, {"method": "none", "parameters": None},
                                        cfg, **source)
    assert uncalibrated.auc == result.auc  # calibration changes no AUC
    assert uncalibrated.calibration.mean_ece != result.calibration.mean_ece
    plots = {kind: f"{kind}_test.png" for kind in ("roc", "pr", "reliability")}
    write_reports(result, plots, cfg, tmp_path)
    markdown = (tmp_path / "eval_test.md").read_text()
    for name in plots.values():
        assert f"]({name})" in markdown  # relative links to the figures
    assert "## Study level" in markdown and "## Operating points" in markdown
    assert "COMPETITION 5 (5 of 5 classes)" in markdown and "ECE before calibration" in markdown
    assert "uncertain (-1) masked" in markdown and "Left out of the means" in markdown
    table = pd.read_csv(tmp_path / "eval_test.csv")
    assert list(table["pathology"][:len(LABELS)]) == list(LABELS)
    assert {"ci_low", "auprc", "prevalence", "study_auc", "ece", "youden_threshold",
            "target_sensitivity_ppv"} <= set(table.columns)
    saved = json.loads((tmp_path / "eval_test.json").read_text())
    assert saved["image"]["means"]["all"]["ci"]["method"].startswith("cluster-robust DeLong")
    assert saved["intervals"]["auc"].startswith("cluster-robust DeLong")
    # the subgroup audit: no Sex/Age/AP/PA columns here, so the Support Devices strata alone
    assert set(saved["subgroups"]) == {"Support Devices"} and "## Subgroups" in markdown
    # the JSON reads back into the same report, and writes the same bytes again
    again = read_report(tmp_path / "eval_test.json")
    assert again.image == result.image and again.operating_points == result.operating_points
    assert json.dumps({**again.as_dict(), "plots": plots}, indent=2) + "\n" == \
        (tmp_path / "eval_test.json").read_text()


def test_a_report_that_is_not_this_versions_is_one_clear_error(tmp_path):
    path = tmp_path / "eval_test.json"
    path.write_text(json.dumps({"checkpoint": "best.pth", "n_images": 6}))
    with pytest.raises(PipelineError, match="not an evaluation report of this version"):
        read_report(path)


def test_figures_are_written_with_a_not_evaluable_class(tmp_path):
    _, targets, scores = synthetic(120, 30, 3, seed=8)
    targets[:, 2] = 0
    labels = ("A", "B", "C")
    roc_grid(targets, scores, labels, tmp_path / "roc.png", "ROC")
    pr_grid(targets, scores, labels, tmp_path / "pr.png", "PR")
    reliability_grid(targets, scores, labels, {"A": 0.1, "B": 0.2, "C": 0.3}, 10,
                     tmp_path / "reliability.png", "Reliability")
    for name in ("roc.png", "pr.png", "reliability.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- command line, config, test-time augmentation ----------------------------------------------

def test_compare_takes_two_values_on_the_command_line():
    cfg = parse_args(["--data_dir", "d", "--compare", "run-a", "models/b/best.pth",
                      "--compare_split", "val"], "evaluate.py", defaults=Config())
    assert (cfg.compare, cfg.compare_split) == (("run-a", "models/b/best.pth"), "val")
    assert parse_args(["--compare=a,b"], "evaluate.py", defaults=Config()).compare == ("a", "b")
    # one run parses (main says why it is not enough)
    assert parse_args(["--compare", "a"], "evaluate.py", defaults=Config()).compare == ("a",)
    import evaluate
    with pytest.raises(ConfigError, match="--compare takes two runs.*got 3: a b c"):
        evaluate.compare_runs(Config(compare=("a", "b", "c")))


@pytest.mark.parametrize("argv, message", [
    (["--study_aggregation", "median"], "not one of max, mean"),
    (["--ci_level", "95"], "--ci_level must be between 0 and 1"),
    (["--target_sensitivity", "0"], "--target_sensitivity must be in"),
    (["--calibration_bins", "0"], "--calibration_bins must be at least 1"),
    (["--compare_split", "train"], "not one of val, test"),
])
def test_evaluation_fields_are_validated(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv, "evaluate.py", defaults=Config())


def test_tta_averages_fixed_views_without_flipping():
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    x = images.float() / 255
    assert torch.equal(shifted_view(x, 0.0, 0.0, 1.0), x)
    shifted = shifted_view(x, 0.25, 0.0, 1.0)  # a quarter of the side: 8 pixels to the right
    assert torch.allclose(shifted[..., 8:], x[..., :-8], atol=1e-5)
    assert (shifted[..., :8] == 0).all()  # black border comes in, as in training

    def model(batch):
        return batch.mean(dim=(1, 2, 3)).unsqueeze(1)

    wrapper = TTAModel(model)
    out = wrapper(images)
    views = [model(shifted_view(x, *view)) for view in wrapper.views]
    assert out.shape == (2, 1) and torch.allclose(out, torch.stack(views).mean(0))
    assert torch.allclose(TTAModel(model, views=((0.0, 0.0, 1.0),))(images), model(x))


def test_paired_comparison_adjusts_the_observations_verdicts_with_holm():
    """One of 14 observations' intervals excluding 0 at p = 0.03 is not a better model once 14
    are compared; a mean (the primary comparison) keeps its own verdict."""
    from cxr.evaluation.compare import adjust_classes
    rows = [{"pathology": f"class {i}", "difference": 0.01, "p_value": 0.5, "p_adjusted": 0.5,
             "verdict": "no clear difference", "verdict_unadjusted": "no clear difference"}
            for i in range(13)]
    rows.append({"pathology": "class 13", "difference": 0.04, "p_value": 0.03,
                 "p_adjusted": 0.03, "verdict": "B better", "verdict_unadjusted": "B better"})
    assert adjust_classes(rows, 0.95) == 14
    assert rows[-1]["p_adjusted"] == pytest.approx(0.42) and rows[-1]["verdict"] == \
        "no clear difference" and rows[-1]["verdict_unadjusted"] == "B better"
    patients, targets, scores = synthetic(600, 150, 2, seed=6)
    better = sigmoid(3 * targets + np.random.default_rng(0).normal(size=scores.shape))
    rows = paired_auc_differences(scores, better, targets, pd.Series(patients), ("A", "B"), 0.95)
    assert all(row["p_adjusted"] < 0.001 and row["verdict"] == "B better" for row in rows)
    assert "Holm-adjusted over the 2 compared" in comparison_text(rows, 0.95)
