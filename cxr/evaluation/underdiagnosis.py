"""The underdiagnosis audit: whom does the model call healthy when they are not?

Seyyed-Kalantari et al. (Nature Medicine 2021) measured a chest X-ray classifier's
underdiagnosis rate: among films whose reference has a finding (No Finding = 0), the share the
model calls "No Finding" at its operating point (No Finding's false-positive rate), by sex, age,
race and insurance and their intersections. A patient so called may go untreated.

Here, for a report with a No Finding column (evaluate.py, score.py):
- the operating point is No Finding's Youden threshold fitted on val (thresholds.json; score.py
  --thresholds), on the calibrated probability;
- the rate per stratum of every subgroup audit (subgroups.strata: Sex, age bands, AP/PA,
  Support Devices, and a --demographics file's columns), and per intersection of two
  demographic audits (Sex x Age, Sex x Race, ...; a row unknown in either is left out);
- each rate with Wilson's interval at the patients' effective n (intervals.rate_interval, whose
  coverage benchmarks/bench_coverage.py measured), and compared with the rest of the split:
  the difference with Newcombe's MOVER interval from the two Wilson intervals, and a two-sided
  p-value from Fisher's exact test on each side's effective counts (its counts shrunk by its
  design effect). Both treat the two sides as independent: they are for a patient's sex or
  race; where a patient has films on both sides (age bands, AP/PA), their correlation is
  positive and both err on the safe side;
- the verdict ("higher in this subgroup", "lower in this subgroup", "no clear difference")
  after Holm's step-down over every comparison of the audit, as in the AUC audit
  (subgroups.holm_verdicts); benchmarks/bench_underdiagnosis.py measures the family-wise error
  and the intervals' coverage by simulation.
- beside it, each finding's false-negative rate (1 - sensitivity at its own Youden threshold)
  per stratum of the single audits, compared and Holm-adjusted likewise, as a family of its own.

A stratum (or the rest of the split) with fewer than min_positives films with a finding is
n/a, with the reason. Written by hand: no library computes a cluster-robust rate difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from cxr.evaluation.intervals import effective_n, patient_codes, proportion_interval
from cxr.evaluation.subgroups import HIGHER, LOWER, UNKNOWN, holm_verdicts, multiplicity, strata

if TYPE_CHECKING:
    from config import Config

NO_FINDING = "No Finding"
DEMOGRAPHIC = ("Sex", "Age")  # besides a --demographics file's columns: intersected in pairs
RATE_DIFFERENCE = ("Newcombe's MOVER from the two sides' Wilson intervals (patients' effective "
                   "n); p-value: Fisher's exact test on the sides' effective counts")
DEFINITION = ("of the rows (films or studies) whose reference has a finding (No Finding = 0), "
              "the share the model calls No Finding at its operating point")


@dataclass
class Counts:
    """A rate's numerator and denominator per patient (0..P-1)."""

    hits: np.ndarray
    trials: np.ndarray

    @property
    def rate(self) -> float:
        return float(self.hits.sum() / self.trials.sum())

    @property
    def n(self) -> int:
        return int(self.trials.sum())


def counts(among: np.ndarray, hit: np.ndarray, codes: np.ndarray, n_patients: int) -> Counts:
    """Per patient: how many rows `among` there are, and how many of them `hit`."""
    return Counts(np.bincount(codes[among], hit[among].astype(float), minlength=n_patients),
                  np.bincount(codes[among], minlength=n_patients).astype(float))


def mover(within: Counts, rest: Counts, level: float) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval of the difference of two rates, from each rate's
    Wilson interval at its patients' effective n (intervals.proportion_interval)."""
    d = within.rate - rest.rate
    (l1, u1), (l2, u2) = (proportion_interval(side.hits, side.trials, level).bounds
                          for side in (within, rest))
    low = d - np.sqrt((within.rate - l1) ** 2 + (u2 - rest.rate) ** 2)
    high = d + np.sqrt((u1 - within.rate) ** 2 + (rest.rate - l2) ** 2)
    return float(max(-1.0, low)), float(min(1.0, high))


def effective_counts(side: Counts) -> tuple[int, int]:
    """(called, not called) of one side shrunk by its design effect (Kish's effective n of
    intervals.effective_n), rounded: the counts a sample of independent films would need to
    carry as much information."""
    n = effective_n(side.hits, side.trials)
    called = int(round(side.rate * n))
    return called, max(int(round(n)) - called, 0)


