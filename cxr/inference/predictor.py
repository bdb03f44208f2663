"""Predictions for new radiographs from a checkpoint: shared by predict.py, app.py and export.py.

Everything the model needs (labels, image size, pixel statistics, architecture, the positive-weight
offset) comes from the checkpoint; each class's calibration map and decision threshold come from
thresholds.json beside it (evaluate.py writes it), else probabilities are the model's own and
every class is flagged at 0.5, with a warning. thresholds.json is bound to the weights it was
fitted for (checkpoint.model_id) and to test-time augmentation on or off: a mismatch is refused
(evaluate.py makes a new one), or with --allow_threshold_mismatch used with a warning. --thresholds
FILE reads a site's file instead (evaluate.py --recalibrate). Images go through the decoding and
centre view of evaluation (imaging.decode_square, then dataset.centre_view), so a file gets the
probabilities evaluate.py would give it. The input gate stored with the thresholds
(cxr/evaluation/ood.py) scores each film from the same forward pass: ood_score, and
in_distribution (false above the gate's threshold).
"""

from __future__ import annotations

import dataclasses
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cxr.data.augment import TTAModel, centre_view
from cxr.data.imaging import DICOM_MAGIC, DICOM_MAGIC_OFFSET, NO_HEADER, DicomHeader, \
    ImageReadError, decode_grayscale, decode_square, decode_square_bytes, header_view, is_dicom, \
    read_dicom_header, read_grayscale, view_from_name
from cxr.data.labels import NOT_TRAINED
from cxr.data.loading import default_workers, keep_batch
from cxr.errors import PipelineError
from cxr.evaluation.calibration import calibrated_probs
from cxr.evaluation.ensemble import ENSEMBLE_FILE, EnsembleModel, check_members, checkpoint_paths, \
    ensemble_folder, ensemble_id, is_ensemble, read_ensemble_file
from cxr.evaluation.ood import FeatureTap, GateScores
from cxr.evaluation.thresholds import Thresholds, read_thresholds
from cxr.training.checkpoint import Rebuild, checkpoint_warnings, load_checkpoint, model_id, \
    require_finite, untrained_labels
from cxr.training.runtime import autocast, autocast_dtype, choose_device, prepare_model, to_device

if TYPE_CHECKING:
    from config import Config

# ---- the model of a checkpoint ------------------------------------------------------------------

@dataclass
class Predictor:
    """A checkpoint ready to predict: the model on its device, its labels, geometry, thresholds."""
    model: torch.nn.Module  # the network itself (Grad-CAM hooks into its backbone)
    scorer: torch.nn.Module  # what predicts: the model, or the model under TTA (--tta true)
    labels: tuple[str, ...]
    image_size: int  # side of the square the model sees
    side: int  # images are resized to side x side, then centre-cropped to image_size
    thresholds: Thresholds
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    channels_last: bool
    checkpoint: Path
    view_mode: str = "frontal"  # study: the model fuses a study's views (predict_studies)
    max_views: int = 1  # study mode: views fused per study at most
    model_id: str = ""  # fingerprint of the weights (checkpoint.model_id)
    tta: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)  # checkpoint and thresholds
    frontal_only: bool = True  # trained on frontal films only (the checkpoint's frontal_only)
    logit_offset_removed: bool = True  # False: an old checkpoint (checkpoint_warnings)
    # labels its training split never labelled (checkpoint.untrained_labels): no probability
    # or decision is given for them, only NOT_TRAINED
    untrained: tuple[str, ...] = ()
    gate: GateScores | None = None  # the input gate's scorer (thresholds.gate), on the device

    def __post_init__(self):
        if self.thresholds.gate is not None and self.gate is None:
            self.gate = self.thresholds.gate.module().to(self.device)

    @property
    def trained(self) -> tuple[str, ...]:
        """The labels with a probability and a decision, in output order."""
        return tuple(label for label in self.labels if label not in self.untrained)


