"""PadChest in BIMCV's own layout (cxr/data/padchest.py): the full 160,861-row label table mapped
onto CheXpert's labels and recounted independently (the physicians' rows, or all of them), and small
hand-written tables (bad cells, missing columns, No Finding, masked rows, ages, views)."""

from __future__ import annotations

import ast
import csv
import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config import Config
from conftest import shared
from cxr.data.adapters import summary_lines
from cxr.data.datasets import read_dataset
from cxr.data.labels import LABELS, NOT_LABELLED, raw_column
from cxr.data.padchest import LABELS_FILES, MAPPING, MASKED_EMPTY, MASKED_PRIOR, NOT_FINDINGS, \
    read_padchest
from cxr.errors import PipelineError

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
    """(the Adapted of every row, --padchest_label_source all; the table's kept rows read
    independently: Projection, MethodLabel, Labels, Sex)."""
    root = shared(PADCHEST)
    adapted = read_padchest(root, label_source="all")
    table = pd.read_csv(root / LABELS_FILES[1], dtype=str, keep_default_na=False,
                        usecols=["Projection", "MethodLabel", "Labels", "PatientSex_DICOM"])
    assert len(table) == 160_861
    kept = table[table["Projection"].isin(FILMS) & (table["Labels"] != "nan")]
    kept = kept[~has(kept["Labels"], "exclude")]  # PadChest's mark of a film to leave out
    return adapted, kept.reset_index(drop=True)


def terms(labels: pd.Series) -> pd.Series:
    """Each row's set of terms, parsed here (the test's own reading)."""
    return labels.map(lambda cell: {term.strip() for term in ast.literal_eval(cell)} - {""})


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
    assert adapted.label_sources == dict(kept["MethodLabel"].value_counts()) == \
        {"Physician": 38_958, "RNN_model": 119_850}
    # rows that say nothing of the film's findings: masked, not negative
    sets = terms(kept["Labels"])
    assert adapted.masked == {MASKED_PRIOR: int((sets == {"unchanged"}).sum()),
                              MASKED_EMPTY: int((sets.map(len) == 0).sum())} == \
        {MASKED_PRIOR: 3_701, MASKED_EMPTY: 768}


def test_full_table_labels_match_an_independent_recount(real):
    adapted, kept = real
    frame, labels = adapted.frame, kept["Labels"]

    def positive(label):
        return frame[raw_column(label)].to_numpy() == 1

    values = frame[[raw_column(label) for label in LABELS]].to_numpy()
    sets = terms(labels)
    masked = ((sets == {"unchanged"}) | (sets.map(len) == 0)).to_numpy()
    assert (values[masked] == NOT_LABELLED).all() and not (values[~masked] == NOT_LABELLED).any()
    assert set(np.unique(values[~masked][~np.isnan(values[~masked])])) == {1.0}  # or blank
    assert (positive("Cardiomegaly") == has(labels, "cardiomegaly")).all()
    assert int(positive("Cardiomegaly").sum()) == 14_960
    effusion = has(labels, "pleural effusion", "loculated pleural effusion",
                   "loculated fissural effusion", "hydropneumothorax", "empyema")
    assert (positive("Pleural Effusion") == effusion).all()
    # a parent from its own terms only: the hierarchy is --label_hierarchy's
    opacity_terms = [term for term, implied in MAPPING.items() if "Lung Opacity" in implied]
    assert (positive("Lung Opacity") == has(labels, *opacity_terms)).all()
    assert int(positive("Lung Opacity").sum()) == 24_392
    # No Finding by CheXpert's labeler: no term is a finding (Support Devices, 'normal' and the
    # NOT_FINDINGS aside), whether or not 'normal' is among them; blank otherwise
    quiet = {term for term, implied in MAPPING.items()
             if set(implied) <= {"No Finding", "Support Devices"}} | set(NOT_FINDINGS)
    no_finding = (sets.map(lambda row: row <= quiet) & ~pd.Series(masked)).to_numpy()
    assert (positive("No Finding") == no_finding).all()
    assert np.isnan(values[~masked & ~no_finding, LABELS.index("No Finding")]).all()
    assert int(no_finding.sum()) == 56_008
    counts = {label: int(positive(label).sum()) for label in LABELS}
    assert all(counts[label] > 500 for label in LABELS if label != "Pneumothorax")
    assert 400 < counts["Pneumothorax"] < 700


