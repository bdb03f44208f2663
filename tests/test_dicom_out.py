"""--dicom_out's objects (cxr/inference/dicom_out.py) on real films: the shared radiographs (no
study UIDs, as anonymised exports often are) and pydicom's CT_small.dcm (a full header).

Each SR and Secondary Capture passes dciodvfy (Debian's dicom3tools) with no "Error" line; the
SR read back with pydicom and with highdicom holds exactly the findings, the model and the
references written; the Secondary Capture holds the overlay's pixels in the film's study. The
dciodvfy checks skip when /usr/bin/dciodvfy is absent, unless CXR_REQUIRE_DCIODVFY is set (CI).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from conftest import shared
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.inference.dicom_out import PRIVATE_SCHEME, Finding, ModelIdentity, dicom_outputs_note, \
    finding_code, write_secondary_capture, write_structured_report

DCIODVFY = Path("/usr/bin/dciodvfy")
MODEL = ModelIdentity("CheXpertNet densenet121", "demo-20261207 epoch 5", "3f2a9c0d1e2b4a5c")
SOURCES = ("xray_monochrome2.dcm", "xray_monochrome1.dcm", "CT_small.dcm")


def source_path(name: str) -> Path:
    """A shared radiograph, or one of pydicom's own test files."""
    if name == "CT_small.dcm":
        return Path(get_testdata_file(name))
    return shared(f"bad-inputs/images/{name}")


def findings(seed: int = 0) -> list[Finding]:
    """14 findings with full-precision probabilities and thresholds, positives and negatives."""
    rng = np.random.default_rng(seed)
    probabilities, thresholds = rng.random(len(LABELS)), rng.uniform(0.2, 0.6, len(LABELS))
    probabilities[:2] = thresholds[:2] + (0.01, -0.01)  # both decisions occur
    return [Finding(label, float(p), float(t), bool(p >= t))
            for label, p, t in zip(LABELS, probabilities, thresholds)]


def dciodvfy(path: Path) -> str:
    """dciodvfy's whole report on a file (it writes to stderr); skips when the tool is absent and
    CI does not require it."""
    if not DCIODVFY.exists():
        if os.environ.get("CXR_REQUIRE_DCIODVFY"):
            pytest.fail(f"CXR_REQUIRE_DCIODVFY is set but {DCIODVFY} is missing: "
                        f"apt-get install dicom3tools")
        pytest.skip(f"{DCIODVFY} not installed (apt-get install dicom3tools)")
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                            timeout=60)
    return result.stdout + result.stderr


def assert_valid(path: Path) -> None:
    report = dciodvfy(path)
    failures = [line for line in report.splitlines() if line.startswith(("Error", "Abort"))]
    assert not failures, f"dciodvfy {path}:\n{report}"


class Written(NamedTuple):
    source: Path
    header: pydicom.Dataset  # the source's own header
    findings: list[Finding]
    sr: Path
    sc: Path
    overlay: np.ndarray


@pytest.fixture(scope="module", params=SOURCES)
def written(request, tmp_path_factory) -> Written:
    """An SR and a Secondary Capture for one source film."""
    source = source_path(request.param)
    out = tmp_path_factory.mktemp("dicom_out") / "out"  # not there yet: the writers create it
    results = findings()
    overlay = np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    sr = write_structured_report(source, results, MODEL, out)
    sc = write_secondary_capture(source, overlay, "Pleural Effusion", MODEL, out)
    return Written(source, pydicom.dcmread(source, stop_before_pixels=True), results, sr, sc,
                   overlay)


# ---- validity -----------------------------------------------------------------------------------

def test_the_structured_report_passes_dciodvfy(written):
    assert_valid(written.sr)


def test_the_secondary_capture_passes_dciodvfy(written):
    assert_valid(written.sc)


def test_the_validation_helper_sees_errors():
    """The source films themselves lack Type 1 UIDs: the helper must report that."""
    report = dciodvfy(shared("bad-inputs/images/xray_monochrome2.dcm"))
    assert any(line.startswith("Error") for line in report.splitlines()), report


# ---- the structured report, read back -----------------------------------------------------------

def test_the_files_are_named_by_the_source_instance(written):
    uid = written.header.SOPInstanceUID
    assert written.sr.name == f"{uid}_sr.dcm"
    assert written.sr.read_bytes()[128:132] == b"DICM"  # a Part 10 file, preamble and all
    assert written.sc.name == f"{uid}_Pleural-Effusion_sc.dcm"
    assert sorted(path.name for path in written.sr.parent.iterdir()) == sorted(
        [written.sr.name, written.sc.name])  # no temporary file left behind


