"""Decode every image once into a memory-mapped uint8 array that training then reads directly.

    python cache.py [--image_size 320] [--cache_on_error exclude]

Reads  <data_dir>/splits/train.csv, val.csv, test.csv (make_splits.py) and their images.
Writes <data_dir>/cache/<side>px/images.u8   N x side x side uint8 (side = image_size x (1 + crop_margin)),
       index.csv (image_path -> row), meta.json (what it was built from), errors.csv (unreadable
       images and why). train.py and evaluate.py use the cache when it matches their rows and
       image size, and decode the JPEGs otherwise; both give identical tensors.

The cache is reused only when its source list, side and CACHE_VERSION match, rebuilt (saying
why) otherwise, and resumed where it stopped after an interruption. Disk: side^2 bytes an image,
so 100k images take 11.6 GB at 340 px (image_size 320) and 5.7 GB at 238 px (image_size 224).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from config import Config, PipelineError, run_cli
from fileio import write_atomic, write_csv_atomic, write_text_atomic
from imaging import ImageReadError, decode_square

CACHE_VERSION = 1  # bump when decode_square changes what it produces
SPLITS = ("train", "val", "test")
CHUNK = 32  # images per worker task: large enough to amortise inter-process transfer
SAVE_EVERY = 20  # chunks between progress saves (a resumed build redoes at most this many)
ERROR_COLUMNS = ["row", "image_path", "reason"]


def cache_folder(data_dir: str, side: int) -> Path:
    return Path(data_dir) / "cache" / f"{side}px"


def source_paths(cfg: Config) -> list[str]:
    """Every image of the three splits, once, in a stable order."""
    paths: set[str] = set()
    for split in SPLITS:
        path = cfg.splits_dir / f"{split}.csv"
        if not path.is_file():
            raise PipelineError(f"{path} not found: run make_splits.py first")
        paths.update(pd.read_csv(path, usecols=["image_path"])["image_path"])
    return sorted(paths)


def fingerprint(paths: list[str], side: int) -> dict:
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    return {"version": CACHE_VERSION, "side": side, "n_images": len(paths), "sources_sha256": digest}


def read_meta(folder: Path) -> dict | None:
    """What a cache folder was built from (meta.json), or None when there is no cache."""
    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def stale_reason(meta: dict | None, wanted: dict) -> str | None:
    """Why an existing cache cannot be reused (None: it can be reused or resumed)."""
    if meta is None:
        return "no cache yet"
    for key, what in (("version", "preprocessing version"), ("side", "image size"),
                      ("sources_sha256", "list of source images")):
        if meta.get(key) != wanted[key]:
            return f"the {what} changed ({meta.get(key)} -> {wanted[key]})"
    return None


# ---- building ----------------------------------------------------------------------------------

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


def check_errors(errors: pd.DataFrame, folder: Path, cfg: Config) -> None:
    if len(errors) and cfg.cache_on_error == "stop":
        examples = "; ".join(errors["reason"].head(3))
        raise PipelineError(f"{len(errors)} image(s) could not be read ({examples}); all are listed "
                            f"in {folder / 'errors.csv'}. Replace them, or pass --cache_on_error "
                            "exclude to leave them out of training and evaluation.")


def main(cfg: Config) -> None:
    paths = source_paths(cfg)
    folder = cache_folder(cfg.data_dir, cfg.stored_side)
    wanted = fingerprint(paths, cfg.stored_side)
    meta = read_meta(folder)
    reason = stale_reason(meta, wanted)
    meta_path = folder / "meta.json"
    if reason is None and meta.get("complete"):
        print(f"cache: {folder} already holds these {len(paths):,} images at {wanted['side']} px; "
              "reusing it")
        return
    if reason is not None and folder.exists():
        print(f"cache: rebuilding {folder}: {reason}")
        for name in ("images.u8", "done.npy", "meta.json", "index.csv", "errors.csv"):
            (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps({**wanted, "complete": False}, indent=2), meta_path)
    write_csv_atomic(pd.DataFrame({"image_path": paths, "row": range(len(paths))}),
                     folder / "index.csv")
    errors = build(folder, paths, wanted["side"])
    check_errors(errors, folder, cfg)
    write_text_atomic(json.dumps({**wanted, "complete": True, "unreadable": len(errors)},
                                 indent=2), meta_path)
    size_gb = len(paths) * wanted["side"] ** 2 / 1e9
    print(f"cache: wrote {folder}/images.u8 ({len(paths):,} images at {wanted['side']} px, "
          f"{size_gb:.2f} GB), index.csv, meta.json, errors.csv ({len(errors)} unreadable)")


if __name__ == "__main__":
    run_cli(main)
