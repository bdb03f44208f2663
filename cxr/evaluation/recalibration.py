"""Recalibration for a new site (evaluate.py --dataset nih --data_root DIR --recalibrate).

Why: the calibration maps and thresholds fitted on the checkpoint's val split carry that split's
prevalences and scanners. At another hospital the probabilities drift (a finding twice as common
there is under-called) and a threshold chosen for 90 % sensitivity on val may reach far less.
Each class's map is monotone (a positive scale), so refitting it changes no AUC: only what the
probabilities mean and where the thresholds sit.

The honest split: the site's patients are drawn once (--seed) into a fitting half
(--recalibration_share of them) and a scoring half, every image of a patient on one side. The
maps and thresholds are fitted on the fitting half only; everything reported is measured on the
scoring half, with val's maps and thresholds ("before") and with the site's ("after"). A class
the fitting half cannot fit (one label value there, or one the site does not annotate) keeps
val's map and thresholds, and the report lists it.

thresholds_<name>.json, beside the checkpoint, keeps thresholds.json's contract (thresholds.py)
and its binding to the weights (model_id), so predict.py --thresholds FILE reads it as it reads
thresholds.json. It differs in "split" (the fitting half), "calibration"."fitted_on" (the same),
"calibration"."kept_from_val" and "scores"."site" (what the fit saw: dataset, data_root, images,
patients, share, seed); its "input_gate" is the checkpoint's own (the gate describes the
training distribution, not the site; its file sits in the same folder).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.data.labels import masked_counts
from cxr.errors import PipelineError
from cxr.evaluation.calibration import calibrated_probs, mean_ece
from cxr.evaluation.operating_points import METHODS, choose_thresholds
from cxr.evaluation.predictions import Predictions, val_calibration
from cxr.evaluation.report import EvaluationReport, OperatingPoint, Recalibration
from cxr.evaluation.thresholds import THRESHOLDS_FILE, thresholds_payload, write_thresholds

if TYPE_CHECKING:
    from config import Config

SITE_FILE = "thresholds_{name}.json"  # beside the checkpoint, e.g. thresholds_nih.json


def site_thresholds_path(checkpoint: Path, name: str) -> Path:
    """thresholds_<name>.json beside the checkpoint (name: external.report_name)."""
    return Path(checkpoint).parent / SITE_FILE.format(name=name)


# ---- the split of the site's patients ------------------------------------------------------------

def split_site(patient_ids: pd.Series, share: float, seed: int) -> np.ndarray:
    """True for the rows of the fitting half: round(share x patients) of the site's patients,
    drawn by a permutation seeded with `seed` (the same seed, the same halves), every row of a
    patient on the same side. At least one patient on each side, else an error saying what to
    change."""
    patient_of_row, patients = pd.factorize(pd.Series(patient_ids).astype(str), sort=True)
    n_fit = round(share * len(patients))
    if len(patients) < 2:
        raise PipelineError(f"--recalibrate needs at least 2 patients of the site (one to fit, "
                            f"one to score); the images scored under --data_root come from "
                            f"{len(patients)}")
    if not 1 <= n_fit < len(patients):
        raise PipelineError(f"--recalibration_share {share} of the site's {len(patients)} "
                            f"patients puts {n_fit} in the fitting half: each half needs at "
                            "least one patient; choose a share between "
                            f"{1 / len(patients):.3g} and {1 - 1 / len(patients):.3g}")
    fit = np.zeros(len(patients), dtype=bool)
    fit[np.random.RandomState(seed).permutation(len(patients))[:n_fit]] = True
    return fit[patient_of_row]


@dataclasses.dataclass(frozen=True)
class SiteHalves:
    """The site's predictions split by patient: the fitting half and the scoring half."""

    fit: Predictions
    score: Predictions

    @staticmethod
    def patients(preds: Predictions) -> int:
        return int(preds.frame["patient_id"].nunique())

    def fitted_on(self, name: str) -> str:
        """"nih: fitting half (202 images, 202 patients)": thresholds_<name>.json's "split"."""
        return (f"{name}: fitting half ({self.fit.image_count} images, "
                f"{self.patients(self.fit)} patients)")


def rows_of(preds: Predictions, rows: np.ndarray, images: pd.DataFrame) -> Predictions:
    """The predictions of the rows `rows` selects (a boolean mask). A study model's image count
    is that of the site's images (`images`) of the studies kept."""
    frame = preds.frame[rows].reset_index(drop=True)
    n_images = None
    if preds.per_study:
        keys = ["patient_id", "study_id"]
        kept = pd.MultiIndex.from_frame(frame[keys].astype(str))
        n_images = int(pd.MultiIndex.from_frame(images[keys].astype(str)).isin(kept).sum())
    return dataclasses.replace(
        preds, frame=frame, logits=preds.logits[rows], targets=preds.targets[rows],
        n_images=n_images, features=None if preds.features is None else preds.features[rows])


def split_predictions(preds: Predictions, images: pd.DataFrame, share: float, seed: int
                      ) -> SiteHalves:
    """The site's predictions in two halves by patient (split_site)."""
    fit = split_site(preds.frame["patient_id"], share, seed)
    return SiteHalves(rows_of(preds, fit, images), rows_of(preds, ~fit, images))


# ---- the site's calibration and thresholds -------------------------------------------------------

