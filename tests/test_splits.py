"""make_splits.py: patient-level split with zero overlap; the official valid set becomes test."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import make_root, row
from config import Config, PipelineError
import make_splits
import preprocess


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
