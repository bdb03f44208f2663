"""Train DenseNet121 + GeM on the patient-level splits: frozen warm-up, then fine-tuning.

    python train.py [--epochs 5] [--image_size 320] [--batch_size 16] [--run_name NAME]

Reads  <data_dir>/splits/train.csv, val.csv (make_splits.py), <data_dir>/processed/stats.json.
Writes models/<run_name>/best.pth (best val mean AUC), last.pth, config.json, run_info.json,
       metrics.csv (one row per epoch). Checkpoints load with torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torchvision
from torch import nn
from tqdm import tqdm

from checkpoints import save_checkpoint
from config import LABELS, Config, PipelineError, run_cli
from dataset import make_dataset, make_loader, read_split
from engine import (autocast, autocast_dtype, choose_device, predict_logits, prepare_model,
                    seed_everything, to_device)
from fileio import write_csv_atomic, write_text_atomic
from labels import positive_class_weights
from metrics import mean_auc, per_class_auc
from model_architecture import CheXpertNet, build_model


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


def prepare_run_dir(cfg: Config, device: torch.device) -> Path:
    """Create models/<run_name>/ with the resolved config and what produced it."""
    run_dir = cfg.run_dir
    if (run_dir / "last.pth").exists():
        raise PipelineError(f"{run_dir} already holds a trained run; choose another --run_name "
                            "(or delete that folder) so its checkpoints are not overwritten")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(dataclasses.asdict(cfg), indent=2), run_dir / "config.json")
    info = {"command": [sys.executable, *sys.argv], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "git_commit": git_commit(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "device": str(device), "cuda_device": torch.cuda.get_device_name(0)
            if device.type == "cuda" else None}
    write_text_atomic(json.dumps(info, indent=2), run_dir / "run_info.json")
    return run_dir


def make_optimizer(model: CheXpertNet, cfg: Config) -> torch.optim.AdamW:
    """AdamW with its own learning rate for the pretrained backbone and for the new head."""
    return torch.optim.AdamW([
        {"params": list(model.backbone.parameters()), "lr": cfg.lr_backbone, "name": "backbone"},
        {"params": model.head_parameters(), "lr": cfg.lr_head, "name": "head"},
    ], weight_decay=cfg.weight_decay)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at the last optimizer step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


# ---- one epoch -----------------------------------------------------------------------------------

def train_one_epoch(model, loader, criterion, optimizer, scheduler, scaler, cfg: Config,
                    device, dtype, frozen: bool, desc: str) -> tuple[float, float]:
    """One pass over the training split; returns (mean loss per image, images per second)."""
    model.train()
    if frozen:
        model.backbone.eval()  # frozen BatchNorm keeps its running statistics
    plan = accumulation_plan(len(loader.dataset), cfg.batch_size, cfg.accumulation_steps)
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    progress = tqdm(loader, desc=desc, unit="batch", leave=False)
    for (images, targets), (weight, step_now) in zip(progress, plan):
        images, targets = to_device(images, device, cfg.channels_last), targets.to(device)
        with autocast(device, dtype):
            logits = model(images)
        loss = criterion(logits.float(), targets)
        if not torch.isfinite(loss):
            raise PipelineError(f"{desc}: the loss became {loss.item()} after {seen} images; "
                                "lower --lr_head/--lr_backbone or use --precision fp32")
        scaler.scale(loss * weight).backward()
        if step_now:
            scale = scaler.get_scale()
            scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scaler.get_scale() >= scale:  # the step was taken: advance the schedule
                scheduler.step()
        total_loss += loss.item() * len(images)
        seen += len(images)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}",
                             img_s=f"{seen / (time.perf_counter() - start):.1f}")
    return total_loss / seen, seen / (time.perf_counter() - start)


def validation_metrics(model, loader, criterion, cfg, device, dtype, desc) -> dict:
    logits, targets = predict_logits(model, loader, device, dtype, cfg.channels_last, desc)
    loss = float(criterion(logits.to(device), targets.to(device)))
    aucs = per_class_auc(targets.numpy(), torch.sigmoid(logits).numpy(), LABELS)
    return {"val_loss": loss, "val_auc": aucs, "val_mean_auc": mean_auc(aucs)}


def epoch_row(epoch: int, frozen: bool, train_loss: float, val: dict, optimizer,
              images_per_s: float, seconds: float) -> dict:
    """One metrics.csv row: losses, val AUCs, learning rates at the epoch's end, speed."""
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    return {"epoch": epoch, "phase": "frozen" if frozen else "fine-tune",
            "train_loss": train_loss, "val_loss": val["val_loss"],
            "val_mean_auc": val["val_mean_auc"], "lr_head": lrs["head"],
            "lr_backbone": 0.0 if frozen else lrs["backbone"], "images_per_s": images_per_s,
            "epoch_seconds": seconds,
            **{f"auc {label}": auc for label, auc in val["val_auc"].items()}}


