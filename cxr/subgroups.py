"""Subgroup audit: does a model rank as well within a subgroup as in the rest of the split?

The strata are the split's own columns: Sex, age bands (Age 0 or blank is "unknown"), AP/PA of
frontal films, and Support Devices present or absent (the split's label: a model that finds a
pneumothorax by its chest drain scores well overall and poorly among films without devices).
For each stratum and label: the AUC within it, its counts (images, patients, positives), and the
difference to the rest of the split, both from one plain patient bootstrap of the whole split:
each resample's AUC within the stratum and within the rest share the draw, so the interval of
the difference is paired. A cell with fewer than `min_positives` positives or negatives is n/a,
with the reason, as in the report card's means.

evaluate.py reports it for every split (eval_<split>.json "subgroups", a table and the flags in
eval_<split>.md, report.py); score.py, the means within strata and a forest plot come next
(issue 16).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.bootstrap import draw_resamples, percentile_interval, weighted_aucs
from cxr.compare import verdict
from cxr.metrics import mean_exclusions, per_class_auc

AGE_BANDS = (18, 40, 60, 80)  # years: each band from its bound up to the next (18-39, ..., 80+)
UNKNOWN = "unknown"


def age_band(age: float, bounds: tuple[int, ...] = AGE_BANDS) -> str:
    """'40-59' for 47 or 59.5; '80+' for 91; 'under 18' for 12; 'unknown' for 0 or blank."""
    if not np.isfinite(age) or age <= 0:
        return UNKNOWN
    if age < bounds[0]:
        return f"under {bounds[0]}"
    band = int(np.searchsorted(bounds, age, side="right")) - 1
    return f"{bounds[band]}+" if band == len(bounds) - 1 else \
        f"{bounds[band]}-{bounds[band + 1] - 1}"


def strata(frame: pd.DataFrame, targets: np.ndarray, labels: tuple[str, ...],
           age_bounds: tuple[int, ...] = AGE_BANDS) -> dict[str, pd.Series]:
    """Each row's stratum under every audit that the split can support: {audit: labels}.

    Sex and AP/PA as written (blank: unknown; AP/PA only for frontal films, where it is defined),
    age bands from Age, Support Devices from the scored label (masked: unknown), else from a
    0/1 "Support Devices" column of `frame` (score.py: the reference's label when the
    predictions do not score it).
    """
    audits = {}
    if "Sex" in frame:
        audits["Sex"] = frame["Sex"].fillna("").astype(str).str.strip().replace("", UNKNOWN)
    if "Age" in frame:
        ages = pd.to_numeric(frame["Age"], errors="coerce").to_numpy(dtype=float)
        audits["Age"] = pd.Series([age_band(age, age_bounds) for age in ages],
                                  index=frame.index)
    if "AP/PA" in frame:
        view = frame["AP/PA"].fillna("").astype(str).str.strip().replace("", UNKNOWN)
        if "Frontal/Lateral" in frame:
            view = view.where(frame["Frontal/Lateral"] == "Frontal", UNKNOWN)
        audits["AP/PA"] = view
    devices = (targets[:, labels.index("Support Devices")] if "Support Devices" in labels
               else frame["Support Devices"].to_numpy(dtype=float)
               if "Support Devices" in frame else None)
    if devices is not None:
        audits["Support Devices"] = pd.Series(
            np.where(np.isnan(devices), UNKNOWN, np.where(devices > 0.5, "present", "absent")),
            index=frame.index)
    return {name: values.reset_index(drop=True) for name, values in audits.items()}


def auc_and_reason(targets: np.ndarray, scores: np.ndarray, min_positives: int
                   ) -> tuple[float | None, str]:
    """One label's AUC over these rows, and why it cannot be audited ('' when it can): the rule
    of the report card's means (metrics.mean_exclusions)."""
    auc = per_class_auc(targets[:, None], scores[:, None], ("label",))["label"]
    reason = mean_exclusions(targets[:, None], ("label",), {"label": auc}, min_positives)
    return auc, f"n/a: {reason['label']}" if reason else ""


def cell(scores: np.ndarray, targets: np.ndarray, codes: np.ndarray, inside: np.ndarray,
         counts: np.ndarray | None, overall: float | None, level: float, min_positives: int
         ) -> dict:
    """One stratum and label: AUC, interval, counts, and the paired difference to the rest."""
    y = targets[inside]
    result = {"positives": int(np.nansum(y)), "negatives": int((y == 0).sum()),
              "auc": None, "ci": [None, None], "difference": None,
              "difference_ci": [None, None], "verdict": "n/a", "overall_auc": overall}
    auc_in, own = auc_and_reason(y, scores[inside], min_positives)
    auc_out, rest = auc_and_reason(targets[~inside], scores[~inside], min_positives)
    if own or rest:
        return {**result, "note": own or f"{rest} in the rest of the split"}
    result.update(auc=auc_in, difference=auc_in - auc_out, note="")
    if counts is not None:
        within = weighted_aucs(scores[inside], y, codes[inside], counts)
        rest = weighted_aucs(scores[~inside], targets[~inside], codes[~inside], counts)
        interval, gap = percentile_interval(within, level), percentile_interval(within - rest,
                                                                                level)
        result.update(ci=[interval.low, interval.high], difference_ci=[gap.low, gap.high],
                      verdict=verdict(gap.low, gap.high, "higher in this subgroup",
                                      "lower in this subgroup"))
    return result


def subgroup_table(scores: np.ndarray, targets: np.ndarray, frame: pd.DataFrame,
                   labels: tuple[str, ...], n_resamples: int, level: float, seed: int,
                   min_positives: int = 10, age_bounds: tuple[int, ...] = AGE_BANDS
                   ) -> dict[str, dict[str, dict]]:
    """{audit: {stratum: {"n_images", "n_patients", "labels": {label: cell}}}} of one split.

    `frame` holds the rows' patient_id and the columns strata() reads; `scores` rank the rows
    (logits will do); `targets` are 0/1 with NaN masked.
    """
    patients = frame["patient_id"].astype(str).reset_index(drop=True)
    resamples = draw_resamples(patients, n_resamples, seed) if n_resamples else None
    codes = resamples.patient_of_image if resamples is not None else \
        pd.factorize(patients, sort=True)[0]
    counts = resamples.counts if resamples is not None else None
    overall = per_class_auc(targets, scores, labels)
    table = {}
    for audit, groups in strata(frame, targets, labels, age_bounds).items():
        table[audit] = {}
        for stratum in sorted(groups.unique()):
            inside = (groups == stratum).to_numpy()
            table[audit][stratum] = {
                "n_images": int(inside.sum()), "n_patients": int(patients[inside].nunique()),
                "labels": {label: cell(scores[:, c], targets[:, c], codes, inside, counts,
                                       overall[label], level, min_positives)
                           for c, label in enumerate(labels)}}
    return table
