"""Patients' demographics from a file of their own (--demographics): the strata of the audits.

A CSV or XLSX with one row per patient: a patient column and categorical columns. Read as is:
- CheXpert's `CHEXPERT DEMO.xlsx` (PATIENT, GENDER, AGE_AT_CXR, PRIMARY_RACE, ETHNICITY): GENDER
  becomes Sex, AGE_AT_CXR Age (banded like the split's own Age), and PRIMARY_RACE with ETHNICITY
  becomes Race, grouped as below.
- Any other layout: --demographics_patient names the patient column (default: the first of
  PATIENT_COLUMNS the file has) and --demographics_columns the columns to audit (default: all
  the others). A column called Age (any case) is banded; any other column is a category as
  written, and one with more than MAX_CATEGORIES values is refused (bin it first).

Race grouping (race_group). Seyyed-Kalantari et al. (Nature Medicine 2021) audited CheXpert by
White, Black, Hispanic, Asian, Native American and Other; their published analysis does not
spell out how CheXpert's PRIMARY_RACE strings (e.g. "White, non-Hispanic", "Other, Hispanic",
"Asian - Historical Conv") map to these, so this pipeline states its own rules, in order:
Hispanic (ETHNICITY Hispanic/Latino, or PRIMARY_RACE naming Hispanic but not non-Hispanic), then
Black, Asian, White (PRIMARY_RACE contains the word), Native American (American Indian, Alaska
Native, Native Hawaiian, Pacific Islander), unknown (blank, or naming Unknown, Refused or
Declined), else Other.

The file's values replace the split's own Sex and Age where it has them. Patients are matched by
their id as text, with CheXpert's numbers normalised (patient00042, 42 and patient42 are one);
a patient of the split the file lacks is "unknown" in every audit, counted and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.errors import PipelineError

if TYPE_CHECKING:
    from config import Config

PATIENT_COLUMNS = ("PATIENT", "patient_id", "Patient ID", "PatientID", "subject_id", "patient")
CHEXPERT_DEMO = ("PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE")  # CHEXPERT DEMO.xlsx
MAX_CATEGORIES = 12
UNKNOWN = "unknown"
_NUMBERED = re.compile(r"^(?:patient)?0*(\d+)$", re.IGNORECASE)
_UNKNOWN_RACE = ("unknown", "refused", "declined")
RACE_GROUPS = ("White", "Black", "Hispanic", "Asian", "Native American", "Other", UNKNOWN)
_NATIVE = ("american indian", "alaska native", "native hawaiian", "pacific islander")


def patient_key(value) -> str:
    """A patient id as the audits match it: CheXpert's numbers normalised to patientNNNNN."""
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():  # a numeric column read as floats
        text = text[:-2]
    match = _NUMBERED.match(text)
    return f"patient{int(match.group(1)):05d}" if match else text


def _text(value) -> str:
    return "" if pd.isna(value) else str(value).strip()


def race_group(primary_race, ethnicity=None) -> str:
    """CheXpert's PRIMARY_RACE (and ETHNICITY) -> one of RACE_GROUPS, by the rules of the module
    docstring (words matched without regard to case; a blank cell, NaN included, is unknown)."""
    race, ethnic = _text(primary_race).lower(), _text(ethnicity).lower()
    if ethnic.startswith("hispanic") or ("hispanic" in race and "non-hispanic" not in race):
        return "Hispanic"
    for word, group in (("black", "Black"), ("asian", "Asian"), ("white", "White")):
        if word in race:
            return group
    if any(name in race for name in _NATIVE):
        return "Native American"
    if not race or any(word in race for word in _UNKNOWN_RACE):
        return UNKNOWN
    return "Other"


def ethnicity_group(ethnicity) -> str:
    """CheXpert's ETHNICITY -> Hispanic/Latino, Non-Hispanic or unknown."""
    text = _text(ethnicity).lower()
    if text.startswith("hispanic"):
        return "Hispanic/Latino"
    return "Non-Hispanic" if text.startswith(("non", "not")) else UNKNOWN