def untrained_note(untrained: Sequence[str]) -> list[str]:
    """The warning a predictor carries when some labels are not trained."""
    if not untrained:
        return []
    return [f"{NOT_TRAINED}: {', '.join(untrained)} (the training split had no labelled value of "
            f"them, e.g. a dataset that does not annotate them): no probability or decision is "
            f"given for them"]


def load_predictor(path: str | Path, cfg: Config, *, rebuild: Rebuild) -> Predictor:
    """The checkpoint's model on --device with --precision, under TTA with --tta; its
    thresholds.json checked against its weights and --tta; all else from the checkpoint.
    Several checkpoints (cxr/evaluation/ensemble.py: a comma list, a folder) make an ensemble."""
    if is_ensemble(str(path)):
        return load_ensemble_predictor(str(path), cfg, rebuild=rebuild)
    path = Path(path)
    checkpoint = load_checkpoint(path)
    model, trained = rebuild(checkpoint)
    device = choose_device(cfg.device)
    labels = tuple(checkpoint["labels"])
    weights_id = model_id(checkpoint)
    thresholds = read_thresholds(path, labels, weights_id, cfg.tta, cfg.allow_threshold_mismatch,
                                 cfg.thresholds)
    model = prepare_model(model, device, cfg)
    untrained = untrained_labels(checkpoint)
    return Predictor(model, TTAModel(model) if cfg.tta else model, labels, trained.image_size,
                     trained.stored_side, thresholds, device,
                     autocast_dtype(cfg.precision, device), cfg.channels_last, path,
                     trained.view_mode, trained.max_views, weights_id, cfg.tta,
                     [*checkpoint_warnings(checkpoint), *thresholds.warnings,
                      *untrained_note(untrained)],
                     trained.frontal_only, "logit_offset" in checkpoint["model"], untrained)


def load_ensemble_predictor(spec: str, cfg: Config, *, rebuild: Rebuild) -> Predictor:
    """The members as one model (ensemble.EnsembleModel): each member's calibration from
    ensemble.json, the ensemble's thresholds.json beside it, bound to the ensemble's model_id."""
    paths = checkpoint_paths(spec)
    checkpoints = [load_checkpoint(path) for path in paths]
    built = [rebuild(checkpoint) for checkpoint in checkpoints]
    labels = tuple(checkpoints[0]["labels"])
    check_members(paths, [tuple(c["labels"]) for c in checkpoints], [t for _, t in built])
    member_ids = [model_id(checkpoint) for checkpoint in checkpoints]
    folder = ensemble_folder(spec, paths, cfg)
    stored, warnings = read_ensemble_file(folder, member_ids)
    calibrations = [stored.calibrations[i] if stored else None for i in member_ids]
    device = choose_device(cfg.device)
    members = [prepare_model(model, device, cfg) for model, _ in built]
    network = EnsembleModel(members, calibrations, labels).to(device)
    scorer = EnsembleModel([TTAModel(m) for m in members], calibrations, labels).to(device) \
        if cfg.tta else network
    handle = folder / ENSEMBLE_FILE
    weights_id = ensemble_id(member_ids)
    thresholds = read_thresholds(handle, labels, weights_id, cfg.tta,
                                 cfg.allow_threshold_mismatch, cfg.thresholds)
    trained = built[0][1]
    notes = [f"{path}: {w}" for path, c in zip(paths, checkpoints) for w in checkpoint_warnings(c)]
    # a label any member did not train: the members' mean would include its meaningless output
    untrained = tuple(label for label in labels
                      if any(label in untrained_labels(c) for c in checkpoints))
    return Predictor(network, scorer, labels, trained.image_size, trained.stored_side, thresholds,
                     device, autocast_dtype(cfg.precision, device), cfg.channels_last, handle,
                     trained.view_mode, trained.max_views, weights_id, cfg.tta,
                     [*notes, *warnings, *thresholds.warnings, *untrained_note(untrained)],
                     trained.frontal_only, all("logit_offset" in c["model"] for c in checkpoints),
                     untrained)


