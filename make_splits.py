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
import shutil

import pandas as pd

from config import Config
from cxr.atomic import write_atomic, write_csv_atomic, write_text_atomic
from cxr.cli import run_cli
from cxr.data.chexpert import read_csv_text
from cxr.data.splits import assert_no_patient_overlap, split_by_patient
from cxr.errors import PipelineError


def read_processed(path) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path} not found: run preprocess.py first (with the same --data_dir)")
    return read_csv_text(path)  # strings round-trip exactly


def test_source(processed) -> str:
    """What the test split is: CheXpert's official valid set, or what preprocess.py recorded
    for another dataset (its official test list, or a patient hold-out)."""
    stats = processed / "stats.json"
    recorded = json.loads(stats.read_text()).get("test_split") if stats.is_file() else None
    return recorded or "official valid"


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
          f"{test_source(processed)}), splits.json; no patient in two splits")


if __name__ == "__main__":
    run_cli(main, script="make_splits.py", defaults=Config())
