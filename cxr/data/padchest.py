"""PadChest (Bustos et al. 2020, BIMCV, Hospital San Juan, Alicante) in this pipeline's schema
(cxr/data/adapters.py).

The layout BIMCV ships, under the data root:
    PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (or .csv.gz): one row per image:
        ImageID, ImageDir, StudyDate_DICOM (YYYYMMDD), StudyID, PatientID, PatientBirth (a year
        written like 1930.0), PatientSex_DICOM (M/F/O), Projection (PA, AP, AP_horizontal, L,
        COSTAL, EXCLUDE, UNK), Report (Spanish, some cells span lines), MethodLabel, Labels (a
        Python-list string of report terms, "['pleural effusion', 'cardiomegaly']"), ...
    <ImageDir>/<ImageID>: the 16-bit PNGs in numbered folders 0..54.

Each report was annotated with terms of PadChest's vocabulary (174 radiographic findings and 19
diagnoses; by radiologists for 24 % of the rows, MethodLabel Physician, by a network trained on
them for the others, RNN_model), mapped below. --padchest_label_source physician (the default)
keeps the radiologists' rows only, and counts the others as skipped; all keeps both. Every
finding goes through those terms, so a label none of whose terms is present is blank (not
mentioned, as CheXpert's labeler leaves it): PadChest labels all 14 CheXpert labels, and none is
uncertain. Two kinds of rows are masked (all 14 not labelled, counted in `masked`): those whose
only term is 'unchanged' (the report refers to the prior study, "no change since", and says
nothing of the findings on this film) and those with an empty list of terms. No Finding follows
CheXpert's labeler (stanfordmlgroup/chexpert-labeler, stages/aggregate.py): positive when no
term is a finding, blank otherwise; every term but Support Devices' and NOT_FINDINGS is one,
the unmapped ones too ('COPD signs', 'scoliosis', ...: CheXpert's labeler counts "copd",
"scoliosis", "calcifi", "hernia", ... among the findings outside its 14). PadChest has no
official split.
"""

from __future__ import annotations

import ast
import csv
import gzip
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.data.adapters import SPLIT_COLUMN, Adapted, first_file, raw_from_terms, require_columns, \
    unmapped, with_raw_columns
from cxr.data.labels import LABELS
from cxr.data.labels import NOT_LABELLED as NOT_LABELLED_VALUE  # the raw value -2
from cxr.errors import PipelineError

if TYPE_CHECKING:
    pass

TITLE = "PadChest"
LABELS_FILES = ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
                "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
COLUMNS = ("ImageID", "ImageDir", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
           "StudyDate_DICOM", "Projection", "MethodLabel", "Labels")
# MethodLabel: who gave the row its terms, and the --padchest_label_source choices that keep it
LABEL_SOURCES = {"Physician": ("physician", "all"), "RNN_model": ("all",)}

