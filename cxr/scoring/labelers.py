"""What a report labeler's uncertain and blank labels turn out to be, per label.

CheXpert trains on labels a report labeler extracted: 1, 0, -1 (the report hedges: "may
represent", "cannot exclude") or blank (the report does not mention the finding). The test set
was labelled from the images by radiologists, and its studies were also run through the labelers,
so for each label the share of studies the labeler called uncertain (or left blank) that the
radiologists call positive is measured directly. Set beside the labeler's positives and its
negatives (with blanks), it says which class each label's -1s resemble: U-Ones when they are
positive about as often as the labeler's positives, U-Zeros when as rarely as its negatives,
U-Ignore (masked) when in between.

These are test-set studies (500 in CheXpert's): a policy chosen from them has been chosen on the
test set, and its benefit must be measured on other data (the val split, ablate.py).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from cxr.data.labels import NEGATIVE, POSITIVE, UNCERTAIN

# The labeler's values, in the table's order, with the words the report uses.
VALUES = (("uncertain", UNCERTAIN), ("blank", np.nan), ("positive", POSITIVE),
          ("negative", NEGATIVE))
MIN_STUDIES = 5  # fewer uncertain studies than this: too few to suggest a policy


def positive_share(reference: np.ndarray, chosen: np.ndarray, level: float) -> dict:
    """Of the studies `chosen`, how many the reference calls positive, with a Wilson interval
    (scipy's binomtest; studies of CheXpert's test set are one per patient, so independent)."""
    observed = chosen & ~np.isnan(reference)
    n, k = int(observed.sum()), int((reference[observed] > 0.5).sum())
    if n == 0:
        return {"studies": 0, "positive": 0, "share": None, "ci": [None, None]}
    interval = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return {"studies": n, "positive": k, "share": k / n,
            "ci": [float(interval.low), float(interval.high)]}


def suggested_policy(row: dict) -> str:
    """The policy the uncertain studies' share of positives suggests, against the two classes a
    binary policy puts them in: the labeler's positives (U-Ones) or its negatives and blanks
    (U-Zeros, and what every policy trains blanks as). U-Ones when the share's interval lies
    above the midpoint of those two classes' shares, U-Zeros when below it, U-Ignore (masked)
    when it straddles the midpoint or there is too little to tell."""
    uncertain, positive, negative = row["uncertain"], row["positive"], row["not_positive"]
    if uncertain["studies"] < MIN_STUDIES:
        return f"U-Ignore (fewer than {MIN_STUDIES} uncertain studies)"
    if positive["share"] is None or negative["share"] is None \
            or positive["share"] <= negative["share"]:
        return "U-Ignore (the labeler's positives are no likelier positive than its negatives)"
    midpoint = (positive["share"] + negative["share"]) / 2
    low, high = uncertain["ci"]
    if low > midpoint:
        return "U-Ones"
    if high < midpoint:
        return "U-Zeros"
    return "U-Ignore (mixed)"


def labeler_table(labeler: np.ndarray, reference: np.ndarray, labels: tuple[str, ...],
                  level: float) -> list[dict]:
    """One row per label: for each labeler value, its studies and the share the reference calls
    positive; and the policy the uncertain share suggests. Both arrays (studies, labels) are
    aligned; the labeler's blank is NaN, the reference's masked labels are NaN."""
    rows = []
    for column, label in enumerate(labels):
        values, truth = labeler[:, column], reference[:, column]
        row = {"label": label}
        for name, code in VALUES:
            chosen = np.isnan(values) if np.isnan(code) else values == code
            row[name] = positive_share(truth, chosen, level)
        row["not_positive"] = positive_share(truth, np.isnan(values) | (values == NEGATIVE),
                                             level)  # negative or blank: trained as 0
        row["suggested_policy"] = suggested_policy(row)
        rows.append(row)
    return rows