def find_label(name: str, labels: Sequence[str], untrained: Sequence[str] = ()) -> str:
    """A label by name, ignoring case ("cardiomegaly"); an unknown name lists the valid ones, an
    untrained one says so."""
    matches = [label for label in labels if label.lower() == name.strip().lower()]
    if not matches:
        raise PipelineError(f"unknown finding {name!r}; the checkpoint predicts: "
                            f"{', '.join(label for label in labels if label not in untrained)}")
    if matches[0] in untrained:
        raise PipelineError(f"{matches[0]}: {NOT_TRAINED} (the checkpoint's training split had "
                            f"no labelled value of it), so it has no heatmap either")
    return matches[0]


# ---- images: files on disk or uploads in memory ----------------------------------------------------

class Upload(NamedTuple):
    """An image file already in memory (an upload in app.py): its name and its bytes."""
    name: str
    data: bytes


Source = Union[str, Upload]  # a path, or an upload


def source_name(source: Source) -> str:
    return source.name if isinstance(source, Upload) else str(source)


def model_view(source: Source, image_size: int, side: int) -> np.ndarray:
    """The uint8 image_size x image_size centre view the model sees, as evaluation builds it."""
    if isinstance(source, Upload):
        square = decode_square_bytes(source.data, source.name, side)
    else:
        square = decode_square(source, side)
    return centre_view(square, image_size)


def radiograph(source: Source) -> np.ndarray:
    """The whole image as 8-bit grayscale, for drawing heatmaps on."""
    if isinstance(source, Upload):
        return decode_grayscale(source.data, source.name)
    return read_grayscale(source)


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 n x 1 x size x size: the images of the batch that could be read
    indices: list[int]  # their positions in the list of sources
    errors: list[tuple[int, str]]  # (position, reason) of those that could not


class RadiographFiles(Dataset):
    """Sources as batches of model views; an unreadable file is reported, not raised, so the
    rest of its batch and of the run is still predicted."""

    def __init__(self, sources: Sequence[Source], image_size: int, side: int):
        self.sources, self.image_size, self.side = list(sources), image_size, side

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> Batch:
        """A whole batch (DataLoader calls this), written straight into one uint8 array."""
        views, good, errors = [], [], []
        for index in indices:
            try:
                views.append(model_view(self.sources[index], self.image_size, self.side))
                good.append(index)
            except ImageReadError as err:
                errors.append((index, str(err)))
        images = np.empty((len(views), 1, self.image_size, self.image_size), dtype=np.uint8)
        for slot, view in enumerate(views):
            images[slot, 0] = view
        return Batch(torch.from_numpy(images), good, errors)


class StudyBatch(NamedTuple):
    views: tuple[torch.Tensor, torch.Tensor]  # uint8 n x V x 1 x size x size, bool n x V present
    indices: list[int]  # the studies of the batch with at least one readable view
    errors: list[tuple[int, str]]  # (source position, reason) of the views that could not be read
    sources: list[list[int]]  # per study of `indices`: the source positions of its views, in slots


class StudyFiles(Dataset):
    """Studies (lists of source positions, at most max_views each) as batches of fused-model
    input, as StudyDataset builds it in training: the views in slots, a mask of those present.
    An unreadable view is reported and its study predicted from the views that could be read."""

    def __init__(self, sources: Sequence[Source], studies: Sequence[Sequence[int]],
                 image_size: int, side: int, max_views: int):
        self.files = RadiographFiles(sources, image_size, side)
        self.studies, self.max_views = [list(views) for views in studies], max_views

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> StudyBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> StudyBatch:
        size = self.files.image_size
        views = np.zeros((len(indices), self.max_views, 1, size, size), dtype=np.uint8)
        present = np.zeros((len(indices), self.max_views), dtype=bool)
        good, errors, sources = [], [], []
        for study in indices:
            read = self.files.__getitems__(self.studies[study])
            errors += read.errors
            if not read.indices:
                continue
            slot = len(good)
            views[slot, :len(read.indices)] = read.images.numpy()
            present[slot, :len(read.indices)] = True
            good.append(study)
            sources.append(read.indices)
        batch = (torch.from_numpy(views[:len(good)]), torch.from_numpy(present[:len(good)]))
        return StudyBatch(batch, good, errors, sources)


