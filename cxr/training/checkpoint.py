"""One checkpoint format, written atomically and loaded without executing code. Every key is
written here, by training_payload (member_payload for a top_k/ member), and what a resumed run
needs is read back here, by saved_training.

A checkpoint is a dict of plain types and tensors, so torch.load(weights_only=True) reads it:
    format_version                           FORMAT_VERSION (save_checkpoint adds it)
    model, optimizer, scheduler, scaler      state dicts (--loss aucm: optimizer is LibAUC's
                                             PESG's, with its reference point and running sum
                                             of the weights: cxr/training/aucm.py)
    loss                                     the training loss's own parameters (state dict),
                                             written only when it has any: --loss aucm's a, b
                                             and alpha
    epoch, global_step, best_metric          ints / float: the epochs completed, the optimizer
                                             steps attempted, the best val mean AUC so far
    in_epoch                                 {"epoch", "batches_done", "loss_sum", "seen"}:
                                             where an interrupted epoch stood; None at an
                                             epoch's end
    nonfinite_total                          optimizer steps skipped for NaN/inf so far
    epochs_without_improvement, history      early stopping's count; the metrics.csv rows
    rng, world_size                          every process's random generators
                                             (runtime.rng_state), and how many processes wrote it
    config                                   the run's resolved Config as a dict
    labels                                   the 14 label names, in output order
    val_auc                                  {label: AUC or None} of that epoch
    normalization                            the input convention (a readable copy: the
                                             model's buffers hold it too): "mean" and "std" of
                                             the pixels (one value, or one per channel); with
                                             --init also "channels", "source", "source_size"
                                             (cxr/training/starting_weights.py)
    data                                     what the data were built with (stats.json and
                                             splits.json settings), not the command line
    pos_weight                               {label: BCE positive weight} of the training split;
                                             the model's logit_offset buffer holds log of it
                                             (--loss bce; 0 for focal and aucm: cxr/training/
                                             losses.py, loss_offsets)
    warmup                                   {"head": steps, "backbone": steps}: the warm-up
                                             the run began with (cxr/training/schedule.py)
    trained_labels                           the labels with a labelled value in the training
                                             split (labels.trained_labels)
    epoch_selection                          how best.pth is chosen: by val mean AUC, or the
                                             last epoch when val is too small to rank epochs
    online_model, ema                        with --ema_decay: model is the weights' moving
                                             average (what was validated; every consumer loads
                                             it), online_model the weights that train (a resumed
                                             run continues them), ema {"decay", "updates"}
                                             (cxr/training/ema.py)
A top_k/ member (--keep_top_k) holds the same without what only resuming needs (RESUME_ONLY:
optimizer, scheduler, scaler, rng, online_model, loss). Checkpoints from older versions lack some
keys: in_epoch, nonfinite_total, epochs_without_improvement, history, rng, world_size, warmup
(then read as their defaults), trained_labels (every label counts as trained) and
config["backbone"] (DenseNet121).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from cxr.atomic import write_atomic
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.training.ema import ema_record
from cxr.training.state import Progress, RunState, Trainer

if TYPE_CHECKING:
    from config import Config

C = TypeVar("C")
# What rebuilds the trained model and its config from a checkpoint: model_architecture.
# model_from_checkpoint, which the scripts hand to the library (the library never imports the
# design card).
Rebuild = Callable[[dict], tuple[nn.Module, Any]]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "config", "labels", "normalization")
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng", "online_model",  # not in top_k/ files
               "loss")


# ---- the file ----------------------------------------------------------------------------------

def save_checkpoint(payload: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **payload}, tmp))


UNSAFE_LOAD = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError)


def load_tensors(path: Path):
    """A file's tensors (and the plain types around them), loaded without executing code;
    torch.load's errors pass on (UNSAFE_LOAD) for the caller to word."""
    return torch.load(path, map_location="cpu", weights_only=True)


def is_checkpoint(loaded) -> bool:
    """Whether a loaded file is a checkpoint of this pipeline (it holds REQUIRED_KEYS)."""
    return isinstance(loaded, dict) and all(key in loaded for key in REQUIRED_KEYS)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint {path} not found")
    try:
        checkpoint = load_tensors(path)
    except UNSAFE_LOAD as err:
        raise PipelineError(f"cannot load checkpoint {path} safely (weights_only=True): {err}") \
            from None
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise PipelineError(f"{path} is not a checkpoint of this pipeline (lacks {missing})")
    return checkpoint


