"""PadChest in BIMCV's own layout (cxr/padchest.py): the full 160,861-row label table mapped onto
CheXpert's labels and recounted independently, and small hand-written tables (bad cells, missing
columns, the hierarchy, ages, views)."""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config import LABELS, PipelineError
from conftest import shared
from cxr.adapters import summary_lines
from cxr.labels import NOT_LABELLED, raw_column
from cxr.padchest import LABELS_FILES, MAPPING, read_padchest

PADCHEST = "padchest-labels"
# PadChest's columns, in its order (the first one is the unnamed index pandas wrote).
HEADER = ("", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
          "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
          "Modality_DICOM", "Manufacturer_DICOM", "PhotometricInterpretation_DICOM",
          "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM", "SpatialResolution_DICOM",
          "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
          "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM",
          "ExposureTime", "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel",
          "Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS",
          "LocalizationsCUIS")
FILMS = ("PA", "AP", "AP_horizontal", "L")


def image(n: int, labels: str = "['normal']", **cells) -> dict:
    """One row of the table: image n of patient n, study n."""
    row = {"": str(n), "ImageID": f"img{n}.png", "ImageDir": str(n % 3),
           "StudyDate_DICOM": "20140915", "StudyID": f"study{n}", "PatientID": f"patient{n}",
           "PatientBirth": "1930.0", "PatientSex_DICOM": "F", "Projection": "PA",
           "Report": "sin hallazg patolog .", "MethodLabel": "Physician", "Labels": labels}
    row.update(cells)
    return row


