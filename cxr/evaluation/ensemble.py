"""Ensembles: several checkpoints whose calibrated probabilities are averaged.

    --checkpoint models/a/best.pth,models/b/best.pth    a comma list of checkpoints
    --checkpoint models/RUN/top_k                       a folder: every .pth in it (the k best
                                                        epochs train.py --keep_top_k kept)
    --checkpoint models/ensemble-<id>                   an ensemble evaluate.py has written: the
                                                        members its ensemble.json lists

Each member's logits go through its own calibration map, fitted on the val split by evaluate.py
(what the member's probabilities would be on their own), and the ensemble's probability is the
mean of the members' probabilities. Its logit, log(mean p) - log(mean (1 - p)), is computed from
log-sigmoids with logsumexp so that very confident members do not round to 0 or 1 and tie.

evaluate.py writes, into the ensemble's folder (the folder given; for a list,
<models_dir>/ensemble-<8 hex digits of the members' paths>/):
    ensemble.json    the members (checkpoint, model_id) with each one's calibration map, and the
                     ensemble's model_id (a fingerprint of the members' fingerprints)
    thresholds.json  the ensemble's own calibration and thresholds, fitted on val like a single
                     checkpoint's, bound to the ensemble's model_id
    eval_<split>.*   the report, with the ensemble beside each member (paired intervals)
predict.py, app.py and export.py read both: the ensemble is then one model (EnsembleModel).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import logsumexp
from torch import nn

from cxr.atomic import write_text_atomic
from cxr.errors import PipelineError
from cxr.evaluation.calibration import calibrated_logits, calibration_arrays
from cxr.evaluation.ood import GATE_FILE
from cxr.evaluation.thresholds import THRESHOLDS_FILE
from cxr.settings import same_for_members

if TYPE_CHECKING:
    from config import Config

ENSEMBLE_FILE = "ensemble.json"


# ---- which checkpoints ---------------------------------------------------------------------------

def checkpoint_paths(spec: str) -> list[Path]:
    """The checkpoints of --checkpoint: one file, a comma list, a folder of .pth files, or an
    ensemble's folder or ensemble.json (the members it lists)."""
    paths = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        path = Path(part)
        if path.is_dir() and not list(path.glob("*.pth")) and (path / ENSEMBLE_FILE).is_file():
            path = path / ENSEMBLE_FILE
        if path.name == ENSEMBLE_FILE and path.is_file():
            paths += listed_members(path)
        elif path.is_dir():
            found = sorted(path.glob("*.pth"))
            if not found:
                raise PipelineError(f"--checkpoint {path} is a folder without .pth files (an "
                                    "ensemble folder holds its members, e.g. a run's top_k/)")
            paths += found
        else:
            paths.append(path)
    if len(set(paths)) < len(paths):
        raise PipelineError(f"--checkpoint {spec}: a checkpoint appears twice in the ensemble")
    return paths


