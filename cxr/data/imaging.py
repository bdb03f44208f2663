"""Reading radiographs as 8-bit grayscale arrays, whatever their format (JPEG, PNG, TIFF, DICOM
uncompressed or in any compressed transfer syntax a PACS exports) or pixel mode; and what a
DICOM header says about the film.

Kept free of torch so that CSV-only stages start quickly.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, NamedTuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import PipelineError

cv2.setNumThreads(1)  # DataLoader workers are the parallelism; OpenCV threads would oversubscribe

MIN_SIDE = 32  # pixels; smaller images are not radiographs (a 1 x 1 placeholder, a thumbnail)
MAX_ASPECT = 4.0  # chest films are near square; a 3000 x 12 strip is a broken export


class ImageReadError(PipelineError):
    """An image that cannot be used; the message names the file and the reason."""


# ---- reading one image --------------------------------------------------------------------------

def _stretch(array: np.ndarray) -> np.ndarray:
    """Values from the array's own min..max to 0..1 (a flat image becomes 0)."""
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array, dtype=np.float64)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(unit * 255.0).astype(np.uint8)


def _to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> 8-bit grayscale array.

    High bit-depth images (16-bit PNG, 32-bit int/float TIFF) are stretched from their own
    min..max to 0..255: 16-bit radiographs often use only 10-12 bits, so dividing by 65535
    would leave a nearly black image.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(_stretch(np.asarray(img, dtype=np.float64)))
    if img.mode != "L":
        img = img.convert("L")  # RGB, RGBA (alpha dropped), CMYK, P, LA, 1
    return np.asarray(img, dtype=np.uint8)


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
# OpenCV flags that decode a JPEG at 1/k of its size inside libjpeg's DCT, far faster than
# decoding at full size and shrinking afterwards.
REDUCED_GRAYSCALE = {8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                     2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 1: cv2.IMREAD_GRAYSCALE}


def _fast_jpeg(data: bytes, img: Image.Image, size_hint: int | None) -> np.ndarray | None:
    """OpenCV decode of a complete grayscale/RGB JPEG; None leaves the file to PIL.

    PIL has already parsed the header (size, mode, decompression-bomb check). A file without
    its end marker is truncated: OpenCV would return it half grey with only a warning, so it
    goes to PIL, which raises an error naming the problem. CMYK JPEGs also go to PIL.
    """
    if img.format != "JPEG" or img.mode not in ("L", "RGB") or \
            not data.rstrip(b"\0").endswith(JPEG_END):
        return None
    shorter = min(img.size)
    factor = next(k for k in REDUCED_GRAYSCALE if k == 1 or (size_hint and shorter // k >= size_hint))
    return cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED_GRAYSCALE[factor])


# ---- DICOM --------------------------------------------------------------------------------------

DICOM_SUFFIXES = (".dcm", ".dicom")
# File suffixes taken for radiographs (predict.py's folders, score.py's image keys).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", *DICOM_SUFFIXES, ".tif", ".tiff", ".bmp")
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"  # after the 128-byte preamble of a Part 10 file


def is_dicom(data: bytes, name: str | Path = "") -> bool:
    """A DICOM file by its 'DICM' marker at byte 128, or by its suffix (files without preamble)."""
    return (data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
            or Path(name).suffix.lower() in DICOM_SUFFIXES)


# What to install for each compressed transfer syntax (by UID; pydicom is imported lazily, so
# these are strings). pydicom decodes them through plugins: pylibjpeg with pylibjpeg-libjpeg or
# pylibjpeg-openjpeg, pyjpegls, or python-gdcm for all of them (requirements.txt lists each).
LIBJPEG, OPENJPEG = "pylibjpeg pylibjpeg-libjpeg", "pylibjpeg pylibjpeg-openjpeg"
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": LIBJPEG,  # JPEG Baseline 8-bit
    "1.2.840.10008.1.2.4.51": LIBJPEG,  # JPEG Extended 12-bit
    "1.2.840.10008.1.2.4.57": LIBJPEG,  # JPEG Lossless P14
    "1.2.840.10008.1.2.4.70": LIBJPEG,  # JPEG Lossless SV1, the commonest PACS export
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near Lossless
    "1.2.840.10008.1.2.4.90": OPENJPEG,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": OPENJPEG,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": OPENJPEG,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": OPENJPEG,  # HTJ2K
}
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
EXPORT_ONE_GRAY_FRAME = "export a single-frame grayscale image (MONOCHROME1 or MONOCHROME2)"


