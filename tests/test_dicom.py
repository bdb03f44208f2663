"""DICOMs as hospitals export them: every compressed transfer syntax a PACS writes decodes to the
uncompressed file's pixels and predictions, predict.py carries what the header says about the
film, flags a header that is not a chest radiograph's, and lists the DICOMs it cannot use with
what to do.

The compressed files are encoded from the shared MONOCHROME2 radiograph (320 x 320, 12 bits in
16) once per module: RLE, JPEG-LS and JPEG 2000 with pydicom's encoders (Dataset.compress; the
pyjpegls and pylibjpeg-openjpeg plugins), JPEG Lossless and JPEG Baseline with python-gdcm,
which pydicom 3 cannot encode. predict.py runs once over all of them with a tiny random-weight
checkpoint; each syntax is its own parametrized test id (its pydicom keyword and UID).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import pytest

from conftest import shared, tiny_checkpoint
from cxr.data.imaging import ImageReadError, read_grayscale
from cxr.data.labels import LABELS

pydicom = pytest.importorskip("pydicom")
gdcm = pytest.importorskip("gdcm")  # python-gdcm: the JPEG Lossless and Baseline encoder here

SOURCE = "bad-inputs/images/xray_monochrome2.dcm"
EIGHT_BIT = "eight_bit.dcm"  # the source reduced to 8 bits: what JPEG Baseline can hold

# Lossless syntaxes must give identical stored values, identical 8-bit images and identical
# probabilities (exactly: all files run in one fp32 batch, identical inputs give identical rows).
# Lossy ones, measured on these files with tiny_checkpoint (seed 0, 64 px, fp32): the 8-bit image
# predict.py decodes differs from the uncompressed file's by at most 47 grey levels, 1.62 on
# average (JPEG Baseline at quality 75), 7 and 0.93 (JPEG 2000 at 10:1) and 0 (JPEG-LS NEAR=2:
# 2 of 4096 stored levels vanish in the 8-bit image); the probabilities by at most 2.2e-4,
# 4.9e-4 and 0. The tolerance is 4 times the largest; another X-ray (OTHER_XRAY) moves the same
# model's probabilities by 0.047, so it is not a model that ignores its input.
LOSSY_PROBABILITY_TOLERANCE = 2e-3
OTHER_XRAY = "nih-cxr-small/CheXpert-v1.0-small/valid/patient00001/study1/view1_frontal.jpg"


# ---- encoding the shared radiograph --------------------------------------------------------------

def pydicom_encoder(uid: str, **options) -> Callable[[Path, Path], None]:
    """Dataset.compress with pydicom's own encoder plugins (RLE, JPEG-LS, JPEG 2000)."""
    def encode(source: Path, target: Path) -> None:
        dataset = pydicom.dcmread(source)
        dataset.compress(uid, **options)
        dataset.save_as(target)
    return encode


def gdcm_encoder(syntax: str, quality: int | None = None) -> Callable[[Path, Path], None]:
    """gdcm.ImageChangeTransferSyntax to one of gdcm.TransferSyntax's syntaxes; `quality` sets
    the JPEG codec's lossy quality (JPEG Baseline)."""
    def encode(source: Path, target: Path) -> None:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        assert reader.Read(), f"gdcm cannot read {source}"
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
        if quality is not None:
            codec = gdcm.JPEGCodec()
            codec.SetLossless(False)
            codec.SetQuality(quality)
            change.SetUserCodec(codec)
        change.SetInput(reader.GetImage())
        assert change.Change(), f"gdcm cannot encode {source} as {syntax}"
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(target))
        assert writer.Write(), f"gdcm cannot write {target}"
    return encode


class Syntax(NamedTuple):
    uid: str
    encode: Callable[[Path, Path], None]
    lossless: bool
    reference: str = "original"  # the uncompressed file it was encoded from
    # of the 8-bit image predict.py decodes, against the reference's: largest, mean (grey levels)
    max_pixel_error: int = 0
    mean_pixel_error: float = 0.0
    max_stored_error: int | None = None  # of the stored values, where the syntax bounds it


