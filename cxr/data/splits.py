"""Patient-level splits: no patient has images on two sides (make_splits.py's train/val, and
preprocess.py's test hold-out of a dataset without an official test split), and the split CSVs
read back with the columns training and evaluation need. No torch here: preprocess.py and
make_splits.py start without it (the DataLoaders over the splits are in loading.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.labels import LABELS
from cxr.errors import PipelineError


def split_by_patient(frame: pd.DataFrame, val_fraction: float, seed: int,
                     option: str = "--val_fraction") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out `val_fraction` of the patients (all their studies and images) as val.

    The patients and rows that scikit-learn's GroupShuffleSplit(n_splits=1, test_size=
    val_fraction, random_state=seed) picks (tests/test_splits.py checks it), drawn with numpy
    alone: importing scikit-learn (it loads SciPy) takes longer than the whole split.
    """
    if frame["patient_id"].nunique() < 2:
        raise PipelineError(f"need at least 2 patients to hold some out ({option})")
    # as GroupShuffleSplit: the sorted patients and each row's index among them (np.unique's
    # result, 6x faster), then the first ceil(fraction x patients) of a seeded permutation
    patient_of_row, patients = pd.factorize(frame["patient_id"], sort=True)
    n_val = math.ceil(val_fraction * len(patients))
    if n_val >= len(patients):
        raise PipelineError(f"{option} {val_fraction} of {len(patients)} patients leaves "
                            "none for train: lower it or add patients")
    in_val = np.zeros(len(patients), dtype=bool)
    in_val[np.random.RandomState(seed).permutation(len(patients))[:n_val]] = True
    val_rows = in_val[patient_of_row]
    train, val = frame.iloc[np.flatnonzero(~val_rows)], frame.iloc[np.flatnonzero(val_rows)]
    assert_no_patient_overlap(train, val)
    return train, val


def assert_no_patient_overlap(*frames: pd.DataFrame) -> None:
    seen: set[str] = set()
    for frame in frames:
        patients = set(frame["patient_id"].unique().tolist())
        shared = seen & patients
        if shared:
            raise PipelineError(f"{len(shared)} patient(s) appear in two splits, e.g. "
                                f"{sorted(shared)[:3]}: this would leak them into evaluation")
        seen |= patients


def read_split(path: Path, labels: tuple[str, ...] = LABELS) -> pd.DataFrame:
    """A split CSV written by make_splits.py, checked for the columns training needs."""
    if not path.is_file():
        raise PipelineError(f"{path} not found: run preprocess.py and make_splits.py first "
                            "(with the same --data_dir)")
    frame = pd.read_csv(path)
    missing = [c for c in ("image_path", "patient_id", *labels) if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path} lacks column(s) {missing}: re-run preprocess.py and "
                            "make_splits.py with this version of the code")
    # the reference standard (labels.reference_columns): blank where uncertain or not labelled
    targets = frame[list(labels)]
    not_binary = ~(targets.isin([0, 1]) | targets.isna()).all()
    if not_binary.any():
        raise PipelineError(f"{path}: label column(s) {list(not_binary[not_binary].index)} hold "
                            "values other than 0/1; re-run preprocess.py")
    if frame.empty:
        raise PipelineError(f"{path} has no rows")
    return frame


def patient_subset(frame: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The rows of a seeded share of the split's patients (at least one patient).

    The patients are put in one order drawn from `seed`, and a share takes the first
    ceil(fraction x patients) of them: for one seed, each smaller share's patients are within
    every larger share's (nested subsets, as a label-efficiency curve needs)."""
    if fraction >= 1.0:
        return frame
    patients = np.sort(frame["patient_id"].astype(str).unique())
    order = np.random.default_rng(seed).permutation(len(patients))
    keep = set(patients[order[:max(1, math.ceil(fraction * len(patients)))]])
    return frame[frame["patient_id"].astype(str).isin(keep)].reset_index(drop=True)
