"""cache.py: decode once into a memory map; identical tensors; reuse, rebuild, resume, bad images."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_root, row
from config import Config, PipelineError
from dataset import make_dataset, open_cache
import cache
import make_splits
import preprocess


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
    return cache.cache_folder(cfg.data_dir, cfg.stored_side)


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
