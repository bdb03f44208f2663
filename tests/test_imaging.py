"""Reading radiographs of every common pixel mode; unusable files give an error naming them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import shared
from cxr.data.imaging import ImageReadError, read_grayscale
from cxr.data.labels import LABELS
from dataset import CheXpertDataset


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


def test_dataset_items_are_uint8_centre_or_random_views(tmp_path):
    gradient = np.tile(np.arange(0, 250, 2.5, dtype=np.uint8), (100, 1))  # left dark, right light
    Image.fromarray(gradient).save(tmp_path / "a.png")
    frame = pd.DataFrame({"image_path": [str(tmp_path / "a.png")], **{l: [1] for l in LABELS}})
    image, target = CheXpertDataset(frame, 48, 51, augment=False)[0]
    assert image.shape == (1, 48, 48) and image.dtype == torch.uint8
    assert target.shape == (14,) and target.sum() == 14
    assert image[0, :, 0].float().mean() < 30 and image[0, :, -1].float().mean() > 170
    torch.manual_seed(0)
    augmented = [CheXpertDataset(frame, 48, 51, augment=True)[0][0] for _ in range(5)]
    assert all(a.shape == (1, 48, 48) for a in augmented)
    assert len({a.float().sum().item() for a in augmented}) == 5  # each one different
    # never flipped: the left side stays the dark side
    assert all(a[0, :, :8].float().mean() < a[0, :, -8:].float().mean() for a in augmented)


def test_model_normalises_uint8_on_the_device():
    from model_architecture import CheXpertNet
    model = CheXpertNet(pixel_mean=0.4, pixel_std=0.2)
    pixels = torch.full((2, 1, 8, 8), 153, dtype=torch.uint8)
    normalised = model.normalize(pixels)
    assert normalised.shape == (2, 3, 8, 8)
    assert torch.allclose(normalised, torch.full_like(normalised, (0.6 - 0.4) / 0.2))
    assert {"pixel_mean", "pixel_std"} <= set(model.state_dict())  # saved with the weights


def test_unreadable_image_in_dataset_names_it(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    frame = pd.DataFrame({"image_path": [str(tmp_path / "bad.jpg")], **{l: [0] for l in LABELS}})
    with pytest.raises(ImageReadError, match="bad.jpg"):
        CheXpertDataset(frame, 32, 34, augment=True)[0]
