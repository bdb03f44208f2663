"""A run folder's records, written and read here: config.json (the resolved config),
run_info.json (what launched the run and each resume: command, versions, git commit, device)
and metrics.csv (one row per epoch). The checkpoints beside them are
cxr/training/checkpoint.py's."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torchvision

from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.cli import PIPELINE_ENV
from cxr.errors import PipelineError
from cxr.training.checkpoint import recorded_config
from cxr.training.runtime import World

if TYPE_CHECKING:
    from config import Config


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1], timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def launch_info(device: torch.device, world: World) -> dict:
    """What this launch ran: the command line (with the PIPELINE_OPTIONS it was given, which
    the Makefile uses), when, the code and library versions, the device."""
    return {"command": [sys.executable, *sys.argv],
            "pipeline_options": os.environ.get(PIPELINE_ENV),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "git_commit": git_commit(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "device": str(device), "world_size": world.size,
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def read_run_config(run_dir: Path, cls: type[Config]) -> Config | None:
    """The Config a run folder's config.json records (None when it has none yet)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    return recorded_config(json.loads(path.read_text()), cls)


def read_run_info(run_dir: Path) -> dict:
    path = run_dir / "run_info.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def prepare_run_dir(cfg: Config, device: torch.device, world: World, resumed: bool,
                    rules: dict | None = None) -> Path:
    """Create models/<run_name>/ with the resolved config and what produced it. A resumed run
    keeps the first launch's run_info.json and appends its own launch to its "resumed" list.
    `rules`: how this launch warms up and picks best.pth (train.py), recorded as they are now."""
    run_dir = cfg.run_dir
    if not resumed and (run_dir / "last.pth").exists():
        raise PipelineError(f"{run_dir} already holds a trained run; continue it with --resume "
                            f"{run_dir / 'last.pth'}, or choose another --run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(dataclasses.asdict(cfg), indent=2), run_dir / "config.json")
    info = read_run_info(run_dir) if resumed else {}
    launch = launch_info(device, world)
    info = {**launch, "resumed": info.get("resumed", [])} if not resumed else \
        {**info, "resumed": [*info.get("resumed", []), launch]}
    info.update(rules or {})
    write_text_atomic(json.dumps(info, indent=2), run_dir / "run_info.json")
    return run_dir


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


def write_metrics(history: list[dict], run_dir: Path) -> None:
    """metrics.csv rewritten whole from the run's rows (a resumed run's history includes the
    rows of the epochs before the interruption)."""
    write_csv_atomic(pd.DataFrame(history), run_dir / "metrics.csv")
