"""The input gate: is a film like the films the model was trained on?

A model scores whatever it is given: a photograph, a CT slice or an inverted radiograph gets 14
confident-looking probabilities. The gate measures how far a film's features lie from those of
the val split, the in-distribution films the calibration and thresholds were fitted on, and flags
the films farther than the --ood_quantile (0.99) of val's own distances.

Features (FeatureTap, from the same forward pass that gives the logits), two parts per network,
each L2-normalised: its pooled features (the head's input; a study model's fused study features)
and the channel means of its early stage (a quarter of the input's side: intensity and texture);
an ensemble's members' parts side by side.

Score: each part's distance from val's, Mahalanobis under a Ledoit-Wolf shrunk covariance (Lee et
al., NeurIPS 2018), or with method "knn" the distance to the NEIGHBOURS-th nearest val film (Sun
et al., ICML 2022); each divided by its own held-out --ood_quantile, and the film's score is the
largest: a film far out in either part is flagged. benchmarks/bench_ood.py measures both methods
and each part (docs/inference.md says why Mahalanobis and both parts).

Threshold: a val film's distance to the val films is smaller than a new film's, as the film is
its own neighbour (kNN) or pulled the mean and covariance towards itself (Mahalanobis). So each
val film is scored as a new one: kNN against the films of every other patient (leave one patient
out, exact), Mahalanobis against a gate fitted on the other folds of FOLDS folds of patients; the
threshold is the --ood_quantile of those held-out scores, so about 1 - quantile of new
in-distribution films are flagged (measured on the test split: evaluate.py reports the share).

Stored beside thresholds.json: GATE_FILE (ood.npz: the parts' sizes, scales and references, plain
arrays read with allow_pickle=False) and, in thresholds.json, the "input_gate" block that names it
with its SHA-256, so the gate is bound to thresholds.json, which is bound to the weights
(model_id).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.atomic import write_atomic
from cxr.errors import PipelineError

METHODS = ("knn", "mahalanobis")
METHOD = "mahalanobis"  # the method evaluate.py fits (benchmarks/bench_ood.py: docs/inference.md)
NEIGHBOURS = 5  # k of kNN: the distance to the 5th nearest val film
FOLDS = 10  # Mahalanobis: cross-fitting folds of the threshold (by patient)
MIN_FILMS = 20  # fewer val films: no gate (a 99 % quantile of fewer means little)
MAX_REFERENCE = 20_000  # kNN keeps at most this many val films (seeded sample): 80 MB at 1024-d
GATE_FILE = "ood.npz"
FEATURES = ("per network, its pooled features (the head's input) and its early stage's channel "
            "means, each part L2-normalised")


# ---- the features --------------------------------------------------------------------------------

def feature_networks(model: nn.Module) -> list[nn.Module]:
    """The networks inside a scorer (a model, TTAModel, an ensemble of either) whose features
    are tapped: every module with `image_features`, `dropout` and `early_stage` (CheXpertNet), in
    order."""
    return [m for m in model.modules()
            if all(hasattr(m, name) for name in ("image_features", "dropout", "early_stage"))]


class FeatureTap:
    """Collects each network's gate features during a forward pass.

        with FeatureTap(scorer) as tap:
            logits = scorer(images)
            features = tap.take(len(images))   # B x D: parts of length 1 (tap.sizes)

    Two parts per network, each L2-normalised: its pooled features (its dropout's input, what
    the head reads) and the channel means of its early stage (model_architecture's
    Backbone.early, a quarter of the input's side: intensity and texture, which a photograph or a
    CT slice changes however the late features respond). A study batch's early means are
    averaged over each study's present views, as its late features are fused. Only a network's
    first call of a pass counts, and only its first `rows` rows: TTAModel runs its augmentations
    as one batch whose first block is the film as it is (augment.VIEWS[0]).
    """

    def __init__(self, model: nn.Module):
        self.networks = feature_networks(model)
        self.sizes: tuple[int, ...] = ()  # each part's width, once a pass is taken
        if not self.networks:
            raise PipelineError("the input gate found no network with pooled features in the "
                                "model (not a CheXpertNet?)")
        self.handles = []
        self._reset()

    def _reset(self) -> None:
        """Empty the stores in place (the hooks hold these very lists)."""
        n = len(self.networks)
        for name, empty in (("late", None), ("early", None), ("present", None),
                            ("called", False)):
            if not hasattr(self, name):
                setattr(self, name, [])
            getattr(self, name)[:] = [empty] * n

    def __enter__(self) -> FeatureTap:
        for i, network in enumerate(self.networks):
            early = network.backbone.get_submodule(network.early_stage)
            self.handles += [network.register_forward_pre_hook(self._calls(i)),
                             early.register_forward_hook(self._keeps(self.early, i, True)),
                             network.dropout.register_forward_hook(self._keeps(self.late, i))]
        return self

    def __exit__(self, *_) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _calls(self, index: int):
        def note(_module, args):
            if not self.called[index]:  # the first call: a study batch's mask of views
                self.called[index] = True
                images = args[0]
                self.present[index] = images[1] if isinstance(images, (tuple, list)) else None
        return note

    def _keeps(self, store: list, index: int, means: bool = False):
        def keep(_module, inputs, output):
            if store[index] is None:
                store[index] = output.float().mean(dim=(2, 3)) if means else inputs[0]
        return keep

    def take(self, rows: int | None = None) -> torch.Tensor:
        """The pass's features, rows x D float32, its parts (self.sizes) of length 1 (every row
        when `rows` is None, as export.py traces it: a fixed slice would fix the batch size);
        ready for the next pass."""
        if any(f is None for f in (*self.late, *self.early)):
            raise PipelineError("the input gate saw no features in this forward pass")
        parts = []
        for late, early, present in zip(self.late, self.early, self.present):
            if present is not None:  # per present view -> per study, the mean of its views
                early = view_means(early, present)
            for part in (late, early):
                part = part if rows is None else part[:rows]
                parts.append(F.normalize(part.float(), dim=1))
        self.sizes = tuple(part.shape[1] for part in parts)
        self._reset()
        return torch.cat(parts, dim=1)


def view_means(per_view: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(present views x C) -> (studies x C): each study's mean over its present views."""
    slots = per_view.new_zeros(present.numel(), per_view.shape[1])
    slots[present.flatten()] = per_view
    weights = present.float()
    return (slots.view(*present.shape, -1) * weights[..., None]).sum(1) / \
        weights.sum(1, keepdim=True).clamp_min(1.0)


