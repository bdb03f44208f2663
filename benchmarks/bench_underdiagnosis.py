"""Does the underdiagnosis audit (cxr/evaluation/underdiagnosis.py) keep its promises?

    python benchmarks/bench_underdiagnosis.py [--runs 400] [--seed 0]

Simulated splits: patients with 1 to 3 films each, a sex (2), an age band (4) and a race (4)
drawn per patient, 75 % of films with a finding, and the model calling a film with a finding
"No Finding" with probability 0.12 on average, varying between patients (a normal random effect
on the logit, sd 1: a patient's films are missed together, the clustering the intervals must
carry). Under the null no group differs; with a planted bias one sex's rate is doubled.
Each run audits Sex, Age, Race and their three intersections (as evaluate.py does) and the
script reports, per split size:
- family-wise error: the share of null runs with any "higher"/"lower" verdict (promise: <= 5 %);
- coverage of each stratum's 95 % rate interval and of the 95 % difference interval (against
  the true rates, computed from the simulation's own model by Monte Carlo);
- power: the share of planted runs whose verdict on the planted group is "higher", and the
  share with a verdict on an audit without Sex (Age, Race, Age x Race: false whatever the
  bias, as every such group holds both sexes alike).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr.evaluation.intervals import patient_codes  # noqa: E402
from cxr.evaluation.underdiagnosis import DEMOGRAPHIC, underdiagnosis_audit  # noqa: E402

BASE_LOGIT = -2.25  # about 0.12 called among films with a finding, after the random effect
PATIENT_SD = 1.0
LABELS = ("No Finding",)
SIZES = (120, 600, 3000)  # patients: the demo's test split, a hospital's sample, CheXpert-size


def simulate(rng: np.random.Generator, patients: int, bias: float):
    """One split: (probs, targets, patient ids, groups); `bias` multiplies Female's odds."""
    films = rng.integers(1, 4, patients)
    sex = rng.choice(["Female", "Male"], patients)
    age = rng.choice(["18-39", "40-59", "60-79", "80+"], patients)
    race = rng.choice(["Asian", "Black", "Hispanic", "White"], patients, p=[.15, .2, .15, .5])
    effect = BASE_LOGIT + PATIENT_SD * rng.standard_normal(patients) \
        + np.where(sex == "Female", np.log(bias), 0.0)
    owner = np.repeat(np.arange(patients), films)
    finding = rng.random(owner.size) < 0.75
    called = rng.random(owner.size) < 1 / (1 + np.exp(-effect[owner]))
    targets = np.where(finding, 0.0, 1.0)[:, None]  # No Finding = 0 where there is a finding
    probs = np.where(called | ~finding, 0.9, 0.1)[:, None]
    groups = {"Sex": pd.Series(sex[owner]), "Age": pd.Series(age[owner]),
              "Race": pd.Series(race[owner])}
    return probs, targets, owner.astype(str), groups


def true_rate(bias: float, female: bool, draws: int = 400_000) -> float:
    """The called share among one sex's films with a finding (Monte Carlo over patients; a
    patient's film count is independent of their effect, so the ratio estimator targets the
    mean over patients)."""
    rng = np.random.default_rng(12345)
    logit = BASE_LOGIT + PATIENT_SD * rng.standard_normal(draws) + (np.log(bias) if female
                                                                    else 0.0)
    return float(np.mean(1 / (1 + np.exp(-logit))))


def run(patients: int, runs: int, bias: float, seed: int) -> dict:
    rng = np.random.default_rng([seed, patients, int(bias * 100)])
    female, male = true_rate(bias, True), true_rate(bias, False)
    flagged = planted_found = other_flags = rate_hits = rate_n = diff_hits = diff_n = 0
    for _ in range(runs):
        probs, targets, owners, groups = simulate(rng, patients, bias)
        codes, n_patients = patient_codes(owners)
        audit = underdiagnosis_audit(probs, targets, LABELS, {"No Finding": 0.5}, codes,
                                     n_patients, groups, DEMOGRAPHIC + ("Race",), 0.95, 10,
                                     "simulation")
        verdicts = [(audit_name, stratum, cell["verdict"])
                    for audit_name, strata in audit.table.items()
                    for stratum, cell in strata.items() if cell["rate"] is not None]
        flags = [v for v in verdicts if v[2] in ("higher in this subgroup",
                                                 "lower in this subgroup")]
        flagged += bool(flags)
        planted = ("Sex", "Female", "higher in this subgroup")
        planted_found += planted in flags
        # Age and Race groups hold both sexes alike: a verdict there (or on their intersection)
        # is false whatever the bias; Sex's and its intersections' may be true
        other_flags += any("Sex" not in v[0] for v in flags)
        for stratum, truth, other in (("Female", female, male), ("Male", male, female)):
            cell = audit.table["Sex"][stratum]
            if cell["rate"] is None:
                continue
            rate_n += 1
            rate_hits += cell["ci"][0] <= truth <= cell["ci"][1]
            diff_n += 1
            diff_hits += cell["difference_ci"][0] <= truth - other <= cell["difference_ci"][1]
    return {"patients": patients, "bias": bias, "runs": runs,
            "any_flag": flagged / runs, "planted_found": planted_found / runs,
            "other_flags": other_flags / runs, "rate_coverage": rate_hits / max(rate_n, 1),
            "difference_coverage": diff_hits / max(diff_n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| patients | planted odds ratio | any flag | planted group flagged | other flags | "
          "Sex rate CI coverage | Sex difference CI coverage |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for patients in SIZES:
        for bias in (1.0, 2.0):
            r = run(patients, args.runs if patients < 3000 else args.runs // 4, bias, args.seed)
            print(f"| {patients} | {bias:g} | {r['any_flag']:.3f} | {r['planted_found']:.3f} | "
                  f"{r['other_flags']:.3f} | {r['rate_coverage']:.3f} | "
                  f"{r['difference_coverage']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
