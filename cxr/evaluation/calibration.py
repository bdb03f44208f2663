"""Calibration: expected calibration error, reliability bins, and per-class calibration maps.

A predicted probability of 0.3 should come true about 30 % of the time. The expected calibration
error (ECE) is the gap between predicted and observed frequency, averaged over equal-width
probability bins weighted by how many predictions fall in each.

The model's logits already have the positive-weight offset of training removed
(model_architecture.CheXpertNet.logit_offset). What is left is fitted per class on the val split
(uncertain labels masked), and applied by every consumer (evaluate.py, predict.py, app.py,
export.py) as calibrated logit = scale x logit + bias:
    platt         scale and bias by logistic regression (Platt 1999), the default
    temperature   scale = 1 / T, bias 0: only sharpens or softens, one parameter per class
    none          scale 1, bias 0
The scale is kept positive, so a class's ranking, hence its AUC, never changes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

LOG_SCALE_BOUNDS = (-4.0, 4.0)  # scale between e^-4 (0.02) and e^4 (55)
IDENTITY = {"scale": 1.0, "bias": 0.0}


def reliability_bins(targets: np.ndarray, probs: np.ndarray, n_bins: int) -> pd.DataFrame:
    """Per equal-width bin of [0, 1]: count, mean predicted probability, observed frequency.

    Hand-written rather than sklearn.calibration.calibration_curve because the ECE needs each
    bin's count, which calibration_curve does not return. Bin i holds [i/n, (i+1)/n); 1.0 goes to
    the last bin. Empty bins have count 0 and NaN means. Masked (NaN) targets are left out.
    """
    targets, probs = np.asarray(targets, dtype=float), np.asarray(probs, dtype=float)
    keep = ~np.isnan(targets)
    targets, probs = targets[keep], probs[keep]
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(bins, weights=probs, minlength=n_bins) / counts
        observed = np.bincount(bins, weights=targets, minlength=n_bins) / counts
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "count": counts,
                         "mean_prob": mean_prob, "observed": observed})


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, n_bins: int
                               ) -> float | None:
    """ECE over the observed labels; None when every label is masked."""
    bins = reliability_bins(targets, probs, n_bins)
    filled = bins[bins["count"] > 0]
    if filled.empty:
        return None
    gaps = (filled["mean_prob"] - filled["observed"]).abs()
    return float((gaps * filled["count"]).sum() / filled["count"].sum())


def per_class_ece(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...],
                  n_bins: int) -> dict[str, float | None]:
    return {label: expected_calibration_error(targets[:, c], probs[:, c], n_bins)
            for c, label in enumerate(labels)}


def mean_ece(eces: dict[str, float | None]) -> float | None:
    values = [value for value in eces.values() if value is not None]
    return float(np.mean(values)) if values else None


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=float)))


def bce(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits), stable for large logits."""
    return float(np.mean(np.logaddexp(0.0, logits) - targets * logits))


# ---- per-class calibration maps ------------------------------------------------------------------

def platt_targets(y: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets, (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0: on a
    class that the model separates perfectly on val, plain maximum likelihood would send the
    scale to infinity and call every later image certain."""
    positives = float(y.sum())
    negatives = float(len(y) - positives)
    return np.where(y > 0.5, (positives + 1) / (positives + 2), 1.0 / (negatives + 2))


def _fit_one(z: np.ndarray, y: np.ndarray, method: str) -> dict[str, float]:
    """(scale, bias) minimising the BCE of sigmoid(scale x z + bias) against Platt's targets.

    Why not sklearn's LogisticRegression: it can neither keep the scale positive (a negative one
    would reverse the ranking, and the AUC, of a class the model barely learnt) nor fix the bias
    at 0 for temperature scaling. Two parameters with an exact gradient: L-BFGS-B converges in a
    few dozen evaluations.
    """
    t = platt_targets(y)

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        log_scale, bias = params
        scale = np.exp(log_scale)
        x = scale * z + bias
        gap = sigmoid(x) - t  # d BCE / dx
        return bce(x, t), np.array([np.mean(gap * z) * scale, np.mean(gap)])

    bounds = [LOG_SCALE_BOUNDS, (None, None) if method == "platt" else (0.0, 0.0)]
    result = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", bounds=bounds)
    return {"scale": float(np.exp(result.x[0])), "bias": float(result.x[1])}


def fit_calibration(logits: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
                    method: str) -> dict[str, dict[str, float] | None]:
    """Per class {"scale", "bias"} fitted on the observed labels of a split (val); None for a
    class with one label value there (it is left as it is: scale 1, bias 0)."""
    parameters: dict[str, dict[str, float] | None] = {}
    for column, label in enumerate(labels):
        y, z = targets[:, column], np.asarray(logits[:, column], dtype=float)
        keep = ~np.isnan(y)
        y, z = y[keep], z[keep]
        if method == "none":
            parameters[label] = dict(IDENTITY)
        elif len(y) == 0 or y.min() == y.max():
            parameters[label] = None
        else:
            parameters[label] = _fit_one(z, y, method)
    return parameters


def calibration_arrays(parameters: dict[str, dict[str, float] | None] | None,
                       labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(scales, biases) per label, identity where a class has none (or no calibration at all)."""
    values = [(parameters or {}).get(label) or IDENTITY for label in labels]
    return (np.array([v["scale"] for v in values], dtype=np.float64),
            np.array([v["bias"] for v in values], dtype=np.float64))


def calibrated_logits(logits: np.ndarray, parameters: dict | None, labels: tuple[str, ...]
                      ) -> np.ndarray:
    scales, biases = calibration_arrays(parameters, labels)
    return np.asarray(logits, dtype=np.float64) * scales + biases


def calibrated_probs(logits: np.ndarray, parameters: dict | None, labels: tuple[str, ...]
                     ) -> np.ndarray:
    """Probabilities after each class's calibration map (identity without parameters)."""
    return sigmoid(calibrated_logits(logits, parameters, labels))
