"""--backbone: every torchvision network under the same head, its ImageNet weights, its Grad-CAM
layer, and the consumers (checkpoint, predict.py, study mode, export.py, app.py) for each."""

from __future__ import annotations

import shutil
import urllib.error

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch

import export
from config import Config, validate
from conftest import app_with_upload, shared, tiny_checkpoint
from cxr.data.labels import LABELS
from cxr.errors import ConfigError, PipelineError
from cxr.inference.gradcam import grad_cam
from cxr.training.checkpoint import load_checkpoint
from model_architecture import BACKBONES, CheXpertNet, backbone_network, build_model, \
    model_from_checkpoint

NAMES = list(BACKBONES)


def uint8_images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("name", NAMES)
def test_each_backbone_gives_a_logit_per_label_and_a_grad_cam_map(name):
    torch.manual_seed(0)
    model = CheXpertNet(backbone=name).eval()
    assert model.head.in_features == BACKBONES[name].channels
    images = uint8_images()
    with torch.no_grad():
        features = model.backbone(model.normalize(images))
        logits = model(images)
    assert features.shape[1] == BACKBONES[name].channels and features.shape[-1] == 2  # 64 / 32
    assert logits.shape == (2, len(LABELS)) and torch.isfinite(logits).all()
    nhwc = model.to(memory_format=torch.channels_last)  # what prepare_model does
    with torch.no_grad():
        assert torch.allclose(nhwc(images), logits, atol=1e-4)
    cam = grad_cam(model, images, LABELS.index("Cardiomegaly"))
    assert cam.shape == (2, 64, 64) and np.isfinite(cam).all() and cam.max() <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_imagenet_weights_of_each_backbone_load_from_a_file(tmp_path, name):
    torch.manual_seed(1)
    network = backbone_network(name)
    path = tmp_path / "weights.pth"
    torch.save(network.state_dict(), path)
    model = build_model(Config(backbone=name, pretrained=True, pretrained_path=str(path)))
    expected = BACKBONES[name].features(network).state_dict()
    loaded = model.backbone.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_weights_of_another_network_are_refused_naming_the_expected_file(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(backbone_network("resnet50").state_dict(), path)
    with pytest.raises(PipelineError, match="does not hold torchvision's ImageNet "
                                            "efficientnet_b0 weights.*efficientnet_b0_rwightman"):
        build_model(Config(backbone="efficientnet_b0", pretrained=True, pretrained_path=str(path)))


def test_missing_weights_name_the_backbones_own_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PipelineError) as error:
        build_model(Config(backbone="convnext_tiny", pretrained=True))
    message = str(error.value)
    assert "convnext_tiny-983f1562.pth" in message and str(tmp_path) in message
    assert "--pretrained false" in message


def test_memory_efficient_is_for_densenets_only():
    with pytest.raises(ConfigError, match="--backbone resnet50 has none"):
        validate(Config(backbone="resnet50", memory_efficient=True))
    validate(Config(backbone="densenet169", memory_efficient=True))


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_rebuilds_its_backbone_and_exports_with_onnx_parity(tmp_path, name):
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth", backbone=name)
    model, trained = model_from_checkpoint(load_checkpoint(checkpoint))
    assert trained.backbone == name and model.backbone_name == name
    output = tmp_path / "out" / "model.onnx"
    export.main(Config(checkpoint=str(checkpoint), output=str(output),
                       allow_threshold_mismatch=True))
    images = uint8_images(3, seed=2)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = torch.sigmoid(model(images)).numpy()
    assert np.abs(probabilities - expected).max() < 1e-4


def test_a_checkpoint_without_a_backbone_field_is_a_densenet121(tmp_path):
    """Checkpoints written before --backbone existed hold DenseNet121 weights."""
    path = tiny_checkpoint(tmp_path / "old" / "best.pth")
    checkpoint = load_checkpoint(path)
    del checkpoint["config"]["backbone"]
    model, trained = model_from_checkpoint(checkpoint)
    assert trained.backbone == "densenet121" and model.head.in_features == 1024


def test_predict_fuses_a_study_and_draws_grad_cam_with_another_backbone(tmp_path, capsys):
    from test_predict import run_in_process

    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth", backbone="efficientnet_b0",
                                 view_mode="study", max_views=2)
    study = tmp_path / "patient00001" / "study1"
    study.mkdir(parents=True)
    shutil.copy(shared("bad-inputs/images/gray16_xray.png"), study / "view1_frontal.png")
    shutil.copy(shared("bad-inputs/images/rgba_xray.png"), study / "view2_lateral.png")
    output = tmp_path / "predictions.csv"
    code, out, err = run_in_process(capsys, str(tmp_path / "patient00001"), "--checkpoint",
                                    str(checkpoint), "--output", str(output), "--device", "cpu",
                                    "--gradcam", "Edema", "--allow_threshold_mismatch", "true")
    assert code == 0, err
    table = pd.read_csv(output)
    assert len(table) == 1 and table["n_views"][0] == 2
    assert table[list(LABELS)].apply(lambda column: column.between(0, 1)).all().all()
    assert len(list((tmp_path / "predictions_gradcam").glob("*.png"))) == 2  # one per view


@pytest.mark.usefixtures("keep_main_module")
def test_the_app_predicts_and_draws_a_heatmap_with_another_backbone(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth", backbone="resnet50")
    at = app_with_upload(checkpoint, monkeypatch)
    assert sorted(at.dataframe[0].value["finding"]) == sorted(LABELS)
    captions = [caption for image in at.get("image") for caption in image.captions]
    assert len(captions) == 1 and "probability" in captions[0]
