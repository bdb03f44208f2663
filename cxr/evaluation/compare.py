"""Paired comparison of two models on the same images: per-class AUC differences B - A.

Both AUCs are measured on the same images, so their errors are correlated and the interval of
the difference must be paired: each patient's influence on B's AUC minus its influence on A's
(intervals.py, cluster-robust DeLong), much narrower than two separate intervals suggest. An
interval that excludes 0 says the difference is unlikely to come from which patients are in the
split. The means average the classes with at least `min_positives` positives and negatives;
masked (NaN) labels take no part. cxr/reporting writes the rows as tables.

A table compares up to 14 observations and 2 means. The means are the primary comparisons, each
judged at 1 - level; the observations' verdicts are Holm-adjusted over the observations compared
(`verdict`; `verdict_unadjusted` is the interval's own), so that one of 14 intervals excluding 0
by chance is not called a better model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from cxr.evaluation.intervals import Influence, Interval, auc_interval, difference_interval, holm, \
    mean_interval, no_interval, t_test
from cxr.evaluation.metrics import MEANS, class_influences, mean_exclusions


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


def _row(name: str, auc_a: float | None, auc_b: float | None, interval: Interval) -> dict:
    difference = None if auc_a is None else auc_b - auc_a
    unadjusted = verdict(interval.low, interval.high)
    p_value = None if difference is None else t_test(interval, difference)
    return {"pathology": name, "auc_a": auc_a, "auc_b": auc_b, "difference": difference,
            "ci_low": interval.low, "ci_high": interval.high, "method": interval.method,
            "p_value": p_value, "p_adjusted": p_value, "verdict": unadjusted,
            "verdict_unadjusted": unadjusted, "note": interval.note}


def adjust_classes(rows: list[dict], level: float) -> int:
    """Holm's adjustment of the observations' rows in place (the means are left as they are:
    the primary comparisons); returns how many observations were compared. A row without a
    p-value (the two rank alike, or an approximate fallback interval) counts with p = 1."""
    scored = [row for row in rows if row["difference"] is not None]
    adjusted = holm([1.0 if row["p_value"] is None else row["p_value"] for row in scored]) \
        if scored else []
    for row, p in zip(scored, adjusted):
        row["p_adjusted"] = p
        if row["verdict_unadjusted"] != "no clear difference" and p >= 1.0 - level:
            row["verdict"] = "no clear difference"
    return len(scored)


SAME_RANKING = "the two rank every image alike: the difference is exactly 0"


def same_ranking(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray) -> bool:
    """Whether A and B order every labelled row of a class alike (ties included), so that every
    AUC of any sample of the rows is the same for both."""
    keep = ~np.isnan(targets)
    return bool(np.array_equal(stats.rankdata(scores_a[keep]), stats.rankdata(scores_b[keep])))


def paired_interval(a: list[Influence], b: list[Influence], level: float,
                    alike: bool = False) -> Interval:
    """Interval of mean(B) - mean(A) over the same classes (one class: B - A); [0, 0] when the
    two rank every class's rows `alike` (a model against itself: even two perfect rankings,
    whose paired variance vanishes for another reason, differ by exactly 0)."""
    if alike:
        return Interval(0.0, 0.0, SAME_RANKING)
    if len(a) == 1:
        sides = (auc_interval(b[0], level), auc_interval(a[0], level))
    else:
        sides = (mean_interval(b, level), mean_interval(a, level))
    weight = 1.0 / len(a)
    return difference_interval([(weight, infl_b.minus(infl_a)) for infl_a, infl_b in zip(a, b)],
                               level, sides)


def paired_auc_differences(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray,
                           patient_ids: pd.Series, labels: tuple[str, ...], level: float,
                           min_positives: int = 10) -> list[dict]:
    """One row per class, then the means: AUC of A and B, B - A, and its paired interval.

    `scores_*` are anything that ranks the rows as the probabilities do (logits will do).
    """
    influences_a = class_influences(scores_a, targets, patient_ids, labels)
    influences_b = class_influences(scores_b, targets, patient_ids, labels)
    aucs_a = {label: None if i is None else i.auc for label, i in influences_a.items()}
    excluded = mean_exclusions(targets, labels, aucs_a, min_positives)
    alike = {label: same_ranking(scores_a[:, c], scores_b[:, c], targets[:, c])
             for c, label in enumerate(labels)}
    rows = []
    for label in labels:
        a, b = influences_a[label], influences_b[label]
        interval = no_interval("n/a: AUC undefined (one label value)") if a is None \
            else paired_interval([a], [b], level, alike[label])
        rows.append(_row(label, None if a is None else a.auc, None if b is None else b.auc,
                         interval))
    adjust_classes(rows, level)
    for _, title, subset in MEANS:
        if subset is not None and not set(subset) & set(labels):
            continue  # labels other than CheXpert's: no competition mean
        members = [label for label in labels
                   if (subset is None or label in subset) and label not in excluded]
        a, b = [influences_a[m] for m in members], [influences_b[m] for m in members]
        rows.append(_row(f"{title} ({len(members)} classes)",
                         float(np.mean([i.auc for i in a])) if members else None,
                         float(np.mean([i.auc for i in b])) if members else None,
                         paired_interval(a, b, level, all(alike[m] for m in members))
                         if members
                         else no_interval("n/a: no evaluable class")))
    return rows