SYNTAXES = {
    "RLELossless": Syntax("1.2.840.10008.1.2.5", pydicom_encoder("1.2.840.10008.1.2.5"), True),
    "JPEGLosslessP14": Syntax("1.2.840.10008.1.2.4.57", gdcm_encoder("JPEGLosslessProcess14"),
                              True),
    "JPEGLosslessSV1": Syntax("1.2.840.10008.1.2.4.70", gdcm_encoder("JPEGLosslessProcess14_1"),
                              True),
    "JPEGLSLossless": Syntax("1.2.840.10008.1.2.4.80", pydicom_encoder("1.2.840.10008.1.2.4.80"),
                             True),
    "JPEG2000Lossless": Syntax("1.2.840.10008.1.2.4.90",
                               pydicom_encoder("1.2.840.10008.1.2.4.90"), True),
    # lossy: JPEG-LS with each stored value within 2 of the original (NEAR=2, of 4096 levels)
    "JPEGLSNearLossless": Syntax("1.2.840.10008.1.2.4.81",
                                 pydicom_encoder("1.2.840.10008.1.2.4.81", jls_error=2), False,
                                 max_pixel_error=1, mean_pixel_error=0.1, max_stored_error=2),
    # lossy: JPEG 2000 at a 10:1 compression ratio, as PACS archives do for "visually lossless"
    "JPEG2000": Syntax("1.2.840.10008.1.2.4.91",
                       pydicom_encoder("1.2.840.10008.1.2.4.91", j2k_cr=[10]), False,
                       max_pixel_error=12, mean_pixel_error=1.5),
    # lossy: JPEG Baseline holds 8-bit samples only, so it is encoded from the source reduced to
    # 8 bits (EIGHT_BIT) and compared with that file, at libjpeg's usual quality 75
    "JPEGBaseline8Bit": Syntax("1.2.840.10008.1.2.4.50",
                               gdcm_encoder("JPEGBaselineProcess1", quality=75), False,
                               reference=EIGHT_BIT, max_pixel_error=64, mean_pixel_error=2.5),
}
LOSSLESS = [name for name, syntax in SYNTAXES.items() if syntax.lossless]
PARAMETERS = [pytest.param(name, id=f"{name}-{syntax.uid}") for name, syntax in SYNTAXES.items()]


def save_eight_bit(source: Path, target: Path) -> None:
    """The 12-bit source as 8-bit samples (the top 8 of its 12 bits), uncompressed."""
    dataset = pydicom.dcmread(source)
    dataset.PixelData = (dataset.pixel_array >> 4).astype(np.uint8).tobytes()
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.save_as(target)


def save_with(source: Path, target: Path, delete: tuple[str, ...] = (), **tags) -> Path:
    """The source with some header tags set or deleted."""
    dataset = pydicom.dcmread(source)
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    for keyword in delete:
        delattr(dataset, keyword)
    dataset.save_as(target)
    return target


def save_multi_frame(source: Path, target: Path) -> None:
    dataset = pydicom.dcmread(source)
    dataset.PixelData = dataset.PixelData * 3
    dataset.NumberOfFrames = 3
    dataset.save_as(target)


def save_colour(source: Path, target: Path) -> None:
    """The radiograph as an 8-bit RGB secondary capture (3 samples per pixel)."""
    dataset = pydicom.dcmread(source)
    grey = (dataset.pixel_array >> 4).astype(np.uint8)
    dataset.PixelData = np.repeat(grey[..., None], 3, axis=2).tobytes()
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.SamplesPerPixel, dataset.PlanarConfiguration = 3, 0
    dataset.PhotometricInterpretation = "RGB"
    dataset.save_as(target)


