"""Statistics across seeds: a configuration trained N times, compared with the baseline's N runs.

A configuration's AUC is the mean over its runs of each run's AUC (not the AUC of an ensemble of
the runs), with its spread across seeds: the sample SD and the range. B - baseline is the
difference of the seed-averaged AUCs, with a two-level (hierarchical) bootstrap interval:

1. test patients: every resample draws the patients with replacement, each patient's images
   together, and this draw is shared by every run of every configuration, so the difference is
   paired over patients (as compare.py). A run's AUC on it is bootstrap.py's weighted AUC: the
   means on one plain draw shared by their classes, a class alone on its stratified draw.
2. seeds: in the same resample, N of each configuration's N runs are drawn with replacement,
   independently for each configuration; its resampled AUC is the mean over the drawn runs of
   their AUCs on the resampled patients.

Runs of two configurations with the same seed number are not paired: a seed makes the same
initial weights and data order only while the configurations build the same model and read the
same data, and even then a changed option sends the two trainings apart after a few steps.
Independent draws do not credit a correlation that may not be there.

What the seed level can say rests on the N runs: a bootstrap of N values shows only the spread
those runs happened to show, and understates it (the variance of a resampled mean is (N - 1) / N
of the usual estimate's). With 3 seeds the interval is narrower than the seed variation
warrants; more seeds make it honest rather than wider.

Only classes evaluable in the split enter a mean (metrics.mean_exclusions: a defined AUC and at
least `min_positives` positives and negatives); the split is the same for every run, so every
run's mean averages the same classes. A resample in which a class has one label value is dropped
for that class and the means it belongs to (NaN), for every run alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.data.labels import has_both_values
from cxr.errors import PipelineError
from cxr.evaluation.bootstrap import BootstrapAUCs, bootstrap_aucs, mean_over, no_interval, \
    percentile_interval
from cxr.evaluation.compare import verdict
from cxr.evaluation.metrics import MEANS, STUDY_KEYS, mean_exclusions, per_class_auc
from cxr.evaluation.predictions import Predictions, study_rows

# Mixed into the seed of a configuration's draws of its runs, so that they never coincide with a
# patient draw made from the same --seed.
SEED_DRAW_STREAM = 17


@dataclass
class Aligned:
    """Every run's scores on the rows (images, or studies) that all of them predicted."""

    frame: pd.DataFrame  # the rows' keys, with patient_id
    scores: list[np.ndarray]  # one (rows, classes) array per run, in the order given
    targets: np.ndarray  # (rows, classes), NaN where the label is masked
    labels: tuple[str, ...]
    unit: str  # "images" or "studies"


def align_runs(predictions: list[Predictions], aggregation: str, per_study: bool = False
               ) -> Aligned:
    """The runs on the rows all predicted, as evaluation.paired does for two: images, or studies
    when `per_study` or any run predicts studies (an image model's images then aggregated by
    `aggregation`). Images are ranked by logits, studies by probabilities."""
    labels = predictions[0].labels
    for p in predictions[1:]:
        if p.labels != labels:
            raise PipelineError(f"the runs predict different labels ({list(labels)} vs "
                                f"{list(p.labels)})")
    if per_study or any(p.per_study for p in predictions):
        unit, keys = "studies", list(STUDY_KEYS)
        parts = [study_rows(p, aggregation) for p in predictions]
    else:
        unit, keys = "images", ["image_path"]
        parts = [(p.frame, p.logits, p.targets) for p in predictions]
    indexes = [pd.MultiIndex.from_frame(frame[keys].reset_index(drop=True))
               for frame, _, _ in parts]
    common = indexes[0]
    for index in indexes[1:]:
        common = common[common.isin(index)]
    if len(common) < max(map(len, indexes)):
        print(f"seeds: the {len(common)} {unit} predicted by every run are compared")
    rows = [index.get_indexer(common) for index in indexes]
    frame = parts[0][0].iloc[rows[0]].reset_index(drop=True)
    return Aligned(frame, [scores[r] for (_, scores, _), r in zip(parts, rows)],
                   parts[0][2][rows[0]], labels, unit)


def mean_members(targets: np.ndarray, labels: tuple[str, ...], min_positives: int
                 ) -> dict[str, tuple[str, list[int]]]:
    """{MEANS key: (title, the columns it averages)}: the classes evaluable in this split
    (mean_exclusions). No competition mean for labels other than CheXpert's."""
    # mean_exclusions reads of the AUCs only which are undefined: those of one label value
    aucs = {label: 1.0 if has_both_values(targets[:, c]) else None
            for c, label in enumerate(labels)}
    excluded = mean_exclusions(targets, labels, aucs, min_positives)
    members = {}
    for key, title, subset in MEANS:
        if subset is not None and not set(subset) & set(labels):
            continue
        members[key] = (title, [c for c, label in enumerate(labels)
                                if (subset is None or label in subset) and label not in excluded])
    return members


# ---- one configuration's runs ------------------------------------------------------------------

