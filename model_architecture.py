"""A torchvision backbone + GeM pooling + dropout + linear head, and loading its starting weights
(torchvision's ImageNet weights, or --init's chest X-ray weights with their input convention).

    backbone (last feature map, C x H/32 x W/32) -> ReLU -> GeM -> Dropout -> Linear(C, 14)

The backbone is --backbone (BACKBONES): DenseNet121 (the default, C = 1024), DenseNet169,
ResNet50, EfficientNet-B0/B3 or ConvNeXt-Tiny, cut before its own pooling and classifier. Its
output, the last feature map, is also what Grad-CAM weighs (cxr/inference/gradcam.py).

In study mode (view_mode study) the input is a study's views, B x V x 1 x H x W with a B x V mask
of the views present: the backbone and GeM run on each present view, and the pooled features
are fused (mean, max, or attention weights learned from the features) before dropout and head.

Under the U-MultiClass policy a label gets three outputs (negative, positive, uncertain) instead
of one; the model still returns one logit per label, log p(pos) - log p(neg): the softmax
restricted to positive and negative, as the CheXpert paper scores U-MultiClass.

Training's BCE with positive weight w drives a label's logit to the calibrated one + log w; the
model's label logits (forward without raw) subtract that offset (the logit_offset buffer, set by
train.py from the training split and saved in every checkpoint), so every consumer gets logits
whose sigmoid estimates the probability. --loss focal and aucm move the logits by no known
amount: their offset is 0, and evaluate.py's calibration fitted on val maps their scores.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from urllib.error import URLError

import torch
import torch.nn.functional as F
import torchvision.models as tv
from torch import nn

from config import Config
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.training.checkpoint import load_weights, recorded_config
from cxr.training.losses import output_starts
from cxr.training.starting_weights import StartingWeights, starting_weights, torchvision_layout

# ---- backbones -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backbone:
    """A torchvision classification network used up to its last feature map."""
    build: Callable[..., nn.Module]  # torchvision's constructor (weights=None here)
    weights: tv.WeightsEnum  # its ImageNet weights (the best torchvision publishes for it)
    channels: int  # channels of the last feature map: the head's input
    features: Callable[[nn.Module], nn.Module]  # the whole network -> the part we keep
    # the first stage at 1/4 of the input's side, within the part kept: its channel means are
    # the input gate's low-level features (cxr/evaluation/ood.py)
    early: str


def _named_children_until(network: nn.Module, stop: str) -> nn.Module:
    """The network's top-level modules before `stop`, under their own names (so its ImageNet
    state dict loads by name): ResNet's conv1 ... layer4, without avgpool and fc."""
    children = OrderedDict()
    for name, child in network.named_children():
        if name == stop:
            break
        children[name] = child
    return nn.Sequential(children)


def _convnext_features(network: nn.Module) -> nn.Module:
    """ConvNeXt's stages and the LayerNorm its classifier applies first (kept per position, as
    the pretrained norm of the feature map; pooling follows). Its stages end in a residual sum
    of any sign, so without the norm the ReLU before GeM would see an unscaled map."""
    return nn.Sequential(OrderedDict(features=network.features, norm=network.classifier[0]))


BACKBONES: dict[str, Backbone] = {
    "densenet121": Backbone(tv.densenet121, tv.DenseNet121_Weights.IMAGENET1K_V1, 1024,
                            lambda network: network.features, "denseblock1"),
    "densenet169": Backbone(tv.densenet169, tv.DenseNet169_Weights.IMAGENET1K_V1, 1664,
                            lambda network: network.features, "denseblock1"),
    "resnet50": Backbone(tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V2, 2048,
                         lambda network: _named_children_until(network, "avgpool"), "layer1"),
    "efficientnet_b0": Backbone(tv.efficientnet_b0, tv.EfficientNet_B0_Weights.IMAGENET1K_V1,
                                1280, lambda network: network.features, "2"),
    "efficientnet_b3": Backbone(tv.efficientnet_b3, tv.EfficientNet_B3_Weights.IMAGENET1K_V1,
                                1536, lambda network: network.features, "2"),
    "convnext_tiny": Backbone(tv.convnext_tiny, tv.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, 768,
                              _convnext_features, "features.1"),
}


