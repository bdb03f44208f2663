"""Validate CheXpert's CSVs, keep the raw labels beside the reference standard, compute the pixel
mean/std.

    python preprocess.py --data_root /path/to/CheXpert-v1.0-small [--label_hierarchy none]
    python preprocess.py --dataset nih --data_root /path/to/ChestX-ray14   (also mimic, padchest)

Reads  <data_root>/train.csv, <data_root>/valid.csv and (unless --check_images false) the images.
Writes <data_dir>/processed/train.csv, valid.csv: CheXpert's columns with the 14 labels holding
       the reference standard every split is scored against (1, 0 for negative or blank, blank
       for uncertain or not labelled: the same whatever the uncertainty policy, which only
       train.py reads), plus "<label> (raw)" columns (1, 0, -1 or blank), from which train.py
       derives its training targets under any policy and every split its reference standard,
       and patient_id, study_id and image_path (absolute); the labels are CheXpert's under
       --label_hierarchy (none: as published; fill_blank: a positive child makes a blank parent
       positive, adapters.apply_hierarchy);
       <data_dir>/processed/stats.json: pixel mean/std, row, patient and label counts, the
       labels the hierarchy set, and the settings these data were built with;
       <data_dir>/processed/missing_images.csv when --missing_images skip dropped rows.

--dataset nih|mimic|padchest reads that dataset in its publisher's layout instead (cxr/data/nih.py,
cxr/data/mimic.py, cxr/data/padchest.py), maps its labels onto CheXpert's 14 (a label it does not
annotate is "not labelled": raw -2, blank target, masked), applies the same --label_hierarchy and
writes the same files: train.csv, and as valid.csv (make_splits.py's test split) its official test
list, else --test_fraction of its patients. stats.json also records the mapping's counts, who
labelled the rows (label_sources; PadChest: --padchest_label_source), rows masked or skipped and
unmapped terms.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from config import DATA_FIELDS, Config
from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.cli import run_cli
from cxr.data.adapters import SPLIT_COLUMN, apply_hierarchy, processed_frame, summary_lines
from cxr.data.chexpert import META_COLUMNS, RELEASE_PREFIX, VIEW_VALUES, extract_patient_study, \
    read_csv_text
from cxr.data.datasets import read_dataset
from cxr.data.labels import LABELS, NOT_LABELLED, find_bad_label_values, parse_raw_labels, \
    raw_column, reference_columns
from cxr.data.splits import split_by_patient
from cxr.errors import PipelineError

# CheXpert's Path column starts with the release folder name; the data root *is* that folder.
SPLITS = ("train", "valid")  # the processed CSVs: make_splits.py draws val from train; valid is test
STATS_SIDE = 256  # images are resized to this side before pixel statistics: equal weight each


# ---- reading and validating one CSV -----------------------------------------------------------

def read_chexpert_csv(path: Path) -> pd.DataFrame:
    """Read a CheXpert CSV as strings (blank stays ""), accepting a UTF-8 BOM and CRLF ends."""
    if not path.is_file():
        raise PipelineError(f"{path} not found: --data_root must be the folder holding "
                            "train.csv and valid.csv (for example .../CheXpert-v1.0-small)")
    try:
        df = read_csv_text(path, encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PipelineError(f"{path} is not a UTF-8 text CSV file (binary content?)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise PipelineError(f"{path} is not a readable CSV file: {err}") from None
    return df


def validate_columns(df: pd.DataFrame, path: Path) -> None:
    missing = [c for c in (*META_COLUMNS, *LABELS) if c not in df.columns]
    if missing:
        raise PipelineError(f"{path} lacks required column(s) {missing}; found {list(df.columns)}."
                            " Is this a CheXpert train.csv/valid.csv?")
    if df.empty:
        raise PipelineError(f"{path} has a header but no data rows")


def validate_values(df: pd.DataFrame, path: Path) -> None:
    count, examples = find_bad_label_values(df)
    if count:
        raise PipelineError(f"{path}: {count} label value(s) not in (1.0, 0.0, -1.0, blank): "
                            + "; ".join(examples))
    bad_view = ~df["Frontal/Lateral"].isin(VIEW_VALUES)
    if bad_view.any():
        line = int(np.flatnonzero(bad_view)[0]) + 2
        raise PipelineError(f"{path} line {line}, column 'Frontal/Lateral': "
                            f"{df['Frontal/Lateral'].iloc[line - 2]!r} is not Frontal or Lateral")
    duplicated = df["Path"].duplicated(keep=False)
    if duplicated.any():
        lines = (np.flatnonzero(duplicated) + 2).tolist()
        raise PipelineError(f"{path}: {int(duplicated.sum())} rows share a Path (lines "
                            f"{lines[:10]}); each image must appear once. Remove the duplicates.")


def relative_image_paths(df: pd.DataFrame, path: Path) -> pd.Series:
    """CSV Path -> path relative to the data root, rejecting any that would leave it."""
    # as a str pattern, pyarrow's regex engine applies it (4x faster; the same for this ASCII one)
    relative = df["Path"].str.replace(RELEASE_PREFIX.pattern, "", regex=True)
    absolute = relative.str.match(r"^([/\\]|[A-Za-z]:)")
    escaping = relative.str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True)
    bad = absolute | escaping
    if bad.any():
        lines = (np.flatnonzero(bad) + 2).tolist()
        raise PipelineError(f"{path} line {lines[0]}, column 'Path': {df['Path'].iloc[lines[0] - 2]!r}"
                            f" leaves the data root ({int(bad.sum())} such rows, lines {lines[:10]})."
                            " Paths must be relative, like CheXpert-v1.0-small/train/...")
    return relative


def patient_and_study(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    ids = extract_patient_study(df["Path"])
    unmatched = ids["patient"].isna()
    if unmatched.any():
        line = int(np.flatnonzero(unmatched)[0]) + 2
        raise PipelineError(f"{path} line {line}, column 'Path': {df['Path'].iloc[line - 2]!r} has no "
                            "patientNNNNN/studyN/ folders, so the patient cannot be identified")
    return pd.DataFrame({"patient_id": ids["patient"],
                         "study_id": ids["patient"] + "/" + ids["study"]})


# ---- turning a validated CSV into the processed table ------------------------------------------

def process_csv(path: Path, cfg: Config) -> tuple[pd.DataFrame, dict]:
    """Validate one CheXpert CSV and return the processed rows plus counts for stats.json."""
    df = read_chexpert_csv(path)
    validate_columns(df, path)
    # categoricals of the same strings: the label functions then look each distinct spelling up
    # once, not each of 14 x 223,414 cells (0.6 s instead of 2.9 s on CheXpert's train.csv)
    df = df.astype(dict.fromkeys(LABELS, "category"))
    validate_values(df, path)
    relative = relative_image_paths(df, path)
    ids = patient_and_study(df, path)
    raw, filled = apply_hierarchy(parse_raw_labels(df), cfg.label_hierarchy)
    counts = {"rows_in_csv": len(df), "hierarchy_filled": filled}
    out = pd.concat([df[list(META_COLUMNS)], reference_columns(raw),
                     raw.astype("Int8").rename(columns=raw_column), ids], axis=1)
    out["image_path"] = str(Path(cfg.data_root).resolve()) + "/" + relative
    if cfg.frontal_only:
        out = out[out["Frontal/Lateral"] == "Frontal"]
    out.index = out.index + 2  # from here on, the index is the line number in the source CSV
    counts["rows_after_view_filter"] = len(out)
    return out, counts


def check_images_exist(df: pd.DataFrame, path: Path, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (present, missing); stop with a report unless --missing_images skip."""
    exists = np.fromiter((os.path.isfile(p) for p in tqdm(df["image_path"], desc=f"check {path.name}",
                                                          unit="img", leave=False)),
                         dtype=bool, count=len(df))
    missing = df[~exists]
    if len(missing) and cfg.missing_images == "error":
        examples = "; ".join(f"line {line}: {p}" for line, p in missing["image_path"].head(5).items())
        raise PipelineError(f"{path}, column 'Path': {len(missing)} image file(s) not found under "
                            f"{cfg.data_root} ({examples}). Fix --data_root, or pass "
                            "--missing_images skip to drop and count them, or --check_images false.")
    return df[exists], missing


