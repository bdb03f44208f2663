"""Patient-level bootstrap: the resamples behind score.py's readers against the model's curves
(the bootstrap distribution of how many are below) and ablate.py --seeds' two-level intervals.
The report card's own intervals need none (intervals.py).

Images of one patient are correlated (same anatomy, often the same findings in every study),
so resampling images would make intervals too narrow. Every resample draws patients with
replacement and takes all their images: an image's weight in a resample is how many times its
patient was drawn. The AUC of a resample is then a *weighted* AUC, computed for all resamples at
once (weighted_aucs) instead of building the repeated rows and calling roc_auc_score each time.

Two kinds of resamples, so that no interval is conditional on a rare patient being drawn:
- per class, a *stratified* patient bootstrap (as pROC's default for one AUC, at the patient
  level): the patients with a positive label of that class and those with only negative labels
  are resampled separately, so every resample holds the same number of positive patients and the
  AUC is always defined. A plain bootstrap drops every resample without the class's positives:
  with one positive patient that is 37 % of them, and the interval describes only the rest.
- for the means over classes, one plain patient draw shared by every class (a mean needs all its
  classes measured on the same patients). Only classes with at least `min_positives` positives and
  negatives enter a mean (metrics.py), so a resample that draws none of a member's positive
  patients is rare (below e^-10 when they belong to 10 patients); any resample in which a class
  has one label value is still dropped for that class, and for the means it belongs to, and
  counted in the report.

Masked labels (NaN: uncertain in the reference standard) take no part in a class's AUC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from cxr.evaluation.intervals import Interval, no_interval, patient_codes

# Resamples per matrix product: bounds memory at about chunk x (images + patients) floats.
CHUNK = 250


@dataclass
class Resamples:
    """Patient multiplicities of every bootstrap resample: counts[b, p] = draws of patient p."""

    counts: np.ndarray  # (resamples, patients) float64
    patient_of_image: np.ndarray  # (images,) index into the patient axis of counts
    n_patients: int


def draw_resamples(patient_ids: pd.Series | np.ndarray, n_resamples: int, seed: int) -> Resamples:
    """n_resamples draws of P patients with replacement (P = number of distinct patients)."""
    codes, n_patients = patient_codes(patient_ids)
    draws = np.random.default_rng(seed).integers(0, n_patients, (n_resamples, n_patients))
    # one bincount for all resamples: resample b's patients are offset by b * P
    offsets = np.arange(n_resamples)[:, None] * n_patients
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_patients)
    return Resamples(counts.reshape(n_resamples, n_patients).astype(float), codes, n_patients)


def stratified_counts(strata: list[np.ndarray], n_patients: int, n_resamples: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(resamples, patients) draw counts: each stratum's patients (codes) drawn with replacement
    as many times as the stratum has patients, independently of the other strata."""
    counts = np.zeros(n_resamples * n_patients)
    offsets = np.arange(n_resamples)[:, None] * n_patients
    for members in strata:
        if len(members):
            picked = members[rng.integers(0, len(members), (n_resamples, len(members)))]
            counts += np.bincount((picked + offsets).ravel(), minlength=n_resamples * n_patients)
    return counts.reshape(n_resamples, n_patients)


def class_strata(targets: np.ndarray, patient_of_image: np.ndarray, n_patients: int
                 ) -> list[np.ndarray]:
    """A class's two strata of patients: those with a positive label, and those with only
    negative ones. Patients whose labels of this class are all masked take no part in it."""
    observed = ~np.isnan(targets)
    positive = np.zeros(n_patients, dtype=bool)
    positive[patient_of_image[observed & (targets > 0.5)]] = True
    negative = np.zeros(n_patients, dtype=bool)
    negative[patient_of_image[observed & (targets <= 0.5)]] = True
    return [np.flatnonzero(positive), np.flatnonzero(negative & ~positive)]


def _group_matrix(groups: np.ndarray, patients: np.ndarray, mask: np.ndarray, n_groups: int,
                  n_patients: int) -> sparse.csr_matrix:
    """(score groups x patients) counts of the masked images: entry (g, p) = images of patient p
    with the g-th smallest score among the masked ones."""
    ones = np.ones(int(mask.sum()))
    return sparse.csr_matrix((ones, (groups[mask], patients[mask])), shape=(n_groups, n_patients))


