"""Score any predictions CSV against a reference standard, its radiologists and other models.

    python score.py --predictions P.csv --labels groundtruth.csv \
        [--radiologists bc4.csv,bc6.csv,bc8.csv] [--compare X.csv,Y.csv] [--output_dir DIR]
    python score.py --predictions A.csv,B.csv,C.csv --labels groundtruth.csv     (an ensemble)
    python score.py --labels groundtruth.csv --labeler chexpert_labels.csv

Reads  --predictions: probabilities keyed by Study or Path (CheXpert's test-set files, the
       leaderboard's *_predictions.csv, predict.py's predictions.csv or its _studies.csv), label
       columns by name, any order, any subset of the 14; an image file is aggregated to studies
       (--study_aggregation) when the labels are per study, as predict.py writes its
       _studies.csv: lateral films (its `view` column, else the file name) left out, as for a
       frontal-only model. --labels: 1 / 0 per study or image (CheXpert's test
       groundtruth.csv: five radiologists' majority vote); -1 and blank are masked.
       --radiologists: readers' 0/1 reads, same schema (a model's *_decisions.csv too).
       --compare: other predictions files. --labeler: report labelers' 1 / 0 / -1 / blank output.
       Keys are matched across files with CheXpert's release folder, download folder and
       trailing slashes normalised (cxr/scoring/files.py); a study in one file and not the other is
       an error (--unmatched skip: a counted skip). Scores must be probabilities in [0, 1]
       (--score_scale any: any finite scores, which AUCs only rank). Several --predictions
       files (a comma list: each model's predict.py output) are scored as their ensemble, the
       mean of their probabilities on the rows and labels all hold, and each file is compared
       with it as a --compare file is (B = the ensemble, paired intervals).
Writes to --output_dir (default scores/<predictions stem>/):
       score.json   n_studies, auc per label, mean_auc, competition5_auc, the report card with
                    its intervals, radiologists {reader: {label: sensitivity, specificity,
                    below_curve, model_sensitivity, precision, below_pr_curve,
                    model_precision, ... with intervals}}, radiologists_below_curve and
                    radiologists_below_pr_curve {label: count} (the ROC and the PR curve,
                    compared in counts) with their bootstrap distributions,
                    compare {file: {label: B - A}} with paired intervals, the leaderboard,
                    the labeler table
       score.md     the same as tables, with the figures; score.csv one row per label
       roc.png      ROC curves with each radiologist's operating point; pr.png PR curves;
       subgroups.png  the competition five's AUC by subgroup (a forest plot)
The report card is evaluate.py's, from the same code (AUC intervals from
cxr/evaluation/intervals.py, AUPRC, positives, the means over labels and over the competition five).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from config import Config
from cxr.cli import run_cli
from cxr.data.demographics import check_demographics
from cxr.errors import ConfigError
from cxr.reporting.plots import forest_plot, pr_grid, roc_grid
from cxr.reporting.score_report import print_labelers, print_score, write_documents
from cxr.scoring.files import read_reference
from cxr.scoring.report import LabelerReport, ScoreReport
from cxr.scoring.results import Scored, labeler_results, prediction_paths, score


def output_dir(cfg: Config) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    files = prediction_paths(cfg)
    if len(files) > 1:
        return Path("scores") / f"ensemble-{len(files)}-{Path(files[0]).stem}"
    return Path("scores") / (Path(cfg.predictions).stem if cfg.predictions else "labeler")


def check_options(cfg: Config) -> None:
    if not cfg.labels:
        raise ConfigError("score.py needs --labels: the reference-standard CSV (e.g. CheXpert's "
                          "test groundtruth.csv)")
    if not cfg.predictions and not cfg.labeler:
        raise ConfigError("score.py needs --predictions P.csv (or --labeler FILE for the "
                          "labeler table alone)")
    if not cfg.predictions and (cfg.radiologists or cfg.compare):
        raise ConfigError("--radiologists and --compare are measured against --predictions: "
                          "pass it too")


def draw_figures(model: Scored, comparisons: dict, subgroups: dict, out_dir: Path
                 ) -> dict[str, str]:
    """roc.png and pr.png with every reader's operating point, subgroups.png (the forest plot);
    returns their file names."""
    points = {label: {name: (point["sensitivity"], point["specificity"])
                      for name, point in comparison["readers"].items()}
              for label, comparison in comparisons.items()}
    unit = "studies" if model.unit == "study" else "images"
    title = f"{model.name}: {len(model.keys)} {unit}"
    roc_grid(model.targets, model.scores, model.labels, out_dir / "roc.png",
             f"ROC curves, {title}" + (" (markers: readers)" if points else ""), points)
    pr_points = {label: {name: (point["sensitivity"], point["precision"])
                         for name, point in comparison["readers"].items()}
                 for label, comparison in comparisons.items()}
    pr_grid(model.targets, model.scores, model.labels, out_dir / "pr.png",
            f"Precision-recall curves, {title}" + (" (markers: readers)" if pr_points else ""),
            pr_points)
    names = {"roc": "roc.png", "pr": "pr.png"}
    if forest_plot(subgroups, model.labels, out_dir / "subgroups.png",
                   f"Competition five by subgroup, {title}"):
        names["subgroups"] = "subgroups.png"
    return names


def main(cfg: Config) -> None:
    check_options(cfg)
    check_demographics(cfg)
    out_dir = output_dir(cfg)
    reference = read_reference(Path(cfg.labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    report: ScoreReport | None = None
    plots: dict[str, str] = {}
    if cfg.predictions:
        report, model, comparisons = score(cfg, reference)
        plots = draw_figures(model, comparisons, report.subgroups, out_dir)
    labelers = labeler_results(cfg.labeler, reference, cfg) if cfg.labeler else None
    if report is None:  # the labeler table alone
        print_labelers(labelers)
        write_documents(LabelerReport(cfg.labels, labelers), plots, out_dir)
    else:
        report = replace(report, labeler=labelers)
        print_score(report)
        write_documents(report, plots, out_dir)
    figures = "".join(f", {name}" for name in plots.values())
    print(f"\nscore: wrote {out_dir}/score.json, score.md"
          f"{', score.csv' if cfg.predictions else ''}{figures}")


if __name__ == "__main__":
    run_cli(main, script="score.py", defaults=Config())
