"""What the real CheXpert train split does to the labels training and selection see.

    python benchmarks/label_stats.py [--val_fraction 0.1] [--seed 42]

Reads ../shared/data/chexpert-train-labels/train.csv.gz (labels only), runs preprocess.py and
make_splits.py on it (frontal views, U-Ones, --check_images false) in a temporary folder, then
prints per observation:
- the training split's BCE positive weight w (negatives / positives, capped at 50) and the logit
  offset log w that train.py removes from the probabilities (the model's logit_offset);
- the val split's positives under U-Ones' 0/1 columns, how many of them are uncertain (-1)
  labels, which the reference standard masks, and their share.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_preprocess import LABELS_CSV, build_root  # noqa: E402

import make_splits  # noqa: E402
import preprocess  # noqa: E402
from config import Config
from cxr.cli import parse_args  # noqa: E402
from cxr.data.labels import LABELS, class_policies, evaluation_targets, logit_offsets, \
    multiclass_flags, positive_class_weights, raw_column, training_targets  # noqa: E402
from cxr.data.splits import read_split  # noqa: E402


@dataclass
class Options:
    val_fraction: float = 0.1  # share of patients held out, as make_splits.py
    seed: int = 42  # seed of the split


def main() -> None:
    args = parse_args(defaults=Options())
    if not LABELS_CSV.is_file():
        sys.exit(f"{LABELS_CSV} not found: this script needs ../shared/data")
    with tempfile.TemporaryDirectory() as folder:
        root = build_root(Path(folder))
        cfg = Config(data_root=str(root), data_dir=f"{folder}/data", check_images=False,
                     val_fraction=args.val_fraction, seed=args.seed)
        preprocess.main(cfg)
        make_splits.main(cfg)
        train = read_split(cfg.splits_dir / "train.csv")
        val = read_split(cfg.splits_dir / "val.csv")
    policies = class_policies(cfg.uncertainty_policy)
    weights = positive_class_weights(training_targets(train, policies, cfg.seed),
                                     cfg.max_pos_weight)
    offsets = logit_offsets(weights, multiclass_flags(policies))
    reference = evaluation_targets(val)
    print(f"\ntrain split {len(train):,} images, val split {len(val):,} images "
          f"({cfg.uncertainty_policy}, frontal views)")
    print(f"{'observation':<28} {'pos_weight':>10} {'log w':>6}   {'val U-Ones pos':>14} "
          f"{'uncertain':>9} {'share':>6} {'masked':>7}")
    for column, label in enumerate(LABELS):
        ones = int(val[label].sum())
        uncertain = int((val[raw_column(label)] == -1).sum())
        share = f"{uncertain / ones:.0%}" if ones else "n/a"
        masked = int(np.isnan(reference[:, column]).sum())
        print(f"{label:<28} {weights[column]:>10.1f} {offsets[column]:>+6.2f}   {ones:>14,} "
              f"{uncertain:>9,} {share:>6} {masked:>7,}")


if __name__ == "__main__":
    main()
