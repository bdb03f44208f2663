"""GPU training speed and peak memory per backbone, with and without --memory_efficient and
--compile.

    python benchmarks/bench_gpu.py [--backbones densenet121,resnet50] [--image_size 320]
                                   [--batch_size 16] [--steps 20] [--compile]
    python benchmarks/bench_gpu.py --device cpu --backbones densenet121 --image_size 160 \
        --batch_size 8 --steps 3

On a CUDA GPU, for each backbone (default: all of model_architecture.BACKBONES) + GeM + head,
every layer training: fp16 autocast with a GradScaler, channels_last, AdamW, masked BCE on random
uint8 batches (the compute alone, no data loading). Prints images/s over `--steps` timed steps
after 2 untimed ones, and the peak GPU memory (torch.cuda.max_memory_allocated) of each, to back
the README's "fits a 4 GB GPU" with a figure. The DenseNets are measured again with
--memory_efficient, and with --compile every backbone again under torch.compile (its compile
time is the untimed steps' and is printed). It needs CUDA: elsewhere it says so and exits 0.
`--device cpu` times the same steps in fp32 on the CPU (no peak memory).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr.data.labels import LABELS
from model_architecture import BACKBONES, CheXpertNet  # noqa: E402

WARMUP_STEPS = 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(backbone: str, memory_efficient: bool, compiled: bool, image_size: int,
            batch_size: int, steps: int, device: torch.device) -> dict:
    """Images/s and peak GPU memory (GiB; None on the CPU) of `steps` training steps: fp16 with
    a GradScaler on CUDA, fp32 on the CPU; the seconds of the untimed steps (compiling)."""
    torch.manual_seed(0)
    model = CheXpertNet(backbone=backbone, memory_efficient=memory_efficient).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    net = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    images = torch.randint(0, 256, (batch_size, 1, image_size, image_size), dtype=torch.uint8,
                           device=device)
    targets = torch.randint(0, 2, (batch_size, len(LABELS)), device=device).float()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warmup_start = time.perf_counter()
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            synchronize(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * batch_size / seconds, "warmup_s": start - warmup_start,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


def variants(backbone: str, compile_too: bool) -> list[tuple[bool, bool]]:
    """(memory_efficient, compiled) pairs to measure for a backbone."""
    pairs = [(False, False)]
    if backbone.startswith("densenet"):
        pairs.append((True, False))
    if compile_too:
        pairs.append((False, True))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES),
                        help="comma list of model_architecture.BACKBONES")
    parser.add_argument("--image_size", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
    unknown = [name for name in backbones if name not in BACKBONES]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: needs a CUDA GPU (torch.cuda.is_available() is False here); nothing "
              "measured (--device cpu times the steps on the CPU)")
        return
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU, fp32"
    print(f"bench_gpu: {name}, torch {torch.__version__}, {args.image_size} px, batch "
          f"{args.batch_size}, {args.steps} steps after {WARMUP_STEPS}")
    print(f"  {'backbone':<16} {'memory_efficient':<17} {'compiled':<9} {'img/s':>8}  "
          f"{'peak GiB':>8}  {'untimed s':>9}")
    for backbone in backbones:
        for memory_efficient, compiled in variants(backbone, args.compile):
            result = measure(backbone, memory_efficient, compiled, args.image_size,
                             args.batch_size, args.steps, device)
            peak = f"{result['peak_gib']:8.2f}" if result["peak_gib"] is not None else f"{'':8}"
            print(f"  {backbone:<16} {str(memory_efficient).lower():<17} "
                  f"{str(compiled).lower():<9} {result['images_per_s']:8.2f}  {peak}  "
                  f"{result['warmup_s']:9.1f}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
