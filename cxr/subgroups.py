"""Subgroup audit: does a model rank as well within a subgroup as in the rest of the split?

The strata are the split's own columns: Sex, age bands (Age 0 or blank is "unknown"), AP/PA of
frontal films, and Support Devices present or absent (the split's label: a model that finds a
pneumothorax by its chest drain scores well overall and poorly among films without devices).
For each stratum and label: the AUC within it, its counts (images, patients, positives), and the
difference to the rest of the split, both from one plain patient bootstrap of the whole split:
each resample's AUC within the stratum and within the rest share the draw, so the interval of
the difference is paired. A cell with fewer than `min_positives` positives or negatives is n/a,
with the reason, as in the report card's means.

Each stratum also carries the report card's means (all classes, the competition five) over the
classes whose cell is evaluable there and in the rest, so both sides average the same classes;
their intervals reuse the cells' resampled AUCs (one draw, so the difference is paired too).

evaluate.py and score.py report it (eval_<split>.json / score.json "subgroups", the tables and
the flags in the Markdown, report.py); plots.forest_plot draws the competition five's strata
(issue 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.bootstrap import draw_resamples, mean_over, percentile_interval, weighted_aucs
from cxr.compare import verdict
from cxr.metrics import MEANS, mean_exclusions, per_class_auc

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
    # an audit the data cannot support at all (MIMIC-CXR-JPG has no sex or age) is left out
    return {name: values.reset_index(drop=True) for name, values in audits.items()
            if not (values == UNKNOWN).all()}


def auc_and_reason(targets: np.ndarray, scores: np.ndarray, min_positives: int
                   ) -> tuple[float | None, str]:
    """One label's AUC over these rows, and why it cannot be audited ('' when it can): the rule
    of the report card's means (metrics.mean_exclusions)."""
    auc = per_class_auc(targets[:, None], scores[:, None], ("label",))["label"]
    reason = mean_exclusions(targets[:, None], ("label",), {"label": auc}, min_positives)
    return auc, f"n/a: {reason['label']}" if reason else ""


@dataclass
class Measured:
    """One stratum and label as measured: its cell (the JSON), the AUC of the rest of the split,
    and the per-resample AUCs within the stratum and in the rest, which the stratum's means
    reuse (None when the cell is n/a or there are no resamples)."""

    cell: dict
    rest_auc: float | None = None
    within: np.ndarray | None = None  # (resamples,) NaN where a resample has one label value
    rest: np.ndarray | None = None


def paired_intervals(within: np.ndarray, rest: np.ndarray, level: float) -> dict:
    """The interval within the stratum and the paired one of within - rest, with the verdict;
    NaN resamples are dropped (percentile_interval), a difference's wherever either side is NaN."""
    interval, gap = percentile_interval(within, level), percentile_interval(within - rest, level)
    return {"ci": [interval.low, interval.high], "difference_ci": [gap.low, gap.high],
            "verdict": verdict(gap.low, gap.high, "higher in this subgroup",
                               "lower in this subgroup")}


def measure_cell(scores: np.ndarray, targets: np.ndarray, codes: np.ndarray, inside: np.ndarray,
                 counts: np.ndarray | None, overall: float | None, level: float,
                 min_positives: int) -> Measured:
    """One stratum and label: AUC, interval, counts, and the paired difference to the rest."""
    y = targets[inside]
    result = {"positives": int(np.nansum(y)), "negatives": int((y == 0).sum()),
              "auc": None, "ci": [None, None], "difference": None,
              "difference_ci": [None, None], "verdict": "n/a", "overall_auc": overall}
    auc_in, own = auc_and_reason(y, scores[inside], min_positives)
    auc_out, rest = auc_and_reason(targets[~inside], scores[~inside], min_positives)
    if own or rest:
        return Measured({**result, "note": own or f"{rest} in the rest of the split"})
    result.update(auc=auc_in, difference=auc_in - auc_out, note="")
    if counts is None:
        return Measured(result, auc_out)
    within = weighted_aucs(scores[inside], y, codes[inside], counts)
    outside = weighted_aucs(scores[~inside], targets[~inside], codes[~inside], counts)
    result.update(paired_intervals(within, outside, level))
    return Measured(result, auc_out, within, outside)


def stratum_means(measured: dict[str, Measured], labels: tuple[str, ...], level: float
                  ) -> dict[str, dict]:
    """The report card's means (metrics.MEANS) within a stratum and their paired difference to
    the rest, over the classes whose cell is evaluable on both sides (the others left out with
    their cell's note), so the two means average the same classes.

    As in metrics.mean_summaries, a resample enters the interval only if every class of the
    mean has both label values in it (within the stratum; for the difference, in the rest too).
    """
    means = {}
    for key, title, subset in MEANS:
        wanted = [label for label in labels if subset is None or label in subset]
        if not wanted:  # labels other than CheXpert's: no competition mean, as in the report card
            continue
        members = [label for label in wanted if measured[label].cell["auc"] is not None]
        mean = {"name": title, "title": f"{title} ({len(members)} of {len(wanted)} classes)",
                "classes": members,
                "left_out": {label: measured[label].cell["note"] for label in wanted
                             if label not in members},
                "auc": None, "ci": [None, None], "difference": None,
                "difference_ci": [None, None], "verdict": "n/a", "note": ""}
        means[key] = mean
        if not members:
            mean["note"] = "n/a: no evaluable class"
            continue
        within = float(np.mean([measured[label].cell["auc"] for label in members]))
        rest = float(np.mean([measured[label].rest_auc for label in members]))
        mean.update(auc=within, difference=within - rest)
        if measured[members[0]].within is not None:
            columns = list(range(len(members)))
            inside, outside = (mean_over(np.stack([getattr(measured[label], side)
                                                   for label in members], axis=1), columns)
                               for side in ("within", "rest"))
            mean.update(paired_intervals(inside, outside, level))
            if mean["difference_ci"][0] is None:
                mean["note"] = "no interval: no resample had both label values in every class"
    return means


def subgroup_table(scores: np.ndarray, targets: np.ndarray, frame: pd.DataFrame,
                   labels: tuple[str, ...], n_resamples: int, level: float, seed: int,
                   min_positives: int = 10, age_bounds: tuple[int, ...] = AGE_BANDS
                   ) -> dict[str, dict[str, dict]]:
    """{audit: {stratum: {"auc": {label: AUC}, "mean_auc", "n_images", "n_patients", "labels":
    {label: cell}, "means": {key: mean}}}} of one split (a mean per metrics.MEANS key that the
    labels hold: stratum_means; "mean_auc" is the all-labels one).

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
            measured = {label: measure_cell(scores[:, c], targets[:, c], codes, inside,
                                            counts, overall[label], level, min_positives)
                        for c, label in enumerate(labels)}
            means = stratum_means(measured, labels, level)
            table[audit][stratum] = {
                # the headline numbers first: AUC per label, the mean over all labels
                "auc": {label: values.cell["auc"] for label, values in measured.items()},
                "mean_auc": means["all"]["auc"] if "all" in means else None,
                "n_images": int(inside.sum()), "n_patients": int(patients[inside].nunique()),
                "labels": {label: values.cell for label, values in measured.items()},
                "means": means}
    return table
