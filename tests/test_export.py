"""export.py: ONNX and TorchScript files that give PyTorch's probabilities."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

import export
from config import Config
from conftest import shared, tiny_checkpoint, write_thresholds_json
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.inference.predictor import RadiographFiles
from cxr.training.checkpoint import load_checkpoint, model_id
from model_architecture import model_from_checkpoint

SCALES = np.linspace(0.5, 1.5, len(LABELS))  # the calibration's per-class scales


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 64 px checkpoint with a stored per-class calibration, exported once for every test."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint = tiny_checkpoint(folder / "run" / "best.pth")
    write_thresholds_json(checkpoint, thresholds={label: 0.4 for label in LABELS},
                          calibration={label: {"scale": float(scale), "bias": 0.25}
                                       for label, scale in zip(LABELS, SCALES)})
    output = folder / "out" / "model.onnx"
    export.main(Config(checkpoint=str(checkpoint), output=str(output)))
    return checkpoint, output


def pytorch_probabilities(checkpoint, images: torch.Tensor) -> np.ndarray:
    model, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    with torch.no_grad():
        return torch.sigmoid(model(images) * torch.from_numpy(SCALES).float() + 0.25).numpy()


def real_images(side: int, size: int) -> torch.Tensor:
    """Five real radiographs as predict.py feeds them (uint8 N x 1 x size x size)."""
    names = ("gray16_xray.png", "rgba_xray.png", "cmyk_xray.jpg", "xray_monochrome1.dcm",
             "xray_monochrome2.dcm")
    data = RadiographFiles([str(shared(f"bad-inputs/images/{n}")) for n in names], size, side)
    return data.__getitems__(list(range(len(names)))).images


def test_onnxruntime_matches_pytorch(exported):
    checkpoint, output = exported
    images = real_images(Config(image_size=64).stored_side, 64)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    for batch in (images, images[:1]):  # the batch axis is free
        onnx_probabilities, logits = session.run(None, {"images": batch.numpy()})
        expected = pytorch_probabilities(checkpoint, batch)
        assert onnx_probabilities.shape == (len(batch), len(LABELS))
        assert np.abs(onnx_probabilities - expected).max() < 1e-4
        assert np.allclose(1 / (1 + np.exp(-logits)), onnx_probabilities, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")
def test_torchscript_and_description_beside_it(exported):
    checkpoint, output = exported
    images = real_images(Config(image_size=64).stored_side, 64)
    scripted = torch.jit.load(str(output.with_suffix(".pt")))
    with torch.no_grad():
        probabilities, _ = scripted(images)
    assert np.abs(probabilities.numpy() - pytorch_probabilities(checkpoint, images)).max() < 1e-4
    spec = json.loads(output.with_suffix(".json").read_text())
    assert spec["labels"] == list(LABELS) and spec["calibration"]["method"] == "platt"
    assert spec["calibration"]["parameters"]["Edema"]["bias"] == 0.25
    assert spec["input"]["dtype"] == "uint8" and spec["input"]["shape"] == ["batch", 1, 64, 64]
    assert spec["thresholds"]["Edema"] == 0.4 and spec["view_mode"] == "frontal"
    assert spec["model_id"] == model_id(load_checkpoint(checkpoint))


def test_thresholds_fitted_with_tta_or_for_other_weights_are_refused(exported, tmp_path):
    checkpoint, _ = exported
    folder = tmp_path / "run"
    folder.mkdir()
    copy = folder / "best.pth"
    copy.write_bytes(checkpoint.read_bytes())
    output = str(tmp_path / "model.onnx")
    write_thresholds_json(copy, tta=True)
    with pytest.raises(PipelineError, match="fitted with test-time augmentation"):
        export.main(Config(checkpoint=str(copy), output=output))
    write_thresholds_json(copy, model_id="0" * 16)
    with pytest.raises(PipelineError, match="fitted for other weights.*evaluate.py"):
        export.main(Config(checkpoint=str(copy), output=output))


def test_output_must_be_an_onnx_file(exported):
    checkpoint, output = exported
    with pytest.raises(PipelineError, match="should end in .onnx"):
        export.main(Config(checkpoint=str(checkpoint), output=str(output.with_suffix(".bin"))))


def test_untrained_labels_are_listed_without_a_threshold(tmp_path):
    """model.json names the labels the checkpoint's training split never labelled (an NIH
    model's Fracture and Support Devices): their outputs mean nothing, their thresholds null."""
    untrained = ["Fracture", "Support Devices"]
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth", trained_labels=[
        label for label in LABELS if label not in untrained])
    write_thresholds_json(checkpoint, thresholds={label: 0.4 for label in LABELS})
    output = tmp_path / "out" / "model.onnx"
    export.main(Config(checkpoint=str(checkpoint), output=str(output)))
    spec = json.loads(output.with_suffix(".json").read_text())
    assert spec["not_trained"] == untrained
    assert spec["thresholds"]["Fracture"] is None and spec["thresholds"]["Edema"] == 0.4
    assert spec["labels"] == list(LABELS)  # the outputs keep their order and number


def test_a_checkpoint_without_the_record_lists_none(exported):
    _, output = exported
    spec = json.loads(output.with_suffix(".json").read_text())
    assert spec["not_trained"] == [] and None not in spec["thresholds"].values()
