"""score.py's numbers: predictions CSVs against a reference standard, readers and each other.

The report card is evaluate.py's, from the same code (metrics.summarise_level: AUC with its
interval, intervals.py, AUPRC, positives, the means over labels and over the
competition five); readers.py compares readers' operating points with the model's curve;
compare.py gives the paired differences of AUC. This module lines the files up (files.py reads
them) and gathers the results into one ScoreReport (report.py), the contents of score.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.data.demographics import join_demographics
from cxr.data.labels import masked_counts
from cxr.errors import PipelineError
from cxr.evaluation.compare import paired_auc_differences
from cxr.evaluation.intervals import interval_methods
from cxr.evaluation.metrics import summarise_level
from cxr.evaluation.report import LevelSummary
from cxr.evaluation.subgroups import subgroup_table
from cxr.evaluation.thresholds import read_operating_points
from cxr.evaluation.underdiagnosis import UnderdiagnosisAudit, missed_audit, not_audited
from cxr.scoring.files import PLURAL, LabelFile, by_study, match_keys, patient_of, read_labeler, \
    read_reads, read_scores, same_unit, shared_labels, study_of
from cxr.scoring.labelers import labeler_table
from cxr.scoring.readers import compare_readers
from cxr.scoring.report import FileEnsemble, LabelerResult, LeaderboardRow, ReadersBootstrap, \
    ScoreReport

if TYPE_CHECKING:
    from config import Config

# CheXpert's test set: 500 patients numbered 64741 to 65240 (train and valid come before them).
CHEXPERT_TEST_PATIENTS = range(64741, 65241)


def reference_text(reference: LabelFile) -> str:
    """What the labels are: named as CheXpert's test set when the keys are its patients."""
    numbers = reference.keys.str.extract(r"^patient(\d+)/")[0]
    official = numbers.notna().all() and numbers.astype(int).isin(CHEXPERT_TEST_PATIENTS).all()
    source = (" (CheXpert's test set: the majority vote of five board-certified radiologists)"
              if official else "")
    return f"the labels of {reference.path}{source}; uncertain (-1) and blank labels masked"


@dataclass
class Scored:
    """One predictions file lined up with the reference standard on the rows both hold."""

    name: str
    path: Path
    keys: pd.Index  # normalised keys, in the reference's order
    labels: tuple[str, ...]
    scores: np.ndarray  # (rows, labels)
    targets: np.ndarray  # (rows, labels), NaN = masked
    unit: str  # "study" or "image"
    skipped: dict[str, int]  # rows only in the predictions, only in the reference
    study_views: dict | None = None  # per-image predictions aggregated: laterals left out

    @property
    def patient_ids(self) -> pd.Series:
        return pd.Series(self.keys.map(patient_of), dtype=str)


def file_names(paths: tuple[str, ...]) -> list[str]:
    """Short names of files for tables: their stems, or the paths when two stems are alike."""
    stems = [Path(path).stem for path in paths]
    return stems if len(set(stems)) == len(stems) else list(paths)


def line_up(scores: LabelFile, reference: LabelFile, cfg: Config, within: pd.Index | None = None,
            name: str = "") -> Scored:
    """A predictions file and the reference on one unit (image files aggregated to studies when
    the reference is per study), on the keys both hold (and `within`, when given)."""
    scores, reference = same_unit(scores, reference, cfg.study_aggregation)
    if within is None:
        matched = match_keys(scores, reference, cfg.unmatched)
        keys, skipped = matched.keys, {"predictions_only": len(matched.only_in_scores),
                                       "reference_only": len(matched.only_in_reference)}
    else:  # a model compared with another: the rows both predicted, without complaint
        keys = within[within.isin(scores.keys)]
        skipped = {"predictions_only": int((~scores.keys.isin(within)).sum()),
                   "reference_only": len(within) - len(keys)}
        if keys.empty:
            raise PipelineError(f"{scores.path} shares no {PLURAL[reference.unit]} with the "
                                "predictions it is compared with")
    labels = shared_labels(scores, reference)
    return Scored(name or Path(scores.path).stem, scores.path, keys, labels,
                  scores.values.loc[keys, list(labels)].to_numpy(dtype=float),
                  reference.values.loc[keys, list(labels)].to_numpy(dtype=float),
                  reference.unit, skipped, scores.study_views)


def restrict(scored: Scored, keys: pd.Index) -> Scored:
    """The same predictions on a subset of their rows (the studies every reader read)."""
    rows = scored.keys.get_indexer(keys)
    return Scored(scored.name, scored.path, keys, scored.labels, scored.scores[rows],
                  scored.targets[rows], scored.unit, scored.skipped, scored.study_views)


