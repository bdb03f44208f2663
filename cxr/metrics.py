"""Per-class metrics of a split, the numbers of the report card (report.py renders it).

AUC with a patient-bootstrap interval (bootstrap.py), AUPRC and prevalence per class, the means
over the classes with enough positives and negatives and over CheXpert's five competition
observations, and the study-level view (a study's images aggregated into one prediction). Label
columns are addressed by name. A NaN target is a masked label (uncertain in the reference
standard): it takes no part in any number of its class, and is counted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from config import Config, PipelineError
from cxr.bootstrap import BootstrapAUCs, Interval, bootstrap_aucs, mean_over, no_interval, \
    percentile_interval

# Status words of the report card, highest band first (AUC lower bound, word).
STATUS_BANDS = ((0.85, "Excellent"), (0.80, "Good"), (0.70, "Fair"), (0.0, "Challenging"))

# The five observations the CheXpert competition ranks models on.
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                      "Pleural Effusion")

# The means of the report card: (key, title prefix, labels it averages; None = every label).
MEANS = (("all", "AVERAGE", None), ("competition", "COMPETITION 5", COMPETITION_LABELS))

STUDY_KEYS = ("patient_id", "study_id")  # study_id is unique only within a patient


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
    AUC of one or two images would weigh as much in the mean as Pleural Effusion's of 67, and a
    patient bootstrap of the mean would drop every resample without those patients."""
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

def class_intervals(aucs: dict[str, float | None], matrix: np.ndarray | None, level: float,
                    labels: tuple[str, ...], note: str) -> dict[str, Interval]:
    """The bootstrap interval of every class from its stratified resamples; `note` says why there
    are none when matrix is None."""
    intervals = {}
    for column, label in enumerate(labels):
        if aucs[label] is None:
            intervals[label] = no_interval("n/a: AUC undefined")
        elif matrix is None:
            intervals[label] = no_interval(note)
        else:
            intervals[label] = percentile_interval(matrix[:, column], level)
    return intervals


def mean_summaries(aucs: dict, auprcs: dict, prevalences: dict, matrix: np.ndarray | None,
                   level: float, labels: tuple[str, ...], note: str, excluded: dict[str, str]
                   ) -> dict[str, dict]:
    """The means over all classes and over the competition five, each with its interval, of the
    classes not `excluded` (mean_exclusions), which each mean lists with the reason.

    `matrix` holds the joint resamples (one patient draw for every class). A resample enters a
    mean's interval only if every class of that mean has both label values in it, so each
    resampled mean averages the same classes as the point estimate.
    """
    means = {}
    for key, title, subset in MEANS:
        members = [label for label in labels if (subset is None or label in subset)
                   and label not in excluded]
        columns = [labels.index(label) for label in members]
        wanted = len(labels) if subset is None else sum(label in labels for label in subset)
        if wanted == 0:  # labels other than CheXpert's (tests, other datasets): no such mean
            continue
        if not members:
            interval = no_interval("n/a: no evaluable class")
        elif matrix is None:
            interval = no_interval(note)
        else:
            interval = percentile_interval(mean_over(matrix, columns), level)
        means[key] = {
            "name": title, "title": f"{title} ({len(members)} of {wanted} classes)",
            "classes": members,
            "left_out": {label: reason for label, reason in excluded.items()
                         if subset is None or label in subset},
            "auc": float(np.mean([aucs[m] for m in members])) if members else None,
            "auprc": float(np.mean([auprcs[m] for m in members])) if members else None,
            "prevalence": float(np.mean([prevalences[m] for m in members])) if members else None,
            "ci": interval.as_dict()}
    return means


def summarise(probs: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
              bootstrap: BootstrapAUCs | None, level: float, note: str = "",
              min_positives: int = 10, not_labelled: dict[str, str] | None = None) -> dict:
    """Per-class AUC (+ interval), AUPRC, prevalence, positives and masked labels; and the means
    over the classes with at least `min_positives` positives and negatives.

    `bootstrap` holds the resampled AUCs of these predictions (bootstrap.bootstrap_aucs), or is
    None (then `note` says why there are no intervals). `probs` may be any scores that rank the
    rows as the probabilities do (evaluate.py passes calibrated logits). `not_labelled` maps the
    labels the dataset does not annotate to the note shown for them (n/a, never a negative).
    """
    not_labelled = not_labelled or {}
    aucs = {label: None if label in not_labelled else auc
            for label, auc in per_class_auc(targets, probs, labels).items()}
    auprcs = {label: None if label in not_labelled else auprc
              for label, auprc in per_class_auprc(targets, probs, labels).items()}
    excluded = {**mean_exclusions(targets, labels, aucs, min_positives),
                **{label: note for label, note in not_labelled.items() if label in labels}}
    prevalences = {label: float(np.nanmean(targets[:, c]))
                   if has_observed(targets[:, c]) and label not in not_labelled else None
                   for c, label in enumerate(labels)}
    intervals = class_intervals(aucs, None if bootstrap is None else bootstrap.per_class, level,
                                labels, note)
    classes = {}
    for column, label in enumerate(labels):
        auc, y = aucs[label], targets[:, column]
        classes[label] = {"auc": auc, "ci": intervals[label].as_dict(), "auprc": auprcs[label],
                          "prevalence": prevalences[label],
                          "positives": int(np.nansum(y)), "negatives": int((y == 0).sum()),
                          "masked": int(np.isnan(y).sum()),
                          "in_means": label not in excluded,
                          "status": f"n/a: {not_labelled[label]}" if label in not_labelled
                          else status(auc) if auc is not None
                          else undefined_note(targets, column)}
    return {"n": len(targets), "classes": classes,
            "means": mean_summaries(aucs, auprcs, prevalences, None if bootstrap is None
                                    else bootstrap.joint, level, labels, note, excluded)}


def bootstrap_matrix(scores: np.ndarray, targets: np.ndarray, patient_ids: pd.Series, cfg: Config
                     ) -> tuple[BootstrapAUCs | None, str]:
    """Per-resample AUCs of the patient bootstrap, or None and why there are no intervals."""
    if cfg.bootstrap_resamples == 0:
        return None, "no interval: --bootstrap_resamples 0"
    if patient_ids.nunique() < 2:
        return None, "n/a: one patient in this split, no patient bootstrap"
    return bootstrap_aucs(scores, targets, patient_ids, cfg.bootstrap_resamples, cfg.seed), ""


def summarise_level(scores: np.ndarray, targets: np.ndarray, patient_ids: pd.Series,
                    labels: tuple[str, ...], cfg: Config,
                    not_labelled: dict[str, str] | None = None) -> dict:
    boot, note = bootstrap_matrix(scores, targets, patient_ids, cfg)
    return summarise(scores, targets, labels, boot, cfg.ci_level, note, cfg.min_positives,
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
