"""The result of evaluating one split, typed: what evaluate.py computes and cxr.reporting renders.

    EvaluationReport    one split's report (eval_<split>.json): counts, the image and study
                        levels, calibration, operating points, the subgroup audit, and for an
                        ensemble or another dataset what they add
    LevelSummary        metrics.summarise() of the images or of the studies: each class, the means
    CalibrationSummary  ECE after the val-fitted map and before it, with the map
    OperatingPoint      a val threshold applied to this split (thresholds.operating_point_table)
    EnsembleSummary     an ensemble's members beside it (predictions.members_beside)
    ExternalDataset     what another dataset's rows are (external.dataset_record)
    InputGateSummary    the share of the rows the input gate flags (predictions.gate_summary)
    Recalibration       a site's calibration and thresholds refitted on half its patients, the
                        other half scored before and after (recalibration.recalibration_summary)

Each type's as_dict() gives its part of eval_<split>.json, its keys in the file's order, and
from_dict() reads it back. The subgroup audit (subgroups.subgroup_table) and the interval methods
(intervals.interval_methods) stay the dicts their modules make, shared with score.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from cxr.evaluation.intervals import Interval


def field_dict(instance, **replaced) -> dict:
    """Every field by name, in declaration order; `replaced` values take their field's place."""
    return {f.name: replaced.get(f.name, getattr(instance, f.name)) for f in fields(instance)}


def interval_from_dict(data: dict) -> Interval:
    """An Interval from its as_dict() ({"low", "high", "method", "note"})."""
    return Interval(data["low"], data["high"], data["method"], data["note"])


class WithInterval:
    """A summary whose `ci` is an Interval: its JSON holds the interval's as_dict()."""

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**{**data, "ci": interval_from_dict(data["ci"])})

    def as_dict(self) -> dict:
        return field_dict(self, ci=self.ci.as_dict())


# ---- one level: images or studies ----------------------------------------------------------------

@dataclass(frozen=True)
class ClassSummary(WithInterval):
    """One class of a level (metrics.summarise's "classes" entry)."""

    auc: float | None
    ci: Interval
    ci_note: str  # "approximate: ..." or why there is no interval; "" otherwise
    auprc: float | None
    prevalence: float | None
    positives: int
    negatives: int
    masked: int  # uncertain labels, left out
    in_means: bool
    status: str  # the report card's word ("Good", "n/a: ...")


@dataclass(frozen=True)
class MeanSummary(WithInterval):
    """A mean of the classes' AUCs (metrics.MEANS: all classes, the competition five)."""

    name: str  # "AVERAGE"
    title: str  # "AVERAGE (13 of 14 classes)"
    classes: list[str]  # the classes averaged
    left_out: dict[str, str]  # class -> why it is not in the mean
    auc: float | None
    auprc: float | None
    prevalence: float | None
    ci: Interval
    ci_note: str


@dataclass(frozen=True)
class LevelSummary:
    """The report card of one level: every class and the means (metrics.summarise)."""

    n: int  # rows scored: images, or studies
    classes: dict[str, ClassSummary]
    means: dict[str, MeanSummary]  # by metrics.MEANS key ("all", "competition")
    aggregation: str | None = None  # the study level of an image model: "max" or "mean"

    @classmethod
    def from_dict(cls, data: dict) -> LevelSummary:
        return cls(data["n"],
                   {label: ClassSummary.from_dict(values)
                    for label, values in data["classes"].items()},
                   {key: MeanSummary.from_dict(mean) for key, mean in data["means"].items()},
                   data.get("aggregation"))

    def as_dict(self) -> dict:
        return {**({} if self.aggregation is None else {"aggregation": self.aggregation}),
                "n": self.n,
                "classes": {label: values.as_dict() for label, values in self.classes.items()},
                "means": {key: mean.as_dict() for key, mean in self.means.items()}}

    @property
    def left_out(self) -> dict[str, str]:
        """The classes the means leave out, with why (the first mean's: it averages them all)."""
        first = next(iter(self.means.values()), None)
        return first.left_out if first else {}


# ---- calibration and operating points ------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationSummary:
    """Each class's ECE after the calibration map fitted on val and before it, with the map."""

    bins: int
    method: str  # "platt", "temperature" or "none"
    fitted_on: str  # "val"
    parameters: dict[str, dict[str, float] | None] | None  # class -> {"scale", "bias"}
    ece: dict[str, float | None]
    mean_ece: float | None
    ece_uncalibrated: dict[str, float | None]
    mean_ece_uncalibrated: float | None

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationSummary:
        return cls(**data)

    def as_dict(self) -> dict:
        return field_dict(self)


RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")