def yield_to_the_model(_worker_id: int) -> None:
    """Workers run at a lower CPU priority: decoding takes about a millisecond an image against
    tens for the model on a CPU, and with 4 batches prefetched a worker can wait for idle
    cycles instead of taking them from the model's threads (which share the same cores)."""
    os.nice(5)


def make_loader(data: RadiographFiles | StudyFiles, batch_size: int, num_workers: int,
                device: torch.device) -> DataLoader:
    """Batches in input order; workers decode the next batches while the model runs (none for
    a single batch, where starting a worker would cost more than it saves)."""
    workers = default_workers(num_workers) if math.ceil(len(data) / batch_size) > 1 else 0
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=keep_batch, pin_memory=device.type == "cuda",
                      worker_init_fn=yield_to_the_model if device.type == "cpu" else None,
                      prefetch_factor=4 if workers > 0 else None)


# ---- predicting ------------------------------------------------------------------------------------

class PredictedFiles(NamedTuple):
    """What predict_sources / predict_studies give for new radiographs: the table predict.py
    writes as predictions.csv, the files that could not be read (predictions_errors.csv), and
    where each row came from.

    Not evaluation.Predictions, on purpose. That one holds a model's raw scores (logits before
    the calibration map) on the rows of a labelled split with their targets: what every
    statistic, and the calibration and thresholds fitted on val, are computed from. This one is
    the result handed to a user for files without labels: calibrated probabilities and 0/1
    decisions at the stored thresholds, rows named by path (or study), beside the unreadable
    files. Scoring such a table against labels means joining it with a split's rows into an
    evaluation.Predictions.
    """

    table: pd.DataFrame  # path, one probability column per label, one "<label> positive" 0/1
    errors: pd.DataFrame  # path, reason: the files that could not be read
    positions: list[int]  # each row's position in the sources (its study's, predict_studies)
    members: Sequence[Sequence[int]] = ()  # each row's sources: its image, or its study's views


def flag_column(label: str) -> str:
    return f"{label} positive"


@torch.no_grad()
def batch_outputs(predictor: Predictor, images) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 logits (on the CPU) of a uint8 batch, or of a study batch (views, present), with
    the predictor's device and precision; and the input gate's scores from the same pass (None
    without a gate)."""
    with FeatureTap(predictor.scorer) if predictor.gate else nullcontext() as tap:
        with autocast(predictor.device, predictor.dtype):
            logits = predictor.scorer(to_device(images, predictor.device,
                                                predictor.channels_last))
        scores = None if tap is None else predictor.gate(tap.take(len(logits))).double().cpu()
    return logits.float().cpu(), scores


def batch_logits(predictor: Predictor, images) -> torch.Tensor:
    """batch_outputs' logits."""
    return batch_outputs(predictor, images)[0]


def to_probabilities(logits: torch.Tensor, thresholds: Thresholds, labels: Sequence[str]
                     ) -> np.ndarray:
    """Each class's calibration map (fitted on val), then the sigmoid; a map never changes the
    order of a class's images, so AUCs are the same."""
    return calibrated_probs(logits.double().numpy(), thresholds.calibration, tuple(labels))


OOD_COLUMNS = ("ood_score", "in_distribution")  # the input gate's, in predictions.csv


def gate_columns(scores: list[torch.Tensor], n: int, predictor: Predictor) -> pd.DataFrame:
    """ood_score and in_distribution ("true"/"false") of n rows; blank without a gate."""
    if predictor.gate is None:
        return pd.DataFrame({name: [""] * n for name in OOD_COLUMNS})
    values = torch.cat(scores).numpy() if scores else np.zeros(0)
    inside = predictor.thresholds.gate.inside(values)
    return pd.DataFrame({"ood_score": values,
                         "in_distribution": np.where(inside, "true", "false")})


