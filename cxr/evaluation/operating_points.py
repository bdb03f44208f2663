"""Operating points: decision thresholds chosen on the val split, applied unchanged elsewhere.

Two thresholds per class, both on the probability scale after the class's calibration map,
an image being called positive when its probability is >= the threshold:
    youden               maximises Youden's J = sensitivity + specificity - 1 on val
    target sensitivity   the highest threshold whose val sensitivity reaches the target (0.9)
Uncertain (masked) val labels take no part.

thresholds.py writes them, with the calibration they sit on, to thresholds.json.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from cxr.data.labels import has_both_values, observed
from cxr.evaluation.intervals import patient_codes, rate_interval

METHODS = ("youden", "target_sensitivity")


def _finite_threshold(threshold: float, probs: np.ndarray) -> float:
    """roc_curve's first threshold is +inf (nothing positive); JSON needs a number: just above
    the highest score has the same effect (capped at 1.0: readers expect a probability)."""
    if np.isfinite(threshold):
        return float(threshold)
    return min(float(np.nextafter(probs.max(), np.inf)), 1.0)


def youden_threshold(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """Threshold maximising sensitivity + specificity - 1 (the highest one among ties)."""
    targets, probs = observed(targets, probs)
    if not has_both_values(targets):
        return None
    fpr, tpr, thresholds = roc_curve(targets, probs)
    return _finite_threshold(thresholds[np.argmax(tpr - fpr)], probs)


def sensitivity_threshold(targets: np.ndarray, probs: np.ndarray, target: float) -> float | None:
    """The highest threshold with sensitivity >= target (so specificity is as high as it can be)."""
    targets, probs = observed(targets, probs)
    if not has_both_values(targets):
        return None
    _, tpr, thresholds = roc_curve(targets, probs, drop_intermediate=False)
    return _finite_threshold(thresholds[np.argmax(tpr >= target)], probs)


def choose_thresholds(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...],
                      target_sensitivity: float) -> dict[str, dict[str, float | None]]:
    """{"youden": {label: threshold}, "target_sensitivity": {label: threshold}} on one split."""
    return {
        "youden": {label: youden_threshold(targets[:, c], probs[:, c])
                   for c, label in enumerate(labels)},
        "target_sensitivity": {label: sensitivity_threshold(targets[:, c], probs[:, c],
                                                            target_sensitivity)
                               for c, label in enumerate(labels)},
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def metrics_at(targets: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV and F1 of calling probs >= threshold positive.

    A ratio with an empty denominator (no predicted positives for PPV, ...) is None. Masked
    (NaN) labels are left out.
    """
    targets, probs = observed(targets, probs)
    tn = fp = fn = tp = 0  # every label masked (a finding the dataset does not annotate)
    if len(targets):
        predicted = (probs >= threshold).astype(int)
        tn, fp, fn, tp = map(int, confusion_matrix(targets.astype(int), predicted,
                                                   labels=[0, 1]).ravel())
    return {"threshold": float(threshold), "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def rate_intervals(targets: np.ndarray, probs: np.ndarray, threshold: float, codes: np.ndarray,
                   n_patients: int, level: float) -> dict:
    """Wilson intervals of the sensitivity and specificity at a threshold, each a proportion of
    images counted per patient (intervals.proportion_interval: the clusters' effective n)."""
    keep = ~np.isnan(targets)
    positive, called, codes = targets[keep] > 0.5, probs[keep] >= threshold, codes[keep]
    return {"sensitivity_ci": rate_interval(positive, called, codes, n_patients, level).bounds,
            "specificity_ci": rate_interval(~positive, ~called, codes, n_patients, level).bounds}


def operating_point_table(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...],
                          thresholds: dict[str, dict[str, float | None]], patient_ids,
                          level: float) -> list[dict]:
    """One row per class and method: the val thresholds applied to this split's predictions,
    the sensitivity and specificity with their intervals (patients as clusters)."""
    codes, n_patients = patient_codes(patient_ids)
    rows = []
    for method in METHODS:
        for column, label in enumerate(labels):
            threshold = thresholds[method][label]
            values = ({**metrics_at(targets[:, column], probs[:, column], threshold),
                       **rate_intervals(targets[:, column], probs[:, column], threshold, codes,
                                        n_patients, level)}
                      if threshold is not None else {"threshold": None})
            rows.append({"pathology": label, "method": method, **values})
    return rows
