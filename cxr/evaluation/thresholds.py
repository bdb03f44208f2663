"""thresholds.json: the calibration and decision thresholds fitted on val, beside a checkpoint.

evaluate.py writes it (operating_points.py chooses the thresholds, calibration.py fits the maps);
predict.py, app.py and export.py read it. The contract:
    {"checkpoint": path, "model_id": the weights' fingerprint (checkpoint.model_id),
     "split": "val", "method": "youden", "labels": [...],
     "thresholds": {label: float or null},
     "target_sensitivity": {"value": 0.9, "thresholds": {label: float or null}},
     "scores": {"tta": bool, "view_mode": "frontal" | "study", "calibration": method,
                "logit_offset_removed": bool},
     "calibration": {"method": "platt" | "temperature" | "none", "fitted_on": "val",
                     "parameters": {label: {"scale": float, "bias": float} or null}},
     "masked_uncertain": {label: int},
     "input_gate": {"method", "threshold", "quantile", "file": "ood.npz", "sha256", ...}}
null marks a class that cannot be evaluated on val (one label value). "input_gate" is the
out-of-distribution gate (cxr/evaluation/ood.py; absent when val was too small to fit one).
A missing file gives the model's own probabilities and 0.5 for every class, with a warning.
A site's file (evaluate.py --dataset ... --recalibrate: thresholds_<dataset>.json, given to
predict.py and app.py as --thresholds FILE) has the same contract, its "scores" naming the site.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cxr.atomic import write_text_atomic
from cxr.errors import PipelineError
from cxr.evaluation.ood import InputGate, read_gate

DEFAULT_THRESHOLD = 0.5  # probability at which a class is flagged when no threshold is stored
THRESHOLDS_FILE = "thresholds.json"  # beside the checkpoint; written by evaluate.py


# ---- reading ---------------------------------------------------------------------------------------

@dataclass
class Thresholds:
    """Per-label decision thresholds on the probability, and the calibration they sit on."""
    values: dict[str, float]  # label -> probability at or above which the class is positive
    calibration: dict | None  # label -> {"scale", "bias"} or None (identity); None: none at all
    method: str  # the calibration method ("none" when there is none)
    source: str  # the file they come from, or a note that they are the 0.5 default
    warnings: list[str]  # what the user should know (a missing file, classes left at 0.5)
    gate: InputGate | None = None  # the input gate (ood.py); None: films are not checked


def default_thresholds(labels: Sequence[str], why: str) -> Thresholds:
    return Thresholds({label: DEFAULT_THRESHOLD for label in labels}, None, "none",
                      f"{DEFAULT_THRESHOLD} for every class (default)", [why])


def _probability(value, path: Path, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise PipelineError(f"{path}: {key} = {value!r} is not a probability between 0 and 1; "
                            "re-run evaluate.py to rewrite the file")
    return float(value)


def _calibration(stored: dict, path: Path, labels: Sequence[str]) -> tuple[dict | None, str]:
    """thresholds.json's per-class {"scale" > 0, "bias"} (or null), checked."""
    block = stored.get("calibration")
    if block is None:
        return None, "none"
    if not isinstance(block, dict) or not isinstance(block.get("parameters"), dict):
        raise PipelineError(f"{path}: 'calibration' lacks its 'parameters' object; re-run "
                            "evaluate.py to rewrite the file")
    parameters = {}
    for label in labels:
        value = block["parameters"].get(label)
        if value is not None:
            scale, bias = (value.get(key) if isinstance(value, dict) else None
                           for key in ("scale", "bias"))
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       and math.isfinite(x) for x in (scale, bias)) or scale <= 0:
                raise PipelineError(f"{path}: calibration of {label!r} = {value!r} is not a "
                                    "positive scale and a bias; re-run evaluate.py")
            value = {"scale": float(scale), "bias": float(bias)}
        parameters[label] = value
    return parameters, str(block.get("method", "?"))


def binding_problems(stored: dict, path: Path, checkpoint_path: Path, weights_id: str,
                     tta: bool) -> list[str]:
    """Why thresholds.json does not belong to this predictor (other weights, other TTA)."""
    problems = []
    made_for = stored.get("model_id")
    if made_for is None:
        problems.append(f"{path} does not say which weights it was fitted for (written by an "
                        "older version)")
    elif made_for != weights_id:
        problems.append(f"{path} was fitted for other weights (model {made_for}) than those in "
                        f"{checkpoint_path} (model {weights_id}): a resumed run rewrote the "
                        "checkpoint, or the file comes from another run")
    made_with_tta = bool((stored.get("scores") or {}).get("tta", False))
    if made_with_tta != tta:
        problems.append(f"{path} was fitted {'with' if made_with_tta else 'without'} test-time "
                        f"augmentation: predict {'with' if made_with_tta else 'without'} it "
                        f"(--tta {str(made_with_tta).lower()})")
    return problems