def one_line(message: object) -> str:
    """pydicom's messages span lines (one per plugin): one line for errors.csv and the log."""
    return " ".join(str(message).split())


def decoder_problem(uid) -> str | None:
    """Why no installed pydicom decoder handles this transfer syntax, and what to do; None when
    one does (pydicom.pixels.get_decoder: one decoder per syntax, available when at least one
    of its plugins has its dependencies installed)."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:  # a syntax pydicom has no decoder for at all (MPEG video, ...)
        return (f"no pydicom decoder exists for its transfer syntax {uid.name} ({uid}): export it "
                "uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE")
    if decoder.is_available:
        return None
    missing = "; ".join(decoder.missing_dependencies) or "no decoder plugin installed"
    packages = DECODER_PACKAGES.get(str(uid))
    install = f"pip install {packages}" if packages else "pip install -r requirements.txt"
    return f"no installed decoder for its transfer syntax {uid.name} ({uid}): {install} ({missing})"


def dicom_problem(ds) -> str | None:
    """Why a DICOM dataset is not one decodable grayscale radiograph (from its header alone,
    before any pixel is decoded), with what to do; None when it is."""
    if "PixelData" not in ds:
        return ("it holds no pixel data (a report, presentation state or other non-image "
                "object): export the radiograph itself")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        return "its header has no Rows or Columns: the export is damaged; export it again"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if int(rows) * int(columns) * frames > 2 * Image.MAX_IMAGE_PIXELS:  # PIL's limit on others
        return (f"{columns} x {rows} x {frames} px could be a decompression bomb attack; "
                "refusing to decode it")
    if frames != 1:
        return f"multi-frame DICOM ({frames} frames), not a single radiograph: " \
               f"{EXPORT_ONE_GRAY_FRAME}"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or (photometric and photometric not in GRAYSCALE):
        return (f"colour DICOM ({photometric or 'no PhotometricInterpretation'}, {samples} "
                f"samples per pixel), not a grayscale radiograph: {EXPORT_ONE_GRAY_FRAME}")
    uid = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    return decoder_problem(uid) if uid else None  # without one, pydicom's own error tells


def _dicom_gray(ds) -> np.ndarray:
    """A DICOM radiograph (one grayscale frame, dicom_problem checked) as 8-bit grayscale,
    shown the way a viewer shows it (bright = dense).

    Rescale / Modality LUT first (stored values -> physical units), then the VOI LUT or window
    the file asks for (pydicom implements both per the standard), then the image's own
    min..max stretched to 0..255 as for 16-bit PNGs. MONOCHROME1 stores dense as dark: it is
    inverted so that it matches MONOCHROME2 and the JPEGs the model was trained on. Compressed
    pixel data (JPEG, JPEG-LS, JPEG 2000, RLE) go through pydicom's decoder of the file's
    transfer syntax.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise ValueError(f"the pixel data decode to a {pixels.shape} array, not one grayscale "
                         f"image: {EXPORT_ONE_GRAY_FRAME}")
    unit = _stretch(apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64))
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        unit = 1.0 - unit
    return _to_uint8(unit)


# DICOM ViewPosition values (PS3.16 CID 4010 and what CheXpert's AP/PA column holds) by projection.
LATERAL_POSITIONS = {"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"}
FRONTAL_POSITIONS = {"AP", "PA", "APS", "PAS"}
# What a chest radiograph's header says when it says: Modality (0008,0060) computed or digital
# radiography, BodyPartExamined (0018,0015) CHEST (PS3.16 CID 4031's code meaning).
CHEST_MODALITIES = ("CR", "DX")
CHEST_BODY_PARTS = ("CHEST",)