# ---- scores --------------------------------------------------------------------------------------

def knn_scores(features: torch.Tensor, reference: torch.Tensor, k: int,
               chunk: int = 4096) -> torch.Tensor:
    """Distance of each row to its k-th nearest reference row (rows of length 1: the squared
    distance is 2 - 2 cos). Chunked, so a large reference never makes one huge matrix (not while
    export.py traces it: the graph takes any batch)."""
    if torch.jit.is_tracing():
        squared = (2.0 - 2.0 * features @ reference.T).clamp_min(0.0)
        return torch.topk(squared, k, dim=1, largest=False).values[:, -1].sqrt()
    out = []
    for start in range(0, len(features), chunk):
        block = features[start:start + chunk]
        squared = (2.0 - 2.0 * block @ reference.T).clamp_min(0.0)
        kth = torch.topk(squared, k, dim=1, largest=False).values[:, -1]
        out.append(kth.sqrt())
    return torch.cat(out) if out else features.new_zeros(0)


def mahalanobis_scores(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor
                       ) -> torch.Tensor:
    centred = features - mean
    return ((centred @ precision) * centred).sum(dim=1).clamp_min(0.0).sqrt()


class GateScores(nn.Module):
    """features (B x D: parts of length 1) -> the gate's score: the same numbers in predict.py
    and in export.py's ONNX and TorchScript graphs.

    `arrays` (fit_parts) hold "sizes" (each part's width), "scales" (each part's typical
    held-out score) and each part's reference: "reference_<i>" (kNN), or "mean_<i>" and
    "precision_<i>" (Mahalanobis). A film's score is the largest of its parts' scores, each
    divided by its scale: a film is as far out as its farthest part.
    """

    def __init__(self, method: str, arrays: dict[str, np.ndarray], neighbours: int):
        super().__init__()
        self.method, self.neighbours = method, neighbours
        self.sizes = [int(size) for size in arrays["sizes"]]
        for name, array in arrays.items():
            if name != "sizes":
                self.register_buffer(name, torch.as_tensor(array, dtype=torch.float32))

    def part_scores(self, features: torch.Tensor) -> torch.Tensor:
        """B x parts: each part's own distance, unscaled."""
        scores = []
        for i, part in enumerate(torch.split(features.float(), self.sizes, dim=1)):
            if self.method == "knn":
                scores.append(knn_scores(part, getattr(self, f"reference_{i}"), self.neighbours))
            else:
                scores.append(mahalanobis_scores(part, getattr(self, f"mean_{i}"),
                                                 getattr(self, f"precision_{i}")))
        return torch.stack(scores, dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.part_scores(features) / self.scales).amax(dim=1)


# ---- fitting -------------------------------------------------------------------------------------