# PadChest report term -> the CheXpert labels it implies (CheXpert's labeler phrase lists,
# stanfordmlgroup/chexpert-labeler, where a choice was needed). A parent label comes from its
# own terms only (Lung Opacity from opacities, not from an edema term): CheXpert's hierarchy is
# --label_hierarchy's, applied to every dataset alike (cxr/data/datasets.py). Terms left out are not
# CheXpert findings (but unset No Finding, is_finding): they are counted and listed as unmapped,
# e.g. 'COPD signs', 'scoliosis', 'aortic elongation', and also
#   'costophrenic angle blunting', 'volume loss', 'vascular redistribution', 'granuloma',
#       'fissure thickening': CheXpert's labeler files "blunt", "volume loss", "cephalization",
#       "granuloma", "fissure" among the findings outside its 14 (which only unset No Finding);
#   'pulmonary fibrosis': as NIH's Fibrosis (cxr/data/nih.py); CheXpert's labeler puts "fibrosis"
#       under Pleural Other, which is wrong for the lung; its reticular pattern has its own terms;
#   'pseudonodule', 'calcified granuloma': not lesions (nipples, vessels end on; healed);
#   'vertebral compression', 'vertebral anterior compression': a wedged vertebra, not reported
#       as a fracture (PadChest has 'vertebral fracture' for that);
#   'sternotomy', 'suture material', 'metal', 'bone cement', 'mammary prosthesis', the generic
#       'prosthesis': surgery and foreign material, not the tubes, lines, valves and hardware
#       that CheXpert's Support Devices are;
#   'tuberculosis sequelae', 'asbestosis signs', 'hilar enlargement', 'goiter': no CheXpert
#       label (pleural plaques and opacities are reported with their own terms).
MAPPING: dict[str, tuple[str, ...]] = {
    # ---- No Finding (positive where no term is a finding, 'normal' or not: cell_labels)
    "normal": ("No Finding",),
    # ---- Enlarged Cardiomediastinum, Cardiomegaly
    "mediastinal enlargement": ("Enlarged Cardiomediastinum",),
    "superior mediastinal enlargement": ("Enlarged Cardiomediastinum",),
    "mediastinal mass": ("Enlarged Cardiomediastinum",),  # widens the mediastinum; not the lung
    # seen on a film only as a large cardiac silhouette (CheXpert: "pericardial silhouette");
    # the heart itself may be normal (not Cardiomegaly), and it is not Pleural Effusion
    "pericardial effusion": ("Enlarged Cardiomediastinum",),
    "cardiomegaly": ("Cardiomegaly",),
    # ---- Lung Opacity (CheXpert: opacity, infiltrate, increased density, interstitial or
    # reticular pattern, scar)
    "infiltrates": ("Lung Opacity",),
    "interstitial pattern": ("Lung Opacity",),
    "reticular interstitial pattern": ("Lung Opacity",),
    "reticulonodular interstitial pattern": ("Lung Opacity",),
    "alveolar pattern": ("Lung Opacity",),
    "ground glass pattern": ("Lung Opacity",),
    "increased density": ("Lung Opacity",),
    "miliary opacities": ("Lung Opacity",),
    "air bronchogram": ("Lung Opacity",),  # air in bronchi seen through an airspace opacity
    "fibrotic band": ("Lung Opacity",),  # a linear parenchymal scar (CheXpert: "scar")
    "lymphangitis carcinomatosa": ("Lung Opacity",),  # tumour spread as a reticular pattern
    # ---- Lung Lesion (CheXpert: nodule, mass, cavitary lesion, carcinoma, tumour)
    "nodule": ("Lung Lesion",),
    "multiple nodules": ("Lung Lesion",),
    "pulmonary mass": ("Lung Lesion",),
    "mass": ("Lung Lesion",),  # PadChest names the other masses (mediastinal, soft tissue, ...)
    "lung metastasis": ("Lung Lesion",),
    "lepidic adenocarcinoma": ("Lung Lesion",),
    "cavitation": ("Lung Lesion",),  # a cavitated lesion (abscess, tuberculosis, tumour)
    "abscess": ("Lung Lesion", "Pneumonia"),  # a cavitated infection (CheXpert: "infection")
    # ---- Edema
    "pulmonary edema": ("Edema",),
    "heart insufficiency": ("Edema",),  # CheXpert's labeler: "heart failure", "chf" are Edema
    "hilar congestion": ("Edema",),  # CheXpert: "vascular congestion", "pulmonary congestion"
    "kerley lines": ("Edema",),  # septal lines: interstitial edema
    # ---- Consolidation, Pneumonia
    "consolidation": ("Consolidation",),
    "pneumonia": ("Pneumonia",),
    "atypical pneumonia": ("Pneumonia",),
    "tuberculosis": ("Pneumonia",),  # active lung infection (CheXpert: "infection")
    # ---- Atelectasis
    "atelectasis": ("Atelectasis",),
    "laminar atelectasis": ("Atelectasis",),
    "lobar atelectasis": ("Atelectasis",),
    "segmental atelectasis": ("Atelectasis",),
    "atelectasis basal": ("Atelectasis",),
    "total atelectasis": ("Atelectasis",),
    "round atelectasis": ("Atelectasis",),
    # ---- Pneumothorax, Pleural Effusion, Pleural Other
    "pneumothorax": ("Pneumothorax",),
    "hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),  # air and fluid in the pleura
    "pleural effusion": ("Pleural Effusion",),
    "loculated pleural effusion": ("Pleural Effusion",),
    "loculated fissural effusion": ("Pleural Effusion",),
    "empyema": ("Pleural Effusion",),  # an infected pleural effusion
    "pleural thickening": ("Pleural Other",),
    "apical pleural thickening": ("Pleural Other",),
    "calcified pleural thickening": ("Pleural Other",),
    "pleural plaques": ("Pleural Other",),
    "calcified pleural plaques": ("Pleural Other",),
    "pleural mass": ("Pleural Other",),
    # ---- Fracture (healed or healing ones too: CheXpert labels "old rib fracture" positive)
    "fracture": ("Fracture",),
    "rib fracture": ("Fracture",),
    "callus rib fracture": ("Fracture",),
    "clavicle fracture": ("Fracture",),
    "humeral fracture": ("Fracture",),
    "vertebral fracture": ("Fracture",),
    # ---- Support Devices (CheXpert: tube, line, catheter, picc, pacemaker, icd, valve,
    # hardware, plate, screw, arthroplasty, coil, device, drain)
    "NSG tube": ("Support Devices",),  # nasogastric
    "endotracheal tube": ("Support Devices",),
    "tracheostomy tube": ("Support Devices",),
    "chest drain tube": ("Support Devices",),
    "ventriculoperitoneal drain tube": ("Support Devices",),
    "gastrostomy tube": ("Support Devices",),
    "nephrostomy tube": ("Support Devices",),
    "double J stent": ("Support Devices",),  # a ureteral catheter (PadChest lists it with tubes)
    "catheter": ("Support Devices",),
    "central venous catheter": ("Support Devices",),
    "central venous catheter via jugular vein": ("Support Devices",),
    "central venous catheter via subclavian vein": ("Support Devices",),
    "central venous catheter via umbilical vein": ("Support Devices",),
    "reservoir central venous catheter": ("Support Devices",),  # a port (CheXpert: "mediport")
    "pacemaker": ("Support Devices",),
    "dual chamber device": ("Support Devices",),  # pacemaker or defibrillator, two leads
    "single chamber device": ("Support Devices",),
    "electrical device": ("Support Devices",),
    "artificial heart valve": ("Support Devices",),  # CheXpert: "valve"
    "artificial mitral heart valve": ("Support Devices",),
    "artificial aortic heart valve": ("Support Devices",),
    "aortic endoprosthesis": ("Support Devices",),  # an endovascular device, as CheXpert's "coil"
    "endoprosthesis": ("Support Devices",),
    "osteosynthesis material": ("Support Devices",),  # CheXpert: "hardware", "plate", "screw"
    "humeral prosthesis": ("Support Devices",),  # CheXpert: "arthroplasty"
}
NOT_LABELLED: tuple[str, ...] = ()  # every CheXpert label is annotated through the terms
# Terms that are no finding of the patient's chest, so they leave No Finding positive (as
# 'normal' and the Support Devices terms do): about the study, not the patient; what PadChest
# names a look-alike of a nodule, not a nodule; and traces of surgery (placed, like devices,
# and named by no phrase of CheXpert's labeler).
NOT_FINDINGS = ("unchanged", "suboptimal study",
                "pseudonodule", "nipple shadow", "end on vessel",
                "sternotomy", "suture material", "metal", "bone cement", "mastectomy",
                "mammary prosthesis", "prosthesis", "surgery", "surgery breast", "surgery neck",
                "surgery lung", "surgery heart", "surgery humeral")
