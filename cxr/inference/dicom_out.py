"""DICOM results a PACS can store: the findings of one film as a Comprehensive SR, its Grad-CAM
overlays as Secondary Capture images, both filed in the film's own study.

The SR is a TID 1500 Measurement Report (highdicom) with one measurement group per finding: the
finding's code, its calibrated probability, its decision threshold and the decision (Present /
Absent), the model as the device observer and as the algorithm of each group, and the source
film as the image each group was measured on. A finding gets a SNOMED CT code only where
pydicom's code dictionary holds one that means exactly that observation; the others, and the
training-distribution check, are codes of this pipeline's private scheme (99CHEXPERT), declared
in each file's CodingSchemeIdentificationSequence. Only DICOM inputs get these files: a PNG or
JPEG has no study to file them in. docs/inference.md describes the objects and how to validate
them with dciodvfy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr.atomic import write_atomic
from cxr.data.imaging import DICOM_MAGIC_OFFSET, is_dicom
from cxr.data.labels import LABELS
from cxr.errors import PipelineError

MANUFACTURER = "cxr CheXpert pipeline"  # Manufacturer of every object (software, not a device)
SR_SERIES_NUMBER = 9901  # high numbers: PACS viewers list the derived series after the film's
SC_SERIES_NUMBER = 9902

# ---- codes ------------------------------------------------------------------------------------

PRIVATE_SCHEME = "99CHEXPERT"  # "99" prefix: a private coding scheme (DICOM PS3.16, 8.2)
CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME, name="CheXpert observations of the cxr pipeline",
    responsible_organization=MANUFACTURER)

# Findings whose CheXpert observation is exactly a concept in pydicom's SNOMED CT dictionary.
# The others have no such entry there (Consolidation, Pneumonia, Lung Opacity, Fracture, ...),
# or only a narrower or wider one (Discoid atelectasis; Edema and Pulmonary edema, while the
# CheXpert labeler's Edema also counts heart failure and vascular congestion), and get a
# private code.
STANDARD_FINDINGS = {
    "Cardiomegaly": codes.SCT.Cardiomegaly,
    "Pneumothorax": codes.SCT.Pneumothorax,
    "Pleural Effusion": codes.SCT.PleuralEffusion,
}
# The other eleven: private code values (SH: 16 characters at most), meaning the CheXpert name.
PRIVATE_FINDINGS = {
    "No Finding": "NO-FINDING",
    "Enlarged Cardiomediastinum": "ENL-CARDIOMED",
    "Lung Opacity": "LUNG-OPACITY",
    "Lung Lesion": "LUNG-LESION",
    "Edema": "EDEMA",
    "Consolidation": "CONSOLIDATION",
    "Pneumonia": "PNEUMONIA",
    "Atelectasis": "ATELECTASIS",
    "Pleural Other": "PLEURAL-OTHER",
    "Fracture": "FRACTURE",
    "Support Devices": "SUPPORT-DEVICES",
}
PROBABILITY = codes.DCM.Probability  # (122157, DCM): the calibrated probability
THRESHOLD = codes.DCM.ThresholdValue  # (122411, DCM): the decision threshold on it
NO_UNITS = codes.UCUM.NoUnits  # ("1", UCUM)
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent  # the decision
YES, NO = codes.SCT.Yes, codes.SCT.No
IN_DISTRIBUTION = hd.sr.CodedConcept("IN-TRAINING-DIST", PRIVATE_SCHEME,
                                     "Within the model's training distribution")
OOD_SCORE = hd.sr.CodedConcept("OOD-SCORE", PRIVATE_SCHEME, "Out-of-distribution score")
PROCEDURE = codes.SCT.ChestImaging  # (413815006, SCT) "Chest imaging (procedure)"
SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation  # (121322, DCM), CID 7202


class ModelIdentity(NamedTuple):
    """The model that made the findings, as it is named in every object."""
    name: str  # e.g. "CheXpertNet densenet121"
    version: str  # e.g. "demo-20261207 epoch 5"
    model_id: str  # fingerprint of the weights (checkpoint.model_id, hex)


class Finding(NamedTuple):
    """One observation's result for one film."""
    label: str  # CheXpert label name, e.g. "Pleural Effusion"
    probability: float  # calibrated probability, 0..1
    threshold: float  # decision threshold on the probability
    positive: bool  # probability >= threshold


def finding_code(label: str) -> hd.sr.CodedConcept:
    """The code of a CheXpert observation: SNOMED CT where an exact one exists, else private."""
    if label in STANDARD_FINDINGS:
        return hd.sr.CodedConcept.from_code(STANDARD_FINDINGS[label])
    if label not in PRIVATE_FINDINGS:
        raise PipelineError(f"no DICOM code for the observation {label!r}: --dicom_out knows "
                            f"the 14 CheXpert observations ({', '.join(LABELS)})")
    return hd.sr.CodedConcept(PRIVATE_FINDINGS[label], PRIVATE_SCHEME, label)


