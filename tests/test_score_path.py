"""docs/scoring.md's path to the CheXpert paper's comparison, on a test-layout tree of demo phantoms:
predict.py on CheXpert-v1.0/test/, then score.py against a groundtruth-format CSV and readers."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from conftest import ROOT

READERS = ("reader1", "reader2", "reader3")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_predict_then_score_on_a_test_layout_tree(demo_model, tmp_path):
    checkpoint, demo = demo_model
    test_root = demo / "CheXpert-v1.0" / "test"
    truth = pd.read_csv(demo / "test_groundtruth.csv")
    run("predict.py", str(test_root), "--checkpoint", str(checkpoint), "--output",
        str(tmp_path / "predict.csv"), "--device", "cpu", "--num_workers", "0")
    studies = pd.read_csv(tmp_path / "predict_studies.csv")
    assert len(studies) == len(truth) == 100

    readers = ",".join(str(demo / "test_readers" / f"{name}.csv") for name in READERS)
    out = tmp_path / "score"
    printed = run("score.py", "--predictions", str(tmp_path / "predict_studies.csv"),
                  "--labels", str(demo / "test_groundtruth.csv"), "--radiologists", readers,
                  "--bootstrap_resamples", "200", "--output_dir", str(out)).stdout
    assert "Readers against the model's ROC curve" in printed
    result = json.loads((out / "score.json").read_text())
    assert result["n_studies"] == 100 and result["skipped"] == {"predictions_only": 0,
                                                                "reference_only": 0}
    assert result["competition5_auc"] > 0.55  # a small model, 6 epochs: it learned something
    assert (out / "roc.png").stat().st_size > 10_000

    # a reader's point is a direct count against the groundtruth file
    reads = pd.read_csv(demo / "test_readers" / "reader1.csv").set_index("Study")
    truth = truth.set_index("Study")
    y, r = truth["Cardiomegaly"], reads.loc[truth.index, "Cardiomegaly"]
    point = result["radiologists"]["reader1"]["Cardiomegaly"]
    assert point["sensitivity"] == ((y == 1) & (r == 1)).sum() / (y == 1).sum()
    assert point["specificity"] == ((y == 0) & (r == 0)).sum() / (y == 0).sum()
    assert set(result["radiologists_below_curve"]) == set(result["labels"])

    # the per-image file scores as its _studies.csv: score.py leaves the laterals out of a
    # study, as predict.py does for this frontal-only model
    images = run("score.py", "--predictions", str(tmp_path / "predict.csv"), "--labels",
                 str(demo / "test_groundtruth.csv"), "--bootstrap_resamples", "0",
                 "--output_dir", str(tmp_path / "images")).stdout
    by_image = json.loads((tmp_path / "images" / "score.json").read_text())
    assert by_image["n_studies"] == 100 and "score: wrote" in images
    assert by_image["auc"] == result["auc"]
    assert by_image["study_views"]["lateral_films_left_out"] > 0


def test_score_equals_evaluates_study_level(demo_model, tmp_path):
    """predict.py's study rows of the demo's valid folder, scored by score.py against valid.csv,
    give the study-level AUCs evaluate.py reports for its test split (the same films)."""
    checkpoint, demo = demo_model
    data_dir, models_dir = checkpoint.parents[2] / "data", checkpoint.parents[1]
    run("evaluate.py", "--data_dir", str(data_dir), "--models_dir", str(models_dir),
        "--checkpoint", str(checkpoint), "--device", "cpu",
        "--num_workers", "0")
    root = demo / "CheXpert-v1.0-small"
    run("predict.py", str(root / "valid"), "--checkpoint", str(checkpoint), "--output",
        str(tmp_path / "valid.csv"), "--device", "cpu", "--num_workers", "0")
    run("score.py", "--predictions", str(tmp_path / "valid_studies.csv"), "--labels",
        str(root / "valid.csv"), "--bootstrap_resamples", "0", "--output_dir", str(tmp_path))
    scored = json.loads((tmp_path / "score.json").read_text())
    evaluated = json.loads((checkpoint.parent / "eval_test.json").read_text())["study"]
    assert scored["n_studies"] == evaluated["n"]
    for label, values in evaluated["classes"].items():
        if values["auc"] is not None:
            assert abs(scored["auc"][label] - values["auc"]) < 1e-6, label