@dataclass(frozen=True)
class OperatingPoint:
    """One class's val threshold (one method) applied to this split; only the threshold, None,
    when val held one label value."""

    pathology: str
    method: str  # "youden" or "target_sensitivity"
    threshold: float | None
    sensitivity: float | None = None
    specificity: float | None = None
    ppv: float | None = None
    npv: float | None = None
    f1: float | None = None
    tp: int | None = None
    fp: int | None = None
    tn: int | None = None
    fn: int | None = None
    sensitivity_ci: list[float | None] | None = None
    specificity_ci: list[float | None] | None = None

    @classmethod
    def from_dict(cls, data: dict) -> OperatingPoint:
        return cls(**data)

    def as_dict(self) -> dict:
        every = field_dict(self)
        return every if self.threshold is not None else \
            {key: every[key] for key in ("pathology", "method", "threshold")}


# ---- what an ensemble and another dataset add ----------------------------------------------------

@dataclass(frozen=True)
class MemberMean:
    """A mean AUC of one member beside the ensemble's, and ensemble - member (paired)."""

    name: str
    member: float | None
    ensemble: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str

    def as_dict(self) -> dict:
        return field_dict(self)


@dataclass(frozen=True)
class EnsembleMember:
    checkpoint: str
    model_id: str
    means: dict[str, MemberMean]  # by metrics.MEANS key, where both are scored
    per_class: dict[str, dict]  # class -> {"member", "difference", "ci_low", "ci_high"}
    unit: str  # "images" or "studies": what the pairing was over

    @classmethod
    def from_dict(cls, data: dict) -> EnsembleMember:
        return cls(**{**data, "means": {key: MemberMean(**mean)
                                        for key, mean in data["means"].items()}})

    def as_dict(self) -> dict:
        return field_dict(self, means={key: mean.as_dict() for key, mean in self.means.items()})


@dataclass(frozen=True)
class EnsembleSummary:
    members: list[EnsembleMember]
    combination: str  # how the members' predictions are combined
    calibration: str  # where each member's calibration comes from

    @classmethod
    def from_dict(cls, data: dict) -> EnsembleSummary:
        return cls([EnsembleMember.from_dict(member) for member in data["members"]],
                   data["combination"], data["calibration"])

    def as_dict(self) -> dict:
        return field_dict(self, members=[member.as_dict() for member in self.members])


@dataclass(frozen=True)
class ExternalDataset:
    """evaluate.py --dataset: which dataset's rows were scored, against which reference."""

    name: str  # "nih", "mimic", "padchest"
    title: str  # "NIH ChestX-ray14"
    data_root: str
    split: str  # "all" or "test"
    sources: list[str]
    not_labelled: list[str]  # labels the dataset does not annotate: n/a
    label_sources: dict[str, int]  # who labelled the rows read -> rows
    label_hierarchy: str  # the --label_hierarchy applied (the training data's own)
    hierarchy_filled: dict[str, int]  # parent -> labels the hierarchy set
    masked: dict[str, int]  # reason -> rows kept with every label masked
    skipped: dict[str, int]  # reason -> rows left out
    missing_images_skipped: int  # rows whose image is missing (--missing_images skip)
    unmapped_terms: dict[str, int]  # report terms outside the mapping -> rows

    @classmethod
    def from_dict(cls, data: dict) -> ExternalDataset:
        return cls(**data)

    def as_dict(self) -> dict:
        return field_dict(self)


@dataclass(frozen=True)
class InputGateSummary(WithInterval):
    """The share of a split's rows the input gate flags as outside the training distribution
    (predictions.gate_summary; the gate is ood.InputGate, fitted on val)."""

    method: str  # "knn" or "mahalanobis"
    threshold: float
    quantile: float  # the val quantile the threshold is: 1 - quantile is the share expected
    n_fit: int  # val films the gate was fitted on
    n: int  # rows of this split
    flagged: int  # rows above the threshold
    rate: float
    ci: Interval  # the rate's, clustered by patient


@dataclass(frozen=True)
class Recalibration:
    """evaluate.py --dataset ... --recalibrate: each class's calibration map and thresholds refitted
    on the fitting half of the site's patients; the scoring half (the other patients) evaluated
    with val's ("before") and with the site's ("after"). The maps are monotone, so each class's
    AUC is the same before and after; the ECE and the operating points move."""

    dataset: str  # the report's name: "nih", "nih_test"
    fitted_on: str  # "nih: fitting half (202 images, 202 patients)"
    thresholds_file: str  # the site's thresholds file written (predict.py --thresholds FILE)
    method: str  # the calibration refitted ("none": only the thresholds are)
    kept_from_val: list[str]  # classes the fitting half cannot fit (one label value): val's
    share: float  # of the site's patients in the fitting half (--recalibration_share)
    seed: int  # seeds the split of the patients (--seed)
    n_fit: int  # images of the fitting half
    n_score: int  # images of the scoring half
    n_fit_patients: int
    n_score_patients: int
    bins: int  # the ECE's equal-width bins (--calibration_bins)
    ece_before: float | None  # mean ECE over the classes on the scoring half, val's maps
    ece_after: float | None  # the same with the site's maps
    mean_auc_before: float | None  # the report card's mean AUC of the scoring half
    mean_auc_after: float | None  # the same (equal up to rounding: the maps are monotone)
    ece_per_class: dict[str, dict[str, float | None]]  # class -> {"before", "after"}
    auc_per_class: dict[str, dict[str, float | None]]  # class -> {"before", "after"}
    # method -> {"classes", "sensitivity_before", "sensitivity_after", "specificity_before",
    # "specificity_after"}: means over the classes scored both before and after
    mean_rates: dict[str, dict]
    # {"before": val's thresholds, "after": the site's}, each applied to the scoring half
    operating_points: dict[str, list[OperatingPoint]]

    @classmethod
    def from_dict(cls, data: dict) -> Recalibration:
        return cls(**{**data, "operating_points": {
            when: [OperatingPoint.from_dict(point) for point in points]
            for when, points in data["operating_points"].items()}})

    def as_dict(self) -> dict:
        return field_dict(self, operating_points={
            when: [point.as_dict() for point in points]
            for when, points in self.operating_points.items()})


