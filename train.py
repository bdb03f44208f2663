"""Train DenseNet121 + GeM on the patient-level splits: frozen warm-up, then fine-tuning.

    python train.py [--epochs 5] [--image_size 320] [--batch_size 16] [--run_name NAME]
    python train.py --resume models/RUN/last.pth       (or: --resume auto --run_name RUN)
    torchrun --standalone --nproc_per_node=4 train.py [...]      (DDP, one process per GPU)

Reads  <data_dir>/splits/train.csv, val.csv, splits.json (make_splits.py),
       <data_dir>/processed/stats.json (preprocess.py).
Writes models/<run_name>/best.pth (best val mean AUC), last.pth (every epoch, every
       --checkpoint_every_steps optimizer steps, and on Ctrl-C / SIGTERM), config.json,
       run_info.json, metrics.csv (one row per epoch). Checkpoints load with weights_only=True.

The val split is scored against its raw labels with uncertain masked, whatever the training
policy (labels.evaluation_targets), and its mean AUC takes the classes with at least
--min_positives positives and negatives, exactly as evaluate.py scores it. Options that only
preprocess.py / make_splits.py read are refused unless they match what the data were built with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from config import LABELS, Config, PipelineError, given_fields, run_cli
from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.checkpoints import config_from_checkpoint, load_checkpoint, newest_checkpoint, save_checkpoint
from cxr.device import autocast, autocast_dtype, choose_device, prepare_model, to_device
from cxr.distributed import (World, all_gather, any_rank, barrier, broadcast, close_world,
                             device_for, gather_to_main, init_world, merge_shards, sum_over_ranks,
                             sync_buffers)
from cxr.evaluation import predict_logits
from cxr.labels import class_policies, logit_offsets, masked_counts, multiclass_flags, \
    positive_class_weights
from cxr.metrics import mean_auc, mean_exclusions, per_class_auc
from cxr.randomness import seed_everything, set_deterministic
from cxr.resume import FIXED_ON_RESUME
from dataset import EpochSampler, ShardSampler, check_data_options, data_settings, make_dataset, \
    make_loader, read_split
from model_architecture import CheXpertNet, build_model, output_starts

# ---- setup -------------------------------------------------------------------------------------

def read_stats(cfg: Config) -> dict:
    path = cfg.processed_dir / "stats.json"
    if not path.is_file():
        raise PipelineError(f"{path} not found: run preprocess.py first (with the same --data_dir)")
    stats = json.loads(path.read_text())
    return {"mean": float(stats["mean"]), "std": float(stats["std"])}


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def prepare_run_dir(cfg: Config, device: torch.device, world: World, resumed: bool) -> Path:
    """Create models/<run_name>/ with the resolved config and what produced it."""
    run_dir = cfg.run_dir
    if not resumed and (run_dir / "last.pth").exists():
        raise PipelineError(f"{run_dir} already holds a trained run; continue it with --resume "
                            f"{run_dir / 'last.pth'}, or choose another --run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(dataclasses.asdict(cfg), indent=2), run_dir / "config.json")
    info_path = run_dir / "run_info.json"
    info = json.loads(info_path.read_text()) if resumed and info_path.is_file() else {}
    launch = {"command": [sys.executable, *sys.argv], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "git_commit": git_commit(), "python": platform.python_version(),
              "torch": torch.__version__, "torchvision": torchvision.__version__,
              "device": str(device), "world_size": world.size,
              "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    info = {**launch, "resumed": info.get("resumed", [])} if not resumed else \
        {**info, "resumed": [*info.get("resumed", []), launch]}
    write_text_atomic(json.dumps(info, indent=2), info_path)
    return run_dir


def make_optimizer(model: CheXpertNet, cfg: Config) -> torch.optim.AdamW:
    """AdamW with its own learning rate for the pretrained backbone and for the new head."""
    return torch.optim.AdamW([
        {"params": list(model.backbone.parameters()), "lr": cfg.lr_backbone, "name": "backbone"},
        {"params": model.head_parameters(), "lr": cfg.lr_head, "name": "head"},
    ], weight_decay=cfg.weight_decay)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                  start: int = 0) -> float:
    """LR multiplier at an optimizer step of a parameter group that starts training at step
    `start`: 0 before it, then linear warm-up to 1 over warmup_steps, then cosine decay to 0 at
    the last step (or constant)."""
    step -= start
    if step < 0:
        return 0.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - start - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.AdamW, cfg: Config, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per parameter group: the head warms up from the first step; the pretrained backbone gets
    its own warm-up from 0 when it is unfrozen (after the frozen epochs), so that its first
    updates, with Adam's moments still empty, are small. Both decay to 0 at the last step."""
    total = cfg.epochs * steps_per_epoch
    starts = {"head": 0, "backbone": cfg.frozen_epochs * steps_per_epoch}

    def multiplier(start: int):
        return lambda step: lr_multiplier(step, cfg.warmup_steps, total, cfg.lr_schedule, start)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [multiplier(starts[group["name"]]) for group in optimizer.param_groups])