def pixel_stats(paths: list[str], cfg: Config) -> tuple[float, float]:
    """Mean and std of pixel values in [0, 1] over a seeded sample of training images."""
    # imported here, not at the top: it loads OpenCV and Pillow (150 MB of libraries, 0.2 s or
    # more at start-up), which a labels-only run (--check_images false) never needs
    from cxr.data.imaging import decode_square

    rng = np.random.default_rng(cfg.seed)
    sample = rng.choice(len(paths), size=min(cfg.stats_sample, len(paths)), replace=False)
    total = total_sq = 0.0
    for index in tqdm(sample, desc="pixel mean/std", unit="img"):
        pixels = decode_square(paths[index], STATS_SIDE).astype(np.float64) / 255.0
        total += pixels.mean()
        total_sq += (pixels ** 2).mean()
    mean = total / len(sample)
    return float(mean), float(np.sqrt(max(total_sq / len(sample) - mean ** 2, 0.0)))


def label_counts(df: pd.DataFrame) -> dict:
    counts = {}
    for label in LABELS:
        raw = df[raw_column(label)]
        counts[label] = {"raw_positive": int((raw == 1).sum()), "raw_negative": int((raw == 0).sum()),
                         "raw_uncertain": int((raw == -1).sum()), "raw_blank": int(raw.isna().sum()),
                         "not_labelled": int((raw == NOT_LABELLED).sum())}
    return counts


def built_with(cfg: Config) -> dict:
    """The options these data were built with (config.DATA_FIELDS read here), stats.json's
    "settings": train.py and evaluate.py check theirs against them, checkpoints record them."""
    settings = {name: getattr(cfg, name) for name, script in DATA_FIELDS.items()
                if script == "preprocess.py"}
    return {**settings, "data_root": str(Path(cfg.data_root).resolve())}


