"""Coverage of the reports' 95 % intervals, by simulation with known true values.

    python benchmarks/bench_coverage.py [--datasets 500] [--positives 5,10,30,100]
        [--aucs 0.856] [--bootstrap_resamples 500] [--workers 2]

Each dataset draws binormal scores with a known AUC: negatives N(0, 1), positives N(mu, 1),
mu = sqrt(2) * Phi^-1(AUC). Two designs:
- independent: one image per patient, the cell's positive patients and 400 negative ones;
- clustered: 160 negative patients and the cell's positive patients, 1 to 4 images each (2.5 on
  average, so about 400 negative images), a patient effect carrying half the score's variance,
  and each image of a positive patient positive with probability 0.75 (the first always).
Every dataset holds 5 classes (mu spread by -0.4..+0.4 around the cell's, each class's positive
patients drawn at random, patient effects shared across classes) and two correlated models (B's
mu 0.3 higher). It measures the intervals the reports give, each against its true value:
- a class AUC (the middle class, model A);
- the paired difference B - A of two models' AUCs (middle class);
- the mean AUC over the 5 classes (model A; only from 10 positives, as the report card's means);
- the sensitivity and the specificity at a fixed threshold (mu / 2, the middle class).
Each is made by the method the reports use now (cxr/evaluation/intervals.py) and, for comparison, by
the patient bootstrap's percentile intervals that the reports used before (stratified per class for
a class AUC, a difference and a proportion; one shared draw for the mean). Prints coverage (share
of datasets whose interval holds the true value) and mean width per cell. Fixed seeds.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr.cli import parse_args  # noqa: E402
from cxr.evaluation.bootstrap import bootstrap_auc_matrix, class_resamples, draw_resamples, \
    mean_over, percentile_interval, stratified_auc_matrix  # noqa: E402
from cxr.evaluation.intervals import auc_influence, auc_interval, difference_interval, \
    mean_interval, proportion_interval  # noqa: E402

CLASSES, MIDDLE = 5, 2
SHIFTS = np.linspace(-0.4, 0.4, CLASSES)  # each class's mu around the cell's
MODEL_GAP = 0.3  # model B's mu above A's
LEVEL = 0.95


@dataclass
class Options:
    datasets: int = 500  # simulated datasets per cell
    positives: str = "5,10,30,100"  # positive patients per class
    aucs: str = "0.856"  # true AUCs of the middle class (model A)
    bootstrap_resamples: int = 500  # the percentile bootstrap compared with (0: leave it out)
    workers: int = 2  # processes


@dataclass
class Dataset:
    codes: np.ndarray  # (images,) patient index
    n_patients: int
    targets: np.ndarray  # (images, classes) 0/1
    scores_a: np.ndarray  # (images, classes)
    scores_b: np.ndarray


def design(rng: np.random.Generator, positives: int, clustered: bool):
    """Patients' image counts and each class's positive patients."""
    negatives = 160 if clustered else 400
    n_patients = positives + negatives
    images = rng.integers(1, 5, n_patients) if clustered else np.ones(n_patients, int)
    codes = np.repeat(np.arange(n_patients), images)
    first = np.r_[True, codes[1:] != codes[:-1]]
    targets = np.zeros((len(codes), CLASSES))
    for c in range(CLASSES):
        sick = np.zeros(n_patients, bool)
        sick[rng.choice(n_patients, positives, replace=False)] = True
        image_positive = first | (rng.random(len(codes)) < 0.75) if clustered else True
        targets[:, c] = sick[codes] & image_positive
    return codes, n_patients, targets


def simulate(rng: np.random.Generator, positives: int, clustered: bool, mu: float) -> Dataset:
    codes, n_patients, targets = design(rng, positives, clustered)
    rho = 0.5 if clustered else 0.0
    shared = rng.normal(size=(n_patients, 1))  # a patient's effect, shared across classes

    def scores(model_mu: float, own: np.ndarray, noise: np.ndarray) -> np.ndarray:
        effect = np.sqrt(0.5) * shared + np.sqrt(0.5) * own  # unit variance
        return (model_mu + SHIFTS) * targets + np.sqrt(rho) * effect[codes] \
            + np.sqrt(1 - rho) * noise

    def correlated(values: np.ndarray) -> np.ndarray:  # 0.7 of the variance shared, unit variance
        return np.sqrt(0.7) * values + np.sqrt(0.3) * rng.normal(size=values.shape)

    own, noise = rng.normal(size=(n_patients, CLASSES)), rng.normal(size=targets.shape)
    return Dataset(codes, n_patients, targets, scores(mu, own, noise),
                   scores(mu + MODEL_GAP, correlated(own), correlated(noise)))


def true_values(mu: float) -> dict[str, float]:
    auc = stats.norm.cdf((mu + SHIFTS) / np.sqrt(2))
    auc_b = stats.norm.cdf((mu + MODEL_GAP + SHIFTS[MIDDLE]) / np.sqrt(2))
    threshold = (mu + SHIFTS[MIDDLE]) / 2
    return {"auc": auc[MIDDLE], "difference": auc_b - auc[MIDDLE], "mean": auc.mean(),
            "sensitivity": stats.norm.sf(threshold - mu - SHIFTS[MIDDLE]),
            "specificity": stats.norm.cdf(threshold), "threshold": threshold}


def proportion_counts(data: Dataset, threshold: float, positive: bool):
    """Per patient: hits (called positive / negative correctly) and trials."""
    rows = data.targets[:, MIDDLE] == (1 if positive else 0)
    called = (data.scores_a[:, MIDDLE] >= threshold) == positive
    trials = np.bincount(data.codes[rows], minlength=data.n_patients)
    hits = np.bincount(data.codes[rows], called[rows], minlength=data.n_patients)
    return hits, trials


def new_intervals(data: Dataset, truth: dict) -> dict[str, tuple[float, float]]:
    """The intervals the reports give now (cxr/evaluation/intervals.py)."""
    influences = [auc_influence(data.scores_a[:, c], data.targets[:, c], data.codes,
                                data.n_patients) for c in range(CLASSES)]
    b = auc_influence(data.scores_b[:, MIDDLE], data.targets[:, MIDDLE], data.codes,
                      data.n_patients)
    single = auc_interval(influences[MIDDLE], LEVEL)
    paired = difference_interval([(1.0, b.minus(influences[MIDDLE]))], LEVEL,
                                 (auc_interval(b, LEVEL), single))
    out = {"auc": single, "difference": paired, "mean": mean_interval(influences, LEVEL)}
    for name, positive in (("sensitivity", True), ("specificity", False)):
        out[name] = proportion_interval(*proportion_counts(data, truth["threshold"], positive),
                                        LEVEL)
    return {name: (i.low, i.high, i.note.startswith("approximate")) for name, i in out.items()}


def bootstrap_intervals(data: Dataset, truth: dict, resamples: int, seed: int
                        ) -> dict[str, tuple[float, float]]:
    """The patient bootstrap's percentile intervals the reports gave before this change."""
    a = stratified_auc_matrix(data.scores_a[:, [MIDDLE]], data.targets[:, [MIDDLE]], data.codes,
                              resamples, seed)[:, 0]
    b = stratified_auc_matrix(data.scores_b[:, [MIDDLE]], data.targets[:, [MIDDLE]], data.codes,
                              resamples, seed)[:, 0]
    joint = bootstrap_auc_matrix(data.scores_a, data.targets,
                                 draw_resamples(data.codes, resamples, seed))
    out = {"auc": percentile_interval(a, LEVEL), "difference": percentile_interval(b - a, LEVEL),
           "mean": percentile_interval(mean_over(joint, list(range(CLASSES))), LEVEL)}
    counts = class_resamples(data.targets[:, MIDDLE], data.codes, data.n_patients, resamples,
                             seed, 0)
    for name, positive in (("sensitivity", True), ("specificity", False)):
        hits, trials = proportion_counts(data, truth["threshold"], positive)
        with np.errstate(invalid="ignore"):
            out[name] = percentile_interval(counts @ hits / (counts @ trials), LEVEL)
    return {name: (i.low, i.high, False) for name, i in out.items()}


