"""The subgroup audit (cxr/subgroups.py): strata from a split's columns, AUC within a stratum and
its paired difference to the rest, n/a cells with their reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import shared
from config import LABELS, ConfigError
from cxr.cli import parse_args
from cxr.report import subgroup_flags
from cxr.subgroups import age_band, strata, subgroup_table


def test_age_bands():
    assert [age_band(a) for a in (18, 39, 40, 59.5, 79, 80, 104)] == \
        ["18-39", "18-39", "40-59", "40-59", "60-79", "80+", "80+"]
    assert [age_band(a) for a in (0, float("nan"))] == ["unknown"] * 2
    assert age_band(12) == "under 18"
    assert [age_band(a, (20, 50)) for a in (19, 20, 49, 50)] == \
        ["under 20", "20-49", "20-49", "50+"]


def test_age_bands_option():
    assert parse_args(["--age_bands", "20,50"], "evaluate.py").age_bands == (20, 50)
    with pytest.raises(ConfigError, match="--age_bands must be increasing"):
        parse_args(["--age_bands", "50,20"], "score.py")


def hand_made(n: int = 400, seed: int = 0):
    """Women's Edema ranked perfectly, men's at random; one image per patient."""
    rng = np.random.default_rng(seed)
    sex = np.where(np.arange(n) % 2 == 0, "Female", "Male")
    y = (rng.random(n) < 0.3).astype(float)
    scores = np.where(sex == "Female", y + 0.1 * rng.random(n), rng.random(n))
    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "Sex": sex,
                          "Age": np.where(np.arange(n) < 6, 0, 50)})
    return frame, scores[:, None], y[:, None]


def test_perfect_in_one_subgroup_random_in_the_other_gives_the_verdict():
    frame, scores, targets = hand_made()
    table = subgroup_table(scores, targets, frame, ("Edema",), 200, 0.95, 0)
    women, men = (table["Sex"][sex]["labels"]["Edema"] for sex in ("Female", "Male"))
    assert women["auc"] == 1.0 and women["verdict"] == "higher in this subgroup"
    assert men["verdict"] == "lower in this subgroup" and men["difference_ci"][1] < 0
    is_man = (frame["Sex"] == "Male").to_numpy()
    assert abs(men["auc"] - roc_auc_score(targets[is_man, 0], scores[is_man, 0])) < 1e-12
    assert abs(men["difference"] - (men["auc"] - women["auc"])) < 1e-12
    assert table["Sex"]["Male"]["n_images"] == 200 and table["Sex"]["Male"]["n_patients"] == 200
    assert men["positives"] == int(targets[is_man].sum())
    assert men["ci"][0] <= men["auc"] <= men["ci"][1]
    # six patients of unknown age: too few positives to score, with the reason
    unknown = table["Age"]["unknown"]["labels"]["Edema"]
    assert unknown["auc"] is None and unknown["note"].startswith("n/a: ")
    assert table["Age"]["40-59"]["labels"]["Edema"]["note"].endswith("in the rest of the split")


def test_without_resamples_the_points_and_no_intervals():
    frame, scores, targets = hand_made()
    cell = subgroup_table(scores, targets, frame, ("Edema",), 0, 0.95, 0)["Sex"]["Male"]
    assert cell["labels"]["Edema"]["auc"] is not None
    assert cell["labels"]["Edema"]["ci"] == [None, None]


def test_support_devices_and_ap_pa_strata():
    frame = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "AP/PA": ["AP", "PA", "", "AP"],
                          "Frontal/Lateral": ["Frontal", "Frontal", "Frontal", "Lateral"]})
    targets = np.array([[1.0], [0.0], [np.nan], [1.0]])
    groups = strata(frame, targets, ("Support Devices",))
    assert groups["AP/PA"].tolist() == ["AP", "PA", "unknown", "unknown"]  # laterals: no AP/PA
    assert groups["Support Devices"].tolist() == ["present", "absent", "unknown", "present"]


def test_real_nih_rows_carry_sex_age_and_view():
    frame = pd.read_csv(shared("nih-cxr-small/CheXpert-v1.0-small/train.csv"))
    groups = strata(frame, np.zeros((len(frame), len(LABELS))), LABELS)
    assert set(groups["Sex"]) <= {"Female", "Male"}
    assert set(groups["AP/PA"]) <= {"AP", "PA", "unknown"} and "PA" in set(groups["AP/PA"])
    # NIH's table holds children too (a 2-year-old among these 404): their own band, not unknown
    assert groups["Age"].isin(["under 18", "18-39", "40-59", "60-79", "80+"]).all()
    assert (groups["Age"] == "under 18").sum() == (frame["Age"] < 18).sum() > 0
    assert groups["Age"].value_counts().sum() == len(frame)


def test_a_finding_read_from_the_devices_is_flagged_as_a_shortcut():
    """Pneumothorax ranked perfectly on films with devices (the drain), at random without."""
    rng = np.random.default_rng(1)
    n = 600
    devices = (np.arange(n) % 2 == 0).astype(float)
    y = (rng.random(n) < 0.3).astype(float)
    pneumothorax = np.where(devices == 1, y + 0.1 * rng.random(n), rng.random(n))
    scores = np.stack([pneumothorax, devices + 0.01 * rng.random(n)], axis=1)
    targets = np.stack([y, devices], axis=1)
    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)]})
    table = subgroup_table(scores, targets, frame, ("Pneumothorax", "Support Devices"), 200,
                           0.95, 0)
    assert table["Support Devices"]["absent"]["labels"]["Pneumothorax"]["verdict"] == \
        "lower in this subgroup"
    flags = subgroup_flags(table)
    assert len(flags) == 1 and flags[0].startswith("Pneumothorax among Support Devices absent")
    assert "shortcut" in flags[0]