# ---- the source film --------------------------------------------------------------------------

# Type 2 attributes of the Patient and General Study modules: highdicom copies them from the
# source, which may lack them (anonymised exports); empty means "unknown" and is valid.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def read_source(source: Path) -> Dataset:
    """The header of a DICOM film (no pixels), with its study and series UIDs and the Type 2
    patient and study attributes present; PipelineError naming the file when it is not one."""
    source = Path(source)
    try:
        with open(source, "rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + 4)
    except OSError as error:
        raise PipelineError(f"{source}: cannot be read for --dicom_out ({error})") from error
    if not is_dicom(head, source):
        raise PipelineError(f"{source} is not a DICOM file: --dicom_out writes results only "
                            f"for DICOM inputs (it has no study to file them in)")
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)  # force: no preamble
        uids = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except (InvalidDicomError, AttributeError, KeyError, TypeError, ValueError, OSError,
            EOFError) as error:
        raise PipelineError(f"{source} is not a readable DICOM image ({error}): --dicom_out "
                            f"needs its SOPClassUID and SOPInstanceUID; re-export the film from "
                            f"the PACS") from error
    if not all(uids) or "Rows" not in ds:
        raise PipelineError(f"{source} is a DICOM file but not an image (no SOPInstanceUID or "
                            f"no pixel description): --dicom_out reports on images only")
    return with_study_attributes(ds)


def with_study_attributes(ds: Dataset) -> Dataset:
    """`ds` with the UIDs and Type 2 attributes the derived objects copy.

    A film without StudyInstanceUID or SeriesInstanceUID (Type 1, but absent from some
    anonymised exports and from the shared test films) gets UIDs derived from its
    SOPInstanceUID: the same on every run, so its SR and overlays share one study.
    """
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            setattr(ds, keyword, generate_uid(entropy_srcs=[keyword, str(ds.SOPInstanceUID)]))
    for keyword in TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def source_reference(ds: Dataset) -> Dataset:
    """A Source Image Sequence item naming the film an overlay was made from."""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(SOURCE_PURPOSE)]
    return item


# ---- the structured report --------------------------------------------------------------------

def device_observer(model: ModelIdentity) -> hd.sr.ObserverContext:
    """The model as the SR's observer: name, version as model name, model_id as serial number.
    Its UID is derived from model_id, so every report of the same weights names one device."""
    attributes = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["device", model.model_id]), name=model.name,
        manufacturer_name=MANUFACTURER, model_name=model.version, serial_number=model.model_id)
    return hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                 observer_identifying_attributes=attributes)


def algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                         parameters=[f"model_id={model.model_id}"])


def number(value: float, what: str) -> float:
    """A finite float for a NUM item (NaN or infinity has no DICOM encoding)."""
    value = float(value)
    if not math.isfinite(value):
        raise PipelineError(f"--dicom_out: the {what} is {value}, not a number a report can "
                            f"hold; check the checkpoint and thresholds.json")
    return value


def distribution_items(in_distribution: bool | None, ood_score: float | None,
                       ) -> tuple[list[hd.sr.QualitativeEvaluation], list[hd.sr.Measurement]]:
    """The training-distribution check as a Yes/No evaluation and its score, when given."""
    evaluations = [] if in_distribution is None else [
        hd.sr.QualitativeEvaluation(IN_DISTRIBUTION, YES if in_distribution else NO)]
    measurements = [] if ood_score is None else [
        hd.sr.Measurement(OOD_SCORE, number(ood_score, "out-of-distribution score"), NO_UNITS)]
    return evaluations, measurements


