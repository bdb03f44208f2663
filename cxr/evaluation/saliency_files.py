"""The files localize.py reads besides the reference standard: a folder of saliency maps already
made, and the list of films (a folder of images or a CSV of paths).

A map file is cheXlocalize's per film and pathology, as numpy's .npz (its pickles converted):
<film id>_<pathology>_map.npz holding `map` (1 x 1 x h x w, or h x w: the map over the model's
input), `prob` (the model's probability), `task`, `gt` and `cxr_dims` (the film's (width,
height)). The film id and pathology come from the name as cheXlocalize splits it: the pathology
is the last "_" part before "_map", the film id what precedes it.

A film's size comes from its header where that is the size read_grayscale decodes (film_size).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.data.imaging import DICOM_MAGIC, DICOM_MAGIC_OFFSET, is_dicom, read_grayscale
from cxr.data.inputs import collect_inputs
from cxr.errors import PipelineError

MAP_SUFFIX = "_map.npz"
EXIF_ORIENTATION = 0x0112  # values 5..8 turn the picture a quarter: width and height swap


@dataclass(frozen=True)
class MapFile:
    path: Path
    film: str
    pathology: str  # as the file names it (cheXlocalize's names: Airspace Opacity)


@dataclass
class SavedMap:
    saliency: np.ndarray  # 2-D float32 map over the model's input
    probability: float | None
    width: int  # the film's size
    height: int


def map_files(folder: str | Path) -> list[MapFile]:
    """Every <film id>_<pathology>_map.npz under the folder, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"--maps {folder}: no such folder")
    files = []
    for path in sorted(folder.rglob(f"*{MAP_SUFFIX}")):
        parts = path.name[:-len(MAP_SUFFIX)].split("_")
        if len(parts) < 2:
            raise PipelineError(f"{path}: expected <film id>_<pathology>{MAP_SUFFIX}")
        files.append(MapFile(path, "_".join(parts[:-1]), parts[-1]))
    if not files:
        raise PipelineError(f"--maps {folder}: no *{MAP_SUFFIX} file (cheXlocalize's maps as "
                            "numpy archives: map, prob, cxr_dims)")
    return files


def read_map(file: MapFile) -> SavedMap:
    """One map file; a missing key or a map that is not 2-D is an error naming the file."""
    try:
        with np.load(file.path, allow_pickle=False) as archive:
            missing = [key for key in ("map", "cxr_dims") if key not in archive.files]
            if missing:
                raise PipelineError(f"{file.path}: no {', '.join(missing)} (keys: "
                                    f"{', '.join(archive.files)})")
            saliency = np.asarray(archive["map"], dtype=np.float32)
            dims = np.asarray(archive["cxr_dims"]).ravel()
            probability = float(archive["prob"]) if "prob" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise PipelineError(f"{file.path}: cannot read it as a numpy archive ({err})") from None
    saliency = saliency.reshape(saliency.shape[-2:]) if saliency.ndim >= 2 \
        and int(np.prod(saliency.shape[:-2])) == 1 else saliency
    if saliency.ndim != 2 or not np.isfinite(saliency).all():
        raise PipelineError(f"{file.path}: `map` must be one finite 2-D map (1 x 1 x h x w), got "
                            f"shape {saliency.shape}")
    if len(dims) != 2 or (dims <= 0).any():
        raise PipelineError(f"{file.path}: `cxr_dims` must be the film's (width, height), got "
                            f"{dims.tolist()}")
    return SavedMap(saliency, probability, int(dims[0]), int(dims[1]))


def image_paths(source: str | Path) -> list[str]:
    """The films of --images: a folder's image files (recursively, sorted), or a CSV's
    `image_path` column (as written) or CheXpert's `Path` column (relative to the CSV's folder),
    read as predict.py reads its inputs (cxr.data.inputs)."""
    if not Path(source).exists():
        raise PipelineError(f"--images {source}: no such folder or CSV")
    return collect_inputs((str(source),))[0]


def film_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a film as read_grayscale reads it: from its header where PIL reads
    one, else (DICOM, or a JPEG that OpenCV's decoder turns upright by its EXIF orientation)
    by decoding it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
        if not is_dicom(head, path):
            with Image.open(path) as img:
                if img.format != "JPEG" or img.getexif().get(EXIF_ORIENTATION, 1) < 5:
                    return img.height, img.width
    except (UnidentifiedImageError, OSError):
        pass  # read_grayscale names the problem
    return read_grayscale(path).shape
