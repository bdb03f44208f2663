"""Figures of the evaluation report, as PNG files.

Figures are built with matplotlib's object-oriented API (matplotlib.figure.Figure, saved by the
Agg renderer), not pyplot: no display, no global backend switch, nothing to close afterwards.

    roc_grid           one ROC curve per class, AUC in the legend
    pr_grid            one precision-recall curve per class, AUPRC (average precision) in the legend
    reliability_grid   one reliability diagram per class: observed vs predicted frequency, with ECE
    forest_plot        the subgroup audit of the competition five: AUC and interval per stratum
    training_curves    a run's train and val loss and val mean AUC per epoch (train.py's curves.png)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, \
    roc_curve

from cxr.atomic import write_atomic
from cxr.data.labels import has_both_values, observed
from cxr.evaluation.calibration import reliability_bins
from cxr.evaluation.metrics import MEANS

COLUMNS = 4  # panels per row
PANEL_INCHES = 3.4
DPI = 90


def _grid(n_panels: int, title: str, columns: int = COLUMNS, panel_inches: float = PANEL_INCHES,
          title_inches: float = 0.0, **title_style):
    """A figure of n_panels panels, `columns` a row, the unused ones hidden: (figure, panels).
    `title_inches`: extra height for the title; `title_style`: suptitle's keywords."""
    rows = math.ceil(n_panels / columns)
    figure = Figure(figsize=(columns * panel_inches, rows * panel_inches + title_inches))
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.suptitle(title, **title_style)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return figure, axes.flat


def _not_evaluable(ax, label: str) -> None:
    ax.set_title(label, fontsize=10)
    ax.text(0.5, 0.5, "n/a: one label value\nin this split", ha="center", va="center",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(figure, path: Path, bottom: float = 0.0, top: float = 1.0, dpi: int = DPI) -> None:
    """Lay the panels out (leaving `bottom`, a fraction of the height, for a figure legend, and
    the panels' tops at `top`) and write the PNG atomically."""
    figure.tight_layout(rect=(0, bottom, 1, top))
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))


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
        _reader_markers(ax, {reader: (1 - specificity, sensitivity) for reader, (sensitivity,
                             specificity) in (points or {}).get(label, {}).items()})
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity")
        ax.set_title(label, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def _reader_markers(ax, points: dict[str, tuple[float, float]]) -> None:
    """Each reader's (x, y) point, one hollow marker a reader."""
    for i, (reader, (x, y)) in enumerate(points.items()):
        ax.plot(x, y, linestyle="none", color="black", markerfacecolor="none",
                marker=READER_MARKERS[i % len(READER_MARKERS)], label=reader)


def pr_grid(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...], path: Path,
            title: str, points: dict[str, dict[str, tuple[float, float]]] | None = None
            ) -> None:
    """The precision-recall curve drawn as readers are compared with it (readers.pr_precision):
    at recall r, the highest precision of a threshold with recall r or more. `points`: readers'
    {label: {reader: (recall, precision)}}, precision None when a reader called nothing."""
    figure, panels = _curve_panels(targets, probs, labels, title)
    for ax, label, y, p in panels:
        precision, recall, _ = precision_recall_curve(y, p)  # recall non-increasing
        envelope = np.maximum.accumulate(precision)
        ax.step(recall[::-1], envelope[::-1], where="pre",
                label=f"AUPRC = {average_precision_score(y, p):.3f}")
        _reader_markers(ax, {reader: point for reader, point
                             in (points or {}).get(label, {}).items() if point[1] is not None})
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


# ---- the subgroup audit (subgroups.py) ----------------------------------------------------------

FOREST_PANEL_INCHES = 2.6  # width of one label's panel
FOREST_ROW_INCHES = 0.26  # height of one stratum or audit heading
FOREST_LABEL_INCHES = 1.9  # room for the "stratum (n images)" tick labels
FOREST_MARGIN_INCHES = 1.3  # titles and the AUC axis
LEGEND_ROW_INCHES = 0.22  # one line of the legend under the panels
POINT_COLOUR, LOWER_COLOUR = "tab:blue", "tab:red"
LOWER = "lower in this subgroup"


def _forest_rows(subgroups: dict) -> list[tuple[str, dict | None]]:
    """Top to bottom: each audit's heading (entry None), then its strata."""
    rows = []
    for audit, strata in subgroups.items():
        rows.append((audit, None))
        rows += [(f"{stratum} ({entry['n_images']} images)", entry)
                 for stratum, entry in strata.items()]
    return rows


def _forest_cells(rows: list[tuple[str, dict | None]], label: str) -> list[tuple[int, dict]]:
    """(row, cell) of every stratum row, its cell n/a (auc None) where the label is not audited."""
    return [(y, entry["labels"].get(label, {"auc": None})) for y, (_, entry) in enumerate(rows)
            if entry is not None]


def _auc_range(cells: list[dict]) -> tuple[float, float]:
    """Shared x limits of the panels: every point, interval and overall AUC, up to 1."""
    values = [value for cell in cells
              for value in (cell["auc"], *cell["ci"], cell.get("overall_auc"))
              if value is not None]
    return max(0.0, math.floor((min(values) - 0.02) * 10) / 10), 1.03


