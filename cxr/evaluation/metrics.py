"""Per-class metrics of a split, the numbers of the report card (cxr/reporting renders it).

AUC with its interval (intervals.py: patients as clusters), AUPRC and prevalence per class, the means
over the classes with enough positives and negatives and over CheXpert's five competition
observations, and the study-level view (a study's images aggregated into one prediction). Label
columns are addressed by name. A NaN target is a masked label (uncertain in the reference
standard): it takes no part in any number of its class, and is counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.data.labels import has_both_values, has_observed, observed
from cxr.errors import PipelineError
from cxr.evaluation.intervals import Influence, Interval, auc_influence, auc_interval, \
    mean_interval, no_interval, patient_codes

if TYPE_CHECKING:
    from config import Config

# Status words of the report card, highest band first (AUC lower bound, word).
STATUS_BANDS = ((0.85, "Excellent"), (0.80, "Good"), (0.70, "Fair"), (0.0, "Challenging"))

# The five observations the CheXpert competition ranks models on.
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                      "Pleural Effusion")

# The means of the report card: (key, title prefix, labels it averages; None = every label).
MEANS = (("all", "AVERAGE", None), ("competition", "COMPETITION 5", COMPETITION_LABELS))

STUDY_KEYS = ("patient_id", "study_id")  # study_id is unique only within a patient


def per_class_auc(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]
                  ) -> dict[str, float | None]:
    """ROC AUC of every label column over its observed labels; None where they hold only one
    label value (all negative or all positive: AUC is undefined)."""
    aucs: dict[str, float | None] = {}
    for column, label in enumerate(labels):
        y, score = observed(targets[:, column], probs[:, column])
        aucs[label] = float(roc_auc_score(y, score)) if has_both_values(y) else None
    return aucs


def per_class_auprc(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]
                    ) -> dict[str, float | None]:
    """Average precision (area under the PR curve); None where AUC is undefined too."""
    auprcs: dict[str, float | None] = {}
    for column, label in enumerate(labels):
        y, score = observed(targets[:, column], probs[:, column])
        auprcs[label] = float(average_precision_score(y, score)) if has_both_values(y) else None
    return auprcs


def mean_exclusions(targets: np.ndarray, labels: tuple[str, ...], aucs: dict[str, float | None],
                    min_positives: int) -> dict[str, str]:
    """The classes left out of the means, each with why: an undefined AUC, or fewer than
    `min_positives` positive or negative labels (images, or studies in a study report). With
    CheXpert's official valid.csv (Fracture 0 positives, Lung Lesion and Pleural Other 1 each) an
    AUC of one or two images would weigh as much in the mean as Pleural Effusion's of 67, and the
    mean's interval would rest on those one or two patients."""
    reasons = {}
    for column, label in enumerate(labels):
        y = targets[:, column]
        positives, negatives = int((y > 0.5).sum()), int((y <= 0.5).sum())  # NaN: neither
        if aucs[label] is None:
            reasons[label] = "AUC undefined (one label value)"
        elif positives < min_positives:
            reasons[label] = f"{positives} positive(s), fewer than {min_positives}"
        elif negatives < min_positives:
            reasons[label] = f"{negatives} negative(s), fewer than {min_positives}"
    return reasons


def mean_auc(aucs: dict[str, float | None], excluded: dict[str, str] | None = None
             ) -> float | None:
    """Mean over the classes whose AUC is defined and that are not `excluded`; None when no
    class is left."""
    defined = [value for label, value in aucs.items()
               if value is not None and label not in (excluded or {})]
    return float(np.mean(defined)) if defined else None


def status(auc: float) -> str:
    return next(word for bound, word in STATUS_BANDS if auc >= bound)


def undefined_note(targets: np.ndarray, column: int) -> str:
    y = targets[:, column]
    y = y[~np.isnan(y)]
    if not len(y):
        return "n/a: every label of this class is uncertain (masked) in this split"
    value = "positive" if y.min() == 1 else "negative"
    return f"n/a: every image in this split is {value}"


# ---- one split (or its studies): classes and means with intervals -------------------------------

def class_influences(scores: np.ndarray, targets: np.ndarray, patient_ids, labels: tuple[str, ...]
                     ) -> dict[str, Influence | None]:
    """Each class's AUC with its per-patient influence (intervals.auc_influence), None where the
    class has one label value."""
    codes, n_patients = patient_codes(patient_ids)
    return {label: auc_influence(scores[:, c], targets[:, c], codes, n_patients)
            for c, label in enumerate(labels)}


def class_intervals(aucs: dict[str, float | None], influences: dict[str, Influence | None],
                    level: float) -> dict[str, Interval]:
    """Every class's interval (intervals.auc_interval), n/a where its AUC is."""
    return {label: auc_interval(influences[label], level) if auc is not None
            else no_interval("n/a: AUC undefined") for label, auc in aucs.items()}


