"""Resuming a training run: what must match its checkpoint, loading what it holds besides the
weights (read by cxr/training/checkpoint.py's saved_training), and where a resumed run picks up."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.settings import fixed_on_resume
from cxr.training.checkpoint import SavedTraining, load_checkpoint, newest_checkpoint, \
    recorded_config, saved_training
from cxr.training.ema import load_ema
from cxr.training.runtime import World, broadcast, restore_rng
from cxr.training.state import Progress, Trainer

if TYPE_CHECKING:
    from config import Config

# Fields a resumed run must share with its checkpoint, as they shape the data, model or
# optimisation, are declared fixed_on_resume in the config (cxr/settings.py). Any other field
# (paths, epochs, workers, device, checkpoint cadence...) may change on resume.


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
    conflicts = [name for name in fixed_on_resume(type(cfg))
                 if name in given and getattr(cfg, name) != getattr(saved, name)]
    if conflicts:
        was = ", ".join(f"--{name} {getattr(saved, name)}" for name in conflicts)
        asked = ", ".join(f"--{name} {getattr(cfg, name)}" for name in conflicts)
        raise PipelineError(f"{path} was trained with {was}; this command asks {asked}. Drop "
                            "those options to resume it, or start a new run with another "
                            "--run_name")
    changes = {name: getattr(cfg, name) for name in given
               if name not in (*fixed_on_resume(type(cfg)), "run_name", "models_dir")
               and hasattr(saved, name)}
    return dataclasses.replace(saved, **changes, run_name=path.parent.name,
                               models_dir=str(path.parent.parent))


def config_for_launch(cfg: Config, given: set[str], world: World
                      ) -> tuple[Config, SavedTraining | None, Path | None]:
    """The config this launch trains with, what it resumes from its checkpoint and that
    checkpoint's path (None, None for a fresh run, which is named by its start time when
    --run_name is not given: the same name on every process)."""
    resume_from = checkpoint_to_resume(cfg)
    checkpoint = load_checkpoint(resume_from) if resume_from else None
    if checkpoint is not None:
        cfg = resumed_config(cfg, checkpoint, resume_from, given)
    elif not cfg.run_name:
        cfg = dataclasses.replace(cfg, run_name=broadcast(world, time.strftime("%Y%m%d-%H%M%S")))
    elif cfg.resume == "auto" and world.is_main:
        print(f"train: no {cfg.run_dir / 'last.pth'} yet: starting the run")
    saved = saved_training(checkpoint, resume_from) if checkpoint is not None else None
    return cfg, saved, resume_from


# ---- loading the checkpoint's training state ---------------------------------------------------

def load_training_state(trainer: Trainer, saved: SavedTraining, path: Path) -> None:
    state = dict(saved.weights)
    # a run started before the offset was stored keeps the one this run computed
    state.setdefault("logit_offset", trainer.model.logit_offset)
    try:
        trainer.model.load_state_dict(state)
        if saved.loss:
            trainer.criterion.load_state_dict(saved.loss)
        trainer.optimizer.load_state_dict(saved.optimizer)
        if trainer.ema is not None:
            load_ema(trainer.ema, *saved.ema)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"{path} does not fit this model: {str(err).splitlines()[0]}") \
            from None
    trainer.scheduler.load_state_dict(saved.scheduler)
    if trainer.scaler.is_enabled() and saved.scaler:
        trainer.scaler.load_state_dict(saved.scaler)


def resume_progress(saved: SavedTraining, world: World) -> Progress:
    """Where to pick up: inside the interrupted epoch, or at the start of the next one. Restores
    this process's random generators when the checkpoint was written by as many processes."""
    same_world = saved.world_size == world.size
    if saved.in_epoch is not None and not same_world and world.is_main:
        print(f"train: the checkpoint was written by {saved.world_size} processes, this run "
              f"has {world.size}: epoch {saved.in_epoch.epoch} restarts from its first batch")
    if same_world and len(saved.rng) == world.size:
        restore_rng(saved.rng[world.rank])
    return saved.in_epoch if saved.in_epoch is not None and same_world else saved.next_epoch


def resume_training(trainer: Trainer, saved: SavedTraining, path: Path) -> Progress:
    """Load the checkpoint's weights, optimizer, schedule, scaler and run state into `trainer`;
    returns where training picks up (the random generators restored last)."""
    load_training_state(trainer, saved, path)
    trainer.state = saved.state
    return resume_progress(saved, trainer.world)


def resume_command(path: Path, world: World) -> str:
    """The command that continues this run from `path`, with the same number of processes."""
    launcher = (f"torchrun --standalone --nproc_per_node={world.size} train.py"
                if world.distributed else "python train.py")
    return f"{launcher} --resume {path}"
