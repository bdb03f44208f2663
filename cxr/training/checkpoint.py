"""One checkpoint format, written atomically and loaded without executing code.

A checkpoint is a dict of plain types and tensors, so torch.load(weights_only=True) reads it:
    model, optimizer, scheduler, scaler      state dicts
    epoch, global_step, best_metric          ints / float
    config                                   the run's resolved Config as a dict
    labels                                   the 14 label names, in output order
    normalization                            {"mean": float, "std": float} of the pixels (a
                                             readable copy: the model's buffers hold them too)
    pos_weight                               {label: BCE positive weight} of the training split;
                                             the model's logit_offset buffer holds log of it
    data                                     what the data were built with (stats.json and
                                             splits.json settings), not the command line
    trained_labels                           the labels with a labelled value in the training
                                             split (labels.trained_labels); absent in older
                                             checkpoints: every label counts as trained
    val_auc                                  {label: AUC or None} of that epoch
    warmup                                   {"head": steps, "backbone": steps}: the warm-up
                                             the run began with (cxr/training/schedule.py)
    epoch_selection                          how best.pth is chosen: by val mean AUC, or the
                                             last epoch when val is too small to rank epochs
    online_model, ema                        with --ema_decay: model is the weights' moving
                                             average (what was validated; every consumer loads
                                             it), online_model the weights that train (a resumed
                                             run continues them), ema {"decay", "updates"}
A top_k/ member (--keep_top_k) holds the same without what only resuming needs (optimizer,
scheduler, scaler, rng, online_model). config["backbone"] names the network (absent in
checkpoints from before --backbone: DenseNet121).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from cxr.atomic import write_atomic
from cxr.errors import PipelineError

if TYPE_CHECKING:
    from config import Config

C = TypeVar("C")
# What rebuilds the trained model and its config from a checkpoint: model_architecture.
# model_from_checkpoint, which the scripts hand to the library (the library never imports the
# design card).
Rebuild = Callable[[dict], tuple[nn.Module, Any]]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "config", "labels", "normalization")


def save_checkpoint(payload: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **payload}, tmp))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
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
