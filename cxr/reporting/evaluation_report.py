"""Every report table and document of evaluate.py, rendered from the numbers others compute.

    eval_<split>.md     report card, study level, operating points, calibration, linked figures
    eval_<split>.csv    one row per class (image and study AUC, ECE, both operating points), means
    eval_<split>.json   every number of the report (EvaluationReport.as_dict), plus the figure
                        names
    the report card printed for each split, and the tables of a paired comparison (--compare)

cxr/evaluation computes (metrics.py, compare.py, predictions.py: an EvaluationReport,
cxr/evaluation/report.py); this module chooses the rows, columns and words, and tables.py lays
the cells out as text or Markdown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.data.adapters import Adapted, counts_text
from cxr.errors import PipelineError
from cxr.evaluation.metrics import MEANS
from cxr.evaluation.report import CalibrationSummary, EnsembleMember, EnsembleSummary, \
    EvaluationReport, InputGateSummary, LevelSummary, OperatingPoint, Recalibration
from cxr.reporting.tables import interval_text, markdown_table, number_text, text_table
from cxr.reporting.underdiagnosis_report import underdiagnosis_line, underdiagnosis_markdown

if TYPE_CHECKING:
    from config import Config


# ---- the report card ----------------------------------------------------------------------------

REPORT_CARD_HEADER = ("Pathology", "AUC", "95% CI", "AUPRC", "Prev", "Pos", "Study AUC", "Status")
STUDY_COLUMN = REPORT_CARD_HEADER.index("Study AUC")


def report_rows(image: LevelSummary, study: LevelSummary | None = None) -> list[dict]:
    """Report card rows: classes by AUC (best first), then the n/a ones, then the means.

    `image` and `study` are the report cards of the images and of the studies.
    """
    rows = []
    left_out = image.left_out
    for label, values in image.classes.items():
        note = values.status
        if values.auc is not None and label in left_out:
            note += f"; not in the means: {left_out[label]}"
        rows.append({"pathology": label, "auc": values.auc, "ci_low": values.ci.low,
                     "ci_high": values.ci.high, "ci_note": values.ci_note,
                     "auprc": values.auprc, "prevalence": values.prevalence,
                     "positives": values.positives,
                     "study_auc": study.classes[label].auc if study else None, "status": note})
    rows.sort(key=lambda row: -row["auc"] if row["auc"] is not None else math.inf)
    for key, mean in image.means.items():
        rows.append({"pathology": mean.title, "auc": mean.auc, "ci_low": mean.ci.low,
                     "ci_high": mean.ci.high, "ci_note": mean.ci_note,
                     "auprc": mean.auprc, "prevalence": mean.prevalence, "positives": None,
                     "study_auc": study.means[key].auc if study else None,
                     "status": "" if is_approximate(mean.ci_note) else mean.ci_note})
    return rows


APPROXIMATE = "*"  # after an interval that is approximate (approximate_text says why)


def is_approximate(note: str) -> bool:
    return note.startswith("approximate")


def marked_interval(low: float | None, high: float | None, note: str, signed: bool = False
                    ) -> str:
    """interval_text, with APPROXIMATE after it when its note says it is approximate."""
    return interval_text(low, high, signed) + (APPROXIMATE if is_approximate(note) else "")


def approximate_text(rows: list[dict]) -> str:
    """The line under a report card: which intervals are approximate, and why."""
    notes = [f"{row['pathology']} ({row['ci_note'].removeprefix('approximate: ')})"
             for row in rows if is_approximate(row.get("ci_note", ""))]
    return (f"{APPROXIMATE} approximate interval (its coverage is below the nominal level in "
            "simulation, benchmarks/bench_coverage.py): " + "; ".join(notes) + ".") if notes else ""


def _without_study(cells: list[str], study_column: bool) -> list[str]:
    return cells if study_column else cells[:STUDY_COLUMN] + cells[STUDY_COLUMN + 1:]


def report_card_header(ci_level: float, study_column: bool) -> list[str]:
    header = list(REPORT_CARD_HEADER)
    header[2] = f"{ci_level:.0%} CI"
    return _without_study(header, study_column)


def report_card_cells(row: dict, study_column: bool) -> list[str]:
    positives = "" if row["positives"] is None else str(row["positives"])
    cells = [row["pathology"], number_text(row["auc"]),
             marked_interval(row["ci_low"], row["ci_high"], row["ci_note"]),
             number_text(row["auprc"]),
             number_text(row["prevalence"], 3), positives, number_text(row["study_auc"]),
             row["status"]]
    return _without_study(cells, study_column)


def report_card_text(rows: list[dict], ci_level: float = 0.95, study_column: bool = True
                     ) -> str:
    """Plain-text table for the terminal; a rule separates the classes from the means."""
    header = report_card_header(ci_level, study_column)
    means = [i for i, row in enumerate(rows) if row["positives"] is None][:1]
    # rule_extra: the rules have always reached 8 characters into the Status column
    return text_table(header, [report_card_cells(row, study_column) for row in rows],
                      left=(0, len(header) - 1), rules=means, rule_extra=2)


def report_card_markdown(rows: list[dict], ci_level: float = 0.95, study_column: bool = True
                         ) -> str:
    """The report card as Markdown, the means' names and AUCs in bold."""
    header = report_card_header(ci_level, study_column)
    cells = []
    for row in rows:
        line = report_card_cells(row, study_column)
        if row["positives"] is None:  # a mean
            line[0], line[1] = f"**{line[0]}**", f"**{line[1]}**"
        cells.append(line)
    return markdown_table(header, cells, left=(0, len(header) - 1))


