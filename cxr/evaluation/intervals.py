"""Confidence intervals that keep their promise: AUCs, their differences and means, proportions.

The methods were chosen by their simulated coverage (benchmarks/bench_coverage.py, its table in
docs/evaluation.md), which the patient bootstrap's percentile intervals failed: at a true AUC of
0.856 they covered a class AUC 0.76 of the time with 5 positives, 0.89 with 10 and 0.91 with 30,
and they gave an AUC of 1.0 an interval of zero width.

- An AUC: DeLong's variance made cluster-robust (Obuchowski 1997: a patient's images form one
  cluster, and a patient may hold positive and negative images), on the logit scale, with a t
  quantile whose degrees of freedom come from the positive and the negative patients
  (Welch-Satterthwaite): with 5 positive patients the variance rests on 5 numbers.
- A paired difference of two AUCs (two models on the same images, or a subgroup against the rest
  of its split): the difference of the per-patient influences, on the AUC scale.
- A mean of AUCs over classes (which share patients): the mean of the influences, logit scale.
- A sensitivity or specificity: Wilson's interval with the effective n of a cluster sample
  (Kish's design effect, estimated from the patients' counts).

An AUC of 0 or 1 (every positive above every negative) has no DeLong variance; its interval is
Hanley and McNeil's score interval (the variance taken at the bound, as in Newcombe 2006), with
the patients as the sample sizes, so it never has zero width, and the note calls it approximate.

Every interval says when it is approximate (`note`), where no method reached 90 % coverage in the
benchmark: an AUC resting on fewer than APPROXIMATE_BELOW positive or negative patients, or on
fewer than MIN_MISRANKED misranked ones (patients x (1 - AUC): a true AUC of 0.97 with 10 positive
patients covered 0.84 to 0.88, the sample rarely holding the few low-ranked positives that make
its variance); a mean with such a class; a difference with such a side.

Written by hand because neither scikit-learn nor scipy has DeLong's variance (let alone a
cluster-robust one); the ranks come from scipy.stats.rankdata, the quantiles from scipy.stats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

# Fewer positive (or negative) patients than this: the interval is marked approximate.
APPROXIMATE_BELOW = 10
# Fewer misranked positive (or negative) patients than this, patients x (1 - AUC): approximate.
MIN_MISRANKED = 1.0


@dataclass
class Influence:
    """One AUC and each patient's share of its error (the linearised estimator): the AUC minus
    its true value is about the sum over patients of positive[i] + negative[i]."""

    auc: float
    positive: np.ndarray  # (patients,) from the patient's positive images (0 if none)
    negative: np.ndarray  # (patients,) from the patient's negative images (0 if none)
    positive_patients: int
    negative_patients: int
    positives: int  # images
    negatives: int

    def minus(self, other: Influence) -> Influence:
        """The paired difference self - other of two AUCs on the same rows (two models)."""
        return Influence(self.auc - other.auc, self.positive - other.positive,
                         self.negative - other.negative, self.positive_patients,
                         self.negative_patients, self.positives, self.negatives)


@dataclass
class Interval:
    """An interval and how it was made; low/high are None when there is none (note says why)."""

    low: float | None
    high: float | None
    method: str = ""
    note: str = ""  # "approximate: ..." or why there is no interval; "" otherwise
    se: float | None = None  # standard error on the AUC scale (delta method from the logit)
    df: float | None = None  # degrees of freedom of the t quantile

    def as_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "method": self.method, "note": self.note}

    @property
    def bounds(self) -> list[float | None]:
        return [self.low, self.high]


def no_interval(note: str) -> Interval:
    return Interval(None, None, note=note)


def patient_codes(patient_ids: pd.Series | np.ndarray) -> tuple[np.ndarray, int]:
    """Each image's patient as an integer 0..P-1, and P: the clusters of every interval."""
    codes, uniques = pd.factorize(pd.Series(patient_ids).astype(str), sort=True)
    return codes.astype(np.int64), len(uniques)


def _small_sample_factor(clusters: int) -> float:
    """Obuchowski's I / (I - 1) (DeLong's m / (m - 1) when each patient has one image)."""
    return clusters / (clusters - 1) if clusters > 1 else np.nan