def fisher_p_value(within: Counts, rest: Counts) -> float:
    """Two-sided p-value of equal rates: Fisher's exact test (scipy) on the two sides'
    effective counts. Exact, so its small p-values hold where Holm needs them (an asymptotic
    test's tails are far too light for a stratum of 15 films: 6e-5 where Fisher says 9e-4)."""
    return float(stats.fisher_exact([effective_counts(within), effective_counts(rest)]).pvalue)


def rate_cell(among: np.ndarray, hit: np.ndarray, codes: np.ndarray, n_patients: int,
              inside: np.ndarray, level: float, min_cases: int) -> dict:
    """One stratum's rate of `hit` among the rows `among`, with its interval, and its
    comparison with the rest of the split (unadjusted verdict; Holm's comes later)."""
    within = counts(among & inside, hit, codes, n_patients)
    rest = counts(among & ~inside, hit, codes, n_patients)
    cell = {"rate": None, "ci": [None, None], "n": within.n,
            "n_patients": int((within.trials > 0).sum()), "events": int(within.hits.sum()),
            "difference": None, "difference_ci": [None, None], "p_value": None,
            "p_adjusted": None, "verdict": "n/a", "verdict_unadjusted": "n/a", "note": ""}
    if within.n < min_cases or rest.n < min_cases:
        side = "this subgroup" if within.n < min_cases else "the rest of the split"
        cell["note"] = f"n/a: {min(within.n, rest.n)} cases in {side} (fewer than {min_cases})"
        return cell
    low, high = mover(within, rest, level)
    cell.update(rate=within.rate, ci=proportion_interval(within.hits, within.trials, level).bounds,
                difference=within.rate - rest.rate, difference_ci=[low, high],
                p_value=fisher_p_value(within, rest),
                rest_rate=rest.rate)
    significant = cell["p_value"] < 1.0 - level
    cell["verdict_unadjusted"] = ((LOWER if cell["difference"] < 0 else HIGHER) if significant
                                  else "no clear difference")
    return cell


def intersections(groups: dict[str, pd.Series], demographic: tuple[str, ...]
                  ) -> dict[str, pd.Series]:
    """Every pair of the demographic audits the split has, as one audit "A x B" whose strata
    are "a, b"; a row unknown in either is unknown (and left out)."""
    names = [name for name in demographic if name in groups]
    out = {}
    for first, second in combinations(names, 2):
        a, b = groups[first], groups[second]
        known = (a != UNKNOWN) & (b != UNKNOWN)
        out[f"{first} x {second}"] = (a + ", " + b).where(known, UNKNOWN)
    return out


def rate_table(among: np.ndarray, hit: np.ndarray, codes: np.ndarray, n_patients: int,
               groups: dict[str, pd.Series], level: float, min_cases: int,
               skip_unknown: tuple[str, ...] = ()) -> dict[str, dict[str, dict]]:
    """{audit: {stratum: rate_cell}} over the audits' strata (an audit in `skip_unknown` has no
    "unknown" stratum: an intersection's unknown rows are not a group)."""
    table = {}
    for audit, values in groups.items():
        strata = sorted(set(values) - ({UNKNOWN} if audit in skip_unknown else set()))
        table[audit] = {stratum: rate_cell(among, hit, codes, n_patients,
                                           (values == stratum).to_numpy(), level, min_cases)
                        for stratum in strata}
    return table


def family(table: dict[str, dict[str, dict]], nested: bool = False) -> dict[tuple, list[dict]]:
    """The comparisons, keyed so that a two-stratum audit's mirrored pair counts once;
    `nested`: the strata hold {label: cell} (the false-negative table)."""
    out: dict[tuple, list[dict]] = {}
    for audit, cells in table.items():
        mirrored = len(cells) == 2
        for stratum, entry in cells.items():
            for label, cell in (entry.items() if nested else [("", entry)]):
                if cell["rate"] is not None:
                    key = (audit, label) if mirrored else (audit, stratum, label)
                    out.setdefault(key, []).append(cell)
    return out


