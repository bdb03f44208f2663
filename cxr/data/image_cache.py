"""The image cache on disk: one module writes it (cache.py runs the build) and reads it.

<data_dir>/cache/<side>px/ holds images.u8 (N x side x side uint8, memory-mapped), index.csv
(image_path -> row, and the size and mtime_ns of the file decoded), meta.json (the format
version, side, source list and decoder versions it was built from; "complete" once finished),
errors.csv (unreadable images and why) and, while building, done.npy (the rows finished).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import PIL
from tqdm import tqdm

from cxr.atomic import write_atomic, write_csv_atomic, write_text_atomic
from cxr.data.imaging import ImageReadError, decode_square
from cxr.errors import PipelineError

# Bump when decode_square changes what it produces, or the folder's format changes. 2: index.csv
# records each file's size and mtime and meta.json the decoder versions; a version 1 cache cannot
# be checked against its files, so it is rebuilt once (and training does not read it meanwhile).
CACHE_VERSION = 2
CHUNK = 32  # images per worker task: large enough to amortise inter-process transfer
SAVE_EVERY = 20  # chunks between progress saves (a resumed build redoes at most this many)
ERROR_COLUMNS = ["row", "image_path", "reason"]
STAT_COLUMNS = ["size", "mtime_ns"]  # in index.csv: which version of each file was decoded


def cache_folder(data_dir: str, side: int) -> Path:
    return Path(data_dir) / "cache" / f"{side}px"


# ---- what a cache was built from ----------------------------------------------------------------

# pydicom's pixel-decoder plugins: which one is installed decides a compressed DICOM's pixels
# (gdcm and pylibjpeg may round a lossy JPEG differently).
DICOM_PLUGINS = ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls",
                 "python-gdcm")


def installed_version(package: str) -> str | None:
    """A package's version from its installed metadata (no import), None when absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def decoder_versions() -> dict:
    """The libraries that decide the decoded pixels: other versions rebuild the cache.

    pydicom's and its plugins' versions come from their installed metadata rather than an
    import, so that training does not pay pydicom's import time; None when not installed.
    """
    versions = {"opencv": cv2.__version__, "pillow": PIL.__version__,
                "pydicom": installed_version("pydicom")}
    return versions | {name: installed_version(name) for name in DICOM_PLUGINS}