# ---- operating points and calibration -----------------------------------------------------------

def operating_points_markdown(points: list[OperatingPoint], target: float, source: str = "val"
                              ) -> str:
    """`source`: where the thresholds were chosen: "val", or "site" (a site's fitting half)."""
    names = {"youden": "Youden", "target_sensitivity": f"sensitivity >= {target:g}"}
    header = ["Pathology", f"Threshold ({source})", "Method", "Sensitivity", "Specificity", "PPV",
              "NPV", "F1"]
    cells = []
    for point in sorted(points, key=lambda p: p.pathology):
        line = [point.pathology, number_text(point.threshold), names[point.method]]
        if point.threshold is None:
            cells.append([*line, "n/a: one label value on val"])  # the rest left blank
            continue
        rates = [f"{number_text(rate, 3)} {interval_text(*ci)}"
                 for rate, ci in ((point.sensitivity, point.sensitivity_ci),
                                  (point.specificity, point.specificity_ci))]
        cells.append([*line, *rates,
                      *(number_text(value, 3) for value in (point.ppv, point.npv, point.f1))])
    return markdown_table(header, cells, left=(0, 2))


def calibration_markdown(calibration: CalibrationSummary) -> str:
    """Per class: ECE after the calibration map and before it, and the map (scale, bias)."""
    before, parameters = calibration.ece_uncalibrated, calibration.parameters or {}
    cells = []
    for label, ece in calibration.ece.items():
        fitted = parameters.get(label)
        cells.append([label, number_text(ece), number_text(before[label]),
                      *([number_text(fitted["scale"], 3), number_text(fitted["bias"], 3, True)]
                        if fitted else ["n/a: one label value on val", ""])])
    cells.append(["**mean**", f"**{number_text(calibration.mean_ece)}**",
                  number_text(calibration.mean_ece_uncalibrated)])  # scale, bias blank
    return markdown_table(["Pathology", "ECE", "ECE before calibration", "scale", "bias"], cells)


def calibration_text(calibration: CalibrationSummary) -> str:
    method = calibration.method
    if method == "none":
        return "Calibration: none (the model's probabilities, positive-weight offset removed)."
    fitted_on = "the val split" if calibration.fitted_on == "val" else calibration.fitted_on
    return (f"Calibration: {method} per class, fitted on {fitted_on} (uncertain labels masked); "
            "the positive-weight offset of training is removed before it.")


def left_out_text(summary: LevelSummary) -> str:
    """Which classes the means leave out, and why."""
    left_out = summary.left_out
    if not left_out:
        return ""
    return ("Left out of the means (a class needs both label values and at least min_positives "
            "positives and negatives): "
            + "; ".join(f"{label} ({reason})" for label, reason in left_out.items()) + ".")


def masked_text(result: EvaluationReport) -> str:
    not_labelled = result.not_labelled  # masked too, and said so elsewhere
    masked = {label: n for label, n in result.masked_uncertain.items()
              if n and label not in not_labelled}
    if not masked:
        return "No label of this split is uncertain."
    return ("Uncertain (-1) labels masked, not counted as positive or negative: "
            + ", ".join(f"{label} {n}" for label, n in masked.items()) + ".")


def study_unit_text(result: EvaluationReport) -> str:
    return ("views fused by the model" if result.per_study
            else f"{result.study.aggregation} over images")


def study_text(result: EvaluationReport) -> str:
    if result.per_study:
        return ("Study-mode model: each prediction is of a study, its views fused by the model, "
                "so the report card is already per study.")
    return f"Study AUC: a study's prediction is the {result.study.aggregation} over its images."