def load_stored(path: Path) -> dict:
    """A thresholds file's JSON, checked to hold a 'thresholds' object."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path} is not valid JSON ({err}); re-run evaluate.py or delete "
                            "it") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("thresholds"), dict):
        raise PipelineError(f"{path} lacks a 'thresholds' object of label -> probability; "
                            "re-run evaluate.py")
    return stored


def read_thresholds(checkpoint_path: str | Path, labels: Sequence[str], weights_id: str,
                    tta: bool = False, allow_mismatch: bool = False, file: str | Path = ""
                    ) -> Thresholds:
    """thresholds.json beside the checkpoint, or `file` (a site's, --thresholds): evaluate.py's
    calibration, Youden thresholds and input gate (the contract is this module's docstring).

    A missing thresholds.json or a null threshold gives 0.5 for those classes, with a warning (a
    missing `file` is an error); a malformed file is an error; a file fitted for other weights
    (`weights_id`) or other `tta` is refused, or with `allow_mismatch` used with a warning.
    """
    checkpoint_path = Path(checkpoint_path)
    path = Path(file) if file else checkpoint_path.parent / THRESHOLDS_FILE
    if file and not path.is_file():
        raise PipelineError(f"--thresholds {path}: no such file (evaluate.py --dataset ... "
                            "--recalibrate writes a site's thresholds_<dataset>.json beside the "
                            "checkpoint)")
    if not path.is_file():
        return default_thresholds(labels, f"{path} not found (evaluate.py writes it): "
                                          "probabilities are not calibrated and positives are "
                                          f"flagged at probability >= {DEFAULT_THRESHOLD}")
    stored = load_stored(path)
    unknown = sorted(set(stored["thresholds"]) - set(labels))
    if unknown:
        raise PipelineError(f"{path} holds thresholds for {unknown}, which checkpoint "
                            f"{checkpoint_path} does not predict: it belongs to another model")
    problems = binding_problems(stored, path, checkpoint_path, weights_id, tta)
    if problems and not allow_mismatch:
        raise PipelineError("; ".join(problems) + f". Run evaluate.py --checkpoint "
                            f"{checkpoint_path}{' --tta true' if tta else ''} to fit thresholds "
                            "for this predictor, or pass --allow_threshold_mismatch true to use "
                            "these anyway")
    warnings = [f"{problem}; used anyway (--allow_threshold_mismatch)" for problem in problems]
    values, unset = {}, []
    for label in labels:
        value = _probability(stored["thresholds"].get(label), path, f"thresholds[{label!r}]")
        if value is None:
            unset.append(label)
        values[label] = DEFAULT_THRESHOLD if value is None else value
    if unset:
        warnings.append(f"{path} has no threshold for {', '.join(unset)} (one label value in the "
                        f"val split?): {DEFAULT_THRESHOLD} is used for them")
    calibration, method = _calibration(stored, path, labels)
    gate = read_gate(stored["input_gate"], path) if stored.get("input_gate") else None
    if gate is None:
        warnings.append(f"{path} has no input gate (written by an older evaluate.py, or val was "
                        "too small): films outside the training distribution are not flagged; "
                        "re-run evaluate.py to fit one")
    return Thresholds(values, calibration, method, str(path), warnings, gate)


def read_operating_points(file: str | Path, labels: Sequence[str]) -> dict[str, float | None]:
    """score.py --thresholds: the Youden thresholds of a thresholds.json, {label: threshold or
    None}, for the labels scored (the file need not be bound to any checkpoint here)."""
    path = Path(file)
    if not path.is_file():
        raise PipelineError(f"--thresholds {path}: no such file (evaluate.py writes "
                            f"{THRESHOLDS_FILE} beside the checkpoint)")
    stored = load_stored(path)
    return {label: _probability(stored["thresholds"].get(label), path, f"thresholds[{label!r}]")
            for label in labels}


# ---- writing ---------------------------------------------------------------------------------------

def thresholds_payload(checkpoint: Path, model_id: str, labels: tuple[str, ...],
                       thresholds: dict, target_sensitivity: float, calibration: dict,
                       scores: dict, masked: dict[str, int]) -> dict:
    """The thresholds.json contract (see the module docstring). `calibration` is {"method",
    "parameters"}; `scores` says how the val scores were made (tta, view_mode, ...)."""
    return {"checkpoint": str(checkpoint), "model_id": model_id, "split": "val",
            "method": "youden", "labels": list(labels), "thresholds": thresholds["youden"],
            "target_sensitivity": {"value": target_sensitivity,
                                   "thresholds": thresholds["target_sensitivity"]},
            "scores": {**scores, "calibration": calibration["method"]},
            "calibration": {"method": calibration["method"], "fitted_on": "val",
                            "parameters": calibration["parameters"]},
            "masked_uncertain": masked}


def write_thresholds(payload: dict, path: Path) -> None:
    write_text_atomic(json.dumps(payload, indent=2) + "\n", path)
