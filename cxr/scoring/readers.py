"""Readers against a model's ROC and precision-recall curves: the CheXpert paper's comparison
with radiologists.

A reader (a radiologist's binary reads, or a model's 0/1 decisions) has one operating point per
label: its true and false positives against the reference standard, masked labels left out. The
model has two curves, and the paper sets the readers against both. Per label, the number of
readers below each curve is counted, with that number's bootstrap distribution.

Everything is compared **in counts**, never in rounded rates. With P positives and N negatives
(or, in a resample, their patients' draw counts, integers too), the reader is (tp, fp) and the
model's thresholds are integer points (TP_k, FP_k) of roc_curve (sklearn, with the resample's
weights; its rates times N or P give the counts back exactly). A rate such as 1 - 386/422 and
36/422 differ in the last bit, which drops the curve's point at exactly the reader's rate: with
integers a reader that coincides with a point of the curve is on it, exactly.

- **ROC**: the curve is the thresholds' points joined by straight lines, the curve whose area is
  the AUC (a point between two thresholds is reached by choosing between them at random). Its
  true positives at the reader's fp: where a threshold has exactly fp false positives, the
  highest TP among them (the top of a vertical step); else the line between the thresholds on
  either side, TP_a + (TP_b - TP_a) (fp - FP_a) / (FP_b - FP_a), compared with tp
  cross-multiplied. Read as steps or as lines, the curve agrees at a threshold's point. The
  reader is below the curve when the curve's TP at fp exceeds tp; on the curve is not below.
- **PR**: see pr_precision (the highest precision at a recall at least the reader's).

Intervals: a reader's sensitivity, specificity and precision are proportions, with Wilson's
interval over the patients' clusters (intervals.proportion_interval, whose coverage
benchmarks/bench_coverage.py measures). The model's curves at a reader's point and the gains are
percentile intervals over the label's stratified patient resamples (bootstrap.class_resamples),
each resample moving the readers' points and the model's curves together; their coverage is not
simulated, so they are approximate (`interval_note`). The share of resamples in which k readers
are below a curve, P(k), is the bootstrap distribution of that number (resampling patients): not
a posterior probability, and not a p-value.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from sklearn.metrics import roc_curve

from cxr.data.labels import has_both_values
from cxr.evaluation.bootstrap import class_resamples, no_interval, percentile_interval
from cxr.evaluation.intervals import patient_codes, rate_interval
from cxr.evaluation.operating_points import metrics_at

# ---- the model's curve and a reader's point, in counts -----------------------------------------

@dataclass
class Curve:
    """The model's operating points in counts: calling scores >= each threshold positive gives
    fp[k] false and tp[k] true positives (weighted: a row counts its patient's draws). Point 0 is
    no threshold (nothing called positive); both arrays are non-decreasing."""

    fp: np.ndarray  # int64
    tp: np.ndarray  # int64
    negatives: int  # N: fp[-1]
    positives: int  # P: tp[-1]


def integer_total(weights: np.ndarray) -> int:
    return int(np.rint(weights.sum()))


def model_curve(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
                ) -> Curve:
    """roc_curve's points (every threshold: drop_intermediate=False keeps the points that a
    straight ROC segment passes through, which are distinct PR points) as integer counts.
    Rows weighted 0 (a patient not drawn) are left out."""
    weights = np.ones(len(targets)) if weights is None else weights
    drawn = weights > 0
    targets, scores, weights = targets[drawn], scores[drawn], weights[drawn]
    positive = targets > 0.5
    negatives, positives = integer_total(weights[~positive]), integer_total(weights[positive])
    fpr, tpr, _ = roc_curve(targets, scores, sample_weight=weights, drop_intermediate=False)
    return Curve(np.rint(fpr * negatives).astype(np.int64),
                 np.rint(tpr * positives).astype(np.int64), negatives, positives)


def reader_counts(targets: np.ndarray, reads: np.ndarray, weights: np.ndarray
                  ) -> tuple[int, int]:
    """(tp, fp) of a reader's 0/1 reads, each row weighted by its patient's draws."""
    called = reads > 0.5
    positive = targets > 0.5
    return (integer_total(weights[called & positive]),
            integer_total(weights[called & ~positive]))


def roc_true_positives(curve: Curve, fp: int) -> Fraction:
    """The ROC curve's true positives at exactly `fp` false positives (0 <= fp <= N): the top of
    the vertical step where thresholds have fp false positives, else linear between the
    thresholds on either side; an exact fraction."""
    high = int(np.searchsorted(curve.fp, fp, side="right"))  # first point with FP > fp
    if curve.fp[high - 1] == fp:
        return Fraction(int(curve.tp[high - 1]))  # tp is non-decreasing: the step's top
    low = high - 1  # FP[low] < fp < FP[high]
    rise, run = int(curve.tp[high] - curve.tp[low]), int(curve.fp[high] - curve.fp[low])
    return int(curve.tp[low]) + Fraction(rise * (fp - int(curve.fp[low])), run)


def pr_precision(curve: Curve, tp: int, fp: int) -> tuple[float, bool]:
    """The model's precision at the reader's recall, and whether it exceeds the reader's
    precision tp / (tp + fp) (the reader is below the PR curve), compared exactly.

    How the PR curve is read between its points: the model's precision at recall r is the
    highest precision of a threshold whose recall is at least r (the interpolated precision of
    information retrieval, the envelope of PASCAL VOC's average precision). Why this one:
    - every value it takes is an operating point the model has (a threshold with at least the
      reader's recall at that precision), so "below the PR curve" means that a threshold of
      the model finds at least as many positives as the reader with a higher precision;
    - straight lines between PR points are not achievable (precision is not linear between two
      thresholds; Davis & Goadrich 2006), and a curve joined by them overstates the model;
    - sklearn's average_precision step (the precision of the first threshold whose recall
      reaches r) goes down and up again, so a reader could count as not below it while a
      threshold with more recall and more precision exists.
    In counts: below when some threshold k has TP_k >= tp and TP_k / (TP_k + FP_k) >
    tp / (tp + fp), i.e. TP_k fp > tp FP_k. The returned precision is that highest precision as
    a float (for tables); the verdict comes from the integers. A reader that calls nothing
    positive has no precision: (NaN, False).
    """
    if tp + fp == 0:
        return float("nan"), False
    reached = (curve.tp >= tp) & (curve.tp + curve.fp > 0)  # thresholds at the reader's recall
    model_tp, model_fp = curve.tp[reached], curve.fp[reached]
    below = bool(np.any(model_tp * fp > tp * model_fp))
    return float(np.max(model_tp / (model_tp + model_fp))), below


# ---- one label ----------------------------------------------------------------------------------

def reader_point(targets: np.ndarray, reads: np.ndarray, curve: Curve) -> dict:
    """A reader's counts, sensitivity, specificity and precision, and the model's curves at its
    point: sensitivity at its false positives (ROC), precision at its recall (PR)."""
    point = metrics_at(targets, reads, 0.5)
    model_tp = roc_true_positives(curve, point["fp"])
    model_precision, below_pr = pr_precision(curve, point["tp"], point["fp"])
    model_sensitivity = float(model_tp / curve.positives)
    precision = point["ppv"]
    return {"sensitivity": point["sensitivity"], "specificity": point["specificity"],
            **{key: point[key] for key in ("tp", "fn", "tn", "fp")},
            "below_curve": bool(model_tp > point["tp"]),
            "model_sensitivity": model_sensitivity, "model_tp": float(model_tp),
            "sensitivity_gain": model_sensitivity - point["sensitivity"],
            "precision": precision, "below_pr_curve": below_pr,
            "model_precision": None if precision is None else model_precision,
            "precision_gain": None if precision is None else model_precision - precision}


def interval_fields(name: str, values: np.ndarray | None, level: float, note: str) -> dict:
    interval = percentile_interval(values, level) if values is not None else no_interval(note)
    return {f"{name}_ci": [interval.low, interval.high]}


CURVE_KEYS = ("model_sensitivity", "sensitivity_gain", "model_precision",
              "precision_gain")  # the model's curve at the reader's point: bootstrap percentile
BOOTSTRAP_NOTE = ("approximate: percentile intervals over stratified patient resamples, coverage "
                  "not simulated")


CURVES = ("below_curve", "below_pr_curve")  # ROC, PR


def proportion_fields(targets: np.ndarray, reads: np.ndarray, codes: np.ndarray,
                      n_patients: int, level: float) -> dict:
    """A reader's sensitivity, specificity and precision intervals (intervals.rate_interval:
    Wilson over the patients' clusters)."""
    positive, called = targets > 0.5, reads > 0.5
    rows = {"sensitivity": (positive, called), "specificity": (~positive, ~called),
            "precision": (called, positive)}
    return {f"{key}_ci": rate_interval(among, hit, codes, n_patients, level).bounds
            for key, (among, hit) in rows.items()}


def label_comparison(targets: np.ndarray, scores: np.ndarray, reads: dict[str, np.ndarray],
                     patient_ids, column: int, n_resamples: int, level: float, seed: int
                     ) -> dict:
    """One label: every reader's operating point (with intervals) against the model's ROC and
    PR curves, the number of readers below each, and that number's bootstrap distribution.

    `targets` may hold NaN (masked): those rows take no part. `reads` maps each reader's name to
    its 0/1 reads of the same rows.
    """
    observed = ~np.isnan(targets)
    if not has_both_values(targets):
        return {"readers": {}, "below_curve": None, "below_pr_curve": None,
                "note": "n/a: one label value in the reference standard"}
    codes, n_patients = patient_codes(patient_ids)
    y, s, codes = targets[observed], scores[observed], codes[observed]
    curve = model_curve(y, s)
    result = {name: reader_point(y, r[observed], curve) for name, r in reads.items()}
    resampled = (resampled_points(y, s, {n: r[observed] for n, r in reads.items()}, codes,
                                  n_patients, n_resamples, seed, column)
                 if n_resamples and n_patients > 1 else None)
    note = "no interval: --bootstrap_resamples 0" if not n_resamples else \
        "n/a: one patient, no patient bootstrap"
    for name, point in result.items():
        point.update(proportion_fields(y, reads[name][observed], codes, n_patients, level))
        for key in CURVE_KEYS:
            point.update(interval_fields(key, None if resampled is None
                                         else resampled[name][key], level, note))
        point["interval_note"] = BOOTSTRAP_NOTE if resampled is not None else note
    summary = {"readers": result}
    for key in CURVES:
        summary[key] = int(sum(point[key] for point in result.values()))
        if resampled is not None:
            counts = np.sum([resampled[name][key] for name in reads], axis=0)
            summary[f"{key}_distribution"] = {
                str(k): float(np.mean(counts == k)) for k in range(len(reads) + 1)}
            summary.update(interval_fields(key, counts.astype(float), level, note))
    return summary


def resampled_points(targets: np.ndarray, scores: np.ndarray, reads: dict[str, np.ndarray],
                     codes: np.ndarray, n_patients: int, n_resamples: int, seed: int,
                     column: int) -> dict[str, dict[str, np.ndarray]]:
    """Per reader, per resample: sensitivity, precision, the model's curves at the reader's
    point (sensitivity at its false positives, precision at its recall), the differences, and
    whether the reader is below each curve (compared in weighted counts).

    One roc_curve per resample (1,000 x 14 labels take a few seconds): sklearn's curve, with the
    resample's draw counts as sample weights, rather than a hand-written weighted curve.
    """
    counts = class_resamples(targets, codes, n_patients, n_resamples, seed, column)
    keys = ("sensitivity", "model_sensitivity", "precision", "model_precision")
    values = {name: {key: np.empty(n_resamples) for key in keys} for name in reads}
    for name in reads:
        values[name].update({key: np.zeros(n_resamples, dtype=bool) for key in CURVES})
    for b in range(n_resamples):  # one resample at a time: memory stays at one row of weights
        weights = counts[b, codes]
        curve = model_curve(targets, scores, weights)
        for name, r in reads.items():
            entry = values[name]
            tp, fp = reader_counts(targets, r, weights)
            model_tp = roc_true_positives(curve, fp)
            entry["sensitivity"][b] = tp / curve.positives
            entry["model_sensitivity"][b] = float(model_tp / curve.positives)
            entry["below_curve"][b] = model_tp > tp
            entry["precision"][b] = tp / (tp + fp) if tp + fp else np.nan
            entry["model_precision"][b], entry["below_pr_curve"][b] = pr_precision(curve, tp, fp)
    for entry in values.values():
        entry["sensitivity_gain"] = entry["model_sensitivity"] - entry["sensitivity"]
        entry["precision_gain"] = entry["model_precision"] - entry["precision"]
    return values


def compare_readers(targets: np.ndarray, scores: np.ndarray,
                    reads: dict[str, dict[str, np.ndarray]], labels: tuple[str, ...],
                    patient_ids, n_resamples: int, level: float, seed: int) -> dict[str, dict]:
    """label_comparison of every label some reader read: {label: ...}. `reads` maps a reader's
    name to {label: its 0/1 reads aligned with the rows of targets}."""
    comparisons = {}
    for column, label in enumerate(labels):
        readers = {name: by_label[label] for name, by_label in reads.items() if label in by_label}
        if readers:
            comparisons[label] = label_comparison(targets[:, column], scores[:, column], readers,
                                                  patient_ids, column, n_resamples, level, seed)
    return comparisons
