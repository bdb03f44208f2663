"""Paired comparison of two models on the same images: per-class AUC differences B - A.

Both models are scored on the *same* bootstrap resamples of patients, so the interval of the
difference accounts for the two AUCs being measured on the same images (their errors are
correlated, and the paired interval is much narrower than two separate intervals suggest). An
interval that excludes 0 says the difference is unlikely to be resampling noise. As in a report,
a class's resamples are stratified by its positive patients and the means share one plain draw
of patients over the classes with at least `min_positives` positives and negatives
(bootstrap.py); masked (NaN) labels take no part. report.py writes the rows as tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.bootstrap import bootstrap_aucs, mean_over, no_interval, percentile_interval
from cxr.metrics import MEANS, mean_exclusions, per_class_auc


def verdict(low: float | None, high: float | None, higher: str = "B better",
            lower: str = "A better") -> str:
    """The words for an interval of a difference: above 0, below 0, or containing it."""
    if low is None:
        return "n/a"
    if low > 0:
        return higher
    if high < 0:
        return lower
    return "no clear difference"


def _row(name: str, auc_a: float | None, auc_b: float | None, differences: np.ndarray | None,
         level: float, note: str) -> dict:
    if auc_a is None:
        interval = no_interval("n/a: AUC undefined (one label value)")
    elif differences is None:
        interval = no_interval(note)
    else:
        interval = percentile_interval(differences, level)
    return {"pathology": name, "auc_a": auc_a, "auc_b": auc_b,
            "difference": None if auc_a is None else auc_b - auc_a,
            "ci_low": interval.low, "ci_high": interval.high,
            "resamples_used": interval.used, "verdict": verdict(interval.low, interval.high),
            "note": interval.note}


def paired_auc_differences(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray,
                           patient_ids: pd.Series, labels: tuple[str, ...], n_resamples: int,
                           level: float, seed: int, min_positives: int = 10) -> list[dict]:
    """One row per class, then the means: AUC of A and B, B - A, and its paired interval.

    `scores_*` are anything that ranks the rows as the probabilities do (logits will do).
    """
    aucs_a = per_class_auc(targets, scores_a, labels)
    aucs_b = per_class_auc(targets, scores_b, labels)
    excluded = mean_exclusions(targets, labels, aucs_a, min_positives)
    per_class = joint = None
    note = ""
    if n_resamples == 0:
        note = "no interval: --bootstrap_resamples 0"
    elif pd.Series(patient_ids).nunique() < 2:
        note = "n/a: one patient in this split, no patient bootstrap"
    else:  # the same resamples for both models: they are drawn from the seed and the targets
        boot_a, boot_b = (bootstrap_aucs(scores, targets, patient_ids, n_resamples, seed)
                          for scores in (scores_a, scores_b))
        per_class, joint = boot_b.per_class - boot_a.per_class, boot_b.joint - boot_a.joint
    rows = [_row(label, aucs_a[label], aucs_b[label],
                 None if per_class is None else per_class[:, c], level, note)
            for c, label in enumerate(labels)]
    for _, title, subset in MEANS:
        if subset is not None and not set(subset) & set(labels):
            continue  # labels other than CheXpert's: no competition mean
        members = [c for c, label in enumerate(labels)
                   if (subset is None or label in subset) and label not in excluded]
        mean_a = float(np.mean([aucs_a[labels[c]] for c in members])) if members else None
        mean_b = float(np.mean([aucs_b[labels[c]] for c in members])) if members else None
        diff = None if joint is None or not members else mean_over(joint, members)
        rows.append(_row(f"{title} ({len(members)} classes)", mean_a, mean_b, diff, level, note))
    return rows
