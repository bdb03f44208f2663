"""Other datasets through the scripts: preprocess.py --dataset mimic on a tree in MIMIC-CXR-JPG's
published layout (its official test split becomes the test split), and evaluate.py --dataset
mimic --split test scoring a CheXpert-trained checkpoint on it (external validation)."""

from __future__ import annotations

import json
import shutil

import pandas as pd

from conftest import run_script, shared
from cxr.data.mimic import read_mimic
from mimic_tree import write_mimic_tree


def test_preprocess_and_splits_take_mimics_official_test_split(tmp_path):
    counts = write_mimic_tree(tmp_path / "mimic", n_subjects=20)
    data_dir = ["--data_dir", str(tmp_path / "data")]
    output = run_script("preprocess.py", "--dataset", "mimic", "--data_root",
                        str(tmp_path / "mimic"), *data_dir)
    assert "MIMIC-CXR" in output and "skipped" in output
    stats = json.loads((tmp_path / "data" / "processed" / "stats.json").read_text())
    assert stats["dataset"] == "mimic" and stats["test_split"] == "MIMIC-CXR's official test list"
    assert stats["not_labelled"] == [] and sum(stats["skipped"].values()) == \
        sum(counts["skipped"].values())
    output = run_script("make_splits.py", *data_dir)
    assert "MIMIC-CXR's official test list" in output
    test = pd.read_csv(tmp_path / "data" / "splits" / "test.csv")
    train = pd.read_csv(tmp_path / "data" / "splits" / "train.csv")
    assert set(test["official_split"]) == {"test"} and "test" not in set(train["official_split"])
    assert (test["Frontal/Lateral"] == "Frontal").all()  # frontal_only, the default
    assert test["patient_id"].str.fullmatch(r"p1\d{7}").all()


def test_external_validation_on_mimics_test_split(demo_model, tmp_path):
    trained, _ = demo_model
    (tmp_path / "run").mkdir()
    checkpoint = tmp_path / "run" / "best.pth"
    shutil.copy(trained, checkpoint)
    write_mimic_tree(tmp_path / "mimic", n_subjects=40)
    run_script("evaluate.py", "--checkpoint", str(checkpoint),
               "--data_dir", str(trained.parents[2] / "data"), "--dataset", "mimic",
               "--data_root", str(tmp_path / "mimic"), "--split", "test")
    report = json.loads((tmp_path / "run" / "eval_mimic_test.json").read_text())
    assert report["dataset"]["split"] == "test" and report["split"] == "mimic_test"
    rows = read_mimic(tmp_path / "mimic").frame
    frontal_test = (rows["official_split"] == "test") & (rows["Frontal/Lateral"] == "Frontal")
    assert report["n_images"] == int(frontal_test.sum())  # a frontal model: laterals left out
    assert any(c["auc"] is not None for c in report["image"]["classes"].values())
    # MIMIC-CXR-JPG has no sex or age: those audits are left out, not one "unknown" stratum
    assert "Sex" not in report["subgroups"] and "Age" not in report["subgroups"]
    assert set(report["subgroups"]["AP/PA"]) <= {"AP", "PA"}
    assert (tmp_path / "run" / "eval_mimic_test.md").is_file()
    # who labelled the rows, in the JSON and in the report's reference standard
    assert report["dataset"]["label_sources"] == {"CheXpert's labeler (NLP of the reports)":
                                                  len(rows)}
    assert report["dataset"]["label_hierarchy"] == "none"  # the training data's own rule
    assert "labelled by (rows read): CheXpert's labeler (NLP of the reports)" in \
        (tmp_path / "run" / "eval_mimic_test.md").read_text()


def test_preprocess_maps_padchest_at_full_scale_without_images(tmp_path):
    """PadChest's real 160,861-row table, images unchecked: a patient hold-out as the test; the
    physicians' rows (the default --padchest_label_source), counted by source in stats.json."""
    data_dir = ["--data_dir", str(tmp_path / "data")]
    output = run_script("preprocess.py", "--dataset", "padchest", "--data_root",
                        str(shared("padchest-labels")), "--check_images", "false", *data_dir)
    assert "terms outside the mapping" in output and "'COPD signs' 4,822" in output
    stats = json.loads((tmp_path / "data" / "processed" / "stats.json").read_text())
    assert stats["test_split"].startswith("0.2 of the patients held out (seed 42)")
    assert stats["label_sources"] == {"Physician": 38_958, "RNN_model": 0}
    assert stats["settings"]["padchest_label_source"] == "physician"
    assert sum(stats["masked"].values()) == 1_065  # only 'unchanged': not negative
    frontal = stats["train"]["rows_kept"] + stats["valid"]["rows_kept"]
    assert frontal == stats["train"]["rows_after_view_filter"] + \
        stats["valid"]["rows_after_view_filter"] < 38_958  # laterals left out (frontal_only)
    train = pd.read_csv(tmp_path / "data" / "processed" / "train.csv",
                        usecols=["patient_id", "Cardiomegaly"])
    valid = pd.read_csv(tmp_path / "data" / "processed" / "valid.csv",
                        usecols=["patient_id", "Cardiomegaly"])
    assert not set(train["patient_id"]) & set(valid["patient_id"])
    assert stats["train"]["labels"]["Cardiomegaly"]["raw_positive"] == \
        int(train["Cardiomegaly"].sum())