def set_backbone_frozen(model: CheXpertNet, frozen: bool) -> None:
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)


def accumulation_plan(n_images: int, batch_size: int, steps: int) -> list[tuple[float, bool]]:
    """For each micro-batch: (loss weight, take an optimizer step after it).

    The weight is micro-batch size / optimizer-step group size, so the accumulated gradient is
    that of the mean loss over the whole group, also for the smaller last group of an epoch.
    """
    sizes = [min(batch_size, n_images - start) for start in range(0, n_images, batch_size)]
    plan = []
    for first in range(0, len(sizes), steps):
        group = sizes[first:first + steps]
        plan += [(size / sum(group), i == len(group) - 1) for i, size in enumerate(group)]
    return plan


def masked_bce(logits: torch.Tensor, targets: torch.Tensor,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with positive-class weights; a NaN target is a masked label and adds nothing.

    The sum is divided by images x classes, not by the number of unmasked labels, so the loss of
    a group of micro-batches is the size-weighted mean of theirs: gradient accumulation stays
    exact wherever the masks fall. Without masks this equals BCEWithLogitsLoss's mean.
    """
    observed = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits, torch.where(observed, targets, 0.0),
                                                pos_weight=pos_weight, reduction="none")
    return torch.where(observed, losses, 0.0).sum() / targets.numel()


def multiclass_loss(outputs: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None,
                    starts: torch.Tensor, multiclass: torch.Tensor) -> torch.Tensor:
    """masked_bce for the binary labels plus cross-entropy over (negative, positive, uncertain)
    for the U-MultiClass ones (target 0, 1 or 2), both summed and divided by images x labels."""
    observed = ~torch.isnan(targets)
    safe = torch.where(observed, targets, 0.0)
    bce = F.binary_cross_entropy_with_logits(outputs[:, starts], safe, pos_weight=pos_weight,
                                             reduction="none")
    total = torch.where(observed & ~multiclass, bce, 0.0).sum()
    three = outputs[:, starts[multiclass, None] + torch.arange(3, device=outputs.device)]
    cross = F.cross_entropy(three.reshape(-1, 3), safe[:, multiclass].long().reshape(-1),
                            reduction="none").reshape(len(outputs), -1)
    total = total + torch.where(observed[:, multiclass], cross, 0.0).sum()
    return total / targets.numel()


class MaskedBCE(nn.Module):
    """The training loss: masked_bce, or multiclass_loss when some labels are U-MultiClass (then
    it takes the model's raw outputs, CheXpertNet.forward(images, raw=True))."""

    def __init__(self, pos_weight: torch.Tensor | None = None,
                 multiclass: tuple[bool, ...] | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.multiclass = multiclass if multiclass and any(multiclass) else None
        if self.multiclass:
            self.register_buffer("starts", output_starts(multiclass))
            self.register_buffer("multiclass_mask", torch.tensor(multiclass))

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multiclass is None:
            return masked_bce(outputs, targets, self.pos_weight)
        return multiclass_loss(outputs, targets, self.pos_weight, self.starts,
                               self.multiclass_mask)


# ---- RNG state, stop signals -----------------------------------------------------------------------

def rng_state() -> dict:
    """This process's random generators as plain types (a checkpoint must load weights_only)."""
    numpy_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                      "pos": numpy_state["state"]["pos"], "has_gauss": numpy_state["has_gauss"],
                      "gauss": numpy_state["gauss"]}}


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": numpy_state["has_gauss"],
                         "gauss": numpy_state["gauss"],
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32),
                                   "pos": numpy_state["pos"]}})


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (schedulers, preemption) ask the run to stop: it finishes the
    optimizer step under way, writes last.pth and exits. A second Ctrl-C stops at once (the
    last checkpoint on disk stays intact)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        tqdm.write(f"train: {signal.Signals(signum).name} received: stopping after this "
                   "optimizer step and saving a checkpoint (Ctrl-C again to stop at once)")


class TrainingStopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---- one epoch -------------------------------------------------------------------------------------

@dataclass
class Trainer:
    """What a training step touches. `net` runs the forward pass: the model itself, or the model
    wrapped in DistributedDataParallel; checkpoints and validation use the plain `model`."""
    model: CheXpertNet
    net: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    cfg: Config
    device: torch.device
    dtype: torch.dtype | None
    world: World = World()
    stop: StopSignals | None = None
    on_step: object = None  # called with the Progress every cfg.checkpoint_every_steps steps


@dataclass
class Progress:
    """Where training stands: the epoch under way and how far into it (this process's
    micro-batches), plus the counters a resumed run continues from."""
    epoch: int = 1
    batches_done: int = 0
    global_step: int = 0  # optimizer steps attempted, skipped ones included
    loss_sum: float = 0.0
    seen: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    stopped_by: int | None = None


def optimizer_step(trainer: Trainer, loss_finite: bool) -> str:
    """Unscale, check and clip the gradients, step: 'taken', 'overflow' (fp16 scale too high,
    skipped by GradScaler, which lowers it) or 'nonfinite' (NaN/inf loss or gradients, skipped)."""
    optimizer, scaler, cfg = trainer.optimizer, trainer.scaler, trainer.cfg
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(parameters, cfg.grad_clip_norm or float("inf"))
    if not loss_finite or (not scaler.is_enabled() and not torch.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update(scaler.get_scale() / 2)  # as GradScaler does on an overflow
        return "nonfinite"
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)  # skipped by an enabled scaler when fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scale is not None and scaler.get_scale() < scale:
        return "overflow"
    trainer.scheduler.step()  # the schedule advances only on optimizer steps actually taken
    return "taken"


def record_nonfinite(progress: Progress, cfg: Config, world: World) -> None:
    progress.nonfinite_in_a_row += 1
    progress.nonfinite_total += 1
    if world.is_main:
        tqdm.write(f"warning: epoch {progress.epoch}, optimizer step {progress.global_step}: "
                   f"non-finite loss or gradients, step skipped ({progress.nonfinite_in_a_row} in "
                   f"a row, {progress.nonfinite_total} in this run)")
    if progress.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
        raise PipelineError(
            f"{progress.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
            f"gradients (epoch {progress.epoch}); the weights were left untouched and last.pth "
            "holds the last good state. Lower --lr_head/--lr_backbone, set --grad_clip_norm 1.0, "
            "or use --precision fp32")


