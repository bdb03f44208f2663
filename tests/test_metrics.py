"""Per-class AUC and the report card: undefined classes are n/a, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from metrics import format_markdown, format_report_card, mean_auc, per_class_auc, report_rows

LABELS = ("A", "B", "C")


def test_auc_matches_sklearn_and_single_valued_classes_are_na():
    targets = np.array([[0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=float)
    probs = np.array([[0.1, 0.5, 0.2], [0.9, 0.1, 0.3], [0.4, 0.2, 0.9], [0.3, 0.3, 0.1]])
    aucs = per_class_auc(targets, probs, LABELS)
    assert aucs["A"] == pytest.approx(roc_auc_score(targets[:, 0], probs[:, 0])) == 0.75
    assert aucs["B"] is None and aucs["C"] is None
    assert mean_auc(aucs) == 0.75  # n/a classes are left out of the mean
    assert mean_auc({"A": None}) is None

    rows = report_rows(aucs, targets, LABELS)
    assert [r["pathology"] for r in rows] == ["A", "B", "C", "AVERAGE (1 of 3 classes)"]
    assert rows[1]["status"] == "n/a: every image in this split is negative"
    assert rows[2]["status"] == "n/a: every image in this split is positive"
    text, markdown = format_report_card(rows), format_markdown(rows)
    assert "0.7500" in text and "n/a" in text and "| **AVERAGE (1 of 3 classes)** | **0.7500** |" in markdown


def test_rows_are_sorted_best_first_with_status_words():
    targets = np.array([[0, 0], [1, 1], [0, 0], [1, 1]], dtype=float)
    probs = np.array([[0.1, 0.6], [0.9, 0.4], [0.2, 0.5], [0.8, 0.7]])
    rows = report_rows(per_class_auc(targets, probs, ("A", "B")), targets, ("A", "B"))
    assert [(r["pathology"], r["status"]) for r in rows[:2]] == [("A", "Excellent"),
                                                                 ("B", "Challenging")]