def auc_influence(scores: np.ndarray, targets: np.ndarray, codes: np.ndarray, n_patients: int
                  ) -> Influence | None:
    """The AUC of one class and its per-patient influence; None with one label value.

    DeLong's placement values (the share of negatives a positive image outranks, ties one half,
    and the share of positives that outrank a negative image) from midranks, summed per patient
    as in Obuchowski's clustered estimator. `codes` give each row's patient (0..n_patients-1);
    NaN targets are masked and take no part.
    """
    keep = ~np.isnan(targets)
    scores, positive, codes = scores[keep], targets[keep] > 0.5, codes[keep]
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        return None
    ranks = stats.rankdata(scores)
    above = (ranks[positive] - stats.rankdata(scores[positive])) / n  # V10 of each positive
    below = 1.0 - (ranks[~positive] - stats.rankdata(scores[~positive])) / m  # V01
    auc = float(above.mean())
    sums_pos = np.bincount(codes[positive], above - auc, minlength=n_patients)
    sums_neg = np.bincount(codes[~positive], below - auc, minlength=n_patients)
    i_pos, i_neg = len(np.unique(codes[positive])), len(np.unique(codes[~positive]))
    return Influence(auc, sums_pos / m * np.sqrt(_small_sample_factor(i_pos)),
                     sums_neg / n * np.sqrt(_small_sample_factor(i_neg)), i_pos, i_neg, m, n)


def _variance_and_df(parts: list[tuple[float, Influence]]) -> tuple[float, float]:
    """Variance of sum(weight * AUC) and Welch-Satterthwaite degrees of freedom, each part's
    positive and negative components counted as groups of their patients."""
    total = sum(weight * (part.positive + part.negative) for weight, part in parts)
    variance = float(np.sum(total ** 2))
    groups = [(float(np.sum((weight * values) ** 2)), patients)
              for weight, part in parts
              for values, patients in ((part.positive, part.positive_patients),
                                       (part.negative, part.negative_patients))]
    denominator = sum(v * v / (k - 1) for v, k in groups if v > 0 and k > 1)
    df = sum(v for v, _ in groups) ** 2 / denominator if denominator > 0 else np.inf
    return variance, max(df, 1.0)


def quantile(level: float, df: float) -> float:
    return float(stats.t.ppf(0.5 + level / 2, df)) if np.isfinite(df) else \
        float(stats.norm.ppf(0.5 + level / 2))


def approximate_note(influence: Influence, misranked: bool = True) -> str:
    """'approximate: why' when an AUC's interval covered less than 90 % in the benchmark's
    settings like it: fewer than APPROXIMATE_BELOW positive or negative patients, or (`misranked`)
    fewer than MIN_MISRANKED misranked ones; '' otherwise."""
    side, fewest = min((("positive", influence.positive_patients),
                        ("negative", influence.negative_patients)), key=lambda pair: pair[1])
    if fewest < APPROXIMATE_BELOW:
        return f"approximate: {fewest} {side} patient(s), fewer than {APPROXIMATE_BELOW}"
    errors = fewest * (1.0 - influence.auc)
    if misranked and errors < MIN_MISRANKED:
        return (f"approximate: AUC {influence.auc:.3f} with {fewest} {side} patients, about "
                f"{errors:.1f} of them misranked (fewer than {MIN_MISRANKED:g})")
    return ""


def hanley_mcneil_variance(theta: float, m: int, n: int) -> float:
    """Hanley and McNeil's (1982) variance of an AUC of theta with m positives, n negatives."""
    q1, q2 = theta / (2 - theta), 2 * theta ** 2 / (1 + theta)
    return (theta * (1 - theta) + (m - 1) * (q1 - theta ** 2) + (n - 1) * (q2 - theta ** 2)) \
        / (m * n)


