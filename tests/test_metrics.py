"""Per-class AUC and the report card: undefined classes are n/a, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.evaluation.metrics import mean_auc, per_class_auc, per_class_auprc, summarise
from cxr.evaluation.report import LevelSummary
from cxr.reporting.evaluation_report import report_card_markdown, report_card_text, report_rows

LABELS = ("A", "B", "C")


def test_auc_matches_sklearn_and_single_valued_classes_are_na():
    targets = np.array([[0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=float)
    probs = np.array([[0.1, 0.5, 0.2], [0.9, 0.1, 0.3], [0.4, 0.2, 0.9], [0.3, 0.3, 0.1]])
    aucs = per_class_auc(targets, probs, LABELS)
    assert aucs["A"] == pytest.approx(roc_auc_score(targets[:, 0], probs[:, 0])) == 0.75
    assert aucs["B"] is None and aucs["C"] is None
    assert mean_auc(aucs) == 0.75  # n/a classes are left out of the mean
    assert mean_auc({"A": None}) is None
    auprcs = per_class_auprc(targets, probs, LABELS)
    assert auprcs["A"] == pytest.approx(average_precision_score(targets[:, 0], probs[:, 0]))
    assert auprcs["B"] is None

    summary = summarise(probs, targets, LABELS, np.arange(4), 0.95, min_positives=1)
    rows = report_rows(LevelSummary.from_dict(summary))
    assert [r["pathology"] for r in rows] == ["A", "B", "C", "AVERAGE (1 of 3 classes)"]
    assert rows[1]["status"] == "n/a: every image in this split is negative"
    assert rows[2]["status"] == "n/a: every image in this split is positive"
    assert rows[0]["prevalence"] == 0.5 and rows[0]["positives"] == 2
    text, markdown = report_card_text(rows), report_card_markdown(rows)
    assert "0.7500" in text and "n/a" in text
    assert "| **AVERAGE (1 of 3 classes)** | **0.7500** | [" in markdown  # 2 positives:
    assert rows[0]["ci_note"].startswith("approximate") and "*" in text  # approximate, marked
    assert "Study AUC" in text
    assert "Study AUC" not in report_card_markdown(rows, study_column=False)


def test_rows_are_sorted_best_first_with_status_words():
    targets = np.array([[0, 0], [1, 1], [0, 0], [1, 1]], dtype=float)
    probs = np.array([[0.1, 0.6], [0.9, 0.4], [0.2, 0.5], [0.8, 0.7]])
    rows = report_rows(LevelSummary.from_dict(
        summarise(probs, targets, ("A", "B"), np.arange(4), 0.95, min_positives=1)))
    assert [(r["pathology"], r["status"]) for r in rows[:2]] == [("A", "Excellent"),
                                                                 ("B", "Challenging")]
    few = report_rows(LevelSummary.from_dict(
        summarise(probs, targets, ("A", "B"), np.arange(4), 0.95)))  # min_positives 10
    assert few[0]["status"] == "Excellent; not in the means: 2 positive(s), fewer than 10"
    assert few[-1]["pathology"] == "AVERAGE (0 of 2 classes)" and few[-1]["auc"] is None