def report_card(scored: Scored, cfg: Config) -> LevelSummary:
    """evaluate.py's report card of one file's predictions (metrics.summarise_level)."""
    return LevelSummary.from_dict(summarise_level(scored.scores, scored.targets,
                                                  scored.patient_ids, scored.labels, cfg))


# ---- readers ----------------------------------------------------------------------------------

def read_readers(paths: tuple[str, ...], reference: LabelFile, cfg: Config
                 ) -> dict[str, LabelFile]:
    """Every reader's reads, named by file; each must cover the reference's studies (or with
    --unmatched skip, the studies they all cover are scored)."""
    readers = {}
    for name, path in zip(file_names(paths), paths):
        reads = read_reads(Path(path))
        if reads.unit != reference.unit:
            raise PipelineError(f"{path} holds {PLURAL[reads.unit]}, the reference "
                                f"{reference.path} {PLURAL[reference.unit]}: reads must be of "
                                "the same unit")
        match_keys(reads, reference, cfg.unmatched)  # the error, or the counted skip
        readers[name] = reads
    return readers


def readers_keys(keys: pd.Index, readers: dict[str, LabelFile]) -> pd.Index:
    """The scored keys every reader read."""
    for reads in readers.values():
        keys = keys[keys.isin(reads.keys)]
    return keys


def reader_arrays(readers: dict[str, LabelFile], scored: Scored) -> dict[str, dict]:
    """{reader: {label: 0/1 reads aligned with scored's rows}} for the labels each one read."""
    return {name: {label: reads.values.loc[scored.keys, label].to_numpy(dtype=float)
                   for label in scored.labels if label in reads.values.columns}
            for name, reads in readers.items()}


def reader_fields(comparisons: dict[str, dict]) -> dict:
    """The report's readers: "readers_by_label" (readers.compare_readers), and as views of it
    "radiologists" ({reader: {label: point}}), "radiologists_below_curve" (the ROC curve:
    {label: count}) and "radiologists_below_pr_curve" (the PR curve)."""
    by_reader: dict[str, dict] = {}
    for label, comparison in comparisons.items():
        for name, point in comparison["readers"].items():
            by_reader.setdefault(name, {})[label] = point
    return {"readers_by_label": comparisons, "radiologists": by_reader,
            "radiologists_below_curve": {label: comparison["below_curve"]
                                         for label, comparison in comparisons.items()},
            "radiologists_below_pr_curve": {label: comparison["below_pr_curve"]
                                            for label, comparison in comparisons.items()}}


# ---- other models -------------------------------------------------------------------------------

def compare_files(model: Scored, reference: LabelFile, cfg: Config,
                  paths: tuple[str, ...] | None = None
                  ) -> tuple[dict[str, list[dict]], list[Scored]]:
    """Each --compare file (or `paths`) (A) against the predictions (B) on the rows and labels
    both cover: compare.py's rows of B - A with paired intervals."""
    rows, others = {}, []
    paths = cfg.compare if paths is None else paths
    for name, path in zip(file_names(paths), paths):
        other = line_up(read_scores(Path(path), cfg.score_scale), reference, cfg,
                        within=model.keys, name=name)
        labels = tuple(label for label in model.labels if label in other.labels)
        if not labels:
            raise PipelineError(f"--compare {path} predicts none of the labels of "
                                f"{model.path} ({', '.join(model.labels)})")
        mine = restrict(model, other.keys)
        columns_b = [model.labels.index(label) for label in labels]
        columns_a = [other.labels.index(label) for label in labels]
        rows[path] = paired_auc_differences(
            other.scores[:, columns_a], mine.scores[:, columns_b], mine.targets[:, columns_b],
            other.patient_ids, labels, cfg.ci_level, cfg.min_positives)
        others.append(other)
    return rows, others


def differences(rows: list[dict]) -> dict[str, float | None]:
    """score.json's "compare" entry of one file: {label or mean: B - A}."""
    return {row["pathology"]: row["difference"] for row in rows}


def mean_auc(card: LevelSummary, key: str) -> float | None:
    """A mean's AUC ("all" or "competition": metrics.MEANS), None when it is not scored."""
    mean = card.means.get(key)
    return None if mean is None else mean.auc


def class_aucs(card: LevelSummary) -> dict[str, float | None]:
    return {label: values.auc for label, values in card.classes.items()}


def leaderboard_row(scored: Scored, card: LevelSummary) -> LeaderboardRow:
    competition = card.means.get("competition")
    return LeaderboardRow(
        scored.name, str(scored.path), len(scored.keys), mean_auc(card, "competition"),
        [None, None] if competition is None else [competition.ci.low, competition.ci.high],
        0 if competition is None else len(competition.classes), mean_auc(card, "all"),
        class_aucs(card))


