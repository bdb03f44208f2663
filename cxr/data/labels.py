"""CheXpert label logic: raw value parsing, the reference standard, uncertainty policies,
positive-class weights.

CheXpert's labeler writes 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or leaves the cell
blank (not mentioned in the report). Columns are always addressed by their CheXpert name.
"""

from __future__ import annotations

import typing
from typing import Literal

import numpy as np
import pandas as pd

from cxr.errors import ConfigError

# The 14 CheXpert observations, in the order of the CheXpert CSVs. Code refers to them by name.
LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# How an uncertain (-1) label is trained (labels.training_targets): as positive, as negative,
# masked out of the loss, as a third class, or as a soft positive / negative target.
UncertaintyPolicy = Literal["U-Ones", "U-Zeros", "U-Ignore", "U-MultiClass", "U-Ones-LSR",
                            "U-Zeros-LSR"]
UNCERTAINTY_POLICIES: tuple[str, ...] = typing.get_args(UncertaintyPolicy)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
# A raw value CheXpert's labeler never writes: the dataset does not annotate this finding at all
# (NIH: Fracture, Support Devices; cxr/data/adapters.py). Unlike blank (not mentioned = negative) it
# is unknown: masked from the loss and from every reference standard, shown n/a in reports.
NOT_LABELLED = -2.0
# What predictions, the GUI and model.json say of a label the model's training split never
# labelled (no probability, no decision).
NOT_TRAINED = "not trained"
MULTICLASS_UNCERTAIN = 2.0  # class index of "uncertain" in a U-MultiClass target (0 neg, 1 pos)
# Label smoothing regularisation (Pham et al. 2021): an uncertain label becomes a soft target
# drawn once, uniformly in this range.
LSR_RANGES = {"U-Ones-LSR": (0.55, 0.85), "U-Zeros-LSR": (0.0, 0.30)}

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


def reference_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """The 14 observation columns of the processed and split CSVs (nullable Int8): each row's
    reference standard, the values evaluation_targets computes from the raw columns: 1 positive,
    0 negative or blank (not mentioned), <NA> where the label is uncertain (-1) or NOT_LABELLED.

    The same under every uncertainty policy, which only train.py reads (training_targets, from
    the raw columns): the processed data do not depend on it, and one preprocessing serves
    every policy.
    """
    values = raw[list(LABELS)]
    unknown = (values == UNCERTAIN) | (values == NOT_LABELLED)
    return (values == POSITIVE).astype("Int8").mask(unknown)


def class_policies(default: str, by_class: tuple[str, ...] = ()) -> dict[str, str]:
    """The training policy of every label: `default`, except "Label=Policy" entries of
    `by_class` (e.g. ("Atelectasis=U-Ones", "Cardiomegaly=U-MultiClass"))."""
    policies = dict.fromkeys(LABELS, default)
    for entry in by_class:
        label, _, policy = (part.strip() for part in entry.partition("="))
        if label not in LABELS:
            raise ConfigError(f"--uncertainty_policy_by_class: unknown label {label!r} in "
                              f"{entry!r}; labels are {', '.join(LABELS)}")
        if policy not in UNCERTAINTY_POLICIES:
            raise ConfigError(f"--uncertainty_policy_by_class: {entry!r}: policy must be one of "
                              f"{', '.join(UNCERTAINTY_POLICIES)}")
        policies[label] = policy
    return policies


def multiclass_flags(policies: dict[str, str]) -> tuple[bool, ...]:
    """Which labels get a 3-way (negative / positive / uncertain) output: U-MultiClass ones."""
    return tuple(policies[label] == "U-MultiClass" for label in LABELS)


def require_raw_columns(frame: pd.DataFrame, labels: tuple[str, ...]) -> None:
    missing = [raw_column(label) for label in labels if raw_column(label) not in frame.columns]
    if missing:
        raise ConfigError(f"the split CSV lacks {missing[:2]}...: re-run preprocess.py and "
                          "make_splits.py with this version of the code")


def training_targets(frame: pd.DataFrame, policies: dict[str, str], seed: int) -> np.ndarray:
    """Float32 training targets (rows x labels) from the raw columns kept by preprocess.py.

    Blank (not mentioned) is negative under every policy. An uncertain (-1) label becomes:
    U-Ones 1, U-Zeros 0, U-Ignore NaN (masked out of the loss), U-MultiClass 2 (the third
    class of a 3-way output), U-Ones-LSR / U-Zeros-LSR a soft target drawn uniformly in
    [0.55, 0.85] / [0, 0.30], seeded per (seed, label), so it is the same in every epoch and run.
    NOT_LABELLED (a finding another dataset does not annotate) is NaN, masked, under every policy.
    """
    require_raw_columns(frame, LABELS)
    targets = np.empty((len(frame), len(LABELS)), dtype=np.float32)
    for column, label in enumerate(LABELS):
        raw = frame[raw_column(label)].to_numpy(dtype=np.float64, na_value=np.nan)
        values = np.where(raw == POSITIVE, 1.0, np.where(raw == NOT_LABELLED, np.nan, 0.0))
        uncertain = raw == UNCERTAIN  # blank and negative are 0, not labelled masked
        policy = policies[label]
        if policy in LSR_RANGES:
            low, high = LSR_RANGES[policy]
            soft = np.random.default_rng([seed, column]).uniform(low, high, len(raw))
            values = np.where(uncertain, soft, values)
        else:
            replacement = {"U-Ones": 1.0, "U-Zeros": 0.0, "U-Ignore": np.nan,
                           "U-MultiClass": MULTICLASS_UNCERTAIN}[policy]
            values = np.where(uncertain, replacement, values)
        targets[:, column] = values
    return targets


