"""Training speed of each --loss: images/s of train.py's training step for bce, focal and aucm.

    python benchmarks/bench_losses.py [--backbone densenet121] [--image_size 96] [--batch_size 16]
                                      [--rounds 10] [--steps 2]

One model per loss (--backbone + GeM + head, fine-tuning: every layer trains), built as
train.make_trainer builds it: the loss (cxr/training/losses.py) and its optimizer (AdamW for
bce and focal, LibAUC's PESG with the loss's a, b, alpha for aucm), precision auto (bf16 autocast
where the CPU has native bf16, else fp32), channels_last. A step is train.py's own:
forward_backward on one batch of random uint8 images in memory, then optimizer_step (unscale,
clip, step, schedule). The losses take turns, --steps timed steps each per round (the order
rotating from round to round), for --rounds rounds after one untimed step each, so that other
load on the machine hits all three alike. Each loss's figure is its best round (the least
disturbed by other work) and its median round, with their ratios to bce's: timings on a shared
machine vary by 10-30 % and more, the ratios measured side by side much less. Prints a Markdown
table with the command, date and machine.
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, pop_option  # noqa: E402

from config import Config  # noqa: E402
from cxr.cli import apply_overrides  # noqa: E402
from cxr.data.labels import LABELS  # noqa: E402
from cxr.training.losses import make_criterion  # noqa: E402
from cxr.training.runtime import autocast_dtype, prepare_model  # noqa: E402
from cxr.training.state import Trainer  # noqa: E402
from model_architecture import build_model  # noqa: E402
from train import forward_backward, make_optimizer, make_scheduler, optimizer_step  # noqa: E402

LOSSES = ("bce", "focal", "aucm")


def make_trainer(cfg: Config, targets: torch.Tensor) -> Trainer:
    """train.make_trainer's objects for cfg.loss, on the CPU, fine-tuning from the first step."""
    device = torch.device("cpu")
    model = prepare_model(build_model(cfg), device, cfg).train()
    criterion = make_criterion(cfg, torch.full((len(LABELS),), 2.0), (False,) * len(LABELS),
                               targets.numpy(), device)
    optimizer = make_optimizer(model, cfg, criterion)
    return Trainer(model, model, criterion, optimizer, make_scheduler(optimizer, cfg, 1000),
                   torch.amp.GradScaler("cpu", enabled=False), cfg, device,
                   autocast_dtype(cfg.precision, device))


def time_steps(trainer: Trainer, images: torch.Tensor, targets: torch.Tensor, steps: int
               ) -> float:
    """Images/s of `steps` training steps."""
    start = time.perf_counter()
    for _ in range(steps):
        forward_backward(trainer, images, targets, 1.0, sync=True)
        optimizer_step(trainer, loss_finite=True)
    return steps * len(images) / (time.perf_counter() - start)


def main() -> None:
    rounds, argv = pop_option(sys.argv[1:], "rounds", "10")
    steps, argv = pop_option(argv, "steps", "2")
    base = apply_overrides(Config(image_size=96, pretrained=False, warmup_steps=0), argv)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (base.batch_size, 1, base.image_size, base.image_size),
                           dtype=torch.uint8)
    targets = torch.randint(0, 2, (base.batch_size, len(LABELS))).float()
    trainers = {loss: make_trainer(dataclasses.replace(base, loss=loss), targets)
                for loss in LOSSES}
    for trainer in trainers.values():  # untimed: first-call allocations
        time_steps(trainer, images, targets, 1)
    rates = {loss: [] for loss in LOSSES}
    for turn in range(int(rounds)):
        for loss in LOSSES[turn % 3:] + LOSSES[:turn % 3]:
            rates[loss].append(time_steps(trainers[loss], images, targets, int(steps)))
    best = {loss: max(values) for loss, values in rates.items()}
    median = {loss: statistics.median(values) for loss, values in rates.items()}
    dtype = autocast_dtype(base.precision, torch.device("cpu")) or "fp32"
    print(f"python benchmarks/bench_losses.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"{datetime.date.today().isoformat()}, {machine()}; {base.backbone} at "
          f"{base.image_size} px, batch {base.batch_size}, {dtype}, {rounds} rounds x {steps} "
          f"steps per loss, interleaved\n")
    print("| loss | optimizer | images/s, best round | vs bce | images/s, median round | vs bce |")
    print("| --- | --- | --- | --- | --- | --- |")
    for loss in LOSSES:
        optimizer = type(trainers[loss].optimizer).__name__
        print(f"| {loss} | {optimizer} | {best[loss]:.1f} | {best[loss] / best['bce']:.2f} | "
              f"{median[loss]:.1f} | {median[loss] / median['bce']:.2f} |")


if __name__ == "__main__":
    main()