def fit_site(fit: Predictions, val: tuple[dict, dict], cfg: Config
             ) -> tuple[dict, dict, list[str]]:
    """(thresholds, calibration, classes kept from val) fitted on the fitting half as
    fit_on_val fits them on val: each class's --calibration map, then its thresholds on the
    calibrated probabilities. `val` is fit_on_val's (thresholds, calibration): a class the half
    cannot fit (one label value) keeps val's map and thresholds together, so its threshold
    still sits on the scale of its map."""
    val_thresholds, val_maps = val
    calibration = val_calibration(fit, cfg)
    probs = calibrated_probs(fit.logits, calibration["parameters"], fit.labels)
    thresholds = choose_thresholds(fit.targets, probs, fit.labels, cfg.target_sensitivity)
    kept = [label for label in fit.labels if thresholds["youden"][label] is None]
    for label in kept:
        calibration["parameters"][label] = val_maps["parameters"].get(label)
        for method in METHODS:
            thresholds[method][label] = val_thresholds[method][label]
    return thresholds, calibration, kept


def read_val_payload(checkpoint: Path) -> dict:
    """The checkpoint's thresholds.json, just written by fit_on_val: how its scores were made
    and its input gate, which the site's file shares."""
    path = Path(checkpoint).parent / THRESHOLDS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path} could not be read back ({err}); re-run evaluate.py "
                            f"--checkpoint {checkpoint}") from None


def site_payload(val_payload: dict, checkpoint: Path, weights_id: str, halves: SiteHalves,
                 fitted: tuple[dict, dict, list[str]], site: dict, cfg: Config) -> dict:
    """thresholds_<name>.json's contents: thresholds.json's contract with the site's fit.
    `site` is {"dataset", "data_root"}; `fitted` fit_site's result."""
    thresholds, calibration, kept = fitted
    fit = halves.fit
    scores = {key: value for key, value in val_payload.get("scores", {}).items()
              if key != "calibration"}  # thresholds_payload adds the site's method
    scores["site"] = {**site, "n_images": fit.image_count, "n_patients": halves.patients(fit),
                      "share": cfg.recalibration_share, "seed": cfg.seed}
    payload = thresholds_payload(checkpoint, weights_id, fit.labels, thresholds,
                                 cfg.target_sensitivity, calibration, scores,
                                 masked_counts(fit.targets, fit.labels))
    payload["split"] = payload["calibration"]["fitted_on"] = halves.fitted_on(site["dataset"])
    payload["calibration"]["kept_from_val"] = kept
    if "input_gate" in val_payload:  # the training distribution's gate; its file is beside
        payload["input_gate"] = val_payload["input_gate"]
    return payload


def write_site_thresholds(payload: dict, checkpoint: Path, name: str) -> Path:
    """thresholds_<name>.json beside the checkpoint, written atomically."""
    path = site_thresholds_path(checkpoint, name)
    write_thresholds(payload, path)
    return path


# ---- before and after, on the scoring half -------------------------------------------------------

def before_after(before: dict, after: dict) -> dict[str, dict[str, float | None]]:
    """{class: {"before", "after"}} of two per-class dicts."""
    return {label: {"before": before[label], "after": after[label]} for label in before}


def mean_rates(before: list[OperatingPoint], after: list[OperatingPoint]) -> dict[str, dict]:
    """Per method, the mean sensitivity and specificity over the classes scored both before and
    after (the same classes on both sides, so the means compare)."""
    points = {(p.pathology, p.method): p for p in after}
    means = {}
    for method in METHODS:
        pairs = [(p, points[(p.pathology, method)]) for p in before if p.method == method]
        pairs = [(b, a) for b, a in pairs
                 if None not in (b.sensitivity, b.specificity, a.sensitivity, a.specificity)]
        means[method] = {"classes": len(pairs), **{
            f"{rate}_{when}": (float(np.mean([getattr(pair[side], rate) for pair in pairs]))
                               if pairs else None)
            for rate in ("sensitivity", "specificity")
            for side, when in ((0, "before"), (1, "after"))}}
    return means


def recalibration_summary(before: EvaluationReport, after: EvaluationReport,
                          halves: SiteHalves, kept: list[str], thresholds_file: Path, name: str,
                          cfg: Config) -> Recalibration:
    """What the site's refit changed on the scoring half: before (val's maps and thresholds)
    and after (the site's), from evaluate_predictions' two reports of the same rows."""
    ece_before, ece_after = before.calibration.ece, after.calibration.ece
    return Recalibration(
        dataset=name, fitted_on=halves.fitted_on(name), thresholds_file=str(thresholds_file),
        method=cfg.calibration, kept_from_val=kept, share=cfg.recalibration_share,
        seed=cfg.seed, n_fit=halves.fit.image_count, n_score=halves.score.image_count,
        n_fit_patients=halves.patients(halves.fit),
        n_score_patients=halves.patients(halves.score), bins=cfg.calibration_bins,
        ece_before=mean_ece(ece_before), ece_after=mean_ece(ece_after),
        mean_auc_before=before.mean_auc, mean_auc_after=after.mean_auc,
        ece_per_class=before_after(ece_before, ece_after),
        auc_per_class=before_after(before.auc, after.auc),
        mean_rates=mean_rates(before.operating_points, after.operating_points),
        operating_points={"before": before.operating_points, "after": after.operating_points})


def recalibrated_report(after: EvaluationReport, summary: Recalibration) -> EvaluationReport:
    """eval_<name>_recalibrated.json: the scoring half's report with the site's maps, its
    calibration said to be fitted on the site's fitting half, with the before/after summary."""
    return dataclasses.replace(
        after, split=f"{summary.dataset}_recalibrated",
        calibration=dataclasses.replace(after.calibration, fitted_on=summary.fitted_on),
        recalibration=summary)