def title_of(result: EvaluationReport) -> str:
    """"test split", or "NIH ChestX-ray14, every image (external validation)"."""
    dataset = result.dataset
    if dataset is None:
        return f"{result.split} split"
    part = "every image" if dataset.split == "all" else f"its official {dataset.split} split"
    if result.recalibration is not None:  # evaluate.py --recalibrate: the scoring half only
        part += (f", the scoring half ({result.recalibration.n_score_patients} patients) "
                 "recalibrated for the site")
    return f"{dataset.title}, {part} (external validation)"


def reference_of(result: EvaluationReport) -> str:
    if result.dataset is None:
        return "the split's labels, uncertain (-1) masked"
    not_labelled = result.dataset.not_labelled
    return result.reference + (f"; not labelled by {result.dataset.title}, so n/a: "
                               f"{', '.join(not_labelled)}" if not_labelled else "")


def model_text(result: EvaluationReport) -> str:
    """"checkpoint `models/r/best.pth` (epoch 5)", or "an ensemble of 3 checkpoints (...)"."""
    ensemble = result.ensemble
    if ensemble is None:
        return f"checkpoint `{result.checkpoint}` (epoch {result.epoch})"
    return (f"an ensemble of {len(ensemble.members)} checkpoints (`{result.checkpoint}`; "
            f"{ensemble.combination}, {ensemble.calibration})")


def ensemble_header(level: float) -> list[str]:
    return ["Member", "Mean AUC", "Ensemble", f"Ensemble - member [paired {level:.0%} CI]",
            "Comp-5 AUC", "Ensemble", f"Ensemble - member [paired {level:.0%} CI]", "Verdict (mean)"]


def ensemble_cells(member: EnsembleMember) -> list[str]:
    cells = [member.checkpoint]
    for key in ("all", "competition"):
        mean = member.means.get(key)
        if mean is None:
            cells += ["n/a"] * 3
            continue
        cells += [number_text(mean.member), number_text(mean.ensemble),
                  f"{number_text(mean.difference, signed=True)} "
                  f"{interval_text(mean.ci_low, mean.ci_high, signed=True)}"]
    overall = member.means.get("all")
    return [*cells, overall.verdict if overall else "n/a"]


def ensemble_text(ensemble: EnsembleSummary, level: float) -> str:
    """The members beside the ensemble, for the terminal."""
    rows = [ensemble_cells(member) for member in ensemble.members]
    return "ensemble beside each member:\n" + text_table(ensemble_header(level), rows,
                                                          left=(0, 7))


def ensemble_markdown(result: EvaluationReport, level: float) -> list[str]:
    if result.ensemble is None:
        return []
    rows = [ensemble_cells(member) for member in result.ensemble.members]
    return [f"## The ensemble beside each member ({len(rows)} members)", "",
            markdown_table(ensemble_header(level), rows, left=(0, 7)), "",
            "Each member is scored on the same rows as the ensemble; a difference's interval is "
            "paired (the same resampled patients for both), so one that excludes 0 is unlikely "
            "to come from which patients are in the split. Per observation: `eval_"
            f"{result.split}.json`, `ensemble.members[].per_class`.", ""]


def intervals_text(methods: dict) -> str:
    """What the report's intervals are (intervals.interval_methods)."""
    return (f"Intervals: {methods['level']:.0%}, a patient's images taken as one cluster: "
            f"an AUC by {methods['auc']}; a mean of AUCs by {methods['mean']}; a difference by "
            f"{methods['difference']}; an AUC of 0 or 1 by {methods['auc_at_bound']}. Their "
            f"coverage is {methods['coverage']}; "
            f"those resting on fewer than {methods['approximate_below_patients']} positive or "
            f"negative patients are marked {APPROXIMATE}.")