def file_stats(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Size in bytes and st_mtime_ns of each file: one os.stat each, no pixels read, so a
    replaced image is found in seconds even among 224k files."""
    sizes, mtimes = [], []
    for path in tqdm(paths, desc="checking files", unit="file", leave=False):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise PipelineError(f"image {path} of the splits not found: re-run preprocess.py "
                                "(or check data_root)") from None
        sizes.append(stat.st_size)
        mtimes.append(stat.st_mtime_ns)
    return np.array(sizes, dtype=np.int64), np.array(mtimes, dtype=np.int64)


def source_index(paths: list[str]) -> pd.DataFrame:
    """index.csv: each image's row in images.u8 and the size and mtime of the file decoded."""
    sizes, mtimes = file_stats(paths)
    return pd.DataFrame({"image_path": paths, "row": np.arange(len(paths)), "size": sizes,
                         "mtime_ns": mtimes})


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(index: pd.DataFrame, side: int) -> dict:
    """meta.json's description of a cache: format, side, decoders, the source list (paths only)
    and the files' versions (paths, sizes and mtimes), so a mismatch can say which one changed."""
    paths = index["image_path"].tolist()
    files = "\n".join(f"{path}\t{size}\t{mtime}" for path, size, mtime in
                      zip(paths, index["size"].tolist(), index["mtime_ns"].tolist()))
    return {"version": CACHE_VERSION, "side": side, "n_images": len(paths),
            "decoders": decoder_versions(), "sources_sha256": _sha256("\n".join(paths)),
            "files_sha256": _sha256(files)}


def read_meta(folder: Path) -> dict | None:
    """What a cache folder was built from (meta.json), or None when there is no cache."""
    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def decoders_change(recorded: dict | None, current: dict) -> str | None:
    """'opencv 4.9.0 -> 4.10.0' for each decoder whose version differs, or None."""
    recorded = recorded or {}
    changes = [f"{name} {recorded.get(name)} -> {version}" for name, version in current.items()
               if recorded.get(name) != version]
    return ", ".join(changes) or None


def stale_reason(meta: dict | None, wanted: dict) -> str | None:
    """Why an existing cache cannot be reused (None: it can be reused or resumed)."""
    if meta is None:
        return "no cache yet"
    for key, what in (("version", "cache format version"), ("side", "image size"),
                      ("sources_sha256", "list of source images")):
        if meta.get(key) != wanted[key]:
            return f"the {what} changed ({meta.get(key)} -> {wanted[key]})"
    change = decoders_change(meta.get("decoders"), wanted["decoders"])
    return f"the image decoders changed ({change})" if change else None


def outdated_reason(meta: dict) -> str | None:
    """Why training must not read a finished cache that holds its images: another format or other
    decoders would not give the pixels that decoding the files gives now (None: it may)."""
    if meta.get("version") != CACHE_VERSION:
        return f"it has format version {meta.get('version')}, this code reads {CACHE_VERSION}"
    change = decoders_change(meta.get("decoders"), decoder_versions())
    return f"it was decoded by other library versions ({change})" if change else None


def stats_differ(recorded: pd.DataFrame, sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
    """Mask of the index.csv rows whose file now has another size or mtime (row for row)."""
    return ((recorded["size"].to_numpy() != sizes)
            | (recorded["mtime_ns"].to_numpy() != mtimes))


def changed_images(index: pd.DataFrame, paths: list[str]) -> list[str]:
    """Those of `paths` (all listed in index.csv) whose file was replaced since it was cached."""
    recorded = index.set_index("image_path").loc[paths, STAT_COLUMNS]
    differ = stats_differ(recorded, *file_stats(paths))
    return [path for path, changed in zip(paths, differ) if changed]


def changed_rows(folder: Path, meta: dict, index: pd.DataFrame, wanted: dict
                 ) -> np.ndarray | None:
    """Rows whose file changed since the build recorded it; None when index.csv cannot tell
    (missing, or without sizes and times), so everything must be decoded again."""
    if meta.get("files_sha256") == wanted["files_sha256"]:
        return np.array([], dtype=int)  # the usual case: no need to read index.csv
    path = folder / "index.csv"
    recorded = pd.read_csv(path) if path.is_file() else None
    if recorded is None or not set(STAT_COLUMNS) <= set(recorded.columns) or \
            recorded["image_path"].tolist() != index["image_path"].tolist():
        return None
    return np.flatnonzero(stats_differ(recorded, index["size"].to_numpy(),
                                       index["mtime_ns"].to_numpy()))


# ---- building ------------------------------------------------------------------------------------

def _decode_chunk(task: tuple[list[int], list[str], int]):
    """Worker: decode and resize a chunk; unreadable images come back as (row, reason)."""
    rows, paths, side = task
    images = np.zeros((len(rows), side, side), dtype=np.uint8)
    errors = []
    for i, (row, path) in enumerate(zip(rows, paths)):
        try:
            images[i] = decode_square(path, side)
        except ImageReadError as err:
            errors.append((row, path, str(err)))
    return rows, images, errors


def build(folder: Path, paths: list[str], side: int) -> pd.DataFrame:
    """Fill (or resume filling) images.u8 with every image; returns the unreadable ones."""
    n = len(paths)
    images_path, done_path, errors_path = (folder / "images.u8", folder / "done.npy",
                                           folder / "errors.csv")
    resume = images_path.is_file() and done_path.is_file()
    images = np.memmap(images_path, dtype=np.uint8, mode="r+" if resume else "w+",
                       shape=(n, side, side))
    done = np.load(done_path) if resume else np.zeros(n, dtype=bool)
    if resume and errors_path.is_file():  # try the unreadable ones again: they may be fixed now
        done[pd.read_csv(errors_path)["row"].to_numpy(dtype=int)] = False
    errors: list = []
    todo = np.flatnonzero(~done)
    chunks = np.array_split(todo, -(-len(todo) // CHUNK)) if len(todo) else []
    tasks = [(rows.tolist(), [paths[r] for r in rows], side) for rows in chunks]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool, \
            tqdm(total=n, initial=n - len(todo), desc=f"cache {side}px", unit="img") as progress:
        for count, (rows, chunk, chunk_errors) in enumerate(
                pool.imap_unordered(_decode_chunk, tasks), 1):
            images[rows] = chunk
            done[rows] = True
            errors += chunk_errors
            progress.update(len(rows))
            if count % SAVE_EVERY == 0:
                save_progress(images, done, errors, folder)
    save_progress(images, done, errors, folder)
    return pd.DataFrame(errors, columns=ERROR_COLUMNS).sort_values("row")


def save_progress(images: np.memmap, done: np.ndarray, errors: list, folder: Path) -> None:
    """Pixels reach the disk first, then the record of which rows are done and which failed."""
    images.flush()
    write_csv_atomic(pd.DataFrame(errors, columns=ERROR_COLUMNS), folder / "errors.csv")
    write_atomic(folder / "done.npy", lambda tmp: _save_npy(tmp, done))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:  # a file object: np.save would append ".npy" to a name
        np.save(file, array)


def start_over(folder: Path, reason: str) -> None:
    """Delete a cache that cannot be reused, saying why (nothing to say when there is none)."""
    if folder.exists():
        print(f"cache: rebuilding {folder}: {reason}")
        for name in ("images.u8", "done.npy", "meta.json", "index.csv", "errors.csv"):
            (folder / name).unlink(missing_ok=True)


def redo_changed(folder: Path, rows: np.ndarray, paths: list[str]) -> None:
    """Mark the rows of replaced files as not done, so that the resumed build decodes only them.

    done.npy is written before meta.json and index.csv take the new sizes and times: killed in
    between, the next run still finds these rows to do."""
    done_path = folder / "done.npy"
    if not len(rows) or not done_path.is_file():  # no done.npy: the build decodes every row
        return
    print(f"cache: {len(rows)} source image(s) changed since they were cached (size or "
          f"modification time), e.g. {paths[rows[0]]}; decoding them again")
    done = np.load(done_path)
    done[rows] = False
    write_atomic(done_path, lambda tmp: _save_npy(tmp, done))


def begin_build(folder: Path, wanted: dict, index: pd.DataFrame) -> None:
    """meta.json (not complete yet) and index.csv of the build about to run."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps({**wanted, "complete": False}, indent=2), folder / "meta.json")
    write_csv_atomic(index, folder / "index.csv")


def finish_build(folder: Path, wanted: dict, unreadable: int) -> None:
    """meta.json marks the cache complete: from now on training reads it."""
    write_text_atomic(json.dumps({**wanted, "complete": True, "unreadable": unreadable},
                                 indent=2), folder / "meta.json")


def listed_errors(folder: Path) -> list[str]:
    """The images errors.csv lists as unreadable (to decode again with --cache_retry_errors)."""
    path = folder / "errors.csv"
    return pd.read_csv(path)["image_path"].tolist() if path.is_file() else []


def report_retried(retried: list[str], errors: pd.DataFrame) -> None:
    """Say whether the fixes worked: how many of the images retried are readable now."""
    still = set(retried) & set(errors["image_path"])
    print(f"cache: {len(retried) - len(still)} of the {len(retried)} image(s) listed in errors.csv "
          "now read")


# ---- reading -------------------------------------------------------------------------------------

class ImageCache:
    """Read-only view of a cache.py folder: image_path -> side x side uint8 array.

    The memory map is opened lazily in each process, so DataLoader workers share the page cache
    and memory does not grow with the dataset.
    """

    def __init__(self, folder: Path, meta: dict, index: pd.DataFrame | None = None):
        self.folder, self.side, self.count = folder, int(meta["side"]), int(meta["n_images"])
        if index is None:  # open_cache passes the index.csv it has read already
            index = pd.read_csv(folder / "index.csv")
        self.rows = dict(zip(index["image_path"], index["row"]))
        errors = folder / "errors.csv"
        self.unreadable = set(pd.read_csv(errors)["image_path"]) if errors.is_file() else set()
        self._images: np.memmap | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}  # never pickle the mapped array into workers

    def image(self, path: str) -> np.ndarray:
        if self._images is None:
            self._images = np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r",
                                     shape=(self.count, self.side, self.side))
        return np.array(self._images[self.rows[path]])  # a writable copy of one image


def open_cache(data_dir: str, side: int, paths: list[str], enabled: bool = True
               ) -> ImageCache | None:
    """The cache for these images at this side, or None (then images are decoded on the fly)."""
    folder = cache_folder(data_dir, side)
    meta = read_meta(folder) if enabled else None
    if meta is None:
        return None
    if not meta.get("complete"):
        print(f"warning: {folder} is incomplete (run cache.py to finish it); decoding images")
        return None
    outdated = outdated_reason(meta)  # e.g. built by an older cache.py, or another OpenCV
    if outdated:
        print(f"warning: {folder} cannot be used: {outdated} (run cache.py to rebuild it); "
              "decoding images instead")
        return None
    index = pd.read_csv(folder / "index.csv")
    cache = ImageCache(folder, meta, index)
    missing = sum(path not in cache.rows for path in paths)
    if missing:
        print(f"warning: {folder} lacks {missing} of these images (run cache.py again); "
              "decoding images instead")
        return None
    changed = changed_images(index, paths)  # one os.stat per image: a replaced file is found
    if changed:
        print(f"warning: {len(changed)} of these images changed since {folder} was built, e.g. "
              f"{changed[0]} (run cache.py to update it); decoding images instead")
        return None
    return cache


def drop_unreadable(frame: pd.DataFrame, cache: ImageCache | None, name: str) -> pd.DataFrame:
    """Leave out the images cache.py could not read (--cache_on_error exclude), saying so."""
    if cache is None or not cache.unreadable:
        return frame
    keep = ~frame["image_path"].isin(cache.unreadable)
    if not keep.all():
        print(f"{name}: leaving out {int((~keep).sum())} unreadable image(s) listed in "
              f"{cache.folder / 'errors.csv'}")
    return frame[keep]
