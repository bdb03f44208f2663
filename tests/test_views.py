"""Study mode: a study's frontal and lateral views through the shared backbone, fused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import make_splits
import preprocess
from config import Config
from conftest import make_root, row
from cxr.data.labels import LABELS
from cxr.data.splits import read_split
from dataset import StudyDataset, make_dataset
from model_architecture import CheXpertNet, model_from_checkpoint


@pytest.fixture(scope="module")
def study_data(tmp_path_factory):
    """30 patients, one study each; every other study also has a lateral view."""
    tmp = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(5)
    train, valid = [], []
    for patient in range(30):
        labels = {k: float(rng.integers(0, 2)) for k in ("Cardiomegaly", "Pleural_Effusion")}
        train.append(row("train", patient, **labels))
        if patient % 2:
            lateral = row("train", patient, view="Lateral", **labels)
            lateral["Path"] = lateral["Path"].replace("view1_lateral", "view2_lateral")
            train.append(lateral)
    for patient in range(6):
        valid.append(row("valid", 100 + patient, Cardiomegaly=float(patient % 2)))
    root = make_root(tmp, train, valid)
    cfg = Config(data_root=str(root), data_dir=str(tmp / "data"), models_dir=str(tmp / "models"),
                 frontal_only=False, val_fraction=0.2, stats_sample=10, image_size=32,
                 view_mode="study", max_views=2, pretrained=False, num_workers=0)
    preprocess.main(cfg)
    make_splits.main(cfg)
    return cfg


def test_study_items_hold_frontal_first_with_a_mask(study_data):
    frame = read_split(study_data.splits_dir / "train.csv")
    data = make_dataset(frame, study_data, study_data.data_dir, False, "train")
    assert isinstance(data, StudyDataset)
    assert len(data) == frame.groupby(["patient_id", "study_id"]).ngroups < len(frame)
    (views, present), targets = data.__getitems__(list(range(len(data))))
    assert views.shape == (len(data), 2, 1, 32, 32) and views.dtype == torch.uint8
    counts = frame.groupby(["patient_id", "study_id"], sort=False).size().to_numpy()
    assert present.sum(1).tolist() == counts.tolist()
    assert not views[~present].any()  # absent views are empty
    first = frame.drop_duplicates(["patient_id", "study_id"])
    assert data.paths == first["image_path"].tolist()  # one row per study, in frame order
    assert (first["Frontal/Lateral"] == "Frontal").all()
    assert torch.equal(targets, torch.tensor(first[list(LABELS)].to_numpy(np.float32)))


@pytest.mark.parametrize("fusion", ["mean", "max", "attention"])
def test_fusion_ignores_absent_views_and_view_order(fusion):
    torch.manual_seed(0)
    model = CheXpertNet(len(LABELS), dropout=0.0, fusion=fusion).eval()
    a, b = (torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8) for _ in range(2))
    empty = torch.zeros_like(a)
    with torch.no_grad():
        single = model(a)
        padded = model((torch.stack([a, empty], 1), torch.tensor([[True, False]])))
        both = model((torch.stack([a, b], 1), torch.tensor([[True, True]])))
        swapped = model((torch.stack([b, a], 1), torch.tensor([[True, True]])))
    assert torch.allclose(single, padded, atol=1e-5)  # one view = the single-image model
    assert torch.allclose(both, swapped, atol=1e-5)  # the views' order does not matter
    assert not torch.allclose(both, single, atol=1e-4)  # the second view counts


@pytest.fixture(scope="module")
def study_run(study_data):
    """A study-mode model with attention fusion, trained for one epoch on study_data."""
    import train
    cfg = Config(**{**study_data.__dict__, "run_name": "study", "view_fusion": "attention",
                    "epochs": 1, "frozen_epochs": 0, "batch_size": 4,
                    "early_stopping_patience": 0, "bootstrap_resamples": 50})
    train.main(cfg)
    return cfg


def test_study_mode_trains_evaluates_and_rebuilds_from_the_checkpoint(study_run):
    import evaluate
    cfg = study_run
    checkpoint = torch.load(cfg.run_dir / "best.pth", weights_only=True)
    model, trained = model_from_checkpoint(checkpoint)
    assert trained.view_mode == "study" and model.view_attention is not None
    evaluate.main(cfg)
    import dataclasses
    import json

    import pandas as pd
    report = json.loads((cfg.run_dir / "eval_val.json").read_text())
    sizes = read_split(cfg.splits_dir / "val.csv").groupby(["patient_id", "study_id"]).size()
    assert report["n_studies"] == len(sizes) < report["n_images"]  # some studies have 2 views
    assert report["n_images"] == int(sizes.clip(upper=trained.max_views).sum())
    assert report["unit"] == "study"
    assert "## Report card (studies)" in (cfg.run_dir / "eval_val.md").read_text()
    # --compare with itself: scored per study, identical
    evaluate.main(dataclasses.replace(cfg, compare=("study", "study")))
    table = pd.read_csv(cfg.run_dir / "compare_test_vs_study.csv")
    assert (table["difference"].dropna() == 0).all()
    assert "studies" in (cfg.run_dir / "compare_test_vs_study.md").read_text()


def test_frontal_mode_leaves_the_lateral_images_out(study_data, capsys):
    import dataclasses
    frame = read_split(study_data.splits_dir / "train.csv")
    cfg = dataclasses.replace(study_data, view_mode="frontal")
    data = make_dataset(frame, cfg, cfg.data_dir, False, "train")
    lateral = int((frame["Frontal/Lateral"] == "Lateral").sum())
    assert lateral > 0 and len(data) == len(frame) - lateral
    assert f"leaving out {lateral} lateral image(s)" in capsys.readouterr().out


def test_tta_shifts_every_view_of_a_study_alike(study_run):
    """TTA in study mode: each augmentation applied to all of a study's films, fused logits
    averaged; evaluate.py --tta true scores the val studies."""
    import dataclasses
    import json

    import evaluate
    from cxr.data.augment import TTAModel, shifted_view
    torch.manual_seed(0)
    model = CheXpertNet(len(LABELS), dropout=0.0, fusion="attention").eval()
    views = torch.randint(0, 256, (3, 2, 1, 32, 32), dtype=torch.uint8)
    present = torch.tensor([[True, True], [True, False], [True, True]])
    x = views.float() / 255
    with torch.no_grad():
        out = TTAModel(model)((views, present))
        each = [model((shifted_view(x.flatten(0, 1), *view).view_as(x), present))
                for view in TTAModel(model).views]
    assert torch.allclose(out, torch.stack(each).mean(0), atol=1e-5)

    cfg = dataclasses.replace(study_run, tta=True)
    evaluate.main(cfg)
    report = json.loads((cfg.run_dir / "eval_val.json").read_text())
    assert report["tta"] is True
    assert report["n_studies"] == read_split(cfg.splits_dir / "val.csv").groupby(
        ["patient_id", "study_id"]).ngroups


def test_predict_fuses_the_views_of_each_study_folder(study_run, tmp_path, capsys):
    """predict.py on CheXpert's folder layout: one row per study, its views fused as in training
    (equal to the model on the evaluation tensors of that study); an unreadable view is listed
    and its study predicted from the other view."""
    import shutil

    import pandas as pd

    import predict
    from cxr.inference.predictor import load_predictor, predict_sources
    cfg = study_run
    (cfg.run_dir / "thresholds.json").unlink(missing_ok=True)  # the model's own probabilities
    frame = read_split(cfg.splits_dir / "train.csv")
    data = make_dataset(frame, cfg, cfg.data_dir, False, "train")
    model, _ = model_from_checkpoint(torch.load(cfg.run_dir / "best.pth", weights_only=True))
    (views, present), _ = data.__getitems__(list(range(len(data))))
    with torch.no_grad():
        expected = torch.sigmoid(model((views, present))).numpy()

    output = tmp_path / "pred.csv"
    predict.main(Config(**{**cfg.__dict__, "inputs": (str(cfg.data_root),),
                           "output": str(output), "device": "cpu", "precision": "fp32"}))
    assert "study predictions" in capsys.readouterr().out
    table = pd.read_csv(output)
    assert list(table.columns[:3]) == ["study", "views", "n_views"]
    folders = [str(Path(path).parent) for path in data.paths]
    table = table.set_index("study").loc[folders]  # also: every training study is there
    assert table["n_views"].tolist() == present.sum(1).tolist()
    assert np.allclose(table[list(LABELS)].to_numpy(), expected, atol=1e-5)

    # a study with a lateral film that cannot be read: predicted from its frontal film alone
    two = next(i for i in range(len(data)) if present[i].sum() == 2)
    study = tmp_path / "scans" / "patient_x" / "study1"
    study.mkdir(parents=True)
    shutil.copy(data.paths[two], study / "view1_frontal.jpg")
    (study / "view2_lateral.jpg").write_bytes(b"")
    predictor = load_predictor(cfg.run_dir / "best.pth", Config(device="cpu", precision="fp32",
                                                               num_workers=0),
                               rebuild=model_from_checkpoint)
    single = predict_sources(predictor, [str(study / "view1_frontal.jpg")], progress=False)
    predict.main(Config(**{**cfg.__dict__, "inputs": (str(tmp_path / "scans"),),
                           "output": str(output), "device": "cpu", "precision": "fp32"}))
    table = pd.read_csv(output)
    assert table["n_views"].tolist() == [1] and table["study"].tolist() == [str(study)]
    assert np.allclose(table[list(LABELS)].to_numpy(), single.table[list(LABELS)].to_numpy(),
                       atol=1e-5)
    errors = pd.read_csv(tmp_path / "pred_errors.csv")
    assert errors["path"].tolist() == [str(study / "view2_lateral.jpg")]


def test_studies_are_grouped_by_folder_frontal_first():
    from predict import group_studies
    paths = ["p1/s1/view2_lateral.jpg", "p1/s1/view1_frontal.jpg", "p2/s1/view1_frontal.jpg",
             "p1/s1/view3_lateral.jpg"]
    studies, names, left_out = group_studies(paths, "folder", max_views=2)
    assert studies == [[1, 0], [2]] and left_out == ["p1/s1/view3_lateral.jpg"]
    assert [Path(name).name for name in names] == ["s1", "s1"] and names[0] != names[1]
    assert group_studies(paths, "image", max_views=2) == ([[0], [1], [2], [3]], paths, [])