def markdown_report(result: EvaluationReport, plots: dict[str, str], cfg: Config) -> str:
    calibration, study = result.calibration, result.study
    rows = report_rows(result.image, study)
    lines = [
        f"# Evaluation report: {title_of(result)}", "",
        f"{result.n_images} images, {result.n_studies} studies, {result.n_patients} "
        f"patients; {model_text(result)}.", "",
        f"Reference standard: {reference_of(result)}. {masked_text(result)}",
        "",
        f"{intervals_text(result.intervals)} {calibration_text(calibration)} "
        f"Test-time augmentation: {'on' if result.tta else 'off'}. " + study_text(result), "",
        f"## Report card ({'studies' if result.per_study else 'images'})", "",
        report_card_markdown(rows, cfg.ci_level), "",
        approximate_text(rows), "",
        left_out_text(result.image), "",
        *ensemble_markdown(result, cfg.ci_level),
        *recalibration_markdown(result, cfg),
        f"## Study level ({result.n_studies} studies, {study_unit_text(result)})", "",
        report_card_markdown(report_rows(study), cfg.ci_level, study_column=False), "",
        f"## Operating points (thresholds chosen on {thresholds_source(result)})", "",
        operating_points_markdown(result.operating_points, cfg.target_sensitivity,
                                  "val" if result.recalibration is None else "site"), "",
        f"## Calibration ({calibration.bins} bins)", "",
        calibration_markdown(calibration), "",
        f"![Reliability diagrams]({plots['reliability']})", "",
        *([] if result.input_gate is None else
          ["## Input gate", "", input_gate_text(result.input_gate, result.split), ""]),
        *subgroup_markdown(result.subgroups, result.subgroup_comparisons,
                           plots.get("subgroups")),
        *underdiagnosis_markdown(result.underdiagnosis, result.underdiagnosis_comparisons,
                                 result.false_negative_rates, result.false_negative_comparisons,
                                 "studies" if result.per_study else "images"),
        "## ROC and precision-recall curves", "",
        f"![ROC curves]({plots['roc']})", "",
        f"![Precision-recall curves]({plots['pr']})", ""]
    return "\n".join(lines)


def input_gate_text(gate: InputGateSummary, split: str) -> str:
    """One sentence: the share of the split's rows the input gate flags, with its interval."""
    share = f"{gate.rate:.1%} [{gate.ci.low:.1%}, {gate.ci.high:.1%}]"
    return (f"input gate: {gate.flagged} of {gate.n} {split} rows outside the training "
            f"distribution, {share} ({1 - gate.quantile:.0%} expected of films like val's); "
            f"{gate.method} distance on the model's features, threshold "
            f"{gate.threshold:.4g} = the {gate.quantile:.0%} quantile of val's held-out scores "
            f"({gate.n_fit} val films)")


def p_text(p: float | None) -> str:
    return "n/a" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def versus_rest_cells(values: dict) -> list[str]:
    """A subgroup cell's or mean's difference to the rest: the difference, its unadjusted paired
    interval, the p-value adjusted over the audit's family, the adjusted verdict."""
    return [number_text(values["difference"], signed=True),
            interval_text(*values["difference_ci"], signed=True), p_text(values["p_adjusted"]),
            values["verdict"]]


def subgroup_cells(subgroups: dict) -> list[list[str]]:
    """The scorable cells of the subgroup audit (subgroups.py): one row per stratum and label."""
    rows = []
    for audit, strata in subgroups.items():
        for stratum, entry in strata.items():
            for label, cell in entry["labels"].items():
                if cell["auc"] is None:
                    continue
                rows.append([audit, stratum, label, str(entry["n_images"]),
                             str(entry["n_patients"]), str(cell["positives"]),
                             number_text(cell["auc"]), marked_interval(*cell["ci"],
                                                                       cell["ci_note"]),
                             *versus_rest_cells(cell)])
    return rows


# What a stratum clearly below the rest suggests, for the shortcut checks.
SUBGROUP_HINTS = {
    ("Support Devices", "absent"): "a shortcut? the model may find the tubes and drains that "
                                   "come with this finding rather than the finding",
    ("Support Devices", "present"): "films with devices are harder: lines over the lungs, "
                                    "sicker patients",
    ("AP/PA", "PA"): "a shortcut? the model may read the portable AP projection of sicker "
                     "patients rather than the finding",
    ("AP/PA", "AP"): "portable AP films are harder: projection, sicker patients"}


def subgroup_mean_cells(subgroups: dict) -> list[list[str]]:
    """The scorable means of the subgroup audit: one row per stratum and mean (all classes, the
    competition five), the classes it averages in its title."""
    rows = []
    for audit, strata in subgroups.items():
        for stratum, entry in strata.items():
            for mean in entry.get("means", {}).values():
                if mean["auc"] is None:
                    continue
                rows.append([audit, stratum, mean["title"], str(entry["n_images"]),
                             str(entry["n_patients"]), number_text(mean["auc"]),
                             marked_interval(*mean["ci"], mean["ci_note"]),
                             *versus_rest_cells(mean)])
    return rows


