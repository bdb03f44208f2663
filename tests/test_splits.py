"""make_splits.py: patient-level split with zero overlap; the official valid set becomes test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import make_splits
import preprocess
from config import Config
from conftest import make_root, row, shared
from cxr.errors import PipelineError


def test_split_keeps_every_patient_on_one_side(tmp_path):
    train_rows = [row("train", patient, study) for patient in range(1, 41) for study in (1, 2, 3)]
    root = make_root(tmp_path, train_rows, [row("valid", 100), row("valid", 101)], images=False)
    cfg = Config(data_root=str(root), data_dir=str(tmp_path / "data"), check_images=False,
                 val_fraction=0.25, seed=3)
    preprocess.main(cfg)
    make_splits.main(cfg)
    train = pd.read_csv(cfg.splits_dir / "train.csv")
    val = pd.read_csv(cfg.splits_dir / "val.csv")
    assert not set(train["patient_id"]) & set(val["patient_id"])
    assert len(train) + len(val) == 120 and val["patient_id"].nunique() == 10
    assert val.groupby("patient_id").size().eq(3).all()  # all of a patient's studies together
    test = (cfg.splits_dir / "test.csv").read_bytes()
    assert test == (cfg.processed_dir / "valid.csv").read_bytes()

    make_splits.main(cfg)  # the same seed gives the same split
    assert pd.read_csv(cfg.splits_dir / "val.csv")["Path"].tolist() == val["Path"].tolist()


def test_overlap_with_the_test_set_is_refused(tmp_path):
    root = make_root(tmp_path, [row("train", 1), row("train", 2), row("train", 3)],
                     [row("valid", 2)], images=False)
    cfg = Config(data_root=str(root), data_dir=str(tmp_path / "data"), check_images=False)
    preprocess.main(cfg)
    with pytest.raises(PipelineError, match="patient00002"):
        make_splits.main(cfg)


def test_missing_input_names_the_script_to_run(tmp_path):
    with pytest.raises(PipelineError, match="run preprocess.py first"):
        make_splits.main(Config(data_dir=str(tmp_path)))


@pytest.mark.parametrize("patients, fraction, seed", [(40, 0.25, 3), (41, 0.1, 42), (7, 0.5, 0),
                                                      (1000, 0.137, 12345), (3, 0.34, 2**31)])
def test_split_is_the_one_group_shuffle_split_draws(patients, fraction, seed):
    """make_splits draws with numpy alone; the patients in each split are scikit-learn's."""
    GroupShuffleSplit = pytest.importorskip("sklearn.model_selection").GroupShuffleSplit
    rng = np.random.default_rng(patients)
    ids = [f"patient{number:05d}" for number in rng.integers(1, 5 * patients, patients)]
    frame = pd.DataFrame({"patient_id": pd.Series(rng.permutation(np.repeat(
        ids, rng.integers(1, 5, patients))), dtype="str")})  # unsorted, 1-4 rows per patient
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    expected_train, expected_val = next(splitter.split(frame, groups=frame["patient_id"]))
    train, val = make_splits.split_by_patient(frame, fraction, seed)
    assert train.index.tolist() == expected_train.tolist()
    assert val.index.tolist() == expected_val.tolist()


def test_split_of_the_real_patients_is_the_group_shuffle_split_one():
    """The 64,534 patients of CheXpert's frontal rows at the default fraction and seed."""
    GroupShuffleSplit = pytest.importorskip("sklearn.model_selection").GroupShuffleSplit
    labels = pd.read_csv(shared("chexpert-train-labels/train.csv.gz"), dtype=str,
                         usecols=["Path", "Frontal/Lateral"], keep_default_na=False)
    frontal = labels[labels["Frontal/Lateral"] == "Frontal"].reset_index(drop=True)
    frame = pd.DataFrame({"patient_id": frontal["Path"].str.extract(r"(patient\d+)/")[0]})
    cfg = Config()
    splitter = GroupShuffleSplit(n_splits=1, test_size=cfg.val_fraction, random_state=cfg.seed)
    _, expected_val = next(splitter.split(frame, groups=frame["patient_id"]))
    train, val = make_splits.split_by_patient(frame, cfg.val_fraction, cfg.seed)
    assert val.index.tolist() == expected_val.tolist() and len(train) + len(val) == 191_027
    assert val["patient_id"].nunique() == 6_454  # ceil(0.1 x 64,534)


def test_a_val_fraction_leaving_no_training_patient_is_refused():
    frame = pd.DataFrame({"patient_id": ["patient00001", "patient00002"]})
    with pytest.raises(PipelineError, match="leaves none for train"):
        make_splits.split_by_patient(frame, 0.6, seed=0)