def train_one_epoch(trainer: Trainer, loader, progress: Progress, frozen: bool, desc: str
                    ) -> Progress:
    """Train from `progress.batches_done` to the end of the epoch, or until a stop signal.

    Returns `progress` updated; its stopped_by is set when a signal stopped the epoch at an
    optimizer-step boundary (the caller saves the checkpoint).
    """
    cfg, world, scaler = trainer.cfg, trainer.world, trainer.scaler
    trainer.net.train()
    if frozen:
        trainer.model.backbone.eval()  # frozen BatchNorm keeps its running statistics
    n_items = getattr(loader.sampler, "num_samples", len(loader.dataset))
    plan = accumulation_plan(n_items, cfg.batch_size, cfg.accumulation_steps)
    total_batches, plan = len(plan), plan[progress.batches_done:]
    loss_finite, seen_before, start = True, progress.seen, time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, total=len(plan),
               disable=not world.is_main)
    for (images, targets), (weight, step_now) in zip(bar, plan):
        images = to_device(images, trainer.device, cfg.channels_last)
        targets = targets.to(trainer.device, non_blocking=True)
        # DDP averages gradients across processes only on the micro-batch before a step.
        sync = step_now or not world.distributed
        with contextlib.nullcontext() if sync else trainer.net.no_sync():
            with autocast(trainer.device, trainer.dtype):
                logits = trainer.net(images, raw=True)
            loss = trainer.criterion(logits.float(), targets)
            # Backward even when the loss is not finite: every DDP process must take part in
            # the gradient all-reduce; the step is skipped below.
            scaler.scale(loss * weight).backward()
        if torch.isfinite(loss):
            progress.loss_sum += loss.item() * len(targets)
        else:
            loss_finite = False
        progress.seen += len(targets)
        progress.batches_done += 1
        if not step_now:
            continue
        stop_now, bad = any_rank(world, [trainer.stop is not None and trainer.stop.received
                                         is not None, not loss_finite], trainer.device)
        outcome = optimizer_step(trainer, loss_finite=not bad)
        progress.global_step += 1
        if outcome == "nonfinite":
            record_nonfinite(progress, cfg, world)
        else:
            progress.nonfinite_in_a_row = 0
        loss_finite = True
        bar.set_postfix(loss=f"{progress.loss_sum / max(1, progress.seen):.4f}",
                        img_s=f"{(progress.seen - seen_before) / (time.perf_counter() - start):.1f}")
        if stop_now:
            progress.stopped_by = trainer.stop.received or signal.SIGTERM
            return progress
        if cfg.checkpoint_every_steps and progress.global_step % cfg.checkpoint_every_steps == 0 \
                and trainer.on_step is not None and progress.batches_done < total_batches:
            trainer.on_step(progress)
    return progress


# ---- validation, epoch records ---------------------------------------------------------------------

def validation_metrics(trainer: Trainer, loader, desc: str) -> dict | None:
    """Val loss and AUCs on rank 0 over the whole val split (every process's share gathered);
    None on the other ranks.

    Scored as evaluate.py scores the checkpoint: against the val labels with uncertain masked,
    the AUC of the float64 label logits (ranking the logits themselves, so no sigmoid saturates
    into false ties), the mean over the classes with at least --min_positives positives and
    negatives. The loss is the binary cross-entropy of the model's probabilities (the
    positive-weight offset removed) on the observed labels: the log-loss of what users read.
    """
    sync_buffers(trainer.world, trainer.model)
    logits, targets = predict_logits(trainer.model, loader, trainer.device, trainer.dtype,
                                     trainer.cfg.channels_last, desc, show=trainer.world.is_main)
    shards = gather_to_main(trainer.world, (logits, targets))
    if not trainer.world.is_main:
        return None
    logits, targets = merge_shards(shards, trainer.world.size)
    observed = ~torch.isnan(targets)
    loss = float(F.binary_cross_entropy_with_logits(logits[observed], targets[observed]))
    scores, labels = logits.double().numpy(), targets.double().numpy()
    aucs = per_class_auc(labels, scores, LABELS)
    excluded = mean_exclusions(labels, LABELS, aucs, trainer.cfg.min_positives)
    return {"val_loss": loss, "val_auc": aucs, "val_mean_auc": mean_auc(aucs, excluded),
            "n_val": len(targets), "masked": masked_counts(labels, LABELS),
            "left_out": excluded}


def epoch_row(epoch: int, frozen: bool, train_loss: float, val: dict, optimizer,
              images_per_s: float, seconds: float, skipped: int) -> dict:
    """One metrics.csv row: losses, val AUCs, learning rates at the epoch's end, speed."""
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    return {"epoch": epoch, "phase": "frozen" if frozen else "fine-tune",
            "train_loss": train_loss, "val_loss": val["val_loss"],
            "val_mean_auc": val["val_mean_auc"], "lr_head": lrs["head"],
            "lr_backbone": 0.0 if frozen else lrs["backbone"], "images_per_s": images_per_s,
            "epoch_seconds": seconds, "nonfinite_steps_skipped": skipped, "n_val": val["n_val"],
            "mean_auc_classes": len(val["val_auc"]) - len(val["left_out"]),
            **{f"auc {label}": auc for label, auc in val["val_auc"].items()},
            **{f"masked {label}": n for label, n in val["masked"].items()}}


