"""Patient-level splits: no patient has images on two sides (make_splits.py's train/val, and
preprocess.py's test hold-out of a dataset without an official test split)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from config import PipelineError


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