def _lower_text(name: str, audit: str, stratum: str, values: dict) -> str:
    hint = SUBGROUP_HINTS.get((audit, stratum), "")
    return (f"{name} among {audit} {stratum}: AUC {values['auc']:.3f}, "
            f"{values['difference']:+.3f} against the rest" + (f" ({hint})" if hint else ""))


def subgroup_flags(subgroups: dict) -> list[str]:
    """Cells clearly below the rest of the split, with what a device or view stratum suggests;
    then the means clearly below it. A mean of one class is that class's cell, and a mean of the
    same classes as one already flagged says nothing new: neither is flagged again."""
    flags = []
    for audit, strata in subgroups.items():
        for stratum, entry in strata.items():
            for label, cell in entry["labels"].items():
                if cell["verdict"] == "lower in this subgroup":
                    flags.append(_lower_text(label, audit, stratum, cell))
            flagged = set()
            for mean in entry.get("means", {}).values():
                classes = tuple(mean["classes"])
                if mean["verdict"] == "lower in this subgroup" and len(classes) > 1 \
                        and classes not in flagged:
                    flagged.add(classes)
                    flags.append(_lower_text(f"the {mean['title']} mean", audit, stratum, mean))
    return flags


def multiplicity_text(family: dict | None) -> str:
    """How many comparisons the audit made (subgroups.Audit.multiplicity), and how the error
    rate is held."""
    if not family:
        return ""
    return (f"{family['comparisons']} comparisons (strata x labels and means; a two-stratum "
            f"audit's mirrored pair counted once); {family['method']} holds the chance of any "
            f"false 'lower' or 'higher' verdict in this audit at {family['family_wise_error_rate']:.0%}. "
            "The intervals are unadjusted 95 % intervals; the verdict and the flags follow the "
            "adjusted p-values.")


def subgroup_line(subgroups: dict, family: dict | None) -> str:
    """The terminal's line on the subgroup audit: its comparisons and what was flagged."""
    if not family:
        return ""
    flags = subgroup_flags(subgroups)
    return (f"subgroup audit: {family['comparisons']} comparisons, Holm-adjusted; "
            + (f"clearly lower: {'; '.join(flags)}" if flags else "no stratum clearly lower"))


def subgroup_markdown(subgroups: dict | None, family: dict | None = None,
                      figure: str | None = None) -> list[str]:
    """The subgroup section: per-label cells, the means by stratum, the flags; `subgroups` and
    `family` are subgroups.subgroup_table's table and multiplicity, `figure` the forest plot's
    file name (plots.forest_plot), linked when given."""
    if not subgroups:
        return []
    header = ["Audit", "Stratum", "Pathology", "Images", "Patients", "Pos", "AUC", "CI",
              "vs rest", "CI (paired)", "p (Holm)", "Verdict"]
    means = subgroup_mean_cells(subgroups)
    mean_header = ["Audit", "Stratum", "Mean", "Images", "Patients", "AUC", "CI", "vs rest",
                   "CI (paired)", "p (Holm)", "Verdict"]
    flags = subgroup_flags(subgroups)
    return ["## Subgroups", "",
            "AUC within each stratum and its difference to the rest of the split, paired over "
            "the patients (a patient with films on both sides counts on both); a cell needs at "
            "least min_positives positives and negatives on both sides (the others are left out "
            "here and n/a in the JSON). " + multiplicity_text(family), "",
            markdown_table(header, subgroup_cells(subgroups), left=(0, 1, 2, 11)), "",
            *(["### Means by subgroup", "",
               "The report card's means within each stratum, over the classes whose cell is "
               "scored both there and in the rest (their number in the name), and the "
               "difference to the same classes' mean in the rest, paired.", "",
               markdown_table(mean_header, means, left=(0, 1, 2, 10)), ""] if means else []),
            *([f"![Subgroup forest plot]({figure})", ""] if figure else []),
            *(["Clearly lower than the rest (after Holm's adjustment): " + "; ".join(flags) + "."]
              if flags else ["No stratum is clearly lower than the rest of the split after "
                             "Holm's adjustment."]), ""]


def point_cells(point: OperatingPoint) -> dict:
    """An operating point's columns of eval_<split>.csv, named after its method."""
    cells = {f"{point.method}_{key}": getattr(point, key)
             for key in ("threshold", "sensitivity", "specificity", "ppv", "npv", "f1")}
    for key in ("sensitivity", "specificity"):
        cells[f"{point.method}_{key}_ci_low"], cells[f"{point.method}_{key}_ci_high"] = \
            getattr(point, f"{key}_ci") or [None, None]
    return cells


