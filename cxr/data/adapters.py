"""Other hospitals' datasets in this pipeline's schema, so that training, evaluation, prediction
and scoring run on them unchanged (cxr/data/nih.py, cxr/data/mimic.py, cxr/data/padchest.py read
each one in the layout its publishers ship).

Each adapter returns an Adapted: one row per image with CheXpert's metadata columns (Path
relative to the data root, Sex, Age, Frontal/Lateral, AP/PA), the raw label columns
("<label> (raw)": 1, 0, -1, blank = not mentioned, or labels.NOT_LABELLED), patient_id, study_id
and the publisher's split ("train", "test" or "" when it has none). The label mapping onto
CheXpert's 14 is one table per dataset; a dataset of report terms (NIH's findings, PadChest's
terms) writes 1 where a term of the label is present and blank where none is (not mentioned, as
CheXpert's labeler leaves it): a list of terms holds no explicit negative. A label the dataset
does not annotate is NOT_LABELLED, which is not CheXpert's blank (not mentioned = negative): it
is masked from the loss and every report shows it n/a, "not labelled by <dataset>".

CheXpert's hierarchy is no part of an adapter: cxr/datasets.read_dataset applies
--label_hierarchy (apply_hierarchy) to every dataset, as preprocess.py applies it to CheXpert's
own CSVs, so that a label means the same in training and in every external set.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.chexpert import META_COLUMNS
from cxr.data.labels import LABELS, NOT_LABELLED, raw_column, reference_columns
from cxr.errors import PipelineError

# CheXpert's label hierarchy (Irvin et al. 2019, fig. 2): a positive child implies its parent.
# CheXpert's published labels do not apply it (on train.csv's frontal rows 40,590 Lung Opacity
# and 21,418 Enlarged Cardiomediastinum labels are blank beside a positive child), nor does
# MIMIC-CXR's table (the same labeler): --label_hierarchy chooses, for every dataset at once.
HIERARCHY: dict[str, tuple[str, ...]] = {
    "Lung Opacity": ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis"),
    "Enlarged Cardiomediastinum": ("Cardiomegaly",),
}
HIERARCHY_RULES = ("none", "fill_blank")  # config.Config.label_hierarchy
SPLIT_COLUMN = "official_split"  # the publisher's split of each row: "train", "test" or ""


@dataclass
class Adapted:
    """One dataset read into this pipeline's schema (see the module docstring)."""

    dataset: str  # "nih", "mimic", "padchest"
    title: str  # "NIH ChestX-ray14": what reports say the labels come from
    frame: pd.DataFrame
    not_labelled: tuple[str, ...]  # CheXpert labels this dataset never annotates
    term_counts: dict[str, int] = field(default_factory=dict)  # report terms -> rows
    unmapped_terms: dict[str, int] = field(default_factory=dict)  # terms outside the mapping
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out (counted)
    sources: tuple[str, ...] = ()  # the files read
    label_sources: dict[str, int] = field(default_factory=dict)  # who labelled -> rows kept
    masked: dict[str, int] = field(default_factory=dict)  # reason -> rows kept, all 14 masked
    hierarchy: str = "none"  # the --label_hierarchy applied (apply_hierarchy)
    hierarchy_filled: dict[str, int] = field(default_factory=dict)  # parent -> labels it set

    @property
    def has_official_test(self) -> bool:
        return bool((self.frame[SPLIT_COLUMN] == "test").any())

    def not_labelled_note(self) -> str:
        return f"not labelled by {self.title}"


def raw_from_terms(terms: list[list[str]], mapping: dict[str, tuple[str, ...]],
                   not_labelled: tuple[str, ...]) -> tuple[pd.DataFrame, Counter]:
    """Raw label columns from each row's list of report terms (NIH's findings, PadChest's
    terms): 1 where a term mapped onto the label is present, else blank (not mentioned), or
    NOT_LABELLED for a label in `not_labelled`. Returns the frame and every term's row count
    (callers list the terms that the mapping does not know)."""
    raw = np.full((len(terms), len(LABELS)), np.nan)
    counts: Counter = Counter()
    column = {label: c for c, label in enumerate(LABELS)}
    for row, row_terms in enumerate(terms):
        counts.update(set(row_terms))
        for term in row_terms:
            for label in mapping.get(term, ()):
                raw[row, column[label]] = 1.0
    frame = pd.DataFrame(raw, columns=list(LABELS))
    for label in not_labelled:
        frame[label] = frame[label].where(frame[label] == 1.0, NOT_LABELLED)
    return frame, counts


