"""cache.py: decode once into a memory map; identical tensors; reuse, rebuild, resume, bad images."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cache
import cxr.data.image_cache as image_cache
import make_splits
import preprocess
from config import Config
from conftest import make_root, row
from cxr.data.image_cache import open_cache
from cxr.data.imaging import decode_square
from cxr.errors import PipelineError
from dataset import make_dataset


@pytest.fixture
def cfg(tmp_path):
    train = [row("train", patient) for patient in range(1, 13)]
    root = make_root(tmp_path, train, [row("valid", 50), row("valid", 51)])
    cfg = Config(data_root=str(root), data_dir=str(tmp_path / "data"), image_size=32,
                 val_fraction=0.25)
    preprocess.main(cfg)
    make_splits.main(cfg)
    return cfg


def split(cfg, name="train"):
    return pd.read_csv(cfg.splits_dir / f"{name}.csv")


def folder(cfg):
    return image_cache.cache_folder(cfg.data_dir, cfg.stored_side)


def pixels(cfg) -> np.memmap:
    """images.u8 as N x side x side, writable (to plant markers a rebuild would overwrite)."""
    side = cfg.stored_side
    return np.memmap(folder(cfg) / "images.u8", dtype=np.uint8, mode="r+").reshape(-1, side, side)


def cache_row(cfg, path: str) -> int:
    index = pd.read_csv(folder(cfg) / "index.csv")
    return int(index.loc[index["image_path"] == path, "row"].iloc[0])


def mark(cfg, row_number: int) -> None:
    """Fill one cached row with 7s: it stays so only if cache.py does not decode it again."""
    images = pixels(cfg)
    images[row_number] = 7
    images.flush()


def test_cached_and_decoded_images_give_identical_tensors(cfg, capsys):
    cache.main(cfg)
    assert "cache: wrote" in capsys.readouterr().out
    meta = json.loads((folder(cfg) / "meta.json").read_text())
    assert meta["complete"] and meta["side"] == 34 and meta["n_images"] == 14
    frame = split(cfg)
    cached = make_dataset(frame, cfg, cfg.data_dir, True, "train")
    decoded = make_dataset(frame, cfg, cfg.data_dir, True, "train", use_cache=False)
    assert cached.cache is not None and decoded.cache is None
    for index in range(len(frame)):
        for dataset in (cached, decoded):  # the same random augmentation for both
            torch.manual_seed(index)
            image, target = dataset[index]
            if dataset is cached:
                first = image
        assert torch.equal(first, image) and first.shape == (1, 32, 32)
        assert first.dtype == torch.uint8


def test_cache_is_reused_then_rebuilt_when_the_sources_change(cfg, capsys):
    cache.main(cfg)
    cache.main(cfg)
    assert "reusing it" in capsys.readouterr().out
    frame = split(cfg)
    frame.iloc[:-1].to_csv(cfg.splits_dir / "train.csv", index=False)  # one image fewer
    cache.main(cfg)
    out = capsys.readouterr().out
    assert "rebuilding" in out and "list of source images changed" in out
    assert json.loads((folder(cfg) / "meta.json").read_text())["n_images"] == 13
    # a different image size lives in its own folder, so both can be kept
    assert open_cache(cfg.data_dir, 40, frame["image_path"].tolist()) is None


def test_an_interrupted_build_resumes_where_it_stopped(cfg, capsys):
    cache.main(cfg)
    full = np.fromfile(folder(cfg) / "images.u8", dtype=np.uint8).copy()
    images = np.memmap(folder(cfg) / "images.u8", dtype=np.uint8, mode="r+")
    images[: len(full) // 2] = 0  # as if killed halfway: half the rows never written
    images.flush()
    done = np.load(folder(cfg) / "done.npy")
    done[:7] = False
    np.save(folder(cfg) / "done.npy", done)
    meta = json.loads((folder(cfg) / "meta.json").read_text())
    (folder(cfg) / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    assert open_cache(cfg.data_dir, cfg.stored_side, []) is None  # incomplete: not used
    cache.main(cfg)
    assert np.array_equal(np.fromfile(folder(cfg) / "images.u8", dtype=np.uint8), full)


def test_unreadable_images_are_reported_then_stop_or_are_excluded(cfg, capsys):
    frame = split(cfg)
    broken = frame["image_path"].iloc[2]
    open(broken, "wb").write(b"\xff\xd8 truncated")
    with pytest.raises(PipelineError, match="1 image\\(s\\) could not be read.*--cache_on_error"):
        cache.main(cfg)
    errors = pd.read_csv(folder(cfg) / "errors.csv")
    assert errors["image_path"].tolist() == [broken] and "cannot read image" in errors["reason"][0]

    cache.main(Config(**{**cfg.__dict__, "cache_on_error": "exclude"}))
    data = make_dataset(frame, cfg, cfg.data_dir, False, "train")
    assert len(data) == len(frame) - 1 and broken not in data.paths
    assert "leaving out 1 unreadable image(s)" in capsys.readouterr().out


def test_missing_splits_name_the_script_to_run(tmp_path):
    with pytest.raises(PipelineError, match="run make_splits.py first"):
        cache.main(Config(data_dir=str(tmp_path)))


def test_workers_get_the_path_of_the_cache_not_its_pixels(cfg):
    cache.main(cfg)
    data = make_dataset(split(cfg), cfg, cfg.data_dir, True, "train")
    data[0]  # maps the file in this process
    path_bytes = sum(len(path) for path in data.cache.rows)
    # what a DataLoader worker receives: paths and the index, no pixels, so worker memory
    # does not grow with the image data
    assert len(pickle.dumps(data)) < 2 * path_bytes + 2048
    assert pickle.loads(pickle.dumps(data)).cache._images is None


def test_a_batch_equals_its_items_one_by_one(cfg):
    data = make_dataset(split(cfg), cfg, cfg.data_dir, True, "train", use_cache=False)
    torch.manual_seed(5)
    images, targets = data.__getitems__([3, 0, 7])  # what the DataLoader asks for
    torch.manual_seed(5)
    items = [data[index] for index in (3, 0, 7)]
    assert torch.equal(images, torch.stack([image for image, _ in items]))
    assert torch.equal(targets, torch.stack([target for _, target in items]))
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 32, 32)


def test_a_replaced_image_is_refused_then_decoded_again_alone(cfg, capsys):
    cache.main(cfg)
    paths = split(cfg)["image_path"].tolist()
    replaced, other = paths[1], paths[4]
    before = os.stat(replaced)
    Image.fromarray(np.full((90, 70), 200, dtype=np.uint8)).save(replaced)  # new content
    os.utime(replaced, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # touched: 1 s later
    capsys.readouterr()
    assert open_cache(cfg.data_dir, cfg.stored_side, paths) is None  # stale: decode on the fly
    out = capsys.readouterr().out
    assert "1 of these images changed" in out and replaced in out and "run cache.py" in out
    mark(cfg, cache_row(cfg, other))

    cache.main(cfg)
    out = capsys.readouterr().out
    assert "1 source image(s) changed" in out and replaced in out and "rebuilding" not in out
    images = pixels(cfg)
    assert np.array_equal(images[cache_row(cfg, replaced)], decode_square(replaced, cfg.stored_side))
    assert (images[cache_row(cfg, other)] == 7).all()  # the other rows were not decoded again
    index = pd.read_csv(folder(cfg) / "index.csv")
    assert index["mtime_ns"][cache_row(cfg, replaced)] == before.st_mtime_ns + 10**9
    assert open_cache(cfg.data_dir, cfg.stored_side, paths) is not None
    cache.main(cfg)
    assert "reusing it" in capsys.readouterr().out


def test_other_decoder_versions_rebuild_everything(cfg, capsys, monkeypatch):
    cache.main(cfg)
    paths = split(cfg)["image_path"].tolist()
    mark(cfg, 0)
    other = {**image_cache.decoder_versions(), "opencv": "0.0.0-other-build"}
    monkeypatch.setattr(image_cache, "decoder_versions", lambda: other)
    capsys.readouterr()
    assert open_cache(cfg.data_dir, cfg.stored_side, paths) is None
    assert "other library versions (opencv" in capsys.readouterr().out

    cache.main(cfg)
    out = capsys.readouterr().out
    assert "rebuilding" in out and "the image decoders changed (opencv" in out
    assert "-> 0.0.0-other-build" in out
    assert not (pixels(cfg)[0] == 7).all()  # every row decoded again
    assert json.loads((folder(cfg) / "meta.json").read_text())["decoders"] == other
    assert open_cache(cfg.data_dir, cfg.stored_side, paths) is not None


def test_a_cache_of_the_old_format_is_refused_then_rebuilt(cfg, capsys):
    cache.main(cfg)
    paths = split(cfg)["image_path"].tolist()
    meta = json.loads((folder(cfg) / "meta.json").read_text())
    old = {key: meta[key] for key in ("side", "n_images", "sources_sha256", "complete")}
    (folder(cfg) / "meta.json").write_text(json.dumps({**old, "version": 1}))
    index = pd.read_csv(folder(cfg) / "index.csv")
    index[["image_path", "row"]].to_csv(folder(cfg) / "index.csv", index=False)
    capsys.readouterr()
    assert open_cache(cfg.data_dir, cfg.stored_side, paths) is None
    assert "run cache.py" in capsys.readouterr().out

    cache.main(cfg)
    out = capsys.readouterr().out
    assert "rebuilding" in out and f"cache format version changed (1 -> {image_cache.CACHE_VERSION})" in out
    assert {"size", "mtime_ns"} <= set(pd.read_csv(folder(cfg) / "index.csv").columns)
    assert open_cache(cfg.data_dir, cfg.stored_side, paths) is not None


def test_retry_errors_decodes_the_listed_images_again(cfg, capsys):
    frame = split(cfg)
    broken = frame["image_path"].iloc[2]
    good = open(broken, "rb").read()
    open(broken, "wb").write(b"\0" * len(good))  # unreadable, and as long as the good file
    exclude = Config(**{**cfg.__dict__, "cache_on_error": "exclude"})
    cache.main(exclude)
    assert pd.read_csv(folder(cfg) / "errors.csv")["image_path"].tolist() == [broken]
    # fixed in a way size and mtime do not show (as restoring a backup with its time would be)
    stat = os.stat(broken)
    open(broken, "wb").write(good)
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    cache.main(exclude)  # without the flag: reused, still listed
    assert "reusing it" in capsys.readouterr().out
    assert pd.read_csv(folder(cfg) / "errors.csv")["image_path"].tolist() == [broken]

    cache.main(Config(**{**exclude.__dict__, "cache_retry_errors": True}))
    assert "1 of the 1 image(s) listed in errors.csv now read" in capsys.readouterr().out
    assert pd.read_csv(folder(cfg) / "errors.csv").empty
    assert np.array_equal(pixels(cfg)[cache_row(cfg, broken)],
                          decode_square(broken, cfg.stored_side))
    data = make_dataset(frame, cfg, cfg.data_dir, False, "train")
    assert data.cache is not None and len(data) == len(frame)


def test_a_missing_source_image_names_it_and_preprocess(cfg):
    missing = split(cfg)["image_path"].iloc[0]
    os.remove(missing)
    with pytest.raises(PipelineError, match=f"{re.escape(missing)}.*re-run preprocess.py"):
        cache.main(cfg)