def view_from_orientation(orientation) -> str | None:
    """PatientOrientation (row direction, column direction): the rows of a frontal film run
    toward the patient's left or right (L/R), those of a lateral film toward the front or the
    back (A/P)."""
    if not orientation or len(orientation) < 1:
        return None
    rows = str(orientation[0]).upper()
    if rows[:1] in ("A", "P"):
        return "lateral"
    if rows[:1] in ("L", "R"):
        return "frontal"
    return None


class DicomHeader(NamedTuple):
    """What a DICOM header says about the film; blank where it does not say (and for files that
    are not DICOM: NO_HEADER). Values as written in the file: PatientAge as DICOM's AS
    ("065Y"), StudyDate as its DA (YYYYMMDD)."""
    view_position: str = ""  # ViewPosition: AP, PA, LL, ...
    patient_orientation: tuple[str, ...] = ()  # PatientOrientation: row, column directions
    patient_sex: str = ""  # PatientSex: M, F, O
    patient_age: str = ""  # PatientAge
    study_date: str = ""  # StudyDate
    modality: str = ""  # Modality: CR, DX, CT, ...
    body_part: str = ""  # BodyPartExamined: CHEST, ...


NO_HEADER = DicomHeader()


def _text(ds, keyword: str) -> str:
    """One element's value as text, blank when absent or empty."""
    return str(ds.get(keyword, "") or "").strip()


def _values(value) -> tuple[str, ...]:
    """A multi-valued element (pydicom's MultiValue, or a str when it holds one value) as
    strings; () when absent or empty."""
    if not value:
        return ()
    return (str(value),) if isinstance(value, str) else tuple(str(item) for item in value)


def read_dicom_header(source: bytes | BinaryIO) -> DicomHeader | None:
    """The header of a DICOM file (its bytes, or an open binary file), read up to the pixel data
    (stop_before_pixels: nothing is decoded); None when it cannot be parsed (the pixel decoder
    reports such files, naming the problem)."""
    import pydicom  # imported here: only DICOM inputs pay its import time (CSV stages never do)
    from pydicom.errors import InvalidDicomError

    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        ds = pydicom.dcmread(handle, stop_before_pixels=True, force=True)  # force: no preamble
        return DicomHeader(
            _text(ds, "ViewPosition").upper(), _values(ds.get("PatientOrientation", None)),
            _text(ds, "PatientSex"), _text(ds, "PatientAge"), _text(ds, "StudyDate"),
            _text(ds, "Modality").upper(), _text(ds, "BodyPartExamined").upper())
    except (InvalidDicomError, AttributeError, KeyError, TypeError, ValueError, OSError,
            EOFError):
        return None


def header_view(header: DicomHeader) -> str | None:
    """"frontal" or "lateral" from ViewPosition, else PatientOrientation; None when neither says."""
    if header.view_position in LATERAL_POSITIONS:
        return "lateral"
    if header.view_position in FRONTAL_POSITIONS:
        return "frontal"
    return view_from_orientation(header.patient_orientation)


def not_chest_reason(header: DicomHeader) -> str:
    """Why the header says this is not a chest radiograph ("" when it does not say so): a
    Modality other than CR/DX, or a BodyPartExamined other than CHEST. Absent tags say nothing."""
    reasons = []
    if header.modality and header.modality not in CHEST_MODALITIES:
        reasons.append(f"Modality {header.modality} (not {' or '.join(CHEST_MODALITIES)})")
    if header.body_part and header.body_part not in CHEST_BODY_PARTS:
        reasons.append(f"BodyPartExamined {header.body_part} (not "
                       f"{' or '.join(CHEST_BODY_PARTS)})")
    return "; ".join(reasons)


