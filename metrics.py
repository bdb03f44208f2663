"""Per-class ROC AUC and the report card printed by evaluate.py."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

# Status words of the report card, highest band first (AUC lower bound, word).
STATUS_BANDS = ((0.85, "Excellent"), (0.80, "Good"), (0.70, "Fair"), (0.0, "Challenging"))


def per_class_auc(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]
                  ) -> dict[str, float | None]:
    """ROC AUC of every label column; None where the split holds only one label value."""
    aucs: dict[str, float | None] = {}
    for column, label in enumerate(labels):
        y = targets[:, column]
        if y.min() == y.max():  # all negative or all positive: AUC is undefined
            aucs[label] = None
        else:
            aucs[label] = float(roc_auc_score(y, probs[:, column]))
    return aucs


def mean_auc(aucs: dict[str, float | None]) -> float | None:
    """Mean over the classes whose AUC is defined; None when no class is evaluable."""
    defined = [value for value in aucs.values() if value is not None]
    return float(np.mean(defined)) if defined else None


def status(auc: float) -> str:
    return next(word for bound, word in STATUS_BANDS if auc >= bound)


def undefined_note(targets: np.ndarray, column: int) -> str:
    value = "positive" if targets[:, column].min() == 1 else "negative"
    return f"n/a: every image in this split is {value}"


def report_rows(aucs: dict[str, float | None], targets: np.ndarray,
                labels: tuple[str, ...]) -> list[dict]:
    """Report card rows: classes by AUC (best first), then the n/a ones, then the average."""
    rows = []
    for column, label in enumerate(labels):
        auc = aucs[label]
        rows.append({"pathology": label, "auc": auc, "positives": int(targets[:, column].sum()),
                     "status": status(auc) if auc is not None else undefined_note(targets, column)})
    rows.sort(key=lambda row: -row["auc"] if row["auc"] is not None else math.inf)
    evaluable = sum(auc is not None for auc in aucs.values())
    rows.append({"pathology": f"AVERAGE ({evaluable} of {len(labels)} classes)",
                 "auc": mean_auc(aucs), "positives": None, "status": ""})
    return rows


def _auc_text(auc: float | None) -> str:
    return "n/a" if auc is None else f"{auc:.4f}"


def format_report_card(rows: list[dict]) -> str:
    """Plain-text table for the terminal."""
    width = max(len(row["pathology"]) for row in rows)
    lines = [f"{'Pathology':<{width}}  {'AUC':>6}  {'Pos':>5}  Status", "-" * (width + 30)]
    for row in rows:
        if row["positives"] is None:
            lines.append("-" * (width + 30))
        positives = "" if row["positives"] is None else row["positives"]
        lines.append(f"{row['pathology']:<{width}}  {_auc_text(row['auc']):>6}  {positives:>5}  "
                     f"{row['status']}")
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    lines = ["| Pathology | AUC | Positives | Status |", "| :--- | ---: | ---: | :--- |"]
    for row in rows:
        positives = "" if row["positives"] is None else row["positives"]
        name, auc = row["pathology"], _auc_text(row["auc"])
        if row["positives"] is None:
            name, auc = f"**{name}**", f"**{auc}**"
        lines.append(f"| {name} | {auc} | {positives} | {row['status']} |")
    return "\n".join(lines)
