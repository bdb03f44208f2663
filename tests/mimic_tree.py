"""A small MIMIC-CXR-JPG 2.0.0 tree in the layout PhysioNet ships (cxr/data/mimic.py), for tests.

    write_mimic_tree(root)  ->  counts the tests check against

The three tables as .csv.gz with their published columns and column orders, and small grayscale
JPEGs under files/p1X/p1XXXXXXX/s5XXXXXXX/<dicom_id>.jpg. Each subject has 2 or 3 studies; a
study is PA + LATERAL, or a portable AP (+ LATERAL one time in two). The known cases:
- the first study: Cardiomegaly and Atelectasis positive with their parents (Enlarged
  Cardiomediastinum, Lung Opacity) blank and 0.0: --label_hierarchy fill_blank makes the blank
  parent positive and must leave the explicit 0.0 as it is;
- one lateral film is LL (left lateral) and one extra image has ViewPosition blank;
- the last subject's last study has images but no label row;
- every label mixes 1.0, 0.0, -1.0 and blank;
- the split is by subject, in turn: of every 5 subjects 3 train, 1 validate, 1 test (a test
  split needs n_subjects >= 5; the known cases above need n_subjects >= 2).
The images carry a learnable signal: a bright central "heart" that is wider and brighter for
Cardiomegaly positive studies (uncertain and blank look negative), and a bright lower band for
Pleural Effusion positive ones.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

LABEL_ORDER = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
               "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
               "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
               "Support Devices")  # the published column order (alphabetical), not CheXpert's
METADATA_HEADER = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                   "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                   "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                   "PatientOrientationCodeSequence_CodeMeaning")
VALUES = ("1.0", "0.0", "-1.0", "")  # a CheXpert-labeler cell
VALUE_ODDS = (0.15, 0.2, 0.1, 0.55)  # of VALUES, an abnormal study's findings
NOT_FINDINGS = ("No Finding", "Support Devices")
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral",
                "LL": "left lateral", "": ""}
PROCEDURE = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
HIERARCHY_CASE = {"Cardiomegaly": "1.0", "Enlarged Cardiomediastinum": "", "Atelectasis": "1.0",
                  "Lung Opacity": "0.0"}
SPLIT_OF = ("train", "train", "train", "validate", "test")  # by subject, in turn


def dicom_id(rng: np.random.Generator) -> str:
    """'02aa804e-bde0afdd-112c0b34-7bc16630-4e384014': five groups of 8 hex digits."""
    return "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(5))


def study_labels(rng: np.random.Generator, fixed: dict[str, str]) -> dict[str, str]:
    """One study's cells: a third of the studies normal (findings 0.0 or blank), the others a
    mix of 1.0, 0.0, -1.0 and blank (Cardiomegaly more often positive); then `fixed`. No Finding
    is positive when nothing but Support Devices is positive or uncertain (CheXpert's rule)."""
    normal = rng.random() < 1 / 3
    labels = {label: str(rng.choice(("0.0", ""), p=(0.3, 0.7)) if normal else
                         rng.choice(VALUES, p=VALUE_ODDS)) for label in LABEL_ORDER}
    if not normal:
        labels["Cardiomegaly"] = str(rng.choice(VALUES, p=(0.45, 0.3, 0.1, 0.15)))
    labels["Support Devices"] = str(rng.choice(VALUES, p=VALUE_ODDS))
    labels.update(fixed)
    findings = {labels[label] for label in LABEL_ORDER if label not in NOT_FINDINGS}
    labels["No Finding"] = "" if {"1.0", "-1.0"} & findings else "1.0"
    return labels


def film(rng: np.random.Generator, side: int, labels: dict[str, str], lateral: bool) -> np.ndarray:
    """A grayscale film: noise, a central disc (wider and brighter with Cardiomegaly), a bright
    lower band with Pleural Effusion; lateral films are darker and narrower."""
    y, x = np.mgrid[0:side, 0:side] / side
    image = 50 + 20 * rng.standard_normal((side, side))
    big = labels["Cardiomegaly"] == "1.0"
    radius = (0.30 if big else 0.16) * (0.7 if lateral else 1.0)
    image += np.where((x - 0.5) ** 2 + (y - 0.55) ** 2 < radius ** 2, 150 if big else 110, 0)
    if labels["Pleural Effusion"] == "1.0":
        image += np.where(y > 0.8, 60, 0)
    return np.clip(image - (15 if lateral else 0), 0, 255).astype(np.uint8)


def write_gz_csv(path: Path, header: tuple[str, ...], rows: list[dict]) -> None:
    lines = [",".join(header)] + [",".join(str(row[column]) for column in header)
                                  for row in rows]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def write_mimic_tree(root: Path, n_subjects: int = 12, seed: int = 0,
                     image_side: int = 64) -> dict:
    """Write the tree under `root`; returns what a test checks: images (metadata rows), kept
    (rows read_mimic keeps), frontal, lateral, skipped (reason fragment -> rows), studies,
    labelled_studies, subjects, split (official split -> kept rows), hierarchy_study (the
    study_id of the first study) and unlabelled_study."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    first_digits = [10 + i % 10 for i in range(n_subjects)]
    subject_ids = [digits * 10**6 + int(n) for digits, n in
                   zip(first_digits, rng.choice(10**6, n_subjects, replace=False))]
    study_numbers = iter(50_000_000 + rng.choice(10**7, 3 * n_subjects + 1, replace=False))
    metadata, label_rows, split_rows = [], [], []
    counts = {"frontal": 0, "lateral": 0, "blank": 0, "unlabelled": 0,
              "split": {"train": 0, "test": 0}}
    studies = []
    for s, subject in enumerate(subject_ids):
        for k in range(int(rng.integers(2, 4))):
            studies.append((s, subject, int(next(study_numbers)), k))
    for n, (s, subject, study, k) in enumerate(studies):
        # the first study: children positive, parents not (the hierarchy's case)
        labels = study_labels(rng, HIERARCHY_CASE if n == 0 else {})
        frontal = "AP" if n % 3 == 2 else "PA"
        views = [frontal] + (["LATERAL"] if frontal == "PA" or n % 2 else [])
        if n == 1:
            views = ["PA", "LL", ""]  # a left lateral, and an image whose view nobody recorded
        labelled = n != len(studies) - 1  # the last study has no label row
        if labelled:
            label_rows.append({"subject_id": subject, "study_id": study, **labels})
        split = SPLIT_OF[s % len(SPLIT_OF)]
        folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        for view in views:
            dicom = dicom_id(rng)
            lateral = view in ("LATERAL", "LL")
            Image.fromarray(film(rng, image_side, labels, lateral)).save(
                folder / f"{dicom}.jpg", quality=90)
            metadata.append({
                "dicom_id": dicom, "subject_id": subject, "study_id": study,
                "PerformedProcedureStepDescription": PROCEDURE[frontal], "ViewPosition": view,
                "Rows": image_side, "Columns": image_side,
                "StudyDate": 21800506 + 10_000 * k, "StudyTime": f"{213014.531 + n:.3f}",
                "ProcedureCodeSequence_CodeMeaning": PROCEDURE[frontal],
                "ViewCodeSequence_CodeMeaning": VIEW_MEANING[view],
                "PatientOrientationCodeSequence_CodeMeaning": "Erect" if view else ""})
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                               "split": split})
            if not labelled:
                counts["unlabelled"] += 1
            elif not view:
                counts["blank"] += 1
            else:
                counts["lateral" if lateral else "frontal"] += 1
                counts["split"]["test" if split == "test" else "train"] += 1
    write_gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ("subject_id", "study_id",
                                                             *LABEL_ORDER), label_rows)
    write_gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER, metadata)
    write_gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz",
                 ("dicom_id", "study_id", "subject_id", "split"), split_rows)
    return {"images": len(metadata), "kept": counts["frontal"] + counts["lateral"],
            "frontal": counts["frontal"], "lateral": counts["lateral"],
            "skipped": {"without a label row": counts["unlabelled"],
                        "ViewPosition blank": counts["blank"]},
            "studies": len(studies), "labelled_studies": len(label_rows),
            "subjects": n_subjects, "split": counts["split"],
            "hierarchy_study": f"p{studies[0][1]}/s{studies[0][2]}",
            "unlabelled_study": f"p{studies[-1][1]}/s{studies[-1][2]}"}
