"""Evaluation report of a checkpoint on the val and test splits, or a comparison of two runs.

    python evaluate.py [--checkpoint models/RUN/best.pth] [--calibration platt] [--tta true]
    python evaluate.py --compare RUN_A RUN_B [--compare_split test]

Reads  the checkpoint (default: --run_name's best.pth, else the newest models/*/best.pth) and
       <data_dir>/splits/val.csv, test.csv. The model is rebuilt from the checkpoint's own config,
       labels, pixel stats and positive-weight offset.
Every split is scored against its raw labels with uncertain (-1) masked, whatever the training
policy (CheXpert's test split, labelled by radiologists, has none). The val split fits each class's
calibration map (--calibration) and the thresholds; test is only scored.
Writes next to the checkpoint:
       thresholds.json             the calibration and the operating points chosen on val
                                   (Youden's J and the threshold reaching --target_sensitivity),
                                   bound to the checkpoint's weights (model_id) and saying how
                                   the scores were made (TTA, view mode)
       eval_<split>.json/.md/.csv  per class: AUC with a patient-bootstrap interval, AUPRC,
                                   prevalence, masked labels, study-level AUC, ECE, the val
                                   thresholds' sensitivity, specificity, PPV, NPV, F1; the means
                                   over the classes with at least --min_positives positives
                                   and negatives, over all and over the competition five
       roc_<split>.png, pr_<split>.png, reliability_<split>.png   (embedded in eval_<split>.md)
With --compare RUN_A RUN_B (a run folder under --models_dir, or a checkpoint path): per-class AUC
differences B - A with paired patient-bootstrap intervals on --compare_split, printed and written
to <B's folder>/compare_<split>_vs_<A>.{csv,md}.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bootstrap import BootstrapAUCs, bootstrap_aucs
from calibration import calibrated_logits, fit_calibration, mean_ece, per_class_ece, sigmoid
from checkpoints import checkpoint_warnings, load_checkpoint, model_from_checkpoint, model_id, \
    newest_checkpoint
from compare import format_comparison, format_comparison_markdown, paired_auc_differences
from config import Config, ConfigError, PipelineError, given_fields, run_cli
from dataset import check_data_options, make_dataset, make_loader, read_split
from engine import autocast_dtype, choose_device, predict_logits, prepare_model
from fileio import write_csv_atomic, write_text_atomic
from labels import masked_counts
from metrics import STUDY_KEYS, aggregate_studies, summarise
from operating_points import choose_thresholds, operating_point_table, thresholds_payload, \
    write_thresholds
from plots import pr_grid, reliability_grid, roc_grid
from report import print_report, write_reports
from tta import TTAModel

SPLITS = ("val", "test")  # val first: it fits the calibration and the thresholds


@dataclass
class Predictions:
    """A split's predictions, aligned row by row with the split rows that were predicted."""

    frame: pd.DataFrame
    logits: np.ndarray  # (rows, classes) float64, the positive-weight offset removed
    targets: np.ndarray  # (rows, classes) 0/1, NaN where the label is uncertain (masked)
    labels: tuple[str, ...]
    per_study: bool = False  # a study-mode model: one row per study (its first image's row)
    n_images: int | None = None  # the images behind the rows (None: one image per row)

    @property
    def image_count(self) -> int:
        return len(self.frame) if self.n_images is None else self.n_images


# ---- predictions --------------------------------------------------------------------------------

def check_finite(logits: np.ndarray, checkpoint: Path, split: str) -> None:
    bad = ~np.isfinite(logits)
    if bad.any():
        raise PipelineError(f"checkpoint {checkpoint} gives NaN/inf predictions for "
                            f"{int(bad.any(axis=1).sum())} image(s) of the {split} split: its "
                            "weights are broken (diverged training?); use an earlier checkpoint")


