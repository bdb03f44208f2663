"""Training-step speed in fp32 and under bf16 autocast on this CPU, and what --precision auto picks.

    python benchmarks/bench_precision.py [--image_size 96] [--batch_size 16] [--steps 4]

The DenseNet121 + GeM + head training step (channels_last, AdamW, BCE) on random in-memory
batches, after one untimed step, in each precision. bf16 is fast only where the CPU computes it
natively (AVX512-BF16, AMX, Arm BF16); elsewhere PyTorch emulates it and it is several times
slower than fp32, which is why `--precision auto` checks (engine.cpu_has_native_bf16).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import Config
from cxr.cli import parse_args  # noqa: E402
from cxr.data.labels import LABELS
from cxr.training.runtime import autocast, autocast_dtype, cpu_has_native_bf16, prepare_model \
    # noqa: E402
from model_architecture import CheXpertNet  # noqa: E402

CPU = torch.device("cpu")


def step_rate(dtype: torch.dtype | None, image_size: int, batch_size: int, steps: int) -> float:
    """Images per second of the training step under autocast `dtype` (None: fp32)."""
    torch.manual_seed(0)
    model = prepare_model(CheXpertNet(len(LABELS)), CPU, Config(channels_last=True)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 3, image_size, image_size).to(
        memory_format=torch.channels_last)
    targets = torch.randint(0, 2, (batch_size, len(LABELS))).float()
    for step in range(steps + 1):
        if step == 1:  # the first step (lazy initialisation) is not timed
            start = time.perf_counter()
        with autocast(CPU, dtype):
            logits = model(images)
        torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch_size / (time.perf_counter() - start)


@dataclass
class Options:
    image_size: int = 96  # pixels
    batch_size: int = 16  # images per step
    steps: int = 4  # timed training steps per precision


def main() -> None:
    args = parse_args(defaults=Options())
    rates = {name: step_rate(dtype, args.image_size, args.batch_size, args.steps)
             for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
    auto = autocast_dtype("auto", CPU)
    print(f"DenseNet121 training step at {args.image_size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}")
    for name, rate in rates.items():
        print(f"  {name:5} {rate:6.1f} img/s")
    print(f"bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}; --precision auto takes "
          f"{'bf16' if auto is torch.bfloat16 else 'fp32'} here")


if __name__ == "__main__":
    main()