def csv_rows(result: EvaluationReport) -> list[dict]:
    """One row per class (image level, study AUC, ECE, operating points), then the means."""
    rows = []
    points = {(point.pathology, point.method): point for point in result.operating_points}
    for label, values in result.image.classes.items():
        study = result.study.classes[label]
        row = {"pathology": label, "auc": values.auc, "ci_low": values.ci.low,
               "ci_high": values.ci.high, "auprc": values.auprc,
               "prevalence": values.prevalence, "positives": values.positives,
               "negatives": values.negatives, "masked": values.masked,
               "in_means": values.in_means,
               "study_auc": study.auc, "study_ci_low": study.ci.low,
               "study_ci_high": study.ci.high, "ece": result.calibration.ece[label],
               "status": values.status, "ci_note": values.ci_note}
        for method in ("youden", "target_sensitivity"):
            row.update(point_cells(points[(label, method)]))
        rows.append(row)
    for key, mean in result.image.means.items():
        study = result.study.means[key]
        rows.append({"pathology": mean.title, "auc": mean.auc, "ci_low": mean.ci.low,
                     "ci_high": mean.ci.high, "auprc": mean.auprc,
                     "prevalence": mean.prevalence, "study_auc": study.auc,
                     "study_ci_low": study.ci.low, "study_ci_high": study.ci.high,
                     "ci_note": mean.ci_note})
    return rows


def write_reports(result: EvaluationReport, plots: dict[str, str], cfg: Config, out_dir: Path
                  ) -> None:
    split = result.split
    write_text_atomic(json.dumps({**result.as_dict(), "plots": plots}, indent=2) + "\n",
                      out_dir / f"eval_{split}.json")
    write_text_atomic(markdown_report(result, plots, cfg), out_dir / f"eval_{split}.md")
    table = pd.DataFrame(csv_rows(result)).astype(  # blank for the means
        {"positives": "Int64", "negatives": "Int64", "masked": "Int64"})
    write_csv_atomic(table, out_dir / f"eval_{split}.csv")


def read_report(path: Path) -> EvaluationReport:
    """The report an eval_<split>.json holds (write_reports wrote it)."""
    try:
        return EvaluationReport.from_dict(json.loads(path.read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path} is not an evaluation report of this version of evaluate.py "
                            f"({type(err).__name__}: {err}); delete it and evaluate the run "
                            "again") from None


def print_report(result: EvaluationReport, path: Path, cfg: Config) -> None:
    model = (f"an ensemble of {len(result.ensemble.members)} checkpoints ({path})"
             if result.ensemble is not None else f"checkpoint {path}")
    print(f"\nReport card: {title_of(result)} ({result.n_images} images, "
          f"{result.n_studies} studies, {result.n_patients} patients), {model}")
    rows = report_rows(result.image, result.study)
    print(report_card_text(rows, cfg.ci_level))
    means = [f"{mean.name} {number_text(mean.auc)} "
             f"{marked_interval(mean.ci.low, mean.ci.high, mean.ci_note)}"
             for mean in result.study.means.values()]
    print(f"study level ({result.n_studies} studies, {study_unit_text(result)}): "
          f"{', '.join(means)}")
    for text in (approximate_text(rows), left_out_text(result.image), masked_text(result),
                 subgroup_line(result.subgroups, result.subgroup_comparisons),
                 underdiagnosis_line(result.underdiagnosis, result.underdiagnosis_comparisons,
                                     "studies" if result.per_study else "images")):
        if text:
            print(text)
    calibration = result.calibration
    print(f"mean ECE {number_text(calibration.mean_ece)} ({calibration.bins} bins, "
          f"{calibration.method} calibration fitted on {calibration.fitted_on}; "
          f"{number_text(calibration.mean_ece_uncalibrated)} before it)")
    if result.input_gate is not None:
        print(input_gate_text(result.input_gate, result.split))


# ---- a paired comparison of two runs (evaluate.py --compare; compare.py computes the rows) ----

def comparison_header(level: float) -> list[str]:
    return ["Pathology", "AUC A", "AUC B", "B - A", f"{level:.0%} CI (paired)", "p", "Verdict"]


def comparison_cells(row: dict) -> list[str]:
    return [row["pathology"], number_text(row["auc_a"]), number_text(row["auc_b"]),
            number_text(row["difference"], signed=True),
            marked_interval(row["ci_low"], row["ci_high"], row["note"], signed=True),
            p_text(row["p_adjusted"]), row["verdict"]]


