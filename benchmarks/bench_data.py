"""Images per second of three ways to feed training, with 0, 1 and 2 DataLoader workers.

    python benchmarks/bench_data.py [--image_size 224]

On the 467 real JPEGs of ../shared/data/nih-cxr-small (320 px, listed 4 times, so a pass is
long enough to time the worker pipeline rather than its start-up) and the 3 full-resolution
CheXpert images of ../shared/data/chexpert-fullres-sample (2,000-2,800 px, 16 copies of each),
three timed passes after an untimed one that starts the workers and warms the file cache:
  baseline  PIL open -> convert("RGB") -> torchvision Resize + ToTensor + Normalize (what most
            CheXpert repositories do); "baseline+affine" adds RandomAffine, the augmentation
            our training path applies (ratios are given against the plain baseline)
  decode    this project without a cache: grayscale decode (OpenCV, reduced-size JPEG decoding),
            area resize, augmentation on uint8
  cache     this project reading the memory-mapped cache written by cache.py
It also times a DenseNet121 training step on this machine, the rate the loader has to beat,
and reports the anonymous (heap) memory the cached pass adds to the loading process: the
memory map's pages are file-backed, shared and reclaimable, so they are not counted there.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cache  # noqa: E402
import cxr.data.image_cache as image_cache  # noqa: E402
import preprocess  # noqa: E402
from config import Config
from cxr.cli import apply_overrides  # noqa: E402
from cxr.data.labels import LABELS
from cxr.data.loading import keep_batch
from cxr.training.runtime import autocast, autocast_dtype, prepare_model  # noqa: E402
from dataset import CheXpertDataset, make_dataset  # noqa: E402
from model_architecture import CheXpertNet  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
NIH = SHARED / "nih-cxr-small" / "CheXpert-v1.0-small"
FULLRES = SHARED / "chexpert-fullres-sample" / "CheXpert-v1.0"
WORKERS = (0, 1, 2)
BATCH = 16


class BaselineDataset(Dataset):
    """The common pattern: RGB PIL image through torchvision's PIL transforms.

    With `augment`, the same small affine our training path applies, the torchvision way.
    """

    def __init__(self, paths: list[str], image_size: int, augment: bool = False):
        self.paths = paths
        augmentation = [transforms.RandomAffine(degrees=7, translate=(0.03, 0.03),
                                                scale=(0.95, 1.05))] if augment else []
        self.transform = transforms.Compose([
            transforms.Resize((image_size, image_size)), *augmentation, transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.25] * 3)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(Image.open(self.paths[index]).convert("RGB")), torch.zeros(14)


def images_per_second(dataset: Dataset, workers: int, passes: int = 3) -> float:
    """Steady-state rate: one untimed pass starts the workers and warms the file cache."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=False, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                        collate_fn=keep_batch if isinstance(dataset, CheXpertDataset) else None)
    for _ in loader:
        pass
    start, seen = time.perf_counter(), 0
    for _ in range(passes):
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def anonymous_memory_mb() -> float:
    """RssAnon of this process (Linux): heap memory, excluding file-backed pages such as a memmap."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def heap_growth_over_a_pass(dataset: Dataset) -> float:
    """MB of heap a single-process pass over every item adds (0 if the cache is memory-mapped)."""
    before = anonymous_memory_mb()
    for _ in DataLoader(dataset, batch_size=BATCH, collate_fn=keep_batch):
        pass
    return anonymous_memory_mb() - before


def prepare(data_root: Path, folder: Path, image_size: int, repeat: int):
    """Preprocess and cache every image (frontal and lateral) of a data root, `repeat` times.

    The benchmark needs no patient split, so its split files simply list all images.
    """
    root = folder / "root"
    shutil.copytree(data_root, root)
    if not (root / "train.csv").is_file():  # the full-resolution sample has only valid.csv
        shutil.copyfile(root / "valid.csv", root / "train.csv")
    cfg = Config(data_root=str(root), data_dir=str(folder), image_size=image_size,
                 frontal_only=False, stats_sample=10)
    preprocess.main(cfg)
    cfg.splits_dir.mkdir(parents=True)
    for split in ("train", "val", "test"):
        shutil.copyfile(cfg.processed_dir / "train.csv", cfg.splits_dir / f"{split}.csv")
    cache.main(cfg)
    frame = pd.read_csv(cfg.splits_dir / "train.csv")
    return pd.concat([frame] * repeat, ignore_index=True), cfg


def cfg_cache_mb(cfg: Config) -> float:
    return (image_cache.cache_folder(cfg.data_dir, cfg.stored_side) / "images.u8").stat().st_size / 2**20


def training_step_rate(image_size: int) -> float:
    """Images per second one DenseNet121 training step consumes here (channels_last, the
    precision train.py's --precision auto takes on this CPU)."""
    cfg = Config(channels_last=True)
    model = prepare_model(CheXpertNet(len(LABELS)), torch.device("cpu"), cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    images = torch.randn(BATCH, 3, image_size, image_size).to(memory_format=torch.channels_last)
    targets = torch.ones(BATCH, len(LABELS))
    dtype = autocast_dtype("auto", torch.device("cpu"))
    for step in range(4):
        if step == 1:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).float(),
                                                                        targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return 3 * BATCH / (time.perf_counter() - start)


def main() -> None:
    if not NIH.is_dir():
        sys.exit(f"{NIH} not found: this benchmark needs ../shared/data")
    image_size = apply_overrides(Config(), sys.argv[1:]).image_size if sys.argv[1:] else 224
    results, memory = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data_root, repeat in (("nih-cxr-small 320 px", NIH, 4),
                                        ("full-resolution CheXpert", FULLRES, 16)):
            frame, cfg = prepare(data_root, Path(tmp) / name, image_size, repeat)
            datasets = {
                "baseline": BaselineDataset(frame["image_path"].tolist(), image_size),
                "baseline+affine": BaselineDataset(frame["image_path"].tolist(), image_size,
                                                   augment=True),
                "decode": make_dataset(frame, cfg, cfg.data_dir, True, name, use_cache=False),
                "cache": make_dataset(frame, cfg, cfg.data_dir, True, name),
            }
            growth = heap_growth_over_a_pass(datasets["cache"])
            memory.append(f"{name}: {growth:+.1f} MB heap after a pass over {len(frame)} items "
                          f"({frame['image_path'].nunique()} distinct images, cache file "
                          f"{cfg_cache_mb(cfg):.1f} MB)")
            for method, dataset in datasets.items():
                for workers in WORKERS:
                    rate = images_per_second(dataset, workers)
                    results.append({"images": name, "method": method, "workers": workers,
                                    "images_per_s": rate})
            shutil.rmtree(Path(tmp) / name)
    table = pd.DataFrame(results)
    table["vs_baseline"] = table["images_per_s"] / table.groupby(["images", "workers"])[
        "images_per_s"].transform(lambda s: s.iloc[0])
    print(f"\nData loading at image_size {image_size}, batch {BATCH} ({torch.get_num_threads()} "
          "torch threads):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    print("\nMemory of the cached path (RssAnon, single process):\n  " + "\n  ".join(memory))
    print(f"\nDenseNet121 training step here consumes {training_step_rate(image_size):.1f} "
          f"images/s at {image_size} px ({precision_name()}, channels_last)")


def precision_name() -> str:
    dtype = autocast_dtype("auto", torch.device("cpu"))
    return "fp32: this CPU has no native bf16" if dtype is None else "bf16"


if __name__ == "__main__":
    main()