def listed_members(path: Path) -> list[Path]:
    try:
        return [Path(member["checkpoint"]) for member in json.loads(path.read_text())["members"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PipelineError(f"{path} is not an ensemble file of this pipeline ({err})") from None


def is_ensemble(spec: str) -> bool:
    return bool(spec) and len(checkpoint_paths(spec)) > 1


def ensemble_id(member_ids: Sequence[str]) -> str:
    """The ensemble's fingerprint: of its members' weights, in any order."""
    return hashlib.sha256(",".join(sorted(member_ids)).encode()).hexdigest()[:16]


def ensemble_folder(spec: str, paths: Sequence[Path], cfg: Config) -> Path:
    """Where an ensemble's files go: the folder given (a run's top_k/, an ensemble's folder),
    else <models_dir>/ensemble-<a fingerprint of the members' paths>/. (The files there are
    bound to the members' weights by model_id, so retrained members are noticed.)"""
    given = Path(spec.strip())
    if "," not in spec and given.name == ENSEMBLE_FILE:
        return given.parent
    if "," not in spec and given.is_dir():
        return given
    members = ",".join(sorted(str(path.resolve()) for path in paths))
    return Path(cfg.models_dir) / f"ensemble-{hashlib.sha256(members.encode()).hexdigest()[:8]}"


def predictor_files(spec: str, cfg: Config) -> list[Path]:
    """The files a predictor of --checkpoint reads: its checkpoint(s), then the thresholds.json
    (or --thresholds) and the input gate's file beside it (and an ensemble's ensemble.json) used
    when present."""
    if not is_ensemble(spec):
        folder, paths, extra = Path(spec).parent, [Path(spec)], []
    else:
        paths = checkpoint_paths(spec)
        folder = ensemble_folder(spec, paths, cfg)
        extra = [folder / ENSEMBLE_FILE]
    thresholds = Path(cfg.thresholds) if cfg.thresholds else folder / THRESHOLDS_FILE
    return [*paths, *extra, thresholds, thresholds.parent / GATE_FILE]


def check_members(paths: Sequence[Path], labels: Sequence[tuple[str, ...]],
                  trained: Sequence[Config]) -> None:
    """Members must predict the same labels from the same views of the same images."""
    for path, member_labels, config in zip(paths[1:], labels[1:], trained[1:]):
        if member_labels != labels[0]:
            raise PipelineError(f"ensemble member {path} predicts other labels than {paths[0]}")
        # declared same_for_members: they see the same images and predict the same labels
        for name in same_for_members(type(trained[0])):
            if getattr(config, name) != getattr(trained[0], name):
                raise PipelineError(
                    f"ensemble member {path} was trained with --{name} "
                    f"{getattr(config, name)}, {paths[0]} with {getattr(trained[0], name)}: "
                    "the members of an ensemble must see the same images")


# ---- combining the members -----------------------------------------------------------------------

def mean_probability_logit(logits: np.ndarray) -> np.ndarray:
    """M x N x C calibrated logits -> N x C logit of the members' mean probability."""
    log_p = -np.logaddexp(0.0, -logits)  # log sigmoid(z)
    log_q = -np.logaddexp(0.0, logits)  # log (1 - sigmoid(z))
    return logsumexp(log_p, axis=0) - logsumexp(log_q, axis=0)


def ensemble_logits(member_logits: Sequence[np.ndarray], calibrations: Sequence[dict | None],
                    labels: tuple[str, ...]) -> np.ndarray:
    """The ensemble's logits from each member's raw logits and calibration parameters."""
    stacked = np.stack([calibrated_logits(logits, parameters, labels)
                        for logits, parameters in zip(member_logits, calibrations)])
    return mean_probability_logit(stacked)


class EnsembleModel(nn.Module):
    """The members as one model: images -> the logit of the mean of their calibrated
    probabilities (the same numbers as ensemble_logits, in torch)."""

    def __init__(self, members: Sequence[nn.Module], calibrations: Sequence[dict | None],
                 labels: tuple[str, ...]):
        super().__init__()
        self.members = nn.ModuleList(members)
        arrays = [calibration_arrays(parameters, labels) for parameters in calibrations]
        self.register_buffer("scale", torch.tensor(np.stack([s for s, _ in arrays]),
                                                   dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(np.stack([b for _, b in arrays]),
                                                  dtype=torch.float32))

    def forward(self, images) -> torch.Tensor:
        logits = torch.stack([member(images).float() for member in self.members])
        logits = logits * self.scale[:, None, :] + self.bias[:, None, :]
        return (torch.logsumexp(-F.softplus(-logits), dim=0)
                - torch.logsumexp(-F.softplus(logits), dim=0))

    @property
    def backbones(self) -> list[nn.Module]:
        """What Grad-CAM weighs: every member's last feature map (its maps averaged)."""
        return [getattr(member, "model", member).backbone for member in self.members]


# ---- ensemble.json ---------------------------------------------------------------------------------

@dataclass
class EnsembleFile:
    """What evaluate.py stored of an ensemble: each member's calibration, by member model_id."""
    path: Path
    model_id: str
    calibrations: dict[str, dict | None]  # member model_id -> its calibration parameters
    method: str


def write_ensemble_file(folder: Path, paths: Sequence[Path], member_ids: Sequence[str],
                        calibrations: Sequence[dict]) -> Path:
    """ensemble.json: the members, each with the calibration fitted on its val predictions."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model_id": ensemble_id(member_ids),
               "combination": "mean of the members' calibrated probabilities",
               "members": [{"checkpoint": str(path), "model_id": member_id,
                            "calibration": calibration}
                           for path, member_id, calibration in zip(paths, member_ids,
                                                                    calibrations)]}
    path = folder / ENSEMBLE_FILE
    write_text_atomic(json.dumps(payload, indent=2) + "\n", path)
    return path


def read_ensemble_file(folder: Path, member_ids: Sequence[str]) -> tuple[EnsembleFile | None,
                                                                          list[str]]:
    """ensemble.json of these members, or None with the warning saying what that means."""
    path = folder / ENSEMBLE_FILE
    if not path.is_file():
        return None, [f"{path} not found: the members' probabilities are averaged uncalibrated. "
                      "Run evaluate.py with the same --checkpoint to fit their calibrations and "
                      "the ensemble's thresholds on val"]
    try:
        stored = json.loads(path.read_text())
        calibrations = {m["model_id"]: m["calibration"]["parameters"] for m in stored["members"]}
        method = stored["members"][0]["calibration"]["method"]
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
        raise PipelineError(f"{path} is not an ensemble file of this pipeline ({err}); re-run "
                            "evaluate.py with the same --checkpoint to rewrite it") from None
    if set(calibrations) != set(member_ids):
        raise PipelineError(f"{path} was written for other members (weights changed since?); "
                            "re-run evaluate.py with the same --checkpoint")
    return EnsembleFile(path, stored["model_id"], calibrations, method), []