def epoch_line(row: dict, epochs: int, is_best: bool) -> str:
    auc = "n/a" if row["val_mean_auc"] is None else f"{row['val_mean_auc']:.4f}"
    return (f"epoch {row['epoch']}/{epochs} {row['phase']:<9} train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_mean_auc {auc}{' (best)' if is_best else ''}  "
            f"lr head {row['lr_head']:.1e} backbone {row['lr_backbone']:.1e}  "
            f"{row['images_per_s']:.1f} img/s  {row['epoch_seconds']:.0f} s")


# ---- main ----------------------------------------------------------------------------------------

def main(cfg: Config) -> None:
    if not cfg.run_name:
        cfg = dataclasses.replace(cfg, run_name=time.strftime("%Y%m%d-%H%M%S"))
    seed_everything(cfg.seed)
    device = choose_device(cfg.device)
    dtype = autocast_dtype(cfg.precision, device)
    stats = read_stats(cfg)
    train_frame = read_split(cfg.splits_dir / "train.csv")
    val_frame = read_split(cfg.splits_dir / "val.csv")

    model = prepare_model(build_model(cfg, stats), device, cfg)
    run_dir = prepare_run_dir(cfg, device)
    train_data = make_dataset(train_frame, cfg, cfg.data_dir, cfg.augment, "train",
                              use_cache=cfg.use_cache)
    val_data = make_dataset(val_frame, cfg, cfg.data_dir, False, "val", use_cache=cfg.use_cache)
    train_loader = make_loader(train_data, cfg, train=True, device=device)
    val_loader = make_loader(val_data, cfg, train=False, device=device)

    pos_weight = positive_class_weights(train_data.targets.numpy(), cfg.max_pos_weight)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(pos_weight).to(device))
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = sum(step for _, step in accumulation_plan(
        len(train_data), cfg.batch_size, cfg.accumulation_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(
        step, cfg.warmup_steps, cfg.epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    source = "the image cache" if train_data.cache else "images decoded on the fly"
    print(f"train: {len(train_data):,} train / {len(val_data):,} val images ({source}) on {device}"
          f" ({dtype or torch.float32}), effective batch {cfg.batch_size * cfg.accumulation_steps}, "
          f"{steps_per_epoch} optimizer steps per epoch, run folder {run_dir}")

    history, best = [], None
    for epoch in range(1, cfg.epochs + 1):
        frozen = epoch <= cfg.frozen_epochs
        set_backbone_frozen(model, frozen)
        start = time.perf_counter()
        train_loss, images_per_s = train_one_epoch(
            model, train_loader, criterion, optimizer, scheduler, scaler, cfg, device, dtype,
            frozen, desc=f"epoch {epoch}/{cfg.epochs} {'frozen' if frozen else 'fine-tune'}")
        val = validation_metrics(model, val_loader, criterion, cfg, device, dtype, "validate")
        row = epoch_row(epoch, frozen, train_loss, val, optimizer, images_per_s,
                        time.perf_counter() - start)
        is_best = row["val_mean_auc"] is not None and (best is None or row["val_mean_auc"] > best)
        best = row["val_mean_auc"] if is_best else best
        history.append(row)
        write_csv_atomic(pd.DataFrame(history), run_dir / "metrics.csv")

        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                      "epoch": epoch, "global_step": epoch * steps_per_epoch, "best_metric": best,
                      "config": dataclasses.asdict(cfg), "labels": list(LABELS),
                      "normalization": stats, "val_auc": val["val_auc"]}
        save_checkpoint(checkpoint, run_dir / "last.pth")
        if is_best or (epoch == 1 and best is None):
            save_checkpoint(checkpoint, run_dir / "best.pth")
        print(epoch_line(row, cfg.epochs, is_best), flush=True)

    best_text = "n/a" if best is None else f"{best:.4f}"
    print(f"train: wrote {run_dir}/best.pth (val mean AUC {best_text}), last.pth, metrics.csv, "
          "config.json, run_info.json")


if __name__ == "__main__":
    run_cli(main)