def score_interval(auc: float, m: int, n: int, level: float) -> tuple[float, float]:
    """The AUCs theta with (auc - theta)^2 <= q^2 * HM(theta): a score interval that stays wide
    where DeLong's variance vanishes (an AUC of 0 or 1). q is t with min(m, n) - 1 df."""
    q = quantile(level, max(min(m, n) - 1, 1))

    def gap(theta: float) -> float:
        return (auc - theta) ** 2 - q * q * hanley_mcneil_variance(theta, m, n)

    # gap < 0 just inside the estimate (at a bound HM's variance is 0 and gap(auc) = 0 itself)
    below, above = max(auc - 1e-9, 0.0), min(auc + 1e-9, 1.0)
    low = optimize.brentq(gap, 0.0, below) if auc > 0 and gap(below) < 0 else auc
    high = optimize.brentq(gap, above, 1.0) if auc < 1 and gap(above) < 0 else auc
    return float(low), float(high)


def _expit(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def combination_interval(parts: list[tuple[float, Influence]], level: float, logit: bool,
                         method: str) -> Interval:
    """Interval of sum(weight * AUC) from the influences (None for a zero variance: the caller
    chooses the fallback). On the logit scale for an AUC or a mean of AUCs, which stay in
    (0, 1); on the AUC scale for a difference."""
    estimate = sum(weight * part.auc for weight, part in parts)
    variance, df = _variance_and_df(parts)
    if not variance > 0 or (logit and not 0.0 < estimate < 1.0):
        return Interval(None, None, method, "zero variance")
    q, se = quantile(level, df), float(np.sqrt(variance))
    if logit:
        centre, spread = np.log(estimate / (1 - estimate)), se / (estimate * (1 - estimate))
        low, high = _expit(centre - q * spread), _expit(centre + q * spread)
    else:
        low, high = estimate - q * se, estimate + q * se
    return Interval(float(low), float(high), method, "", se, df)


AUC_METHOD = "cluster-robust DeLong, logit scale, t quantile (Satterthwaite df)"
SCORE_METHOD = "Hanley-McNeil score interval over patients (AUC at a bound)"
DIFFERENCE_METHOD = "paired cluster-robust DeLong, t quantile (Satterthwaite df)"
MEAN_METHOD = "cluster-robust DeLong of the mean over classes, logit scale, t quantile"


def auc_interval(influence: Influence, level: float) -> Interval:
    """One AUC's interval: logit DeLong, or the score interval where its variance vanishes."""
    interval = combination_interval([(1.0, influence)], level, True, AUC_METHOD)
    if interval.low is not None:
        interval.note = approximate_note(influence)
        return interval
    low, high = score_interval(influence.auc, influence.positive_patients,
                               influence.negative_patients, level)
    return Interval(low, high, SCORE_METHOD,
                    f"approximate: AUC {influence.auc:g}, every positive "
                    f"{'above' if influence.auc == 1 else 'below'} every negative: no DeLong "
                    "variance, Hanley-McNeil's bound")


def mean_interval(influences: list[Influence], level: float) -> Interval:
    """A mean of AUCs over classes; where its variance vanishes (every class at 0 or 1), the mean
    of the classes' own intervals, marked approximate."""
    weight = 1.0 / len(influences)
    interval = combination_interval([(weight, part) for part in influences], level, True,
                                    MEAN_METHOD)
    if interval.low is not None:
        # the mean covered at least 0.92 from 10 positive patients a class, even at AUC 0.97
        interval.note = next((f"{note} in a class of the mean" for note in
                              (approximate_note(part, misranked=False) for part in influences)
                              if note), "")
        return interval
    singles = [auc_interval(part, level) for part in influences]
    return Interval(float(np.mean([s.low for s in singles])),
                    float(np.mean([s.high for s in singles])), SCORE_METHOD,
                    "approximate: every class ranks perfectly; the mean of their intervals")


def difference_interval(parts: list[tuple[float, Influence]], level: float,
                        sides: tuple[Interval, Interval]) -> Interval:
    """Interval of a difference (weights +1 / -1, or +-1/K for means); `sides` are the two
    sides' own intervals, minuend first.

    A zero paired variance means one of two things. Either both sides rank every pair alike
    (a model against itself): the difference is exactly what it is, [d, d]. Or a side ranks
    perfectly (AUC 0 or 1, its interval the score interval): the variance is zero only because
    the estimate sits at its bound, and the conservative [low1 - high2, high1 - low2] is given.
    """
    interval = combination_interval(parts, level, False, DIFFERENCE_METHOD)
    if interval.low is not None:
        interval.note = next((f"{side.note} on one side" for side in sides
                              if side.note.startswith("approximate")), "")
        return interval
    first, second = sides
    if first.low is None or second.low is None:
        return interval
    if SCORE_METHOD not in (first.method, second.method):
        d = sum(weight * part.auc for weight, part in parts)
        return Interval(d, d, DIFFERENCE_METHOD, "", 0.0, np.inf)
    return Interval(first.low - second.high, first.high - second.low, "difference of the sides' "
                    "intervals", "approximate: a side ranks every pair correctly, so the paired "
                    "variance vanishes; the sides' own intervals combined")


def t_test(interval: Interval, estimate: float) -> float | None:
    """Two-sided p-value of estimate = 0 from the interval's se and df (None without them)."""
    if interval.se is None or not interval.se > 0:
        return None
    return float(2 * stats.t.sf(abs(estimate) / interval.se, interval.df))


def holm(p_values: list[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given. By hand: a step-down of five lines, where
    statsmodels would be a new dependency (scipy has only Benjamini-Hochberg). Holm holds the
    family-wise error rate under any dependence between the tests (they share patients)."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.maximum.accumulate([min(1.0, (m - rank) * p_values[i])
                                      for rank, i in enumerate(order)])
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


# ---- proportions ---------------------------------------------------------------------------------

PROPORTION_METHOD = "Wilson, effective n of the patients' clusters (Kish design effect)"


def wilson(p: float, n: float, level: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion p of n (n may be an effective, non-integer n).
    By hand: scipy's binomtest wants an integer count."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def effective_n(hits: np.ndarray, trials: np.ndarray) -> float:
    """n / design effect of a proportion whose trials are clustered by patient (hits and trials
    per patient, patients with no trial left out). The design effect is the cluster-robust
    (ratio-estimator) variance over the binomial one, at least 1, and exactly 1 when every
    patient has one trial; at p = 0 or 1, where it cannot be estimated, it is n / patients (as if
    a patient's trials agreed completely)."""
    hits, trials = hits[trials > 0], trials[trials > 0]
    n, clusters = float(trials.sum()), len(trials)
    p = hits.sum() / n
    if clusters < 2 or p in (0.0, 1.0):
        return clusters if clusters else n
    robust = np.sum((hits - p * trials) ** 2) / n ** 2
    design_effect = max(1.0, robust / (p * (1 - p) / n))
    return n / design_effect


def proportion_interval(hits: np.ndarray, trials: np.ndarray, level: float) -> Interval:
    """Wilson interval of sum(hits) / sum(trials), hits and trials counted per patient."""
    n = float(np.sum(trials))
    if n == 0:
        return no_interval("n/a: no case to count")
    low, high = wilson(float(np.sum(hits)) / n, effective_n(hits, trials), level)
    return Interval(low, high, PROPORTION_METHOD)


def rate_interval(among: np.ndarray, hit: np.ndarray, codes: np.ndarray, n_patients: int,
                  level: float) -> Interval:
    """proportion_interval of the share of the rows `among` (a boolean mask) that `hit`, the
    rows counted per patient (`codes`: each row's patient): a sensitivity (among the
    positives, the ones called), a specificity, a precision."""
    trials = np.bincount(codes[among], minlength=n_patients)
    hits = np.bincount(codes[among], hit[among].astype(float), minlength=n_patients)
    return proportion_interval(hits, trials, level)


def interval_methods(level: float) -> dict:
    """What a report's intervals are, for its JSON ("intervals")."""
    return {"level": level, "cluster": "patient (a patient's images are one cluster)",
            "auc": AUC_METHOD, "auc_at_bound": SCORE_METHOD, "mean": MEAN_METHOD,
            "difference": DIFFERENCE_METHOD, "proportion": PROPORTION_METHOD,
            "approximate_below_patients": APPROXIMATE_BELOW,
            "coverage": "simulated in benchmarks/bench_coverage.py (docs/evaluation.md)"}