def evaluation_targets(frame: pd.DataFrame, labels: tuple[str, ...] = LABELS) -> np.ndarray:
    """The reference standard a split is scored against (rows x labels, float64): the raw
    labels with uncertain (-1) and NOT_LABELLED masked as NaN, blank (not mentioned) 0,
    whatever the policy.

    The same targets for every training policy, so that runs trained under different policies
    are selected, thresholded and calibrated on one reference. Scoring uncertain labels as
    positive (U-Ones' binary columns) would make a model that learnt the labeler's hedging look
    better: on CheXpert's train split, uncertain labels are 76 % of the val "positives" of
    Pneumonia and 66 % of Consolidation, while the radiologist-labelled test split has none.
    """
    require_raw_columns(frame, labels)
    raw = frame[[raw_column(label) for label in labels]].to_numpy(dtype=np.float64,
                                                                 na_value=np.nan)
    unknown = (raw == UNCERTAIN) | (raw == NOT_LABELLED)
    return np.where(unknown, np.nan, np.where(raw == POSITIVE, 1.0, 0.0))


def masked_counts(targets: np.ndarray, labels: tuple[str, ...]) -> dict[str, int]:
    """Per label, how many targets are masked (NaN: uncertain in the reference standard)."""
    return {label: int(np.isnan(targets[:, column]).sum()) for column, label in enumerate(labels)}


def logit_offsets(pos_weight: np.ndarray, multiclass: tuple[bool, ...]) -> np.ndarray:
    """log(pos_weight) per label: what BCE with positive weight w adds to the logit.

    The weighted loss is minimised by odds x w, i.e. by the calibrated logit + log w (w = 43.6
    for Pleural Other on CheXpert): subtracting log w gives probabilities that mean what they
    say. U-MultiClass labels are trained by unweighted cross-entropy: no offset.
    """
    offsets = np.log(np.asarray(pos_weight, dtype=np.float64))
    return np.where(np.asarray(multiclass, dtype=bool), 0.0, offsets).astype(np.float32)


def positive_class_weights(targets: np.ndarray, max_weight: float) -> np.ndarray:
    """Per-class BCE pos_weight = negatives / positives, so rare findings are not ignored.

    A target above 0.5 (up to 1) counts as positive, one below 0.5 as negative; masked (NaN)
    and U-MultiClass uncertain (2) targets count as neither. Capped at `max_weight` (a class
    with 3 positives in 10,000 would otherwise get a weight of 3,000 and dominate every
    gradient); a class with no positives gets 1.
    """
    with np.errstate(invalid="ignore"):
        positives = ((targets > 0.5) & (targets <= 1.0)).sum(axis=0)
        negatives = ((targets >= 0.0) & (targets < 0.5)).sum(axis=0)
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return np.clip(weights, 1.0 / max_weight, max_weight).astype(np.float32)


def trained_labels(targets: np.ndarray, labels: tuple[str, ...] = LABELS) -> list[str]:
    """The labels with at least one unmasked target in the training split (rows x labels, NaN
    masked): what a checkpoint records as "trained_labels". A label no training row labels
    (NIH's Enlarged Cardiomediastinum, Fracture, Support Devices: NOT_LABELLED on every row)
    adds nothing to the loss, so its output is that of the initial weights; predict.py, app.py
    and export.py mark it "not trained" instead of giving a probability."""
    observed = ~np.isnan(np.asarray(targets, dtype=np.float64))
    return [label for column, label in enumerate(labels) if observed[:, column].any()]


# ---- masked labels in arrays (NaN = unknown) -------------------------------------------------

def observed(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One class's (targets, scores) without its masked (NaN) labels."""
    keep = ~np.isnan(targets)
    return targets[keep], scores[keep]


def has_observed(y: np.ndarray) -> bool:
    return bool((~np.isnan(y)).any())


def has_both_values(y: np.ndarray) -> bool:
    """Whether the observed (non-masked) labels hold both 0 and 1."""
    y = y[~np.isnan(y)]
    return len(y) > 0 and y.min() != y.max()