def outside_count(table: pd.DataFrame) -> int:
    """The rows the input gate flags (in_distribution "false")."""
    return int((table["in_distribution"] == "false").sum()) if "in_distribution" in table else 0


def results_table(names: list[str], probabilities: np.ndarray, predictor: Predictor,
                  gate: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per image: path, the input gate's ood_score and in_distribution (`gate`,
    gate_columns), the probability of each label, and its 0/1 decision; both NOT_TRAINED for a
    label the checkpoint was not trained on."""
    table = pd.DataFrame(probabilities.astype(np.float64).reshape(len(names), -1),
                         columns=list(predictor.labels))
    if gate is not None:
        table = pd.concat([gate.reset_index(drop=True), table], axis=1)
    table.insert(0, "path", names)
    for label in predictor.labels:
        threshold = predictor.thresholds.values[label]
        table[flag_column(label)] = (table[label] >= threshold).astype(int)
    for label in predictor.untrained:
        table[label] = table[flag_column(label)] = NOT_TRAINED
    return table


def heatmaps(predictor: Predictor, images: torch.Tensor, label: str) -> np.ndarray:
    """Grad-CAM maps (n x size x size, 0..1) of one label for a uint8 batch
    (cxr.inference.gradcam)."""
    from cxr.inference.gradcam import \
        grad_cam  # imported here: only heatmap runs need pytorch_grad_cam
    index = predictor.labels.index(find_label(label, predictor.labels, predictor.untrained))
    return grad_cam(predictor.model, to_device(images, predictor.device, predictor.channels_last),
                    index)


def overlay_of(predictor: Predictor, source: Source, label: str) -> np.ndarray:
    """The Grad-CAM overlay of one label on one image (app.py shows it)."""
    from cxr.inference.gradcam import overlay
    view = model_view(source, predictor.image_size, predictor.side)
    cam = heatmaps(predictor, torch.from_numpy(view)[None, None], label)[0]
    return overlay(radiograph(source), cam, predictor.side)


# receives (position in the sources, label, Grad-CAM map over the model view with values 0..1)
HeatmapCallback = Callable[[int, str, np.ndarray], None]


def predict_sources(predictor: Predictor, sources: Sequence[Source], batch_size: int = 16,
                    num_workers: int = 0, progress: bool = True,
                    heatmap_labels: Sequence[str] = (),
                    on_heatmap: HeatmapCallback | None = None,
                    views: Sequence[str] | None = None) -> PredictedFiles:
    """Probabilities and decisions of every readable source, in input order, with its `view`
    (film_view of each source unless `views` gives them), and the reasons of the unreadable
    ones. With heatmap_labels, Grad-CAM maps of those labels for every image are handed to
    on_heatmap(position, label, map over the model view, values 0..1)."""
    views = list(views) if views is not None else [film_view(source) for source in sources]
    data = RadiographFiles(sources, predictor.image_size, predictor.side)
    positions, rows, scores, errors = [], [], [], []
    bar = tqdm(total=len(data), desc="predict", unit="img", disable=not progress)
    for batch in make_loader(data, batch_size, num_workers, predictor.device):
        errors += [(source_name(sources[i]), reason) for i, reason in batch.errors]
        if batch.indices:
            logits, gate_scores = batch_outputs(predictor, batch.images)
            rows.append(logits)
            scores += [] if gate_scores is None else [gate_scores]
            positions += batch.indices
            for label in heatmap_labels:
                maps = heatmaps(predictor, batch.images, label)
                for position, cam in zip(batch.indices, maps):
                    on_heatmap(position, label, cam)
        bar.update(len(batch.indices) + len(batch.errors))
    bar.close()
    names = [source_name(sources[i]) for i in positions]
    table = results_table(names, finite_probabilities(rows, predictor), predictor,
                          gate_columns(scores, len(names), predictor))
    table.insert(1, "view", [views[i] for i in positions])
    return PredictedFiles(table, pd.DataFrame(errors, columns=["path", "reason"]), positions,
                          [[position] for position in positions])


def finite_probabilities(rows: list[torch.Tensor], predictor: Predictor) -> np.ndarray:
    """The probabilities of the batches' logits; a NaN/inf output is an error (broken weights)."""
    logits = torch.cat(rows) if rows else torch.empty((0, len(predictor.labels)))
    require_finite(logits, f"the model of {predictor.checkpoint}")
    return to_probabilities(logits, predictor.thresholds, predictor.labels)


