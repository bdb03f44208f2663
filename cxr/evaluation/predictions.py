"""A checkpoint's predictions on a split, and the statistics evaluate.py and ablate.py report.

Every split is scored against its raw labels with uncertain (-1) masked (labels.evaluation_targets),
whatever the training policy; the val split fits each class's calibration map and thresholds.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cxr.data.augment import TTAModel
from cxr.data.demographics import join_demographics
from cxr.data.labels import masked_counts
from cxr.data.loading import make_loader
from cxr.data.splits import read_split
from cxr.errors import PipelineError
from cxr.evaluation.calibration import calibrated_logits, fit_calibration, mean_ece, \
    per_class_ece, sigmoid
from cxr.evaluation.compare import paired_auc_differences, verdict
from cxr.evaluation.ensemble import ensemble_logits
from cxr.evaluation.intervals import interval_methods, patient_codes, rate_interval
from cxr.evaluation.metrics import MEANS, STUDY_KEYS, aggregate_studies, summarise_level
from cxr.evaluation.ood import MIN_FILMS, FeatureTap, InputGate, fit_gate, write_gate
from cxr.evaluation.operating_points import choose_thresholds, operating_point_table
from cxr.evaluation.report import CalibrationSummary, EnsembleMember, EnsembleSummary, \
    EvaluationReport, InputGateSummary, LevelSummary, MemberMean, OperatingPoint
from cxr.evaluation.subgroups import subgroup_table
from cxr.evaluation.thresholds import thresholds_payload, write_thresholds
from cxr.evaluation.underdiagnosis import missed_audit
from cxr.training.checkpoint import Rebuild, checkpoint_warnings, load_checkpoint, model_id, \
    require_finite
from cxr.training.runtime import autocast, autocast_dtype, prepare_model, to_device

if TYPE_CHECKING:
    from config import Config

# dataset.make_dataset: (frame, trained config, data_dir, augment, name, labels=, use_cache=)
MakeDataset = Callable[..., Dataset]


@dataclass
class Predictions:
    """A split's predictions, aligned row by row with the split rows that were predicted.

    The one type every statistic reads (report, calibration, thresholds, --compare, ablate.py):
    raw scores of labelled rows. What predict.py and app.py show for files without labels is
    another thing, inference.PredictedFiles: calibrated probabilities and decisions, with the
    files that could not be read.
    """

    frame: pd.DataFrame
    logits: np.ndarray  # (rows, classes) float64, the positive-weight offset removed
    targets: np.ndarray  # (rows, classes) 0/1, NaN where the label is uncertain (masked)
    labels: tuple[str, ...]
    per_study: bool = False  # a study-mode model: one row per study (its first image's row)
    n_images: int | None = None  # the images behind the rows (None: one image per row)
    # labels the dataset does not annotate (all masked), with the note reports show for them
    not_labelled: dict[str, str] = field(default_factory=dict)
    # (rows, D) float32: the input gate's features (ood.FeatureTap), parts of feature_sizes
    # columns, each of length 1
    features: np.ndarray | None = None
    feature_sizes: tuple[int, ...] = ()

    @property
    def image_count(self) -> int:
        return len(self.frame) if self.n_images is None else self.n_images


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device,
                   dtype: torch.dtype | None, channels_last: bool, desc: str, show: bool = True,
                   model_name: str = "the model", features: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, GateFeatures | None]:
    """float32 logits and targets (on the CPU) for every image of a loader, in loader order,
    and with `features` the input gate's features (ood.FeatureTap; else None); NaN/inf outputs
    are an error naming `model_name`."""
    model.eval()
    outputs, targets, pooled = [], [], []
    with FeatureTap(model) if features else contextlib.nullcontext() as tap:
        for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False,
                                   disable=not show):
            with autocast(device, dtype):
                logits = model(to_device(images, device, channels_last))
            outputs.append(logits.float().cpu())
            if tap is not None:
                pooled.append(tap.take(len(logits)).cpu())
            targets.append(labels)
    logits = torch.cat(outputs)
    require_finite(logits, model_name)
    return logits, torch.cat(targets), \
        GateFeatures(torch.cat(pooled), tap.sizes) if features else None


class GateFeatures(NamedTuple):
    values: torch.Tensor  # rows x D
    sizes: tuple[int, ...]  # the widths of its parts (ood.FeatureTap.sizes)


# ---- predictions of a split -------------------------------------------------------------------

def load_model(path: Path, cfg: Config, device: torch.device, *, rebuild: Rebuild):
    """(model ready for inference, wrapped for TTA when --tta, its checkpoint, its trained Config)."""
    checkpoint = load_checkpoint(path)
    try:
        model, trained = rebuild(checkpoint)
    except PipelineError as err:
        raise PipelineError(f"checkpoint {path}: {err}; evaluate it with the code it was "
                            "trained with") from None
    for warning in checkpoint_warnings(checkpoint):
        print(f"warning: {path}: {warning}", file=sys.stderr)
    model = prepare_model(model, device, cfg)
    return (TTAModel(model) if cfg.tta else model), checkpoint, trained


def predict_split(model, split: str, path: Path, checkpoint: dict, trained: Config, cfg: Config,
                  device: torch.device, *, make_dataset: MakeDataset) -> Predictions:
    labels = tuple(checkpoint["labels"])
    frame = read_split(cfg.splits_dir / f"{split}.csv", labels)
    return predict_frame(model, frame, split, path, checkpoint, trained, cfg, device,
                         not_labelled=recorded_not_labelled(cfg, labels), make_dataset=make_dataset)


def predict_frame(model, frame: pd.DataFrame, name: str, path: Path, checkpoint: dict,
                  trained: Config, cfg: Config, device: torch.device, use_cache: bool = True,
                  not_labelled: dict[str, str] | None = None, *, make_dataset: MakeDataset
                  ) -> Predictions:
    """The checkpoint's predictions on the rows of `frame` (a split, or another dataset's), read
    by `make_dataset` (dataset.make_dataset, handed in by the script)."""
    labels = tuple(checkpoint["labels"])
    data = make_dataset(frame, trained, cfg.data_dir, augment=False, name=name, labels=labels,
                        use_cache=cfg.use_cache and use_cache)
    # The rows in the dataset's order (a study model: each study's first image's row).
    frame = frame.iloc[pd.Index(frame["image_path"]).get_indexer(data.paths)].reset_index(drop=True)
    loader = make_loader(data, cfg, train=False, device=device)
    try:
        logits, targets, features = predict_logits(
            model, loader, device, autocast_dtype(cfg.precision, device), cfg.channels_last,
            desc=f"evaluate {name}", model_name="the checkpoint", features=True)
    except PipelineError as err:  # add which checkpoint was being evaluated
        raise PipelineError(f"evaluating {path} on {name}: {err}") from None
    per_study = trained.view_mode == "study"
    return Predictions(frame, logits.double().numpy(), targets.double().numpy(), labels,
                       per_study=per_study,
                       n_images=sum(map(len, data.studies)) if per_study else None,
                       not_labelled=not_labelled or {}, features=features.values.numpy(),
                       feature_sizes=features.sizes)


def recorded_not_labelled(cfg: Config, labels: tuple[str, ...]) -> dict[str, str]:
    """The labels the dataset in --data_dir does not annotate (preprocess.py --dataset nih
    records them in stats.json), each with the note reports show: {} for CheXpert."""
    stats = cfg.processed_dir / "stats.json"
    recorded = json.loads(stats.read_text()) if stats.is_file() else {}
    note = recorded.get("not_labelled_note", "")
    return {label: note for label in recorded.get("not_labelled", []) if label in labels}


# ---- statistics of one split ----------------------------------------------------------------------

def calibration_summary(preds: Predictions, calibration: dict, probs: np.ndarray, cfg: Config
                        ) -> CalibrationSummary:
    """ECE per class after the calibration map and before it (the model's own probabilities,
    positive-weight offset removed), with the map itself."""
    labels, targets, bins = preds.labels, preds.targets, cfg.calibration_bins
    ece = per_class_ece(targets, probs, labels, bins)
    before = per_class_ece(targets, sigmoid(preds.logits), labels, bins)
    return CalibrationSummary(bins, calibration["method"], "val", calibration["parameters"], ece,
                              mean_ece(ece), before, mean_ece(before))


def level_summaries(preds: Predictions, scores: np.ndarray, probs: np.ndarray, cfg: Config
                    ) -> tuple[LevelSummary, LevelSummary, pd.DataFrame]:
    """(images, studies, the studies' keys): the report card of the rows as predicted, and of
    the studies (an image model's images aggregated by --study_aggregation)."""
    labels, targets, unlabelled = preds.labels, preds.targets, preds.not_labelled
    studies, study_probs, study_targets = aggregate_studies(preds.frame, probs, targets,
                                                            cfg.study_aggregation)
    image = summarise_level(scores, targets, preds.frame["patient_id"], labels, cfg, unlabelled)
    study = summarise_level(study_probs, study_targets, studies["patient_id"], labels, cfg,
                            unlabelled)
    return (LevelSummary.from_dict(image),
            LevelSummary.from_dict({"aggregation": cfg.study_aggregation, **study}), studies)


def evaluate_predictions(preds: Predictions, thresholds: dict, calibration: dict, cfg: Config,
                         *, split: str, checkpoint: str, epoch: int | None,
                         gate: InputGate | None = None) -> EvaluationReport:
    """Image- and study-level metrics, calibration and operating points of one split, the
    predictions of `checkpoint` (a path, or an ensemble's folder) at `epoch`.

    `calibration` is {"method", "parameters"} fitted on val, `gate` the input gate (the share
    of the rows it flags is reported, except on val). AUCs rank the calibrated logits
    (float64: no sigmoid saturating into ties), which order the images as the probabilities do.
    """
    labels, targets, unlabelled = preds.labels, preds.targets, preds.not_labelled
    scores = calibrated_logits(preds.logits, calibration["parameters"], labels)
    probs = sigmoid(scores)
    image, study, studies = level_summaries(preds, scores, probs, cfg)
    audited = [c for c, label in enumerate(labels) if label not in unlabelled]
    frame, demographic, read = join_demographics(preds.frame, cfg)
    audit = subgroup_table(scores[:, audited], targets[:, audited], frame,
                           tuple(labels[c] for c in audited), cfg.ci_level, cfg.min_positives,
                           cfg.age_bands, demographic)
    missed = missed_audit(probs, targets, labels, thresholds["youden"], frame, demographic, cfg,
                          "thresholds.json: the Youden thresholds fitted on val")
    points = operating_point_table(targets, probs, labels, thresholds, preds.frame["patient_id"],
                                   cfg.ci_level)
    return EvaluationReport(
        split=split, checkpoint=checkpoint, epoch=epoch, n_images=preds.image_count,
        n_patients=int(preds.frame["patient_id"].nunique()), n_studies=len(studies),
        unit="study" if preds.per_study else "image",  # what one prediction is of
        reference="raw labels, uncertain (-1) masked",
        masked_uncertain=masked_counts(targets, labels),
        auc={label: image.classes[label].auc for label in labels},
        mean_auc=image.means["all"].auc, image=image, study=study,
        calibration=calibration_summary(preds, calibration, probs, cfg),
        operating_points=[OperatingPoint.from_dict(point) for point in points],
        intervals=interval_methods(cfg.ci_level), min_positives=cfg.min_positives, tta=cfg.tta,
        not_labelled=unlabelled, subgroups=audit.table,
        subgroup_comparisons={**audit.multiplicity(cfg.ci_level),
                              **({"demographics": read} if read else {})},
        **missed.report_fields(),
        input_gate=None if split == "val" else gate_summary(preds, gate, cfg.ci_level))


def val_calibration(val: Predictions, cfg: Config) -> dict:
    """Each class's --calibration map fitted on the val split: {"method", "parameters"}."""
    return {"method": cfg.calibration,
            "parameters": fit_calibration(val.logits, val.targets, val.labels, cfg.calibration)}


def fit_on_val(val: Predictions, path: Path, checkpoint: dict, trained: Config, cfg: Config
               ) -> tuple[dict, dict, InputGate | None]:
    """Each class's calibration map and its thresholds from the val split (uncertain masked),
    and the input gate from its features; thresholds.json (and the gate's ood.npz), bound to
    these weights and saying how the scores were made."""
    scores = {"tta": cfg.tta, "view_mode": trained.view_mode,
              "logit_offset_removed": "logit_offset" in checkpoint["model"]}
    return fit_and_write_thresholds(val, path, model_id(checkpoint), scores, cfg)


def fit_and_write_thresholds(val: Predictions, path: Path, weights_id: str, scores: dict,
                             cfg: Config) -> tuple[dict, dict, InputGate | None]:
    """fit_on_val for any predictor (a checkpoint, an ensemble): thresholds.json beside `path`,
    bound to `weights_id`."""
    calibration = val_calibration(val, cfg)
    probs = sigmoid(calibrated_logits(val.logits, calibration["parameters"], val.labels))
    thresholds = choose_thresholds(val.targets, probs, val.labels, cfg.target_sensitivity)
    payload = thresholds_payload(path, weights_id, val.labels, thresholds,
                                 cfg.target_sensitivity, calibration, scores,
                                 masked_counts(val.targets, val.labels))
    gate = val_gate(val, cfg)
    if gate is not None:
        payload["input_gate"] = write_gate(gate, path.parent)
    write_thresholds(payload, path.parent / "thresholds.json")
    return thresholds, calibration, gate


def val_gate(val: Predictions, cfg: Config) -> InputGate | None:
    """The input gate of val's pooled features (ood.fit_gate), None (with a warning) when val is
    too small for one."""
    gate = None
    if val.features is not None:
        gate = fit_gate(val.features, val.frame["patient_id"].to_numpy(), cfg.ood_quantile,
                        sizes=val.feature_sizes)
    if gate is None:
        print("warning: no input gate: the val split is too small to fit one (fewer than "
              f"{MIN_FILMS} films or one patient); predict.py will not flag films outside the "
              "training distribution", file=sys.stderr)
    return gate


def gate_summary(preds: Predictions, gate: InputGate | None, level: float
                 ) -> InputGateSummary | None:
    """How many of the split's rows the gate flags as outside the training distribution, with
    the share's interval (clustered by patient): measured on test and on another dataset (val,
    where the gate is fitted, gets none: its threshold is val's own held-out quantile)."""
    if gate is None or preds.features is None:
        return None
    outside = ~gate.inside(gate.scores(preds.features))
    codes, n_patients = patient_codes(preds.frame["patient_id"])
    everyone = np.ones(len(outside), dtype=bool)
    return InputGateSummary(gate.method, gate.threshold, gate.quantile, gate.n_films,
                            len(outside), int(outside.sum()), float(outside.mean()),
                            rate_interval(everyone, outside, codes, n_patients, level))


# ---- two runs on the same rows --------------------------------------------------------------------

def resolve_run(text: str, cfg: Config) -> Path:
    """A checkpoint file, a run folder (its best.pth), or a run name under --models_dir."""
    for candidate in (Path(text), Path(cfg.models_dir) / text):
        if candidate.is_file():
            return candidate
        if (candidate / "best.pth").is_file():
            return candidate / "best.pth"
    raise PipelineError(f"--compare: {text!r} is neither a checkpoint file nor a run folder "
                        f"holding best.pth (looked in . and {cfg.models_dir}/)")


def run_label(path: Path) -> str:
    """models/run-a/best.pth -> run-a; models/run-a/last.pth -> run-a-last."""
    return path.parent.name if path.name == "best.pth" else f"{path.parent.name}-{path.stem}"


@dataclass
class Paired:
    """Two runs' scores (logits, or study probabilities) on the rows both predicted."""

    frame: pd.DataFrame  # image_path or (patient_id, study_id), and patient_id
    scores_a: np.ndarray
    scores_b: np.ndarray
    targets: np.ndarray
    unit: str  # "images" or "studies"


def study_rows(p: Predictions, aggregation: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(study keys, probabilities, targets): a study model's rows as they are, an image model's
    images aggregated to studies as the report's study level does (--study_aggregation)."""
    probs = sigmoid(p.logits)
    if p.per_study:
        return p.frame[list(STUDY_KEYS)].astype(str).reset_index(drop=True), probs, p.targets
    studies, probs, targets = aggregate_studies(p.frame, probs, p.targets, aggregation)
    return studies[list(STUDY_KEYS)], probs, targets


def paired(a: Predictions, b: Predictions, aggregation: str, per_study: bool = False) -> Paired:
    """Both runs on the same rows: images, or studies when `per_study` or either run predicts
    studies (an image model's images are then aggregated to studies, so both are scored on the
    same unit)."""
    if a.labels != b.labels:
        raise PipelineError(f"--compare: the two checkpoints predict different labels "
                            f"({list(a.labels)} vs {list(b.labels)})")
    if per_study or a.per_study or b.per_study:
        unit, keys = "studies", list(STUDY_KEYS)
        (frame_a, scores_a, targets_a), (frame_b, scores_b, _) = (study_rows(p, aggregation)
                                                                 for p in (a, b))
    else:
        unit, keys = "images", ["image_path"]
        # images: the logits rank them as the probabilities do, without saturating into ties
        frame_a, scores_a, targets_a = a.frame, a.logits, a.targets
        frame_b, scores_b = b.frame, b.logits
    index_a = pd.MultiIndex.from_frame(frame_a[keys].reset_index(drop=True))
    index_b = pd.MultiIndex.from_frame(frame_b[keys].reset_index(drop=True))
    common = index_a[index_a.isin(index_b)]
    if len(common) < max(len(index_a), len(index_b)):
        print(f"compare: {len(common)} {unit} predicted by both runs are compared")
    rows_a, rows_b = index_a.get_indexer(common), index_b.get_indexer(common)
    frame = frame_a.iloc[rows_a].reset_index(drop=True)
    return Paired(frame, scores_a[rows_a], scores_b[rows_b], targets_a[rows_a], unit)


def paired_differences(a: Predictions, b: Predictions, cfg: Config, per_study: bool = False
                       ) -> tuple[list[dict], Paired]:
    """compare.py's rows of B - A (per class, then the means, with paired intervals)."""
    both = paired(a, b, cfg.study_aggregation, per_study)
    rows = paired_auc_differences(both.scores_a, both.scores_b, both.targets,
                                  both.frame["patient_id"], a.labels, cfg.ci_level,
                                  cfg.min_positives)
    return rows, both


# ---- an ensemble's predictions (cxr/evaluation/ensemble.py) ------------------------------------

def combined_predictions(members: list[Predictions], calibrations: list[dict]) -> Predictions:
    """The ensemble's predictions on a split: the logit of the mean of the members' calibrated
    probabilities, on the rows every member predicted in the same order."""
    first = members[0]
    for other in members[1:]:
        if not first.frame["image_path"].reset_index(drop=True).equals(
                other.frame["image_path"].reset_index(drop=True)):
            raise PipelineError("the ensemble's members predicted different rows of the split "
                                "(trained on other data?)")
    logits = ensemble_logits([m.logits for m in members],
                             [c["parameters"] for c in calibrations], first.labels)
    features, sizes = None, ()  # the members', as ood.FeatureTap taps an EnsembleModel
    if all(m.features is not None for m in members):
        features = np.concatenate([m.features for m in members], axis=1)
        sizes = tuple(size for m in members for size in m.feature_sizes)
    return Predictions(first.frame, logits, first.targets, first.labels, first.per_study,
                       first.n_images, first.not_labelled, features, sizes)


def member_means(differences: list[dict]) -> dict[str, MemberMean]:
    """The means of compare.py's rows of ensemble - member, by metrics.MEANS key."""
    means = {}
    for key, title, _ in MEANS:
        row = next((r for r in differences if r["pathology"].startswith(f"{title} (")), None)
        if row is not None:
            means[key] = MemberMean(row["pathology"], row["auc_a"], row["auc_b"],
                                    row["difference"], row["ci_low"], row["ci_high"],
                                    verdict(row["ci_low"], row["ci_high"], "ensemble better",
                                            "member better"))
    return means


def members_beside(members: list[Predictions], ensemble: Predictions, paths: list[Path],
                   member_ids: list[str], cfg: Config) -> EnsembleSummary:
    """Each member's mean AUCs beside the ensemble's, with the paired interval of ensemble -
    member (compare.py: paired over the same patients)."""
    rows = []
    for preds, path, member_id in zip(members, paths, member_ids):
        differences, both = paired_differences(preds, ensemble, cfg)
        per_class = {r["pathology"]: {"member": r["auc_a"], "difference": r["difference"],
                                      "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
                     for r in differences if r["pathology"] in ensemble.labels}
        rows.append(EnsembleMember(str(path), member_id, member_means(differences), per_class,
                                   both.unit))
    return EnsembleSummary(rows, "mean of the members' calibrated probabilities",
                           "each member's fitted on its val predictions (ensemble.json)")
