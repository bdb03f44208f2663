"""Per-class AUC report card of a checkpoint on the val and test splits.

    python evaluate.py [--checkpoint models/RUN/best.pth]

Reads  the checkpoint (default: the newest models/*/best.pth) and <data_dir>/splits/val.csv,
       test.csv. The model is rebuilt from the checkpoint's own config, labels and pixel stats.
Writes models/<run>/eval_<split>.json ({split, checkpoint, n_images, auc, mean_auc, ...}),
       eval_<split>.md and eval_<split>.csv next to the checkpoint, and prints the report card.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from checkpoints import load_checkpoint, model_from_checkpoint, newest_checkpoint
from config import Config, run_cli
from dataset import make_dataset, make_loader, read_split
from engine import autocast_dtype, choose_device, predict_logits, prepare_model
from fileio import write_csv_atomic, write_text_atomic
from metrics import format_markdown, format_report_card, mean_auc, per_class_auc, report_rows

SPLITS = ("val", "test")


def evaluate_split(model, split: str, checkpoint: dict, trained: Config, cfg: Config,
                   device: torch.device) -> dict:
    labels = tuple(checkpoint["labels"])
    frame = read_split(cfg.splits_dir / f"{split}.csv", labels)
    data = make_dataset(frame, trained, cfg.data_dir, augment=False, name=split, labels=labels,
                        use_cache=cfg.use_cache)
    loader = make_loader(data, cfg, train=False, device=device)
    logits, targets = predict_logits(model, loader, device, autocast_dtype(cfg.precision, device),
                                     cfg.channels_last, desc=f"evaluate {split}")
    targets = targets.numpy()
    aucs = per_class_auc(targets, torch.sigmoid(logits).numpy(), labels)
    return {"split": split, "n_images": len(data), "n_patients": int(frame["patient_id"].nunique()),
            "auc": aucs, "mean_auc": mean_auc(aucs), "rows": report_rows(aucs, targets, labels)}


def write_reports(result: dict, out_dir: Path) -> None:
    split = result["split"]
    summary = {key: value for key, value in result.items() if key != "rows"}
    write_text_atomic(json.dumps(summary, indent=2), out_dir / f"eval_{split}.json")
    title = (f"# Report card: {split} split\n\n{result['n_images']} images, "
             f"{result['n_patients']} patients; checkpoint `{result['checkpoint']}`\n\n")
    write_text_atomic(title + format_markdown(result["rows"]) + "\n", out_dir / f"eval_{split}.md")
    write_csv_atomic(pd.DataFrame(result["rows"]), out_dir / f"eval_{split}.csv")


def checkpoint_to_evaluate(cfg: Config) -> Path:
    """--checkpoint, else --run_name's best.pth, else the newest run's best.pth."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.run_name:
        return cfg.run_dir / "best.pth"
    return newest_checkpoint(cfg.models_dir)


def main(cfg: Config) -> None:
    path = checkpoint_to_evaluate(cfg)
    checkpoint = load_checkpoint(path)
    device = choose_device(cfg.device)
    model, trained = model_from_checkpoint(checkpoint)
    model = prepare_model(model, device, cfg)
    for split in SPLITS:
        result = {"checkpoint": str(path), "epoch": checkpoint.get("epoch"),
                  **evaluate_split(model, split, checkpoint, trained, cfg, device)}
        write_reports(result, path.parent)
        print(f"\nReport card: {split} split ({result['n_images']} images, "
              f"{result['n_patients']} patients), checkpoint {path}")
        print(format_report_card(result["rows"]))
    print(f"\nevaluate: wrote {path.parent}/eval_{{{','.join(SPLITS)}}}.{{json,md,csv}}")


if __name__ == "__main__":
    run_cli(main)
