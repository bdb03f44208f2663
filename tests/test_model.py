"""The model: GeM pooling, ImageNet weight loading (never a silent random fallback), checkpoints."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from config import Config
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.training.checkpoint import load_checkpoint, recorded_config, save_checkpoint
from model_architecture import CheXpertNet, GeM, build_model


def test_gem_is_average_pooling_at_p1_and_approaches_max_for_large_p():
    x = torch.rand(2, 5, 7, 7) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(GeM(p=200.0)(x), x.amax(dim=(2, 3)), rtol=0.03)  # 49^(-1/200) > 0.98
    gem = GeM(p=3.0)
    assert torch.allclose(gem(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3), atol=1e-6)
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.requires_grad  # p is learned


def test_gem_is_fp32_and_finite_under_fp16_autocast():
    x = torch.full((1, 4, 3, 3), 60.0, dtype=torch.float16)  # 60^3 overflows fp16
    with torch.autocast("cpu", dtype=torch.float16):
        out = GeM(3.0)(x)
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full_like(out, 60.0))


def test_model_shape_and_head():
    model = CheXpertNet(len(LABELS), gem_p=3.0, dropout=0.2)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 14)
    assert model.head.in_features == 1024 and model.dropout.p == 0.2
    assert model.pool.p.item() == pytest.approx(3.0)


def test_missing_imagenet_weights_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PipelineError) as error:
        build_model(Config(pretrained=True))
    message = str(error.value)
    assert "densenet121-a639ec97.pth" in message and str(tmp_path) in message
    assert "--pretrained false" in message and "--pretrained_path" in message


def test_missing_pretrained_path_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        build_model(Config(pretrained=True, pretrained_path=str(tmp_path / "none.pth")))


def old_style_keys(state):
    """Key names as in torchvision's published file: 'norm.1' rather than 'norm1'."""
    import re
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
            for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("where", ["pretrained_path", "hub_cache"])
def test_imagenet_weights_load_from_file_or_hub_cache(monkeypatch, tmp_path, where):
    reference = torchvision.models.densenet121().state_dict()
    if where == "pretrained_path":
        path = tmp_path / "weights.pth"
        cfg = Config(pretrained=True, pretrained_path=str(path))
    else:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        path = tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
        path.parent.mkdir(parents=True)
        cfg = Config(pretrained=True)
        # the real file's hash check is torchvision's; our fake file cannot pass it
        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: torch.load(
            path, weights_only=True))
    torch.save(old_style_keys(reference), path)
    model = build_model(cfg)
    for key in ("conv0.weight", "denseblock1.denselayer1.norm1.weight",
                "denseblock4.denselayer16.conv2.weight", "norm5.running_var"):
        assert torch.equal(model.backbone.state_dict()[key], reference[f"features.{key}"])


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    cfg = Config(pretrained=False, image_size=64)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    import dataclasses
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "config": dataclasses.asdict(cfg), "labels": list(LABELS),
                     "normalization": {"mean": 0.5, "std": 0.25}, "val_auc": {"Edema": None}},
                    tmp_path / "c.pth")
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)
    assert loaded["format_version"] == 1
    restored = CheXpertNet()
    restored.load_state_dict(loaded["model"])
    for a, b in zip(restored.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert recorded_config(load_checkpoint(tmp_path / "c.pth")["config"], Config).image_size == 64


def test_pickled_model_is_refused(tmp_path):
    torch.save(CheXpertNet(), tmp_path / "pickled.pth")  # a whole pickled module
    with pytest.raises(PipelineError, match="weights_only"):
        load_checkpoint(tmp_path / "pickled.pth")


def test_memory_efficient_densenet_gives_the_plain_models_gradients():
    """--memory_efficient true recomputes the dense layers in the backward pass (less memory on
    small GPUs): the loss and every gradient equal the plain model's."""
    torch.manual_seed(0)
    plain = CheXpertNet(dropout=0.0)
    efficient = CheXpertNet(dropout=0.0, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    assert efficient.backbone.denseblock1.denselayer1.memory_efficient
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    losses = []
    for model in (plain, efficient):
        model.train()
        loss = model(images).square().mean()
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=1e-7)
    for (name, a), b in zip(plain.named_parameters(), efficient.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    cfg = Config(pretrained=False, memory_efficient=True)
    assert build_model(cfg).backbone.denseblock4.denselayer16.memory_efficient
