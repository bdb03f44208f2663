"""Reading radiographs from disk as 8-bit grayscale arrays, whatever their file's pixel mode.

Kept free of torch so that CSV-only stages start quickly.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from config import PipelineError

cv2.setNumThreads(1)  # DataLoader workers are the parallelism; OpenCV threads would oversubscribe

MIN_SIDE = 32  # pixels; smaller images are not radiographs (a 1 x 1 placeholder, a thumbnail)
MAX_ASPECT = 4.0  # chest films are near square; a 3000 x 12 strip is a broken export


class ImageReadError(PipelineError):
    """An image that cannot be used; the message names the file and the reason."""


# ---- reading one image --------------------------------------------------------------------------

def _to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> 8-bit grayscale array.

    High bit-depth images (16-bit PNG, 32-bit int/float TIFF) are stretched from their own
    min..max to 0..255: 16-bit radiographs often use only 10-12 bits, so dividing by 65535
    would leave a nearly black image.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        return np.round(scaled * 255.0).astype(np.uint8)
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


def read_grayscale(path: str | Path, size_hint: int | None = None) -> np.ndarray:
    """Read an image file as an 8-bit grayscale H x W array, or raise ImageReadError naming it.

    `size_hint` lets large JPEGs decode at a reduced scale that still keeps both sides at least
    that many pixels: a 2,800 px CheXpert original decodes several times faster.
    """
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            array = _fast_jpeg(data, img, size_hint)
            if array is None:
                if size_hint and img.format == "JPEG":
                    img.draft("L", (size_hint, size_hint))
                array = _to_uint8_gray(img)
    except FileNotFoundError:
        raise ImageReadError(f"image not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None
    height, width = array.shape
    if min(height, width) < MIN_SIDE or max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageReadError(f"image {path} is {width} x {height} px: too small or too elongated "
                             f"to be a chest radiograph (need sides >= {MIN_SIDE} px, aspect <= "
                             f"{MAX_ASPECT:g})")
    return array


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """Resize to side x side; area averaging when shrinking (no aliasing), linear when growing."""
    shrinking = image.shape[0] * image.shape[1] > side * side
    return cv2.resize(image, (side, side),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def decode_square(path: str | Path, side: int) -> np.ndarray:
    """The side x side uint8 image that both the cache and on-the-fly loading start from."""
    return resize_square(read_grayscale(path, size_hint=side), side)
