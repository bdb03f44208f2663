"""Resuming a training run: what must match its checkpoint, what a checkpoint holds besides
the weights, and where a resumed run picks up."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.training.checkpoint import load_checkpoint, newest_checkpoint, recorded_config
from cxr.training.ema import ema_record, load_ema
from cxr.training.runtime import World, broadcast, restore_rng
from cxr.training.state import Progress, RunState, Trainer

if TYPE_CHECKING:
    from config import Config

# Fields a resumed run must share with its checkpoint: they shape the data, model or optimisation.
# Any other field (paths, epochs, workers, device, checkpoint cadence...) may change on resume.
FIXED_ON_RESUME = ("frontal_only", "uncertainty_policy", "uncertainty_policy_by_class", "seed", "backbone",
                   "gem_p", "dropout", "image_size", "crop_margin", "batch_size",
                   "accumulation_steps", "frozen_epochs", "lr_head", "lr_backbone", "weight_decay",
                   "warmup_steps", "warmup_share", "lr_schedule", "grad_clip_norm",
                   "max_pos_weight", "augment", "precision", "view_mode", "view_fusion",
                   "max_views", "ema_decay", "keep_top_k")


# ---- which run, with which config --------------------------------------------------------------

def checkpoint_to_resume(cfg: Config) -> Path | None:
    """--resume PATH, or auto: --run_name's last.pth if it exists (else a fresh run, so one
    command serves both the first launch and every relaunch), or the newest run's last.pth."""
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        return Path(cfg.resume)
    if cfg.run_name:
        path = cfg.run_dir / "last.pth"
        return path if path.is_file() else None
    return newest_checkpoint(cfg.models_dir, "last.pth")


def resumed_config(cfg: Config, checkpoint: dict, path: Path, given: set[str]) -> Config:
    """The checkpoint's config, with the options this command gives that may change on resume.

    An option that would change the data, model or optimisation is an error, and so is a
    checkpoint trained for other labels.
    """
    if list(checkpoint["labels"]) != list(LABELS):
        raise PipelineError(f"{path} was trained for labels {checkpoint['labels']}, this code "
                            f"trains {list(LABELS)}: it cannot be resumed here")
    saved = recorded_config(checkpoint["config"], type(cfg))
    conflicts = [name for name in FIXED_ON_RESUME
                 if name in given and getattr(cfg, name) != getattr(saved, name)]
    if conflicts:
        was = ", ".join(f"--{name} {getattr(saved, name)}" for name in conflicts)
        asked = ", ".join(f"--{name} {getattr(cfg, name)}" for name in conflicts)
        raise PipelineError(f"{path} was trained with {was}; this command asks {asked}. Drop "
                            "those options to resume it, or start a new run with another "
                            "--run_name")
    changes = {name: getattr(cfg, name) for name in given
               if name not in (*FIXED_ON_RESUME, "run_name", "models_dir") and hasattr(saved, name)}
    return dataclasses.replace(saved, **changes, run_name=path.parent.name,
                               models_dir=str(path.parent.parent))


def config_for_launch(cfg: Config, given: set[str], world: World
                      ) -> tuple[Config, dict | None, Path | None]:
    """The config this launch trains with, the checkpoint it resumes and that checkpoint's path
    (None, None for a fresh run, which is named by its start time when --run_name is not given:
    the same name on every process)."""
    resume_from = checkpoint_to_resume(cfg)
    checkpoint = load_checkpoint(resume_from) if resume_from else None
    if checkpoint is not None:
        cfg = resumed_config(cfg, checkpoint, resume_from, given)
    elif not cfg.run_name:
        cfg = dataclasses.replace(cfg, run_name=broadcast(world, time.strftime("%Y%m%d-%H%M%S")))
    elif cfg.resume == "auto" and world.is_main:
        print(f"train: no {cfg.run_dir / 'last.pth'} yet: starting the run")
    return cfg, checkpoint, resume_from


# ---- the checkpoint's training state -----------------------------------------------------------