def epoch_line(row: dict, epochs: int, is_best: bool) -> str:
    auc = "n/a" if row["val_mean_auc"] is None else f"{row['val_mean_auc']:.4f}"
    return (f"epoch {row['epoch']}/{epochs} {row['phase']:<9} train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_mean_auc {auc}{' (best)' if is_best else ''}  "
            f"lr head {row['lr_head']:.1e} backbone {row['lr_backbone']:.1e}  "
            f"{row['images_per_s']:.1f} img/s  {row['epoch_seconds']:.0f} s")


@dataclass
class RunState:
    """What carries over between epochs (and into every checkpoint)."""
    history: list
    best: float | None = None
    epochs_without_improvement: int = 0
    val_auc: dict | None = None


def record_epoch(state: RunState, row: dict, cfg: Config) -> tuple[bool, bool]:
    """Add an epoch's row; returns (is the best so far, stop early now)."""
    state.history.append(row)
    state.val_auc = {label: row[f"auc {label}"] for label in LABELS}
    score = row["val_mean_auc"]
    is_best = score is not None and (state.best is None or score > state.best)
    if is_best:
        state.best, state.epochs_without_improvement = score, 0
    else:
        state.epochs_without_improvement += 1
    patience = cfg.early_stopping_patience
    return is_best, bool(patience) and state.epochs_without_improvement >= patience


# ---- checkpoints and resume --------------------------------------------------------------------

