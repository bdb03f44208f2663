"""predict.py's images per second beside the model's pure compute rate on the same batches.

    python benchmarks/bench_predict.py [--image_size 224 --batch_size 16 --num_workers -1]

On the 467 real JPEGs of ../shared/data/nih-cxr-small (320 px), with a random-init DenseNet121
checkpoint at --image_size built here (the weights do not change the speed):
  predict   predict.main, all it does after the imports: collecting the folder, loading the
            checkpoint, decoding in DataLoader workers, the model, writing the CSV
  compute   the same model, device, precision (--precision auto: bf16 where the CPU has it
            natively, else fp32), channels_last and batch size on the same images already
            decoded in memory: the rate predict.py cannot beat
Each is timed after an untimed warm-up pass (file cache, lazy initialisation), three times,
alternating (so that other load on the machine hits both alike); the figure is the best pass.
The ratio predict / compute is the share of the model's speed that reaches the user (goal: at
least 0.9).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import predict  # noqa: E402
from config import Config
from conftest import tiny_checkpoint  # noqa: E402
from cxr.cli import parse_args  # noqa: E402
from cxr.data.inputs import images_in_folder  # noqa: E402
from cxr.inference.predictor import RadiographFiles, batch_logits, load_predictor  # noqa: E402
from model_architecture import model_from_checkpoint

NIH = ROOT.parent / "shared" / "data" / "nih-cxr-small" / "CheXpert-v1.0-small"


def predict_rate(cfg: Config, n_images: int) -> float:
    start = time.perf_counter()
    predict.main(cfg)
    return n_images / (time.perf_counter() - start)


def compute_rate(cfg: Config, paths: list[str]) -> float:
    predictor = load_predictor(cfg.checkpoint, cfg, rebuild=model_from_checkpoint)
    data = RadiographFiles(paths, predictor.image_size, predictor.side)
    batches = [data.__getitems__(list(range(i, min(i + cfg.batch_size, len(paths))))).images
               for i in range(0, len(paths), cfg.batch_size)]
    batch_logits(predictor, batches[0])  # warm-up
    start = time.perf_counter()
    for images in batches:
        batch_logits(predictor, images)
    return len(paths) / (time.perf_counter() - start)


def main(cfg: Config) -> None:
    if not NIH.is_dir():
        raise SystemExit(f"{NIH} not found: this benchmark needs ../shared/data")
    paths, _ = images_in_folder(NIH)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tiny_checkpoint(Path(tmp) / "run" / "best.pth", image_size=cfg.image_size)
        run = Config(**{**cfg.__dict__, "checkpoint": str(checkpoint), "inputs": (str(NIH),),
                        "output": str(Path(tmp) / "predictions.csv")})
        warm_up = Config(**{**run.__dict__, "inputs": tuple(paths[:2 * cfg.batch_size])})
        predict_rate(warm_up, 2 * cfg.batch_size)
        rates = [(predict_rate(run, len(paths)), compute_rate(run, paths)) for _ in range(3)]
    predicted, computed = max(p for p, _ in rates), max(c for _, c in rates)
    print(f"\n{len(paths)} images at {cfg.image_size} px, batch {cfg.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads:")
    print(f"  predict.py  {predicted:7.1f} img/s")
    print(f"  compute     {computed:7.1f} img/s (model only, images in memory)")
    print(f"  ratio       {predicted / computed:7.2f}")


if __name__ == "__main__":
    main(parse_args(defaults=Config(image_size=224)))
