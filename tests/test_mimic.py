"""MIMIC-CXR-JPG in PhysioNet's layout (cxr/data/mimic.py), on a small synthetic tree of that layout
(tests/mimic_tree.py): the rows kept and skipped, paths, views, the official split, ids, labels
read by name as published, CheXpert's hierarchy under --label_hierarchy (never over an explicit
0 or -1), and bad tables named by file, line and column."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from config import Config
from cxr.data.adapters import HIERARCHY, SPLIT_COLUMN, processed_frame
from cxr.data.chexpert import META_COLUMNS
from cxr.data.datasets import read_dataset
from cxr.data.labels import LABELS, raw_column
from cxr.data.mimic import read_mimic
from cxr.errors import PipelineError
from mimic_tree import write_mimic_tree

LABEL_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
PATH = re.compile(r"^files/p(1\d)/p(1\d{7})/s(5\d{7})/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.jpg$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The tree, what it holds, and the adapter's reading of it."""
    root = tmp_path_factory.mktemp("mimic") / "mimic-cxr-jpg"
    counts = write_mimic_tree(root)
    return root, counts, read_mimic(root)


def table(root: Path, name: str) -> pd.DataFrame:
    """A table of the tree as strings, read independently of the adapter."""
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


def tables_copy(root: Path, target: Path) -> Path:
    """The three tables (not the images) in a folder of their own, to break."""
    target.mkdir(parents=True)
    for name in (LABEL_FILE, METADATA_FILE, SPLIT_FILE):
        shutil.copy(root / name, target / name)
    return target


def edit(path: Path, line: int, column: str, value: str) -> None:
    """Set one cell of a table (line 2 = the first data row)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[line - 2, column] = value
    frame.to_csv(path, index=False)  # gzipped again: the name ends in .gz


def images_of(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Each row's metadata row, found by the dicom_id in its path."""
    metadata = table(root, METADATA_FILE).set_index("dicom_id")
    return metadata.loc[frame["Path"].str.extract(PATH)[3]].reset_index()


# ---- rows, paths, views, ids, split ----------------------------------------------------------

def test_rows_kept_and_skipped(tree):
    root, counts, adapted = tree
    frame = adapted.frame
    assert (adapted.dataset, adapted.title, adapted.not_labelled) == ("mimic", "MIMIC-CXR", ())
    assert adapted.sources == (METADATA_FILE, LABEL_FILE, SPLIT_FILE)
    assert list(frame.columns) == [*META_COLUMNS, "patient_id", "study_id", SPLIT_COLUMN,
                                   *(raw_column(label) for label in LABELS)]
    assert len(frame) == counts["kept"] == counts["frontal"] + counts["lateral"]
    assert sum(adapted.skipped.values()) + len(frame) == counts["images"]
    for fragment, n in counts["skipped"].items():
        (reason,) = [reason for reason in adapted.skipped if fragment in reason]
        assert adapted.skipped[reason] == n > 0
    assert counts["unlabelled_study"] not in set(frame["study_id"])
    assert frame["study_id"].nunique() == counts["labelled_studies"]
    assert frame["patient_id"].nunique() == counts["subjects"]


def test_paths_follow_the_layout_and_exist(tree):
    root, _, adapted = tree
    frame = adapted.frame
    parts = frame["Path"].str.extract(PATH)
    assert parts.notna().all().all(), frame["Path"][parts.isna().any(axis=1)].tolist()
    assert (parts[0] == parts[1].str[:2]).all()
    assert all((root / path).is_file() for path in frame["Path"])
    assert frame["Path"].is_unique


def test_ids_are_the_folders(tree):
    _, _, adapted = tree
    frame = adapted.frame
    parts = frame["Path"].str.extract(PATH)
    assert (frame["patient_id"] == "p" + parts[1]).all()
    assert (frame["study_id"] == "p" + parts[1] + "/s" + parts[2]).all()
    assert frame["Sex"].eq("").all() and frame["Age"].isna().all()  # not in MIMIC-CXR-JPG


def test_views_from_view_position(tree):
    root, counts, adapted = tree
    frame = adapted.frame
    view = images_of(frame, root)["ViewPosition"]
    assert set(view) == {"PA", "AP", "LATERAL", "LL"}  # blank left out
    frontal = view.isin(("PA", "AP")).to_numpy()
    assert (frame["Frontal/Lateral"] == np.where(frontal, "Frontal", "Lateral")).all()
    assert (frame["AP/PA"] == np.where(frontal, view, "")).all()
    assert int(frontal.sum()) == counts["frontal"] and int((~frontal).sum()) == counts["lateral"]


