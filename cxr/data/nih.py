"""NIH ChestX-ray14 (Wang et al. 2017) in this pipeline's schema (cxr/data/adapters.py).

The layout NIH ships, under the data root:
    Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv, either also .gz): one row per image:
        Image Index, Finding Labels ('|'-separated, or "No Finding"), Follow-up #, Patient ID,
        Patient Age, Patient Gender (M/F), View Position (PA/AP), ...
    images/<Image Index>.png, or the tarballs' images_001/images/ ... images_012/images/
    test_list.txt, train_val_list.txt (optional): the official patient-wise split, one image
        name per line.

Every NIH film is frontal; each image is its own follow-up (study). NIH's labels come from its
reports by NLP over 14 findings, mapped below: a finding present is 1, one absent blank (not
mentioned). NIH does not annotate Fracture, Support Devices or Enlarged Cardiomediastinum at
all: they are not labelled (fully masked), never negative, and --label_hierarchy fill_blank
never fills them (Cardiomegaly does not make NIH's Enlarged Cardiomediastinum positive: a label
seen only through its positives would train on positives alone).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.adapters import SPLIT_COLUMN, Adapted, first_file, raw_from_terms, require_columns, \
    unmapped, with_raw_columns
from cxr.data.chexpert import read_csv_text
from cxr.errors import PipelineError

TITLE = "NIH ChestX-ray14"
TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
          "Data_Entry_2017.csv.gz")
COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
           "Patient Gender", "View Position")
# NIH finding -> the CheXpert labels it implies. Emphysema, Fibrosis and Hernia are not CheXpert
# findings: they stay out of the table and are listed, with their counts, as unmapped terms.
MAPPING: dict[str, tuple[str, ...]] = {
    "No Finding": ("No Finding",),
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Edema",),
    "Effusion": ("Pleural Effusion",),
    "Infiltration": ("Lung Opacity",),  # CheXpert's labeler files "infiltrate" under Lung Opacity
    "Mass": ("Lung Lesion",),
    "Nodule": ("Lung Lesion",),
    "Pleural_Thickening": ("Pleural Other",),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
}
NOT_LABELLED = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")
LABEL_SOURCE = "NIH's text mining of the reports (NLP)"  # every row's labels
SEX = {"M": "Male", "F": "Female"}
MAX_AGE = 120  # the v2017 table holds ages such as 414 (typos): unknown, not 80+
AGE = re.compile(r"^(\d+)\s*([YMD]?)$")  # 58, or "058Y" / "011M" / "020D" in some copies
AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "D": 1 / 365.25}


def image_folders(root: Path) -> list[Path]:
    """images/ and the tarballs' images_NNN/images/ folders that exist under root."""
    folders = [root / "images"] + sorted(root.glob("images_*/images"))
    return [folder for folder in folders if folder.is_dir()]


def locate_images(root: Path, names: pd.Series) -> pd.Series:
    """Each image's path relative to root: where it was found, else images/<name> (the check
    of preprocess.py then reports it missing)."""
    found: dict[str, str] = {}
    for folder in image_folders(root):
        relative = folder.relative_to(root).as_posix()
        with os.scandir(folder) as entries:
            found.update((entry.name, f"{relative}/{entry.name}") for entry in entries)
    return names.map(lambda name: found.get(name, f"images/{name}"))


def parse_ages(values: pd.Series, path: Path) -> np.ndarray:
    """Patient Age in years (NaN when above MAX_AGE); an unreadable age is an error."""
    parts = values.str.strip().str.extract(AGE)
    bad = parts[0].isna() & (values.str.strip() != "")
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise PipelineError(f"{path} line {line}, column 'Patient Age': {values.iloc[line - 2]!r}"
                            " is not an age in years (like 58 or 058Y)")
    years = pd.to_numeric(parts[0]) * parts[1].map(AGE_UNIT_YEARS)
    return years.where(years <= MAX_AGE).to_numpy(dtype=float)


def official_split(root: Path, names: pd.Series) -> pd.Series:
    """"test" for the images of test_list.txt, "train" for the others; "" without the list."""
    test_list = root / "test_list.txt"
    if not test_list.is_file():
        return pd.Series("", index=names.index)
    test = set(test_list.read_text().split())
    return pd.Series(np.where(names.isin(test), "test", "train"), index=names.index)


def read_table(path: Path) -> pd.DataFrame:
    table = read_csv_text(path)  # pandas infers the .gz compression from the name
    require_columns(table, COLUMNS, path, "NIH's Data_Entry_2017 table")
    for column in ("Follow-up #", "Patient ID"):
        bad = ~table[column].str.strip().str.fullmatch(r"\d+")
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise PipelineError(f"{path} line {line}, column {column!r}: "
                                f"{table[column].iloc[line - 2]!r} is not a whole number")
    duplicated = table["Image Index"].duplicated()
    if duplicated.any():
        line = int(np.flatnonzero(duplicated.to_numpy())[0]) + 2
        raise PipelineError(f"{path} line {line}, column 'Image Index': "
                            f"{table['Image Index'].iloc[line - 2]!r} appears twice")
    return table


def finding_terms(table: pd.DataFrame) -> list[list[str]]:
    """Each row's findings: 'Cardiomegaly|Emphysema' -> ['Cardiomegaly', 'Emphysema']."""
    return [[term.strip() for term in cell.split("|") if term.strip()]
            for cell in table["Finding Labels"]]


def read_nih(root: Path) -> Adapted:
    """NIH ChestX-ray14 under `root` as an Adapted (one row per image)."""
    path = first_file(root, TABLES, "NIH label table (Data_Entry_2017*.csv)")
    table = read_table(path)
    patient = table["Patient ID"].str.strip().astype(int).map("{:08d}".format)
    view = table["View Position"].str.strip()
    meta = pd.DataFrame({
        "Path": locate_images(root, table["Image Index"].str.strip()),
        "Sex": table["Patient Gender"].str.strip().map(SEX).fillna(""),
        "Age": parse_ages(table["Patient Age"], path),
        "Frontal/Lateral": "Frontal",
        "AP/PA": view.where(view.isin(("AP", "PA")), ""),
        "patient_id": patient,
        "study_id": patient + "/" + table["Follow-up #"].str.strip().astype(int).map("{:03d}".format),
        SPLIT_COLUMN: official_split(root, table["Image Index"].str.strip())})
    raw, counts = raw_from_terms(finding_terms(table), MAPPING, NOT_LABELLED)
    sources = (path.name,) + (("test_list.txt",) if (root / "test_list.txt").is_file() else ())
    return Adapted("nih", TITLE, with_raw_columns(meta, raw), NOT_LABELLED,
                   term_counts=dict(counts), unmapped_terms=unmapped(counts, MAPPING),
                   sources=sources, label_sources={LABEL_SOURCE: len(table)})