def test_full_table_under_the_hierarchy_and_the_default_label_source():
    """read_dataset with the defaults (physician rows, no hierarchy), and with fill_blank."""
    root = shared(PADCHEST)
    physician = read_dataset("padchest", root, Config())
    assert physician.label_sources == {"Physician": 38_958, "RNN_model": 0}
    assert len(physician.frame) == 38_958 and physician.masked == {MASKED_PRIOR: 1_065}
    assert physician.skipped["MethodLabel RNN_model (labelled by PadChest's network; "
                             "--padchest_label_source physician keeps Physician rows only)"] == \
        119_850
    lines = "\n".join(summary_lines(physician))
    assert "labelled by (rows): Physician 38,958, RNN_model 0" in lines
    filled = read_dataset("padchest", root, Config(label_hierarchy="fill_blank",
                                                   padchest_label_source="all"))
    raw = filled.frame[[raw_column(label) for label in LABELS]].set_axis(list(LABELS), axis=1)
    children = ["Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis"]
    assert ((raw["Lung Opacity"] == 1) >= (raw[children] == 1).any(axis=1)).all()
    assert ((raw["Enlarged Cardiomediastinum"] == 1) >= (raw["Cardiomegaly"] == 1)).all()
    assert filled.hierarchy_filled == {"Lung Opacity": 15_300,
                                       "Enlarged Cardiomediastinum": 14_618}


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
    assert "'COPD signs' 23,238" in lines and "not labelled by" not in lines
    assert f"masked 3,701 rows (all 14 labels not labelled): {MASKED_PRIOR}" in lines
    assert "labelled by (rows): Physician 38,958, RNN_model 119,850" in lines


# ---- small hand-written tables ---------------------------------------------------------------

def test_terms_views_ages_and_sex(tmp_path):
    root = write_table(tmp_path / "pc", [
        image(0, "['pulmonary edema']", Projection="AP_horizontal", PatientSex_DICOM="M"),
        image(1, "['hydropneumothorax', ' scoliosis', '']", Projection="L",
              PatientSex_DICOM="O"),
        image(2, "['normal', 'cardiomegaly']", PatientBirth="", Projection="AP"),
        image(3, "['normal', 'pacemaker']", PatientBirth="2020.0"),  # after the study: a typo
        image(4, "nan"),  # blank Labels
        image(5, "['callus rib fracture']", Projection="COSTAL"),
        image(6, "[]", PatientSex_DICOM="nan", StudyDate_DICOM="")])
    adapted = read_padchest(root, "physician")
    frame = adapted.frame

    def raw(label):
        return frame[raw_column(label)].fillna(0).tolist()  # blank (not mentioned) as 0

    assert raw("Edema") == [1, 0, 0, 0, -2]
    assert raw("Lung Opacity") == [0, 0, 0, 0, -2]  # its own terms only: no hierarchy
    assert raw("Pneumothorax") == raw("Pleural Effusion") == [0, 1, 0, 0, -2]
    assert raw("Enlarged Cardiomediastinum") == [0, 0, 0, 0, -2]
    assert raw("Cardiomegaly") == [0, 0, 1, 0, -2]
    assert raw("No Finding") == [0, 0, 0, 1, -2]  # not beside a finding; beside a device it is
    assert raw("Support Devices") == [0, 0, 0, 1, -2]
    assert frame[raw_column("Edema")].isna().tolist() == [False, True, True, True, False]
    assert adapted.unmapped_terms == {"scoliosis": 1}
    assert adapted.masked == {MASKED_EMPTY: 1}  # "[]": all 14 not labelled
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