def test_official_split_by_image(tree, tmp_path):
    root, counts, adapted = tree
    frame = adapted.frame
    split = images_of(frame, root)[["dicom_id"]].merge(table(root, SPLIT_FILE), how="left")
    expected = split["split"].map({"train": "train", "validate": "train", "test": "test"})
    assert (frame[SPLIT_COLUMN] == expected).all() and set(split["split"]) == {
        "train", "validate", "test"}
    assert frame[SPLIT_COLUMN].value_counts().to_dict() == counts["split"]
    assert adapted.has_official_test
    by_patient = frame.groupby("patient_id")[SPLIT_COLUMN].nunique()
    assert (by_patient == 1).all()  # the publisher splits by patient
    # an image the split file does not list: ""; no split file at all: "" everywhere
    copy = tables_copy(root, tmp_path / "unlisted")
    listed = table(copy, SPLIT_FILE)
    first = frame["Path"].str.extract(PATH)[3].iloc[0]
    listed[listed["dicom_id"] != first].to_csv(copy / SPLIT_FILE, index=False)
    read = read_mimic(copy).frame
    assert read[SPLIT_COLUMN].iloc[0] == "" and (read[SPLIT_COLUMN].iloc[1:] != "").all()
    (copy / SPLIT_FILE).unlink()
    without = read_mimic(copy)
    assert (without.frame[SPLIT_COLUMN] == "").all() and not without.has_official_test
    assert without.sources == (METADATA_FILE, LABEL_FILE)


# ---- labels --------------------------------------------------------------------------------