def training_checkpoint(trainer: Trainer, progress: Progress, epochs_done: int, rng: list
                        ) -> dict:
    """Everything a run resumes from, as plain types: weights, optimizer, schedule and scaler,
    the progress (at an epoch's end `progress` is the next epoch's, with no batch done), the
    run state, every process's RNG state (`rng`), the config and labels, and the trainer's
    records: the run's fixed facts (normalization, pos_weight, data settings)."""
    state = trainer.state
    in_epoch = None if not progress.batches_done else {
        "epoch": progress.epoch, "batches_done": progress.batches_done,
        "loss_sum": progress.loss_sum, "seen": progress.seen}
    # with --ema_decay the checkpoint's model is the average (what was validated, what every
    # consumer loads); the weights that train, which a resumed run continues, are online_model
    ema = {} if trainer.ema is None else {"online_model": trainer.model.state_dict(),
                                          "ema": ema_record(trainer.ema, trainer.cfg.ema_decay)}
    return {
        "model": trainer.validated.state_dict(), **ema,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
        "epoch": epochs_done, "in_epoch": in_epoch,
        "global_step": progress.global_step, "nonfinite_total": progress.nonfinite_total,
        "best_metric": state.best, "epochs_without_improvement": state.epochs_without_improvement,
        "history": state.history, "rng": rng, "world_size": trainer.world.size,
        "config": dataclasses.asdict(trainer.cfg), "labels": list(LABELS),
        "val_auc": state.val_auc, **trainer.records}


def load_training_state(trainer: Trainer, checkpoint: dict, path: Path) -> None:
    state = dict(checkpoint["online_model" if "ema" in checkpoint else "model"])
    # a run started before the offset was stored keeps the one this run computed
    state.setdefault("logit_offset", trainer.model.logit_offset)
    try:
        trainer.model.load_state_dict(state)
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
        if trainer.ema is not None:
            load_ema(trainer.ema, checkpoint["model"], checkpoint["ema"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise PipelineError(f"{path} does not fit this model: {str(err).splitlines()[0]}") \
            from None
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    if trainer.scaler.is_enabled() and checkpoint["scaler"]:
        trainer.scaler.load_state_dict(checkpoint["scaler"])


def resume_progress(checkpoint: dict, world: World) -> Progress:
    """Where to pick up: inside the interrupted epoch, or at the start of the next one. Restores
    this process's random generators when the checkpoint was written by as many processes."""
    position = checkpoint.get("in_epoch")
    progress = Progress(epoch=checkpoint["epoch"] + 1, global_step=checkpoint["global_step"] or 0,
                        nonfinite_total=checkpoint.get("nonfinite_total") or 0)
    same_world = checkpoint.get("world_size", 1) == world.size
    if position and same_world:
        progress = dataclasses.replace(progress, epoch=position["epoch"],
                                       batches_done=position["batches_done"],
                                       loss_sum=position["loss_sum"], seen=position["seen"])
    elif position and world.is_main:
        print(f"train: the checkpoint was written by {checkpoint.get('world_size', 1)} "
              f"processes, this run has {world.size}: epoch {position['epoch']} restarts from "
              "its first batch")
    rng = checkpoint.get("rng") or []
    if same_world and len(rng) == world.size:
        restore_rng(rng[world.rank])
    return progress


def resume_training(trainer: Trainer, checkpoint: dict, path: Path) -> Progress:
    """Load the checkpoint's weights, optimizer, schedule, scaler and run state into `trainer`;
    returns where training picks up (the random generators restored last)."""
    load_training_state(trainer, checkpoint, path)
    trainer.state = RunState(checkpoint.get("history") or [], checkpoint["best_metric"],
                             checkpoint.get("epochs_without_improvement", 0),
                             checkpoint["val_auc"])
    return resume_progress(checkpoint, trainer.world)


def resume_command(path: Path, world: World) -> str:
    """The command that continues this run from `path`, with the same number of processes."""
    launcher = (f"torchrun --standalone --nproc_per_node={world.size} train.py"
                if world.distributed else "python train.py")
    return f"{launcher} --resume {path}"
