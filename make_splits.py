"""Split the processed training rows by patient into train and val; the official valid set is test.

    python make_splits.py [--val_fraction 0.1] [--seed 42]

Reads  <data_dir>/processed/train.csv and valid.csv (written by preprocess.py).
Writes <data_dir>/splits/train.csv and val.csv: a split by patient_id (the one scikit-learn's
       GroupShuffleSplit draws), so no patient has images on both sides (val is for model
       selection and early stopping);
       <data_dir>/splits/test.csv: CheXpert's official valid.csv, never used for model selection;
       <data_dir>/splits/splits.json: the settings (val_fraction, seed) and counts.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd

from config import Config, PipelineError
from cxr.atomic import write_atomic, write_csv_atomic, write_text_atomic
from cxr.chexpert import read_csv_text
from cxr.cli import run_cli


def split_by_patient(frame: pd.DataFrame, val_fraction: float, seed: int
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out `val_fraction` of the patients (all their studies and images) as val.

    The patients and rows that scikit-learn's GroupShuffleSplit(n_splits=1, test_size=
    val_fraction, random_state=seed) picks (tests/test_splits.py checks it), drawn with numpy
    alone: importing scikit-learn (it loads SciPy) takes longer than the whole split.
    """
    if frame["patient_id"].nunique() < 2:
        raise PipelineError("need at least 2 patients in the training CSV to make a val split")
    # as GroupShuffleSplit: the sorted patients and each row's index among them (np.unique's
    # result, 6x faster), then the first ceil(fraction x patients) of a seeded permutation
    patient_of_row, patients = pd.factorize(frame["patient_id"], sort=True)
    n_val = math.ceil(val_fraction * len(patients))
    if n_val >= len(patients):
        raise PipelineError(f"--val_fraction {val_fraction} of {len(patients)} patients leaves "
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


def read_processed(path) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path} not found: run preprocess.py first (with the same --data_dir)")
    return read_csv_text(path)  # strings round-trip exactly


def main(cfg: Config) -> None:
    processed, out_dir = cfg.processed_dir, cfg.splits_dir
    train_rows = read_processed(processed / "train.csv")
    train, val = split_by_patient(train_rows, cfg.val_fraction, cfg.seed)
    official_valid = read_processed(processed / "valid.csv")
    assert_no_patient_overlap(train, val, official_valid)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(train, out_dir / "train.csv")
    write_csv_atomic(val, out_dir / "val.csv")
    # byte-for-byte copy: the test set is not touched by the split
    write_atomic(out_dir / "test.csv", lambda tmp: shutil.copyfile(processed / "valid.csv", tmp))
    counts = {name: {"images": len(frame), "patients": int(frame["patient_id"].nunique())}
              for name, frame in (("train", train), ("val", val), ("test", official_valid))}
    record = {"settings": {"val_fraction": cfg.val_fraction, "seed": cfg.seed}, **counts}
    write_text_atomic(json.dumps(record, indent=2) + "\n", out_dir / "splits.json")
    print(f"make_splits: wrote {out_dir}/train.csv ({len(train):,} images, "
          f"{train['patient_id'].nunique():,} patients), val.csv ({len(val):,} images, "
          f"{val['patient_id'].nunique():,} patients), test.csv ({len(official_valid):,} images, "
          "official valid), splits.json; no patient in two splits")


if __name__ == "__main__":
    run_cli(main, script="make_splits.py")