def predict_studies(predictor: Predictor, sources: Sequence[Source],
                    studies: Sequence[Sequence[int]], names: Sequence[str], batch_size: int = 16,
                    num_workers: int = 0, progress: bool = True,
                    heatmap_labels: Sequence[str] = (),
                    on_heatmap: HeatmapCallback | None = None) -> PredictedFiles:
    """Study-mode checkpoints: one prediction per study from its views fused (view_mode study).

    `studies` lists the source positions of each study's views (at most predictor.max_views),
    `names` each study's name. The table has a row per study with a readable view: study, the
    views used (paths joined by "; "), their number, probabilities and decisions; `positions`
    holds the row's study index. Grad-CAM maps are drawn per view, each view's as a one-view
    study (what that film alone shows), and handed to on_heatmap(source position, label, map).
    """
    data = StudyFiles(sources, studies, predictor.image_size, predictor.side,
                      predictor.max_views)
    done, rows, scores, errors, used = [], [], [], [], []
    bar = tqdm(total=sum(map(len, studies)), desc="predict", unit="img", disable=not progress)
    for batch in make_loader(data, batch_size, num_workers, predictor.device):
        errors += [(source_name(sources[i]), reason) for i, reason in batch.errors]
        if batch.indices:
            logits, gate_scores = batch_outputs(predictor, batch.views)
            rows.append(logits)
            scores += [] if gate_scores is None else [gate_scores]
            done += batch.indices
            used += batch.sources
            for label in heatmap_labels:
                images, present = batch.views
                maps = heatmaps(predictor, images[present], label)
                for position, cam in zip(sum(batch.sources, []), maps):
                    on_heatmap(position, label, cam)
        bar.update(sum(map(len, batch.sources)) + len(batch.errors))
    bar.close()
    table = results_table([names[i] for i in done], finite_probabilities(rows, predictor),
                          predictor, gate_columns(scores, len(done), predictor))
    table = table.rename(columns={"path": "study"})
    table.insert(1, "views", ["; ".join(source_name(sources[i]) for i in views) for views in used])
    table.insert(2, "n_views", [len(views) for views in used])
    return PredictedFiles(table, pd.DataFrame(errors, columns=["path", "reason"]), done, used)


UNKNOWN_VIEW = "unknown"


def film_view(source: Source, given: str | None = None, header: DicomHeader | None = None
              ) -> str:
    """"frontal", "lateral" or "unknown": the view given with the input (a CSV's `view` or
    `Frontal/Lateral` column), else the DICOM header's ViewPosition / PatientOrientation (its
    film_header, read here unless given), else the file name (CheXpert's view1_frontal.jpg,
    view2_lateral.jpg)."""
    if given:
        return given
    header = header if header is not None else film_header(source)
    return header_view(header) or view_from_name(source_name(source)) or UNKNOWN_VIEW


def film_header(source: Source) -> DicomHeader:
    """What a source's DICOM header says (imaging.read_dicom_header: read up to the pixel data,
    nothing decoded); NO_HEADER for any other file, and for one that cannot be read or parsed
    (the decoder names that problem when the pixels are read)."""
    if isinstance(source, Upload):
        if not is_dicom(source.data, source.name):
            return NO_HEADER
        return read_dicom_header(source.data) or NO_HEADER
    try:
        with open(source, "rb") as handle:
            if not is_dicom(handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)), source):
                return NO_HEADER
            handle.seek(0)
            return read_dicom_header(handle) or NO_HEADER
    except OSError:
        return NO_HEADER


