"""score.py's tables and documents, rendered from the report cxr/scoring/results.py computes
(a ScoreReport, cxr/scoring/report.py; a LabelerReport for the labeler table alone).

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
from cxr.reporting.underdiagnosis_report import underdiagnosis_line, underdiagnosis_markdown
from cxr.scoring.report import LabelerReport, LabelerResult, LeaderboardRow, ScoreReport


def unit_words(report: ScoreReport) -> str:
    return "studies" if report.per_study else "images"


def described(report: ScoreReport) -> str:
    skipped = report.skipped
    skip = (f"; skipped (--unmatched skip): {skipped['predictions_only']} only in the "
            f"predictions, {skipped['reference_only']} only in the labels"
            if any(skipped.values()) else "")
    return (f"{report.n_rows} {unit_words(report)} ({report.n_patients} patients) of "
            f"{ensemble_name(report)}{skip}. Reference standard: {report.reference}.")


def bootstrap_text(report: ScoreReport) -> str:
    boot = report.bootstrap
    return (f"{intervals_text(report.intervals)} A reader's sensitivity, specificity and "
            "precision: Wilson's interval over the patients' clusters. The model's curves at a "
            f"reader's point, the gains and the counts below the curves: {boot.resamples} "
            f"patient bootstrap resamples (seed {boot.seed}), stratified by the label's "
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


def leaderboard_cells(rank: int, row: LeaderboardRow) -> list[str]:
    competition = number_text(row.competition5_auc)
    if row.competition5_auc is not None and row.competition5_classes < 5:
        competition += f" ({row.competition5_classes} of 5)"
    return [str(rank), row.model, competition, interval_text(*row.competition5_ci),
            *(number_text(row.auc.get(label)) for label in COMPETITION_LABELS),
            number_text(row.mean_auc), str(row.n)]


def leaderboard_rows(report: ScoreReport) -> list[list[str]]:
    return [leaderboard_cells(rank, row) for rank, row in enumerate(report.leaderboard, 1)]


def compare_description(path: str, report: ScoreReport) -> list[str]:
    return [f"AUC of B - A on the {report.compare_n[path]} {unit_words(report)} and the labels "
            "both cover, paired intervals (cluster-robust DeLong over the patients)",
            f"A = {path}", f"B = {ensemble_name(report)}"]


def ensemble_name(report: ScoreReport) -> str:
    """The predictions scored: the file, or "the ensemble of A.csv, B.csv (mean probability)"."""
    if report.ensemble is None:
        return report.predictions
    return (f"the ensemble of {', '.join(report.ensemble.members)} (mean of their "
            "probabilities)")


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


def print_score(report: ScoreReport) -> None:
    card, level = report.report_card, report.bootstrap.level
    print(f"\nReport card: {described(report)}")
    print(report_card_text(report_rows(card), level, study_column=False))
    for text in (left_out_text(card), approximate_text(report_rows(card)),
                 subgroup_line(report.subgroups, report.subgroup_comparisons),
                 underdiagnosis_line(report.underdiagnosis, report.underdiagnosis_comparisons,
                                     "studies" if report.per_study else "images")):
        if text:
            print(text)
    print_readers(report.readers_by_label)
    for path, rows in report.compare_rows.items():
        print("\n" + "\n  ".join(compare_description(path, report)))
        print(comparison_text(rows, level))
    if len(report.leaderboard) > 1:
        print("\nLeaderboard (by the competition-five mean AUC)")
        print(text_table(leaderboard_header(), leaderboard_rows(report), left=(1,)))
    print_labelers(report.labeler or {})


def print_readers(comparisons: dict) -> None:
    """The readers against the ROC and the PR curve: each reader's point (unless too many), the
    counts below the curves."""
    if not comparisons:
        return
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


def print_labelers(labelers: dict[str, LabelerResult]) -> None:
    for name, entry in labelers.items():
        print(f"\nLabeler {name} ({entry.n} studies): of the studies it labelled -1, blank, "
              "1, 0 or blank, those positive in the reference standard")
        print(text_table(LABELER_HEADER, [labeler_cells(row) for row in entry.rows],
                         left=(0, 10)))


def readers_markdown(comparisons: dict) -> list[str]:
    if not comparisons:
        return []
    return ["## Readers against the model's ROC and precision-recall curves", "",
            READERS_NOTE, "", markdown_table(*below_rows(comparisons)), "",
            markdown_table(*below_rows(comparisons, "below_pr_curve")), "",
            "### ROC curve", "",
            markdown_table(READER_HEADER, reader_rows(comparisons), left=(0, 1, 10)), "",
            "### Precision-recall curve", "",
            markdown_table(READER_PR_HEADER, reader_rows(comparisons, reader_pr_cells),
                           left=(0, 1, 9)), ""]


def comparisons_markdown(report: ScoreReport) -> list[str]:
    """Each --compare file (and an ensemble's members) against the predictions, paired."""
    lines = []
    for path, rows in report.compare_rows.items():
        description = compare_description(path, report)
        lines += [f"## Compared with {Path(path).name}", "", description[0], "",
                  *(f"- {line}" for line in description[1:]), "",
                  comparison_markdown(rows, report.bootstrap.level), ""]
    return lines


def leaderboard_markdown(report: ScoreReport) -> list[str]:
    if len(report.leaderboard) <= 1:
        return []
    return ["## Leaderboard", "", "Every model scored, by the competition-five mean AUC "
            "(each on the studies it shares with the predictions).", "",
            markdown_table(leaderboard_header(), leaderboard_rows(report), left=(1,)), ""]


def score_markdown(report: ScoreReport, plots: dict[str, str]) -> list[str]:
    """score.md's sections of the predictions: the report card, the readers, the subgroups,
    the comparisons, the leaderboard."""
    card = report.report_card
    title = "an ensemble" if report.ensemble else Path(report.predictions).name
    return [f"# Score: {title}", "", described(report), "", bootstrap_text(report), "",
            "## Report card", "", report_card_markdown(report_rows(card), report.bootstrap.level,
                                                       study_column=False), "",
            left_out_text(card), "", approximate_text(report_rows(card)), "",
            *readers_markdown(report.readers_by_label),
            *subgroup_markdown(report.subgroups, report.subgroup_comparisons,
                               plots.get("subgroups")),
            *underdiagnosis_markdown(report.underdiagnosis, report.underdiagnosis_comparisons,
                                     report.false_negative_rates,
                                     report.false_negative_comparisons,
                                     "studies" if report.per_study else "images"),
            *comparisons_markdown(report), *leaderboard_markdown(report)]


def labelers_markdown(labelers: dict[str, LabelerResult]) -> list[str]:
    lines = []
    for name, entry in labelers.items():
        lines += [f"## Labeler {name}: uncertain and blank labels", "", LABELER_NOTE, "",
                  markdown_table(LABELER_HEADER, [labeler_cells(row) for row in entry.rows],
                                 left=(0, 10)), ""]
    return lines


def markdown_document(report: ScoreReport | LabelerReport, plots: dict[str, str]) -> str:
    lines = (score_markdown(report, plots) if isinstance(report, ScoreReport)
             else [f"# Labelers against {report.labels_file}", ""])
    lines += labelers_markdown(report.labeler or {})
    lines += [f"![{kind.upper()} curves]({name})" for kind, name in plots.items()
              if kind != "subgroups"]  # the forest plot sits in the subgroup section
    text = "\n".join(lines)
    while "\n\n\n" in text:  # an empty note leaves no gap
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def csv_rows(report: ScoreReport) -> list[dict]:
    """score.csv: one row per label (report card, readers below the ROC and the PR curve), then
    the means."""
    rows = []
    for row in report_rows(report.report_card):
        label = row["pathology"]
        rows.append({**{k: v for k, v in row.items() if k != "study_auc"},
                     "readers_below_curve": report.radiologists_below_curve.get(label),
                     "readers_below_pr_curve": report.radiologists_below_pr_curve.get(label)})
    return rows


def write_documents(report: ScoreReport | LabelerReport, plots: dict[str, str], out_dir: Path
                    ) -> None:
    write_text_atomic(json.dumps({**report.as_dict(), "plots": plots}, indent=2) + "\n",
                      out_dir / "score.json")
    write_text_atomic(markdown_document(report, plots), out_dir / "score.md")
    if isinstance(report, ScoreReport):
        table = pd.DataFrame(csv_rows(report)).astype({"positives": "Int64",
                                                        "readers_below_curve": "Int64",
                                                        "readers_below_pr_curve": "Int64"})
        write_csv_atomic(table, out_dir / "score.csv")
