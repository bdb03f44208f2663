"""Reading radiographs of every common pixel mode; unusable files give an error naming them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared
from dataset import CheXpertDataset
from imaging import ImageReadError, read_grayscale
import pandas as pd

from config import LABELS


@pytest.mark.parametrize("name", ["rgba_xray.png", "gray16_xray.png", "cmyk_xray.jpg"])
def test_odd_but_valid_modes_load_as_a_radiograph(name):
    image = read_grayscale(shared(f"bad-inputs/images/{name}"))
    assert image.dtype == np.uint8 and image.ndim == 2 and min(image.shape) >= 320
    assert image.std() > 20 and 40 < image.mean() < 215  # real anatomy, not flat, black or white


def test_cmyk_and_sixteen_bit_copies_of_one_xray_agree():
    cmyk = read_grayscale(shared("bad-inputs/images/cmyk_xray.jpg")).astype(float)
    gray16 = read_grayscale(shared("bad-inputs/images/gray16_xray.png")).astype(float)
    # positive correlation: CMYK was not inverted, 16 bit was not crushed to black
    assert np.corrcoef(cmyk.ravel(), gray16.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("name, reason", [
    ("truncated.jpg", "truncated"),
    ("empty.jpg", "cannot identify"),
    ("not_an_image.jpg", "cannot identify"),
    ("decompression_bomb.png", "decompression bomb"),
    ("one_pixel.png", "1 x 1 px"),
    ("extreme_aspect.png", "3000 x 12 px"),
])
def test_unusable_images_raise_naming_the_file(name, reason):
    path = shared(f"bad-inputs/images/{name}")
    with pytest.raises(ImageReadError) as error:
        read_grayscale(path)
    assert str(path) in str(error.value) and reason in str(error.value)


def test_sixteen_bit_uses_its_own_range(tmp_path):
    twelve_bit = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    Image.fromarray(twelve_bit).save(tmp_path / "x.png")
    image = read_grayscale(tmp_path / "x.png")
    assert image.min() == 0 and image.max() == 255


def test_full_resolution_jpeg_decodes_reduced_but_large_enough():
    path = shared("chexpert-fullres-sample/CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg")
    full = read_grayscale(path)
    reduced = read_grayscale(path, size_hint=320)
    assert min(full.shape) > 1500 and 320 <= min(reduced.shape) < min(full.shape) / 2


def test_dataset_item_is_normalised_three_channel(tmp_path):
    Image.fromarray(np.full((90, 70), 128, np.uint8)).save(tmp_path / "a.jpg")
    frame = pd.DataFrame({"image_path": [str(tmp_path / "a.jpg")], **{l: [1] for l in LABELS}})
    image, target = CheXpertDataset(frame, 48, 51, mean=0.5, std=0.25, augment=False)[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert torch.allclose(image, torch.full_like(image, (128 / 255 - 0.5) / 0.25), atol=0.02)
    assert target.shape == (14,) and target.sum() == 14


def test_unreadable_image_in_dataset_names_it(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    frame = pd.DataFrame({"image_path": [str(tmp_path / "bad.jpg")], **{l: [0] for l in LABELS}})
    with pytest.raises(ImageReadError, match="bad.jpg"):
        CheXpertDataset(frame, 32, 34, 0.5, 0.25, augment=True)[0]
