"""Training speed: compute only, our real training loop, and a naive loop, with peak memory.

    python benchmarks/bench_train.py [--backbone densenet121] [--image_size 224] [--batch_size 16]
                                     [--batches 12] [--compile true]

Same model (--backbone, default DenseNet121, + GeM + head, fine-tuning: every layer trains),
batch and image size:
  compute  the training step alone on in-memory uint8 batches (precision auto: bf16 autocast
           where the CPU has native bf16, else fp32; channels_last, AdamW, masked BCE): the
           ceiling of any data pipeline
  real     train.py's train_one_epoch over the 404 real JPEGs of ../shared/data/nih-cxr-small,
           read from the image cache (cache.py) by the default DataLoader workers, with
           augmentation, the EpochSampler order and the accumulation/skip/clip logic
  naive    what most CheXpert repositories do: fp32, default memory format, PIL decode +
           torchvision transforms per image in DataLoader workers, plain Adam loop
With --compile true, compute and real run a second time with the model under torch.compile
(inductor), after its untimed compile (timed separately: "compile_s").
Each runs in its own process after untimed warm-up batches (for the real loop, a whole untimed
epoch that also starts its persistent workers); peak resident memory is that process's
(workers included). Goal on a 2-core CPU at 224 px: real >= 0.9 x compute and
>= 2 x naive.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import pop_option  # noqa: E402

from config import Config
from cxr.cli import apply_overrides  # noqa: E402
from cxr.data.labels import LABELS
from cxr.training.runtime import autocast, autocast_dtype, prepare_model, to_device  # noqa: E402
from model_architecture import CheXpertNet, build_model  # noqa: E402

NIH = ROOT.parent / "shared" / "data" / "nih-cxr-small" / "CheXpert-v1.0-small"
WARMUP = 2


def peak_memory_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + workers) / 1024  # ru_maxrss is in KB on Linux


def compute_only(cfg: Config, batches: int) -> float:
    """Images/s of the training step on batches already in memory."""
    from cxr.training.losses import MaskedBCE
    from train import make_optimizer
    model = prepare_model(build_model(cfg), torch.device("cpu"), cfg).train()
    optimizer, criterion = make_optimizer(model, cfg), MaskedBCE()
    net = torch.compile(model) if cfg.compile else model
    images = torch.randint(0, 256, (cfg.batch_size, 1, cfg.image_size, cfg.image_size),
                           dtype=torch.uint8)
    targets = torch.randint(0, 2, (cfg.batch_size, len(LABELS))).float()
    dtype = autocast_dtype("auto", torch.device("cpu"))
    for step in range(WARMUP + batches):
        if step == WARMUP:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            logits = net(to_device(images, torch.device("cpu"), True))
        criterion(logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return batches * cfg.batch_size / (time.perf_counter() - start)


def real_loop(cfg: Config, batches: int) -> float:
    """Images/s of train.py's epoch loop, cached real JPEGs, default workers."""
    from cxr.data.loading import make_loader
    from cxr.training.losses import MaskedBCE
    from cxr.training.state import Progress, Trainer
    from dataset import EpochSampler, make_dataset
    from train import make_optimizer, train_one_epoch
    device = torch.device("cpu")
    frame = pd.read_csv(cfg.splits_dir / "train.csv")
    model = prepare_model(build_model(cfg), device, cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    net = torch.compile(model) if cfg.compile else model
    trainer = Trainer(model, net, MaskedBCE(), optimizer, scheduler,
                      torch.amp.GradScaler("cpu", enabled=False), cfg, device,
                      autocast_dtype("auto", device))
    data = make_dataset(frame.head(batches * cfg.batch_size), cfg, cfg.data_dir, True, "train")
    assert data.cache is not None, "the benchmark expects the image cache"
    sampler = EpochSampler(len(data), cfg.seed)
    loader = make_loader(data, cfg, train=True, device=device, sampler=sampler)
    for epoch in (1, 2):  # epoch 1 starts the (persistent) workers and is not timed
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        progress = train_one_epoch(trainer, loader, Progress(epoch=epoch), frozen=False,
                                   desc="real loop")
    return progress.seen / (time.perf_counter() - start)


def naive_loop(cfg: Config, batches: int) -> float:
    """Images/s of the common pattern: fp32, NCHW, PIL + torchvision transforms per image."""
    from bench_data import BaselineDataset
    frame = pd.read_csv(cfg.splits_dir / "train.csv")
    paths = frame["image_path"].head((WARMUP + batches) * cfg.batch_size).tolist()
    loader = DataLoader(BaselineDataset(paths, cfg.image_size, augment=True),
                        batch_size=cfg.batch_size, shuffle=True, num_workers=1)
    model = CheXpertNet(len(LABELS), backbone=cfg.backbone).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = torch.nn.BCEWithLogitsLoss()
    for step, (images, targets) in enumerate(loader):
        if step == WARMUP:
            start = time.perf_counter()
        criterion(model(images), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    return batches * cfg.batch_size / (time.perf_counter() - start)


MODES = {"compute": compute_only, "real": real_loop, "naive": naive_loop}


def prepare_data(folder: Path, cfg: Config) -> Config:
    """Preprocess and cache the NIH images; every image goes into the train split."""
    import cache
    import preprocess
    cfg = apply_overrides(cfg, ["--data_root", str(NIH), "--data_dir", str(folder),
                                "--stats_sample", "50"])
    preprocess.main(cfg)
    cfg.splits_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        shutil.copyfile(cfg.processed_dir / "train.csv", cfg.splits_dir / f"{split}.csv")
    cache.main(cfg)
    return cfg


def run_mode(mode: str, argv: list[str], compiled: bool = False) -> dict:
    """One mode in a fresh process, so its peak memory is its own."""
    extra = ["--compile", "true"] if compiled else []
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--mode", mode, *argv, *extra],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    if compiled:
        row["mode"] = f"{mode} compiled"
        row["seconds"] = time.perf_counter() - start  # compiling included
    return row


def main() -> None:
    mode, argv = pop_option(sys.argv[1:], "mode", None)
    batches, argv = pop_option(argv, "batches", "12")
    batches = int(batches)
    cfg = apply_overrides(Config(image_size=224, pretrained=False), argv)
    if mode is not None:  # a child process: measure one mode, print one JSON line
        rate = MODES[mode](cfg, batches)
        print(json.dumps({"mode": mode, "images_per_s": rate, "peak_mb": peak_memory_mb()}))
        return
    if not NIH.is_dir():
        sys.exit(f"{NIH} not found: this benchmark needs ../shared/data")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = prepare_data(Path(tmp), cfg)
        common = ["--data_dir", cfg.data_dir, "--image_size", str(cfg.image_size),
                  "--batch_size", str(cfg.batch_size), "--batches", str(batches),
                  "--backbone", cfg.backbone]
        rows = [run_mode(mode, common) for mode in MODES]
        if cfg.compile:
            rows += [run_mode(mode, common, compiled=True) for mode in ("compute", "real")]
    table = pd.DataFrame(rows).set_index("mode")
    compute, real, naive = (table.loc[m, "images_per_s"] for m in ("compute", "real", "naive"))
    parameters = sum(p.numel() for p in CheXpertNet(len(LABELS), backbone=cfg.backbone)
                     .parameters())
    print(f"\n{cfg.backbone} ({parameters / 1e6:.1f} M parameters) training at {cfg.image_size} "
          f"px, batch {cfg.batch_size}, {batches} timed batches, {torch.get_num_threads()} torch "
          f"threads, compute and real in {autocast_dtype('auto', torch.device('cpu')) or 'fp32'}:")
    print(table.to_string(float_format=lambda v: f"{v:,.1f}", na_rep=""))
    print(f"real / compute = {real / compute:.2f} (goal >= 0.9); real / naive = "
          f"{real / naive:.2f} (goal >= 2)")


if __name__ == "__main__":
    main()