def save_unsupported_syntax(source: Path, target: Path) -> None:
    """Encapsulated pixel data under a transfer syntax pydicom has no decoder for (MPEG-2 video)."""
    dataset = pydicom.dcmread(source)
    dataset.compress("1.2.840.10008.1.2.5")
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
    dataset.save_as(target)


# Header tags of the films that test what predict.py copies and flags
HEADER = {"ViewPosition": "PA", "PatientSex": "F", "PatientAge": "065Y", "StudyDate": "20240131"}
NOT_CHEST = {"ct.dcm": {"Modality": "CT"}, "knee.dcm": {"BodyPartExamined": "KNEE"},
             "mr_head.dcm": {"Modality": "MR", "BodyPartExamined": "HEAD"}}
CHEST = {"dx_chest.dcm": {"Modality": "DX", "BodyPartExamined": "CHEST"}}
UNUSABLE = {  # file name -> (how to write it, words its one-line reason must hold)
    "multi_frame.dcm": (save_multi_frame, "multi-frame DICOM (3 frames)",
                        "export a single-frame grayscale image"),
    "colour.dcm": (save_colour, "colour DICOM (RGB, 3 samples per pixel)",
                   "export a single-frame grayscale image"),
    "no_pixels.dcm": (lambda s, t: save_with(s, t, delete=("PixelData",)),
                      "it holds no pixel data", "export the radiograph itself"),
    "mpeg2.dcm": (save_unsupported_syntax, "no pydicom decoder exists for its transfer syntax "
                  "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)",
                  "export it uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Every file of this module, written once: the encoded syntaxes, the header variants and
    the unusable DICOMs (the shared files themselves are read where they are)."""
    source = shared(SOURCE)
    out = tmp_path_factory.mktemp("dicoms")
    save_eight_bit(source, out / EIGHT_BIT)
    for name, syntax in SYNTAXES.items():
        syntax.encode(source if syntax.reference == "original" else out / syntax.reference,
                      out / f"{name}.dcm")
    save_with(source, out / "with_header.dcm", **HEADER)
    for name, tags in {**NOT_CHEST, **CHEST}.items():
        save_with(source, out / name, **tags)
    save_with(source, out / "no_modality.dcm", delete=("Modality",))  # absent: says nothing
    for name, (write, *_) in UNUSABLE.items():
        write(source, out / name)
    return out


class Run(NamedTuple):
    table: pd.DataFrame  # predictions.csv, indexed by file name
    errors: dict[str, str]  # predictions_errors.csv: file name -> reason
    stdout: str


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Run:
    """predict.py once over the folder, the shared source and a PNG, all in one batch."""
    import predict
    from config import Config
    from cxr.cli import run_cli

    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "run" / "best.pth")
    output = folder.parent / f"{folder.name}-out" / "predictions.csv"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        run_cli(predict.main, script="predict.py", defaults=Config(),
                argv=[str(folder), str(shared(SOURCE)), str(shared(OTHER_XRAY)),
                      str(shared("bad-inputs/images/gray16_xray.png")), "--checkpoint",
                      str(checkpoint), "--output", str(output), "--device", "cpu",
                      "--precision", "fp32", "--batch_size", "64", "--num_workers", "0"])
    table = pd.read_csv(output, keep_default_na=False, dtype={"StudyDate": str})
    table.index = table["path"].map(lambda path: Path(path).name)
    errors = pd.read_csv(output.with_name("predictions_errors.csv"), keep_default_na=False)
    return Run(table, dict(zip(errors["path"].map(lambda p: Path(p).name), errors["reason"])),
               stdout.getvalue())


def probabilities(run: Run, name: str) -> np.ndarray:
    return run.table.loc[name, list(LABELS)].to_numpy(dtype=np.float64)


def reference_name(name: str) -> str:
    reference = SYNTAXES[name].reference
    return Path(SOURCE).name if reference == "original" else reference


def reference_path(folder: Path, name: str) -> Path:
    reference = SYNTAXES[name].reference
    return shared(SOURCE) if reference == "original" else folder / reference


# ---- compressed transfer syntaxes ----------------------------------------------------------------

@pytest.mark.parametrize("name", PARAMETERS)
def test_compressed_syntax_decodes_like_the_uncompressed_file(folder, name):
    syntax = SYNTAXES[name]
    encoded = pydicom.dcmread(folder / f"{name}.dcm")
    assert encoded.file_meta.TransferSyntaxUID == syntax.uid  # the encoder wrote that syntax
    reference = pydicom.dcmread(reference_path(folder, name))
    stored = np.abs(encoded.pixel_array.astype(int) - reference.pixel_array.astype(int))
    assert encoded.pixel_array.dtype == reference.pixel_array.dtype
    if syntax.lossless:  # the stored values themselves, bit for bit
        assert stored.max() == 0
    else:  # it did lose something (else this would test nothing), within the syntax's bound
        assert stored.max() > 0 and stored.max() <= (syntax.max_stored_error or stored.max())
    error = np.abs(read_grayscale(folder / f"{name}.dcm").astype(int)
                   - read_grayscale(reference_path(folder, name)).astype(int))
    assert error.max() <= syntax.max_pixel_error and error.mean() <= syntax.mean_pixel_error


@pytest.mark.parametrize("name", PARAMETERS)
def test_compressed_syntax_gives_the_uncompressed_probabilities(run, name):
    found, expected = probabilities(run, f"{name}.dcm"), probabilities(run, reference_name(name))
    if SYNTAXES[name].lossless:
        assert np.array_equal(found, expected)
    else:
        assert np.abs(found - expected).max() <= LOSSY_PROBABILITY_TOLERANCE
    # the tolerance is far below what another X-ray changes: the model does look at the image
    assert np.abs(probabilities(run, Path(OTHER_XRAY).name) - expected).max() > \
        10 * LOSSY_PROBABILITY_TOLERANCE


# ---- what the header says ------------------------------------------------------------------------

def test_the_header_fields_are_copied_blank_when_absent(run):
    columns = [*HEADER, "header_warning"]
    assert list(run.table.columns[:7]) == ["path", "view", *columns]
    assert run.table.loc["with_header.dcm", list(HEADER)].to_dict() == HEADER
    assert run.table.loc["with_header.dcm", "view"] == "frontal"  # its ViewPosition PA
    for name in (Path(SOURCE).name, "gray16_xray.png"):  # a DICOM without them; not a DICOM
        assert (run.table.loc[name, columns] == "").all(), name


def test_a_dicom_that_is_not_a_chest_radiograph_is_flagged(run):
    warnings = run.table["header_warning"]
    assert warnings["ct.dcm"] == ("not a chest radiograph by its DICOM header: Modality CT "
                                  "(not CR or DX)")
    assert warnings["knee.dcm"].endswith("BodyPartExamined KNEE (not CHEST)")
    assert "Modality MR" in warnings["mr_head.dcm"] and "BodyPartExamined HEAD" in \
        warnings["mr_head.dcm"]
    flagged = set(warnings[warnings != ""].index)
    assert flagged == set(NOT_CHEST)  # CR, DX with CHEST, absent tags and PNGs are not flagged
    lines = [line for line in run.stdout.splitlines() if "not chest radiographs" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {len(NOT_CHEST)} film(s) are not")
    assert "marked in the header_warning column" in lines[0]
    assert np.isfinite(probabilities(run, "ct.dcm")).all()  # still scored, with the warning


def test_a_study_models_rows_join_their_views_headers(tmp_path):
    """A study-mode model's row holds each distinct header value of its views, in order."""
    import predict
    from config import Config
    from cxr.cli import run_cli

    source = shared(SOURCE)
    study = tmp_path / "patient00001" / "study1"
    study.mkdir(parents=True)
    save_with(source, study / "a.dcm", **HEADER)
    save_with(source, study / "b.dcm", **{**HEADER, "ViewPosition": "LL", "Modality": "CT"})
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth", view_mode="study", max_views=2)
    output = tmp_path / "predictions.csv"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        run_cli(predict.main, script="predict.py", defaults=Config(),
                argv=[str(tmp_path / "patient00001"), "--checkpoint", str(checkpoint), "--output",
                      str(output), "--device", "cpu", "--num_workers", "0"])
    row = pd.read_csv(output, keep_default_na=False, dtype=str).iloc[0]
    assert list(row.index[:8]) == ["study", "views", "n_views", *HEADER, "header_warning"]
    assert row["views"] == f"{study / 'a.dcm'}; {study / 'b.dcm'}"  # frontal first
    assert row["ViewPosition"] == "PA; LL" and row["PatientSex"] == "F"  # the same once
    assert row["StudyDate"] == "20240131" and "Modality CT" in row["header_warning"]
    assert "warning: 1 study(ies) hold films that are not chest radiographs" in stdout.getvalue()


# ---- DICOMs that cannot be used ------------------------------------------------------------------

@pytest.mark.parametrize("name", list(UNUSABLE))
def test_an_unusable_dicom_is_listed_with_what_to_do(run, folder, name):
    _, problem, advice = UNUSABLE[name]
    reason = run.errors[name]
    assert reason.startswith(f"cannot read DICOM image {folder / name}: ")
    assert problem in reason and advice in reason and "\n" not in reason
    assert f"skipped: {reason}" in run.stdout.splitlines()
    assert name not in run.table.index


def test_the_errors_file_lists_only_the_unusable_dicoms(run):
    assert set(run.errors) == set(UNUSABLE)
    last = run.stdout.strip().splitlines()[-1]
    assert f"{len(UNUSABLE)} unreadable file(s)" in last


def test_the_image_cache_lists_them_with_the_same_reasons(folder, run):
    from cxr.data.image_cache import _decode_chunk

    names = [*UNUSABLE, "JPEGLosslessSV1.dcm"]
    rows, images, errors = _decode_chunk((list(range(len(names))),
                                          [str(folder / name) for name in names], 32))
    assert [(row, Path(path).name) for row, path, _ in errors] == list(enumerate(UNUSABLE))
    assert [reason for *_, reason in errors] == [run.errors[name] for name in UNUSABLE]
    assert images[-1].std() > 20  # the compressed one was cached


@pytest.fixture
def jpeg_lossless_plugins_missing(monkeypatch):
    """JPEG Lossless SV1 as on a machine without pylibjpeg-libjpeg and python-gdcm: pydicom's
    decoder with both plugins re-added while their modules say they are unavailable, so that
    they register as missing their dependencies; re-added as they were afterwards."""
    from pydicom.pixels import get_decoder

    decoder = get_decoder("1.2.840.10008.1.2.4.70")
    plugins = {label: ("pydicom.pixels.decoders." + label, "_decode_frame")
               for label in decoder.available_plugins}

    def add_again() -> None:
        for label, path in plugins.items():
            decoder.remove_plugin(label)
            decoder.add_plugin(label, path)

    for _, (module, _) in plugins.items():
        monkeypatch.setattr(importlib.import_module(module), "is_available", lambda uid: False)
    add_again()
    yield decoder
    monkeypatch.undo()
    add_again()
    assert decoder.is_available


def test_a_syntax_without_an_installed_decoder_says_what_to_install(folder,
                                                                   jpeg_lossless_plugins_missing):
    assert not jpeg_lossless_plugins_missing.is_available
    path = folder / "JPEGLosslessSV1.dcm"
    with pytest.raises(ImageReadError) as error:
        read_grayscale(path)
    message = str(error.value)
    assert message.startswith(f"cannot read DICOM image {path}: no installed decoder for its "
                              "transfer syntax JPEG Lossless, Non-Hierarchical")  # pydicom's name
    assert "(1.2.840.10008.1.2.4.70): pip install pylibjpeg pylibjpeg-libjpeg (" in message
    assert "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg" in message  # pydicom's
    assert "\n" not in message