def mean_summaries(aucs: dict, auprcs: dict, prevalences: dict,
                   influences: dict[str, Influence | None], level: float,
                   labels: tuple[str, ...], excluded: dict[str, str]) -> dict[str, dict]:
    """The means over all classes and over the competition five, each with its interval, of the
    classes not `excluded` (mean_exclusions), which each mean lists with the reason. The
    interval is intervals.mean_interval: the classes' per-patient influences averaged, so their
    correlation (the same patients) is in it."""
    means = {}
    for key, title, subset in MEANS:
        members = [label for label in labels if (subset is None or label in subset)
                   and label not in excluded]
        wanted = len(labels) if subset is None else sum(label in labels for label in subset)
        if wanted == 0:  # labels other than CheXpert's (tests, other datasets): no such mean
            continue
        interval = mean_interval([influences[m] for m in members], level) if members \
            else no_interval("n/a: no evaluable class")
        means[key] = {
            "name": title, "title": f"{title} ({len(members)} of {wanted} classes)",
            "classes": members,
            "left_out": {label: reason for label, reason in excluded.items()
                         if subset is None or label in subset},
            "auc": float(np.mean([aucs[m] for m in members])) if members else None,
            "auprc": float(np.mean([auprcs[m] for m in members])) if members else None,
            "prevalence": float(np.mean([prevalences[m] for m in members])) if members else None,
            "ci": interval.as_dict(), "ci_note": interval.note}
    return means


def summarise(probs: np.ndarray, targets: np.ndarray, labels: tuple[str, ...], patient_ids,
              level: float, min_positives: int = 10,
              not_labelled: dict[str, str] | None = None) -> dict:
    """Per-class AUC (+ interval), AUPRC, prevalence, positives and masked labels; and the means
    over the classes with at least `min_positives` positives and negatives.

    `patient_ids` give each row's patient: the intervals (intervals.py) treat a patient's rows as
    one cluster. `probs` may be any scores that rank the rows as the probabilities do
    (evaluate.py passes calibrated logits). `not_labelled` maps the labels the dataset does not
    annotate to the note shown for them (n/a, never a negative). A class's `ci_note` says when
    its interval is approximate (few patients on one side, or an AUC of 0 or 1) or missing.
    """
    not_labelled = not_labelled or {}
    influences = class_influences(probs, targets, patient_ids, labels)
    aucs = {label: None if label in not_labelled or influence is None else influence.auc
            for label, influence in influences.items()}
    auprcs = {label: None if label in not_labelled else auprc
              for label, auprc in per_class_auprc(targets, probs, labels).items()}
    excluded = {**mean_exclusions(targets, labels, aucs, min_positives),
                **{label: note for label, note in not_labelled.items() if label in labels}}
    prevalences = {label: float(np.nanmean(targets[:, c]))
                   if has_observed(targets[:, c]) and label not in not_labelled else None
                   for c, label in enumerate(labels)}
    intervals = class_intervals(aucs, influences, level)
    classes = {}
    for column, label in enumerate(labels):
        auc, y = aucs[label], targets[:, column]
        classes[label] = {"auc": auc, "ci": intervals[label].as_dict(),
                          "ci_note": intervals[label].note, "auprc": auprcs[label],
                          "prevalence": prevalences[label],
                          "positives": int(np.nansum(y)), "negatives": int((y == 0).sum()),
                          "masked": int(np.isnan(y).sum()),
                          "in_means": label not in excluded,
                          "status": f"n/a: {not_labelled[label]}" if label in not_labelled
                          else status(auc) if auc is not None
                          else undefined_note(targets, column)}
    return {"n": len(targets), "classes": classes,
            "means": mean_summaries(aucs, auprcs, prevalences, influences, level, labels,
                                    excluded)}


def summarise_level(scores: np.ndarray, targets: np.ndarray, patient_ids: pd.Series,
                    labels: tuple[str, ...], cfg: Config,
                    not_labelled: dict[str, str] | None = None) -> dict:
    return summarise(scores, targets, labels, patient_ids, cfg.ci_level, cfg.min_positives,
                     not_labelled)


# ---- study level -------------------------------------------------------------------------------

def aggregate_studies(frame: pd.DataFrame, probs: np.ndarray, targets: np.ndarray, how: str
                      ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One row per study, grouped by (patient_id, study_id), in order of first appearance.

    A study's prediction is the max or mean of its images' predictions (`how`); its target is the
    max over its images' observed labels (positive if any image is labelled positive), masked
    (NaN) when every image's label is.
    """
    missing = [key for key in STUDY_KEYS if key not in frame.columns]
    if missing:
        raise PipelineError(f"the split lacks column(s) {missing}: re-run make_splits.py "
                            "with this version of the code")
    keys = frame[list(STUDY_KEYS)].astype(str).reset_index(drop=True)
    group = keys.groupby(list(STUDY_KEYS), sort=False).ngroup().to_numpy()
    study_probs = pd.DataFrame(probs).groupby(group).agg(how).to_numpy()
    study_targets = pd.DataFrame(targets).groupby(group).max().to_numpy()  # skips NaN
    studies = keys.groupby(group).first().reset_index(drop=True)
    studies["n_images"] = np.bincount(group)
    return studies, study_probs, study_targets
