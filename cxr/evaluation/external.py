"""External validation (evaluate.py --dataset nih --data_root DIR): a checkpoint scored on
another hospital's images, in the layout their publisher ships (cxr/data/adapters.py).

The calibration maps and thresholds are the ones fitted on the checkpoint's own val split, so
the operating points are those a user would deploy; the reference standard is the other
dataset's labels mapped onto CheXpert's, under the --label_hierarchy the checkpoint's training
data were built with (evaluate.py takes it from --data_dir's stats.json), with the labels it
does not annotate n/a, and the report says who labelled its rows (label_sources; its words:
cxr/reporting/evaluation_report.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pandas as pd

from cxr.data.adapters import SPLIT_COLUMN, Adapted, processed_frame, summary_lines
from cxr.data.datasets import read_dataset
from cxr.errors import PipelineError
from cxr.evaluation.report import ExternalDataset

if TYPE_CHECKING:
    from config import Config


def report_name(cfg: Config) -> str:
    """eval_<name>.*: eval_nih for every image, eval_nih_test for the official test split."""
    return cfg.dataset if cfg.split == "all" else f"{cfg.dataset}_{cfg.split}"


def external_rows(cfg: Config) -> tuple[pd.DataFrame, Adapted, int]:
    """The images of --data_root to score (every one, or --split test's), with their mapped
    labels, the Adapted they come from, and how many were left out because the file is missing
    (--missing_images skip; an error otherwise)."""
    adapted = read_dataset(cfg.dataset, cfg.data_root, cfg)
    print("\n".join(summary_lines(adapted)))
    frame = processed_frame(adapted, cfg.data_root)
    if cfg.split == "test":
        if not adapted.has_official_test:
            raise PipelineError(f"--split test: {cfg.data_root} holds no official test list of "
                                f"{adapted.title} (NIH: test_list.txt; MIMIC: the split CSV); "
                                "use --split all to score every image")
        frame = frame[frame[SPLIT_COLUMN] == "test"]
    exists = frame["image_path"].map(os.path.isfile)
    missing = int((~exists).sum())
    if missing and cfg.missing_images == "error":
        examples = "; ".join(frame.loc[~exists, "Path"].head(5))
        raise PipelineError(f"{missing} of {len(frame)} images of {adapted.title} not found under "
                            f"{cfg.data_root} (for example {examples}). Fix --data_root, or pass "
                            "--missing_images skip to leave them out and count them")
    if missing:
        print(f"warning: left out {missing} rows whose image is missing (--missing_images skip)")
    frame = frame[exists].reset_index(drop=True)
    if frame.empty:
        raise PipelineError(f"no image of {adapted.title} found under {cfg.data_root}")
    return frame, adapted, missing


def dataset_record(cfg: Config, adapted: Adapted, n_missing: int) -> ExternalDataset:
    """eval_<name>.json's "dataset": what was scored and against which reference."""
    return ExternalDataset(
        name=cfg.dataset, title=adapted.title, data_root=str(cfg.data_root), split=cfg.split,
        sources=list(adapted.sources), not_labelled=list(adapted.not_labelled),
        label_sources=adapted.label_sources, label_hierarchy=adapted.hierarchy,
        hierarchy_filled=adapted.hierarchy_filled, masked=adapted.masked,
        skipped=adapted.skipped, missing_images_skipped=n_missing,
        unmapped_terms=adapted.unmapped_terms)