# A row whose terms are only these refers to the prior study ("no change since"): it says
# nothing of this film's findings, so its labels are masked, not negative.
PRIOR_STUDY_TERMS = ("unchanged",)
MASKED_PRIOR = "Labels only 'unchanged' (the report refers to the prior study)"
MASKED_EMPTY = "Labels an empty list of terms"

# Projection -> (Frontal/Lateral, AP/PA); AP_horizontal is a supine AP film. Other values (COSTAL:
# rib views, EXCLUDE, UNK) are left out and counted.
VIEWS = {"PA": ("Frontal", "PA"), "AP": ("Frontal", "AP"), "AP_horizontal": ("Frontal", "AP"),
         "L": ("Lateral", "")}
SEX = {"M": "Male", "F": "Female"}  # O (other) and blank: unknown
MAX_AGE = 120  # years; an older (or negative) age is a date typo: unknown
BLANK = ("", "nan")  # the file writes a missing value as an empty cell or as the text nan
LABELS_BLANK = "Labels blank"  # the skipped reason of rows without report terms
# PadChest's own term 'exclude' (1,301 rows) marks a film its labelling says to leave out: its
# other terms, or their absence, are no reference standard
EXCLUDED = "Labels hold 'exclude' (PadChest marks the film to be left out)"
NETWORK_LABELLED = ("MethodLabel RNN_model (labelled by PadChest's network; "
                    "--padchest_label_source physician keeps Physician rows only)")