def recorded_config(record: dict, cls: type[C]) -> C:
    """The config a checkpoint (or a run's config.json) recorded, as `cls` (config.Config): fields
    added since then keep their defaults, fields since removed are left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v  # JSON-like storage turns tuples to lists
              for k, v in record.items() if k in names}
    return cls(**values)


# ---- what a training run writes ----------------------------------------------------------------

def training_payload(trainer: Trainer, progress: Progress, epochs_done: int, rng: list) -> dict:
    """Everything a run resumes from, as plain types: weights, optimizer, schedule and scaler,
    the progress (at an epoch's end `progress` is the next epoch's, with no batch done), the
    run state, every process's RNG state (`rng`), the config and labels, and the trainer's
    records: the run's fixed facts (normalization, pos_weight, data settings...)."""
    state, records = trainer.state, trainer.records
    return {
        "model": trainer.validated.state_dict(), **ema_payload(trainer), **loss_payload(trainer),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
        "epoch": epochs_done, "in_epoch": position_payload(progress),
        "global_step": progress.global_step, "nonfinite_total": progress.nonfinite_total,
        "best_metric": state.best, "epochs_without_improvement": state.epochs_without_improvement,
        "history": state.history, "rng": rng, "world_size": trainer.world.size,
        "config": dataclasses.asdict(trainer.cfg), "labels": list(LABELS),
        "val_auc": state.val_auc, "normalization": records.normalization, "data": records.data,
        "pos_weight": records.pos_weight, "warmup": records.warmup,
        "trained_labels": records.trained_labels, "epoch_selection": records.epoch_selection}


def ema_payload(trainer: Trainer) -> dict:
    """With --ema_decay the checkpoint's model is the average (what was validated, what every
    consumer loads); the weights that train, which a resumed run continues, are online_model."""
    if trainer.ema is None:
        return {}
    return {"online_model": trainer.model.state_dict(),
            "ema": ema_record(trainer.ema, trainer.cfg.ema_decay)}


def loss_payload(trainer: Trainer) -> dict:
    """{"loss": the criterion's state dict} when the loss has parameters of its own (--loss
    aucm's a, b, alpha, which a resumed run continues); {} for the others (bce's and focal's
    positive weights are recomputed from the training split)."""
    criterion = trainer.criterion
    if criterion is None or not any(True for _ in criterion.parameters()):
        return {}
    return {"loss": criterion.state_dict()}


def position_payload(progress: Progress) -> dict | None:
    """Where an interrupted epoch stands ("in_epoch"); None at an epoch's end."""
    if not progress.batches_done:
        return None
    return {"epoch": progress.epoch, "batches_done": progress.batches_done,
            "loss_sum": progress.loss_sum, "seen": progress.seen}


def member_payload(payload: dict) -> dict:
    """A top_k/ member (--keep_top_k): a training payload without what only resuming needs."""
    return {key: value for key, value in payload.items() if key not in RESUME_ONLY}


# ---- what a resumed run reads back -------------------------------------------------------------

@dataclass
class SavedTraining:
    """What a checkpoint holds for resuming, as training_payload wrote it."""
    normalization: dict  # the pixel statistics the run trains with
    warmup: dict | None  # each parameter group's warm-up steps (None: not recorded)
    weights: dict  # the weights that train: online_model with --ema_decay, else model
    ema: tuple[dict, dict] | None  # with --ema_decay: (the average's weights, its record)
    optimizer: dict
    scheduler: dict
    scaler: dict  # {} when it was disabled
    loss: dict  # the loss's own parameters (--loss aucm's a, b, alpha); {} for the others
    state: RunState
    next_epoch: Progress  # the start of the epoch after the last one completed
    in_epoch: Progress | None  # where an interrupted epoch stood; None at an epoch's end
    world_size: int  # the processes that wrote it
    rng: list  # their random generators, by rank


def saved_training(checkpoint: dict, path: Path) -> SavedTraining:
    """The resumable state of a loaded checkpoint; an error for a top_k/ member, which holds the
    weights only. Keys older versions did not write take the defaults of a fresh run."""
    ema = "ema" in checkpoint
    require_resumable(checkpoint, path)
    next_epoch, in_epoch = saved_progress(checkpoint)
    return SavedTraining(
        normalization=checkpoint["normalization"], warmup=checkpoint.get("warmup"),
        weights=checkpoint["online_model" if ema else "model"],
        ema=(checkpoint["model"], checkpoint["ema"]) if ema else None,
        optimizer=checkpoint["optimizer"], scheduler=checkpoint["scheduler"],
        scaler=checkpoint["scaler"], loss=checkpoint.get("loss") or {},
        state=RunState(checkpoint.get("history") or [], checkpoint["best_metric"],
                       checkpoint.get("epochs_without_improvement", 0), checkpoint["val_auc"]),
        next_epoch=next_epoch, in_epoch=in_epoch, world_size=checkpoint.get("world_size", 1),
        rng=checkpoint.get("rng") or [])


