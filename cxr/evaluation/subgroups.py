"""Subgroup audit: does a model rank as well within a subgroup as in the rest of the split?

The strata are the split's own columns: Sex, age bands (Age 0 or blank is "unknown"), AP/PA of
frontal films, and Support Devices present or absent (the split's label: a model that finds a
pneumothorax by its chest drain scores well overall and poorly among films without devices).
For each stratum and label: the AUC within it with its interval, its counts (images, patients,
positives), and the difference to the rest of the split with a paired interval and p-value
(intervals.py: each patient's influence within the stratum minus its influence in the rest, so a
patient with films on both sides is paired). A cell with fewer than `min_positives` positives or
negatives is n/a, with the reason, as in the report card's means. Each stratum also carries the
report card's means (all classes, the competition five) over the classes whose cell is
evaluable there and in the rest, so both sides average the same classes.

An audit makes many comparisons (4 audits x their strata x 14 labels and 2 means), so one
unadjusted 95 % interval below 0 is expected by chance in most audits of a model with no real
gap: with strata assigned at random to a leaderboard model's test-set predictions, 12 of 20
audits raised a flag. The family-wise error rate of a report's audit is therefore held at
1 - ci_level by Holm's step-down on the paired p-values (valid under any dependence between the
comparisons, which share patients; simpler than simultaneous max-|t| bootstrap intervals and
needs no resamples). `verdict` is Holm's; `verdict_unadjusted` that of the unadjusted interval.
A two-stratum audit (F / M) compares one pair twice, mirrored: it counts once.

evaluate.py and score.py report it (eval_<split>.json / score.json "subgroups" and
"subgroup_comparisons", the tables and the flags in the Markdown, cxr/reporting); plots.forest_plot
draws the competition five's strata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.evaluation.compare import verdict
from cxr.evaluation.intervals import Influence, auc_influence, auc_interval, difference_interval, \
    holm, mean_interval, patient_codes, t_test
from cxr.evaluation.metrics import MEANS, class_influences, mean_exclusions

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
           age_bounds: tuple[int, ...] = AGE_BANDS, demographic: tuple[str, ...] = ()
           ) -> dict[str, pd.Series]:
    """Each row's stratum under every audit that the split can support: {audit: labels}.

    Sex and AP/PA as written (blank: unknown; AP/PA only for frontal films, where it is defined),
    age bands from Age, the `demographic` columns (a --demographics file's: Race, ...) as
    written, Support Devices from the scored label (masked: unknown), else from a
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
    for name in demographic:
        if name not in audits:
            audits[name] = frame[name].astype(str).str.strip().replace("", UNKNOWN)
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
    # an audit the data cannot support (MIMIC-CXR-JPG has no sex or age; every row one value:
    # nothing to compare) is left out
    return {name: values.reset_index(drop=True) for name, values in audits.items()
            if values.nunique() > 1}


def audit_reason(targets: np.ndarray, influence: Influence | None, min_positives: int) -> str:
    """Why one label cannot be audited over these rows ('' when it can): the rule of the report
    card's means (metrics.mean_exclusions); `influence` is None where the AUC is undefined."""
    auc = None if influence is None else influence.auc
    reason = mean_exclusions(targets[:, None], ("label",), {"label": auc}, min_positives)
    return f"n/a: {reason['label']}" if reason else ""


LOWER, HIGHER = "lower in this subgroup", "higher in this subgroup"


@dataclass
class Measured:
    """One stratum and label as measured: its cell (the JSON), and the influences within the
    stratum and in the rest, which the stratum's means reuse (None when the cell is n/a)."""

    cell: dict
    within: Influence | None = None
    rest: Influence | None = None


def compared(parts_in: list[Influence], parts_out: list[Influence], level: float) -> dict:
    """The interval within the stratum, and the difference (mean) within - rest with its paired
    interval, p-value and unadjusted verdict; one class or the mean of several."""
    if len(parts_in) == 1:
        inside, outside = auc_interval(parts_in[0], level), auc_interval(parts_out[0], level)
    else:
        inside, outside = mean_interval(parts_in, level), mean_interval(parts_out, level)
    weight = 1.0 / len(parts_in)
    gap = difference_interval([(weight, p) for p in parts_in] + [(-weight, p) for p in parts_out],
                              level, (inside, outside))
    difference = float(np.mean([p.auc for p in parts_in]) - np.mean([p.auc for p in parts_out]))
    return {"ci": [inside.low, inside.high], "ci_note": inside.note,
            "difference": difference, "difference_ci": [gap.low, gap.high],
            "p_value": t_test(gap, difference),
            "verdict_unadjusted": verdict(gap.low, gap.high, HIGHER, LOWER)}


def measure_cell(scores: np.ndarray, targets: np.ndarray, codes: np.ndarray, n_patients: int,
                 inside: np.ndarray, overall: float | None, level: float, min_positives: int
                 ) -> Measured:
    """One stratum and label: AUC, interval, counts, and the paired difference to the rest."""
    y = targets[inside]
    result = {"positives": int(np.nansum(y)), "negatives": int((y == 0).sum()),
              "auc": None, "ci": [None, None], "ci_note": "", "difference": None,
              "difference_ci": [None, None], "p_value": None, "p_adjusted": None,
              "verdict": "n/a", "verdict_unadjusted": "n/a", "overall_auc": overall}
    within = auc_influence(scores[inside], y, codes[inside], n_patients)
    outside = auc_influence(scores[~inside], targets[~inside], codes[~inside], n_patients)
    own = audit_reason(y, within, min_positives)
    rest = audit_reason(targets[~inside], outside, min_positives)
    if own or rest:
        return Measured({**result, "note": own or f"{rest} in the rest of the split"})
    result.update(auc=within.auc, note="", **compared([within], [outside], level))
    return Measured(result, within, outside)


def stratum_means(measured: dict[str, Measured], labels: tuple[str, ...], level: float
                  ) -> dict[str, dict]:
    """The report card's means (metrics.MEANS) within a stratum and their paired difference to
    the rest, over the classes whose cell is evaluable on both sides (the others left out with
    their cell's note), so the two means average the same classes."""
    means = {}
    for key, title, subset in MEANS:
        wanted = [label for label in labels if subset is None or label in subset]
        if not wanted:  # labels other than CheXpert's: no competition mean, as in the report card
            continue
        members = [label for label in wanted if measured[label].within is not None]
        mean = {"name": title, "title": f"{title} ({len(members)} of {len(wanted)} classes)",
                "classes": members,
                "left_out": {label: measured[label].cell["note"] for label in wanted
                             if label not in members},
                "auc": None, "ci": [None, None], "ci_note": "", "difference": None,
                "difference_ci": [None, None], "p_value": None, "p_adjusted": None,
                "verdict": "n/a", "verdict_unadjusted": "n/a", "note": ""}
        means[key] = mean
        if not members:
            mean["note"] = "n/a: no evaluable class"
            continue
        mean.update(auc=float(np.mean([measured[label].within.auc for label in members])),
                    **compared([measured[label].within for label in members],
                               [measured[label].rest for label in members], level))
    return means


# ---- the family of comparisons: Holm ------------------------------------------------------------

HOLM = "Holm's step-down on the paired p-values (family-wise error rate)"


def comparisons(table: dict[str, dict[str, dict]]) -> dict[tuple, list[dict]]:
    """The family: every scored cell and mean, keyed by what it compares, so that the same
    comparison counts once: a two-stratum audit's mirrored pair (F against the rest = M), and a
    mean of the same classes as a cell or as the other mean (the competition five's mean is the
    all-classes one when only those five are scored)."""
    family: dict[tuple, list[dict]] = {}
    for audit, strata in table.items():
        mirrored = len(strata) == 2
        for stratum, entry in strata.items():
            items = [*(((label,), cell) for label, cell in entry["labels"].items()),
                     *((tuple(mean["classes"]), mean) for mean in entry["means"].values())]
            for classes, values in items:
                if values["auc"] is not None:
                    key = (audit, classes) if mirrored else (audit, stratum, classes)
                    family.setdefault(key, []).append(values)
    return family


def holm_verdicts(family: dict[tuple, list[dict]], level: float) -> int:
    """Holm-adjust a family of comparisons in place (p_adjusted, verdict), each key one
    comparison (its members: the same comparison seen from both sides); returns how many the
    family holds. A comparison without a p-value (a side ranks perfectly,
    intervals.difference_interval) counts with p = 1."""
    p_values = [min((v["p_value"] if v["p_value"] is not None else 1.0) for v in members)
                for members in family.values()]
    for members, adjusted in zip(family.values(), holm(p_values) if p_values else []):
        for values in members:
            values["p_adjusted"] = adjusted
            significant = adjusted < 1.0 - level
            values["verdict"] = (LOWER if values["difference"] < 0 else HIGHER) if significant \
                else "no clear difference"
    return len(family)


def adjust(table: dict[str, dict[str, dict]], level: float) -> int:
    """Holm-adjust every comparison of the audit in place (p_adjusted, verdict); returns how
    many comparisons the family holds."""
    return holm_verdicts(comparisons(table), level)


@dataclass
class Audit:
    table: dict[str, dict[str, dict]]  # {audit: {stratum: entry}}
    comparisons: int  # the family Holm adjusts over
    method: str = HOLM

    def multiplicity(self, level: float) -> dict:
        """score.json / eval_<split>.json "subgroup_comparisons"."""
        return multiplicity(self.comparisons, level, self.method)


def multiplicity(comparisons: int, level: float, method: str = HOLM) -> dict:
    """A family's size, its adjustment and the family-wise error rate it holds."""
    return {"comparisons": comparisons, "method": method,
            "family_wise_error_rate": round(1.0 - level, 10)}


def subgroup_table(scores: np.ndarray, targets: np.ndarray, frame: pd.DataFrame,
                   labels: tuple[str, ...], level: float, min_positives: int = 10,
                   age_bounds: tuple[int, ...] = AGE_BANDS, demographic: tuple[str, ...] = ()
                   ) -> Audit:
    """The audit of one split: its table {audit: {stratum: {"auc": {label: AUC}, "mean_auc",
    "n_images", "n_patients", "labels": {label: cell}, "means": {key: mean}}}} (a mean per
    metrics.MEANS key that the labels hold: stratum_means; "mean_auc" is the all-labels one),
    Holm-adjusted over all its comparisons.

    `frame` holds the rows' patient_id and the columns strata() reads (`demographic`: a
    --demographics file's columns); `scores` rank the rows
    (logits will do); `targets` are 0/1 with NaN masked.
    """
    patients = frame["patient_id"].astype(str).reset_index(drop=True)
    codes, n_patients = patient_codes(patients)
    overall = {label: None if influence is None else influence.auc for label, influence
               in class_influences(scores, targets, patients, labels).items()}
    table = {}
    for audit, groups in strata(frame, targets, labels, age_bounds, demographic).items():
        table[audit] = {}
        for stratum in sorted(groups.unique()):
            inside = (groups == stratum).to_numpy()
            measured = {label: measure_cell(scores[:, c], targets[:, c], codes, n_patients,
                                            inside, overall[label], level, min_positives)
                        for c, label in enumerate(labels)}
            means = stratum_means(measured, labels, level)
            table[audit][stratum] = {
                # the headline numbers first: AUC per label, the mean over all labels
                "auc": {label: values.cell["auc"] for label, values in measured.items()},
                "mean_auc": means["all"]["auc"] if "all" in means else None,
                "n_images": int(inside.sum()), "n_patients": int(patients[inside].nunique()),
                "labels": {label: values.cell for label, values in measured.items()},
                "means": means}
    return Audit(table, adjust(table, level))
