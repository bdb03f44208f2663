"""Readers against a model's ROC curve: the CheXpert paper's comparison with radiologists.

A reader (a radiologist's binary reads, or a model's 0/1 decisions) has one operating point per
label: its sensitivity and specificity against the reference standard, masked labels left out.
The model has a curve. A reader is *below the curve* when the curve reaches a higher sensitivity
at the reader's specificity; the paper's headline is how many readers are, per label.

The curve is roc_curve's points joined by straight lines, the curve whose area is the AUC (a
point between two thresholds is reached by choosing between them at random); where the curve
rises vertically at the reader's false-positive rate, its top counts. A reader exactly on the
curve is not below it.

Intervals are percentile intervals over the label's stratified patient resamples
(bootstrap.class_resamples), the same ones as the AUC interval of the report card: each resample
moves the readers' points and the model's curve together, so the count of readers below the curve
has a bootstrap distribution.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from cxr.bootstrap import class_resamples, no_interval, patient_codes, percentile_interval
from cxr.metrics import has_both_values
from cxr.operating_points import metrics_at

TOLERANCE = 1e-12  # a reader within this of the curve is on it, not below


def curve_sensitivity(fpr: np.ndarray, tpr: np.ndarray, false_positive_rate: float) -> float:
    """The ROC curve's sensitivity at a false-positive rate (1 - specificity): linear between
    roc_curve's points (fpr non-decreasing from 0), the highest point of a vertical step."""
    last = int(np.searchsorted(fpr, false_positive_rate, side="right")) - 1  # fpr[last] <= x
    if last >= len(fpr) - 1:
        return float(tpr[-1])
    step = (false_positive_rate - fpr[last]) / (fpr[last + 1] - fpr[last])  # fpr[last + 1] > x
    return float(tpr[last] + step * (tpr[last + 1] - tpr[last]))


def below(model_sensitivity, sensitivity):
    """Whether the curve's sensitivity at a reader's specificity beats the reader's (floats or
    arrays); within TOLERANCE it is on the curve, not below."""
    return model_sensitivity > sensitivity + TOLERANCE


def is_below(fpr: np.ndarray, tpr: np.ndarray, sensitivity: float, specificity: float) -> bool:
    return bool(below(curve_sensitivity(fpr, tpr, 1.0 - specificity), sensitivity))


def rates(targets: np.ndarray, reads: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(sensitivity, specificity) of the reads with each row weighted (its patient's draw count
    in a resample); NaN where the resample holds no positive (or no negative)."""
    positive, negative = targets > 0.5, targets <= 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = weights[positive] @ reads[positive] / weights[positive].sum()
        specificity = weights[negative] @ (1.0 - reads[negative]) / weights[negative].sum()
    return float(sensitivity), float(specificity)


def resampled_curve(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """The model's ROC curve in one resample (rows drawn 0 times left out)."""
    drawn = weights > 0
    fpr, tpr, _ = roc_curve(targets[drawn], scores[drawn], sample_weight=weights[drawn])
    return fpr, tpr


def reader_point(targets: np.ndarray, reads: np.ndarray, fpr: np.ndarray, tpr: np.ndarray
                 ) -> dict:
    """A reader's counts, sensitivity and specificity, and the model's curve at its specificity."""
    point = metrics_at(targets, reads, 0.5)
    model = curve_sensitivity(fpr, tpr, 1.0 - point["specificity"])
    return {"sensitivity": point["sensitivity"], "specificity": point["specificity"],
            **{key: point[key] for key in ("tp", "fn", "tn", "fp")},
            "below_curve": bool(below(model, point["sensitivity"])),
            "model_sensitivity": model, "sensitivity_gain": model - point["sensitivity"]}


def interval_fields(name: str, values: np.ndarray | None, level: float, note: str) -> dict:
    interval = percentile_interval(values, level) if values is not None else no_interval(note)
    return {f"{name}_ci": [interval.low, interval.high]}


def label_comparison(targets: np.ndarray, scores: np.ndarray, reads: dict[str, np.ndarray],
                     patient_ids, column: int, n_resamples: int, level: float, seed: int
                     ) -> dict:
    """One label: every reader's operating point (with intervals) against the model's curve,
    the number of readers below it, and that number's bootstrap distribution.

    `targets` may hold NaN (masked): those rows take no part. `reads` maps each reader's name to
    its 0/1 reads of the same rows.
    """
    observed = ~np.isnan(targets)
    if not has_both_values(targets):
        return {"readers": {}, "below_curve": None,
                "note": "n/a: one label value in the reference standard"}
    codes, n_patients = patient_codes(patient_ids)
    y, s, codes = targets[observed], scores[observed], codes[observed]
    fpr, tpr, _ = roc_curve(y, s)
    result = {name: reader_point(y, r[observed], fpr, tpr) for name, r in reads.items()}
    below = sum(point["below_curve"] for point in result.values())
    resampled = (resampled_points(y, s, {n: r[observed] for n, r in reads.items()}, codes,
                                  n_patients, n_resamples, seed, column)
                 if n_resamples and n_patients > 1 else None)
    note = "no interval: --bootstrap_resamples 0" if not n_resamples else \
        "n/a: one patient, no patient bootstrap"
    for name, point in result.items():
        for key in ("sensitivity", "specificity", "model_sensitivity", "sensitivity_gain"):
            point.update(interval_fields(key, None if resampled is None
                                         else resampled[name][key], level, note))
    summary = {"readers": result, "below_curve": int(below)}
    if resampled is not None:
        counts = np.sum([resampled[name]["below_curve"] for name in reads], axis=0)
        summary["below_curve_distribution"] = {
            str(k): float(np.mean(counts == k)) for k in range(len(reads) + 1)}
        summary.update(interval_fields("below_curve", counts.astype(float), level, note))
    return summary


def resampled_points(targets: np.ndarray, scores: np.ndarray, reads: dict[str, np.ndarray],
                     codes: np.ndarray, n_patients: int, n_resamples: int, seed: int,
                     column: int) -> dict[str, dict[str, np.ndarray]]:
    """Per reader, per resample: sensitivity, specificity, the model's curve at that
    specificity, the difference, and whether the reader is below the curve.

    One roc_curve per resample (1,000 x 14 labels take a few seconds): sklearn's curve, with the
    resample's draw counts as sample weights, rather than a hand-written weighted curve.
    """
    counts = class_resamples(targets, codes, n_patients, n_resamples, seed, column)
    keys = ("sensitivity", "specificity", "model_sensitivity")
    values = {name: {key: np.empty(n_resamples) for key in keys} for name in reads}
    for b in range(n_resamples):  # one resample at a time: memory stays at one row of weights
        weights = counts[b, codes]
        fpr, tpr = resampled_curve(targets, scores, weights)
        for name, r in reads.items():
            entry = values[name]
            entry["sensitivity"][b], entry["specificity"][b] = rates(targets, r, weights)
            entry["model_sensitivity"][b] = curve_sensitivity(fpr, tpr,
                                                              1.0 - entry["specificity"][b])
    for entry in values.values():
        entry["sensitivity_gain"] = entry["model_sensitivity"] - entry["sensitivity"]
        entry["below_curve"] = below(entry["model_sensitivity"], entry["sensitivity"])
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
