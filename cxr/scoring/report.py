"""The result of score.py, typed: what cxr/scoring/results.py computes and cxr.reporting renders.

    ScoreReport      one predictions file (or an ensemble of files) against the reference
                     standard, its readers and other models: score.json's contents
    LabelerReport    score.py --labeler without --predictions: the labeler table alone
    FileEnsemble     the predictions files an ensemble averages
    LeaderboardRow   one model scored, in the leaderboard
    ReadersBootstrap the patient bootstrap of the readers against the curves
    LabelerResult    one labeler's uncertain and blank labels against the reference

Each type's as_dict() gives its part of score.json, its keys in the file's order (score.py adds
"plots", the figures' names). The report card is evaluate.py's LevelSummary. What other modules
make and share stays their dicts: the readers' comparisons (readers.compare_readers, and the
"radiologists" views of them), the paired comparisons' rows (compare.paired_auc_differences), the
subgroup audit (subgroups.subgroup_table), the interval methods (intervals.interval_methods), the
labeler rows (labelers.labeler_table) and the study views (files.scores_by_study).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxr.evaluation.report import LevelSummary, field_dict


@dataclass(frozen=True)
class FileEnsemble:
    """--predictions A.csv,B.csv: the files averaged, and how."""

    members: list[str]  # the files, as given
    combination: str  # "mean of the files' probabilities"

    def as_dict(self) -> dict:
        return field_dict(self)


@dataclass(frozen=True)
class LeaderboardRow:
    """One model scored: the competition five's mean AUC with its interval, each class's AUC."""

    model: str  # the file's short name ("ensemble" for the ensemble)
    file: str
    n: int  # rows scored
    competition5_auc: float | None
    competition5_ci: list[float | None]  # [low, high]
    competition5_classes: int  # the competition classes in the mean
    mean_auc: float | None  # the mean over every evaluable class
    auc: dict[str, float | None]  # class -> AUC

    def as_dict(self) -> dict:
        return field_dict(self)


@dataclass(frozen=True)
class ReadersBootstrap:
    """The patient bootstrap of the readers against the model's curves."""

    resamples: int
    level: float  # the intervals' confidence level
    seed: int
    unit: str  # what is resampled: "patient"
    purpose: str  # what it is for (score.json's "for")

    def as_dict(self) -> dict:
        every = field_dict(self)
        every["for"] = every.pop("purpose")  # the last key: the file's order kept
        return every


@dataclass(frozen=True)
class LabelerResult:
    """One labeler file against the reference, on the studies both hold."""

    file: str
    n: int  # studies
    rows: list[dict]  # labelers.labeler_table: one row per label

    def as_dict(self) -> dict:
        return field_dict(self)


def labelers_dict(labelers: dict[str, LabelerResult]) -> dict:
    return {name: result.as_dict() for name, result in labelers.items()}


@dataclass(frozen=True)
class LabelerReport:
    """score.py --labeler without --predictions: the labeler table alone."""

    labels_file: str
    labeler: dict[str, LabelerResult]  # by the file's short name

    def as_dict(self) -> dict:
        return {"labels_file": self.labels_file, "labeler": labelers_dict(self.labeler)}


OPTIONAL = ("ensemble", "study_views", "labeler")  # no key in score.json when None


@dataclass(frozen=True)
class ScoreReport:
    """One predictions file (or an ensemble) scored (results.score), score.json's contents."""

    predictions: str  # --predictions, as given
    labels_file: str  # --labels
    ensemble: FileEnsemble | None  # several --predictions files: their mean
    reference: str  # the reference standard, in words
    unit: str  # "study" or "image": what a row is
    n_studies: int
    n_rows: int
    n_patients: int
    skipped: dict[str, int]  # "predictions_only", "reference_only" -> rows (--unmatched skip)
    labels: list[str]  # the labels scored
    masked: dict[str, int]  # label -> masked reference labels
    auc: dict[str, float | None]  # label -> AUC
    mean_auc: float | None  # the mean over every evaluable label
    competition5_auc: float | None  # the mean over the competition five
    report_card: LevelSummary  # evaluate.py's, from the same code
    radiologists: dict[str, dict[str, dict]]  # reader -> label -> point (readers_by_label's)
    radiologists_below_curve: dict[str, int | None]  # label -> readers below the ROC curve
    radiologists_below_pr_curve: dict[str, int | None]  # label -> below the PR curve
    readers_by_label: dict[str, dict]  # readers.compare_readers: label -> comparison
    compare: dict[str, dict[str, float | None]]  # --compare file -> label or mean -> B - A
    subgroups: dict  # subgroups.subgroup_table: {audit: {stratum: entry}}
    subgroup_comparisons: dict  # subgroups.Audit.multiplicity: the family Holm adjusts over
    compare_rows: dict[str, list[dict]]  # --compare file -> compare.paired_auc_differences rows
    compare_n: dict[str, int]  # --compare file -> rows both hold
    leaderboard: list[LeaderboardRow]  # best competition-five mean first
    intervals: dict  # intervals.interval_methods: what the intervals are
    bootstrap: ReadersBootstrap
    study_aggregation: str  # --study_aggregation: image predictions as studies
    min_positives: int
    study_views: dict | None = None  # image predictions aggregated: the films left out
    labeler: dict[str, LabelerResult] | None = None  # --labeler: by the file's short name
    # underdiagnosis.py (with --thresholds): as in eval_<split>.json
    underdiagnosis: dict = field(default_factory=dict)
    underdiagnosis_comparisons: dict = field(default_factory=dict)
    false_negative_rates: dict = field(default_factory=dict)
    false_negative_comparisons: dict = field(default_factory=dict)

    @property
    def per_study(self) -> bool:
        return self.unit == "study"

    def as_dict(self) -> dict:
        """score.json's contents (less "plots"), in its order; no key for an absent ensemble,
        study views or labeler table."""
        every = field_dict(self, ensemble=self.ensemble and self.ensemble.as_dict(),
                           report_card=self.report_card.as_dict(),
                           leaderboard=[row.as_dict() for row in self.leaderboard],
                           bootstrap=self.bootstrap.as_dict(),
                           labeler=self.labeler and labelers_dict(self.labeler))
        return {key: value for key, value in every.items()
                if key not in OPTIONAL or value is not None}