@dataclass
class UnderdiagnosisAudit:
    table: dict[str, dict[str, dict]]  # {audit: {stratum: cell}}, intersections included
    summary: dict  # the operating point, the overall rate, the family
    false_negatives: dict[str, dict[str, dict[str, dict]]]  # {audit: {stratum: {label: cell}}}
    false_negative_summary: dict

    def report_fields(self) -> dict:
        """The fields of eval_<split>.json and score.json."""
        return {"underdiagnosis": self.table, "underdiagnosis_comparisons": self.summary,
                "false_negative_rates": self.false_negatives,
                "false_negative_comparisons": self.false_negative_summary}


def not_audited(note: str) -> UnderdiagnosisAudit:
    return UnderdiagnosisAudit({}, {"note": note}, {}, {"note": note})


def false_negative_table(probs: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
                         thresholds: dict[str, float | None], codes: np.ndarray,
                         n_patients: int, groups: dict[str, pd.Series], level: float,
                         min_cases: int) -> dict[str, dict[str, dict[str, dict]]]:
    """{audit: {stratum: {label: cell}}}: each finding's share of missed positives."""
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for c, label in enumerate(labels):
        threshold = thresholds.get(label)
        if label == NO_FINDING or threshold is None:
            continue
        positive = targets[:, c] > 0.5  # NaN (masked) compares False
        missed = probs[:, c] < threshold
        for audit, cells in rate_table(positive, missed, codes, n_patients, groups, level,
                                       min_cases).items():
            for stratum, cell in cells.items():
                table.setdefault(audit, {}).setdefault(stratum, {})[label] = cell
    return table


def underdiagnosis_audit(probs: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
                         thresholds: dict[str, float | None], codes: np.ndarray,
                         n_patients: int, groups: dict[str, pd.Series],
                         demographic: tuple[str, ...], level: float, min_cases: int,
                         source: str) -> UnderdiagnosisAudit:
    """The audit of one split's rows: probs calibrated, targets 0/1 with NaN masked, codes the
    rows' patients, groups subgroups.strata's, thresholds {label: Youden threshold} from
    `source` (thresholds.json's val fit)."""
    if NO_FINDING not in labels:
        return not_audited("n/a: the model does not predict No Finding")
    column = labels.index(NO_FINDING)
    threshold = thresholds.get(NO_FINDING)
    if threshold is None:
        return not_audited("n/a: No Finding has no operating point (one label value on val)")
    reference = targets[:, column]
    among = reference == 0  # the reference has a finding; NaN (masked) compares False
    called = probs[:, column] >= threshold
    crossed = intersections(groups, demographic)
    table = rate_table(among, called, codes, n_patients, {**groups, **crossed}, level,
                       min_cases, skip_unknown=tuple(crossed))
    overall = counts(among, called, codes, n_patients)
    adjusted = holm_verdicts(family(table), level)
    summary = {"definition": DEFINITION,
               "operating_point": {"label": NO_FINDING, "method": "youden", "fitted_on": "val",
                                   "threshold": threshold, "source": source},
               "rate": overall.rate if overall.n else None, "n": overall.n,
               "ci": proportion_interval(overall.hits, overall.trials, level).bounds,
               "events": int(overall.hits.sum()), "audits": list(groups),
               "intersections": list(crossed), "difference": RATE_DIFFERENCE,
               **multiplicity(adjusted, level)}
    negatives = false_negative_table(probs, targets, labels, thresholds, codes, n_patients,
                                     groups, level, min_cases)
    negative_summary = {"definition": "positives of the reference the model does not call at "
                                      "the finding's own Youden threshold (1 - sensitivity)",
                        "difference": RATE_DIFFERENCE,
                        **multiplicity(holm_verdicts(family(negatives, nested=True), level),
                                       level)}
    return UnderdiagnosisAudit(table, summary, negatives, negative_summary)


def missed_audit(probs: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
                 thresholds: dict[str, float | None], frame: pd.DataFrame,
                 demographic: tuple[str, ...], cfg: Config, source: str) -> UnderdiagnosisAudit:
    """underdiagnosis_audit of a report's rows (`frame`: their patient_id and the strata's
    columns, demographics joined), with the config's level, minimum and age bands."""
    codes, n_patients = patient_codes(frame["patient_id"])
    groups = strata(frame.reset_index(drop=True), targets, labels, cfg.age_bands, demographic)
    return underdiagnosis_audit(probs, targets, labels, thresholds, codes, n_patients, groups,
                                (*DEMOGRAPHIC, *demographic), cfg.ci_level, cfg.min_positives,
                                source)