def fit_arrays(features: np.ndarray, method: str, seed: int = 0,
               shrinkage: float | None = None) -> dict[str, np.ndarray]:
    """What a gate keeps of one part's fitting films: kNN their features (at most MAX_REFERENCE,
    a seeded sample), Mahalanobis their mean and the inverse of their covariance shrunk by
    `shrinkage` (None: Ledoit-Wolf's own for these films)."""
    if method == "knn":
        if len(features) > MAX_REFERENCE:
            keep = np.random.default_rng(seed).choice(len(features), MAX_REFERENCE, replace=False)
            features = features[np.sort(keep)]
        return {"reference": features.astype(np.float32)}
    from sklearn.covariance import LedoitWolf, ShrunkCovariance  # evaluate.py alone fits

    shrunk = (LedoitWolf() if shrinkage is None else ShrunkCovariance(shrinkage=shrinkage)
              ).fit(features.astype(np.float64))
    return {"mean": shrunk.location_.astype(np.float32),
            "precision": shrunk.precision_.astype(np.float32)}


def fit_parts(features: np.ndarray, sizes: Sequence[int], method: str, scales=None,
              seed: int = 0, shrinkages: Sequence[float] | None = None
              ) -> dict[str, np.ndarray]:
    """GateScores' arrays: each part's fit_arrays (Mahalanobis: shrunk by `shrinkages`, each
    part's Ledoit-Wolf intensity unless given), suffixed by its index, its size and scale (1
    unless given)."""
    arrays = {"sizes": np.asarray(sizes, dtype=np.int64),
              "scales": np.ones(len(sizes)) if scales is None else np.asarray(scales)}
    for i, part in enumerate(np.split(features, np.cumsum(sizes)[:-1], axis=1)):
        shrinkage = None if shrinkages is None else shrinkages[i]
        arrays.update({f"{name}_{i}": value
                       for name, value in fit_arrays(part, method, seed, shrinkage).items()})
    return arrays


def ledoit_wolf_shrinkages(features: np.ndarray, sizes: Sequence[int]) -> list[float]:
    """Each part's Ledoit-Wolf shrinkage intensity on every val film. The held-out gates and
    the final one use these same intensities: Ledoit-Wolf shrinks less the more films it sees,
    so a gate fitted on 9/10 of val with its own would score new films lower than the final one
    does, and its quantile would flag several times 1 - quantile of them."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    return [float(ledoit_wolf_shrinkage(part.astype(np.float64)))
            for part in np.split(features, np.cumsum(sizes)[:-1], axis=1)]


def part_scores(arrays: dict[str, np.ndarray], method: str, features: np.ndarray,
                neighbours: int = NEIGHBOURS) -> np.ndarray:
    """rows x parts: each part's unscaled distance."""
    with torch.no_grad():
        return GateScores(method, arrays, neighbours).part_scores(torch.from_numpy(
            np.ascontiguousarray(features, dtype=np.float32))).double().numpy()


def score_with(arrays: dict[str, np.ndarray], method: str, features: np.ndarray,
               neighbours: int = NEIGHBOURS) -> np.ndarray:
    """The gate's scores (GateScores) of feature rows."""
    return (part_scores(arrays, method, features, neighbours) / arrays["scales"]).max(axis=1)


def held_out_scores(features: np.ndarray, patient_ids: np.ndarray, sizes: Sequence[int],
                    method: str, neighbours: int = NEIGHBOURS, seed: int = 0) -> np.ndarray:
    """rows x parts: each val film's part distances as a new film would get them: kNN against
    every other patient's films (leave one patient out, exactly); Mahalanobis against a gate
    fitted on the other FOLDS - 1 folds of patients."""
    groups = np.unique(patient_ids, return_inverse=True)[1]
    if method == "knn":
        return np.stack([leave_patient_out_knn(part, groups, neighbours) for part in
                         np.split(features, np.cumsum(sizes)[:-1], axis=1)], axis=1)
    from sklearn.model_selection import GroupKFold

    folds = min(FOLDS, int(groups.max()) + 1)
    scores = np.empty((len(features), len(sizes)))
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    shrinkages = ledoit_wolf_shrinkages(features, sizes)
    for fit, held in splitter.split(features, groups=groups):
        arrays = fit_parts(features[fit], sizes, method, seed=seed, shrinkages=shrinkages)
        scores[held] = part_scores(arrays, method, features[held], neighbours)
    return scores


