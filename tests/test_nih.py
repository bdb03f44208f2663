"""NIH ChestX-ray14 in NIH's own layout (cxr/data/nih.py): the full 112,120-row table mapped onto
CheXpert's labels, bad tables, the tarball layout, and the chain on the 404 real images."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from config import Config
from conftest import run_script, shared
from cxr.data.adapters import summary_lines
from cxr.data.datasets import read_dataset
from cxr.data.labels import LABELS, NOT_LABELLED, raw_column, trained_labels, training_targets
from cxr.data.nih import read_nih
from cxr.errors import PipelineError

NIH = "nih-native"
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# A tiny run on the 404 images: 64 px, from random initialisation, two epochs.
TINY = ["--pretrained", "false", "--image_size", "64", "--batch_size", "16", "--epochs", "2",
        "--frozen_epochs", "1", "--warmup_steps", "2", "--num_workers", "1"]


def write_table(root: Path, lines: list[str], name: str = "Data_Entry_2017.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("\n".join([HEADER, *lines]) + "\n")
    return root


def test_full_table_maps_onto_chexpert_labels():
    root = shared(NIH)
    adapted = read_nih(root)
    frame = adapted.frame
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    assert len(frame) == len(table) == 112_120
    assert frame["patient_id"].nunique() == 30_805 and frame["study_id"].is_unique
    findings = table["Finding Labels"].str.split("|")
    has = lambda *terms: findings.map(lambda row: bool(set(row) & set(terms))).to_numpy()  # noqa

    def raw(label):
        return frame[raw_column(label)].to_numpy()

    assert ((raw("Pleural Effusion") == 1) == has("Effusion")).all()
    assert ((raw("Lung Lesion") == 1) == has("Mass", "Nodule")).all()
    assert np.isnan(raw("Pleural Effusion")[~has("Effusion")]).all()  # absent: not mentioned
    # a parent from its own finding only: the hierarchy is --label_hierarchy's (read_dataset)
    assert ((raw("Lung Opacity") == 1) == has("Infiltration")).all()
    # NIH annotates neither Enlarged Cardiomediastinum, Fracture nor Support Devices: fully
    # masked, no positive from Cardiomegaly (a label seen only through its positives)
    for label in ("Enlarged Cardiomediastinum", "Fracture", "Support Devices"):
        assert (raw(label) == NOT_LABELLED).all()
    assert ((raw("No Finding") == 1) == has("No Finding")).all()
    assert int((raw("Cardiomegaly") == 1).sum()) == 2_776
    # Emphysema, Fibrosis and Hernia are not CheXpert findings: counted and listed
    assert adapted.unmapped_terms == {"Emphysema": 2_516, "Fibrosis": 1_686, "Hernia": 227}
    assert set(frame["Sex"]) == {"Male", "Female"} and set(frame["AP/PA"]) == {"AP", "PA"}
    assert (frame["Frontal/Lateral"] == "Frontal").all()
    assert frame["Age"].max() <= 120 and frame["Age"].isna().sum() == 0  # v2020 fixed the typos
    lines = "\n".join(summary_lines(adapted))
    assert "Fracture" in lines and "not labelled by NIH ChestX-ray14" in lines
    assert adapted.label_sources == {"NIH's text mining of the reports (NLP)": 112_120}
    assert "labelled by (rows): NIH's text mining of the reports (NLP) 112,120" in lines


def test_the_hierarchy_fills_nih_parents_but_never_a_not_labelled_one():
    """--label_hierarchy fill_blank on the full table: Lung Opacity from its children where it
    is not mentioned; Enlarged Cardiomediastinum stays not labelled on every row (before, the
    hierarchy made 2,776 of its rows positive and left 109,344 masked: pos_weight 0.02)."""
    root = shared(NIH)
    as_mapped = read_nih(root).frame
    filled = read_dataset("nih", root, Config(label_hierarchy="fill_blank"))
    raw = filled.frame
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        findings = pd.read_csv(handle, dtype=str)["Finding Labels"].str.split("|")  # row order
    opacity = findings.map(lambda row: bool(set(row) & {
        "Infiltration", "Mass", "Nodule", "Consolidation", "Edema", "Pneumonia", "Atelectasis"}))
    assert ((raw[raw_column("Lung Opacity")] == 1) == opacity).all()
    assert (raw[raw_column("Enlarged Cardiomediastinum")] == NOT_LABELLED).all()
    infiltration = int((as_mapped[raw_column("Lung Opacity")] == 1).sum())
    assert filled.hierarchy_filled == {"Lung Opacity": int(opacity.sum()) - infiltration,
                                       "Enlarged Cardiomediastinum": 0}
    assert filled.hierarchy == "fill_blank"


def test_bad_tables_name_the_file_line_and_column(tmp_path):
    good = "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143"
    with pytest.raises(PipelineError, match=r"no NIH label table .*Data_Entry_2017_v2020.csv"):
        read_nih(tmp_path)
    root = write_table(tmp_path / "age", [good, "00000001_001.png,Edema,1,1,fifty,M,PA,1,1,1,1"])
    with pytest.raises(PipelineError, match=r"line 3, column 'Patient Age': 'fifty'"):
        read_nih(root)
    root = write_table(tmp_path / "dup", [good, good])
    with pytest.raises(PipelineError, match=r"line 3, column 'Image Index'.*appears twice"):
        read_nih(root)
    root = write_table(tmp_path / "id", [good.replace(",1,57,", ",p1,57,")])
    with pytest.raises(PipelineError, match=r"line 2, column 'Patient ID'"):
        read_nih(root)
    (tmp_path / "cols").mkdir()
    (tmp_path / "cols" / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\na.png,Edema\n")
    with pytest.raises(PipelineError, match=r"lacks column\(s\) \['Follow-up #'"):
        read_nih(tmp_path / "cols")


def test_unknown_terms_ages_and_the_tarball_layout(tmp_path):
    root = write_table(tmp_path / "nih", [
        "00000001_000.png,Efusion|Edema,0,1,058Y,F,AP,1,1,1,1",  # a misspelt finding
        "00000002_000.png,No Finding,0,2,414,M,PA,1,1,1,1",  # a typo age of the 2017 table
        "00000003_000.png,Hernia,0,3,6M,M,PA,1,1,1,1"])
    (root / "images_002" / "images").mkdir(parents=True)
    (root / "images_002" / "images" / "00000002_000.png").write_bytes(b"")
    (root / "test_list.txt").write_text("00000003_000.png\n")
    adapted = read_nih(root)
    frame = adapted.frame
    assert adapted.unmapped_terms == {"Efusion": 1, "Hernia": 1}
    assert frame[raw_column("Edema")].fillna(0).tolist() == [1, 0, 0]
    assert frame[raw_column("Edema")].isna().tolist() == [False, True, True]  # not mentioned
    assert frame[raw_column("Pleural Effusion")].isna().all()  # never silently mapped
    assert frame["Age"].iloc[0] == 58 and np.isnan(frame["Age"].iloc[1])
    assert frame["Age"].iloc[2] == pytest.approx(0.5)
    assert frame["Path"].tolist() == ["images/00000001_000.png",
                                      "images_002/images/00000002_000.png",
                                      "images/00000003_000.png"]
    assert frame["official_split"].tolist() == ["train", "train", "test"]
    assert frame["Sex"].tolist() == ["Female", "Male", "Male"]


@pytest.fixture(scope="module")
def nih_chain(tmp_path_factory):
    """preprocess.py --dataset nih -> make_splits.py -> train.py on the 404 real images."""
    root, out = shared(NIH), tmp_path_factory.mktemp("nih")
    data_dir = ["--data_dir", str(out / "data")]
    outputs = {"preprocess": run_script("preprocess.py", "--dataset", "nih", "--data_root",
                                        str(root), "--missing_images", "skip", *data_dir)}
    outputs["make_splits"] = run_script("make_splits.py", *data_dir)
    outputs["train"] = run_script("train.py", *data_dir, "--models_dir", str(out / "models"),
                                  "--run_name", "nih", *TINY)
    outputs["evaluate"] = run_script("evaluate.py", *data_dir, "--models_dir",
                                     str(out / "models"), "--run_name", "nih")
    return out, outputs


def test_the_chain_runs_on_nih_images(nih_chain):
    out, outputs = nih_chain
    stats = json.loads((out / "data" / "processed" / "stats.json").read_text())
    assert stats["dataset"] == "nih" and stats["not_labelled"] == list(
        ("Enlarged Cardiomediastinum", "Fracture", "Support Devices"))
    kept = stats["train"]["rows_kept"] + stats["valid"]["rows_kept"]
    assert kept == 404  # every image present, the other rows skipped and listed
    assert "no official test split" in stats["test_split"]
    for label in ("Enlarged Cardiomediastinum", "Fracture"):  # fully masked, not one positive
        assert stats["train"]["labels"][label]["not_labelled"] == stats["train"]["rows_kept"]
    assert stats["label_sources"] == {"NIH's text mining of the reports (NLP)": 112_120}
    assert stats["settings"]["label_hierarchy"] == "none"
    checkpoint = torch.load(out / "models" / "nih" / "best.pth", weights_only=True)
    assert checkpoint["pos_weight"]["Enlarged Cardiomediastinum"] == 1.0  # was 0.02: positives only
    split = pd.read_csv(out / "data" / "splits" / "train.csv")
    targets = training_targets(split, dict.fromkeys(LABELS, "U-Ones"), 0)
    assert set(LABELS) - set(trained_labels(targets)) == {
        "Enlarged Cardiomediastinum", "Fracture", "Support Devices"}
    assert checkpoint["trained_labels"] == trained_labels(targets)  # train.py records them
    test = pd.read_csv(out / "data" / "splits" / "test.csv")
    train = pd.read_csv(out / "data" / "splits" / "train.csv")
    assert not set(test["patient_id"]) & set(train["patient_id"])
    assert test["Fracture"].isna().all()  # blank target: not labelled, not negative
    report = json.loads((out / "models" / "nih" / "eval_test.json").read_text())
    fracture = report["image"]["classes"]["Fracture"]
    assert fracture["auc"] is None and fracture["status"] == "n/a: not labelled by NIH ChestX-ray14"
    assert "Fracture" in report["image"]["means"]["all"]["left_out"]
    assert "Fracture" not in next(iter(report["subgroups"]["Sex"].values()))["labels"]
    assert "n/a: not labelled by NIH ChestX-ray14" in outputs["evaluate"]


def copied_run(checkpoint: Path, tmp_path: Path) -> Path:
    """The demo checkpoint in a run folder of its own (other tests share the demo's)."""
    (tmp_path / "run").mkdir()
    shutil.copy(checkpoint, tmp_path / "run" / "best.pth")
    return tmp_path / "run" / "best.pth"


def test_external_validation_of_a_chexpert_model_on_nih(demo_model, tmp_path):
    trained, _ = demo_model
    checkpoint = copied_run(trained, tmp_path)
    run_folder = checkpoint.parent
    own = run_folder / "eval_test.json"
    own.write_text('{"split": "test"}')  # the run's own report, which must stay as it is
    data_dir = ["--data_dir", str(trained.parents[2] / "data")]
    output = run_script("evaluate.py", "--checkpoint", str(checkpoint), *data_dir,
                        "--dataset", "nih", "--data_root", str(shared(NIH)),
                        "--missing_images", "skip")
    report = json.loads((run_folder / "eval_nih.json").read_text())
    assert report["dataset"]["name"] == "nih" and report["n_images"] == 404
    assert report["dataset"]["missing_images_skipped"] == 112_120 - 404
    assert report["image"]["classes"]["Support Devices"]["status"] == \
        "n/a: not labelled by NIH ChestX-ray14"
    assert report["image"]["classes"]["Cardiomegaly"]["auc"] is not None
    assert set(report["subgroups"]) >= {"Sex", "Age", "AP/PA"}
    for name in ("eval_nih.md", "eval_nih.csv", "roc_nih.png", "thresholds.json"):
        assert (run_folder / name).is_file()
    markdown = (run_folder / "eval_nih.md").read_text()
    assert "NIH ChestX-ray14, every image (external validation)" in markdown
    assert own.read_text() == '{"split": "test"}'
    assert "evaluate: wrote" in output
    with pytest.raises(AssertionError, match="no official test list"):
        run_script("evaluate.py", "--checkpoint", str(checkpoint), *data_dir, "--dataset", "nih",
                   "--data_root", str(shared(NIH)), "--split", "test")


def test_missing_images_are_an_error_naming_what_to_do(demo_model, tmp_path):
    trained, _ = demo_model
    checkpoint = copied_run(trained, tmp_path)
    root = tmp_path / "nih"
    root.mkdir()
    shutil.copy(shared(NIH) / "Data_Entry_2017_v2020.csv.gz", root)
    with pytest.raises(AssertionError, match="--missing_images skip"):
        run_script("evaluate.py", "--checkpoint", str(checkpoint), "--data_dir",
                   str(trained.parents[2] / "data"), "--dataset", "nih",
                   "--data_root", str(root))


def test_split_needs_a_dataset():
    with pytest.raises(AssertionError, match="--split chooses the part of another dataset"):
        run_script("evaluate.py", "--split", "test")