# ---- the report of one split ---------------------------------------------------------------------

# parts a report may lack: no key in its JSON
OPTIONAL = ("ensemble", "dataset", "input_gate", "recalibration")


@dataclass(frozen=True)
class EvaluationReport:
    """One split's evaluation (predictions.evaluate_predictions), eval_<split>.json's contents."""

    split: str  # "val", "test", or another dataset's name ("nih", "nih_test")
    checkpoint: str  # the checkpoint's path, or the ensemble's folder
    epoch: int | None  # the checkpoint's epoch (None for an ensemble)
    n_images: int
    n_patients: int
    n_studies: int
    unit: str  # what one prediction is of: "image", or "study" (a study-mode model)
    reference: str  # the reference standard
    masked_uncertain: dict[str, int]  # class -> uncertain labels masked
    auc: dict[str, float | None]  # class -> image-level AUC
    mean_auc: float | None  # the mean over all evaluable classes
    image: LevelSummary
    study: LevelSummary  # with its aggregation
    calibration: CalibrationSummary
    operating_points: list[OperatingPoint]
    intervals: dict  # intervals.interval_methods: what the intervals are
    min_positives: int
    tta: bool
    not_labelled: dict[str, str]  # labels the dataset does not annotate -> the note shown
    subgroups: dict  # subgroups.subgroup_table: {audit: {stratum: entry}}
    subgroup_comparisons: dict  # subgroups.Audit.multiplicity: the family Holm adjusts over
    # underdiagnosis.py: No Finding called among films with a finding, by stratum, and each
    # finding's false-negative rate by stratum, with their operating points and families
    underdiagnosis: dict = field(default_factory=dict)
    underdiagnosis_comparisons: dict = field(default_factory=dict)
    false_negative_rates: dict = field(default_factory=dict)
    false_negative_comparisons: dict = field(default_factory=dict)
    ensemble: EnsembleSummary | None = None  # an ensemble's members beside it
    dataset: ExternalDataset | None = None  # evaluate.py --dataset: the other dataset
    input_gate: InputGateSummary | None = None  # the share flagged outside the distribution
    recalibration: Recalibration | None = None  # --recalibrate: the site's refit, before/after

    @property
    def per_study(self) -> bool:
        """A study-mode model's report: one prediction per study, its views fused by the model."""
        return self.unit == "study"

    def level(self, name: str) -> LevelSummary:
        """The report card of "image" or "study"."""
        return {"image": self.image, "study": self.study}[name]

    def as_dict(self) -> dict:
        """eval_<split>.json's contents (less "plots"), in its order; no key for an absent
        ensemble or dataset."""
        every = field_dict(self, image=self.image.as_dict(), study=self.study.as_dict(),
                        calibration=self.calibration.as_dict(),
                        operating_points=[point.as_dict() for point in self.operating_points],
                        ensemble=self.ensemble and self.ensemble.as_dict(),
                        dataset=self.dataset and self.dataset.as_dict(),
                        input_gate=self.input_gate and self.input_gate.as_dict(),
                        recalibration=self.recalibration and self.recalibration.as_dict())
        return {key: value for key, value in every.items()
                if key not in OPTIONAL or value is not None}

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationReport:
        """The report an eval_<split>.json holds (its "plots" are the figures' names, not read)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(**{**values, "image": LevelSummary.from_dict(data["image"]),
                      "study": LevelSummary.from_dict(data["study"]),
                      "calibration": CalibrationSummary.from_dict(data["calibration"]),
                      "operating_points": [OperatingPoint.from_dict(point)
                                           for point in data["operating_points"]],
                      "ensemble": data.get("ensemble") and
                      EnsembleSummary.from_dict(data["ensemble"]),
                      "dataset": data.get("dataset") and
                      ExternalDataset.from_dict(data["dataset"]),
                      "input_gate": data.get("input_gate") and
                      InputGateSummary.from_dict(data["input_gate"]),
                      "recalibration": data.get("recalibration") and
                      Recalibration.from_dict(data["recalibration"])})