# ---- the two kinds of input --------------------------------------------------------------------

def chexpert_tables(cfg: Config) -> tuple[dict, dict, dict]:
    """CheXpert's train.csv and valid.csv, each validated and processed: (tables, counts, the
    CSV each came from)."""
    tables, counts, sources = {}, {}, {}
    for split in SPLITS:
        sources[split] = Path(cfg.data_root) / f"{split}.csv"
        tables[split], counts[split] = process_csv(sources[split], cfg)
    return tables, counts, sources


def adapted_tables(cfg: Config) -> tuple[dict, dict, dict, dict]:
    """Another dataset in its publisher's layout (--dataset), mapped onto CheXpert's labels: the
    official test list as valid.csv (make_splits.py's test split) when it has one, else
    --test_fraction of its patients; returns chexpert_tables' three and stats.json's extra keys."""
    adapted = read_dataset(cfg.dataset, cfg.data_root, cfg)
    print("\n".join(summary_lines(adapted)))
    frame = processed_frame(adapted, cfg.data_root)
    if adapted.has_official_test:
        is_test = frame[SPLIT_COLUMN] == "test"
        parts = {"train": frame[~is_test], "valid": frame[is_test]}
        test_split = f"{adapted.title}'s official test list"
    else:
        parts = dict(zip(SPLITS, split_by_patient(frame, cfg.test_fraction, cfg.seed,
                                                  "--test_fraction")))
        test_split = (f"{cfg.test_fraction:g} of the patients held out (seed {cfg.seed}): "
                      f"{adapted.title} has no official test split")
    tables, counts = {}, {}
    for split, part in parts.items():
        kept = part[part["Frontal/Lateral"] == "Frontal"] if cfg.frontal_only else part
        tables[split], counts[split] = kept, {"rows_in_csv": len(part),
                                              "rows_after_view_filter": len(kept)}
    extra = {"dataset": cfg.dataset, "title": adapted.title, "sources": list(adapted.sources),
             "test_split": test_split, "not_labelled": list(adapted.not_labelled),
             "not_labelled_note": adapted.not_labelled_note(),
             "label_sources": adapted.label_sources, "hierarchy_filled": adapted.hierarchy_filled,
             "masked": adapted.masked, "skipped": adapted.skipped,
             "unmapped_terms": adapted.unmapped_terms}
    source = Path(cfg.data_root) / adapted.sources[0]
    return tables, counts, dict.fromkeys(SPLITS, source), extra


def main(cfg: Config) -> None:
    out_dir = cfg.processed_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.dataset == "chexpert":
        (tables, counts, sources), extra = chexpert_tables(cfg), {"dataset": "chexpert"}
    else:
        tables, counts, sources, extra = adapted_tables(cfg)
    stats: dict = {"settings": built_with(cfg), **extra}
    for split, path in sources.items():
        df = tables[split]
        if cfg.check_images:
            df, missing = check_images_exist(df, path, cfg)
            counts[split]["missing_images_skipped"] = len(missing)
            if len(missing):
                missing_path = out_dir / f"missing_images_{split}.csv"
                missing[["Path", "image_path"]].rename_axis("line").to_csv(missing_path)
                print(f"warning: skipped {len(missing)} {split} rows whose image is missing; "
                      f"listed in {missing_path}")
        counts[split]["rows_kept"] = len(df)
        if df.empty:
            raise PipelineError(f"{path}: no {split} rows left after filtering (frontal_only="
                                f"{cfg.frontal_only}, missing images skipped)")
        counts[split]["patients"] = int(df["patient_id"].nunique())
        counts[split]["studies"] = int(df["study_id"].nunique())
        counts[split]["labels"] = label_counts(df)
        stats[split] = counts[split]
        tables[split] = df

    if cfg.check_images:
        stats["mean"], stats["std"] = pixel_stats(tables["train"]["image_path"].tolist(), cfg)
        stats["stats_source"] = f"{min(cfg.stats_sample, len(tables['train']))} training images"
    else:
        print(f"warning: --check_images false: images not read; using the configured pixel "
              f"mean/std ({cfg.fallback_mean}, {cfg.fallback_std}) instead of computing them")
        stats["mean"], stats["std"] = cfg.fallback_mean, cfg.fallback_std
        stats["stats_source"] = "fallback_mean/fallback_std from config (images not checked)"

    for split, df in tables.items():
        write_csv_atomic(df, out_dir / f"{split}.csv")
    write_text_atomic(json.dumps(stats, indent=2), out_dir / "stats.json")
    train = stats["train"]
    print(f"preprocess: wrote {out_dir}/train.csv ({train['rows_kept']:,} of {train['rows_in_csv']:,} "
          f"rows, {train['patients']:,} patients), valid.csv ({stats['valid']['rows_kept']:,} rows) "
          f"and stats.json (mean {stats['mean']:.3f}, std {stats['std']:.3f}, --label_hierarchy "
          f"{cfg.label_hierarchy})")


if __name__ == "__main__":
    run_cli(main, script="preprocess.py", defaults=Config())
