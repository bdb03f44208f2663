"""Export a checkpoint to ONNX and TorchScript, to serve the model without this code.

    python export.py --checkpoint models/RUN/best.pth --output model.onnx

Reads  the checkpoint (default: --run_name's best.pth, else the newest models/*/best.pth) and
       thresholds.json beside it, when there is one.
Writes --output (default model.onnx; ONNX opset 17), <stem>.pt beside it (TorchScript) and
       <stem>.json (labels, input shape, view mode, thresholds, calibration, model_id,
       checkpoint, and not_trained: the labels the checkpoint's training split never labelled,
       whose outputs mean nothing; their thresholds are null).
Both models take one input, "images": uint8 N x 1 x S x S grayscale pixels, S = the checkpoint's
image_size, built like predict.py builds them (imaging.decode_square to the stored side, then
dataset.centre_view); pixel normalisation happens inside. They return "probabilities" (float32
N x labels: sigmoid of the calibrated logits) and "logits" (calibrated: scale x logit + bias per
class from thresholds.json, after the positive-weight offset of training is removed; without
thresholds.json the model's own logits). The batch size N is free. The graph is the single-image,
single-pass model: a thresholds.json fitted with --tta is refused (--allow_threshold_mismatch
true exports anyway, with a warning). The export runs in fp32 on the CPU, and is checked: the
summary line gives the largest difference between onnxruntime's and PyTorch's probabilities.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from config import Config
from cxr.atomic import write_atomic, write_text_atomic
from cxr.cli import run_cli
from cxr.errors import PipelineError
from cxr.evaluation.calibration import calibration_arrays
from cxr.evaluation.ensemble import checkpoint_paths, is_ensemble
from cxr.inference.predictor import load_predictor
from cxr.training.checkpoint import resolve_checkpoint
from model_architecture import model_from_checkpoint

OPSET = 17
INPUT, OUTPUTS = "images", ("probabilities", "logits")


class ServingModel(nn.Module):
    """The trained model plus each class's calibration map: uint8 images -> (probabilities,
    calibrated logits)."""

    def __init__(self, model: nn.Module, scales, biases):
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.as_tensor(scales, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(biases, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images) * self.scale + self.bias
        return torch.sigmoid(logits), logits


def example_input(image_size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 1, image_size, image_size), dtype=torch.uint8,
                         generator=generator)


@contextlib.contextmanager
def quiet_tracing():
    """Tracing warns that CheXpertNet's branches on the input (uint8 or float, 1 or 3 channels)
    are fixed at export: that is what we want, the exported input is always uint8 x 1 channel.
    torch also warns that both tracing exporters are deprecated (see export_onnx)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        yield


def export_onnx(model: ServingModel, example: torch.Tensor, path: Path) -> None:
    # dynamo=False: the TorchScript-based exporter works offline with what requirements.txt
    # installs; torch's newer default (dynamo) needs the onnxscript package as well.
    write_atomic(path, lambda tmp: torch.onnx.export(
        model, (example,), str(tmp), input_names=[INPUT], output_names=list(OUTPUTS),
        dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)}, opset_version=OPSET,
        dynamo=False))


def export_torchscript(model: ServingModel, example: torch.Tensor, path: Path) -> None:
    traced = torch.jit.trace(model, example)
    write_atomic(path, lambda tmp: traced.save(str(tmp)))


def onnx_difference(model: ServingModel, path: Path, image_size: int) -> float:
    """Largest |onnxruntime - PyTorch| probability on fresh random images (another batch size
    than the traced one, so the free batch axis is checked too)."""
    import onnxruntime

    images = example_input(image_size, batch=3, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run([OUTPUTS[0]], {INPUT: images.numpy()})[0]
    with torch.no_grad():
        expected = model(images)[0].numpy()
    return float(np.abs(exported - expected).max())


def main(cfg: Config) -> None:
    path = resolve_checkpoint(cfg)
    # fp32 on the CPU, one pass per image; an ensemble (several checkpoints) is one model
    predictor = load_predictor(path, Config(device="cpu", precision="fp32", channels_last=False,
                                            tta=False, models_dir=cfg.models_dir,
                                            allow_threshold_mismatch=cfg.allow_threshold_mismatch),
                               rebuild=model_from_checkpoint)
    labels, thresholds = list(predictor.labels), predictor.thresholds
    for warning in predictor.warnings:
        print(f"warning: {warning}")
    serving = ServingModel(predictor.model,
                           *calibration_arrays(thresholds.calibration, tuple(labels))).eval()
    output = Path(cfg.output or "model.onnx")
    if output.suffix.lower() != ".onnx":
        raise PipelineError(f"--output {output} should end in .onnx (the TorchScript and JSON "
                            "files are written beside it with the same stem)")
    output.parent.mkdir(parents=True, exist_ok=True)
    size, side = predictor.image_size, predictor.side
    example = example_input(size)
    with quiet_tracing():
        export_onnx(serving, example, output)
        export_torchscript(serving, example, output.with_suffix(".pt"))
    spec = {"checkpoint": str(path), "labels": labels,
            "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", 1, size, size],
                      "preprocessing": f"grayscale, resized to {side} x {side} px (area "
                                       f"interpolation when shrinking), centre crop {size} px"},
            "view_mode": predictor.view_mode,
            "views": "frontal films only" if predictor.view_mode == "frontal" else
                     "one view of a study (the single-image path of a study-mode model)",
            "model_id": predictor.model_id, "outputs": list(OUTPUTS),
            "thresholds": {label: None if label in predictor.untrained else value
                           for label, value in thresholds.values.items()},
            "not_trained": list(predictor.untrained),
            "thresholds_source": thresholds.source,
            "calibration": {"method": thresholds.method, "parameters": thresholds.calibration},
            "logit_offset_removed": predictor.logit_offset_removed,
            **({"ensemble": [str(p) for p in checkpoint_paths(str(path))]}
               if is_ensemble(str(path)) else {})}
    write_text_atomic(json.dumps(spec, indent=2), output.with_suffix(".json"))
    difference = onnx_difference(serving, output, size)
    print(f"export: wrote {output}, {output.with_suffix('.pt')} and {output.with_suffix('.json')}"
          f" from {path} (input uint8 N x 1 x {size} x {size}; "
          f"largest |onnxruntime - PyTorch| probability difference {difference:.1e})")


if __name__ == "__main__":
    run_cli(main, script="export.py", defaults=Config())
