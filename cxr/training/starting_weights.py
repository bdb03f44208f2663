"""Published weights to start a backbone from (train.py --init), and the input each expects.

A source's weights are only half of it: its input convention (how many channels, how the pixels
are scaled, the side it was trained at) is the other half, and a mismatch fails silently (every
film gets the same output). So every source here comes with its convention, which train.py
stores in the checkpoint's "normalization" record and the model applies to every batch
(model_architecture.CheXpertNet.normalize): predict.py, app.py and export.py read it from there.

    format           keys                                    input convention
    torchxrayvision  torchvision DenseNet121's, conv0 taking  1 channel, (2 x/255 - 1) x 1024 (its
                     1 channel; an 18-output classifier       datasets.normalize), 224 px
    libauc           torchvision DenseNet121's                3 channels (grey copied, RGB),
                                                              ImageNet mean/std, 320 px (its
                                                              CheXpert dataset class)
    chexnet          module.densenet121.features... (old      3 channels, ImageNet mean/std,
                     "norm.1" layer names), in "state_dict"   224 px (arnoweng/CheXNet)
    torchvision      a torchvision state dict of --backbone   this pipeline's: the training
                                                              split's mean/std, 3 channels
    checkpoint       a checkpoint of this pipeline            the one it carries

Every source's classifier is dropped: the head is this pipeline's own (14 labels). The auto
format is told from the keys; a torchvision-layout DenseNet121 with 3 input channels and no
ImageNet classifier may be LibAUC's or any other torchvision-format model, which the keys cannot
tell apart: that one must be named with --init_format.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cxr.errors import PipelineError
from cxr.training.checkpoint import REQUIRED_KEYS, UNSAFE_LOAD, is_checkpoint, load_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of pixels in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
# DenseNet files saved by old torchvision (CheXNet's) name layers "norm.1"; current ones "norm1"
_OLD_DENSE_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|"
                            r"running_mean|running_var|num_batches_tracked))$")


@dataclass(frozen=True)
class InputConvention:
    """How a source's weights expect a grey film of pixels x in [0, 1]: copied to `channels`,
    then (x - mean[c]) / std[c] per channel; mean and std None = the training split's own
    (preprocess.py's stats.json, one value for every channel)."""
    source: str
    channels: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    size: int | None  # the side the source trained at (None: no fixed one)

    def normalization(self, stats: dict) -> dict:
        """The checkpoint's "normalization" record: the pixel statistics the model applies
        (`stats`, the training split's, where the source has none), its channels, the source and
        the side it was trained at."""
        mean = list(self.mean) if self.mean is not None else stats["mean"]
        std = list(self.std) if self.std is not None else stats["std"]
        return {"mean": mean, "std": std, "channels": self.channels, "source": self.source,
                "source_size": self.size}


CONVENTIONS: dict[str, InputConvention] = {
    # xrv.datasets.normalize(img, 255): (2 x - 1) x 1024 = (x - 0.5) / (1 / 2048)
    "torchxrayvision": InputConvention("torchxrayvision", 1, (0.5,), (1 / 2048,), 224),
    "libauc": InputConvention("libauc", 3, IMAGENET_MEAN, IMAGENET_STD, 320),
    "chexnet": InputConvention("chexnet", 3, IMAGENET_MEAN, IMAGENET_STD, 224),
    "torchvision": InputConvention("torchvision", 3, None, None, None),
}


@dataclass(frozen=True)
class StartingWeights:
    """What --init gives the model: a state dict in torchvision's whole-network layout (format
    checkpoint: already the model's backbone's keys), its classifier dropped,
    and the input convention, or a checkpoint's own normalization record."""
    format: str
    state: dict[str, torch.Tensor]
    convention: InputConvention | None
    recorded: dict | None = None  # format checkpoint: its "normalization" record
    backbone: str | None = None  # format checkpoint: the backbone it was trained with

    def normalization(self, stats: dict) -> dict:
        if self.recorded is not None:
            return dict(self.recorded)
        return self.convention.normalization(stats)


# ---- reading what --init names ------------------------------------------------------------------

def read_weights_file(path: Path) -> dict:
    """The file's dict of tensors (or of dicts of them), loaded without executing code."""
    try:
        loaded = load_tensors(path)
    except UNSAFE_LOAD as err:
        raise PipelineError(
            f"--init {path} cannot be loaded safely (weights_only=True): {str(err)[:200]}. It "
            "probably holds a pickled model, which this pipeline never unpickles: save its weights "
            "with torch.save(model.state_dict(), FILE) and pass that FILE (for torchxrayvision "
            "pass its weights name instead, e.g. --init densenet121-res224-all)") from None
    if not isinstance(loaded, dict):
        raise PipelineError(f"--init {path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def unwrap(loaded: dict) -> dict[str, torch.Tensor]:
    """The state dict inside a training file ({"state_dict": ...}, {"model": ...}), without
    DataParallel's "module." prefix."""
    for key in ("state_dict", "model"):
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    state = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not state:
        raise PipelineError("--init: the file holds no tensors (not a state dict)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def import_torchxrayvision():
    """The optional torchxrayvision package, imported without the folders its import puts at
    the front of sys.path (baseline_models/jfhealthcare holds a `config` package, which would
    shadow this project's config.py in every process started afterwards)."""
    saved = list(sys.path)
    try:
        import torchxrayvision
    finally:
        sys.path[:] = saved
    return torchxrayvision


def torchxrayvision_state(name: str) -> dict[str, torch.Tensor]:
    """torchxrayvision's DenseNet121 weights `name`, through its package (which downloads them
    once into ~/.torchxrayvision/)."""
    try:
        xrv = import_torchxrayvision()
    except ImportError:
        raise PipelineError(
            f"--init {name} names torchxrayvision weights, which its package downloads: pip "
            "install torchxrayvision (or pass --init FILE, a state dict saved with "
            "torch.save(model.state_dict(), FILE))") from None
    names = sorted(key for key in xrv.models.model_urls if key.startswith("densenet121"))
    if name not in names:
        raise PipelineError(f"--init {name}: neither a file nor one of torchxrayvision's "
                            f"DenseNet121 weights ({', '.join(names)})")
    try:
        network = xrv.models.DenseNet(weights=name)
    except (OSError, RuntimeError, ValueError) as err:  # requests' errors are OSErrors
        raise PipelineError(
            f"torchxrayvision could not load its weights {name} ({str(err)[:200]}): on a machine "
            f"with internet run python -c \"import torchxrayvision as xrv; "
            f"xrv.models.DenseNet(weights='{name}')\" once and copy ~/.torchxrayvision/ here, "
            "or pass --init FILE (a state dict)") from None
    return network.state_dict()


# ---- telling the format ---------------------------------------------------------------------------

def first_conv_channels(state: dict[str, torch.Tensor]) -> int | None:
    """Input channels of the first 4-D weight (the first convolution's), in the file's order."""
    weight = next((value for value in state.values() if value.ndim == 4), None)
    return None if weight is None else int(weight.shape[1])


def detect_format(state: dict[str, torch.Tensor], backbone: str) -> str:
    """The format of a (unwrapped) state dict, from its keys; an error when they cannot tell."""
    if any(key.startswith("densenet121.") for key in state):
        return "chexnet"
    if first_conv_channels(state) == 1:
        return "torchxrayvision"
    classifier = state.get("classifier.weight")
    if not backbone.startswith("densenet") or classifier is None or classifier.shape[0] == 1000:
        return "torchvision"  # ImageNet's 1000 classes, or a backbone only torchvision has here
    raise PipelineError(
        f"--init: torchvision-layout DenseNet weights with a {classifier.shape[0]}-output "
        "classifier may be LibAUC's (ImageNet mean/std) or another torchvision-format model "
        "(this pipeline's pixel statistics), which the keys cannot tell apart: pass "
        "--init_format libauc or --init_format torchvision")


def torchvision_layout(state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """A source's state dict under torchvision's whole-network keys (CheXNet's prefix and old
    layer names undone; torchxrayvision's op_threshs dropped)."""
    if fmt == "chexnet":
        state = {key.removeprefix("densenet121."): value for key, value in state.items()}
    state = {_OLD_DENSE_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    return {key: value for key, value in state.items() if key != "op_threshs"}


def starting_weights(init: str, init_format: str, backbone: str) -> StartingWeights:
    """What --init `init` (a file, or a torchxrayvision weights name) gives a `backbone` model."""
    path = Path(init)
    if not path.is_file():
        if path.suffix or len(path.parts) > 1 or init_format not in ("auto", "torchxrayvision"):
            raise PipelineError(f"--init {init} not found")
        return source_state(torchxrayvision_state(init), "torchxrayvision", backbone)
    loaded = read_weights_file(path)
    if is_checkpoint(loaded):
        if init_format not in ("auto", "checkpoint"):
            raise PipelineError(f"--init {init} is a checkpoint of this pipeline, not "
                                f"{init_format} weights: pass --init_format checkpoint (or auto)")
        return checkpoint_weights(loaded, path)
    if init_format == "checkpoint":
        raise PipelineError(f"--init {init} is not a checkpoint of this pipeline (it lacks "
                            f"one of {', '.join(REQUIRED_KEYS)})")
    state = unwrap(loaded)
    fmt = detect_format(state, backbone) if init_format == "auto" else init_format
    return source_state(state, fmt, backbone)


def source_state(state: dict[str, torch.Tensor], fmt: str, backbone: str) -> StartingWeights:
    if fmt != "torchvision" and backbone != "densenet121":
        raise PipelineError(f"--init_format {fmt} holds DenseNet121 weights; train it with "
                            f"--backbone densenet121, not {backbone}")
    return StartingWeights(fmt, torchvision_layout(state, fmt), CONVENTIONS[fmt])


def checkpoint_weights(checkpoint: dict, path: Path) -> StartingWeights:
    """A checkpoint of this pipeline (LibAUC's two-stage recipe: a BCE run, fine-tuned with
    --loss aucm): its backbone's weights and its input convention, never its head."""
    prefix = "backbone."
    state = {key[len(prefix):]: value for key, value in checkpoint["model"].items()
             if key.startswith(prefix)}
    recorded = {"channels": 3, "source": f"checkpoint {path}",
                "source_size": checkpoint["config"].get("image_size"),
                **checkpoint["normalization"]}  # older checkpoints record mean and std only
    return StartingWeights("checkpoint", state, None, recorded,
                           checkpoint["config"].get("backbone", "densenet121"))
