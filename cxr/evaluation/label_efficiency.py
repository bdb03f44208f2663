"""Label-efficiency curves: a configuration's test AUC against the labelled training patients.

ablate.py --train_fraction trains every configuration on seeded, nested shares of the training
split's patients (cxr.data.splits.patient_subset, the function train.py trains on), with each
of its seeds. One point of the curve is a configuration at one share: its test mean AUC over all
evaluable observations and over the competition five, each with its interval, taken from the
ablation table's row of that share (ablate.py's table_row or seed_row), so the curve and the
table never disagree:

- one seed: the run's report (eval_test.json), its cluster-robust DeLong interval over the test
  patients (cxr/evaluation/intervals.py);
- several seeds: the mean over the runs of each run's AUC, with the two-level bootstrap interval
  of seeds.py (the test patients resampled, and the runs resampled).

The x of a point is the number of labelled training patients the share holds. A share is
ceil(share x patients) of them (at least one), the same count for every seed, but each seed
draws other patients, and so other images: TrainingShare keeps every seed's counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cxr.data.splits import patient_subset


@dataclass(frozen=True)
class TrainingShare:
    """What one --train_fraction share of the training split holds, for each seed."""

    fraction: float
    seeds: list[int]
    patients: list[int]  # labelled training patients, per seed
    images: list[int]  # their images (rows of the training split), per seed
    split_patients: int  # the whole training split's patients

    @property
    def mean_patients(self) -> float:
        return sum(self.patients) / len(self.patients)

    @property
    def mean_images(self) -> float:
        return sum(self.images) / len(self.images)


def training_share(train: pd.DataFrame, fraction: float, seeds: list[int]) -> TrainingShare:
    """The share `fraction` of the training split `train` for each seed, as train.py draws it."""
    subsets = [patient_subset(train, fraction, seed) for seed in seeds]
    return TrainingShare(fraction, list(seeds),
                         [int(subset["patient_id"].nunique()) for subset in subsets],
                         [len(subset) for subset in subsets],
                         int(train["patient_id"].nunique()))


@dataclass(frozen=True)
class CurvePoint:
    """One configuration at one share: label_efficiency.csv's row."""

    configuration: str
    train_fraction: float
    patients: float  # labelled training patients: the mean over the seeds (equal for every seed)
    patients_min: int
    patients_max: int
    images: float  # their images: the mean over the seeds
    images_min: int
    images_max: int
    mean_auc: float | None  # test mean AUC over the evaluable observations
    ci_low: float | None
    ci_high: float | None
    competition_auc: float | None  # test mean AUC over the competition five
    competition_ci_low: float | None
    competition_ci_high: float | None
    mean_auc_sd: float | None  # sample SD across the seeds (None with one seed)
    competition_auc_sd: float | None
    seeds: str  # "42 43"
    n_seeds: int
    test_patients: int
    test_images: int
    level: str  # "image", or "study" when any configuration predicts studies
    interval: str  # what the intervals cover: "test patients" or "test patients and seeds"
    runs: str  # the run folders, ";"-separated


def curve_point(row: dict, share: TrainingShare) -> CurvePoint:
    """The point of an ablation-table row (table_row: one seed; seed_row: several) trained on
    `share`."""
    n_seeds = row.get("n_seeds", 1)
    return CurvePoint(
        configuration=row["configuration"], train_fraction=share.fraction,
        patients=share.mean_patients, patients_min=min(share.patients),
        patients_max=max(share.patients), images=share.mean_images,
        images_min=min(share.images), images_max=max(share.images),
        mean_auc=row["mean_auc"], ci_low=row["mean_auc_ci_low"],
        ci_high=row["mean_auc_ci_high"], competition_auc=row["competition_auc"],
        competition_ci_low=row["competition_auc_ci_low"],
        competition_ci_high=row["competition_auc_ci_high"],
        mean_auc_sd=row.get("mean_auc_sd"), competition_auc_sd=row.get("competition_auc_sd"),
        seeds=row.get("seeds", " ".join(map(str, share.seeds))), n_seeds=n_seeds,
        test_patients=row["n_patients"], test_images=row["n_images"], level=row["level"],
        interval="test patients and seeds" if n_seeds > 1 else "test patients",
        runs=row.get("runs", row.get("run", "")))