def _forest_panel(ax, label: str, cells: list[tuple[int, dict]], headings: list[int]) -> None:
    overall = next((cell["overall_auc"] for _, cell in cells
                    if cell.get("overall_auc") is not None), None)
    for y in headings[1:]:  # a rule between audits
        ax.axhline(y - 0.5, color="lightgray", linewidth=0.8)
    if overall is not None:
        ax.axvline(overall, linestyle="--", color="gray", linewidth=1)
    for y, cell in cells:
        if cell["auc"] is None:
            ax.text(0.03, y, "n/a", color="gray", fontsize=8, va="center",
                    transform=ax.get_yaxis_transform())
            continue
        colour = LOWER_COLOUR if cell["verdict"] == LOWER else POINT_COLOUR
        if cell["ci"][0] is not None:
            ax.hlines(y, *cell["ci"], color=colour, linewidth=1.5)
        ax.plot(cell["auc"], y, marker="o", markersize=5, color=colour)
    ax.set_title(label if overall is None else f"{label}\n(overall {overall:.3f})", fontsize=10)
    ax.set_xlabel("AUC")
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="0.92")
    ax.set_axisbelow(True)


def forest_plot(subgroups: dict, labels: tuple[str, ...], path: Path, title: str) -> bool:
    """The subgroup audit (subgroups.subgroup_table) of the competition five among `labels`:
    one panel per label, one row per stratum under its audit's heading, the AUC within it with
    its interval, a dashed line at the label's AUC over the split; red where the stratum is
    clearly lower than the rest after the audit's Holm adjustment. False, and nothing written,
    when there is nothing to draw (no competition label audited, or no stratum with an AUC)."""
    five = next(subset for key, _, subset in MEANS if key == "competition")
    audited = {label for strata in subgroups.values() for entry in strata.values()
               for label in entry["labels"]}  # a label the dataset does not annotate: no panel
    drawn = [label for label in five if label in labels and label in audited]
    rows = _forest_rows(subgroups)
    cells = {label: _forest_cells(rows, label) for label in drawn}
    if not any(cell["auc"] is not None for pairs in cells.values() for _, cell in pairs):
        return False
    legend_columns = 3 if len(drawn) >= 3 else 1  # one entry a line where the figure is narrow
    legend_inches = LEGEND_ROW_INCHES * (math.ceil(3 / legend_columns) + 1)
    height = FOREST_ROW_INCHES * len(rows) + FOREST_MARGIN_INCHES + legend_inches
    figure = Figure(figsize=(FOREST_PANEL_INCHES * len(drawn) + FOREST_LABEL_INCHES, height))
    axes = figure.subplots(1, len(drawn), sharey=True, squeeze=False).flat
    figure.suptitle(title)
    headings = [y for y, (_, entry) in enumerate(rows) if entry is None]
    limits = _auc_range([cell for pairs in cells.values() for _, cell in pairs
                         if cell["auc"] is not None])
    for ax, label in zip(axes, drawn):
        _forest_panel(ax, label, cells[label], headings)
        ax.set_xlim(*limits)
    first = axes[0]
    first.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    for y in headings:
        first.get_yticklabels()[y].set_fontweight("bold")
    first.set_ylim(len(rows) - 0.5, -0.5)  # the first audit on top
    figure.legend(handles=[
        Line2D([], [], color=POINT_COLOUR, marker="o", label="AUC within the stratum, interval"),
        Line2D([], [], color=LOWER_COLOUR, marker="o",
               label="clearly lower than the rest (Holm-adjusted over the audit)"),
        Line2D([], [], color="gray", linestyle="--", label="AUC over the whole split")],
        loc="lower center", ncol=legend_columns, fontsize=8, frameon=False)
    _save(figure, path, bottom=legend_inches / height)
    return True


# ---- training curves (train.py) ----------------------------------------------------------------

def _column(history: list[dict], name: str) -> list[float]:
    """One metrics.csv column over the epochs, a missing value (no mean AUC) as NaN."""
    return [math.nan if row[name] is None else row[name] for row in history]


def training_curves(history: list[dict], path: Path, title: str, validated: str = "val"
                    ) -> None:
    """curves.png: the train and val loss per epoch beside the val mean AUC per epoch, its best
    epoch marked, from the run's metrics.csv rows. `validated` names what val scored ("val
    (moving average)" with --ema_decay). The two losses differ in kind: train is the
    positive-weighted BCE on the training targets, val the log-loss of the probabilities on
    the labelled val images."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(2 * PANEL_INCHES * 1.25, PANEL_INCHES))
    loss_ax, auc_ax = figure.subplots(1, 2)
    figure.suptitle(title)
    loss_ax.plot(epochs, _column(history, "train_loss"), marker="o",
                 label="train (weighted BCE)")
    loss_ax.plot(epochs, _column(history, "val_loss"), marker="o", label=f"{validated} (log-loss)")
    loss_ax.set(xlabel="epoch", ylabel="loss")
    loss_ax.legend(fontsize=8)
    aucs = _column(history, "val_mean_auc")
    if all(math.isnan(auc) for auc in aucs):
        auc_ax.text(0.5, 0.5, "no val mean AUC: no class has\n--min_positives positives and "
                    "negatives", ha="center", va="center", transform=auc_ax.transAxes)
        auc_ax.set_xticks([])
        auc_ax.set_yticks([])
    else:
        best = int(np.nanargmax(aucs))  # the first of equals, as best.pth
        auc_ax.plot(epochs, aucs, marker="o", color="C2", label=f"{validated} mean AUC")
        auc_ax.plot(epochs[best], aucs[best], marker="*", markersize=14, color="C3",
                    linestyle="none", label=f"best: epoch {epochs[best]} ({aucs[best]:.4f})")
        auc_ax.legend(fontsize=8)
        auc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    auc_ax.set(xlabel="epoch", ylabel="mean AUC")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, auc_ax):
        ax.grid(color="0.92")
    _save(figure, path)
