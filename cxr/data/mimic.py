"""MIMIC-CXR-JPG 2.0.0 (Johnson et al. 2019) in this pipeline's schema (cxr/data/adapters.py).

The layout PhysioNet ships, under the data root (each table also as plain .csv):
    mimic-cxr-2.0.0-chexpert.csv.gz: one row per study: subject_id, study_id and CheXpert's 14
        labels by name (1.0, 0.0, -1.0 or blank), written by CheXpert's own labeler from the
        study's report: the same values and meaning as CheXpert's CSVs, in another column order.
    mimic-cxr-2.0.0-metadata.csv.gz: one row per image: dicom_id, subject_id, study_id,
        ViewPosition (PA, AP, LATERAL, LL, AP AXIAL, LAO, ... or blank), Rows, Columns, ...
    mimic-cxr-2.0.0-split.csv.gz (optional here): dicom_id, study_id, subject_id, split (train,
        validate, test), patient-wise.
    files/p<first two digits of subject_id>/p<subject_id>/s<study_id>/<dicom_id>.jpg

Decisions:
- One row per image of the metadata, with its study's labels (joined on subject_id and
  study_id); an image whose study has no label row is left out and counted in `skipped`.
- ViewPosition PA or AP is a frontal film (AP/PA is the value); LATERAL, LL (left lateral) and
  XTABLE LATERAL are lateral films (AP/PA blank). Any other value (blank, AP AXIAL, PA LLD,
  LAO, RAO, SWIMMERS, decubitus views ...) is neither a standard frontal nor a lateral film: left
  out and counted per value. An image is counted under one reason: no label row first, then view.
  The values are matched as published (upper case), surrounding spaces removed.
- The labels are CheXpert's, as published: blank stays blank (not mentioned, negative
  downstream) and -1 stays uncertain; no label is "not labelled". The labeler's table does not
  apply CheXpert's hierarchy, nor do CheXpert's own CSVs: --label_hierarchy (applied by
  datasets.read_dataset to every dataset alike) decides, never overwriting an explicit 0 or -1.
- MIMIC-CXR-JPG holds neither sex nor age (they are in MIMIC-IV's patients table, which is a
  separate, linked dataset): Sex is blank and Age NaN, which reports show as unknown.
- patient_id is "p<subject_id>" and study_id "p<subject_id>/s<study_id>", as in the folders.
- The official split: "test" for test, "train" for train and validate (make_splits.py draws its
  own val split by patient from train); "" for an image the split file does not list, and for
  every image when there is no split file.
- The ids must be whole numbers: anything else is an error naming the file, line and column, as
  is a label value other than 1.0, 0.0, -1.0 or blank, a split other than train, validate or
  test, or a study (label table) or dicom_id (metadata, split table) listed twice.
- A table is read as .csv.gz (as shipped) or, when that is absent, as an unpacked .csv; the label
  and metadata tables are required, the split table optional. `sources` lists the metadata table
  first: its rows are the images, so preprocess.py names it for a missing image.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.adapters import SPLIT_COLUMN, Adapted, first_file, require_columns, with_raw_columns
from cxr.data.chexpert import read_csv_text
from cxr.data.labels import LABELS, find_bad_label_values, parse_raw_labels
from cxr.errors import PipelineError

TITLE = "MIMIC-CXR"
# PhysioNet ships the tables gzipped; a copy unpacked by hand is read as well.
LABEL_TABLES = ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv")
METADATA_TABLES = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
SPLIT_TABLES = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
KEYS = ("subject_id", "study_id")
METADATA_COLUMNS = ("dicom_id", *KEYS, "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "split")
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL", "XTABLE LATERAL")
# The publisher's split -> this pipeline's: validate is training data here (make_splits.py
# holds out its own val patients), test is the official test list.
SPLITS = {"train": "train", "validate": "train", "test": "test"}
LABEL_SOURCE = "CheXpert's labeler (NLP of the reports)"  # every row's labels


def read_table(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """A MIMIC table as strings (blank ""), with the columns this adapter reads."""
    try:
        table = read_csv_text(path, encoding="utf-8-sig")
    except (ValueError, OSError) as err:  # not UTF-8, not gzip, no header ...
        raise PipelineError(f"{path} is not a readable CSV file ({what}): {err}") from None
    require_columns(table, columns, path, what)
    return table


def first_line(rows: pd.Series) -> int:
    """The CSV line (header = line 1) of the first True row."""
    return int(np.flatnonzero(rows.to_numpy())[0]) + 2


def whole_numbers(table: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """A column of ids as integers; a cell that is not a whole number is an error."""
    cells = table[column].str.strip()
    bad = ~cells.str.fullmatch(r"[0-9]+")
    if bad.any():
        line = first_line(bad)
        raise PipelineError(f"{path} line {line}, column {column!r}: "
                            f"{table[column].iloc[line - 2]!r} is not a whole number "
                            f"({int(bad.sum())} such rows)")
    return cells.astype(np.int64)


def unique_rows(ids: pd.DataFrame, path: Path) -> None:
    """Each id (or pair of ids) once: a repeated one is an error naming its second line."""
    duplicated = ids.duplicated()
    if duplicated.any():
        line = first_line(duplicated)
        value = ", ".join(f"{column} {ids[column].iloc[line - 2]}" for column in ids.columns)
        raise PipelineError(f"{path} line {line}: {value} appears twice; each must appear once")


def read_labels(path: Path) -> pd.DataFrame:
    """The label table: subject_id, study_id (integers) and the 14 raw labels (1, 0, -1, NaN)."""
    table = read_table(path, (*KEYS, *LABELS), "MIMIC-CXR-JPG's CheXpert label table")
    count, examples = find_bad_label_values(table)
    if count:
        raise PipelineError(f"{path}: {count} label value(s) not in (1.0, 0.0, -1.0, blank): "
                            + "; ".join(examples))
    keys = pd.DataFrame({key: whole_numbers(table, key, path) for key in KEYS})
    unique_rows(keys, path)
    return pd.concat([keys, parse_raw_labels(table)], axis=1)


def read_metadata(path: Path) -> pd.DataFrame:
    """One row per image: dicom_id, subject_id, study_id (integers) and ViewPosition."""
    table = read_table(path, METADATA_COLUMNS, "MIMIC-CXR-JPG's metadata table")
    dicom = table["dicom_id"].str.strip()
    if (dicom == "").any():
        raise PipelineError(f"{path} line {first_line(dicom == '')}, column 'dicom_id' is blank")
    unique_rows(dicom.to_frame(), path)
    return pd.DataFrame({"dicom_id": dicom,
                         **{key: whole_numbers(table, key, path) for key in KEYS},
                         "ViewPosition": table["ViewPosition"].str.strip()})


def official_split(path: Path | None, dicom: pd.Series) -> pd.Series:
    """"train" or "test" of each image from the split table; "" where it is not listed, and
    everywhere without the table."""
    if path is None:
        return pd.Series("", index=dicom.index)
    table = read_table(path, SPLIT_COLUMNS, "MIMIC-CXR-JPG's split table")
    split = table["split"].str.strip()
    bad = ~split.isin(list(SPLITS))
    if bad.any():
        line = first_line(bad)
        raise PipelineError(f"{path} line {line}, column 'split': {table['split'].iloc[line - 2]!r}"
                            f" is not one of {', '.join(SPLITS)}")
    listed = table["dicom_id"].str.strip()
    unique_rows(listed.to_frame(), path)
    ours = pd.Series(split.map(SPLITS).to_numpy(), index=listed.to_numpy())
    return dicom.map(ours).fillna("").astype(str)


def skip_reasons(has_labels: pd.Series, view: pd.Series, known_view: pd.Series,
                 label_file: str) -> dict[str, int]:
    """Rows left out, by reason: a study without a label row, then each unusable ViewPosition
    (most frequent first)."""
    skipped = {}
    if (~has_labels).any():
        skipped[f"study without a label row in {label_file}"] = int((~has_labels).sum())
    for value, n in Counter(view[has_labels & ~known_view]).most_common():
        reason = "ViewPosition blank (view unknown)" if value == "" else \
            f"ViewPosition {value!r} (neither PA/AP nor lateral)"
        skipped[reason] = n
    return skipped


def image_paths(images: pd.DataFrame) -> pd.Series:
    """files/p10/p10000032/s50414267/<dicom_id>.jpg for each image."""
    subject, study = images["subject_id"].astype(str), images["study_id"].astype(str)
    return ("files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/"
            + images["dicom_id"] + ".jpg")


def read_mimic(root: Path) -> Adapted:
    """MIMIC-CXR-JPG under `root` as an Adapted (one row per frontal or lateral image of a
    labelled study)."""
    label_path = first_file(root, LABEL_TABLES, "MIMIC-CXR-JPG label table "
                                                "(mimic-cxr-2.0.0-chexpert.csv)")
    metadata_path = first_file(root, METADATA_TABLES, "MIMIC-CXR-JPG metadata table "
                                                      "(mimic-cxr-2.0.0-metadata.csv)")
    split_path = next((root / name for name in SPLIT_TABLES if (root / name).is_file()), None)
    labels = read_labels(label_path)
    images = read_metadata(metadata_path).merge(labels, on=list(KEYS), how="left",
                                                indicator=True, validate="many_to_one")
    images[SPLIT_COLUMN] = official_split(split_path, images["dicom_id"])
    view = images["ViewPosition"]
    frontal, lateral = view.isin(FRONTAL_VIEWS), view.isin(LATERAL_VIEWS)
    has_labels = images["_merge"] == "both"
    skipped = skip_reasons(has_labels, view, frontal | lateral, label_path.name)
    kept = (has_labels & (frontal | lateral)).to_numpy()
    images, frontal = images[kept].reset_index(drop=True), frontal[kept].reset_index(drop=True)
    subject = "p" + images["subject_id"].astype(str)
    meta = pd.DataFrame({
        "Path": image_paths(images),
        "Sex": "",  # not in MIMIC-CXR-JPG: unknown
        "Age": np.nan,
        "Frontal/Lateral": np.where(frontal, "Frontal", "Lateral"),
        "AP/PA": images["ViewPosition"].where(frontal, ""),
        "patient_id": subject,
        "study_id": subject + "/s" + images["study_id"].astype(str),
        SPLIT_COLUMN: images[SPLIT_COLUMN]})
    raw = images[list(LABELS)]
    sources = (metadata_path.name, label_path.name) + ((split_path.name,) if split_path else ())
    return Adapted("mimic", TITLE, with_raw_columns(meta, raw), (), skipped=skipped,
                   sources=sources, label_sources={LABEL_SOURCE: len(images)})