def leaderboard(entries: list[tuple[Scored, LevelSummary]]) -> list[LeaderboardRow]:
    """Every model scored, best competition-five mean first (n/a last), with its interval."""
    rows = [leaderboard_row(scored, card) for scored, card in entries]
    return sorted(rows, key=lambda row: (row.competition5_auc is None,
                                         -(row.competition5_auc or 0.0)))


# ---- labelers -----------------------------------------------------------------------------------

def labeler_results(paths: tuple[str, ...], reference: LabelFile, cfg: Config
                    ) -> dict[str, LabelerResult]:
    """{labeler: labeler_check rows} against the reference, on the studies both hold."""
    results, seen = {}, {}
    for name, path in zip(file_names(paths), paths):
        labeler = read_labeler(Path(path))
        same = next((other for other, values in seen.items() if values.equals(labeler.values)),
                    None)
        if same:
            print(f"note: {path} holds the same labels as {same}: their tables are identical")
        seen[path] = labeler.values
        if labeler.unit != reference.unit:
            raise PipelineError(f"{path} holds {PLURAL[labeler.unit]}, the reference "
                                f"{PLURAL[reference.unit]}")
        keys = match_keys(labeler, reference, cfg.unmatched).keys
        labels = shared_labels(labeler, reference)
        results[name] = LabelerResult(str(path), len(keys), labeler_table(
            labeler.values.loc[keys, list(labels)].to_numpy(dtype=float),
            reference.values.loc[keys, list(labels)].to_numpy(dtype=float), labels,
            cfg.ci_level))
    return results


# ---- an ensemble of predictions files ------------------------------------------------------------

def prediction_paths(cfg: Config) -> tuple[str, ...]:
    """--predictions: one file, or a comma list of files whose probabilities are averaged."""
    return tuple(part.strip() for part in cfg.predictions.split(",") if part.strip())


def mean_of_files(paths: tuple[str, ...], cfg: Config) -> LabelFile:
    """The ensemble of several predictions files: the mean of their probabilities, on the rows
    (keys) and labels every file holds."""
    if cfg.score_scale != "probability":
        raise PipelineError("--predictions with several files averages their probabilities: "
                            "it needs --score_scale probability (scores that only rank cannot "
                            "be averaged across models)")
    files = [read_scores(Path(path), cfg.score_scale) for path in paths]
    units = {f.unit for f in files}
    if len(units) > 1:
        raise PipelineError(f"--predictions {cfg.predictions}: some files hold studies, others "
                            "images; an ensemble averages files of one unit")
    keys = files[0].keys
    for other in files[1:]:
        keys = keys[keys.isin(other.keys)]
    labels = [label for label in files[0].labels if all(label in f.labels for f in files)]
    dropped = {str(f.path): len(f.keys) - len(keys) for f in files if len(f.keys) > len(keys)}
    if dropped and cfg.unmatched == "error":
        raise PipelineError(f"--predictions: the files do not hold the same rows ({dropped} rows "
                            "held by only some of them); --unmatched skip averages the rows "
                            "every file holds")
    if not labels or keys.empty:
        raise PipelineError(f"--predictions {cfg.predictions}: the files share no rows or no "
                            "label columns to average")
    values = sum(f.values.loc[keys, labels] for f in files) / len(files)
    written = files[0].written.set_axis(files[0].keys).loc[keys].reset_index(drop=True)
    views = None if files[0].views is None else files[0].views.loc[keys]
    return LabelFile(Path(f"ensemble of {len(files)} files"), keys, written, values,
                     files[0].unit, views=views)


# ---- everything ---------------------------------------------------------------------------------

def scored_predictions(cfg: Config, reference: LabelFile) -> tuple[Scored, tuple[str, ...]]:
    """--predictions lined up with the reference, and the files of an ensemble (none for one
    file): several files are scored as their ensemble."""
    members = prediction_paths(cfg)
    if len(members) > 1:
        return line_up(mean_of_files(members, cfg), reference, cfg, name="ensemble"), members
    return line_up(read_scores(Path(cfg.predictions), cfg.score_scale), reference, cfg), ()


def read_by_every_reader(model: Scored, readers: dict[str, LabelFile]) -> Scored:
    """The predictions on the rows every reader read (--unmatched skip left the others)."""
    keys = readers_keys(model.keys, readers)
    if len(keys) == len(model.keys):
        return model
    print(f"score: {len(model.keys) - len(keys)} {PLURAL[model.unit]} not read by every "
          "reader are left out (--unmatched skip)")
    return restrict(model, keys)


