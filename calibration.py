"""Calibration: expected calibration error, reliability bins, and temperature scaling.

A predicted probability of 0.3 should come true about 30 % of the time. The expected calibration
error (ECE) is the gap between predicted and observed frequency, averaged over equal-width
probability bins weighted by how many predictions fall in each. Temperature scaling divides every
logit by one scalar T fitted on the val split (T > 1 softens over-confident outputs); it leaves
the ranking, hence every AUC, unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

# Search range of log(T): T between e^-4 (0.02) and e^4 (55).
LOG_T_BOUNDS = (-4.0, 4.0)


def reliability_bins(targets: np.ndarray, probs: np.ndarray, n_bins: int) -> pd.DataFrame:
    """Per equal-width bin of [0, 1]: count, mean predicted probability, observed frequency.

    Hand-written rather than sklearn.calibration.calibration_curve because the ECE needs each
    bin's count, which calibration_curve does not return. Bin i holds [i/n, (i+1)/n); 1.0 goes to
    the last bin. Empty bins have count 0 and NaN means.
    """
    probs = np.asarray(probs, dtype=float)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(bins, weights=probs, minlength=n_bins) / counts
        observed = np.bincount(bins, weights=np.asarray(targets, dtype=float),
                               minlength=n_bins) / counts
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "count": counts,
                         "mean_prob": mean_prob, "observed": observed})


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, n_bins: int) -> float:
    bins = reliability_bins(targets, probs, n_bins)
    filled = bins[bins["count"] > 0]
    gaps = (filled["mean_prob"] - filled["observed"]).abs()
    return float((gaps * filled["count"]).sum() / filled["count"].sum())


def per_class_ece(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...],
                  n_bins: int) -> dict[str, float]:
    return {label: expected_calibration_error(targets[:, c], probs[:, c], n_bins)
            for c, label in enumerate(labels)}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=float)))


def scaled_probs(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """Probabilities from logits, divided by the temperature first when one was fitted."""
    return sigmoid(logits if temperature is None else np.asarray(logits) / temperature)


def bce(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits), stable for large logits."""
    return float(np.mean(np.logaddexp(0.0, logits) - targets * logits))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The one temperature T (shared by all classes) minimising the BCE of sigmoid(logits / T).

    A one-dimensional smooth problem: a bounded scalar search over log T is enough (and keeps T
    positive), no gradient machinery needed.
    """
    logits, targets = np.asarray(logits, dtype=float), np.asarray(targets, dtype=float)
    result = minimize_scalar(lambda log_t: bce(logits / np.exp(log_t), targets),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))