def n_classes(rows: list[dict]) -> int:
    """Rows before the means (they come last)."""
    titles = tuple(title for _, title, _ in MEANS)
    return next((i for i, row in enumerate(rows) if row["pathology"].startswith(titles)),
                len(rows))


def comparison_note(rows: list[dict]) -> str:
    compared = sum(row["difference"] is not None for row in rows[:n_classes(rows)])
    approximate = any(is_approximate(row["note"]) for row in rows)
    return (f"p: the observations' Holm-adjusted over the {compared} compared, the verdicts "
            "following it; the means are the primary comparisons, each on its own."
            + (f" {APPROXIMATE} approximate interval (JSON: note)." if approximate else ""))


def comparison_text(rows: list[dict], level: float) -> str:
    """Plain-text table for the terminal; a rule before the means (they come last)."""
    return text_table(comparison_header(level), [comparison_cells(row) for row in rows],
                      left=(0, 6), rules=(n_classes(rows),)) + "\n" + comparison_note(rows)


def comparison_markdown(rows: list[dict], level: float) -> str:
    return markdown_table(comparison_header(level), [comparison_cells(row) for row in rows],
                          left=(0, 6)) + "\n\n" + comparison_note(rows)


def comparison_description(split: str, frame: pd.DataFrame, unit: str, paths: list[Path]
                           ) -> list[str]:
    """What a comparison compared (`frame`: the rows both runs predicted, in `unit`), then the
    lines naming A and B."""
    return [f"AUC of B - A on the {split} split ({len(frame)} {unit}, "
            f"{frame['patient_id'].nunique()} patients), paired intervals "
            "(cluster-robust DeLong over the patients)",
            f"A = {paths[0]}", f"B = {paths[1]}"]


def comparison_report(rows: list[dict], description: list[str], name_a: str, name_b: str,
                      level: float) -> str:
    """compare_<split>_vs_<A>.md: `description` is the line saying what was compared, then the
    lines naming A and B."""
    return "\n".join([
        f"# Comparison: {name_b} (B) vs {name_a} (A)", "",
        description[0], "", *(f"- {line}" for line in description[1:]), "",
        comparison_markdown(rows, level), "",
        "An interval that excludes 0 means the difference is unlikely to come from which "
        "patients are in the split (verdict `B better` / `A better`).", ""])


# ---- external validation (evaluate.py --dataset) -------------------------------------------------

def reference_text(cfg: Config, adapted: Adapted) -> str:
    """eval_<name>.json's "reference" (the report's reference standard): the mapped labels,
    who labelled the rows read, and the hierarchy."""
    return (f"{adapted.title}'s labels mapped onto CheXpert's (cxr/data/{cfg.dataset}.py), "
            f"uncertain (-1) masked; labelled by (rows read): "
            f"{counts_text(adapted.label_sources)}; --label_hierarchy {adapted.hierarchy}")


# ---- recalibration for a site (evaluate.py --dataset ... --recalibrate) --------------------------

def thresholds_source(result: EvaluationReport) -> str:
    """Where the report's thresholds were chosen: "the val split", or the site's fitting half."""
    if result.recalibration is None:
        return "the val split"
    rec = result.recalibration
    return f"the site's fitting half, {rec.n_fit} images of {rec.n_fit_patients} patients"


def method_title(method: str, target: float) -> str:
    return {"youden": "Youden", "target_sensitivity": f"sensitivity >= {target:g}"}[method]


def change_text(before: float | None, after: float | None, digits: int = 4) -> str:
    """'0.1671 -> 0.0512'."""
    return f"{number_text(before, digits)} -> {number_text(after, digits)}"


def auc_change_text(rec: Recalibration) -> str:
    """"mean AUC unchanged (0.4929)": the maps are monotone, so it should always say so."""
    before, after = rec.mean_auc_before, rec.mean_auc_after
    if before is not None and after is not None and abs(before - after) < 1e-9:
        return f"mean AUC unchanged ({number_text(after)})"
    return f"mean AUC {change_text(before, after)}"


def recalibration_notes(rec: Recalibration) -> list[str]:
    """What the refit could not do: no map with --calibration none; classes kept from val."""
    notes = []
    if rec.method == "none":
        notes.append("--calibration none: only the thresholds were refitted (no calibration "
                     "map), so the probabilities and their ECE are the model's own before and "
                     "after")
    if rec.kept_from_val:
        notes.append("val's map and thresholds kept (one label value in the fitting half, or "
                     "not labelled by the site): " + ", ".join(rec.kept_from_val))
    return notes


