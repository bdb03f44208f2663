"""Time the report card's statistics: 14 classes x 10,000 predictions of 2,000 patients.

    python benchmarks/bench_eval.py [--images 10000] [--patients 2000] [--resamples 1000]

Synthetic predictions (no model, no data files): 14 classes with 5-40 % prevalence, scores that
separate the classes moderately, 10,000 images of 2,000 patients. Prints the time of evaluate.py's
report card with its intervals (metrics.summarise: cluster-robust DeLong, no resampling), then
of the patient bootstrap that score.py's reader comparisons and ablate.py --seeds still draw
(1,000 resamples, stratified per class and shared), checked on a few resamples against
scikit-learn's roc_auc_score on explicitly repeated rows, whose loop it replaces.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sklearn.metrics import roc_auc_score  # noqa: E402

from cxr.cli import parse_args  # noqa: E402
from cxr.evaluation.bootstrap import bootstrap_aucs, draw_resamples  # noqa: E402
from cxr.evaluation.metrics import summarise  # noqa: E402

CLASSES = 14


def synthetic(images: int, patients: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    patient_ids = np.sort(rng.integers(0, patients, images))
    prevalence = rng.uniform(0.05, 0.4, CLASSES)
    targets = (rng.random((images, CLASSES)) < prevalence).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(images, CLASSES)) + 1.5 * targets - 1)))
    return patient_ids, targets, probs.astype(np.float32).astype(float)


def reference_auc(probs, targets, resamples, b: int, column: int) -> float:
    """roc_auc_score on resample b built explicitly: each image repeated by its patient's count."""
    repeats = resamples.counts[b, resamples.patient_of_image].astype(int)
    rows = np.repeat(np.arange(len(probs)), repeats)
    return roc_auc_score(targets[rows, column], probs[rows, column])


@dataclass
class Options:
    images: int = 10_000  # predictions
    patients: int = 2_000  # patients they belong to
    resamples: int = 1_000  # bootstrap resamples


def main() -> None:
    args = parse_args(defaults=Options())
    patient_ids, targets, probs = synthetic(args.images, args.patients)

    start = time.perf_counter()
    summarise(probs, targets, tuple(f"class {c}" for c in range(CLASSES)), patient_ids, 0.95)
    print(f"report card with intervals: {CLASSES} classes x {args.images} predictions "
          f"({args.patients} patients): {time.perf_counter() - start:.2f} s")

    start = time.perf_counter()
    matrix = bootstrap_aucs(probs, targets, patient_ids, args.resamples, seed=42).joint
    elapsed = time.perf_counter() - start
    print(f"patient bootstrap: {args.resamples} resamples x {CLASSES} classes x {args.images} "
          f"predictions ({args.patients} patients), stratified per class and shared: "
          f"{elapsed:.2f} s")
    resamples = draw_resamples(patient_ids, args.resamples, seed=42)  # the shared draw again

    start = time.perf_counter()
    checks = [(b, c) for b in range(3) for c in range(3)]
    worst = max(abs(reference_auc(probs, targets, resamples, b, c) - matrix[b, c])
                for b, c in checks)
    per_call = (time.perf_counter() - start) / len(checks)
    print(f"check against roc_auc_score on {len(checks)} repeated-row resamples: max difference "
          f"{worst:.1e}; the loop it replaces would take about "
          f"{per_call * args.resamples * CLASSES:.0f} s ({per_call * 1000:.1f} ms per call)")


if __name__ == "__main__":
    main()