def is_blank(values: pd.Series) -> pd.Series:
    return values.str.strip().str.lower().isin(BLANK)


def read_table(path: Path) -> pd.DataFrame:
    """The columns used, as strings. pandas' C parser: pyarrow's refuses this file (its Report
    cells span lines), and reading only these columns skips the reports (1 s, not 3 s)."""
    try:
        header = pd.read_csv(path, nrows=0)
        require_columns(header, COLUMNS, path, "PadChest's label table")
        return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=list(COLUMNS))
    except (ValueError, EOFError, OSError, zlib.error) as error:  # ParserError too
        raise PipelineError(f"{path} is not a readable CSV ({error}); expected PadChest's label "
                            f"table, as BIMCV ships it") from error


def csv_line(path: Path, row: int) -> int:
    """The line (header = line 1) where data row `row` (from 0) starts: Report cells span lines,
    so it is not row + 2. Read again, only when an error is reported."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        start, record = 1, -1
        for cells in reader:
            if cells:  # pandas skips blank lines
                record += 1
                if record == row + 1:
                    return start
            start = reader.line_num + 1
    return start


def bad_cell(path: Path, table: pd.DataFrame, bad: pd.Series, column: str,
             expected: str) -> PipelineError:
    """The error naming the first bad cell of `column`: its file, line, value and what to do."""
    row = int(np.flatnonzero(bad.to_numpy())[0])
    return PipelineError(f"{path} line {csv_line(path, row)}, column {column!r}: "
                         f"{table[column].iloc[row]!r} is not {expected}; correct or blank it "
                         f"(or use the table as BIMCV ships it)")


def parse_terms(cell: str) -> list[str] | None:
    """"['pleural effusion', ' nodule', '']" -> ['pleural effusion', 'nodule'], None when the cell
    is not a list of strings. ast.literal_eval, not json: the lists are Python reprs, quoted
    with single quotes."""
    try:
        terms = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(terms, list) or not all(isinstance(term, str) for term in terms):
        return None
    return [term.strip() for term in terms if term.strip()]


def report_terms(table: pd.DataFrame, path: Path) -> dict[str, list[str]]:
    """Each distinct non-blank Labels cell -> its report terms, parsed once: 28,808 distinct
    cells for 160,861 rows. A cell that is not a list of strings is an error."""
    cells = table["Labels"]
    parsed = {cell: parse_terms(cell) for cell in cells[~is_blank(cells)].unique()}
    bad = cells.isin([cell for cell, terms in parsed.items() if terms is None])
    if bad.any():
        raise bad_cell(path, table, bad, "Labels",
                       "a list of report terms like ['pleural effusion', 'cardiomegaly']")
    return parsed


def is_finding(term: str) -> bool:
    """Whether a term unsets No Finding: any but 'normal', the Support Devices terms and
    NOT_FINDINGS (an unmapped finding such as 'COPD signs' does, as in CheXpert's labeler)."""
    labels = set(MAPPING.get(term, ()))
    if labels:
        return bool(labels - {"No Finding", "Support Devices"})
    return term not in NOT_FINDINGS


def masked_reason(terms: list[str]) -> str | None:
    """Why a row's labels are all masked (its terms say nothing of its findings), or None."""
    if not terms:
        return MASKED_EMPTY
    if set(terms) <= set(PRIOR_STUDY_TERMS):
        return MASKED_PRIOR
    return None


def cell_labels(terms: list[list[str]], masked: np.ndarray) -> pd.DataFrame:
    """The raw labels of each list of terms: adapters.raw_from_terms, No Finding by CheXpert's
    rule (1 when no term is a finding, else blank), all 14 NOT_LABELLED where `masked` (rows
    with a masked_reason)."""
    raw, _ = raw_from_terms(terms, MAPPING, NOT_LABELLED)
    no_finding = [not any(map(is_finding, row)) for row in terms]
    raw["No Finding"] = np.where(no_finding, 1.0, np.nan)
    raw.loc[masked, list(LABELS)] = NOT_LABELLED_VALUE
    return raw


def raw_labels(cells: pd.Series, terms_of: dict[str, list[str]]
               ) -> tuple[pd.DataFrame, Counter, dict[str, int]]:
    """The raw label columns of each row (cell_labels), each term's row count and the rows
    masked by reason: computed once per distinct cell and spread over its rows."""
    codes, distinct = pd.factorize(cells)
    terms = [terms_of[cell] for cell in distinct]
    rows = np.bincount(codes, minlength=len(distinct))
    reasons = [masked_reason(cell_terms) for cell_terms in terms]
    counts: Counter = Counter()
    masked: Counter = Counter()
    for cell_terms, reason, n in zip(terms, reasons, rows):
        counts.update(dict.fromkeys(set(cell_terms), int(n)))
        if reason:
            masked[reason] += int(n)
    raw = cell_labels(terms, np.array([r is not None for r in reasons], dtype=bool))
    return raw.iloc[codes].reset_index(drop=True), counts, dict(masked.most_common())


def parse_ages(table: pd.DataFrame, path: Path) -> np.ndarray:
    """Age in years at the study: the study's year minus the birth year (NaN when either is
    blank, or the age is below 0 or above MAX_AGE)."""
    years = {}
    for column, pattern, expected in (
            ("PatientBirth", r"\d{4}(\.0*)?", "a birth year (like 1930.0)"),
            ("StudyDate_DICOM", r"\d{8}", "a date (YYYYMMDD)")):
        values = table[column].str.strip()
        blank = is_blank(values)
        bad = ~blank & ~values.str.fullmatch(pattern)
        if bad.any():
            raise bad_cell(path, table, bad, column, expected)
        years[column] = pd.to_numeric(values.str[:4].where(~blank), errors="coerce")
    age = years["StudyDate_DICOM"] - years["PatientBirth"]
    return age.where((age >= 0) & (age <= MAX_AGE)).to_numpy(dtype=float)


def skipped_rows(projection: pd.Series, labels_blank: pd.Series, excluded: pd.Series,
                 other_source: pd.Series) -> tuple[pd.Series, dict[str, int]]:
    """The rows kept (a PA, AP or lateral film with report terms, not marked 'exclude', not of
    `other_source`: labelled by the network under --padchest_label_source physician) and the
    others counted by reason, each row under its first: the Projection value, blank Labels,
    'exclude', then MethodLabel."""
    known = projection.isin(list(VIEWS))
    skipped = {f"Projection {value!r} (not a PA, AP or lateral chest film)": int(n)
               for value, n in projection[~known].value_counts().items()}
    blank = known & labels_blank
    if blank.any():
        skipped = {LABELS_BLANK: int(blank.sum()), **skipped}
    marked = known & ~blank & excluded
    if marked.any():
        skipped[EXCLUDED] = int(marked.sum())
    elsewhere = known & ~blank & ~marked & other_source
    if elsewhere.any():
        skipped[NETWORK_LABELLED] = int(elsewhere.sum())
    return known & ~blank & ~marked & ~elsewhere, skipped


def method_labels(table: pd.DataFrame, path: Path) -> pd.Series:
    """Each row's MethodLabel (Physician or RNN_model); any other value is an error."""
    method = table["MethodLabel"].str.strip()
    bad = ~method.isin(list(LABEL_SOURCES))
    if bad.any():
        raise bad_cell(path, table, bad, "MethodLabel", " or ".join(LABEL_SOURCES))
    return method


def kept_by_source(method: pd.Series, label_source: str) -> pd.Series:
    """Whether --padchest_label_source keeps each row (of MethodLabel `method`)."""
    choices = sorted({choice for kept in LABEL_SOURCES.values() for choice in kept})
    if label_source not in choices:
        raise PipelineError(f"--padchest_label_source {label_source!r} is not one of "
                            f"{', '.join(choices)}")
    return method.map(lambda value: label_source in LABEL_SOURCES[value])


def read_padchest(root: Path, label_source: str) -> Adapted:
    """PadChest's label table under `root` as an Adapted (one row per image), keeping the rows
    of `label_source` (--padchest_label_source: physician or all)."""
    path = first_file(Path(root), LABELS_FILES, "PadChest label table (PADCHEST_*_labels_*.csv)")
    table = read_table(path)
    terms_of = report_terms(table, path)
    ages = parse_ages(table, path)
    method = method_labels(table, path)
    projection = table["Projection"].str.strip()
    excluded = table["Labels"].map(lambda cell: "exclude" in (terms_of.get(cell) or ()))
    kept, skipped = skipped_rows(projection, is_blank(table["Labels"]), excluded,
                                 ~kept_by_source(method, label_source))
    table, projection, ages = table[kept], projection[kept], ages[kept.to_numpy()]
    image_path = table["ImageDir"].str.strip() + "/" + table["ImageID"].str.strip()
    duplicated = image_path.duplicated()
    if duplicated.any():
        row = table.index[int(np.flatnonzero(duplicated.to_numpy())[0])]
        raise PipelineError(f"{path} line {csv_line(path, row)}, column 'ImageID': "
                            f"{image_path[row]!r} appears twice; use the table as BIMCV ships it")
    patient = table["PatientID"].str.strip()
    meta = pd.DataFrame({
        "Path": image_path,
        "Sex": table["PatientSex_DICOM"].str.strip().map(SEX).fillna(""),
        "Age": ages,
        "Frontal/Lateral": projection.map({key: view for key, (view, _) in VIEWS.items()}),
        "AP/PA": projection.map({key: ap_pa for key, (_, ap_pa) in VIEWS.items()}),
        "patient_id": patient,
        "study_id": patient + "/" + table["StudyID"].str.strip(),
        SPLIT_COLUMN: ""})
    raw, counts, masked = raw_labels(table["Labels"], terms_of)
    sources = method[kept].value_counts()
    return Adapted("padchest", TITLE, with_raw_columns(meta, raw), NOT_LABELLED,
                   term_counts=dict(counts), unmapped_terms=unmapped(counts, MAPPING),
                   skipped=skipped, sources=(path.name,), masked=masked,
                   label_sources={name: int(sources.get(name, 0)) for name in LABEL_SOURCES})
