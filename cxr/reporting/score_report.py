"""score.py's tables and documents, rendered from the numbers scoring.py computes.

    score.md    the report card (evaluate.py's, report.py), the readers against the ROC and PR
                curves, the paired comparisons, the leaderboard, the labeler table, the figures
    score.csv   one row per label: the report card, the readers below each curve
    the same tables printed on the terminal
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.evaluation.metrics import COMPETITION_LABELS
from cxr.reporting.evaluation_report import approximate_text, comparison_markdown, \
    comparison_text, intervals_text, left_out_text, report_card_markdown, report_card_text, \
    report_rows, subgroup_line, subgroup_markdown
from cxr.reporting.tables import interval_text, markdown_table, number_text, text_table


def described(result: dict) -> str:
    unit = "studies" if result["unit"] == "study" else "images"
    skipped = result["skipped"]
    skip = (f"; skipped (--unmatched skip): {skipped['predictions_only']} only in the "
            f"predictions, {skipped['reference_only']} only in the labels"
            if any(skipped.values()) else "")
    return (f"{result['n_rows']} {unit} ({result['n_patients']} patients) of "
            f"{ensemble_name(result)}{skip}. Reference standard: {result['reference']}.")


def bootstrap_text(result: dict) -> str:
    boot = result["bootstrap"]
    return (f"{intervals_text(result['intervals'])} A reader's sensitivity, specificity and "
            "precision: Wilson's interval over the patients' clusters. The model's curves at a "
            f"reader's point, the gains and the counts below the curves: {boot['resamples']} "
            f"patient bootstrap resamples (seed {boot['seed']}), stratified by the label's "
            "positive patients, percentile intervals (approximate: their coverage is not "
            "simulated).")


# ---- readers ----------------------------------------------------------------------------------

def reader_cells(label: str, name: str, point: dict) -> list[str]:
    return [label, name, number_text(point["sensitivity"], 3),
            interval_text(*point["sensitivity_ci"]), number_text(point["specificity"], 3),
            interval_text(*point["specificity_ci"]), number_text(point["model_sensitivity"], 3),
            interval_text(*point["model_sensitivity_ci"]),
            number_text(point["sensitivity_gain"], 3, signed=True),
            interval_text(*point["sensitivity_gain_ci"], signed=True),
            "yes" if point["below_curve"] else "no"]


def reader_pr_cells(label: str, name: str, point: dict) -> list[str]:
    return [label, name, number_text(point["sensitivity"], 3),
            number_text(point["precision"], 3), interval_text(*point["precision_ci"]),
            number_text(point["model_precision"], 3),
            interval_text(*point["model_precision_ci"]),
            number_text(point["precision_gain"], 3, signed=True),
            interval_text(*point["precision_gain_ci"], signed=True),
            "yes" if point["below_pr_curve"] else "no"]


READER_HEADER = ["Pathology", "Reader", "Sens", "CI", "Spec", "CI", "Model sens at spec", "CI",
                 "Model - reader", "CI", "Below curve"]
READER_PR_HEADER = ["Pathology", "Reader", "Recall", "Precision", "CI",
                    "Model prec at recall", "CI", "Model - reader", "CI", "Below PR curve"]


def reader_rows(comparisons: dict, cells=reader_cells) -> list[list[str]]:
    return [cells(label, name, point) for label, comparison in comparisons.items()
            for name, point in comparison["readers"].items()]


CURVE_NAMES = {"below_curve": "Readers below ROC curve",
               "below_pr_curve": "Readers below PR curve"}


def below_header(n_readers: int, key: str = "below_curve") -> list[str]:
    return ["Pathology", CURVE_NAMES[key], "CI", *(f"P({k})" for k in range(n_readers + 1))]


def below_cells(label: str, comparison: dict, n_readers: int, key: str = "below_curve"
                ) -> list[str]:
    if comparison.get(key) is None:  # the note, the other cells blank
        return [label, comparison.get("note", "n/a"), *[""] * (n_readers + 2)]
    distribution = comparison.get(f"{key}_distribution", {})
    ci = comparison.get(f"{key}_ci", [None, None])
    return [label, f"{comparison[key]} of {len(comparison['readers'])}",
            "n/a" if ci[0] is None else f"[{ci[0]:.0f}, {ci[1]:.0f}]",
            *(number_text(distribution.get(str(k)), 3) for k in range(n_readers + 1))]


def below_rows(comparisons: dict, key: str = "below_curve"
               ) -> tuple[list[str], list[list[str]]]:
    n = max((len(c["readers"]) for c in comparisons.values()), default=0)
    return below_header(n, key), [below_cells(label, c, n, key)
                                  for label, c in comparisons.items()]


P_NOTE = ("P(k) is the bootstrap distribution of the number of readers below the curve "
          "(resampling patients): the share of resamples in which k readers are below it, not "
          "a posterior probability or a p-value.")
READERS_NOTE = ("Compared in counts (true and false positives), so a reader on a point of the "
                "curve is on it, not below. ROC: a reader is below the curve when the model's ROC "
                "curve (its thresholds' points joined by straight lines; at a vertical step its "
                "top) reaches more true positives at the reader's false positives, i.e. a higher "
                "sensitivity at the reader's specificity. PR: a reader is below the curve when "
                "some threshold of the model has at least the reader's recall and a higher "
                "precision (the model's precision at recall r: the highest precision at a recall "
                "of r or more). " + P_NOTE)


# ---- other models -------------------------------------------------------------------------------

def leaderboard_header() -> list[str]:
    return ["Rank", "Model", "Competition-5 AUC", "CI", *COMPETITION_LABELS, "Mean AUC", "n"]


def leaderboard_cells(rank: int, row: dict) -> list[str]:
    competition = number_text(row["competition5_auc"])
    if row["competition5_auc"] is not None and row["competition5_classes"] < 5:
        competition += f" ({row['competition5_classes']} of 5)"
    return [str(rank), row["model"], competition, interval_text(*row["competition5_ci"]),
            *(number_text(row["auc"].get(label)) for label in COMPETITION_LABELS),
            number_text(row["mean_auc"]), str(row["n"])]


def leaderboard_rows(result: dict) -> list[list[str]]:
    return [leaderboard_cells(rank, row) for rank, row in enumerate(result["leaderboard"], 1)]


def compare_description(path: str, result: dict) -> list[str]:
    unit = "studies" if result["unit"] == "study" else "images"
    return [f"AUC of B - A on the {result['compare_n'][path]} {unit} and the labels both cover, "
            "paired intervals (cluster-robust DeLong over the patients)",
            f"A = {path}", f"B = {ensemble_name(result)}"]


def ensemble_name(result: dict) -> str:
    """The predictions scored: the file, or "the ensemble of A.csv, B.csv (mean probability)"."""
    ensemble = result.get("ensemble")
    if ensemble is None:
        return result["predictions"]
    return f"the ensemble of {', '.join(ensemble['members'])} (mean of their probabilities)"


# ---- labelers -----------------------------------------------------------------------------------

LABELER_HEADER = ["Pathology", "-1: positive", "share", "CI", "blank: positive", "share",
                  "1: positive", "share", "0 or blank: positive", "share", "Suggested policy"]


def share_cells(entry: dict, with_ci: bool = False) -> list[str]:
    cells = [f"{entry['positive']}/{entry['studies']}", number_text(entry["share"], 2)]
    return cells + [interval_text(*entry["ci"])] if with_ci else cells


def labeler_cells(row: dict) -> list[str]:
    return [row["label"], *share_cells(row["uncertain"], with_ci=True),
            *share_cells(row["blank"]), *share_cells(row["positive"]),
            *share_cells(row["not_positive"]), row["suggested_policy"]]


LABELER_NOTE = ("k/n: of the n studies the labeler labelled uncertain (-1), left blank, "
                "positive (1), or negative or blank (what training calls 0), the k the reference "
                "standard calls positive; the share with its Wilson interval for -1. These are "
                "test-set studies: a policy chosen from them must be judged on other data (the "
                "val split, ablate.py).")


# ---- the documents -----------------------------------------------------------------------------

MAX_PRINTED_READER_ROWS = 20  # more readers x labels: the terminal shows the counts, score.md all


def print_score(result: dict) -> None:
    card = result["report_card"]
    print(f"\nReport card: {described(result)}")
    print(report_card_text(report_rows(card), result["bootstrap"]["level"], study_column=False))
    for text in (left_out_text(card), approximate_text(report_rows(card)),
                 subgroup_line(result)):
        if text:
            print(text)
    comparisons = result["readers_by_label"]
    if comparisons:
        print("\nReaders against the model's ROC curve")
        rows = reader_rows(comparisons)
        if len(rows) <= MAX_PRINTED_READER_ROWS:
            print(text_table(READER_HEADER, rows, left=(0, 1, 10)))
        print(text_table(*below_rows(comparisons)))
        print("\nReaders against the model's precision-recall curve")
        if len(rows) <= MAX_PRINTED_READER_ROWS:
            print(text_table(READER_PR_HEADER, reader_rows(comparisons, reader_pr_cells),
                             left=(0, 1, 9)))
        print(text_table(*below_rows(comparisons, "below_pr_curve")))
        print(P_NOTE)
    level = result["bootstrap"]["level"]
    for path, rows in result["compare_rows"].items():
        print("\n" + "\n  ".join(compare_description(path, result)))
        print(comparison_text(rows, level))
    if len(result["leaderboard"]) > 1:
        print("\nLeaderboard (by the competition-five mean AUC)")
        print(text_table(leaderboard_header(), leaderboard_rows(result), left=(1,)))
    print_labelers(result.get("labeler", {}))


def print_labelers(labelers: dict) -> None:
    for name, entry in labelers.items():
        print(f"\nLabeler {name} ({entry['n']} studies): of the studies it labelled -1, blank, "
              "1, 0 or blank, those positive in the reference standard")
        print(text_table(LABELER_HEADER, [labeler_cells(row) for row in entry["rows"]],
                         left=(0, 10)))


def markdown_document(result: dict, plots: dict[str, str]) -> str:
    card = result.get("report_card")
    if card is None:  # the labeler table alone
        lines = [f"# Labelers against {result['labels_file']}", ""]
    else:
        level = result["bootstrap"]["level"]
        title = "an ensemble" if "ensemble" in result else Path(result["predictions"]).name
        lines = [f"# Score: {title}", "", described(result), "",
                 bootstrap_text(result), ""]
    if card:
        lines += ["## Report card", "", report_card_markdown(report_rows(card), level,
                                                             study_column=False), "",
                  left_out_text(card), "", approximate_text(report_rows(card)), ""]
    comparisons = result.get("readers_by_label", {})
    if comparisons:
        lines += ["## Readers against the model's ROC and precision-recall curves", "",
                  READERS_NOTE, "", markdown_table(*below_rows(comparisons)), "",
                  markdown_table(*below_rows(comparisons, "below_pr_curve")), "",
                  "### ROC curve", "",
                  markdown_table(READER_HEADER, reader_rows(comparisons), left=(0, 1, 10)), "",
                  "### Precision-recall curve", "",
                  markdown_table(READER_PR_HEADER, reader_rows(comparisons, reader_pr_cells),
                                 left=(0, 1, 9)), ""]
    lines += subgroup_markdown(result, plots.get("subgroups"))
    for path, rows in result.get("compare_rows", {}).items():
        description = compare_description(path, result)
        lines += [f"## Compared with {Path(path).name}", "", description[0], "",
                  *(f"- {line}" for line in description[1:]), "",
                  comparison_markdown(rows, level), ""]
    if len(result.get("leaderboard", [])) > 1:
        lines += ["## Leaderboard", "", "Every model scored, by the competition-five mean AUC "
                  "(each on the studies it shares with the predictions).", "",
                  markdown_table(leaderboard_header(), leaderboard_rows(result), left=(1,)), ""]
    for name, entry in result.get("labeler", {}).items():
        lines += [f"## Labeler {name}: uncertain and blank labels", "", LABELER_NOTE, "",
                  markdown_table(LABELER_HEADER, [labeler_cells(row) for row in entry["rows"]],
                                 left=(0, 10)), ""]
    lines += [f"![{kind.upper()} curves]({name})" for kind, name in plots.items()
              if kind != "subgroups"]  # the forest plot sits in the subgroup section
    text = "\n".join(lines)
    while "\n\n\n" in text:  # an empty note leaves no gap
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def csv_rows(result: dict) -> list[dict]:
    """score.csv: one row per label (report card, readers below the ROC and the PR curve), then
    the means."""
    rows = []
    below = result.get("radiologists_below_curve", {})
    below_pr = result.get("radiologists_below_pr_curve", {})
    for row in report_rows(result["report_card"]):
        label = row["pathology"]
        rows.append({**{k: v for k, v in row.items() if k != "study_auc"},
                     "readers_below_curve": below.get(label),
                     "readers_below_pr_curve": below_pr.get(label)})
    return rows


def write_documents(result: dict, plots: dict[str, str], out_dir: Path) -> None:
    write_text_atomic(json.dumps({**result, "plots": plots}, indent=2) + "\n",
                      out_dir / "score.json")
    write_text_atomic(markdown_document(result, plots), out_dir / "score.md")
    if result.get("report_card") is not None:
        table = pd.DataFrame(csv_rows(result)).astype({"positives": "Int64",
                                                        "readers_below_curve": "Int64",
                                                        "readers_below_pr_curve": "Int64"})
        write_csv_atomic(table, out_dir / "score.csv")
