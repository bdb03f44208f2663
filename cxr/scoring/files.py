"""The CSVs score.py reads: predictions, a reference standard, readers' reads, labelers' output.

Every file is keyed by Study or by Path (a column `Study`, `Path`, `study`, `path` or
`image_path`: CheXpert's files, predict.py's outputs and this pipeline's splits) and holds label
columns by name, in any order, any subset of the 14. Keys are matched across files after
normalising how they are written (normalised_key): CheXpert's `patientNNNNN/studyN` part when a
key has one (the release folder `CheXpert-v1.0/`, `CheXpert-v1.0-small/`, an absolute download
folder and trailing slashes drop away), else the key without the release prefix. A key whose last
part is an image file is an image; its study is the folder.

Every value is checked where it is read, and a bad one is an error naming the file, the CSV line
(the header is line 1), the key and the column: a score that is not a number, blank, NaN or
infinite, outside [0, 1] (unless --score_scale any), a duplicated key, an unknown label name, a
reference label other than 1 / 0 / -1 / blank, a read other than 1 / 0, a view other than
frontal / lateral / unknown / blank.

A per-image predictions file scored against per-study labels is aggregated to studies as
predict.py writes its _studies.csv (inference.study_table): each film's view comes from the
file's `view` column (predict.py's), else CheXpert's `Frontal/Lateral`, else the file name
(view1_frontal.jpg, view2_lateral.jpg); lateral films are left out of their study, as for a
frontal-only model (this pipeline's default, and what CheXpert's competition models are), and a
study with only lateral films is aggregated over them. A model trained on every view
(frontal_only false) is scored through its _studies.csv, which says which films it used.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.chexpert import META_COLUMNS, RELEASE_PREFIX, read_csv_text
from cxr.data.imaging import IMAGE_SUFFIXES, view_from_name
from cxr.data.labels import LABELS, NOT_TRAINED, RAW_VALUES, UNCERTAIN
from cxr.errors import PipelineError

KEY_COLUMNS = ("Study", "Path", "study", "path", "image_path")  # a file's key: the first found
# Columns that are neither a key nor a label: CheXpert's metadata, predict.py's view columns,
# what it copies from the DICOM header (predict.HEADER_COLUMNS, header_warning) and the input
# gate's (predictor.OOD_COLUMNS).
OTHER_COLUMNS = (*META_COLUMNS[1:], "view", "views", "n_views", "ViewPosition", "PatientSex",
                 "PatientAge", "StudyDate", "header_warning", "ood_score", "in_distribution")
VIEW_COLUMNS = ("view", "Frontal/Lateral")  # a film's view, as predict.py reads and writes it
VIEWS = ("frontal", "lateral", "unknown")
FLAG_SUFFIX = " positive"  # predict.py's 0/1 decision columns, "<label> positive": not scores
# the release folder anywhere in a path: "/data/CheXpert-v1.0/test/..." -> "test/..."
RELEASE_FOLDER = re.compile(r"^(?:.*/)?" + RELEASE_PREFIX.pattern.removeprefix("^"))
CHEXPERT_KEY = re.compile(r"(?:^|/)(?P<key>(?P<patient>patient\d+)/study\d+(?:/[^/]+)?)$")
SHOWN = 5  # keys listed in an error about unmatched rows
PLURAL = {"study": "studies", "image": "images"}


def normalised_key(text: str) -> str:
    """'/data/CheXpert-v1.0/test/patient64741/study1/' -> 'patient64741/study1'.

    CheXpert's patient numbers are unique across train, valid and test, so patientNNNNN/studyN
    names a study wherever the files were downloaded; other keys only lose the release prefix.
    """
    key = text.strip().replace("\\", "/").rstrip("/")
    match = CHEXPERT_KEY.search(key)
    return match["key"] if match else RELEASE_FOLDER.sub("", key)


def is_image_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1].lower().endswith(IMAGE_SUFFIXES)


def study_of(key: str) -> str:
    """An image key's study (its folder); a study key itself."""
    return key.rsplit("/", 1)[0] if is_image_key(key) else key


def patient_of(key: str) -> str:
    """The patient of a key (patientNNNNN); a key without one is its own patient."""
    match = re.match(r"patient\d+(?=/)", key)
    return match.group(0) if match else study_of(key)


@dataclass
class LabelFile:
    """One CSV's rows: normalised keys, and a float column per label it holds."""

    path: Path
    keys: pd.Index  # normalised_key of each row, unique
    written: pd.Series  # each key as the file writes it (for messages)
    values: pd.DataFrame  # label columns by name, float; NaN = masked (reference files only)
    unit: str  # "study" or "image"
    masked: dict[str, dict[str, int]] | None = None  # reference files: {label: {why: count}}
    views: pd.Series | None = None  # image predictions: each film's view (VIEWS), by key
    study_views: dict | None = None  # aggregated image predictions: what by_study left out

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.values.columns)

    def line_of(self, key: str) -> int:
        return int(self.keys.get_loc(key)) + 2


