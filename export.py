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
thresholds.json the model's own logits), and with the input gate stored with the thresholds
(cxr/evaluation/ood.py) "ood_score" (float32 N) and "in_distribution" (bool N: ood_score <= the
gate's threshold), as predict.py computes them. The batch size N is free. The graph is the single-image,
single-pass model: a thresholds.json fitted with --tta is refused (--allow_threshold_mismatch
true exports anyway, with a warning). The export runs in fp32 on the CPU, and is checked: the
summary line gives the largest difference between onnxruntime's and PyTorch's probabilities.
"""

from __future__ import annotations

import contextlib
import json
import math
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
from cxr.evaluation.ood import FeatureTap, GateScores
from cxr.inference.predictor import load_predictor
from cxr.training.checkpoint import resolve_checkpoint
from model_architecture import model_from_checkpoint

OPSET = 17
INPUT, OUTPUTS = "images", ("probabilities", "logits")
GATE_OUTPUTS = ("ood_score", "in_distribution")  # with an input gate


class ServingModel(nn.Module):
    """The trained model plus each class's calibration map: uint8 images -> (probabilities,
    calibrated logits), and with an input gate (its scorer and threshold) (..., ood_score,
    in_distribution) from the same pass."""

    def __init__(self, model: nn.Module, scales, biases, gate: GateScores | None = None,
                 threshold: float = math.inf):
        super().__init__()
        self.model, self.gate = model, gate
        self.register_buffer("scale", torch.as_tensor(scales, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(biases, dtype=torch.float32))
        self.register_buffer("threshold", torch.tensor(threshold, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.gate is None:
            logits = self.model(images) * self.scale + self.bias
            return torch.sigmoid(logits), logits
        with FeatureTap(self.model) as tap:
            logits = self.model(images) * self.scale + self.bias
            scores = self.gate(tap.take())
        return torch.sigmoid(logits), logits, scores, scores <= self.threshold


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


def output_names(model: ServingModel) -> tuple[str, ...]:
    return OUTPUTS if model.gate is None else (*OUTPUTS, *GATE_OUTPUTS)


def export_onnx(model: ServingModel, example: torch.Tensor, path: Path) -> None:
    # dynamo=False: the TorchScript-based exporter works offline with what requirements.txt
    # installs; torch's newer default (dynamo) needs the onnxscript package as well.
    names = output_names(model)
    write_atomic(path, lambda tmp: torch.onnx.export(
        model, (example,), str(tmp), input_names=[INPUT], output_names=list(names),
        dynamic_axes={name: {0: "batch"} for name in (INPUT, *names)}, opset_version=OPSET,
        dynamo=False))


def export_torchscript(model: ServingModel, example: torch.Tensor, path: Path) -> None:
    traced = torch.jit.trace(model, example)
    write_atomic(path, lambda tmp: traced.save(str(tmp)))


def onnx_difference(model: ServingModel, path: Path, image_size: int) -> float:
    """Largest |onnxruntime - PyTorch| probability (and ood_score) on fresh random images
    (another batch size than the traced one, so the free batch axis is checked too)."""
    import onnxruntime

    images = example_input(image_size, batch=3, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [OUTPUTS[0]] + ([] if model.gate is None else [GATE_OUTPUTS[0]])
    exported = session.run(names, {INPUT: images.numpy()})
    with torch.no_grad():
        outputs = model(images)
    expected = [outputs[0]] + ([] if model.gate is None else [outputs[2]])
    return max(float(np.abs(got - want.numpy()).max()) for got, want in zip(exported, expected))


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
    gate = thresholds.gate
    serving = ServingModel(predictor.model,
                           *calibration_arrays(thresholds.calibration, tuple(labels)),
                           predictor.gate, gate.threshold if gate else math.inf).eval()
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
            "model_id": predictor.model_id, "outputs": list(output_names(serving)),
            "input_gate": None if gate is None else {
                "method": gate.method, "threshold": gate.threshold, "quantile": gate.quantile,
                "fitted_on": f"val ({gate.n_films} films)",
                "outputs": "ood_score, and in_distribution = ood_score <= threshold"},
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