def test_the_report_is_in_the_source_study_and_references_the_film(written):
    ds = pydicom.dcmread(written.sr)
    header = written.header
    assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
    if "StudyInstanceUID" in header:
        assert ds.StudyInstanceUID == header.StudyInstanceUID
    assert ds.SeriesInstanceUID != header.get("SeriesInstanceUID")  # a new series
    assert ds.PatientID == header.PatientID
    [study] = ds.CurrentRequestedProcedureEvidenceSequence
    [series] = study.ReferencedSeriesSequence
    [instance] = series.ReferencedSOPSequence
    assert study.StudyInstanceUID == ds.StudyInstanceUID
    if "SeriesInstanceUID" in header:
        assert series.SeriesInstanceUID == header.SeriesInstanceUID
    assert (instance.ReferencedSOPInstanceUID, instance.ReferencedSOPClassUID) == (
        header.SOPInstanceUID, header.SOPClassUID)
    groups = hd.sr.srread(written.sr).content.get_image_measurement_groups()
    assert len(groups) == len(LABELS)
    for group in groups:
        [image] = group.source_images
        assert image.referenced_sop_instance_uid == header.SOPInstanceUID
        assert image.referenced_sop_class_uid == header.SOPClassUID


def test_highdicom_reads_back_every_finding_exactly(written):
    groups = hd.sr.srread(written.sr).content.get_image_measurement_groups()
    read = {}
    for group in groups:
        [probability] = group.get_measurements(name=codes.DCM.Probability)
        [threshold] = group.get_measurements(name=codes.DCM.ThresholdValue)
        [decision] = group.get_qualitative_evaluations(name=group.finding_type)
        assert probability.unit == codes.UCUM.NoUnits and threshold.unit == codes.UCUM.NoUnits
        read[group.tracking_identifier] = (group.finding_type, probability.value,
                                           threshold.value, decision.value)
    assert list(read) == list(LABELS)
    for finding in written.findings:
        code, probability, threshold, decision = read[finding.label]
        assert code == finding_code(finding.label)
        assert probability == pytest.approx(finding.probability, abs=1e-6)
        assert threshold == pytest.approx(finding.threshold, abs=1e-6)
        assert decision == (codes.SCT.Present if finding.positive else codes.SCT.Absent)


def content_items(item: pydicom.Dataset):
    """Every content item under `item`, depth first."""
    for child in item.get("ContentSequence", []):
        yield child
        yield from content_items(child)


