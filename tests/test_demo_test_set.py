"""make_demo_data.py's test set: CheXpert's test layout, groundtruth.csv's format, three readers,
and train/valid files that do not change with it."""

from __future__ import annotations

import filecmp

import numpy as np
import pandas as pd
import pytest

import make_demo_data
from cxr.data.labels import LABELS
from cxr.errors import ConfigError
from make_demo_data import DemoConfig

TINY = dict(patients=4, valid_patients=2, width=64, height=80, seed=7, lateral_fraction=0.5)


def test_demo_test_set_layout_labels_and_readers(tmp_path, capsys):
    with_test, without = tmp_path / "with", tmp_path / "without"
    cfg = DemoConfig(out=str(with_test), test_patients=5, **TINY)
    make_demo_data.main(cfg)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    make_demo_data.main(DemoConfig(out=str(without), test_patients=0, **TINY))
    assert "test images (5 patients" in printed and "test_groundtruth.csv" in printed

    # the test tree: one study per patient, numbered after the 4 + 2 train and valid patients
    test_root = with_test / "CheXpert-v1.0" / "test"
    folders = sorted(p.relative_to(with_test).as_posix() for p in test_root.glob("*/*"))
    assert folders == [f"CheXpert-v1.0/test/patient{n:05d}/study1" for n in range(7, 12)]
    films = {p.name for p in test_root.glob("*/*/*")}
    assert "view1_frontal.jpg" in films and films <= {"view1_frontal.jpg", "view2_lateral.jpg"}
    assert all((with_test / folder / "view1_frontal.jpg").is_file() for folder in folders)

    # groundtruth.csv's format: Study, the 14 labels in order, integers 0/1, a row per folder
    truth_file = with_test / "test_groundtruth.csv"
    truth = pd.read_csv(truth_file)
    assert list(truth.columns) == ["Study", *LABELS]
    assert truth["Study"].tolist() == folders
    assert truth[list(LABELS)].isin([0, 1]).all().all()
    assert all("." not in line.split(",", 1)[1]  # 0 and 1, not 0.0 and 1.0
               for line in truth_file.read_text().splitlines()[1:])
    # the findings drawn in the films, as valid.csv labels them
    studies = make_demo_data.plan_test_studies(cfg, np.random.default_rng([cfg.seed, 1]))
    assert truth[list(LABELS)].to_numpy().tolist() == [[int(s.labels[label]) for label in LABELS]
                                                       for s in studies]
    assert truth["Cardiomegaly"].tolist() == [int("Cardiomegaly" in s.findings) for s in studies]
    assert (truth["No Finding"] == 1).any() and (truth["No Finding"] == 0).any()

    readers = [pd.read_csv(with_test / "test_readers" / f"reader{k}.csv") for k in (1, 2, 3)]
    for reads in readers:
        assert list(reads.columns) == ["Study", *LABELS]
        assert reads["Study"].tolist() == folders
        assert reads[list(LABELS)].isin([0, 1]).all().all()
    assert not readers[0].equals(readers[2])  # readers differ

    # the train and valid files are the same with or without the test set
    for name in ("CheXpert-v1.0-small/train.csv", "CheXpert-v1.0-small/valid.csv",
                 "annotations.csv", "CheXpert-v1.0-small/valid/patient00005/study1/"
                                    "view1_frontal.jpg"):
        assert filecmp.cmp(with_test / name, without / name, shallow=False), name
    assert not (without / "CheXpert-v1.0").exists()
    assert not (without / "test_groundtruth.csv").exists()
    assert not (without / "test_readers").exists()

    with pytest.raises(ConfigError, match="--test_patients must be at least 0"):
        make_demo_data.main(DemoConfig(out=str(tmp_path / "bad"), test_patients=-1, **TINY))
