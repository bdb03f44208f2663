"""Decode every image once into a memory-mapped uint8 array that training then reads directly.

    python cache.py [--image_size 320] [--cache_on_error exclude] [--cache_retry_errors true]

Reads  <data_dir>/splits/train.csv, val.csv, test.csv (make_splits.py) and their images.
Writes <data_dir>/cache/<side>px/images.u8   N x side x side uint8 (side = image_size x (1 + crop_margin)),
       index.csv (image_path -> row, and the size and mtime of the file it was decoded from),
       meta.json (what it was built from, including the decoder versions), errors.csv (unreadable
       images and why). train.py and evaluate.py use the cache when it matches their rows, image
       size, files and decoders, and decode the JPEGs otherwise; both give identical tensors.

The cache is rebuilt (saying why) when its CACHE_VERSION, side, source list or decoder versions
(OpenCV, Pillow, pydicom) differ, and resumed where it stopped after an interruption. Images whose
file size or modification time changed since they were cached are decoded again, alone. Images
listed in errors.csv are decoded again on resume, or in a finished cache with
--cache_retry_errors true (after you fixed them in a way that kept their size and time, e.g.
their permissions). Disk: side^2 bytes an image, so 100k images take 11.6 GB at 340 px
(image_size 320) and 5.7 GB at 238 px (image_size 224).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from config import Config
from cxr.cli import run_cli
from cxr.data.image_cache import begin_build, build, cache_folder, changed_rows, fingerprint, \
    finish_build, listed_errors, read_meta, redo_changed, report_retried, source_index, \
    stale_reason, start_over
from cxr.errors import PipelineError

SPLITS = ("train", "val", "test")


def source_paths(cfg: Config) -> list[str]:
    """Every image of the three splits, once, in a stable order."""
    paths: set[str] = set()
    for split in SPLITS:
        path = cfg.splits_dir / f"{split}.csv"
        if not path.is_file():
            raise PipelineError(f"{path} not found: run make_splits.py first")
        paths.update(pd.read_csv(path, usecols=["image_path"])["image_path"])
    return sorted(paths)


def check_errors(errors: pd.DataFrame, folder: Path, cfg: Config) -> None:
    if len(errors) and cfg.cache_on_error == "stop":
        examples = "; ".join(errors["reason"].head(3))
        raise PipelineError(f"{len(errors)} image(s) could not be read ({examples}); all are listed "
                            f"in {folder / 'errors.csv'}. Replace them, or pass --cache_on_error "
                            "exclude to leave them out of training and evaluation.")


def main(cfg: Config) -> None:
    paths = source_paths(cfg)
    folder = cache_folder(cfg.data_dir, cfg.stored_side)
    index = source_index(paths)
    wanted = fingerprint(index, cfg.stored_side)
    meta = read_meta(folder)
    reason = stale_reason(meta, wanted)
    changed = changed_rows(folder, meta, index, wanted) if reason is None else None
    if reason is None and changed is None:
        reason = "its index.csv is missing or lacks the files' sizes and times"
    retry = listed_errors(folder) if reason is None and cfg.cache_retry_errors else []
    if reason is None and meta.get("complete") and not len(changed) and not retry:
        print(f"cache: {folder} already holds these {len(paths):,} images at {wanted['side']} px; "
              "reusing it")
        return
    if reason is None:
        redo_changed(folder, changed, paths)  # a resumed build also retries errors.csv's rows
    else:
        start_over(folder, reason)
    begin_build(folder, wanted, index)
    errors = build(folder, paths, wanted["side"])
    if retry:
        report_retried(retry, errors)
    check_errors(errors, folder, cfg)
    finish_build(folder, wanted, len(errors))
    size_gb = len(paths) * wanted["side"] ** 2 / 1e9
    print(f"cache: wrote {folder}/images.u8 ({len(paths):,} images at {wanted['side']} px, "
          f"{size_gb:.2f} GB), index.csv, meta.json, errors.csv ({len(errors)} unreadable)")


if __name__ == "__main__":
    run_cli(main, script="cache.py", defaults=Config())