def require_resumable(checkpoint: dict, path: Path) -> None:
    """What resuming cannot do without (rng may be absent: the generators then run on)."""
    needed = ("optimizer", "scheduler", "scaler", *(("online_model",) if "ema" in checkpoint
                                                    else ()))
    missing = [key for key in needed if key not in checkpoint]
    if missing:
        raise PipelineError(f"{path} cannot be resumed: it lacks {missing} (a top_k/ member "
                            "holds the weights only); resume its run's last.pth")


def saved_progress(checkpoint: dict) -> tuple[Progress, Progress | None]:
    """(the start of the next epoch, where the interrupted epoch stood or None)."""
    next_epoch = Progress(epoch=checkpoint["epoch"] + 1,
                          global_step=checkpoint["global_step"] or 0,
                          nonfinite_total=checkpoint.get("nonfinite_total") or 0)
    position = checkpoint.get("in_epoch")
    if not position:
        return next_epoch, None
    return next_epoch, dataclasses.replace(
        next_epoch, epoch=position["epoch"], batches_done=position["batches_done"],
        loss_sum=position["loss_sum"], seen=position["seen"])


# ---- what evaluation and inference read --------------------------------------------------------

def model_id(checkpoint: dict) -> str:
    """A fingerprint of the weights (every tensor of the model's state, by name): what
    thresholds.json is bound to. A resumed run that rewrites best.pth, or a thresholds.json
    copied from another run, no longer matches; renaming or copying the file changes nothing."""
    digest = hashlib.sha256()
    for name, tensor in sorted(checkpoint["model"].items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def untrained_labels(checkpoint: dict) -> tuple[str, ...]:
    """The checkpoint's labels that its training split never labelled (not in its
    "trained_labels"): their outputs mean nothing. () for a checkpoint without the record."""
    trained = checkpoint.get("trained_labels")
    if trained is None:
        return ()
    trained = set(trained)
    return tuple(label for label in checkpoint["labels"] if label not in trained)


def checkpoint_warnings(checkpoint: dict) -> list[str]:
    """What a user should know before trusting a checkpoint's probabilities."""
    if "logit_offset" in checkpoint["model"]:
        return []
    return ["this checkpoint predates the removal of the positive-weight offset: its "
            "probabilities of rare findings are inflated (odds x pos_weight, up to x50) unless "
            "evaluate.py's per-class calibration corrects them. Train it again with this version "
            "for probabilities that mean what they say"]


def load_weights(model: nn.Module, checkpoint: dict) -> nn.Module:
    """The checkpoint's weights in a model built for its config (model_architecture.
    model_from_checkpoint builds it with build_model, as training did); eval mode."""
    state = dict(checkpoint["model"])
    state.setdefault("logit_offset", model.logit_offset)  # older runs: no offset (warned)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
        raise PipelineError(f"the checkpoint's weights do not fit this version's model (saved by "
                            f"an older version?): {detail[:300]}") from None
    return model.eval()


def newest_checkpoint(models_dir: str | Path, name: str = "best.pth") -> Path:
    candidates = sorted(Path(models_dir).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise PipelineError(f"no {models_dir}/*/{name} found: run train.py first, "
                            "or pass --checkpoint PATH")
    return candidates[-1]


def resolve_checkpoint(cfg: Config) -> Path:
    """The checkpoint a script uses: --checkpoint, else --run_name's best.pth, else the newest
    run's best.pth under --models_dir."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.run_name:
        return cfg.run_dir / "best.pth"
    return newest_checkpoint(cfg.models_dir)


def require_finite(logits: torch.Tensor, model: str) -> None:
    """NaN/inf outputs mean broken weights: an error naming the model (a checkpoint's path)."""
    bad = ~torch.isfinite(logits)
    if bad.any():
        raise PipelineError(f"{model} gives NaN/inf outputs for {int(bad.any(dim=1).sum())} "
                            "input(s): its weights are broken (diverged training?); use an "
                            "earlier checkpoint")