def assert_finite(model: nn.Module, path: Path) -> None:
    broken = [name for name, value in model.state_dict().items()
              if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise PipelineError(f"not writing {path}: {broken[:3]} hold NaN/inf; training diverged. "
                            "Resume from the previous checkpoint with lower learning rates")


def save_training_state(trainer: Trainer, state: RunState, progress: Progress,
                        epochs_done: int, records: dict, paths: list[Path]) -> None:
    """Write the full training state to each path (rank 0; every rank must call this, since the
    RNG states of all processes are collected). At an epoch's end `progress` is the next
    epoch's, with no batch done. `records` are the run's fixed facts (normalization, pos_weight,
    data settings)."""
    rng = all_gather(trainer.world, rng_state())
    if not trainer.world.is_main:
        return
    in_epoch = None if not progress.batches_done else {
        "epoch": progress.epoch, "batches_done": progress.batches_done,
        "loss_sum": progress.loss_sum, "seen": progress.seen}
    payload = {
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
        "epoch": epochs_done, "in_epoch": in_epoch,
        "global_step": progress.global_step, "nonfinite_total": progress.nonfinite_total,
        "best_metric": state.best, "epochs_without_improvement": state.epochs_without_improvement,
        "history": state.history, "rng": rng, "world_size": trainer.world.size,
        "config": dataclasses.asdict(trainer.cfg), "labels": list(LABELS),
        "val_auc": state.val_auc, **records}
    for path in paths:
        assert_finite(trainer.model, path)
        save_checkpoint(payload, path)


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
    saved = config_from_checkpoint(checkpoint)
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


def load_training_state(trainer: Trainer, checkpoint: dict, path: Path) -> None:
    state = dict(checkpoint["model"])
    # a run started before the offset was stored keeps the one this run computed
    state.setdefault("logit_offset", trainer.model.logit_offset)
    try:
        trainer.model.load_state_dict(state)
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise PipelineError(f"{path} does not fit this model: {str(err).splitlines()[0]}") \
            from None
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    if trainer.scaler.is_enabled() and checkpoint["scaler"]:
        trainer.scaler.load_state_dict(checkpoint["scaler"])


def resume_progress(checkpoint: dict, world: World) -> Progress:
    """Where to pick up: inside the interrupted epoch, or at the start of the next one."""
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


def wrap_for_world(model: CheXpertNet, world: World, device: torch.device) -> nn.Module:
    """DDP over the parameters that train in this phase (DDP registers them when it wraps, so
    the model is wrapped again when the backbone is unfrozen)."""
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def resume_command(path: Path, world: World) -> str:
    launcher = (f"torchrun --standalone --nproc_per_node={world.size} train.py"
                if world.distributed else "python train.py")
    return f"{launcher} --resume {path}"


# ---- main ----------------------------------------------------------------------------------------

def main(cfg: Config, given: set[str] | None = None) -> None:
    """Train (or resume) a run. `given` names the options set on the command line; called from
    Python (tests) every field of `cfg` counts as given on resume, and no data-building option is
    checked against the data (check_data_options)."""
    cfg = check_data_options(cfg, given or set(), "train.py")
    world = init_world(cfg.device)
    try:
        with StopSignals() as stop:
            run(cfg, {f.name for f in dataclasses.fields(Config)} if given is None else given,
                world, stop)
        barrier(world)  # leave together: a process tearing down gloo while another still
        # writes the checkpoint can abort ("terminate called without an active exception")
    except TrainingStopped as stopped:
        raise SystemExit(128 + stopped.signum) from None
    finally:
        close_world(world)


def run(cfg: Config, given: set[str], world: World, stop: StopSignals) -> None:
    resume_from = checkpoint_to_resume(cfg)
    checkpoint = load_checkpoint(resume_from) if resume_from else None
    if checkpoint is not None:
        cfg = resumed_config(cfg, checkpoint, resume_from, given)
    elif not cfg.run_name:
        cfg = dataclasses.replace(cfg, run_name=broadcast(world, time.strftime("%Y%m%d-%H%M%S")))
    elif cfg.resume == "auto" and world.is_main:
        print(f"train: no {cfg.run_dir / 'last.pth'} yet: starting the run")
    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed + world.rank)
    device = device_for(world, choose_device(cfg.device))
    dtype = autocast_dtype(cfg.precision, device)
    stats = checkpoint["normalization"] if checkpoint else read_stats(cfg)

    train_frame = read_split(cfg.splits_dir / "train.csv")
    val_frame = read_split(cfg.splits_dir / "val.csv")
    policies = class_policies(cfg.uncertainty_policy, cfg.uncertainty_policy_by_class)
    train_data = make_dataset(train_frame, cfg, cfg.data_dir, cfg.augment, "train",
                              use_cache=cfg.use_cache, policies=policies)
    val_data = make_dataset(val_frame, cfg, cfg.data_dir, False, "val", use_cache=cfg.use_cache)
    sampler = EpochSampler(len(train_data), cfg.seed, world.rank, world.size)
    train_loader = make_loader(train_data, cfg, train=True, device=device, sampler=sampler)
    val_loader = make_loader(val_data, cfg, train=False, device=device,
                             sampler=ShardSampler(len(val_data), world.rank, world.size))

    model = build_model(dataclasses.replace(cfg, pretrained=cfg.pretrained and not checkpoint),
                        stats)
    model = prepare_model(model, device, cfg)
    pos_weight = positive_class_weights(train_data.targets.numpy(), cfg.max_pos_weight)
    model.set_logit_offset(logit_offsets(pos_weight, multiclass_flags(policies)))
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = sum(step for _, step in accumulation_plan(
        sampler.num_samples, cfg.batch_size, cfg.accumulation_steps))
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    criterion = MaskedBCE(torch.from_numpy(pos_weight), multiclass_flags(policies)).to(device)
    records = {"normalization": stats, "data": data_settings(cfg),
               "pos_weight": dict(zip(LABELS, pos_weight.tolist()))}
    trainer = Trainer(model, model, criterion, optimizer,
                      scheduler, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
                      cfg, device, dtype, world, stop)
    state, progress = RunState(history=[]), Progress()
    if checkpoint is not None:
        load_training_state(trainer, checkpoint, resume_from)
        state = RunState(checkpoint.get("history") or [], checkpoint["best_metric"],
                         checkpoint.get("epochs_without_improvement", 0), checkpoint["val_auc"])
        progress = resume_progress(checkpoint, world)
    if world.is_main:
        prepare_run_dir(cfg, device, world, resumed=checkpoint is not None)
    barrier(world)
    run_dir, last = cfg.run_dir, cfg.run_dir / "last.pth"
    trainer.on_step = lambda p: save_training_state(trainer, state, p, p.epoch - 1, records,
                                                    [last])

    if world.is_main:
        source = "the image cache" if train_data.cache else "images decoded on the fly"
        where = (f"resuming {resume_from} at epoch {progress.epoch}, batch {progress.batches_done}"
                 if checkpoint is not None else f"run folder {run_dir}")
        unit = "studies" if cfg.view_mode == "study" else "images"
        print(f"train: {len(train_data):,} train / {len(val_data):,} val {unit} ({source}) on "
              f"{device} ({dtype or torch.float32}) x {world.size} process(es), effective batch "
              f"{world.size * cfg.batch_size * cfg.accumulation_steps}, {steps_per_epoch} optimizer "
              f"steps per epoch; {where}", flush=True)
        print(offsets_line(pos_weight, model.logit_offset.tolist()), flush=True)

    stopped_early = False
    for epoch in range(progress.epoch, cfg.epochs + 1):
        progress.epoch = epoch
        frozen = epoch <= cfg.frozen_epochs
        set_backbone_frozen(model, frozen)
        trainer.net = wrap_for_world(model, world, device)
        sampler.set_epoch(epoch, progress.batches_done * cfg.batch_size)
        start, done_before = time.perf_counter(), progress.seen
        train_one_epoch(trainer, train_loader, progress,
                        frozen, desc=f"epoch {epoch}/{cfg.epochs} {'frozen' if frozen else 'fine-tune'}")
        if progress.stopped_by is not None:
            save_training_state(trainer, state, progress, epoch - 1, records, [last])
            announce_stop(progress, last, world)
            raise TrainingStopped(progress.stopped_by)
        seconds = time.perf_counter() - start
        loss_sum, seen = sum_over_ranks(world, [progress.loss_sum, progress.seen], device)
        val = validation_metrics(trainer, val_loader, "validate")
        decision = None
        if world.is_main:
            images_per_s = (progress.seen - done_before) * world.size / seconds
            row = epoch_row(epoch, frozen, loss_sum / max(1, seen), val, optimizer,
                            images_per_s, seconds, progress.nonfinite_total)
            decision = record_epoch(state, row, cfg)
            write_csv_atomic(pd.DataFrame(state.history), run_dir / "metrics.csv")
            print(epoch_line(row, cfg.epochs, decision[0]), flush=True)
        state = broadcast(world, state)
        is_best, stopped_early = broadcast(world, decision)
        paths = [last, run_dir / "best.pth"] if is_best or not (run_dir / "best.pth").exists() \
            else [last]
        progress = Progress(epoch=epoch + 1, global_step=progress.global_step,
                            nonfinite_total=progress.nonfinite_total)
        save_training_state(trainer, state, progress, epoch, records, paths)
        if stop.received is not None:
            announce_stop(progress, last, world)
            raise TrainingStopped(stop.received)
        if stopped_early:
            break
    if world.is_main:
        best_text = "n/a" if state.best is None else f"{state.best:.4f}"
        why = (f" (early stop: no better val mean AUC for {cfg.early_stopping_patience} epochs)"
               if stopped_early else "")
        print(f"train: wrote {run_dir}/best.pth (val mean AUC {best_text}), last.pth, "
              f"metrics.csv, config.json, run_info.json{why}")


def offsets_line(pos_weight, offsets) -> str:
    """The positive weights of the training split and the logit offset each leaves (log w),
    which the model's label logits subtract."""
    pairs = ", ".join(f"{label} {w:.1f} ({offset:+.2f})"
                      for label, w, offset in zip(LABELS, pos_weight, offsets))
    return f"train: pos_weight (logit offset removed from the probabilities): {pairs}"


def announce_stop(progress: Progress, last: Path, world: World) -> None:
    if world.is_main:
        where = (f"epoch {progress.epoch}, batch {progress.batches_done}" if progress.batches_done
                 else f"the end of epoch {progress.epoch - 1}")
        print(f"train: stopped at {where}; saved {last}. Resume with:\n  "
              f"{resume_command(last, world)}", flush=True)


if __name__ == "__main__":
    run_cli(lambda cfg: main(cfg, given_fields(sys.argv[1:])))
