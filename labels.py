"""CheXpert label logic: raw value parsing, uncertainty policies, positive-class weights.

CheXpert's labeler writes 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or leaves the cell
blank (not mentioned in the report). Columns are always addressed by their CheXpert name.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from config import LABELS

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

# Spellings of the four raw values accepted in a CSV cell (after stripping spaces).
RAW_VALUES = {"1.0": POSITIVE, "1": POSITIVE, "0.0": NEGATIVE, "0": NEGATIVE,
              "-1.0": UNCERTAIN, "-1": UNCERTAIN, "": np.nan}


def raw_column(label: str) -> str:
    """Name of the added column that keeps a label's raw CheXpert value (1, 0, -1 or blank)."""
    return f"{label} (raw)"


def _cells(column: pd.Series) -> pd.Series:
    """A label column's cells with surrounding spaces removed (skipped when none has any)."""
    return column if column.isin(list(RAW_VALUES)).all() else column.str.strip()


def find_bad_label_values(df: pd.DataFrame, max_report: int = 10) -> tuple[int, list[str]]:
    """Cells of the label columns (read as strings) that are not 1.0, 0.0, -1.0 or blank.

    Returns the number of bad cells and a description of the first `max_report`, each naming
    the CSV line (header = line 1), the column and the value.
    """
    count, messages = 0, []
    for label in LABELS:
        bad = ~_cells(df[label]).isin(list(RAW_VALUES))
        count += int(bad.sum())
        for index in np.flatnonzero(bad.to_numpy())[: max_report - len(messages)]:
            messages.append(f"line {index + 2}, column {label!r}: {df[label].iloc[index]!r}")
    return count, messages


def parse_raw_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Strings to floats: 1.0, 0.0, -1.0, NaN for blank. Call find_bad_label_values first."""
    return pd.DataFrame({label: _cells(df[label]).map(RAW_VALUES).astype(float)
                         for label in LABELS}, index=df.index)


def apply_uncertainty_policy(raw: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Binary (0/1, int8) training targets from raw labels.

    U-Ones: uncertain -> 1 (the CheXpert paper's best policy for Atelectasis and Edema);
    U-Zeros: uncertain -> 0. Blank (not mentioned) is a negative under both: CheXpert's labeler
    leaves a finding blank when the report does not mention it.
    """
    uncertain_value = {"U-Ones": POSITIVE, "U-Zeros": NEGATIVE}[policy]
    targets = raw[list(LABELS)].replace(UNCERTAIN, uncertain_value)
    return targets.fillna(NEGATIVE).astype(np.int8)  # blank means "not mentioned": negative


def positive_class_weights(targets: np.ndarray, max_weight: float) -> np.ndarray:
    """Per-class BCE pos_weight = negatives / positives, so rare findings are not ignored.

    Capped at `max_weight` (a class with 3 positives in 10,000 would otherwise get a weight of
    3,000 and dominate every gradient); a class with no positives gets 1.
    """
    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return np.clip(weights, 1.0 / max_weight, max_weight).astype(np.float32)
