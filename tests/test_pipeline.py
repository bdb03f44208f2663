"""The four scripts run from a terminal, end to end: on the demo dataset and on real X-rays."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import ROOT, shared
from cxr.data.labels import LABELS

# Small and quick: 64 px, from random initialisation, one frozen and one fine-tuning epoch.
TINY = ["--pretrained", "false", "--image_size", "64", "--batch_size", "16", "--epochs", "2",
        "--frozen_epochs", "1", "--warmup_steps", "2", "--num_workers", "1"]


def run_script(script: str, *args: str, shared: list[str] = ()) -> str:
    """`shared`: options passed in PIPELINE_OPTIONS, as the Makefile passes them to each stage."""
    env = {**os.environ, "PIPELINE_OPTIONS": shlex.join(shared)}
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_chain(data_root, tmp_path, *extra: str, cached: bool = False) -> dict:
    """The README's chain, as `make pipeline` runs it: the options every stage shares in
    PIPELINE_OPTIONS (each script takes those it reads); with the image cache when `cached`,
    else decoding JPEGs on the fly."""
    shared = ["--data_root", str(data_root), "--data_dir", str(tmp_path / "data"),
              "--models_dir", str(tmp_path / "models"), *TINY, *extra]
    outputs = {"preprocess": run_script("preprocess.py", shared=shared),
               "make_splits": run_script("make_splits.py", shared=shared)}
    if cached:
        outputs["cache"] = run_script("cache.py", shared=shared)
    outputs["train"] = run_script("train.py", "--run_name", "run", shared=shared)
    outputs["evaluate"] = run_script("evaluate.py", shared=shared)  # the newest run by default
    source = "(the image cache)" if cached else "(images decoded on the fly)"
    assert source in outputs["train"]
    for stage, stdout in outputs.items():
        assert f"{stage}: wrote" in stdout  # one line saying what was written where
    return outputs


def check_run_folder(run_dir, epochs: int) -> dict:
    for name in ("best.pth", "last.pth", "config.json", "run_info.json", "metrics.csv",
                 "eval_val.json", "eval_test.json", "eval_test.md", "eval_test.csv"):
        assert (run_dir / name).is_file(), name
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, epochs + 1))
    assert metrics["phase"].tolist()[:2] == ["frozen", "fine-tune"]
    checkpoint = torch.load(run_dir / "best.pth", weights_only=True)
    assert checkpoint["labels"] == list(LABELS) and checkpoint["config"]["image_size"] == 64
    report = json.loads((run_dir / "eval_test.json").read_text())
    assert {"split", "checkpoint", "n_images", "auc", "mean_auc"} <= set(report)
    assert list(report["auc"]) == list(LABELS)
    check_evaluation_outputs(run_dir)
    return report


def check_evaluation_outputs(run_dir) -> None:
    """The figures, the Markdown report linking them, and thresholds.json for predict.py."""
    markdown = (run_dir / "eval_test.md").read_text()
    for kind in ("roc", "pr", "reliability"):
        figure = run_dir / f"{kind}_test.png"
        assert figure.read_bytes()[:4] == b"\x89PNG" and f"]({figure.name})" in markdown
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert thresholds["checkpoint"].endswith("best.pth") and thresholds["split"] == "val"
    assert thresholds["method"] == "youden" and thresholds["labels"] == list(LABELS)
    assert set(thresholds["thresholds"]) == set(LABELS)
    assert thresholds["calibration"]["method"] == "platt" and len(thresholds["model_id"]) == 16
    assert thresholds["scores"] == {"tta": False, "view_mode": "frontal", "calibration": "platt",
                                    "logit_offset_removed": True}
    assert thresholds["target_sensitivity"]["value"] == 0.9
    assert all(value is None or 0.0 <= value <= 1.0 for value in thresholds["thresholds"].values())


@pytest.fixture(scope="module")
def real_chain(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("real")
    return tmp_path, run_chain(shared("nih-cxr-small/CheXpert-v1.0-small"), tmp_path, cached=True)


def test_real_xray_chain(real_chain):
    tmp_path, outputs = real_chain
    report = check_run_folder(tmp_path / "models" / "run", epochs=2)
    assert report["n_images"] == 63
    # NIH has no Fracture / Support Devices labels: all 0 in valid.csv, so AUC is undefined
    assert report["auc"]["Fracture"] is None and report["auc"]["Support Devices"] is None
    mean = report["image"]["means"]["all"]
    members = [report["auc"][label] for label in mean["classes"]]
    assert report["mean_auc"] == pytest.approx(sum(members) / len(members))
    assert set(mean["left_out"]) == {label for label in LABELS if label not in mean["classes"]}
    assert mean["left_out"]["Fracture"] == "AUC undefined (one label value)"
    assert "n/a: every image in this split is negative" in outputs["evaluate"]
    assert "AVERAGE (" in outputs["evaluate"]


def test_a_second_run_with_the_same_name_is_refused(real_chain):
    tmp_path, _ = real_chain
    result = subprocess.run([sys.executable, "train.py", "--data_dir", str(tmp_path / "data"),
                             "--models_dir", str(tmp_path / "models"), "--run_name", "run",
                             *TINY], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "already holds a trained run" in result.stderr


# ---- the synthetic demo dataset -----------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stdout = run_script("make_demo_data.py", "--out", str(out), "--patients", "200",
                        "--valid_patients", "40", "--width", "160", "--height", "192")
    assert "make_demo_data: wrote" in stdout
    return out / "CheXpert-v1.0-small"


def test_demo_data_has_the_chexpert_layout_and_schema(demo_root):
    train = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    valid = pd.read_csv(demo_root / "valid.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS]
    assert train["Path"].str.match(r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg$").all()
    assert valid["Path"].str.startswith("CheXpert-v1.0-small/valid/").all()
    patients = train["Path"].str.extract(r"(patient\d+)/(study\d+)")
    assert patients.groupby(0)[1].nunique().max() > 1  # multi-study patients
    assert set(train["Frontal/Lateral"]) == {"Frontal", "Lateral"}
    assert {"AP", "PA"} <= set(train["AP/PA"])
    cells = set(train[list(LABELS)].values.ravel())
    assert cells == {"1.0", "0.0", "-1.0", ""}  # positive, negative, uncertain, blank
    assert set(valid[list(LABELS)].values.ravel()) <= {"1.0", "0.0"}
    assert not set(patients[0]) & set(valid["Path"].str.extract(r"(patient\d+)")[0])
    for path in train["Path"].head(5):
        assert (demo_root / path.split("/", 1)[1]).is_file()
    annotations = pd.read_csv(demo_root.parent / "annotations.csv")
    assert {"Path", "label", "x0", "y0", "x1", "y1"} <= set(annotations.columns)


def test_small_effusions_show_only_on_the_lateral_film(demo_root):
    """The lateral film has evidence of its own (what study mode can use): in studies with a
    lateral view, a small effusion is drawn there only; without one, on the frontal film."""
    train = pd.read_csv(demo_root / "train.csv")
    train["study"] = train["Path"].str.rsplit("/", n=1).str[0]
    boxes = pd.read_csv(demo_root.parent / "annotations.csv")
    boxes = boxes[boxes["label"] == "Pleural Effusion"]
    study = boxes["Path"].str.rsplit("/", n=1).str[0]
    on_frontal = set(study[boxes["Path"].str.endswith("frontal.jpg")])
    on_lateral = set(study[boxes["Path"].str.endswith("lateral.jpg")])
    with_lateral = set(train.loc[train["Frontal/Lateral"] == "Lateral", "study"])
    positive = set(train.loc[train["Pleural Effusion"].isin([1.0, -1.0]), "study"])
    lateral_only = (positive & with_lateral & on_lateral) - on_frontal
    assert len(lateral_only) >= 0.25 * len(positive & with_lateral) > 0
    assert len((positive - with_lateral) & on_frontal) >= 0.9 * len(positive - with_lateral)


def test_demo_chain_end_to_end_learns(demo_root, tmp_path):
    """8 short epochs at 64 px from random weights (~1 min): far above chance on the test split."""
    # fp32 on every CPU: where --precision auto picks bf16 (AVX512-BF16), this short run from
    # random weights learns less and early stopping may end it before epoch 8
    outputs = run_chain(demo_root, tmp_path, "--epochs", "8", "--warmup_steps", "20",
                        "--lr_head", "1e-3", "--lr_backbone", "1e-3", "--precision", "fp32")
    report = check_run_folder(tmp_path / "models" / "run", epochs=8)
    assert report["split"] == "test" and "Report card: test split" in outputs["evaluate"]
    epoch_lines = [l for l in outputs["train"].splitlines() if l.startswith("epoch ")]
    assert len(epoch_lines) == 8 and "val_mean_auc" in epoch_lines[0] and "img/s" in epoch_lines[0]
    metrics = pd.read_csv(tmp_path / "models" / "run" / "metrics.csv")
    assert metrics["train_loss"].iloc[-1] < 0.9 * metrics["train_loss"].iloc[1]
    aucs = [auc for auc in report["auc"].values() if auc is not None]
    # measured: mean 0.68, Support Devices 1.00; chance is 0.5
    assert report["mean_auc"] > 0.6 and max(aucs) > 0.9
    mean = report["image"]["means"]["all"]
    assert mean["ci"]["low"] <= report["mean_auc"] <= mean["ci"]["high"]
    assert "95% CI" in outputs["evaluate"] and "COMPETITION 5" in outputs["evaluate"]
    check_compare_and_broken_checkpoint(tmp_path)


def check_compare_and_broken_checkpoint(tmp_path) -> None:
    """--compare of a run with itself gives 0 everywhere; NaN weights: one line naming the file."""
    common = ["--data_dir", str(tmp_path / "data"), "--models_dir", str(tmp_path / "models"),
              "--num_workers", "1"]
    stdout = run_script("evaluate.py", *common, "--compare", "run", "run")
    assert "B - A" in stdout and "evaluate: wrote" in stdout
    table = pd.read_csv(tmp_path / "models" / "run" / "compare_test_vs_run.csv")
    assert (table["difference"].dropna() == 0).all() and (table["ci_low"].dropna() == 0).all()
    checkpoint = torch.load(tmp_path / "models" / "run" / "best.pth", weights_only=True)
    checkpoint["model"]["head.bias"].fill_(float("nan"))
    broken = tmp_path / "models" / "broken" / "best.pth"
    broken.parent.mkdir()
    torch.save(checkpoint, broken)
    result = subprocess.run([sys.executable, "evaluate.py", *common, "--checkpoint", str(broken)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(broken) in result.stderr and "NaN" in result.stderr


def test_unreadable_image_during_training_is_one_clear_line(real_chain, tmp_path):
    source, _ = real_chain
    shutil.copytree(source / "data", tmp_path / "data")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    split = pd.read_csv(tmp_path / "data/splits/train.csv")
    split.loc[3, "image_path"] = str(broken)
    split.to_csv(tmp_path / "data/splits/train.csv", index=False)
    result = subprocess.run([sys.executable, "train.py", "--data_dir", str(tmp_path / "data"),
                             "--models_dir", str(tmp_path / "models"), *TINY,
                             "--use_cache", "false"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: cannot read image {broken}" in result.stderr