def weighted_aucs(scores: np.ndarray, targets: np.ndarray, patient_of_image: np.ndarray,
                  counts: np.ndarray) -> np.ndarray:
    """ROC AUC of one class in every resample; NaN where a resample has one label value.

    Why not a loop of roc_auc_score: 1,000 resamples x 14 classes would be 14,000 calls, each
    building a repeated copy of ~10,000 rows and sorting it (about a minute). Here the scores are
    sorted once per class; a resample only changes the weights, and the Mann-Whitney statistic
    with weights is a few sums over the sorted score groups, done for all resamples as one sparse
    matrix product. Ties count one half, as in roc_auc_score:

        AUC = sum_g Wpos[g] * (Wneg[< g] + Wneg[g] / 2) / (sum Wpos * sum Wneg)

    where Wpos[g], Wneg[g] are the resample's weights of positive / negative images whose score is
    the g-th smallest distinct score, and an image's weight is its patient's draw count.
    """
    observed = ~np.isnan(targets)  # masked labels take no part
    scores, targets, patient_of_image = (scores[observed], targets[observed],
                                         patient_of_image[observed])
    unique, groups = np.unique(scores, return_inverse=True)
    n_groups, n_patients = len(unique), counts.shape[1]
    positive = targets > 0.5
    pos = _group_matrix(groups, patient_of_image, positive, n_groups, n_patients)
    neg = _group_matrix(groups, patient_of_image, ~positive, n_groups, n_patients)
    aucs = np.empty(len(counts))
    for start in range(0, len(counts), CHUNK):
        weights = counts[start:start + CHUNK].T  # (patients, chunk)
        w_pos, w_neg = pos @ weights, neg @ weights  # (groups, chunk)
        below = np.cumsum(w_neg, axis=0) - w_neg  # negative weight strictly below each group
        total_pos, total_neg = w_pos.sum(axis=0), w_neg.sum(axis=0)
        wins = (w_pos * (below + 0.5 * w_neg)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs[start:start + CHUNK] = np.where((total_pos > 0) & (total_neg > 0),
                                                 wins / (total_pos * total_neg), np.nan)
    return aucs


def bootstrap_auc_matrix(probs: np.ndarray, targets: np.ndarray, resamples: Resamples
                         ) -> np.ndarray:
    """(resamples, classes) AUCs on shared resamples; NaN where a class has one label value in
    a resample."""
    return np.stack([weighted_aucs(probs[:, c], targets[:, c], resamples.patient_of_image,
                                   resamples.counts) for c in range(targets.shape[1])], axis=1)


def stratified_auc_matrix(probs: np.ndarray, targets: np.ndarray, patient_ids, n_resamples: int,
                          seed: int) -> np.ndarray:
    """(resamples, classes) AUCs, each class on its own stratified resamples (class_strata),
    drawn from (seed, class): two models scored on the same targets get the same resamples."""
    codes, n_patients = patient_codes(patient_ids)
    columns = []
    for c in range(targets.shape[1]):
        counts = class_resamples(targets[:, c], codes, n_patients, n_resamples, seed, c)
        columns.append(weighted_aucs(probs[:, c], targets[:, c], codes, counts))
    return np.stack(columns, axis=1)


def class_resamples(targets: np.ndarray, codes: np.ndarray, n_patients: int, n_resamples: int,
                    seed: int, column: int) -> np.ndarray:
    """(resamples, patients) draw counts of one class's stratified resamples, drawn from
    (seed, column): every statistic of that class (its AUC interval, readers' operating points)
    is measured on the same resamples."""
    strata = class_strata(targets, codes, n_patients)
    return stratified_counts(strata, n_patients, n_resamples,
                             np.random.default_rng([seed, column]))


@dataclass
class BootstrapAUCs:
    """The per-resample AUCs behind a report's intervals."""

    per_class: np.ndarray  # (resamples, classes): stratified per class, for class intervals
    joint: np.ndarray  # (resamples, classes): one shared patient draw, for the means


def bootstrap_aucs(probs: np.ndarray, targets: np.ndarray, patient_ids, n_resamples: int,
                   seed: int) -> BootstrapAUCs:
    joint = bootstrap_auc_matrix(probs, targets, draw_resamples(patient_ids, n_resamples, seed))
    return BootstrapAUCs(stratified_auc_matrix(probs, targets, patient_ids, n_resamples, seed),
                         joint)


PERCENTILE = "percentile of the patient bootstrap"


def percentile_interval(values: np.ndarray, level: float) -> Interval:
    """Percentile interval of the finite values; NaN entries are the dropped resamples (their
    count in the note)."""
    finite = values[np.isfinite(values)]
    dropped = len(values) - len(finite)
    if len(finite) == 0:
        return no_interval("n/a: no resample had both label values")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    note = f"{dropped} of {len(values)} resamples had one label value, left out" if dropped \
        else ""
    return Interval(float(low), float(high), PERCENTILE, note)


def mean_over(matrix: np.ndarray, columns: list[int]) -> np.ndarray:
    """Per-resample mean over the given class columns; NaN if any of them is NaN (dropped)."""
    if not columns:
        return np.full(len(matrix), np.nan)
    return matrix[:, columns].mean(axis=1)