def recalibration_text(rec: Recalibration, target: float) -> str:
    """The terminal's lines after the recalibrated report card: the ECE and the operating
    points' mean rates before -> after on the scoring half."""
    lines = [f"recalibration on {rec.dataset}: fitted on {rec.n_fit} images "
             f"({rec.n_fit_patients} patients), scored on {rec.n_score} images "
             f"({rec.n_score_patients} patients): mean ECE {number_text(rec.ece_before)} before "
             f"-> {number_text(rec.ece_after)} after; {auc_change_text(rec)}"]
    for method, means in rec.mean_rates.items():
        lines.append(f"  {method_title(method, target)}: mean sensitivity "
                     f"{change_text(means['sensitivity_before'], means['sensitivity_after'], 3)}, "
                     "specificity "
                     f"{change_text(means['specificity_before'], means['specificity_after'], 3)} "
                     f"(over the {means['classes']} classes scored)")
    return "\n".join([*lines, *(f"  {note}" for note in recalibration_notes(rec))])


def rate_cell(point: OperatingPoint, rate: str) -> str:
    """'0.812 [0.701, 0.889]', or n/a."""
    value = getattr(point, rate)
    if value is None:
        return "n/a"
    return f"{number_text(value, 3)} {interval_text(*getattr(point, f'{rate}_ci'))}"


def recalibration_rows(rec: Recalibration, method: str, with_ece: bool) -> list[list[str]]:
    """Per class: (ECE before, after,) the threshold of val and of the site, sensitivity and
    specificity before and after; then the means."""
    points = {when: {p.pathology: p for p in rec.operating_points[when] if p.method == method}
              for when in ("before", "after")}
    rows = []
    for label, ece in rec.ece_per_class.items():
        before, after = points["before"][label], points["after"][label]
        rows.append([label, *([number_text(ece["before"]), number_text(ece["after"])]
                              if with_ece else []),
                     number_text(before.threshold), number_text(after.threshold),
                     rate_cell(before, "sensitivity"), rate_cell(after, "sensitivity"),
                     rate_cell(before, "specificity"), rate_cell(after, "specificity")])
    means = rec.mean_rates[method]
    rows.append([f"**mean** ({means['classes']} classes)",
                 *([number_text(rec.ece_before), number_text(rec.ece_after)] if with_ece else []),
                 "", "", *(number_text(means[f"{rate}_{when}"], 3)
                           for rate in ("sensitivity", "specificity")
                           for when in ("before", "after"))])
    return rows


def recalibration_table(rec: Recalibration, method: str, with_ece: bool, level: float) -> str:
    header = ["Pathology", *(["ECE before", "ECE after"] if with_ece else []),
              "Threshold (val)", "Threshold (site)",
              *(f"{rate} {when} [{level:.0%} CI]" for rate in ("Sensitivity", "Specificity")
                for when in ("before", "after"))]
    return markdown_table(header, recalibration_rows(rec, method, with_ece))


def recalibration_markdown(result: EvaluationReport, cfg: Config) -> list[str]:
    """The section "Recalibration for this site" of eval_<name>_recalibrated.md (none in
    another report)."""
    rec = result.recalibration
    if rec is None:
        return []
    method = "no map (--calibration none)" if rec.method == "none" else f"{rec.method} maps"
    return ["## Recalibration for this site", "",
            f"The calibration ({method}) and the thresholds were refitted on the site's fitting "
            f"half, {rec.n_fit} images of {rec.n_fit_patients} patients ({rec.share:.0%} of its "
            f"patients, drawn with seed {rec.seed}; every image of a patient on one side). "
            f"Everything here is measured on the other {rec.n_score_patients} patients "
            f"({rec.n_score} images), the scoring half: *before* with the checkpoint's val maps "
            f"and thresholds, *after* with the site's (`{rec.thresholds_file}`). The maps are "
            f"monotone, so each class's AUC is the same before and after: "
            f"{auc_change_text(rec)}. Mean ECE over {rec.bins} bins "
            f"{change_text(rec.ece_before, rec.ece_after)}.", "",
            f"### {method_title('youden', cfg.target_sensitivity)} and calibration", "",
            recalibration_table(rec, "youden", True, cfg.ci_level), "",
            f"### {method_title('target_sensitivity', cfg.target_sensitivity)}", "",
            recalibration_table(rec, "target_sensitivity", False, cfg.ci_level), "",
            *(f"- {note}" for note in recalibration_notes(rec)),
            *([""] if recalibration_notes(rec) else []),
            f"Use the site's file: `python predict.py --checkpoint {result.checkpoint} "
            f"--thresholds {rec.thresholds_file} IMAGES`.", ""]
