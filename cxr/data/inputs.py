"""The films a command names: image files, folders (searched recursively) and CSVs of paths.

predict.py takes them as its positional inputs, localize.py as --images. A folder's files are
images by their suffix, or DICOM by the marker of a file without one (a PACS export); a CSV
gives its `image_path` column as written, or CheXpert's `Path` relative to the CSV's folder,
and a view per film when a `view` (or CheXpert's `Frontal/Lateral`) column has one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.data.chexpert import RELEASE_PREFIX
from cxr.data.imaging import DICOM_MAGIC, DICOM_MAGIC_OFFSET, IMAGE_SUFFIXES, is_dicom
from cxr.errors import PipelineError

PATH_COLUMNS = ("image_path", "Path")  # a CSV's path column, in order of preference
VIEW_COLUMNS = ("view", "Frontal/Lateral")  # a CSV's view column (frontal / lateral)


def has_dicom_marker(path: Path) -> bool:
    """DICOM files from a PACS export often have no suffix: recognise them by their marker."""
    with open(path, "rb") as handle:
        return handle.read(DICOM_MAGIC_OFFSET + 4)[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def is_dicom_file(path: Path) -> bool:
    """A DICOM input (by its marker, or its suffix): --dicom_out writes results for these. A
    file that cannot be opened is not (the decoder lists it with its reason)."""
    try:
        with open(path, "rb") as handle:
            return is_dicom(handle.read(DICOM_MAGIC_OFFSET + 4), path)
    except OSError:
        return False


def images_in_folder(folder: Path) -> tuple[list[str], int]:
    """Image files under a folder, recursively and sorted; and how many other files it holds."""
    images, others = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith("."):  # .DS_Store, editor swap files
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES or (not path.suffix and has_dicom_marker(path)):
            images.append(str(path))
        else:
            others += 1
    return images, others


def paths_from_csv(path: Path) -> tuple[list[str], list[str | None]]:
    """The image paths of a CSV's `image_path` or `Path` column, and their views when a `view`
    (or CheXpert's `Frontal/Lateral`) column gives them (None where it does not).

    `image_path` is taken as written (this pipeline's CSVs hold absolute paths). `Path` follows
    CheXpert: relative to the CSV's folder, with CheXpert's CheXpert-v1.0(-small)/ prefix
    standing for that folder, as preprocess.py reads it.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PipelineError(f"cannot read {path} as a CSV of image paths: {err}") from None
    column = next((c for c in PATH_COLUMNS if c in frame.columns), None)
    if column is None:
        raise PipelineError(f"{path} has no {' or '.join(PATH_COLUMNS)} column (its columns: "
                            f"{', '.join(map(str, frame.columns))})")
    blank = frame[column].str.strip() == ""
    if blank.any():
        lines = (blank[blank].index + 2).tolist()
        raise PipelineError(f"{path} line {lines[0]}, column {column!r} is empty "
                            f"({int(blank.sum())} such rows, lines {lines[:10]})")
    views = csv_views(frame, path)
    if column == "image_path":
        return frame[column].tolist(), views
    return [value if Path(value).is_absolute()
            else str(path.parent / RELEASE_PREFIX.sub("", value)) for value in frame[column]], views


def csv_views(frame: pd.DataFrame, path: Path) -> list[str | None]:
    """A CSV's views, lower-cased: frontal or lateral; blank means not given."""
    column = next((c for c in VIEW_COLUMNS if c in frame.columns), None)
    if column is None:
        return [None] * len(frame)
    views = frame[column].str.strip().str.lower()
    bad = ~views.isin(["frontal", "lateral", ""])
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2
        raise PipelineError(f"{path} line {line}, column {column!r}: {frame[column].iloc[line - 2]!r}"
                            " is not frontal or lateral (or blank)")
    return [view or None for view in views]


def collect_inputs(inputs: tuple[str, ...]) -> tuple[list[str], list[str | None]]:
    """Every image path the inputs name, in the order given (folders sorted), and the view a
    CSV gives each (None: not given)."""
    if not inputs:
        raise PipelineError("no inputs: pass image files, folders or CSVs of paths before "
                            "the options, e.g. python predict.py scans/ extra.dcm --checkpoint "
                            "models/RUN/best.pth")
    paths, views = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images, others = images_in_folder(path)
            if others:
                print(f"{path}: left out {others} file(s) that are not images by their suffix "
                      f"({', '.join(IMAGE_SUFFIXES)}) nor DICOM")
            paths += images
            views += [None] * len(images)
        elif path.suffix.lower() == ".csv":
            if not path.is_file():
                raise PipelineError(f"input {item}: no such CSV")
            listed, given = paths_from_csv(path)
            paths += listed
            views += given
        elif path.exists():
            paths.append(item)
            views.append(None)
        else:
            raise PipelineError(f"input {item}: no such file or folder")
    if not paths:
        raise PipelineError(f"the inputs {' '.join(inputs)} hold no image files")
    return paths, views
