"""Figures of the evaluation report, as PNG files.

Figures are built with matplotlib's object-oriented API (matplotlib.figure.Figure, saved by the
Agg renderer), not pyplot: no display, no global backend switch, nothing to close afterwards.

    roc_grid           one ROC curve per class, AUC in the legend
    pr_grid            one precision-recall curve per class, AUPRC (average precision) in the legend
    reliability_grid   one reliability diagram per class: observed vs predicted frequency, with ECE
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, \
    roc_curve

from cxr.calibration import reliability_bins
from cxr.metrics import has_both_values, observed

COLUMNS = 4  # panels per row
PANEL_INCHES = 3.4
DPI = 90


def _grid(n_panels: int, title: str):
    rows = math.ceil(n_panels / COLUMNS)
    figure = Figure(figsize=(COLUMNS * PANEL_INCHES, rows * PANEL_INCHES))
    axes = figure.subplots(rows, COLUMNS, squeeze=False)
    figure.suptitle(title)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return figure, axes.flat


def _not_evaluable(ax, label: str) -> None:
    ax.set_title(label, fontsize=10)
    ax.text(0.5, 0.5, "n/a: one label value\nin this split", ha="center", va="center",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)


def _curve_panels(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...], title: str):
    """The figure, and (panel, label, observed targets, their scores) of every class with both
    label values, uncertain labels masked; the other classes' panels say n/a."""
    figure, axes = _grid(len(labels), title)
    panels = []
    for column, (ax, label) in enumerate(zip(axes, labels)):
        y, p = observed(targets[:, column], probs[:, column])
        if has_both_values(y):
            panels.append((ax, label, y, p))
        else:
            _not_evaluable(ax, label)
    return figure, panels


# One marker per reader drawn on the ROC curves (readers beyond these reuse them).
READER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def roc_grid(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...], path: Path,
             title: str, points: dict[str, dict[str, tuple[float, float]]] | None = None
             ) -> None:
    """`points`: readers' operating points drawn on the curves, {label: {reader: (sensitivity,
    specificity)}} (score.py's radiologists)."""
    figure, panels = _curve_panels(targets, probs, labels, title)
    for ax, label, y, p in panels:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(y, p):.3f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="chance (0.5)")
        readers = (points or {}).get(label, {})
        for i, (reader, (sensitivity, specificity)) in enumerate(readers.items()):
            ax.plot(1 - specificity, sensitivity, linestyle="none", color="black",
                    marker=READER_MARKERS[i % len(READER_MARKERS)], markerfacecolor="none",
                    label=reader)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity")
        ax.set_title(label, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def pr_grid(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...], path: Path,
            title: str) -> None:
    figure, panels = _curve_panels(targets, probs, labels, title)
    for ax, label, y, p in panels:
        precision, recall, _ = precision_recall_curve(y, p)
        ax.step(recall, precision, where="post",
                label=f"AUPRC = {average_precision_score(y, p):.3f}")
        ax.axhline(y.mean(), linestyle="--", color="gray", label=f"chance ({y.mean():.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
        ax.set_title(label, fontsize=10)
        ax.legend(loc="lower left", fontsize=8)
    _save(figure, path)


def reliability_grid(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...],
                     eces: dict[str, float], n_bins: int, path: Path, title: str) -> None:
    figure, axes = _grid(len(labels), title)
    for column, (ax, label) in enumerate(zip(axes, labels)):
        if eces[label] is None:  # every label of the class masked
            _not_evaluable(ax, label)
            continue
        bins = reliability_bins(targets[:, column], probs[:, column], n_bins)
        filled = bins[bins["count"] > 0]
        ax.bar(bins["low"], bins["count"] / bins["count"].sum(), width=1.0 / n_bins,
               align="edge", color="lightgray", label="share of images")
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfectly calibrated")
        ax.plot(filled["mean_prob"], filled["observed"], marker="o", label="model")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability",
               ylabel="observed frequency")
        ax.set_title(f"{label} (ECE {eces[label]:.3f})", fontsize=9)
        if column == 0:  # the same three entries in every panel: one legend is enough
            ax.legend(loc="upper left", fontsize=7)
    _save(figure, path)