def view_from_name(name: str | Path) -> str | None:
    """CheXpert names its films view1_frontal.jpg, view2_lateral.jpg."""
    stem = Path(name).stem.lower()
    if "lateral" in stem:
        return "lateral"
    if "frontal" in stem:
        return "frontal"
    return None


def _read_dicom(data: bytes, name: str | Path) -> np.ndarray:
    """A DICOM file's one grayscale frame, or ImageReadError naming the file, the problem and
    what to do (a colour, multi-frame or pixel-less file, a transfer syntax no installed
    decoder handles: dicom_problem)."""
    import pydicom  # imported here: only DICOM inputs pay its import time (CSV stages never do)
    from pydicom.errors import InvalidDicomError

    # pydicom reports a damaged file with any of these (a missing tag is an AttributeError, a
    # corrupt codestream a RuntimeError from the plugin, ...)
    damaged = (InvalidDicomError, AttributeError, KeyError, TypeError, ValueError, OSError,
               NotImplementedError, RuntimeError, EOFError)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)  # force: files without the preamble
        problem = dicom_problem(ds)
        if problem is None:
            return _dicom_gray(ds)
    except damaged as err:
        problem = one_line(err)
    raise ImageReadError(f"cannot read DICOM image {name}: {problem}")


def _read_other(data: bytes, name: str | Path, size_hint: int | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            array = _fast_jpeg(data, img, size_hint)
            if array is None:
                if size_hint and img.format == "JPEG":
                    img.draft("L", (size_hint, size_hint))
                array = _to_uint8_gray(img)
        return array
    except UnidentifiedImageError:  # PIL's message names only its in-memory file object
        why = "the file is empty (0 bytes)" if not data else \
            f"not an image, or damaged ({len(data):,} bytes)"
        raise ImageReadError(f"cannot read image {name}: cannot identify an image format: "
                             f"{why}") from None
    except (Image.DecompressionBombError, OSError, ValueError) as err:
        raise ImageReadError(f"cannot read image {name}: {err}") from None


# ---- any file -----------------------------------------------------------------------------------

def decode_grayscale(data: bytes, name: str | Path, size_hint: int | None = None) -> np.ndarray:
    """The bytes of an image file (JPEG, PNG, TIFF, ... or DICOM) as an 8-bit grayscale H x W
    array, or raise ImageReadError naming it (`name` is its path or upload name)."""
    if is_dicom(data, name):
        array = _read_dicom(data, name)
    else:
        array = _read_other(data, name, size_hint)
    height, width = array.shape
    if min(height, width) < MIN_SIDE or max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageReadError(f"image {name} is {width} x {height} px: too small or too elongated "
                             f"to be a chest radiograph (need sides >= {MIN_SIDE} px, aspect <= "
                             f"{MAX_ASPECT:g})")
    return array


def read_grayscale(path: str | Path, size_hint: int | None = None) -> np.ndarray:
    """Read an image file as an 8-bit grayscale H x W array, or raise ImageReadError naming it.

    `size_hint` lets large JPEGs decode at a reduced scale that still keeps both sides at least
    that many pixels: a 2,800 px CheXpert original decodes several times faster.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"image not found: {path}") from None
    except OSError as err:  # a folder, no permission, ...
        raise ImageReadError(f"cannot read image {path}: {err}") from None
    return decode_grayscale(data, path, size_hint)


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """Resize to side x side; area averaging when shrinking (no aliasing), linear when growing."""
    shrinking = image.shape[0] * image.shape[1] > side * side
    return cv2.resize(image, (side, side),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def decode_square(path: str | Path, side: int) -> np.ndarray:
    """The side x side uint8 image that both the cache and on-the-fly loading start from."""
    return resize_square(read_grayscale(path, size_hint=side), side)


def decode_square_bytes(data: bytes, name: str, side: int) -> np.ndarray:
    """decode_square for a file already in memory (an upload in app.py)."""
    return resize_square(decode_grayscale(data, name, size_hint=side), side)