def write_table(root: Path, rows: list[dict], header: tuple[str, ...] = HEADER,
                name: str = LABELS_FILES[0]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(root / name, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([[row.get(column, "None") for column in header] for row in rows])
    return root


# ---- the real table ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real():
    """(the Adapted, the table's kept rows read independently: Projection, Labels, Sex)."""
    root = shared(PADCHEST)
    adapted = read_padchest(root)
    table = pd.read_csv(root / LABELS_FILES[1], dtype=str, keep_default_na=False,
                        usecols=["Projection", "Labels", "PatientSex_DICOM"])
    assert len(table) == 160_861
    kept = table[table["Projection"].isin(FILMS) & (table["Labels"] != "nan")]
    kept = kept[~has(kept["Labels"], "exclude")]  # PadChest's mark of a film to leave out
    return adapted, kept.reset_index(drop=True)


def has(labels: pd.Series, *terms: str) -> np.ndarray:
    """Rows whose Labels string holds one of `terms` as a quoted item (spaces around allowed)."""
    pattern = r"'\s*(?:" + "|".join(re.escape(term) for term in terms) + r")\s*'"
    return labels.str.contains(pattern).to_numpy()


def test_full_table_rows_and_skipped(real):
    adapted, kept = real
    assert adapted.skipped == {
        "Labels blank": 103,
        "Projection 'COSTAL' (not a PA, AP or lateral chest film)": 630,
        "Projection 'EXCLUDE' (not a PA, AP or lateral chest film)": 11,
        "Projection 'UNK' (not a PA, AP or lateral chest film)": 8,
        "Labels hold 'exclude' (PadChest marks the film to be left out)": 1_301}
    assert len(adapted.frame) == len(kept) == 160_861 - sum(adapted.skipped.values())
    assert adapted.dataset == "padchest" and adapted.not_labelled == ()
    assert adapted.sources == (LABELS_FILES[1],)


def test_full_table_labels_match_an_independent_recount(real):
    adapted, kept = real
    frame, labels = adapted.frame, kept["Labels"]

    def positive(label):
        return frame[raw_column(label)].to_numpy() == 1

    values = frame[[raw_column(label) for label in LABELS]].to_numpy()
    assert set(np.unique(values)) == {0.0, 1.0} and not (values == NOT_LABELLED).any()
    assert (positive("Cardiomegaly") == has(labels, "cardiomegaly")).all()
    assert int(positive("Cardiomegaly").sum()) == 14_960
    effusion = has(labels, "pleural effusion", "loculated pleural effusion",
                   "loculated fissural effusion", "hydropneumothorax", "empyema")
    assert (positive("Pleural Effusion") == effusion).all()
    # CheXpert's hierarchy: Lung Opacity above its five children, on the real rows
    children = ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis")
    opacity_terms = [term for term, implied in MAPPING.items()
                     if set(implied) & {"Lung Opacity", *children}]
    assert (positive("Lung Opacity") == has(labels, *opacity_terms)).all()
    assert (positive("Enlarged Cardiomediastinum") >= positive("Cardiomegaly")).all()
    # No Finding: 'normal', and no finding beside it (support devices may be)
    findings = np.column_stack([positive(label) for label in LABELS
                                if label not in ("No Finding", "Support Devices")])
    assert (positive("No Finding") == (has(labels, "normal") & ~findings.any(axis=1))).all()
    assert 150 < int((has(labels, "normal") & findings.any(axis=1)).sum()) < 400
    counts = {label: int(positive(label).sum()) for label in LABELS}
    assert 45_000 < counts["No Finding"] < 52_000
    assert all(counts[label] > 500 for label in LABELS if label != "Pneumothorax")
    assert 400 < counts["Pneumothorax"] < 700


def test_full_table_unmapped_terms_and_metadata(real):
    adapted, kept = real
    frame = adapted.frame
    # not CheXpert findings: counted and listed, never dropped silently
    assert adapted.unmapped_terms["COPD signs"] == int(has(kept["Labels"], "COPD signs").sum())
    assert adapted.unmapped_terms["COPD signs"] == 23_238
    assert {"scoliosis", "aortic elongation"} <= set(adapted.unmapped_terms)
    assert not set(adapted.unmapped_terms) & set(MAPPING) and "" not in adapted.term_counts
    assert adapted.term_counts["cardiomegaly"] == 14_960
    sex = kept["PatientSex_DICOM"].map({"M": "Male", "F": "Female"}).fillna("")
    assert (frame["Sex"] == sex).all() and set(frame["Sex"]) == {"Male", "Female", ""}
    projection = kept["Projection"]
    assert ((frame["Frontal/Lateral"] == "Lateral") == (projection == "L")).all()
    assert (frame.loc[projection == "PA", "AP/PA"] == "PA").all()
    assert (frame.loc[projection.isin(["AP", "AP_horizontal"]), "AP/PA"] == "AP").all()
    assert (frame.loc[projection == "L", "AP/PA"] == "").all()
    ages = frame["Age"]
    assert ages.between(0, 120).sum() + ages.isna().sum() == len(frame)
    assert ages.isna().sum() < 20 and 55 < ages.mean() < 62
    assert (frame["patient_id"] != "").all() and (frame["study_id"] != "").all()
    assert (frame["study_id"].str.split("/").str[0] == frame["patient_id"]).all()
    assert frame["Path"].str.fullmatch(r"\d+/[^/]+\.png").all() and frame["Path"].is_unique
    assert (frame["official_split"] == "").all()
    lines = "\n".join(summary_lines(adapted))
    assert "'COPD signs' 23,238" in lines and "not labelled" not in lines


# ---- small hand-written tables ---------------------------------------------------------------

def test_terms_hierarchy_views_ages_and_sex(tmp_path):
    root = write_table(tmp_path / "pc", [
        image(0, "['pulmonary edema']", Projection="AP_horizontal", PatientSex_DICOM="M"),
        image(1, "['hydropneumothorax', ' scoliosis', '']", Projection="L",
              PatientSex_DICOM="O"),
        image(2, "['normal', 'cardiomegaly']", PatientBirth="", Projection="AP"),
        image(3, "['normal', 'pacemaker']", PatientBirth="2020.0"),  # after the study: a typo
        image(4, "nan"),  # blank Labels
        image(5, "['callus rib fracture']", Projection="COSTAL"),
        image(6, "[]", PatientSex_DICOM="nan", StudyDate_DICOM="")])
    adapted = read_padchest(root)
    frame = adapted.frame

    def raw(label):
        return frame[raw_column(label)].tolist()

    assert raw("Edema") == [1, 0, 0, 0, 0]
    assert raw("Lung Opacity") == [1, 0, 0, 0, 0]  # CheXpert's hierarchy
    assert raw("Pneumothorax") == raw("Pleural Effusion") == [0, 1, 0, 0, 0]
    assert raw("Enlarged Cardiomediastinum") == raw("Cardiomegaly") == [0, 0, 1, 0, 0]
    assert raw("No Finding") == [0, 0, 0, 1, 0]  # not beside a finding; beside a device it is
    assert raw("Support Devices") == [0, 0, 0, 1, 0]
    assert adapted.unmapped_terms == {"scoliosis": 1}
    assert adapted.skipped == {"Labels blank": 1, "Projection 'COSTAL' (not a PA, AP or lateral "
                                                  "chest film)": 1}
    assert frame["Path"].tolist() == ["0/img0.png", "1/img1.png", "2/img2.png", "0/img3.png",
                                      "0/img6.png"]
    assert frame["Frontal/Lateral"].tolist() == ["Frontal", "Lateral", "Frontal", "Frontal",
                                                 "Frontal"]
    assert frame["AP/PA"].tolist() == ["AP", "", "AP", "PA", "PA"]
    assert frame["Sex"].tolist() == ["Male", "", "Female", "Female", ""]
    assert frame["Age"].iloc[:2].tolist() == [84, 84] and frame["Age"].iloc[2:].isna().all()
    assert frame["study_id"].iloc[0] == "patient0/study0"
    assert list(frame.columns[:8]) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA",
                                       "patient_id", "study_id", "official_split"]


@pytest.mark.parametrize("name", LABELS_FILES)
def test_a_bad_labels_cell_names_its_line(tmp_path, name):
    # the first row's report spans two lines: the bad cell is on line 4, not 3
    rows = [image(0, Report="line one\nline two"), image(1, "['cardiomegaly'")]
    root = write_table(tmp_path / "pc", rows, name=name)
    with pytest.raises(PipelineError, match=r"line 4, column 'Labels': \"\['cardiomegaly'\""):
        read_padchest(root)
    for bad in ("'cardiomegaly'", "[1, 2]", "{'a': 1}"):
        root = write_table(tmp_path / bad[:3], [image(0), image(1, bad)], name=name)
        with pytest.raises(PipelineError, match=r"line 3, column 'Labels'.*list of report terms"):
            read_padchest(root)


def test_bad_tables_name_the_file_and_what_is_expected(tmp_path):
    with pytest.raises(PipelineError, match=r"no PadChest label table .*labels_160K_01\.02\.19"):
        read_padchest(tmp_path)
    root = write_table(tmp_path / "cols", [image(0)],
                       header=tuple(c for c in HEADER if c != "Projection"))
    with pytest.raises(PipelineError, match=r"lacks column\(s\) \['Projection'\]"):
        read_padchest(root)
    root = write_table(tmp_path / "birth", [image(0), image(1, PatientBirth="thirties")])
    with pytest.raises(PipelineError, match=r"line 3, column 'PatientBirth': 'thirties'"):
        read_padchest(root)
    root = write_table(tmp_path / "date", [image(0, StudyDate_DICOM="2014-09-15")])
    with pytest.raises(PipelineError, match=r"line 2, column 'StudyDate_DICOM'.*YYYYMMDD"):
        read_padchest(root)
    root = write_table(tmp_path / "dup", [image(0), image(0)])
    with pytest.raises(PipelineError, match=r"line 3, column 'ImageID'.*appears twice"):
        read_padchest(root)