@dataclass
class Demographics:
    """The audits' columns by patient: {patient key: row}, one column per audit."""

    path: str
    table: pd.DataFrame  # index: patient_key; columns: audit names (Sex, Age, Race, ...)
    layout: str  # "CHEXPERT DEMO" or "columns <...>"
    notes: list[str] = field(default_factory=list)

    @property
    def audits(self) -> tuple[str, ...]:
        return tuple(self.table.columns)


def read_table(path: Path) -> pd.DataFrame:
    """The file's rows as text (CSV, or the first sheet of an XLSX)."""
    if not path.is_file():
        raise PipelineError(f"--demographics {path}: no such file")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            return pd.read_excel(path, dtype=object)
        return pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise PipelineError(f"--demographics {path}: cannot be read as a CSV or XLSX table "
                            f"({err})") from None


def patient_column(frame: pd.DataFrame, path: Path, given: str) -> str:
    if given:
        if given not in frame.columns:
            raise PipelineError(f"--demographics {path} has no column {given!r} "
                                f"(--demographics_patient); its columns: {list(frame.columns)}")
        return given
    found = next((name for name in PATIENT_COLUMNS if name in frame.columns), None)
    if found is None:
        raise PipelineError(f"--demographics {path} has no patient column (one of "
                            f"{', '.join(PATIENT_COLUMNS)}); its columns: {list(frame.columns)}. "
                            "Name it with --demographics_patient COLUMN")
    return found


def _ages(values: pd.Series, path: Path, column: str, patients: pd.Series) -> pd.Series:
    ages = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & ages.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise PipelineError(f"--demographics {path}, row {row + 2} (patient "
                            f"{patients.iloc[row]}): {column} = {values.iloc[row]!r} is not a "
                            "number of years; leave it blank when unknown")
    return ages.astype(float)


def _categories(values: pd.Series, path: Path, column: str) -> pd.Series:
    text = values.map(_text).replace("", UNKNOWN)
    distinct = sorted(set(text) - {UNKNOWN})
    if len(distinct) > MAX_CATEGORIES:
        raise PipelineError(f"--demographics {path}: column {column!r} has {len(distinct)} "
                            f"values (at most {MAX_CATEGORIES} are audited as categories): bin "
                            "it into groups first, or leave it out of --demographics_columns")
    return text


def chexpert_layout(frame: pd.DataFrame, path: Path, patients: pd.Series) -> pd.DataFrame:
    """CHEXPERT DEMO.xlsx -> Sex, Age, Race (grouped), Ethnicity."""
    ethnicity = frame["ETHNICITY"] if "ETHNICITY" in frame else pd.Series(None, index=frame.index)
    out = pd.DataFrame({
        "Sex": _categories(frame["GENDER"], path, "GENDER"),
        "Age": _ages(frame["AGE_AT_CXR"], path, "AGE_AT_CXR", patients),
        "Race": [race_group(r, e) for r, e in zip(frame["PRIMARY_RACE"], ethnicity)]},
        index=frame.index)
    if "ETHNICITY" in frame:
        out["Ethnicity"] = [ethnicity_group(value) for value in ethnicity]
    return out


def other_layout(frame: pd.DataFrame, path: Path, patients: pd.Series, patient: str,
                 columns: tuple[str, ...]) -> pd.DataFrame:
    wanted = columns or tuple(name for name in frame.columns if name != patient)
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise PipelineError(f"--demographics {path} has no column {missing[0]!r} "
                            f"(--demographics_columns); its columns: {list(frame.columns)}")
    if not wanted:
        raise PipelineError(f"--demographics {path} has no column besides the patient's "
                            f"({patient!r}) to audit")
    out = {}
    for name in wanted:
        is_age = name.strip().lower() in ("age", "age_at_cxr", "age at cxr")
        out["Age" if is_age else name] = (_ages(frame[name], path, name, patients) if is_age
                                          else _categories(frame[name], path, name))
    return pd.DataFrame(out, index=frame.index)