def lateral_warning(table: pd.DataFrame, predictor: Predictor) -> str | None:
    """A frontal-only model's probabilities of a lateral film mean nothing: say which films."""
    if predictor.view_mode != "frontal" or not predictor.frontal_only or "view" not in table:
        return None
    lateral = table.loc[table["view"] == "lateral", table.columns[0]].tolist()
    if not lateral:
        return None
    return (f"{len(lateral)} film(s) look lateral ({', '.join(map(str, lateral[:3]))}"
            f"{', ...' if len(lateral) > 3 else ''}): this model was trained on frontal films "
            "only, so their findings are not reliable (they are marked in the view column)")


def study_table(table: pd.DataFrame, labels: Sequence[str], how: str, frontal_only: bool,
                untrained: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """An image model's per-image table (predict_sources) as studies, and the studies that had
    no frontal film.

    A study is the folder of its images (CheXpert's patientNNNNN/studyN/viewN_*.jpg), named as
    given (like predict_studies' study column); its probability of each label is the max or mean
    (`how`) over its images' calibrated probabilities, as evaluate.py's study level aggregates.
    A frontal-only model's films whose `view` is lateral are left out; "unknown" films are kept,
    as lateral_warning keeps them (nothing says they are lateral, and most chest films are
    frontal). A study with only lateral films is aggregated over all of them, and listed.
    Columns: study, views (the paths used, joined by "; "), n_views, one probability column per
    label (NOT_TRAINED for the `untrained` labels). No "<label> positive" decisions: the stored
    thresholds were chosen on single images, not on max or mean aggregates, whose distribution
    differs (the max of several images is higher).
    """
    trained = [label for label in labels if label not in untrained]
    folders: dict[str, list[int]] = {}  # in order of first appearance
    for position, path in enumerate(table["path"]):
        folders.setdefault(os.path.dirname(os.path.abspath(path)), []).append(position)
    lateral = (table["view"] == "lateral").to_numpy() & frontal_only
    rows, no_frontal = [], []
    for members in map(np.asarray, folders.values()):
        used = members[~lateral[members]]
        name = os.path.dirname(table["path"].iloc[members[0]])
        if len(used) == 0:
            used = members
            no_frontal.append(name)
        images = table.iloc[used]
        rows.append({"study": name, "views": "; ".join(images["path"]), "n_views": len(used),
                     **images[trained].astype(float).agg(how).to_dict(),
                     **dict.fromkeys(untrained, NOT_TRAINED)})
    return pd.DataFrame(rows, columns=["study", "views", "n_views", *labels]), no_frontal


def frontal_first(names: Sequence[str], max_views: int, views: Sequence[str] | None = None
                  ) -> tuple[list[int], list[int]]:
    """(positions of the views a study model takes, frontal films first as in training; those
    left out beyond max_views). `views` are the films' film_view, else told by their names."""
    views = views if views is not None else [view_from_name(name) for name in names]
    order = sorted(range(len(names)), key=lambda i: (views[i] == "lateral", names[i]))
    return order[:max_views], order[max_views:]


def findings_of(table_row: pd.Series, predictor: Predictor) -> pd.DataFrame:
    """One image's findings, most probable first: finding, probability, threshold, decision;
    then the untrained labels, with no probability or threshold and the decision NOT_TRAINED."""
    trained = list(predictor.trained)
    frame = pd.DataFrame({
        "finding": trained,
        "probability": [float(table_row[label]) for label in trained],
        "threshold": [predictor.thresholds.values[label] for label in trained],
    })
    frame["decision"] = np.where(frame["probability"] >= frame["threshold"], "positive",
                                 "negative")
    frame = frame.sort_values("probability", ascending=False, kind="stable")
    untrained = pd.DataFrame({"finding": list(predictor.untrained), "probability": np.nan,
                              "threshold": np.nan, "decision": NOT_TRAINED})
    return pd.concat([frame, untrained] if len(untrained) else [frame], ignore_index=True)