def test_no_finding_follows_chexperts_rule_and_prior_study_rows_are_masked(tmp_path):
    root = write_table(tmp_path / "pc", [
        image(0, "['unchanged']"),  # "as in the prior study": says nothing of this film
        image(1, "['unchanged', 'cardiomegaly']"),  # says something: labelled
        image(2, "['COPD signs']"),  # a finding outside the 14: No Finding blank (CheXpert)
        image(3, "['suboptimal study']"),  # no finding of the patient: No Finding
        image(4, "['NSG tube', 'sternotomy']"),  # a device and a trace of surgery: No Finding
        image(5, "['normal', 'scoliosis']"),  # 'normal' beside a finding: blank
        image(6, "['normal']")])
    adapted = read_padchest(root, "physician")
    raw = adapted.frame[[raw_column(label) for label in LABELS]]
    assert (raw.iloc[0] == NOT_LABELLED).all() and not (raw.iloc[1:] == NOT_LABELLED).any().any()
    assert adapted.masked == {MASKED_PRIOR: 1}
    no_finding = adapted.frame[raw_column("No Finding")]
    assert no_finding.iloc[1:].fillna(0).tolist() == [0, 0, 1, 1, 0, 1]
    assert no_finding.iloc[[1, 2, 5]].isna().all()  # never an explicit 0: CheXpert writes none
    assert adapted.frame[raw_column("Cardiomegaly")].iloc[1] == 1


def test_the_label_source_keeps_the_physicians_rows_or_all(tmp_path):
    rows = [image(0, "['cardiomegaly']"), image(1, "['normal']", MethodLabel="RNN_model"),
            image(2, "['nodule']", MethodLabel="RNN_model")]
    root = write_table(tmp_path / "pc", rows)
    physician = read_padchest(root, "physician")  # config.Config's default
    assert physician.frame["Path"].tolist() == ["0/img0.png"]
    assert physician.label_sources == {"Physician": 1, "RNN_model": 0}
    assert list(physician.skipped.values()) == [2]
    assert "MethodLabel RNN_model" in list(physician.skipped)[0]
    every = read_padchest(root, label_source="all")
    assert len(every.frame) == 3 and every.label_sources == {"Physician": 1, "RNN_model": 2}
    assert every.skipped == {}
    assert Config().padchest_label_source == "physician"
    bad = write_table(tmp_path / "bad", [image(0), image(1, MethodLabel="Nurse")])
    with pytest.raises(PipelineError, match=r"line 3, column 'MethodLabel': 'Nurse' is not "
                                            r"Physician or RNN_model"):
        read_padchest(bad, "physician")


@pytest.mark.parametrize("name", LABELS_FILES)
def test_a_bad_labels_cell_names_its_line(tmp_path, name):
    # the first row's report spans two lines: the bad cell is on line 4, not 3
    rows = [image(0, Report="line one\nline two"), image(1, "['cardiomegaly'")]
    root = write_table(tmp_path / "pc", rows, name=name)
    with pytest.raises(PipelineError, match=r"line 4, column 'Labels': \"\['cardiomegaly'\""):
        read_padchest(root, "physician")
    for bad in ("'cardiomegaly'", "[1, 2]", "{'a': 1}"):
        root = write_table(tmp_path / bad[:3], [image(0), image(1, bad)], name=name)
        with pytest.raises(PipelineError, match=r"line 3, column 'Labels'.*list of report terms"):
            read_padchest(root, "physician")


def test_bad_tables_name_the_file_and_what_is_expected(tmp_path):
    with pytest.raises(PipelineError, match=r"no PadChest label table .*labels_160K_01\.02\.19"):
        read_padchest(tmp_path, "physician")
    root = write_table(tmp_path / "cols", [image(0)],
                       header=tuple(c for c in HEADER if c != "Projection"))
    with pytest.raises(PipelineError, match=r"lacks column\(s\) \['Projection'\]"):
        read_padchest(root, "physician")
    root = write_table(tmp_path / "birth", [image(0), image(1, PatientBirth="thirties")])
    with pytest.raises(PipelineError, match=r"line 3, column 'PatientBirth': 'thirties'"):
        read_padchest(root, "physician")
    root = write_table(tmp_path / "date", [image(0, StudyDate_DICOM="2014-09-15")])
    with pytest.raises(PipelineError, match=r"line 2, column 'StudyDate_DICOM'.*YYYYMMDD"):
        read_padchest(root, "physician")
    root = write_table(tmp_path / "dup", [image(0), image(0)])
    with pytest.raises(PipelineError, match=r"line 3, column 'ImageID'.*appears twice"):
        read_padchest(root, "physician")
