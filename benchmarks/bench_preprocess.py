"""Time preprocess.py and make_splits.py on the real CheXpert train.csv (223,414 rows).

    python benchmarks/bench_preprocess.py

Reads ../shared/data/chexpert-train-labels/train.csv.gz (labels only, so --check_images false)
and the real full-resolution valid.csv sample. Prints the wall time of each script as a user
runs it (a fresh process: interpreter start and imports included) and of its main() alone.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import make_splits  # noqa: E402
import preprocess  # noqa: E402
from config import Config  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LABELS_CSV = SHARED / "chexpert-train-labels" / "train.csv.gz"
VALID_CSV = SHARED / "chexpert-fullres-sample" / "CheXpert-v1.0" / "valid.csv"


def build_root(folder: Path) -> Path:
    root = folder / "CheXpert-v1.0-small"
    root.mkdir()
    with gzip.open(LABELS_CSV, "rb") as source, open(root / "train.csv", "wb") as target:
        shutil.copyfileobj(source, target)
    shutil.copyfile(VALID_CSV, root / "valid.csv")
    return root


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    if not LABELS_CSV.is_file():
        sys.exit(f"{LABELS_CSV} not found: this benchmark needs ../shared/data")
    with tempfile.TemporaryDirectory() as folder:
        root = build_root(Path(folder))
        args = ["--data_root", str(root), "--data_dir", f"{folder}/data", "--check_images", "false"]
        cfg = Config(data_root=str(root), data_dir=f"{folder}/data", check_images=False)
        for script, module in (("preprocess.py", preprocess), ("make_splits.py", make_splits)):
            command = [sys.executable, str(ROOT / script), *args]
            wall = timed(lambda: subprocess.run(command, check=True, capture_output=True))
            inner = timed(lambda: module.main(cfg))
            print(f"{script:<15} {wall:5.2f} s as a command, {inner:5.2f} s in main() "
                  "(223,414 CSV rows)")


if __name__ == "__main__":
    main()