def leave_patient_out_knn(features: np.ndarray, groups: np.ndarray, k: int,
                          chunk: int = 2048) -> np.ndarray:
    """Each film's distance to its k-th nearest film of another patient."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    patients = torch.from_numpy(groups)
    out = []
    for start in range(0, len(x), chunk):
        squared = (2.0 - 2.0 * x[start:start + chunk] @ x.T).clamp_min(0.0)
        same = patients[start:start + chunk, None] == patients[None, :]
        squared = squared.masked_fill(same, float("inf"))
        out.append(torch.topk(squared, k, dim=1, largest=False).values[:, -1].sqrt())
    return torch.cat(out).double().numpy()


@dataclass
class InputGate:
    """A fitted gate: score films' features, flag those above the threshold."""

    method: str
    arrays: dict[str, np.ndarray]  # GateScores' (fit_parts)
    threshold: float  # the quantile of val's held-out scores
    quantile: float
    n_films: int  # val films (rows) it was fitted on
    n_patients: int
    neighbours: int = NEIGHBOURS

    def module(self) -> GateScores:
        return GateScores(self.method, self.arrays, self.neighbours)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return score_with(self.arrays, self.method, features, self.neighbours)

    def inside(self, scores: np.ndarray) -> np.ndarray:
        """True where a film is within the training distribution (score <= threshold)."""
        return np.asarray(scores) <= self.threshold


def fit_gate(features: np.ndarray, patient_ids, quantile: float, method: str = METHOD,
             sizes: Sequence[int] | None = None, seed: int = 0) -> InputGate | None:
    """The gate of val's features (parts of `sizes` columns, each of length 1; one part when
    None): each part's scale is the `quantile` of its held-out distances, a film's score its
    largest scaled part distance (so a film far out in either part is flagged), the threshold the
    `quantile` of the held-out scores. None with fewer than MIN_FILMS films or two patients."""
    patient_ids = np.asarray(patient_ids)
    if len(features) < max(MIN_FILMS, NEIGHBOURS + 1) or len(np.unique(patient_ids)) < 2:
        return None
    sizes = [features.shape[1]] if sizes is None else list(sizes)
    held = held_out_scores(features, patient_ids, sizes, method, NEIGHBOURS, seed)
    scales = np.quantile(held, quantile, axis=0)
    shrinkages = ledoit_wolf_shrinkages(features, sizes) if method == "mahalanobis" else None
    return InputGate(method, fit_parts(features, sizes, method, scales, seed, shrinkages),
                     float(np.quantile((held / scales).max(axis=1), quantile)), quantile,
                     len(features), int(len(np.unique(patient_ids))))


# ---- stored beside thresholds.json --------------------------------------------------------------

def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_gate(gate: InputGate, folder: Path) -> dict:
    """GATE_FILE in `folder`; returns thresholds.json's "input_gate" block naming it."""
    path = folder / GATE_FILE

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would add .npz to a path's name
            np.savez(handle, **gate.arrays)

    write_atomic(path, save)
    return {"method": gate.method, "neighbours": gate.neighbours, "threshold": gate.threshold,
            "quantile": gate.quantile, "fitted_on": "val", "n_films": gate.n_films,
            "n_patients": gate.n_patients, "features": FEATURES,
            "parts": [int(size) for size in gate.arrays["sizes"]],
            "score": "the largest of the parts' distances, each over its held-out quantile",
            "threshold_from": "the quantile of val's held-out scores (kNN: leave one patient "
                              f"out; Mahalanobis: {FOLDS} folds of patients)",
            "file": GATE_FILE, "sha256": sha256_of(path)}


def read_gate(block: dict, thresholds_path: Path) -> InputGate:
    """The gate thresholds.json's "input_gate" block describes; its file beside thresholds.json
    (a site's thresholds file shares the checkpoint's), checked by its SHA-256."""
    try:
        method, file, digest = block["method"], block["file"], block["sha256"]
        threshold, quantile = float(block["threshold"]), float(block["quantile"])
        neighbours = int(block.get("neighbours", NEIGHBOURS))
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{thresholds_path}: its input_gate block is incomplete ({err}); "
                            "re-run evaluate.py to rewrite it") from None
    if method not in METHODS:
        raise PipelineError(f"{thresholds_path}: input_gate method {method!r} is not one of "
                            f"{', '.join(METHODS)}; re-run evaluate.py")
    path = thresholds_path.parent / file
    if not path.is_file():
        raise PipelineError(f"{path} not found: the input gate of {thresholds_path} lives in it "
                            f"(evaluate.py writes both; keep {file} beside the thresholds file)")
    if sha256_of(path) != digest:
        raise PipelineError(f"{path} is not the file {thresholds_path} was written with (its "
                            "SHA-256 differs): re-run evaluate.py to fit both again")
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return InputGate(method, arrays, threshold, quantile, int(block.get("n_films", 0)),
                     int(block.get("n_patients", 0)), neighbours)