# ---- reading ----------------------------------------------------------------------------------

def read_text_table(path: Path, what: str) -> pd.DataFrame:
    """Every cell as a string (blank ""), header names stripped; a clear error for a missing,
    empty or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} {path}: no such file")
    try:
        frame = read_csv_text(path, encoding="utf-8-sig")  # a BOM from Excel is not a name
    except (ValueError, UnicodeDecodeError) as err:
        raise PipelineError(f"{what} {path} is not a readable CSV: {err}") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    if frame.empty:
        raise PipelineError(f"{what} {path} has a header and no rows")
    return frame


def key_column(frame: pd.DataFrame, path: Path) -> str:
    column = next((name for name in KEY_COLUMNS if name in frame.columns), None)
    if column is None:
        raise PipelineError(f"{path} has no key column: it needs one of {', '.join(KEY_COLUMNS)} "
                            f"(its columns: {', '.join(frame.columns)})")
    return column


def label_columns(frame: pd.DataFrame, key: str, path: Path) -> list[str]:
    """The file's label columns, by name; any column that is not a label, the key, metadata or
    a decision column is an error naming it (a typo would otherwise drop a label silently)."""
    labels = []
    for position, column in enumerate(frame.columns, start=1):
        if column in LABELS:
            labels.append(column)
        elif column != key and column not in OTHER_COLUMNS and not (
                column.endswith(FLAG_SUFFIX) and column[:-len(FLAG_SUFFIX)] in LABELS):
            close = difflib.get_close_matches(column, LABELS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PipelineError(f"{path} column {position} {column!r} is not a CheXpert label"
                                f"{hint} (labels: {', '.join(LABELS)})")
    if not labels:
        raise PipelineError(f"{path} has no label column (labels: {', '.join(LABELS)})")
    return labels


def row_place(path: Path, written: pd.Series, row: int) -> str:
    return f"{path} line {row + 2} ({written.iloc[row]})"


def file_keys(frame: pd.DataFrame, column: str, path: Path) -> tuple[pd.Index, pd.Series, str]:
    """(normalised keys, keys as written, unit); blank, duplicated or mixed keys are errors."""
    written = frame[column].str.strip()
    blank = np.flatnonzero((written == "").to_numpy())
    if len(blank):
        raise PipelineError(f"{path} line {blank[0] + 2}: column {column!r} is blank")
    keys = pd.Index(written.map(normalised_key))
    repeated = np.flatnonzero(keys.duplicated())
    if len(repeated):
        row = repeated[0]
        first = int(np.flatnonzero((keys == keys[row]))[0])
        raise PipelineError(f"{row_place(path, written, row)}: the same {column} as line "
                            f"{first + 2} ({written.iloc[first]}); each study (or image) must "
                            f"appear once ({len(repeated)} repeated row(s))")
    images = keys.map(is_image_key).to_numpy(dtype=bool)
    if images.any() and not images.all():
        row = int(np.flatnonzero(images != images[0])[0])
        raise PipelineError(f"{row_place(path, written, row)}: mixes image paths and study "
                            f"folders in column {column!r} (line 2 is "
                            f"{'an image' if images[0] else 'a study'})")
    return keys, written, "image" if images[0] else "study"


def read_label_file(path: Path, what: str
                    ) -> tuple[pd.DataFrame, list[str], pd.Index, pd.Series, str]:
    """(cells as strings, label columns, normalised keys, keys as written, unit) of any of
    score.py's files; `what` names the file in errors."""
    frame = read_text_table(path, what)
    column = key_column(frame, path)
    labels = label_columns(frame, column, path)
    return (frame, labels, *file_keys(frame, column, path))


def untrained_columns(frame: pd.DataFrame, labels: list[str], path: Path) -> list[str]:
    """The label columns predict.py wrote "not trained" in (a model whose training split had no
    labelled value of the label): every cell so, or it is an error naming the first other."""
    untrained = []
    for label in labels:
        said = frame[label].str.strip() == NOT_TRAINED
        if said.all():
            untrained.append(label)
        elif said.any():
            row = int(np.flatnonzero(said.to_numpy())[0])
            raise PipelineError(f"{path} line {row + 2}, column {label!r}: {NOT_TRAINED!r} in "
                                "some rows only; a label the model was not trained on says so "
                                "in every row")
    return untrained