def csv_labels(root: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Each row's study's cells of the label table, by label name: 1, 0, -1 or NaN (blank)."""
    labels = table(root, LABEL_FILE)
    keys = "p" + labels["subject_id"] + "/s" + labels["study_id"]
    values = labels.set_index(keys)[list(LABELS)].replace("", np.nan).astype(float)
    return values.loc[frame["study_id"]].reset_index(drop=True)


def raw_labels(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[raw_column(label) for label in LABELS]].set_axis(list(LABELS), axis=1)


def test_labels_are_the_csv_cells_by_name_as_published(tree):
    root, counts, adapted = tree
    frame = adapted.frame
    cells = csv_labels(root, frame)
    raw = raw_labels(frame)
    pd.testing.assert_frame_equal(raw, cells)  # no hierarchy: the labeler's table as it is
    # the first study: Cardiomegaly and Atelectasis positive, their parents blank and 0
    first = (frame["study_id"] == counts["hierarchy_study"]).to_numpy()
    row = raw[first].iloc[0]
    assert row["Cardiomegaly"] == 1 and np.isnan(row["Enlarged Cardiomediastinum"])
    assert row["Atelectasis"] == 1 and row["Lung Opacity"] == 0
    assert raw.isna().sum().sum() > 0 and (raw == -1).sum().sum() > 0
    assert set(np.unique(raw.to_numpy()[~np.isnan(raw.to_numpy())])) == {-1.0, 0.0, 1.0}
    assert adapted.label_sources == {"CheXpert's labeler (NLP of the reports)": len(frame)}


def test_the_hierarchy_fills_blank_parents_and_never_an_explicit_value(tree):
    """--label_hierarchy fill_blank: the same rule as for CheXpert's CSVs. Before it, the adapter
    made every parent of a positive child positive, over an explicit 0 or -1 too."""
    root, counts, adapted = tree
    cells = csv_labels(root, adapted.frame)
    filled = read_dataset("mimic", root, Config(label_hierarchy="fill_blank"))
    raw = raw_labels(filled.frame)
    expected = cells.copy()
    for parent, children in HIERARCHY.items():
        blank = cells[parent].isna() & (cells[list(children)] == 1).any(axis=1)
        expected.loc[blank, parent] = 1.0
        assert filled.hierarchy_filled[parent] == int(blank.sum()) > 0
    pd.testing.assert_frame_equal(raw, expected)
    first = (filled.frame["study_id"] == counts["hierarchy_study"]).to_numpy()
    assert raw[first].iloc[0]["Enlarged Cardiomediastinum"] == 1  # blank: filled
    assert raw[first].iloc[0]["Lung Opacity"] == 0  # an explicit 0 stays
    kept = cells.notna()
    assert (raw[kept] == cells[kept]).sum().sum() == kept.sum().sum()
    none = read_dataset("mimic", root, Config())  # the default: the labels as published
    pd.testing.assert_frame_equal(raw_labels(none.frame), cells)
    assert none.hierarchy == "none" and none.hierarchy_filled == dict.fromkeys(HIERARCHY, 0)


def test_the_processed_schema_holds_the_reference_standard(tree):
    root, _, adapted = tree
    processed = processed_frame(adapted, root)
    raw = adapted.frame[raw_column("Edema")]
    assert (processed.loc[raw.isna(), "Edema"] == 0).all()  # not mentioned: negative
    assert processed.loc[raw == -1, "Edema"].isna().all()  # uncertain: masked, any policy
    assert (processed.loc[raw == 1, "Edema"] == 1).all()
    assert processed["image_path"].map(lambda path: Path(path).is_file()).all()


def test_the_images_carry_a_cardiomegaly_signal(tree):
    root, _, adapted = tree
    frame = adapted.frame
    frontal = frame[frame["Frontal/Lateral"] == "Frontal"]
    brightness = frontal["Path"].map(lambda path: np.asarray(Image.open(root / path)).mean())
    positive = frontal[raw_column("Cardiomegaly")] == 1
    assert brightness[positive].min() > brightness[~positive].max()


# ---- other spellings of the layout, bad tables -----------------------------------------------

def test_plain_csv_tables_are_read_too(tree, tmp_path):
    root, _, adapted = tree
    copy = tables_copy(root, tmp_path / "plain")
    for name in (LABEL_FILE, METADATA_FILE, SPLIT_FILE):
        (copy / name.removesuffix(".gz")).write_bytes(gzip.decompress((copy / name).read_bytes()))
        (copy / name).unlink()
    read = read_mimic(copy)
    pd.testing.assert_frame_equal(read.frame, adapted.frame)
    assert read.sources == tuple(name.removesuffix(".gz") for name in adapted.sources)


def test_bad_tables_name_the_file_line_and_column(tree, tmp_path):
    root, _, _ = tree

    def broken(name: str) -> Path:
        return tables_copy(root, tmp_path / name)

    copy = broken("value")
    edit(copy / LABEL_FILE, 3, "Edema", "2.0")
    with pytest.raises(PipelineError, match=rf"{LABEL_FILE}: 1 label value\(s\) not in .*"
                                            r"line 3, column 'Edema': '2.0'"):
        read_mimic(copy)
    copy = broken("column")
    table(copy, METADATA_FILE).drop(columns="ViewPosition").to_csv(copy / METADATA_FILE,
                                                                   index=False)
    with pytest.raises(PipelineError, match=rf"{METADATA_FILE} lacks column\(s\) "
                                            r"\['ViewPosition'\].*metadata table"):
        read_mimic(copy)
    copy = broken("label-column")
    table(copy, LABEL_FILE).drop(columns="Pleural Other").to_csv(copy / LABEL_FILE, index=False)
    with pytest.raises(PipelineError, match=r"lacks column\(s\) \['Pleural Other'\]"):
        read_mimic(copy)
    copy = broken("no-labels")
    (copy / LABEL_FILE).unlink()
    with pytest.raises(PipelineError, match=r"no MIMIC-CXR-JPG label table .*looked for "
                                            r"mimic-cxr-2\.0\.0-chexpert\.csv\.gz, "
                                            r"mimic-cxr-2\.0\.0-chexpert\.csv\)"):
        read_mimic(copy)
    copy = broken("no-metadata")
    (copy / METADATA_FILE).unlink()
    with pytest.raises(PipelineError, match=r"no MIMIC-CXR-JPG metadata table"):
        read_mimic(copy)
    copy = broken("subject")
    edit(copy / METADATA_FILE, 4, "subject_id", "p10000032")
    with pytest.raises(PipelineError, match=rf"{METADATA_FILE} line 4, column 'subject_id': "
                                            r"'p10000032' is not a whole number"):
        read_mimic(copy)
    copy = broken("study")
    edit(copy / LABEL_FILE, 5, "study_id", "5.1e7")
    with pytest.raises(PipelineError, match=rf"{LABEL_FILE} line 5, column 'study_id': "
                                            r"'5.1e7' is not a whole number"):
        read_mimic(copy)
    copy = broken("split")
    edit(copy / SPLIT_FILE, 6, "split", "val")
    with pytest.raises(PipelineError, match=rf"{SPLIT_FILE} line 6, column 'split': 'val' is "
                                            r"not one of train, validate, test"):
        read_mimic(copy)
    copy = broken("twice")
    labels = table(copy, LABEL_FILE)
    pd.concat([labels, labels.iloc[[0]]]).to_csv(copy / LABEL_FILE, index=False)
    with pytest.raises(PipelineError, match=rf"{LABEL_FILE} line {len(labels) + 2}: subject_id "
                                            r"1\d+, study_id 5\d+ appears twice"):
        read_mimic(copy)
    copy = broken("binary")
    (copy / METADATA_FILE).write_bytes(b"\x00\xff not gzip")
    with pytest.raises(PipelineError, match=rf"{METADATA_FILE} is not a readable CSV file"):
        read_mimic(copy)