def finding_group(finding: Finding, ds: Dataset, model: ModelIdentity,
                  in_distribution: bool | None, ood_score: float | None,
                  ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one finding: its code, probability, threshold and decision on the film."""
    code = finding_code(finding.label)
    measurements = [
        hd.sr.Measurement(PROBABILITY, number(finding.probability, f"{finding.label} "
                                                                   "probability"), NO_UNITS),
        hd.sr.Measurement(THRESHOLD, number(finding.threshold, f"{finding.label} threshold"),
                          NO_UNITS)]
    evaluations = [hd.sr.QualitativeEvaluation(code, PRESENT if finding.positive else ABSENT)]
    more_evaluations, more_measurements = distribution_items(in_distribution, ood_score)
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=finding.label)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=code, algorithm_id=algorithm(model),
        measurements=measurements + more_measurements,
        qualitative_evaluations=evaluations + more_evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)])


def measurement_report(findings: Sequence[Finding], ds: Dataset, model: ModelIdentity,
                       in_distribution: bool | None, ood_score: float | None,
                       ) -> hd.sr.MeasurementReport:
    """TID 1500: the model as observer, one group per finding."""
    if not findings:
        raise PipelineError("--dicom_out: no findings to report (the checkpoint has no trained "
                            "observation)")
    context = hd.sr.ObservationContext(observer_device_context=device_observer(model))
    groups = [finding_group(finding, ds, model, in_distribution, ood_score)
              for finding in findings]
    return hd.sr.MeasurementReport(observation_context=context, procedure_reported=PROCEDURE,
                                   imaging_measurements=groups)


def write_structured_report(source: Path, findings: Sequence[Finding], model: ModelIdentity,
                            out_dir: Path, in_distribution: bool | None = None,
                            ood_score: float | None = None) -> Path:
    """A Comprehensive SR (highdicom, TID 1500 Measurement Report) for one DICOM input, in its
    study and a new series: out_dir/<SOPInstanceUID of the source>_sr.dcm.

    Each finding is one measurement group (probability, threshold, Present/Absent) referencing
    the source film; `in_distribution` and `ood_score`, when given, are added to every group so
    that each finding is read with the check of its film. PipelineError for a non-DICOM source.
    """
    ds = read_source(source)
    report = measurement_report(findings, ds, model, in_distribution, ood_score)
    sr = hd.sr.ComprehensiveSR(
        evidence=[ds], content=report[0], series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=f"AI findings, {model.name}"[:64],
        manufacturer_model_name=model.name[:64], software_versions=model.version[:64],
        device_serial_number=model.model_id[:64], coding_schemes=[CODING_SCHEME])
    return save(sr, Path(out_dir) / f"{ds.SOPInstanceUID}_sr.dcm")


# ---- the Secondary Capture --------------------------------------------------------------------

def write_secondary_capture(source: Path, overlay: np.ndarray, label: str, model: ModelIdentity,
                            out_dir: Path) -> Path:
    """The Grad-CAM overlay (H x W x 3 uint8 RGB) as a Secondary Capture image in the source's
    study: out_dir/<SOPInstanceUID>_<label-with-dashes>_sc.dcm.

    The overlays of one film by one model share a series (its UID derived from both), each
    numbered by its observation; the image names the source film in its Source Image Sequence.
    """
    overlay = np.ascontiguousarray(overlay)
    if overlay.dtype != np.uint8 or overlay.ndim != 3 or overlay.shape[2] != 3:
        raise PipelineError(f"--dicom_out: the {label} overlay of {source} is {overlay.dtype} "
                            f"{overlay.shape}, not H x W x 3 uint8 RGB")
    ds = read_source(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ds, pixel_array=overlay, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"),  # replaced just below
        series_instance_uid=generate_uid(entropy_srcs=["grad-cam", str(ds.SOPInstanceUID),
                                                       model.model_id]),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=LABELS.index(label) + 1 if label in LABELS else 1,
        manufacturer=MANUFACTURER, series_description=f"Grad-CAM, {model.name}"[:64],
        manufacturer_model_name=model.name[:64], software_versions=model.version[:64],
        device_serial_number=model.model_id[:64])
    # highdicom asks for an orientation; the film's own (often absent: empty = unknown, Type 2C)
    # is the truth, the overlay being the whole film resized.
    sc.PatientOrientation = ds.get("PatientOrientation", "")
    copy_body_part(ds, sc)
    sc.DerivationDescription = (f"Grad-CAM overlay of {label} (red = strongest evidence) by "
                                f"{model.name} {model.version}, model_id {model.model_id}")
    sc.SourceImageSequence = [source_reference(ds)]
    return save(sc, Path(out_dir) / f"{ds.SOPInstanceUID}_{dashed(label)}_sc.dcm")


def copy_body_part(ds: Dataset, sc: Dataset) -> None:
    """The film's BodyPartExamined and Laterality on its overlay. Laterality (Type 2C) is absent
    for a chest, empty (unknown) when the film names no body part, as dciodvfy requires."""
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if body_part:
        sc.BodyPartExamined = body_part
    if ds.get("Laterality"):
        sc.Laterality = ds.Laterality
    elif body_part != "CHEST":
        sc.Laterality = ""


def dashed(label: str) -> str:
    """'Pleural Effusion' -> 'Pleural-Effusion' (a file-name part)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")


def save(dataset: Dataset, path: Path) -> Path:
    """Write a DICOM Part 10 file atomically (out_dir created): highdicom sets the preamble and
    the file meta information, which pydicom 2 and 3 both write as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dataset.save_as)
    return path


def dicom_outputs_note(n_dicom: int, n_other: int, out_dir: Path) -> str:
    """The one line predict.py prints about --dicom_out: where the objects went, and how many
    inputs got none because they are not DICOM files."""
    def films(n: int) -> str:
        return f"{n} film" if n == 1 else f"{n} films"

    if n_dicom == 0:
        return (f"--dicom_out: nothing written to {out_dir}: none of the {films(n_other)} is a "
                f"DICOM file (a PNG or JPEG belongs to no study to file results in)")
    note = (f"--dicom_out: DICOM results of {films(n_dicom)} in {out_dir}: a structured report "
            f"<SOPInstanceUID>_sr.dcm, and <SOPInstanceUID>_<finding>_sc.dcm per Grad-CAM overlay")
    if n_other:
        note += f"; {films(n_other)} not DICOM, left out (no study to file results in)"
    return note