def read_scores(path: Path, scale: str = "probability") -> LabelFile:
    """A predictions file: every cell of a label column a finite score, in [0, 1] when
    `scale` is "probability" ("any": scores that only rank, such as logits). A column that says
    "not trained" in every row (predict.py, for a label its model never saw labelled) is left
    out, and said so."""
    frame, labels, keys, written, unit = read_label_file(path, "predictions")
    untrained = untrained_columns(frame, labels, path)
    if untrained:
        print(f"score: {path}: not trained, so not scored: {', '.join(untrained)}")
        labels = [label for label in labels if label not in untrained]
    values = pd.DataFrame({label: score_column(frame[label], label, path, written, scale)
                           for label in labels})
    views = film_views(frame, keys, written, path) if unit == "image" else None
    return LabelFile(Path(path), keys, written, values.set_axis(keys), unit, views=views)


def film_views(frame: pd.DataFrame, keys: pd.Index, written: pd.Series, path: Path
               ) -> pd.Series:
    """Each film's view: the `view` (or CheXpert's `Frontal/Lateral`) column, lower-cased;
    where it is blank or absent, the file name's (view_from_name), else "unknown"."""
    column = next((name for name in VIEW_COLUMNS if name in frame.columns), None)
    given = (frame[column].str.strip().str.lower() if column is not None
             else pd.Series([""] * len(frame)))
    bad = np.flatnonzero(~given.isin([*VIEWS, ""]).to_numpy())
    if len(bad):
        raise PipelineError(f"{row_place(path, written, bad[0])}, column {column!r}: "
                            f"{frame[column].iloc[bad[0]]!r} is not frontal, lateral, unknown "
                            f"or blank ({len(bad)} such cell(s))")
    named = [view_from_name(key) or "unknown" for key in keys]
    return pd.Series(np.where(given == "", named, given), index=keys)


def score_column(cells: pd.Series, label: str, path: Path, written: pd.Series, scale: str
                 ) -> np.ndarray:
    numbers = pd.to_numeric(cells.str.strip(), errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        row, text = bad[0], cells.iloc[bad[0]].strip()
        why = ("is blank" if text == "" else f"{text!r} is not a finite number"
               if text.lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")
               else f"{text!r} is not a number")
        raise PipelineError(f"{row_place(path, written, row)}, column {label!r}: {why}; every "
                            f"row needs a score of every label column ({len(bad)} such cell(s))")
    if scale == "probability":
        outside = np.flatnonzero((numbers < 0) | (numbers > 1))
        if len(outside):
            row = outside[0]
            raise PipelineError(
                f"{row_place(path, written, row)}, column {label!r}: {cells.iloc[row].strip()} "
                f"is not a probability in [0, 1] ({len(outside)} such cell(s)); scores that only "
                "rank (logits, an ensemble's sums) are scored with --score_scale any")
    return numbers


READ_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0}  # a reader's read: positive or not
RAW_CODES = "1, 0, -1 or blank"


def read_coded(path: Path, what: str, codes: dict[str, float], allowed: str) -> LabelFile:
    """A file of coded cells (`codes`: the text of each allowed value), every cell checked."""
    frame, labels, keys, written, unit = read_label_file(path, what)
    values = pd.DataFrame({label: coded_column(frame[label], label, path, written, codes,
                                               allowed) for label in labels}, index=keys)
    return LabelFile(Path(path), keys, written, values, unit)


def read_reference(path: Path) -> LabelFile:
    """A reference standard: 1 positive, 0 negative, -1 uncertain and blank (not given) masked,
    both counted (a masked label is neither positive nor negative)."""
    reference = read_coded(path, "labels", RAW_VALUES, RAW_CODES)
    raw = reference.values
    reference.masked = {label: {"uncertain": int((raw[label] == UNCERTAIN).sum()),
                                "blank": int(raw[label].isna().sum())} for label in raw}
    reference.values = raw.mask(raw == UNCERTAIN)
    return reference


def read_reads(path: Path) -> LabelFile:
    """A reader's binary reads (a radiologist, or a model's decisions): 1 or 0 in every cell."""
    return read_coded(path, "reads", READ_VALUES, "1 or 0")


def read_labeler(path: Path) -> LabelFile:
    """A report labeler's output, kept as it is: 1, 0, -1 (uncertain) or NaN (blank)."""
    return read_coded(path, "labeler", RAW_VALUES, RAW_CODES)


def coded_column(cells: pd.Series, label: str, path: Path, written: pd.Series,
                 codes: dict[str, float], allowed: str) -> np.ndarray:
    text = cells.str.strip()
    bad = np.flatnonzero(~text.isin(list(codes)).to_numpy())
    if len(bad):
        raise PipelineError(f"{row_place(path, written, bad[0])}, column {label!r}: "
                            f"{cells.iloc[bad[0]]!r} is not {allowed} ({len(bad)} such cell(s))")
    return text.map(codes).to_numpy(dtype=float)