def load_model(path: Path, cfg: Config, device: torch.device):
    """(model ready for inference, wrapped for TTA when --tta, its checkpoint, its trained Config)."""
    checkpoint = load_checkpoint(path)
    try:
        model, trained = model_from_checkpoint(checkpoint)
    except PipelineError as err:
        raise PipelineError(f"checkpoint {path}: {err}; evaluate it with the code it was "
                            "trained with") from None
    for warning in checkpoint_warnings(checkpoint):
        print(f"warning: {path}: {warning}", file=sys.stderr)
    model = prepare_model(model, device, cfg)
    return (TTAModel(model) if cfg.tta else model), checkpoint, trained


def predict_split(model, split: str, path: Path, checkpoint: dict, trained: Config, cfg: Config,
                  device: torch.device) -> Predictions:
    labels = tuple(checkpoint["labels"])
    frame = read_split(cfg.splits_dir / f"{split}.csv", labels)
    data = make_dataset(frame, trained, cfg.data_dir, augment=False, name=split, labels=labels,
                        use_cache=cfg.use_cache)
    # The split's rows in the dataset's order (a study model: each study's first image's row).
    frame = frame.iloc[pd.Index(frame["image_path"]).get_indexer(data.paths)].reset_index(drop=True)
    loader = make_loader(data, cfg, train=False, device=device)
    try:
        logits, targets = predict_logits(model, loader, device,
                                         autocast_dtype(cfg.precision, device),
                                         cfg.channels_last, desc=f"evaluate {split}")
    except PipelineError as err:  # add which checkpoint was being evaluated
        raise PipelineError(f"evaluating {path} on the {split} split: {err}") from None
    check_finite(logits.numpy(), path, split)
    per_study = trained.view_mode == "study"
    return Predictions(frame, logits.double().numpy(), targets.double().numpy(), labels,
                       per_study=per_study,
                       n_images=sum(map(len, data.studies)) if per_study else None)


# ---- statistics of one split ----------------------------------------------------------------------

def bootstrap_matrix(scores: np.ndarray, targets: np.ndarray, patient_ids: pd.Series, cfg: Config
                     ) -> tuple[BootstrapAUCs | None, str]:
    """Per-resample AUCs of the patient bootstrap, or None and why there are no intervals."""
    if cfg.bootstrap_resamples == 0:
        return None, "no interval: --bootstrap_resamples 0"
    if patient_ids.nunique() < 2:
        return None, "n/a: one patient in this split, no patient bootstrap"
    return bootstrap_aucs(scores, targets, patient_ids, cfg.bootstrap_resamples, cfg.seed), ""


def summarise_level(scores: np.ndarray, targets: np.ndarray, patient_ids: pd.Series,
                    labels: tuple[str, ...], cfg: Config) -> dict:
    boot, note = bootstrap_matrix(scores, targets, patient_ids, cfg)
    return summarise(scores, targets, labels, boot, cfg.ci_level, note, cfg.min_positives)


def calibration_summary(preds: Predictions, calibration: dict, probs: np.ndarray, cfg: Config
                        ) -> dict:
    """ECE per class after the calibration map and before it (the model's own probabilities,
    positive-weight offset removed), with the map itself."""
    labels, targets, bins = preds.labels, preds.targets, cfg.calibration_bins
    ece = per_class_ece(targets, probs, labels, bins)
    before = per_class_ece(targets, sigmoid(preds.logits), labels, bins)
    return {"bins": bins, "method": calibration["method"], "fitted_on": "val",
            "parameters": calibration["parameters"], "ece": ece, "mean_ece": mean_ece(ece),
            "ece_uncalibrated": before, "mean_ece_uncalibrated": mean_ece(before)}