def rows_fields(cfg: Config, model: Scored, members: tuple[str, ...], reference: LabelFile
                ) -> dict:
    """The report's files and the rows scored."""
    return {"predictions": str(cfg.predictions), "labels_file": str(cfg.labels),
            "ensemble": FileEnsemble(list(members), "mean of the files' probabilities")
            if members else None,
            "reference": reference_text(reference), "unit": model.unit,
            "n_studies": len(set(model.keys.map(study_of))), "n_rows": len(model.keys),
            "n_patients": int(model.patient_ids.nunique()), "skipped": model.skipped,
            "labels": list(model.labels), "masked": masked_counts(model.targets, model.labels),
            "study_views": model.study_views or None}


def card_fields(card: LevelSummary) -> dict:
    """The report card, and its AUCs: each label's, the means."""
    return {"auc": class_aucs(card), "mean_auc": mean_auc(card, "all"),
            "competition5_auc": mean_auc(card, "competition"), "report_card": card}


def comparison_fields(compared: dict[str, list[dict]], others: list[Scored]) -> dict:
    """The --compare files (and an ensemble's members) against the predictions."""
    return {"compare": {path: differences(rows) for path, rows in compared.items()},
            "compare_rows": compared,
            "compare_n": {path: len(other.keys) for path, other in zip(compared, others)}}


def settings_fields(cfg: Config) -> dict:
    """How the intervals and the readers' bootstrap were made, and the settings scored with."""
    return {"intervals": interval_methods(cfg.ci_level),
            "bootstrap": ReadersBootstrap(cfg.bootstrap_resamples, cfg.ci_level, cfg.seed,
                                          "patient", "the readers against the curves "
                                          "(stratified by the label's positive patients)"),
            "study_aggregation": cfg.study_aggregation, "min_positives": cfg.min_positives}


def score(cfg: Config, reference: LabelFile) -> tuple[ScoreReport, Scored, dict]:
    """score.json's contents, the scored predictions (for the figures), and the readers'
    comparisons by label (their points are drawn on the ROC curves). Several --predictions
    files are scored as their ensemble, with each file compared against it."""
    model, members = scored_predictions(cfg, reference)
    if reference.unit != model.unit:  # per-image labels, study predictions: score studies
        reference = by_study(reference, "max")
    readers = read_readers(cfg.radiologists, reference, cfg)
    model = read_by_every_reader(model, readers)
    card = report_card(model, cfg)
    comparisons = compare_readers(model.targets, model.scores, reader_arrays(readers, model),
                                  model.labels, model.patient_ids, cfg.bootstrap_resamples,
                                  cfg.ci_level, cfg.seed)
    compared, others = compare_files(model, reference, cfg, (*members, *cfg.compare))
    frame, demographic, read = join_demographics(audit_frame(model, reference), cfg)
    audit = subgroup_table(model.scores, model.targets, frame, model.labels, cfg.ci_level,
                           cfg.min_positives, cfg.age_bands, demographic)
    board = leaderboard([(model, card)] + [(other, report_card(other, cfg)) for other in others])
    report = ScoreReport(**rows_fields(cfg, model, members, reference), **card_fields(card),
                         **reader_fields(comparisons), **comparison_fields(compared, others),
                         subgroups=audit.table,
                         subgroup_comparisons={**audit.multiplicity(cfg.ci_level),
                                               **({"demographics": read} if read else {})},
                         **scored_missed(model, frame, demographic, cfg).report_fields(),
                         leaderboard=board, **settings_fields(cfg))
    return report, model, comparisons


def scored_missed(model: Scored, frame: pd.DataFrame, demographic: tuple[str, ...], cfg: Config
                  ) -> UnderdiagnosisAudit:
    """The underdiagnosis audit of the scored rows at the Youden thresholds of --thresholds
    (the thresholds.json of the model that wrote the predictions: its probabilities are
    calibrated as the thresholds assume); none without it, or for scores that only rank."""
    if not cfg.thresholds:
        return not_audited("n/a: no operating point; give --thresholds with the model's "
                           "thresholds.json (evaluate.py writes it beside the checkpoint)")
    if cfg.score_scale != "probability":
        return not_audited("n/a: --score_scale any: the scores are not probabilities, so a "
                           "thresholds.json's operating points do not apply")
    thresholds = read_operating_points(cfg.thresholds, model.labels)
    return missed_audit(model.scores, model.targets, model.labels, thresholds, frame,
                        demographic, cfg, f"{cfg.thresholds}: the Youden thresholds fitted on "
                                          "the model's val split")


def audit_frame(model: Scored, reference: LabelFile) -> pd.DataFrame:
    """What the subgroup audit can read of the scored rows: their patients, and the reference's
    Support Devices label (masked: NaN) when the predictions do not score it."""
    frame = pd.DataFrame({"patient_id": model.patient_ids})
    if "Support Devices" not in model.labels and "Support Devices" in reference.labels:
        frame["Support Devices"] = reference.values.loc[model.keys, "Support Devices"].to_numpy()
    return frame