# ---- studies and matching ---------------------------------------------------------------------

def by_study(file: LabelFile, how: str) -> LabelFile:
    """An image file's rows as studies (their folders): each label's `how` over the images
    (scores: max or mean over the frontal films, as predict.py's _studies.csv: scores_by_study;
    labels: max, positive if any image is, masked if every image is: pandas skips NaN)."""
    if file.unit == "study":
        return file
    if file.views is not None:
        return scores_by_study(file, how)
    studies = np.asarray(file.keys.map(study_of))
    values = file.values.groupby(studies, sort=False).agg(how)
    written = file.written.groupby(studies, sort=False).first().map(study_of)
    return LabelFile(file.path, pd.Index(values.index), written.reset_index(drop=True), values,
                     "study", file.masked)


def scores_by_study(file: LabelFile, how: str) -> LabelFile:
    """Per-image predictions as predict.py's study rows, from the same function
    (inference.study_table, as for a frontal-only model): lateral films left out, a study of
    laterals only aggregated over them; what was left out is printed and kept in study_views."""
    from cxr.inference.predictor import \
        study_table  # here: torch loads only for per-image predictions
    table = pd.DataFrame({"path": list(file.keys), "view": file.views.to_numpy(),
                          **{label: file.values[label].to_numpy() for label in file.labels}})
    studies, no_frontal = study_table(table, file.labels, how, frontal_only=True)
    keys = pd.Index(studies["study"])
    values = studies[list(file.labels)].set_axis(keys)
    first = file.written.groupby(np.asarray(file.keys.map(study_of)), sort=False).first()
    written = first.map(study_of).reindex(keys).fillna(pd.Series(keys, index=keys))
    lateral = int((file.views == "lateral").sum())
    left_out = lateral - int(table.loc[table["path"].map(os.path.dirname).isin(no_frontal),
                                       "view"].eq("lateral").sum())
    study_views = {"lateral_films_left_out": left_out,
                   "studies_without_frontal": len(no_frontal)}
    if lateral:
        print(f"score: {file.path}: {left_out} lateral film(s) left out of their studies' "
              f"{how}, as predict.py's _studies.csv leaves them out for a frontal-only model"
              + (f"; {len(no_frontal)} study(ies) without a frontal film ({no_frontal[0]}"
                 f"{', ...' if len(no_frontal) > 1 else ''}) scored over their laterals"
                 if no_frontal else ""))
    return LabelFile(file.path, keys, written.reset_index(drop=True), values, "study",
                     file.masked, study_views=study_views)


def same_unit(scores: LabelFile, reference: LabelFile, how: str) -> tuple[LabelFile, LabelFile]:
    """Both files on one unit: images when both are per image, else studies."""
    if scores.unit == reference.unit:
        return scores, reference
    return by_study(scores, how), by_study(reference, "max")


@dataclass
class Matched:
    """The keys two files share (in the reference's order), and what each one held alone."""

    keys: pd.Index
    only_in_scores: list[str]  # as written in the scores file
    only_in_reference: list[str]


def match_keys(scores: LabelFile, reference: LabelFile, unmatched: str) -> Matched:
    """The shared keys; a key in one file and not the other is an error listing the first few,
    or with unmatched "skip" a counted skip."""
    shared = reference.keys[reference.keys.isin(scores.keys)]
    only_scores = scores.written[~scores.keys.isin(reference.keys)].tolist()
    only_reference = reference.written[~reference.keys.isin(scores.keys)].tolist()
    if shared.empty:
        raise PipelineError(f"{scores.path} and {reference.path} share no "
                            f"{PLURAL[reference.unit]}: e.g. {scores.written.iloc[0]} vs "
                            f"{reference.written.iloc[0]}")
    parts = [f"{len(keys)} {PLURAL[reference.unit]} only in {path}: {', '.join(keys[:SHOWN])}"
             f"{', ...' if len(keys) > SHOWN else ''}"
             for keys, path in ((only_scores, scores.path), (only_reference, reference.path))
             if keys]
    if parts and unmatched == "error":
        raise PipelineError("; ".join(parts) + "; pass --unmatched skip to score the "
                            f"{len(shared)} shared ones")
    if parts:
        print(f"skipped (--unmatched skip): {'; '.join(parts)}")
    return Matched(shared, only_scores, only_reference)


def shared_labels(*files: LabelFile) -> tuple[str, ...]:
    """The labels every file holds, in CheXpert's order; none shared is an error."""
    common = [label for label in LABELS if all(label in f.values.columns for f in files)]
    if not common:
        raise PipelineError("no label in common between " + " and ".join(
            f"{f.path} ({', '.join(f.labels)})" for f in files))
    return tuple(common)