def concept(item: pydicom.Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodingSchemeDesignator, code.CodeValue


def test_pydicom_reads_back_the_findings_and_the_model(written):
    """The same numbers through a plain walk of the content tree, and the model wherever named."""
    ds = pydicom.dcmread(written.sr)
    groups = [item for item in content_items(ds) if concept(item) == ("DCM", "125007")]
    assert len(groups) == len(LABELS)
    for group, finding in zip(groups, written.findings):
        children = list(content_items(group))
        numbers = {concept(item): float(item.MeasuredValueSequence[0].NumericValue)
                   for item in children if item.ValueType == "NUM"}
        assert numbers[("DCM", "122157")] == pytest.approx(finding.probability, abs=1e-6)
        assert numbers[("DCM", "122411")] == pytest.approx(finding.threshold, abs=1e-6)
        texts = {concept(item): item.TextValue for item in children if item.ValueType == "TEXT"}
        assert texts[("DCM", "112039")] == finding.label  # Tracking Identifier
        assert texts[("DCM", "111001")] == MODEL.name  # Algorithm Name
        assert texts[("DCM", "111003")] == MODEL.version  # Algorithm Version
        assert texts[("DCM", "111002")] == f"model_id={MODEL.model_id}"  # Algorithm Parameters
    observer = {concept(item): item.get("TextValue") for item in content_items(ds)
                if item.RelationshipType == "HAS OBS CONTEXT" and item.ValueType == "TEXT"}
    assert observer[("DCM", "121013")] == MODEL.name  # Device Observer Name
    assert observer[("DCM", "121015")] == MODEL.version  # Device Observer Model Name
    assert observer[("DCM", "121016")] == MODEL.model_id  # Device Observer Serial Number
    assert (ds.ManufacturerModelName, ds.SoftwareVersions, ds.DeviceSerialNumber) == (
        MODEL.name, MODEL.version, MODEL.model_id)


def test_the_model_is_the_device_observer_for_highdicom(written):
    sr = hd.sr.srread(written.sr)
    [context] = sr.content.get_observer_contexts(observer_type=codes.DCM.Device)
    device = context.observer_identifying_attributes
    assert (device.name, device.model_name, device.serial_number) == (
        MODEL.name, MODEL.version, MODEL.model_id)


def test_private_codes_are_declared_and_standard_ones_come_from_pydicom(written):
    ds = pydicom.dcmread(written.sr)
    assert [item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence] == [
        PRIVATE_SCHEME]
    assert finding_code("Cardiomegaly") == codes.SCT.Cardiomegaly
    assert finding_code("Pleural Effusion") == codes.SCT.PleuralEffusion
    codes_used = [finding_code(label) for label in LABELS]
    assert len({(code.scheme_designator, code.value) for code in codes_used}) == len(LABELS)
    assert {code.scheme_designator for code in codes_used} == {"SCT", PRIVATE_SCHEME}
    assert all(len(code.value) <= 16 for code in codes_used)  # SH


def test_the_distribution_check_is_in_every_group(tmp_path):
    source = source_path("xray_monochrome2.dcm")
    sr_path = write_structured_report(source, findings(), MODEL, tmp_path, in_distribution=False,
                                      ood_score=3.25)
    assert_valid(sr_path)
    in_distribution = hd.sr.CodedConcept("IN-TRAINING-DIST", PRIVATE_SCHEME, "x")
    score = hd.sr.CodedConcept("OOD-SCORE", PRIVATE_SCHEME, "x")
    for group in hd.sr.srread(sr_path).content.get_image_measurement_groups():
        [check] = group.get_qualitative_evaluations(name=in_distribution)
        assert check.value == codes.SCT.No
        [measured] = group.get_measurements(name=score)
        assert measured.value == pytest.approx(3.25)


def test_a_film_without_study_uids_gets_the_same_study_every_time(tmp_path):
    """The shared films have no StudyInstanceUID: their SR and overlays still share one study."""
    source = source_path("xray_monochrome1.dcm")
    first = pydicom.dcmread(write_structured_report(source, findings(), MODEL, tmp_path / "a"))
    second = pydicom.dcmread(write_structured_report(source, findings(), MODEL, tmp_path / "b"))
    overlay = np.zeros((8, 8, 3), np.uint8)
    sc = pydicom.dcmread(write_secondary_capture(source, overlay, "Edema", MODEL, tmp_path))
    assert first.StudyInstanceUID == second.StudyInstanceUID == sc.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID


# ---- the Secondary Capture ----------------------------------------------------------------------

def test_the_secondary_capture_holds_the_overlay_in_the_source_study(written):
    sc = pydicom.dcmread(written.sc)
    sr = pydicom.dcmread(written.sr)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == sr.StudyInstanceUID
    if "StudyInstanceUID" in written.header:
        assert sc.StudyInstanceUID == written.header.StudyInstanceUID
    assert sc.SeriesInstanceUID not in (written.header.get("SeriesInstanceUID"),
                                        sr.SeriesInstanceUID)
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    np.testing.assert_array_equal(sc.pixel_array, written.overlay)
    [source] = sc.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == written.header.SOPInstanceUID
    assert "Pleural Effusion" in sc.DerivationDescription
    assert MODEL.name in sc.DerivationDescription and MODEL.name in sc.SeriesDescription


def test_overlays_of_one_film_share_a_series(tmp_path):
    source = source_path("CT_small.dcm")
    overlay = np.zeros((8, 8, 3), np.uint8)
    paths = [write_secondary_capture(source, overlay, label, MODEL, tmp_path)
             for label in ("Edema", "Support Devices")]
    first, second = (pydicom.dcmread(path) for path in paths)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert paths[1].name.endswith("_Support-Devices_sc.dcm")


# ---- refusals and the note ----------------------------------------------------------------------

def test_a_jpeg_is_refused_naming_it(tmp_path):
    jpeg = shared("bad-inputs/images/cmyk_xray.jpg")
    with pytest.raises(PipelineError, match="cmyk_xray.jpg.*not a DICOM"):
        write_structured_report(jpeg, findings(), MODEL, tmp_path / "out")
    with pytest.raises(PipelineError, match="cmyk_xray.jpg"):
        write_secondary_capture(jpeg, np.zeros((8, 8, 3), np.uint8), "Edema", MODEL, tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_png_and_a_renamed_one_are_refused_naming_them(tmp_path):
    png = tmp_path / "film.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    with pytest.raises(PipelineError, match="film.png"):
        write_structured_report(png, findings(), MODEL, tmp_path / "out")
    renamed = tmp_path / "film.dcm"  # a DICOM suffix, PNG bytes
    renamed.write_bytes(png.read_bytes())
    with pytest.raises(PipelineError, match="film.dcm"):
        write_structured_report(renamed, findings(), MODEL, tmp_path / "out")


def test_a_dicom_without_pixels_is_refused(written, tmp_path):
    """An SR is a DICOM file but no film: no report on a report."""
    with pytest.raises(PipelineError, match=f"{written.sr.name}.*not an image"):
        write_structured_report(written.sr, findings(), MODEL, tmp_path)


def test_the_note_counts_dicom_and_other_inputs():
    out = Path("out")
    assert "3 films in out" in dicom_outputs_note(3, 0, out)
    assert "2 films in out" in dicom_outputs_note(2, 1, out)
    assert "1 film not DICOM" in dicom_outputs_note(2, 1, out)
    assert "not DICOM" not in dicom_outputs_note(3, 0, out)
    assert "none of the 4 films is a DICOM file" in dicom_outputs_note(0, 4, out)
