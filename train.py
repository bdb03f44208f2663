"""Train DenseNet121 (or --backbone) + GeM on the patient-level splits: frozen warm-up, then
fine-tuning.

    python train.py [--epochs 5] [--image_size 320] [--batch_size 16] [--run_name NAME]
    python train.py --resume models/RUN/last.pth       (or: --resume auto --run_name RUN)
    torchrun --standalone --nproc_per_node=4 train.py [...]      (DDP, one process per GPU)

Reads  <data_dir>/splits/train.csv, val.csv, splits.json (make_splits.py),
       <data_dir>/processed/stats.json (preprocess.py).
Writes models/<run_name>/best.pth (best val mean AUC; the last epoch when val is too small to
       rank epochs: cxr/training/schedule.py), last.pth (every epoch, every --checkpoint_every_steps
       optimizer steps, and on Ctrl-C / SIGTERM), config.json,
       run_info.json, metrics.csv (one row per epoch), curves.png (train/val loss and val mean
       AUC per epoch), TensorBoard events.out.tfevents.* (per step loss, learning rates and
       images/s; per epoch val loss and AUCs; the best epochs' val PR curves; a grid of augmented
       training images: cxr/training/tensorboard_log.py, `tensorboard --logdir models`); with
       --keep_top_k K also top_k/epoch_NNN.pth, the K epochs of best val mean AUC (an ensemble
       for evaluate.py --checkpoint RUN/top_k). Checkpoints load with weights_only=True. With
       --ema_decay the weights' moving average is validated every epoch and is every
       checkpoint's model (cxr/training/ema.py).

The val split is scored against its raw labels with uncertain masked, whatever the training
policy (labels.evaluation_targets), and its mean AUC takes the classes with at least
--min_positives positives and negatives, exactly as evaluate.py scores it. A short run warms up
over a share of its steps, and early stopping counts only the epochs after the warm-up
(cxr/training/schedule.py). Options that only preprocess.py / make_splits.py read are refused unless
they match what the data were built with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import Config
from cxr.cli import given_fields, run_cli
from cxr.data.labels import LABELS, class_policies, evaluation_targets, masked_counts, \
    multiclass_flags, positive_class_weights, trained_labels
from cxr.data.loading import make_loader
from cxr.data.splits import patient_subset, read_split
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.metrics import mean_auc, mean_exclusions, per_class_auc
from cxr.evaluation.predictions import predict_logits
from cxr.reporting.plots import training_curves
from cxr.training.checkpoint import member_payload, save_checkpoint, training_payload
from cxr.training.ema import make_ema
from cxr.training.losses import LOSS_GROUP, loss_offsets, make_criterion, pesg_optimizer
from cxr.training.resume import config_for_launch, resume_command, resume_training
from cxr.training.run_folder import epoch_row, prepare_run_dir, write_metrics
from cxr.training.runtime import StopSignals, TrainingStopped, World, all_gather, any_rank, \
    autocast, autocast_dtype, barrier, broadcast, choose_device, close_world, device_for, \
    gather_to_main, init_world, merge_shards, prepare_model, rng_state, seed_everything, \
    set_deterministic, sum_over_ranks, sync_buffers, to_device
from cxr.training.schedule import EpochRules, val_ranking, warmup_end, warmup_line, warmup_plan
from cxr.training.state import Progress, RunRecords, RunState, Trainer
from cxr.training.tensorboard_log import event_log, flush_events, learning_rates, log_epoch, \
    log_step, log_training_images
from dataset import EpochSampler, ShardSampler, check_data_options, data_settings, make_dataset
from model_architecture import CheXpertNet, build_model, starting_weights_of

# ---- setup -------------------------------------------------------------------------------------

def read_stats(cfg: Config) -> dict:
    path = cfg.processed_dir / "stats.json"
    if not path.is_file():
        raise PipelineError(f"{path} not found: run preprocess.py first (with the same --data_dir)")
    stats = json.loads(path.read_text())
    return {"mean": float(stats["mean"]), "std": float(stats["std"])}


def training_share(frame, cfg: Config):
    """The training split, or its --train_fraction share of patients (a seeded, nested subset:
    cxr.data.splits.patient_subset)."""
    if len(cfg.train_fraction) != 1:
        raise ConfigError(f"train.py trains on one --train_fraction, got "
                          f"{','.join(map(str, cfg.train_fraction))} (ablate.py crosses several)")
    return patient_subset(frame, cfg.train_fraction[0], cfg.seed)


def make_loaders(cfg: Config, train_frame, val_frame, policies: dict[str, str], world: World,
                 device: torch.device) -> tuple[DataLoader, DataLoader]:
    """The train loader (targets under the uncertainty `policies`, each process its share of a
    seeded per-epoch order) and the val loader (the reference standard, sharded in file order)."""
    train_data = make_dataset(train_frame, cfg, cfg.data_dir, cfg.augment, "train",
                              use_cache=cfg.use_cache, policies=policies)
    val_data = make_dataset(val_frame, cfg, cfg.data_dir, False, "val", use_cache=cfg.use_cache)
    sampler = EpochSampler(len(train_data), cfg.seed, world.rank, world.size)
    train_loader = make_loader(train_data, cfg, train=True, device=device, sampler=sampler)
    val_loader = make_loader(val_data, cfg, train=False, device=device,
                             sampler=ShardSampler(len(val_data), world.rank, world.size))
    return train_loader, val_loader


def make_trainer(cfg: Config, stats: dict, train_loader: DataLoader, policies: dict[str, str],
                 warmup: dict[str, int], epoch_selection: dict, fresh: bool,
                 device: torch.device, dtype: torch.dtype | None, world: World,
                 stop: StopSignals) -> Trainer:
    """The model (pretrained weights only for a fresh run: a resumed one loads its own), the
    --loss with the training split's positive-class weights or class priors, AdamW (PESG for
    --loss aucm) and its schedule (`warmup`:
    each parameter group's warm-up steps), the GradScaler (enabled for fp16 only), and the
    records every checkpoint carries (`epoch_selection`: how best.pth is chosen)."""
    start = starting_weights_of(cfg) if fresh else None  # --init
    stats = start.normalization(stats) if start is not None else stats
    model = build_model(dataclasses.replace(cfg, pretrained=cfg.pretrained and fresh), stats,
                        start=start)
    model = prepare_model(model, device, cfg)
    targets, multiclass = train_loader.dataset.targets.numpy(), multiclass_flags(policies)
    pos_weight = positive_class_weights(targets, cfg.max_pos_weight)
    model.set_logit_offset(loss_offsets(cfg.loss, pos_weight, multiclass))
    criterion = make_criterion(cfg, torch.from_numpy(pos_weight), multiclass, targets, device)
    optimizer = make_optimizer(model, cfg, criterion)
    steps_per_epoch = optimizer_steps(train_loader.sampler.num_samples, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch, warmup)
    records = RunRecords(normalization=stats, data=data_settings(cfg),
                         pos_weight=dict(zip(LABELS, pos_weight.tolist())), warmup=warmup,
                         trained_labels=trained_labels(targets),
                         epoch_selection=epoch_selection)
    return Trainer(model, model, criterion, optimizer, scheduler,
                   torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
                   cfg, device, dtype, world, stop, records=records,
                   ema=make_ema(model, cfg.ema_decay))


# ---- optimizer, learning-rate schedule, gradient accumulation ----------------------------------

def make_optimizer(model: CheXpertNet, cfg: Config, criterion: nn.Module | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW with its own learning rate for the pretrained backbone and for the new head; with
    --loss aucm LibAUC's PESG over the same groups at --aucm_lr, plus the `criterion`'s a and b
    (a group of their own, LOSS_GROUP: cxr/training/aucm.py)."""
    groups = [{"params": list(model.backbone.parameters()), "name": "backbone"},
              {"params": model.head_parameters(), "name": "head"}]
    if cfg.loss == "aucm":
        return pesg_optimizer(groups, criterion, cfg)
    groups[0]["lr"], groups[1]["lr"] = cfg.lr_backbone, cfg.lr_head
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


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


def make_scheduler(optimizer: torch.optim.AdamW, cfg: Config, steps_per_epoch: int,
                   warmup: dict[str, int] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per parameter group: the head warms up from the first step; the pretrained backbone gets
    its own warm-up from 0 when it is unfrozen (after the frozen epochs), so that its first
    updates, with Adam's moments still empty, are small. Both decay to 0 at the last step.
    `warmup`: each group's warm-up steps (default: cxr.training.schedule.warmup_plan's)."""
    total = cfg.epochs * steps_per_epoch
    starts = {"head": 0, "backbone": cfg.frozen_epochs * steps_per_epoch}
    warmup = warmup or warmup_plan(cfg, steps_per_epoch)

    def multiplier(name: str):
        group = "head" if name == LOSS_GROUP else name  # a, b, alpha train from the first step
        return lambda step: lr_multiplier(step, warmup[group], total, cfg.lr_schedule,
                                          starts[group])

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [multiplier(group["name"]) for group in optimizer.param_groups])


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


def optimizer_steps(n_images: int, cfg: Config) -> int:
    """Optimizer steps in an epoch of `n_images` (this process's share)."""
    return sum(step for _, step in accumulation_plan(n_images, cfg.batch_size,
                                                     cfg.accumulation_steps))


# ---- one epoch ---------------------------------------------------------------------------------

def optimizer_step(trainer: Trainer, loss_finite: bool) -> str:
    """Unscale, check and clip the gradients, step: 'taken', 'overflow' (fp16 scale too high,
    skipped by GradScaler, which lowers it) or 'nonfinite' (NaN/inf loss or gradients, skipped)."""
    optimizer, scaler, cfg = trainer.optimizer, trainer.scaler, trainer.cfg
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    # the network's gradients, which DDP has averaged; --loss aucm's a and b are PESG's to
    # average over the processes and clamp (cxr/training/aucm.py)
    parameters = [p for group in optimizer.param_groups if group.get("name") != LOSS_GROUP
                  for p in group["params"] if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(parameters, cfg.grad_clip_norm or float("inf"))
    if not loss_finite or (not scaler.is_enabled() and not torch.isfinite(norm)):
        clear_gradients(trainer)
        if scaler.is_enabled():
            scaler.update(scaler.get_scale() / 2)  # as GradScaler does on an overflow
        return "nonfinite"
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)  # skipped by an enabled scaler when fp16 gradients overflowed
    scaler.update()
    clear_gradients(trainer)
    if scale is not None and scaler.get_scale() < scale:
        return "overflow"
    trainer.scheduler.step()  # the schedule advances only on optimizer steps actually taken
    if trainer.ema is not None:
        trainer.ema.update_parameters(trainer.model)
    return "taken"


def clear_gradients(trainer: Trainer) -> None:
    """The optimizer's gradients, and the loss's own: --loss aucm's alpha, which no group holds
    (PESG moves it by its closed form once its gradient exists)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.criterion.zero_grad(set_to_none=True)


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


def forward_backward(trainer: Trainer, images: torch.Tensor, targets: torch.Tensor,
                     weight: float, sync: bool) -> torch.Tensor:
    """One micro-batch: forward pass under autocast, loss, and the backward pass of the loss
    times its weight in the optimizer-step group. Returns the (unweighted) loss."""
    images = to_device(images, trainer.device, trainer.cfg.channels_last)
    targets = targets.to(trainer.device, non_blocking=True)
    with contextlib.nullcontext() if sync else trainer.net.no_sync():
        with autocast(trainer.device, trainer.dtype):
            logits = trainer.net(images, raw=True)
        loss = trainer.criterion(logits.float(), targets)
        # Backward even when the loss is not finite: every DDP process must take part in
        # the gradient all-reduce; the step is skipped below.
        trainer.scaler.scale(loss * weight).backward()
    return loss


def train_one_epoch(trainer: Trainer, loader, progress: Progress, frozen: bool, desc: str
                    ) -> Progress:
    """Train from `progress.batches_done` to the end of the epoch, or until a stop signal.

    Returns `progress` updated; its stopped_by is set when a signal stopped the epoch at an
    optimizer-step boundary (the caller saves the checkpoint).
    """
    cfg, world = trainer.cfg, trainer.world
    trainer.net.train()
    if frozen:
        trainer.model.backbone.eval()  # frozen BatchNorm keeps its running statistics
    n_items = getattr(loader.sampler, "num_samples", len(loader.dataset))
    plan = accumulation_plan(n_items, cfg.batch_size, cfg.accumulation_steps)
    total_batches, plan = len(plan), plan[progress.batches_done:]
    loss_finite, seen_before, start = True, progress.seen, time.perf_counter()
    step_loss, step_seen, step_start = 0.0, progress.seen, start  # since the last step
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, total=len(plan),
               disable=not world.is_main)
    for (images, targets), (weight, step_now) in zip(bar, plan):
        # DDP averages gradients across processes only on the micro-batch before a step.
        loss = forward_backward(trainer, images, targets, weight,
                                sync=step_now or not world.distributed).item()
        if math.isfinite(loss):
            progress.loss_sum += loss * len(targets)
        else:
            loss_finite = False
        step_loss += loss * weight  # the weights of a step's group sum to 1
        progress.seen += len(targets)
        progress.batches_done += 1
        if not step_now:
            continue
        stop_now, bad = any_rank(world, [trainer.stop is not None and trainer.stop.received
                                         is not None, not loss_finite], trainer.device)
        lrs = learning_rates(trainer.optimizer)
        outcome = optimizer_step(trainer, loss_finite=not bad)
        progress.global_step += 1
        now = time.perf_counter()
        log_step(trainer.events, progress.global_step, step_loss, lrs,
                 (progress.seen - step_seen) * world.size / (now - step_start))
        step_loss, step_seen, step_start = 0.0, progress.seen, now
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


# ---- validation, early stopping ----------------------------------------------------------------

def validation_metrics(trainer: Trainer, loader, desc: str) -> dict | None:
    """Val loss and AUCs on rank 0 over the whole val split (every process's share gathered);
    None on the other ranks.

    Scored as evaluate.py scores the checkpoint: against the val labels with uncertain masked,
    the AUC of the float64 label logits (ranking the logits themselves, so no sigmoid saturates
    into false ties), the mean over the classes with at least --min_positives positives and
    negatives. The loss is the binary cross-entropy of the model's probabilities (the
    positive-weight offset removed) on the observed labels: the log-loss of what users read.
    """
    sync_buffers(trainer.world, trainer.validated)
    logits, targets, _ = predict_logits(trainer.validated, loader, trainer.device, trainer.dtype,
                                        trainer.cfg.channels_last, desc,
                                        show=trainer.world.is_main)
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
            "left_out": excluded, "targets": labels,
            "probabilities": torch.sigmoid(logits.double()).numpy()}


def epoch_line(row: dict, epochs: int, is_best: bool, ema: bool = False) -> str:
    auc = "n/a" if row["val_mean_auc"] is None else f"{row['val_mean_auc']:.4f}"
    val = "val_ema" if ema else "val"  # with --ema_decay, the average's loss and AUC
    return (f"epoch {row['epoch']}/{epochs} {row['phase']:<9} train_loss {row['train_loss']:.4f}  "
            f"{val}_loss {row['val_loss']:.4f}  {val}_mean_auc {auc}"
            f"{' (best)' if is_best else ''}  "
            f"lr head {row['lr_head']:.1e} backbone {row['lr_backbone']:.1e}  "
            f"{row['images_per_s']:.1f} img/s  {row['epoch_seconds']:.0f} s")


def record_epoch(state: RunState, row: dict, cfg: Config, rules: EpochRules, steps_taken: int
                 ) -> tuple[bool, bool]:
    """Add an epoch's row; returns (is the epoch to keep as best.pth, stop early now). When val
    cannot rank epochs the last one is kept; an epoch without improvement counts toward the
    patience only after the warm-up (`steps_taken`: the optimizer steps taken so far)."""
    state.history.append(row)
    state.val_auc = {label: row[f"auc {label}"] for label in LABELS}
    score = row["val_mean_auc"]
    if not rules.ranking.ranks:
        state.best = score
        return True, False
    is_best = score is not None and (state.best is None or score > state.best)
    if is_best:
        state.best, state.epochs_without_improvement = score, 0
    elif rules.counts_toward_patience(steps_taken):
        state.epochs_without_improvement += 1
    patience = cfg.early_stopping_patience
    return is_best, bool(patience) and state.epochs_without_improvement >= patience


# ---- checkpoints, DDP --------------------------------------------------------------------------

def assert_finite(model: nn.Module, path: Path) -> None:
    broken = [name for name, value in model.state_dict().items()
              if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise PipelineError(f"not writing {path}: {broken[:3]} hold NaN/inf; training diverged. "
                            "Resume from the previous checkpoint with lower learning rates")


def save_training_state(trainer: Trainer, progress: Progress, epochs_done: int,
                        paths: list[Path], weights_path: Path | None = None) -> None:
    """Write the full training state (cxr.training.checkpoint.training_payload) to each path
    (rank 0; every rank must call this, since the RNG states of all processes are collected).
    At an epoch's end `progress` is the next epoch's, with no batch done. `weights_path` gets
    the same checkpoint without what only resuming needs (a top_k/ member: member_payload)."""
    rng = all_gather(trainer.world, rng_state())
    if not trainer.world.is_main:
        return
    payload = training_payload(trainer, progress, epochs_done, rng)
    flush_events(trainer.events)  # what a resumed run keeps of them is on disk
    for path in paths:
        assert_finite(trainer.model, path)
        assert_finite(trainer.validated, path)
        save_checkpoint(payload, path)
    if weights_path is not None:
        weights_path.parent.mkdir(exist_ok=True)
        save_checkpoint(member_payload(payload), weights_path)


# ---- the k best epochs (--keep_top_k), for an ensemble -------------------------------------------

TOP_K_DIR = "top_k"


def top_epochs(history: list[dict], k: int, ranks: bool = True) -> list[int]:
    """The k epochs of highest val mean AUC, best first (the earlier of equals, as best.pth);
    the k last ones, latest first, when val cannot rank epochs (`ranks` False)."""
    if not ranks:
        return [row["epoch"] for row in history[::-1][:k]]
    scored = [(row["val_mean_auc"], row["epoch"]) for row in history
              if row["val_mean_auc"] is not None]
    return [epoch for _, epoch in sorted(scored, key=lambda pair: (-pair[0], pair[1]))[:k]]


def top_k_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / TOP_K_DIR / f"epoch_{epoch:03d}.pth"


def prune_top_k(run_dir: Path, kept: list[int]) -> None:
    """Delete the top_k/ files of epochs no longer among the k best."""
    keep = {top_k_path(run_dir, epoch).name for epoch in kept}
    for path in (run_dir / TOP_K_DIR).glob("epoch_*.pth"):
        if path.name not in keep:
            path.unlink()


def wrap_for_world(model: CheXpertNet, world: World, device: torch.device) -> nn.Module:
    """DDP over the parameters that train in this phase (DDP registers them when it wraps, so
    the model is wrapped again when the backbone is unfrozen)."""
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def training_net(model: CheXpertNet, world: World, device: torch.device, cfg: Config
                 ) -> nn.Module:
    """What runs the training forward pass: the model, wrapped for DDP, compiled with
    --compile (torch.compile; the first steps of each phase wait for the compiler)."""
    net = wrap_for_world(model, world, device)
    return torch.compile(net) if cfg.compile else net


# ---- main --------------------------------------------------------------------------------------

def main(cfg: Config, given: set[str] | None = None) -> None:
    """Train (or resume) a run. `given` names the options set on the command line (or in
    PIPELINE_OPTIONS, cxr/cli.py); called from Python (tests) every field of `cfg` counts as
    given on resume, and no data-building option is checked against the data
    (check_data_options)."""
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
    """Set up the run, or pick up its checkpoint; train its epochs; say what it wrote."""
    cfg, resumed, resume_from = config_for_launch(cfg, given, world)
    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed + world.rank)
    device = device_for(world, choose_device(cfg.device))
    dtype = autocast_dtype(cfg.precision, device)
    stats = resumed.normalization if resumed else read_stats(cfg)
    train_frame = training_share(read_split(cfg.splits_dir / "train.csv"), cfg)
    val_frame = read_split(cfg.splits_dir / "val.csv")
    policies = class_policies(cfg.uncertainty_policy, cfg.uncertainty_policy_by_class)
    train_loader, val_loader = make_loaders(cfg, train_frame, val_frame, policies, world, device)
    steps_per_epoch = optimizer_steps(train_loader.sampler.num_samples, cfg)
    # a resumed run warms up as it began (its checkpoint keeps the steps), whatever --epochs now
    warmup = resumed.warmup if resumed and resumed.warmup else warmup_plan(cfg, steps_per_epoch)
    rules = EpochRules(warmup_end(warmup, cfg, steps_per_epoch),
                       val_ranking(evaluation_targets(train_frame),
                                   val_loader.dataset.targets.numpy(), LABELS, cfg))
    trainer = make_trainer(cfg, stats, train_loader, policies, warmup, rules.ranking.record(),
                           fresh=resumed is None, device=device, dtype=dtype, world=world,
                           stop=stop)
    progress = Progress()
    if resumed is not None:
        progress = resume_training(trainer, resumed, resume_from)
    if world.is_main:
        prepare_run_dir(cfg, device, world, resumed=resumed is not None,
                        rules={"warmup": warmup, "epoch_selection": rules.ranking.record()})
    barrier(world)
    last = cfg.run_dir / "last.pth"
    # The run state is read from the trainer when the checkpoint is written, never captured here.
    trainer.on_step = lambda now: save_training_state(trainer, now, now.epoch - 1, [last])

    if world.is_main:
        where = (f"resuming {resume_from} at epoch {progress.epoch}, batch {progress.batches_done}"
                 if resumed is not None else f"run folder {cfg.run_dir}")
        print(start_line(trainer, train_loader, val_loader, where), flush=True)
        for line in input_lines(trainer.records.normalization, cfg):
            print(line, flush=True)
        print(offsets_line(trainer.records.pos_weight.values(),
                           trainer.model.logit_offset.tolist(), cfg.loss), flush=True)
        for line in (warmup_line(warmup, cfg, steps_per_epoch), rules.ranking.line()):
            if line:
                print(line, flush=True)
    # a fresh run logs from step 0 on, a resumed one from the step after its checkpoint's
    with event_log(cfg.run_dir, world, 0 if resumed is None else progress.global_step + 1) \
            as events:
        trainer.events = events
        if resumed is None:
            log_training_images(trainer.events, train_loader, trainer.model)
        stopped_early = fit(trainer, train_loader, val_loader, progress, rules)
    if world.is_main:
        best = trainer.state.best
        best_text = "n/a" if best is None else f"{best:.4f}"
        why = (f" (early stop: no better val mean AUC for {cfg.early_stopping_patience} epochs "
               "after the warm-up)" if stopped_early else "")
        kept = "" if rules.ranking.ranks else "the last epoch, val too small to rank epochs; "
        weights = ", the weights' moving average" if trainer.ema is not None else ""
        print(f"train: wrote {cfg.run_dir}/best.pth ({kept}val mean AUC {best_text}{weights}), "
              f"last.pth, metrics.csv, curves.png, events.out.tfevents.* (TensorBoard), "
              f"config.json, run_info.json{why}")


def fit(trainer: Trainer, train_loader: DataLoader, val_loader: DataLoader,
        progress: Progress, rules: EpochRules) -> bool:
    """The epochs from `progress` on: train, validate, record, write last.pth (and best.pth,
    as `rules` judge the epochs). Returns whether early stopping ended the run. After a stop
    signal it writes last.pth and raises TrainingStopped."""
    cfg, world = trainer.cfg, trainer.world
    last, best = cfg.run_dir / "last.pth", cfg.run_dir / "best.pth"
    for epoch in range(progress.epoch, cfg.epochs + 1):
        progress.epoch = epoch
        frozen = epoch <= cfg.frozen_epochs
        set_backbone_frozen(trainer.model, frozen)
        trainer.net = training_net(trainer.model, world, trainer.device, cfg)
        train_loader.sampler.set_epoch(epoch, progress.batches_done * cfg.batch_size)
        start, done_before = time.perf_counter(), progress.seen
        train_one_epoch(trainer, train_loader, progress, frozen,
                        desc=f"epoch {epoch}/{cfg.epochs} {'frozen' if frozen else 'fine-tune'}")
        if progress.stopped_by is not None:
            save_training_state(trainer, progress, epoch - 1, [last])
            announce_stop(progress, last, world)
            raise TrainingStopped(progress.stopped_by)
        seconds = time.perf_counter() - start
        images_per_s = (progress.seen - done_before) * world.size / seconds
        if cfg.loss == "aucm":
            trainer.optimizer.next_reference_point()  # PESG's epoch decay: cxr/training/aucm.py
        is_best, stopped_early = end_of_epoch(trainer, val_loader, progress, frozen, rules,
                                              images_per_s, seconds)
        paths = [last, best] if is_best or not best.exists() else [last]
        kept = top_epochs(trainer.state.history, cfg.keep_top_k, rules.ranking.ranks) \
            if cfg.keep_top_k > 1 else []
        progress = Progress(epoch=epoch + 1, global_step=progress.global_step,
                            nonfinite_total=progress.nonfinite_total)
        save_training_state(trainer, progress, epoch, paths,
                            top_k_path(cfg.run_dir, epoch) if epoch in kept else None)
        if world.is_main and kept:
            prune_top_k(cfg.run_dir, kept)
        if trainer.stop.received is not None:
            announce_stop(progress, last, world)
            raise TrainingStopped(trainer.stop.received)
        if stopped_early:
            return True
    return False


def end_of_epoch(trainer: Trainer, val_loader: DataLoader, progress: Progress, frozen: bool,
                 rules: EpochRules, images_per_s: float, seconds: float) -> tuple[bool, bool]:
    """Validate; on rank 0 add the epoch's row to the run state and metrics.csv and print its
    line; then every process takes rank 0's state and decision: (keep as best.pth, stop
    early)."""
    cfg, world = trainer.cfg, trainer.world
    loss_sum, seen = sum_over_ranks(world, [progress.loss_sum, progress.seen], trainer.device)
    val = validation_metrics(trainer, val_loader, "validate")
    decision = None
    if world.is_main:
        row = epoch_row(progress.epoch, frozen, loss_sum / max(1, seen), val, trainer.optimizer,
                        images_per_s, seconds, progress.nonfinite_total)
        decision = record_epoch(trainer.state, row, cfg, rules, trainer.scheduler.last_epoch)
        write_metrics(trainer.state.history, cfg.run_dir)
        log_epoch(trainer.events, progress.global_step, row, val, is_best=decision[0])
        training_curves(trainer.state.history, cfg.run_dir / "curves.png", cfg.run_name,
                        "val (moving average)" if trainer.ema is not None else "val")
        print(epoch_line(row, cfg.epochs, decision[0] and rules.ranking.ranks,
                         trainer.ema is not None), flush=True)
    trainer.state = broadcast(world, trainer.state)
    return broadcast(world, decision)


def start_line(trainer: Trainer, train_loader: DataLoader, val_loader: DataLoader,
               where: str) -> str:
    cfg, world = trainer.cfg, trainer.world
    train_data, val_data = train_loader.dataset, val_loader.dataset
    source = "the image cache" if train_data.cache else "images decoded on the fly"
    unit = "studies" if cfg.view_mode == "study" else "images"
    steps = optimizer_steps(train_loader.sampler.num_samples, cfg)
    return (f"train: {len(train_data):,} train / {len(val_data):,} val {unit} ({source}) on "
            f"{trainer.device} ({trainer.dtype or torch.float32}) x {world.size} process(es), "
            f"effective batch {world.size * cfg.batch_size * cfg.accumulation_steps}, {steps} "
            f"optimizer steps per epoch; {where}")


def input_lines(normalization: dict, cfg: Config) -> list[str]:
    """What --init's source expects of the pixels, as the model will apply it; a warning when
    the run's side is not the one the weights were trained at, and one for the AUC-margin loss
    without a trained model to fine-tune."""
    source = normalization.get("source")
    channels = normalization.get("channels", 3)
    lines = [] if source is None else [
        f"train: --init {cfg.init} ({source}): {channels} input channel(s), pixels in [0, 1] "
        f"standardised with mean {normalization['mean']} and std {normalization['std']}"]
    size = normalization.get("source_size")
    if cfg.loss == "aucm" and not cfg.init:
        lines.append("warning: --loss aucm from ImageNet's or random weights: LibAUC's recipe "
                     "fine-tunes a model trained with BCE (--init RUN/best.pth); on the demo's "
                     "phantoms from random weights it stayed at chance (docs/training.md)")
    if size and size != cfg.image_size:
        lines.append(f"warning: {source}'s weights were trained at {size} px and this run trains "
                     f"at --image_size {cfg.image_size}: fine-tuning adapts them, but --image_size "
                     f"{size} (cache.py and train.py) is the input they expect")
    return lines


def offsets_line(pos_weight, offsets, loss: str = "bce") -> str:
    """The positive weights of the training split and the logit offset each leaves (log w),
    which the model's label logits subtract; focal and aucm leave none (cxr/training/losses.py:
    loss_offsets)."""
    if loss != "bce":
        weights = ", ".join(f"{label} {w:.1f}" for label, w in zip(LABELS, pos_weight))
        used = "unused by aucm, which weighs each class by its prior" if loss == "aucm" else \
            "focal's weights of positive targets"
        return (f"train: --loss {loss}: no logit offset (it is weighted BCE's alone); "
                f"evaluate.py's per-class calibration, fitted on val, maps the scores to "
                f"probabilities. pos_weight ({used}): {weights}")
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
    run_cli(lambda cfg: main(cfg, given_fields(sys.argv[1:], "train.py", Config)),
            script="train.py", defaults=Config())
