"""Time preprocess.py and make_splits.py on the real CheXpert train.csv (223,414 rows).

    python benchmarks/bench_preprocess.py

Reads ../shared/data/chexpert-train-labels/train.csv.gz (labels only, so --check_images false)
and the real full-resolution valid.csv sample. Prints, for each script, the wall and CPU time
as a user runs it (a fresh process: interpreter start and imports included; the best of
--repeats runs, since other work on the machine slows single runs), of its main() alone, and
which heavy libraries the command loaded (none of torch, cv2, sklearn is expected: these
stages only touch CSVs).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import make_splits  # noqa: E402
import preprocess  # noqa: E402
from config import Config
from cxr.cli import parse_args  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LABELS_CSV = SHARED / "chexpert-train-labels" / "train.csv.gz"
VALID_CSV = SHARED / "chexpert-fullres-sample" / "CheXpert-v1.0" / "valid.csv"
HEAVY = ("torch", "cv2", "PIL", "sklearn", "scipy", "matplotlib")
# runs a script as `python script.py ARGS` does, then prints the heavy modules it loaded
RUN_AND_LIST = f"""
import os, runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("LOADED", *sorted(name for name in {HEAVY!r} if name in sys.modules))
"""


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


def timed_command(command: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of a command."""
    before = os.times()
    wall = timed(lambda: subprocess.run(command, check=True, capture_output=True))
    after = os.times()
    return wall, (after.children_user - before.children_user
                  + after.children_system - before.children_system)


def loaded_heavy_modules(script: Path, args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST, str(script), *args], check=True,
                          capture_output=True, text=True)
    loaded = done.stdout.rsplit("LOADED", 1)[1].split()
    return ", ".join(loaded) or "none"


@dataclass
class Options:
    repeats: int = 3  # runs of each command (the best is kept)


def main() -> None:
    repeats = parse_args(defaults=Options()).repeats
    if not LABELS_CSV.is_file():
        sys.exit(f"{LABELS_CSV} not found: this benchmark needs ../shared/data")
    with tempfile.TemporaryDirectory() as folder:
        root = build_root(Path(folder))
        data_dir = ["--data_dir", f"{folder}/data"]
        cfg = Config(data_root=str(root), data_dir=f"{folder}/data", check_images=False)
        for script, module, args in (
                ("preprocess.py", preprocess,
                 ["--data_root", str(root), *data_dir, "--check_images", "false"]),
                ("make_splits.py", make_splits, data_dir)):  # each script takes its own options
            command = [sys.executable, str(ROOT / script), *args]
            wall, cpu = min(timed_command(command) for _ in range(repeats))
            inner = timed(lambda: module.main(cfg))
            heavy = loaded_heavy_modules(ROOT / script, args)
            print(f"{script:<15} {wall:5.2f} s as a command ({cpu:5.2f} s CPU), {inner:5.2f} s in "
                  f"main() (223,414 CSV rows); loaded of {'/'.join(HEAVY)}: {heavy}")


if __name__ == "__main__":
    main()