def one_row_per_patient(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The table with a patient's repeated identical rows dropped; rows that differ are an
    error naming the first two (file rows: header 1, so position + 2)."""
    distinct = table.reset_index(names="patient").drop_duplicates()
    clash = distinct["patient"].duplicated(keep=False)
    if clash.any():
        first = distinct.loc[clash, "patient"].iloc[0]
        rows = (distinct.index[distinct["patient"] == first] + 2).tolist()
        raise PipelineError(f"--demographics {path}: patient {first} has rows {rows[0]} and "
                            f"{rows[1]} with different values; keep one")
    return table[~table.index.duplicated()]


def read_demographics(path: str | Path, patient: str = "", columns: tuple[str, ...] = ()
                      ) -> Demographics:
    """The file's audit columns by patient key (module docstring). A patient listed twice with
    different values is an error naming both rows."""
    path = Path(path)
    frame = read_table(path)
    name = patient_column(frame, path, patient)
    ids = frame[name].map(_text)
    blank = ids == ""
    if blank.any():
        raise PipelineError(f"--demographics {path}, row {int(np.flatnonzero(blank)[0]) + 2}: "
                            f"the patient ({name}) is blank")
    keys = ids.map(patient_key)
    chexpert = not columns and not patient and set(CHEXPERT_DEMO) <= set(frame.columns)
    table = chexpert_layout(frame, path, ids) if chexpert else \
        other_layout(frame, path, ids, name, columns)
    table.index = keys.to_numpy()
    table = one_row_per_patient(table, path)
    layout = "CHEXPERT DEMO" if chexpert else f"columns {', '.join(table.columns)}"
    return Demographics(str(path), table, layout)


def with_demographics(frame: pd.DataFrame, demographics: Demographics) -> tuple[pd.DataFrame, int]:
    """`frame` (rows with patient_id) with the file's audit columns (replacing its own Sex and
    Age), and how many of its patients the file lacks (their rows: unknown)."""
    keys = frame["patient_id"].map(patient_key)
    table = demographics.table
    joined = frame.drop(columns=[c for c in table.columns if c in frame.columns]).copy()
    for column in table.columns:
        values = keys.map(table[column])
        joined[column] = values if column == "Age" else values.where(values.notna(), UNKNOWN)
    missing = int(keys[~keys.isin(table.index)].nunique())
    return joined, missing


@lru_cache(maxsize=4)
def cached_demographics(path: str, patient: str, columns: tuple[str, ...]) -> Demographics:
    """read_demographics, once per file for evaluate.py's splits (CHEXPERT DEMO.xlsx takes
    seconds to parse)."""
    return read_demographics(path, patient, columns)


def join_demographics(frame: pd.DataFrame, cfg: Config
                      ) -> tuple[pd.DataFrame, tuple[str, ...], dict | None]:
    """The audits' rows: `frame` joined with --demographics (when given), the demographic audits
    it adds besides Sex and Age, and what was read (the report's "demographics")."""
    if not cfg.demographics:
        return frame, (), None
    demographics = cached_demographics(cfg.demographics, cfg.demographics_patient,
                                       tuple(cfg.demographics_columns))
    joined, missing = with_demographics(frame, demographics)
    added = tuple(name for name in demographics.audits if name not in ("Sex", "Age"))
    return joined, added, {"file": demographics.path, "layout": demographics.layout,
                           "audits": list(demographics.audits),
                           "patients": int(frame["patient_id"].nunique()),
                           "patients_not_in_file": missing}


def check_demographics(cfg: Config) -> None:
    """Read --demographics before any work (a bad file fails in a second, not after the
    model has run); the read is cached for the audits."""
    if cfg.demographics:
        cached_demographics(cfg.demographics, cfg.demographics_patient,
                            tuple(cfg.demographics_columns))