def run_cell(cell: tuple[int, bool, float, int, int]) -> dict:
    positives, clustered, auc, datasets, resamples = cell
    mu = float(np.sqrt(2) * stats.norm.ppf(auc))
    truth = true_values(mu)
    methods = {"now": new_intervals}
    if resamples:
        methods["before"] = lambda d, t: bootstrap_intervals(d, t, resamples, seed=1)
    hits = {m: {k: [] for k in ("auc", "difference", "mean", "sensitivity", "specificity")}
            for m in methods}
    for i in range(datasets):
        rng = np.random.default_rng([positives, int(clustered), int(auc * 1000), i])
        data = simulate(rng, positives, clustered, mu)
        for method, intervals in methods.items():
            for name, (low, high, approximate) in intervals(data, truth).items():
                covered = low is not None and low <= truth[name] <= high
                hits[method][name].append((covered, np.nan if low is None else high - low,
                                           approximate))
    return {"cell": cell[:3], "hits": hits}


def summary_rows(results: list[dict]) -> list[str]:
    header = "| interval | method | " + " | ".join(
        f"{p} pos, {'clustered' if c else 'independent'}" for (p, c, _) in
        (r["cell"] for r in results)) + " |"
    lines = [header, "|" + " --- |" * (2 + len(results))]
    for name in ("auc", "difference", "mean", "sensitivity", "specificity"):
        for method in (*results[0]["hits"], "unmarked"):
            cells = [cell_text(np.array(r["hits"]["now" if method == "unmarked" else method][
                name], dtype=float), name, r["cell"][0], method == "unmarked") for r in results]
            if method != "unmarked" or any(cell.endswith("%)") and not cell.endswith("(100%)")
                                           for cell in cells):
                lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return lines


def cell_text(values: np.ndarray, name: str, positives: int, unmarked: bool) -> str:
    """'coverage (mean width)'; for the unmarked row, the coverage of the intervals not marked
    approximate and (their share)."""
    if name == "mean" and positives < 10:
        return "(not reported)"
    if not unmarked:
        return f"{values[:, 0].mean():.3f} ({np.nanmean(values[:, 1]):.3f})"
    keep = values[:, 2] == 0
    return f"{values[keep, 0].mean():.3f} ({keep.mean():.0%})" if keep.any() else "- (0%)"


def main() -> None:
    args = parse_args(defaults=Options())
    cells = [(int(p), clustered, float(auc), args.datasets, args.bootstrap_resamples)
             for auc in args.aucs.split(",") for clustered in (False, True)
             for p in args.positives.split(",")]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(tqdm(pool.map(run_cell, cells), total=len(cells), desc="cells"))
    for auc in sorted({r["cell"][2] for r in results}):
        print(f"\ntrue AUC {auc} (middle class, model A); coverage (mean width) of 95 % "
              f"intervals over {args.datasets} datasets per cell; "
              "'now' = cxr/evaluation/intervals.py, "
              f"'before' = patient-bootstrap percentile ({args.bootstrap_resamples} resamples), "
              "'unmarked' = coverage of the intervals now not marked approximate (their share)")
        print("\n".join(summary_rows([r for r in results if r["cell"][2] == auc])))
    print(f"\nbench_coverage: {len(cells)} cells x {args.datasets} datasets in "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
