"""train.py --init: every source's weights give, through this pipeline's checkpoint, the features
the source's own model computes with the source's own normalisation, on real NIH films.

Each source model is built by its own package (torchxrayvision, LibAUC, torchvision; CheXNet as
its repository defines it) with seeded random weights; its BatchNorm statistics are set by a
pass over the films, as training would set them, so that the features are of a trained
network's scale. The tolerance is 1e-4 of the features' largest magnitude; each test also shows
that a wrong scaling or channel order misses it by far.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from config import Config
from conftest import LABELS, run_script, shared
from cxr.errors import PipelineError
from cxr.training.checkpoint import load_checkpoint, save_checkpoint
from cxr.training.starting_weights import IMAGENET_MEAN, IMAGENET_STD, import_torchxrayvision, \
    starting_weights
from model_architecture import build_model, model_from_checkpoint, starting_weights_of

FILMS = [f"nih-cxr-small/CheXpert-v1.0-small/valid/{p}/view1_frontal.jpg"
         for p in ("patient00001/study1", "patient00002/study1", "patient29699/study1",
                   "patient29699/study2")]
STATS = {"mean": 0.52, "std": 0.27}  # a training split's pixel statistics (stats.json)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def films() -> np.ndarray:
    """4 real NIH films as 224 x 224 grey uint8 pixels: the same pixels go to both models."""
    paths = [shared(film) for film in FILMS]
    pixels = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (224, 224),
                         interpolation=cv2.INTER_AREA) for p in paths]
    return np.stack(pixels)


def calibrate_batchnorm(features: nn.Module, batch: torch.Tensor) -> None:
    """BatchNorm running statistics of `batch` (as training sets them), then eval mode."""
    for module in features.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the plain average over the pass
    features.train()
    with torch.no_grad():
        features(batch)
    features.eval()


def pipeline_features(tmp_path: Path, weights: str, init_format: str, films: np.ndarray,
                      normalization: dict | None = None) -> torch.Tensor:
    """The backbone's last feature map of the model that train.py builds with --init, saved as
    a checkpoint and rebuilt from it as evaluate.py, predict.py and export.py rebuild it;
    `normalization` replaces the checkpoint's record (the negative controls)."""
    cfg = Config(init=weights, init_format=init_format, pretrained=False, image_size=224)
    start = starting_weights_of(cfg)
    recorded = normalization or start.normalization(STATS)
    model = build_model(cfg, recorded, start=start)
    path = tmp_path / "init.pth"
    save_checkpoint({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                     "labels": list(LABELS), "normalization": recorded}, path)
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    with torch.no_grad():
        return rebuilt.backbone(rebuilt.normalize(torch.from_numpy(films)[:, None]))


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def assert_parity(source: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    error = relative_error(ours, theirs)
    print(f"{source} parity: max |ours - theirs| / max |theirs| = {error:.2e}")
    assert error <= TOLERANCE


def saved_source(network: nn.Module, features: nn.Module, inputs: torch.Tensor, path: Path
                 ) -> tuple[Path, torch.Tensor]:
    """The source network's BatchNorm set on `inputs` (its own preprocessing of the films), its
    state dict saved to `path`: (path, its feature map of `inputs`)."""
    calibrate_batchnorm(features, inputs)
    torch.save(network.state_dict(), path)
    with torch.no_grad():
        return path, features(inputs)


# ---- torchxrayvision -----------------------------------------------------------------------

def xrv_input(films: np.ndarray) -> torch.Tensor:
    """torchxrayvision's documented preprocessing of 224 px films: xrv.utils.normalize(img,
    255, reshape=True) -> 1 x H x W in [-1024, 1024]."""
    xrv = import_torchxrayvision()
    return torch.from_numpy(np.stack([xrv.utils.normalize(f, 255, reshape=True) for f in films]))


@pytest.fixture(scope="module")
def xrv_source(films, tmp_path_factory):
    """(state dict file, its features) of a seeded torchxrayvision DenseNet."""
    try:  # not pytest.importorskip: its import would leave torchxrayvision's folders on sys.path
        xrv = import_torchxrayvision()
    except ImportError:
        pytest.skip("torchxrayvision is not installed")
    torch.manual_seed(0)
    source = xrv.models.DenseNet(weights=None)
    return saved_source(source, source.features, xrv_input(films),
                        tmp_path_factory.mktemp("xrv") / "xrv_densenet121.pt")


def test_torchxrayvision_parity(xrv_source, films, tmp_path):
    path, theirs = xrv_source
    assert torch.load(path, weights_only=True)["classifier.weight"].shape[0] == 18
    ours = pipeline_features(tmp_path, str(path), "auto", films)  # told from the keys
    assert_parity("torchxrayvision", ours, theirs)
    # [0, 1] pixels standardised as ImageNet weights would be: the scale is wrong by ~1000x
    wrong = pipeline_features(tmp_path, str(path), "auto", films,
                              {"mean": [0.5], "std": [0.25], "channels": 1})
    assert relative_error(wrong, theirs) > 100 * TOLERANCE


def test_torchxrayvision_checkpoint_records_its_convention(xrv_source):
    start = starting_weights(str(xrv_source[0]), "auto", "densenet121")
    record = start.normalization(STATS)
    assert start.format == "torchxrayvision"
    assert record == {"mean": [0.5], "std": [1 / 2048], "channels": 1,
                      "source": "torchxrayvision", "source_size": 224}


# ---- LibAUC ------------------------------------------------------------------------------------

def libauc_input(films: np.ndarray) -> torch.Tensor:
    """LibAUC's CheXpert dataset class (libauc/datasets/chexpert.py): cv2 GRAY2RGB, / 255,
    ImageNet mean/std, HWC -> CHW."""
    mean, std = np.array([[IMAGENET_MEAN]]), np.array([[IMAGENET_STD]])
    images = [((cv2.cvtColor(f, cv2.COLOR_GRAY2RGB) / 255.0 - mean) / std).transpose(2, 0, 1) for f in films]
    return torch.from_numpy(np.stack(images).astype(np.float32))


@pytest.fixture(scope="module")
def libauc_source(films, tmp_path_factory):
    models = pytest.importorskip("libauc.models")
    torch.manual_seed(1)
    source = models.densenet121(pretrained=False, num_classes=5, last_activation=None)
    return saved_source(source, source.features, libauc_input(films),
                        tmp_path_factory.mktemp("libauc") / "libauc_densenet121.pth")


def test_libauc_parity(libauc_source, films, tmp_path):
    path, theirs = libauc_source
    ours = pipeline_features(tmp_path, str(path), "libauc", films)
    assert_parity("LibAUC", ours, theirs)
    bgr = {"mean": list(IMAGENET_MEAN[::-1]), "std": list(IMAGENET_STD[::-1]), "channels": 3}
    assert relative_error(pipeline_features(tmp_path, str(path), "libauc", films, bgr),
                          theirs) > 10 * TOLERANCE


def test_libauc_keys_alone_are_ambiguous(libauc_source):
    with pytest.raises(PipelineError, match="--init_format libauc"):
        starting_weights(str(libauc_source[0]), "auto", "densenet121")


# ---- CheXNet (arnoweng/CheXNet's model.pth.tar layout) -------------------------------------------

class CheXNet(nn.Module):
    """arnoweng/CheXNet's model: torchvision's DenseNet121 with a 14-output sigmoid classifier."""

    def __init__(self):
        super().__init__()
        self.densenet121 = torchvision.models.densenet121(weights=None)
        self.densenet121.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())