def apply_hierarchy(raw: pd.DataFrame, rule: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The raw labels under --label_hierarchy `rule`, and per parent how many labels it set.

    "none": as given. "fill_blank": a parent left blank (not mentioned) is positive wherever one
    of its children is (CheXpert's hierarchy); an explicit 0 or -1, and NOT_LABELLED (a label
    the dataset does not annotate), are never overwritten.
    """
    if rule not in HIERARCHY_RULES:
        raise PipelineError(f"--label_hierarchy {rule!r} is not one of "
                            f"{', '.join(HIERARCHY_RULES)}")
    filled = dict.fromkeys(HIERARCHY, 0)
    if rule == "none":
        return raw, filled
    raw = raw.copy()
    for parent, children in HIERARCHY.items():
        fill = raw[parent].isna() & (raw[list(children)] == 1.0).any(axis=1)
        raw.loc[fill, parent] = 1.0
        filled[parent] = int(fill.sum())
    return raw, filled


def with_hierarchy(adapted: Adapted, rule: str) -> Adapted:
    """An adapter's rows with --label_hierarchy `rule` applied to their raw columns (and the
    counts it set recorded)."""
    columns = [raw_column(label) for label in LABELS]
    raw = adapted.frame[columns].set_axis(list(LABELS), axis=1)
    raw, filled = apply_hierarchy(raw, rule)
    frame = adapted.frame.copy()
    frame[columns] = raw.to_numpy()
    return dataclasses.replace(adapted, frame=frame, hierarchy=rule, hierarchy_filled=filled)


def unmapped(counts: Counter, mapping: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """The terms the mapping does not know, most frequent first, with their row counts."""
    return {term: n for term, n in counts.most_common() if term not in mapping}


def processed_frame(adapted: Adapted, data_root: str | Path) -> pd.DataFrame:
    """The rows in preprocess.py's processed schema: metadata, the reference standard
    (labels.reference_columns: uncertain and NOT_LABELLED blank), raw columns, patient_id,
    study_id and image_path (absolute)."""
    frame = adapted.frame
    raw = frame[[raw_column(label) for label in LABELS]].set_axis(list(LABELS), axis=1)
    out = pd.concat([frame[list(META_COLUMNS)], reference_columns(raw),
                     raw.astype("Int8").rename(columns=raw_column),
                     frame[["patient_id", "study_id", SPLIT_COLUMN]]], axis=1)
    out["image_path"] = str(Path(data_root).resolve()) + "/" + frame["Path"]
    return out


def with_raw_columns(meta: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """An adapter's frame: its metadata columns beside the raw labels under their raw names."""
    return pd.concat([meta.reset_index(drop=True),
                      raw.reset_index(drop=True).rename(columns=raw_column)], axis=1)


def require_columns(table: pd.DataFrame, columns: tuple[str, ...], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PipelineError(f"{path} lacks column(s) {missing}; found {list(table.columns)[:12]}."
                            f" Is this {what}?")


def first_file(root: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of `names` under `root` that exists, or an error listing what was looked for."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise PipelineError(f"{root}: no {what} found (looked for {', '.join(names)}); --data_root "
                        "must be the folder the dataset was unpacked into")


def label_line(label: str, raw: pd.Series) -> str:
    """One label's counts: positive, negative, not mentioned (blank), uncertain, and not
    labelled where there are any."""
    not_labelled = int((raw == NOT_LABELLED).sum())
    return (f"  {label:<27} {int((raw == 1).sum()):>7,} positive  {int((raw == 0).sum()):>7,} "
            f"negative  {int(raw.isna().sum()):>7,} not mentioned  "
            f"{int((raw == -1).sum()):>6,} uncertain"
            + (f"  {not_labelled:,} not labelled" if not_labelled else ""))


def counts_text(counts: dict[str, int]) -> str:
    """{"Physician": 39053, "RNN_model": 121808} -> "Physician 39,053, RNN_model 121,808"."""
    return ", ".join(f"{name} {n:,}" for name, n in counts.items())


def summary_lines(adapted: Adapted) -> list[str]:
    """What the mapping did, for preprocess.py and evaluate.py to print: rows, patients, each
    label's counts (or "not labelled"), who labelled the rows, the hierarchy, rows masked or
    skipped and terms outside the mapping."""
    frame = adapted.frame
    lines = [f"{adapted.title}: {len(frame):,} images, {frame['patient_id'].nunique():,} patients,"
             f" {frame['study_id'].nunique():,} studies (from {', '.join(adapted.sources)})"]
    for label in LABELS:
        raw = frame[raw_column(label)]
        if label in adapted.not_labelled and not (raw == 1).any():
            lines.append(f"  {label:<27} {adapted.not_labelled_note()}")
        else:
            lines.append(label_line(label, raw))
    if adapted.label_sources:
        lines.append(f"  labelled by (rows): {counts_text(adapted.label_sources)}")
    lines.append(f"  --label_hierarchy {adapted.hierarchy}"
                 + (f": parents set positive: {counts_text(adapted.hierarchy_filled)}"
                    if adapted.hierarchy != "none" else ": the labels as mapped"))
    for reason, n in adapted.masked.items():
        lines.append(f"  masked {n:,} rows (all 14 labels not labelled): {reason}")
    for reason, n in adapted.skipped.items():
        lines.append(f"  skipped {n:,} rows: {reason}")
    if adapted.unmapped_terms:
        shown = ", ".join(f"{term!r} {n:,}" for term, n in list(adapted.unmapped_terms.items())[:12])
        more = len(adapted.unmapped_terms) - 12
        lines.append(f"  {len(adapted.unmapped_terms)} terms outside the mapping (not CheXpert "
                     f"findings; rows): {shown}" + (f", and {more} more" if more > 0 else ""))
    return lines