def evaluate_predictions(preds: Predictions, thresholds: dict, calibration: dict, cfg: Config
                         ) -> dict:
    """Image- and study-level metrics, calibration and operating points of one split.

    `calibration` is {"method", "parameters"} fitted on val. AUCs rank the calibrated logits
    (float64: no sigmoid saturating into ties), which order the images as the probabilities do.
    """
    labels, targets = preds.labels, preds.targets
    scores = calibrated_logits(preds.logits, calibration["parameters"], labels)
    probs = sigmoid(scores)
    studies, study_probs, study_targets = aggregate_studies(preds.frame, probs, targets,
                                                            cfg.study_aggregation)
    image = summarise_level(scores, targets, preds.frame["patient_id"], labels, cfg)
    study = summarise_level(study_probs, study_targets, studies["patient_id"], labels, cfg)
    return {"n_images": preds.image_count, "n_patients": int(preds.frame["patient_id"].nunique()),
            "n_studies": len(studies),
            "unit": "study" if preds.per_study else "image",  # what one prediction is of
            "reference": "raw labels, uncertain (-1) masked",
            "masked_uncertain": masked_counts(targets, labels),
            "auc": {label: image["classes"][label]["auc"] for label in labels},
            "mean_auc": image["means"]["all"]["auc"],
            "image": image, "study": {"aggregation": cfg.study_aggregation, **study},
            "calibration": calibration_summary(preds, calibration, probs, cfg),
            "operating_points": operating_point_table(targets, probs, labels, thresholds),
            "bootstrap": {"resamples": cfg.bootstrap_resamples, "level": cfg.ci_level,
                          "seed": cfg.seed, "unit": "patient",
                          "classes": "stratified by the class's positive patients",
                          "means": "one draw of patients shared by every class"},
            "min_positives": cfg.min_positives, "tta": cfg.tta}


def draw_plots(preds: Predictions, result: dict, cfg: Config, out_dir: Path) -> dict[str, str]:
    """The split's three figures; returns their file names (relative to out_dir)."""
    split, labels = result["split"], preds.labels
    probs = sigmoid(calibrated_logits(preds.logits, result["calibration"]["parameters"], labels))
    names = {kind: f"{kind}_{split}.png" for kind in ("roc", "pr", "reliability")}
    roc_grid(preds.targets, probs, labels, out_dir / names["roc"], f"ROC curves, {split} split")
    pr_grid(preds.targets, probs, labels, out_dir / names["pr"],
            f"Precision-recall curves, {split} split")
    reliability_grid(preds.targets, probs, labels, result["calibration"]["ece"],
                     cfg.calibration_bins, out_dir / names["reliability"],
                     f"Reliability diagrams, {split} split")
    return names


# ---- the two modes --------------------------------------------------------------------------------