def old_layer_names(state: dict) -> dict:
    """The "norm.1" layer names of the torchvision of 2017 that CheXNet's file has."""
    import re
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return {pattern.sub(r"\1.\2.", key): value for key, value in state.items()}


def chexnet_input(films: np.ndarray) -> torch.Tensor:
    """CheXNet's transforms: an RGB PIL image, ToTensor, Normalize(ImageNet)."""
    pipeline = transforms.Compose([transforms.ToTensor(),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([pipeline(Image.fromarray(f).convert("RGB")) for f in films])


def test_chexnet_parity(films, tmp_path):
    torch.manual_seed(2)
    source = nn.DataParallel(CheXNet())
    calibrate_batchnorm(source.module.densenet121.features, chexnet_input(films))
    path = tmp_path / "model.pth.tar"
    state = old_layer_names(source.state_dict())
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save({"epoch": 7, "arch": "densenet121", "state_dict": state}, path)
    with torch.no_grad():
        theirs = source.module.densenet121.features(chexnet_input(films))
    ours = pipeline_features(tmp_path, str(path), "auto", films)
    assert_parity("CheXNet", ours, theirs)
    # this pipeline's own statistics instead of ImageNet's
    ours_stats = {"mean": [0.52], "std": [0.27], "channels": 3}
    assert relative_error(pipeline_features(tmp_path, str(path), "auto", films, ours_stats),
                          theirs) > 10 * TOLERANCE


# ---- torchvision (any backbone) and this pipeline's own checkpoints -------------------------

@pytest.mark.parametrize("backbone", ["densenet121", "resnet50"])
def test_torchvision_parity(films, tmp_path, backbone):
    """A torchvision state dict (another classifier size) trains with this pipeline's own pixel
    statistics, copied to 3 channels."""
    torch.manual_seed(3)
    source = getattr(torchvision.models, backbone)(weights=None, num_classes=14)
    features = source.features if backbone == "densenet121" else nn.Sequential(
        *list(source.children())[:-2])
    pixels = torch.from_numpy(films)[:, None].float().div(255).sub(STATS["mean"]) \
        .div(STATS["std"]).expand(-1, 3, -1, -1)
    calibrate_batchnorm(features, pixels)
    path = tmp_path / f"{backbone}.pth"
    torch.save(source.state_dict(), path)
    with torch.no_grad():
        theirs = features(pixels)
    # a DenseNet's keys alone cannot tell torchvision from LibAUC (test above): named here
    init_format = "torchvision" if backbone == "densenet121" else "auto"
    cfg = Config(init=str(path), init_format=init_format, backbone=backbone, pretrained=False,
                 image_size=224)
    start = starting_weights_of(cfg)
    assert start.format == "torchvision"
    model = build_model(cfg, start.normalization(STATS), start=start).eval()
    with torch.no_grad():
        ours = model.backbone(model.normalize(torch.from_numpy(films)[:, None]))
    assert_parity(f"torchvision {backbone}", ours, theirs)


def test_torchvision_convnext_keeps_the_layernorm_of_its_classifier(tmp_path):
    """ConvNeXt's classifier.0 is a LayerNorm our backbone keeps (norm); only classifier.2, the
    Linear, is the head dropped."""
    torch.manual_seed(4)
    source = torchvision.models.convnext_tiny(weights=None, num_classes=14)
    nn.init.normal_(source.classifier[0].weight)  # not LayerNorm's default ones
    path = tmp_path / "convnext_tiny.pth"
    torch.save(source.state_dict(), path)
    cfg = Config(init=str(path), init_format="torchvision", backbone="convnext_tiny",
                 pretrained=False, image_size=64)
    start = starting_weights_of(cfg)
    model = build_model(cfg, start.normalization(STATS), start=start)
    assert torch.equal(model.backbone.norm.weight, source.classifier[0].weight)
    assert torch.equal(model.backbone.features[0][0].weight, source.features[0][0].weight)


def test_a_checkpoint_starts_the_next_stage_with_its_convention(xrv_source, films, tmp_path):
    """LibAUC's two-stage recipe: stage 2 (--init RUN/best.pth) starts from stage 1's backbone
    and keeps its input convention (here torchxrayvision's), never its head."""
    cfg = Config(init=str(xrv_source[0]), pretrained=False, image_size=224)
    start = starting_weights_of(cfg)
    first = build_model(cfg, start.normalization(STATS), start=start)
    path = tmp_path / "stage1.pth"
    save_checkpoint({"model": first.state_dict(), "config": dataclasses.asdict(cfg),
                     "labels": list(LABELS), "normalization": start.normalization(STATS)}, path)
    stage2 = Config(init=str(path), pretrained=False, image_size=224)
    again = starting_weights_of(stage2)
    assert again.format == "checkpoint"
    assert again.normalization(STATS)["channels"] == 1
    second = build_model(stage2, again.normalization(STATS), start=again).eval()
    for key, value in first.backbone.state_dict().items():
        assert torch.equal(second.backbone.state_dict()[key], value), key
    assert not torch.equal(second.head.weight, first.head.weight)  # a new head
    with pytest.raises(PipelineError, match="--backbone densenet121"):
        build_model(dataclasses.replace(stage2, backbone="resnet50"), again.normalization(STATS),
                    start=again)


# ---- clear errors, never random weights -------------------------------------------------------

def test_a_pickled_model_is_refused(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(torchvision.models.resnet18(weights=None), path)  # a pickled module
    with pytest.raises(PipelineError, match="never unpickles"):
        starting_weights(str(path), "auto", "densenet121")


def test_weights_of_another_network_are_refused(xrv_source, tmp_path):
    with pytest.raises(PipelineError, match="--backbone densenet121"):
        starting_weights(str(xrv_source[0]), "auto", "resnet50")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    start = starting_weights(str(path), "torchvision", "resnet50")
    with pytest.raises(PipelineError, match="do not fit resnet50"):
        build_model(Config(init=str(path), backbone="resnet50", pretrained=False), STATS,
                    start=start)


def test_torchxrayvision_names_offline_or_without_the_package(monkeypatch, tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    import requests

    def offline(url, filename):
        raise requests.ConnectionError(f"no route to {url}")

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.torchxrayvision
    monkeypatch.setattr(xrv.utils, "download", offline)
    with pytest.raises(PipelineError, match="could not load its weights densenet121-res224-all"):
        starting_weights("densenet121-res224-all", "auto", "densenet121")
    with pytest.raises(PipelineError, match="DenseNet121 weights"):
        starting_weights("resnet50-res512-all", "auto", "densenet121")
    with pytest.raises(PipelineError, match="not found"):
        starting_weights("missing/weights.pth", "auto", "densenet121")
    monkeypatch.setitem(__import__("sys").modules, "torchxrayvision", None)
    with pytest.raises(PipelineError, match="pip install torchxrayvision"):
        starting_weights("densenet121-res224-all", "auto", "densenet121")


# ---- train.py --init, then predict.py and export.py, which take no new option ----------------

def test_train_with_torchxrayvision_weights_then_predict_and_export(xrv_source, data_args,
                                                                    tmp_path):
    args, models = data_args
    out = run_script("train.py", *args, "--init", str(xrv_source[0]), "--run_name", "xrv",
                     "--image_size", "64", "--batch_size", "8", "--epochs", "1",
                     "--frozen_epochs", "0", "--num_workers", "0", "--augment", "false")
    assert "(torchxrayvision): 1 input channel(s)" in out
    assert "trained at 224 px and this run trains at --image_size 64" in out
    checkpoint = load_checkpoint(models / "xrv" / "best.pth")
    assert checkpoint["normalization"]["channels"] == 1
    assert checkpoint["model"]["backbone.conv0.weight"].shape[1] == 1
    film = str(shared(FILMS[0]))
    run_script("predict.py", film, "--checkpoint", str(models / "xrv" / "best.pth"),
               "--output", str(tmp_path / "p.csv"), "--allow_threshold_mismatch", "true")
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 2
    run_script("export.py", "--checkpoint", str(models / "xrv" / "best.pth"),
               "--output", str(tmp_path / "m.onnx"), "--allow_threshold_mismatch", "true")
    assert (tmp_path / "m.onnx").is_file()