@dataclass
class SeedRuns:
    """One configuration's runs, scored on the aligned rows."""

    seeds: list[int]
    aucs: np.ndarray  # (runs, classes): each run's AUC, NaN where undefined
    boot: list[BootstrapAUCs] | None  # each run's AUCs on the shared patient resamples
    draws: np.ndarray | None  # (resamples, runs): the runs (indices) each resample averages
    note: str = ""  # why there are no resamples, when boot is None


def no_resamples_note(n_resamples: int, patient_ids) -> str:
    """Why a split gives no bootstrap ('' when it does), in compare.py's words."""
    if n_resamples == 0:
        return "no interval: --bootstrap_resamples 0"
    if pd.Series(patient_ids).nunique() < 2:
        return "n/a: one patient in this split, no patient bootstrap"
    return ""


def seed_draws(n_runs: int, n_resamples: int, seed: int, index: int) -> np.ndarray:
    """(resamples, runs) indices: each resample's N runs drawn with replacement from the
    configuration's N, from (seed, index): one stream per configuration."""
    rng = np.random.default_rng([seed, SEED_DRAW_STREAM, index])
    return rng.integers(0, n_runs, (n_resamples, n_runs))


def score_runs(scores: list[np.ndarray], seeds: list[int], aligned: Aligned, n_resamples: int,
               seed: int, index: int) -> SeedRuns:
    """A configuration's runs (`scores`, in the order of `seeds`) on the aligned rows: each
    run's AUCs, on the patient resamples drawn from `seed` (the same for every run: they are
    drawn from the seed and the targets), and the configuration's draws of its runs (`index`:
    its position, so that every configuration draws its own)."""
    targets, patients = aligned.targets, aligned.frame["patient_id"]
    aucs = np.array([[np.nan if auc is None else auc
                      for auc in per_class_auc(targets, s, aligned.labels).values()]
                     for s in scores])
    note = no_resamples_note(n_resamples, patients)
    if note:
        return SeedRuns(list(seeds), aucs, None, None, note)
    boot = [bootstrap_aucs(s, targets, patients, n_resamples, seed) for s in scores]
    return SeedRuns(list(seeds), aucs, boot, seed_draws(len(scores), n_resamples, seed, index))


def run_values(runs: SeedRuns, columns: list[int]) -> np.ndarray:
    """(runs,) each run's mean AUC over `columns` (one column: that class's AUC)."""
    return runs.aucs[:, columns].mean(axis=1)


def resampled(runs: SeedRuns, columns: list[int], joint: bool) -> np.ndarray:
    """(resamples,) the seed-averaged mean AUC over `columns` in every two-level resample: the
    mean over the drawn runs of their AUCs on the resampled patients. A mean reads the `joint`
    patient draw, a single class its stratified one (as a report's intervals do)."""
    matrix = "joint" if joint else "per_class"
    values = np.stack([mean_over(getattr(b, matrix), columns) for b in runs.boot])  # (runs, B)
    return values[runs.draws, np.arange(values.shape[1])[:, None]].mean(axis=1)


def spread(values: np.ndarray) -> dict:
    """Mean, sample SD (None for one run), min and max of the runs' values."""
    return {"mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
            "min": float(values.min()), "max": float(values.max())}


def defined(runs: SeedRuns, columns: list[int]) -> bool:
    """Whether every run has an AUC in each of `columns` (none when the list is empty)."""
    return bool(columns) and bool(np.isfinite(runs.aucs[:, columns]).all())


def seed_summary(runs: SeedRuns, columns: list[int], level: float, joint: bool = True) -> dict:
    """A configuration's mean AUC over `columns` (`joint`: a mean; else one class): mean over
    its runs, their spread, each run's value, and the two-level interval of the seed-averaged
    mean."""
    if not defined(runs, columns):
        return {"mean": None, "sd": None, "min": None, "max": None,
                "values": dict.fromkeys(runs.seeds),
                "ci_low": None, "ci_high": None, "note": "n/a: AUC undefined"}
    values = run_values(runs, columns)
    interval = (no_interval(runs.note) if runs.boot is None
                else percentile_interval(resampled(runs, columns, joint), level))
    return {**spread(values), "values": dict(zip(runs.seeds, map(float, values))),
            "ci_low": interval.low, "ci_high": interval.high, "note": interval.note}


def seed_difference(base: SeedRuns, other: SeedRuns, columns: list[int], level: float,
                    joint: bool = True) -> dict:
    """other - base of the seed-averaged mean AUCs over `columns` (`joint`: a mean; else one
    class), with its two-level interval (the patients drawn once for both, each configuration's
    runs drawn on its own) and compare.py's verdict ("B better": other better)."""
    if not (defined(base, columns) and defined(other, columns)):
        interval = no_interval("n/a: AUC undefined (one label value)")
        difference = None
    else:
        difference = float(run_values(other, columns).mean() - run_values(base, columns).mean())
        interval = (no_interval(base.note or other.note) if base.boot is None or other.boot is None
                    else percentile_interval(resampled(other, columns, joint)
                                             - resampled(base, columns, joint), level))
    return {"difference": difference, "ci_low": interval.low, "ci_high": interval.high,
            "verdict": verdict(interval.low, interval.high),
            "note": interval.note}