def backbone_network(name: str, memory_efficient: bool = False, channels: int = 3) -> nn.Module:
    """The whole torchvision network of a backbone, randomly initialised; its first convolution
    takes `channels` (torchxrayvision's DenseNet121 takes the grey film as one)."""
    spec = BACKBONES[name]
    # config.validate allows memory_efficient for the DenseNets only
    network = spec.build(weights=None, **({"memory_efficient": True} if memory_efficient else {}))
    if channels != 3:
        name_of_first, conv = first_conv(network)
        network.set_submodule(name_of_first, nn.Conv2d(
            channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            bias=conv.bias is not None))
    return network


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution of a network, and its name."""
    return next((name, m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d))


class GeM(nn.Module):
    """Generalized-mean pooling: (mean over H, W of x^p)^(1/p) with a learnable p.

    p = 1 is average pooling and p -> infinity approaches max pooling; learning p lets the model
    weigh small, bright findings (a nodule) more than a plain average would.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: x^3 of large activations overflows fp16
        x = x.float().clamp(min=self.eps).pow(self.p)
        return F.adaptive_avg_pool2d(x, 1).flatten(1).pow(1.0 / self.p)


class CheXpertNet(nn.Module):
    """Takes grayscale radiographs as they come from the loader: B x 1 x H x W uint8 (0-255).

    The input convention of its weights is applied here, on the device: the film copied to the
    backbone's `in_channels` (3 for ImageNet weights, 1 for torchxrayvision's), then each channel
    standardised with its pixel mean/std (the training split's, or the source's own: cxr/training/
    starting_weights.py). Both are buffers, so they travel in every checkpoint. Float input in
    [0, 1] with 1 or 3 channels is accepted too.
    """

    def __init__(self, num_classes: int = len(LABELS), gem_p: float = 3.0, dropout: float = 0.2,
                 pixel_mean: float | Sequence[float] = 0.5,
                 pixel_std: float | Sequence[float] = 0.25,
                 multiclass: tuple[bool, ...] | None = None, fusion: str = "mean",
                 memory_efficient: bool = False, backbone: str = "densenet121",
                 in_channels: int = 3):
        super().__init__()
        # one value for every channel, or one per channel
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1))
        self.in_channels = in_channels
        spec = BACKBONES[backbone]
        self.backbone_name = backbone
        self.backbone = spec.features(backbone_network(backbone, memory_efficient, in_channels))
        self.early_stage = spec.early  # a path in self.backbone (Backbone.early)
        # a path in self.backbone: its weight's memory format sets the input's (channels_last)
        self.first_conv_path = first_conv(self.backbone)[0]
        self.pool = GeM(gem_p)
        self.dropout = nn.Dropout(dropout)
        multiclass = tuple(multiclass or (False,) * num_classes)
        self.multiclass = multiclass if any(multiclass) else None
        self.register_buffer("output_start", output_starts(multiclass), persistent=False)
        # log(pos_weight) per label (labels.logit_offsets); 0 until train.py sets it
        self.register_buffer("logit_offset", torch.zeros(num_classes))
        self.head = nn.Linear(spec.channels, num_classes + 2 * sum(multiclass))
        self.fusion = fusion
        # attention fusion: one score per view from its features, softmax over the study's views
        self.view_attention = nn.Linear(spec.channels, 1) if fusion == "attention" else None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != self.in_channels and self.in_channels == 1:  # 3 equal channels
            x = x.mean(1, keepdim=True)
        # a grey film against 3 channels' statistics broadcasts to 3 channels here, without
        # copying it first
        x = (x - self.pixel_mean.view(1, -1, 1, 1)) / self.pixel_std.view(1, -1, 1, 1)
        return x.expand(-1, 3, -1, -1) if x.shape[1] != self.in_channels else x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("pixel_mean", "pixel_std"):  # checkpoints before --init: 0-d buffers
            key = prefix + name
            if key in state_dict and state_dict[key].ndim == 0:
                state_dict[key] = state_dict[key].view(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images, raw: bool = False) -> torch.Tensor:
        """One logit per label, the positive-weight offset removed; `raw` gives the head's
        outputs as they are (training losses).

        `images` is a B x 1 x H x W batch, or a study batch: (B x V x 1 x H x W views, B x V mask).
        """
        if isinstance(images, (tuple, list)):
            features = self.study_features(*images)
        else:
            features = self.image_features(images)
        outputs = self.head(self.dropout(features))
        return outputs if raw else self.label_logits(outputs)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """GeM-pooled backbone features, B x C."""
        x = self.normalize(images)
        first = self.backbone.get_submodule(self.first_conv_path)
        if first.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        # DenseNet's map ends in a BatchNorm (torchvision applies this ReLU too); for the others
        # it changes what GeM's clamp at eps would do anyway: only positive evidence is pooled
        return self.pool(F.relu(self.backbone(x)))

    def study_features(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Each present view through backbone and GeM (padding never reaches BatchNorm), then
        the study's features fused over its views."""
        batch, slots = present.shape
        flat = present.flatten()
        features = self.image_features(views.flatten(0, 1)[flat])
        per_view = features.new_zeros(batch * slots, features.shape[1])
        per_view[flat] = features
        return self.fuse(per_view.view(batch, slots, -1), present)

    def fuse(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """B x V x C features of the views present -> B x 1024; absent views never count."""
        if self.fusion == "max":
            return features.masked_fill(~present[..., None], float("-inf")).amax(dim=1)
        if self.fusion == "attention":
            scores = self.view_attention(features).squeeze(-1).float()
            weights = torch.softmax(scores.masked_fill(~present, float("-inf")), dim=1)
            return (weights[..., None] * features).sum(dim=1)
        weights = present.float()
        return (features * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)

    def label_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        offset = self.logit_offset.to(outputs.dtype)
        if self.multiclass is None:
            return outputs - offset
        mask = torch.tensor(self.multiclass, device=outputs.device)
        single = outputs[:, self.output_start]  # the binary logit, or a 3-way label's "negative"
        positive = outputs[:, (self.output_start + 1).clamp(max=outputs.shape[1] - 1)]
        return torch.where(mask, positive - single, single) - offset

    def set_logit_offset(self, offsets) -> None:
        """log(pos_weight) per label, from the training split (labels.logit_offsets)."""
        self.logit_offset.copy_(torch.as_tensor(offsets, dtype=torch.float32))

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters trained from the first epoch: GeM's p, the view attention, the head."""
        attention = self.view_attention.parameters() if self.view_attention is not None else []
        return [*self.pool.parameters(), *attention, *self.head.parameters()]


def multiclass_of(cfg: Config) -> tuple[bool, ...]:
    """Which labels have a 3-way output under the config's uncertainty policies."""
    from cxr.data.labels import class_policies, multiclass_flags \
        # labels imports pandas: only when needed
    return multiclass_flags(class_policies(cfg.uncertainty_policy, cfg.uncertainty_policy_by_class))


def fusion_of(cfg: Config) -> str:
    """The view fusion of a config: only study mode fuses views (and so has fusion weights)."""
    return cfg.view_fusion if cfg.view_mode == "study" else "mean"


def build_model(cfg: Config, normalization: dict | None = None,
                num_classes: int = len(LABELS), start: StartingWeights | None = None
                ) -> CheXpertNet:
    """The model for a config. Its backbone starts from `start` (--init: starting_weights_of)
    when given, else from ImageNet's weights when cfg.pretrained, else at random.

    `normalization` is the checkpoint's record of the input convention: the pixel "mean" and
    "std" (one value, or one per channel) and the backbone's input "channels" (3 if absent);
    the training split's stats.json, or start.normalization(stats) with --init.
    """
    norm = normalization or {"mean": cfg.fallback_mean, "std": cfg.fallback_std}
    model = CheXpertNet(num_classes, cfg.gem_p, cfg.dropout, norm["mean"], norm["std"],
                        multiclass_of(cfg), fusion_of(cfg), cfg.memory_efficient, cfg.backbone,
                        norm.get("channels", 3))
    if start is not None:
        model.backbone.load_state_dict(backbone_state_from_start(start, cfg.backbone,
                                                                 model.in_channels))
    elif cfg.pretrained:
        model.backbone.load_state_dict(imagenet_backbone_state(cfg.backbone, cfg.pretrained_path))
    return model


def starting_weights_of(cfg: Config) -> StartingWeights | None:
    """What --init gives a fresh run (cxr/training/starting_weights.py); None without it."""
    return starting_weights(cfg.init, cfg.init_format, cfg.backbone) if cfg.init else None


def model_from_checkpoint(checkpoint: dict) -> tuple[CheXpertNet, Config]:
    """The trained model (on the CPU, eval mode) and its Config, rebuilt from the checkpoint alone
    by build_model, as training built it.

    Architecture, labels and pixel statistics come from the checkpoint, never from current
    defaults, so evaluate.py, predict.py, export.py and app.py all see the model that was trained.
    """
    trained = recorded_config(checkpoint["config"], Config)
    built = dataclasses.replace(trained, pretrained=False, memory_efficient=False)
    model = build_model(built, checkpoint["normalization"], len(checkpoint["labels"]))
    return load_weights(model, checkpoint), trained


# ---- ImageNet weights ------------------------------------------------------------------------------

def weights_url(backbone: str) -> str:
    return BACKBONES[backbone].weights.url


def hub_weights_path(backbone: str = "densenet121") -> Path:
    """Where torchvision caches a backbone's ImageNet file (under $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_url(backbone)).name


def imagenet_backbone_state(backbone: str = "densenet121", path: str = ""
                            ) -> dict[str, torch.Tensor]:
    """A backbone's ImageNet weights, from `path`, the torch hub cache or a download, under our
    backbone's keys.

    Never falls back to random weights: when none of those works, the error says what to do.
    """
    url = weights_url(backbone)
    if path:
        if not Path(path).is_file():
            raise PipelineError(f"--pretrained_path {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        try:  # reads the hub cache when the file is there, downloads it otherwise
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu",
                                                       check_hash=True, weights_only=True)
        except (URLError, OSError, RuntimeError) as err:
            raise PipelineError(
                f"ImageNet {backbone} weights are not in the torch hub cache "
                f"({hub_weights_path(backbone)}) and could not be downloaded ({err}). Either "
                f"download {url} on a machine with internet and copy it to "
                f"{hub_weights_path(backbone)} (or pass --pretrained_path FILE), or train from "
                "random initialisation with --pretrained false.") from None
    return backbone_state_from_imagenet(state, backbone, path or url)


def backbone_state_from_imagenet(state: dict[str, torch.Tensor], backbone: str = "densenet121",
                                 source: str = "the weights file") -> dict[str, torch.Tensor]:
    """A torchvision ImageNet state dict of the whole network (a DenseNet's with old or new key
    names) -> our backbone's keys. The whole network loads it strictly first, so a file of
    another network is refused, not half-loaded."""
    network = backbone_network(backbone)
    # DenseNet files saved by old torchvision name layers "norm.1"; torchvision remaps them the
    # same way when it loads these weights itself
    try:
        network.load_state_dict(torchvision_layout(state, "torchvision"))
    except RuntimeError as err:
        expected = Path(weights_url(backbone)).name
        raise PipelineError(f"{source} does not hold torchvision's ImageNet {backbone} weights "
                            f"(expected {expected}): {str(err).splitlines()[0][:200]}") from None
    return BACKBONES[backbone].features(network).state_dict()


# ---- --init: a source's weights (cxr/training/starting_weights.py) -------------------------------

def head_keys(network: nn.Module, backbone: str) -> set[str]:
    """The whole network's state-dict keys outside the part kept as our backbone (its
    classifier): a source's own head, dropped."""
    kept = {id(t) for t in
            BACKBONES[backbone].features(network).state_dict(keep_vars=True).values()}
    return {key for key, t in network.state_dict(keep_vars=True).items() if id(t) not in kept}


def backbone_state_from_start(start: StartingWeights, backbone: str, channels: int
                              ) -> dict[str, torch.Tensor]:
    """--init's weights under our backbone's keys: the source's whole network loaded strictly
    but for its classifier (dropped, whatever its size), so weights of another network are
    refused, not half-loaded."""
    if start.format == "checkpoint":  # already our backbone's keys
        if start.backbone != backbone:
            raise PipelineError(f"--init: the checkpoint's backbone is {start.backbone}; train it "
                                f"with --backbone {start.backbone}, not {backbone}")
        return start.state
    network = backbone_network(backbone, channels=channels)
    head, keys = head_keys(network, backbone), set(network.state_dict())
    # the network's own head is dropped; so is another head layout (CheXNet's classifier.0, a
    # Linear in a Sequential), while ConvNeXt's classifier.0, a LayerNorm of our backbone, stays
    state = {key: value for key, value in start.state.items() if key not in head
             and (key in keys or not key.startswith(("classifier.", "fc.")))}
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape: another network
        raise PipelineError(f"--init: the {start.format} weights do not fit {backbone} "
                            f"({str(err).splitlines()[-1].strip()[:200]}); check --init_format "
                            "and --backbone") from None
    missing = sorted(set(missing) - head)
    if missing or unexpected:
        raise PipelineError(
            f"--init: the {start.format} weights do not fit {backbone} (missing "
            f"{missing[:3]}, unexpected {sorted(unexpected)[:3]}); check --init_format and "
            "--backbone")
    return BACKBONES[backbone].features(network).state_dict()