def checkpoint_to_evaluate(cfg: Config) -> Path:
    """--checkpoint, else --run_name's best.pth, else the newest run's best.pth."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.run_name:
        return cfg.run_dir / "best.pth"
    return newest_checkpoint(cfg.models_dir)


def fit_on_val(val: Predictions, path: Path, checkpoint: dict, trained: Config, cfg: Config
               ) -> tuple[dict, dict]:
    """Each class's calibration map and its thresholds from the val split (uncertain masked);
    thresholds.json, bound to these weights and saying how the scores were made."""
    calibration = {"method": cfg.calibration,
                   "parameters": fit_calibration(val.logits, val.targets, val.labels,
                                                 cfg.calibration)}
    probs = sigmoid(calibrated_logits(val.logits, calibration["parameters"], val.labels))
    thresholds = choose_thresholds(val.targets, probs, val.labels, cfg.target_sensitivity)
    scores = {"tta": cfg.tta, "view_mode": trained.view_mode,
              "logit_offset_removed": "logit_offset" in checkpoint["model"]}
    write_thresholds(thresholds_payload(path, model_id(checkpoint), val.labels, thresholds,
                                        cfg.target_sensitivity, calibration, scores,
                                        masked_counts(val.targets, val.labels)),
                     path.parent / "thresholds.json")
    return thresholds, calibration


def evaluate_checkpoint(cfg: Config) -> None:
    path = checkpoint_to_evaluate(cfg)
    device = choose_device(cfg.device)
    model, checkpoint, trained = load_model(path, cfg, device)
    thresholds, calibration = None, None
    for split in SPLITS:
        preds = predict_split(model, split, path, checkpoint, trained, cfg, device)
        if thresholds is None:  # the val split, first
            thresholds, calibration = fit_on_val(preds, path, checkpoint, trained, cfg)
        result = {"split": split, "checkpoint": str(path), "epoch": checkpoint.get("epoch"),
                  **evaluate_predictions(preds, thresholds, calibration, cfg)}
        plots = draw_plots(preds, result, cfg, path.parent)
        write_reports(result, plots, cfg, path.parent)
        print_report(result, path, cfg)
    print(f"\nevaluate: wrote {path.parent}/thresholds.json, "
          f"eval_{{{','.join(SPLITS)}}}.{{json,md,csv}}, {{roc,pr,reliability}}_*.png")


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
                                  both.frame["patient_id"], a.labels, cfg.bootstrap_resamples,
                                  cfg.ci_level, cfg.seed, cfg.min_positives)
    return rows, both


def compare_runs(cfg: Config) -> None:
    names = [name for name in cfg.compare.split(",") if name]
    if len(names) != 2:
        raise ConfigError(f"--compare takes two runs, --compare RUN_A RUN_B; got {cfg.compare!r}")
    paths = [resolve_run(name, cfg) for name in names]
    device = choose_device(cfg.device)
    split = cfg.compare_split
    models = [load_model(path, cfg, device) for path in paths]  # both load before predicting
    rows, both = paired_differences(
        *[predict_split(model, split, path, checkpoint, trained, cfg, device)
          for path, (model, checkpoint, trained) in zip(paths, models)], cfg)
    description = [f"AUC of B - A on the {split} split ({len(both.frame)} {both.unit}, "
                   f"{both.frame['patient_id'].nunique()} patients), {cfg.bootstrap_resamples} "
                   f"paired patient-bootstrap resamples (seed {cfg.seed})",
                   f"A = {paths[0]}", f"B = {paths[1]}"]
    print("\n" + "\n  ".join(description) + "\n" + format_comparison(rows, cfg.ci_level))
    write_comparison(rows, description, paths, split, cfg)


def write_comparison(rows: list[dict], description: list[str], paths: list[Path], split: str,
                     cfg: Config) -> None:
    """compare_<split>_vs_<A>.csv and .md in B's folder (B is usually the change being tried)."""
    out = paths[1].parent / f"compare_{split}_vs_{run_label(paths[0])}"
    write_csv_atomic(pd.DataFrame(rows), out.with_suffix(".csv"))
    markdown = "\n".join([
        f"# Comparison: {run_label(paths[1])} (B) vs {run_label(paths[0])} (A)", "",
        description[0], "", *(f"- {line}" for line in description[1:]), "",
        format_comparison_markdown(rows, cfg.ci_level), "",
        "An interval that excludes 0 means the difference is unlikely to be resampling noise "
        "(verdict `B better` / `A better`).", ""])
    write_text_atomic(markdown, out.with_suffix(".md"))
    print(f"\nevaluate: wrote {out}.csv, {out.name}.md")


def main(cfg: Config, given: set[str] = frozenset()) -> None:
    """`given`: the options set on the command line (data-building ones are checked against the
    data, dataset.check_data_options)."""
    cfg = check_data_options(cfg, set(given), "evaluate.py")
    if cfg.compare:
        compare_runs(cfg)
    else:
        evaluate_checkpoint(cfg)


def join_compare_values(argv: list[str]) -> list[str]:
    """`--compare A B` gives two values; config overrides take one, so it becomes --compare=A,B.

    Any other count is left as it is, for the usual one-line error ("--compare takes two runs" or
    "unexpected argument").
    """
    joined, i = [], 0
    while i < len(argv):
        values = list(itertools.takewhile(lambda arg: not arg.startswith("--"), argv[i + 1:]))
        if argv[i] == "--compare" and len(values) == 2:
            joined.append("--compare=" + ",".join(values))
            i += 3
        else:
            joined.append(argv[i])
            i += 1
    return joined


if __name__ == "__main__":
    arguments = join_compare_values(sys.argv[1:])
    run_cli(lambda cfg: main(cfg, given_fields(arguments)), arguments)
