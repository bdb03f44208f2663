"""One typed configuration for every stage of the pipeline.

Edit the defaults below, or override any field on the command line of any script:

    python train.py --epochs 3 --image_size=224 --pretrained false

Defaults are the real CheXpert recipe: DenseNet121 + GeM + Dropout(0.2) + Linear(1024 -> 14),
320 px, batch 16 x 2 accumulation steps (effective 32), AdamW, U-Ones, frontal views only,
5 epochs of which the first trains the head on a frozen backbone.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

# The 14 CheXpert observations, in the order of the CheXpert CSVs. Code refers to them by name.
LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# CheXpert's metadata columns, kept unchanged in every processed and split CSV.
META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")

# Fields that only the data-building scripts read, and which script: train.py, evaluate.py and
# ablate.py refuse them when they differ from what the data in --data_dir were built with (an
# ablation "views: --frontal_only false" would otherwise train on the same data and report no
# difference).
DATA_FIELDS = {"data_root": "preprocess.py", "frontal_only": "preprocess.py",
               "check_images": "preprocess.py", "missing_images": "preprocess.py",
               "stats_sample": "preprocess.py", "fallback_mean": "preprocess.py",
               "fallback_std": "preprocess.py", "val_fraction": "make_splits.py"}

# How an uncertain (-1) label is trained (labels.training_targets): as positive, as negative,
# masked out of the loss, as a third class, or as a soft positive / negative target.
UNCERTAINTY_POLICIES = ("U-Ones", "U-Zeros", "U-Ignore", "U-MultiClass", "U-Ones-LSR",
                        "U-Zeros-LSR")
# Per-class calibration maps fitted on val (calibration.fit_calibration).
CALIBRATION_METHODS = ("platt", "temperature", "none")


@dataclass
class Config:
    # ---- data locations -------------------------------------------------------------------
    data_root: str = "data/CheXpert-v1.0-small"  # folder holding train.csv, valid.csv, train/, valid/
    data_dir: str = "data"  # outputs of preprocess/make_splits go to <data_dir>/processed, /splits
    models_dir: str = "models"  # each run writes models/<run_name>/
    run_name: str = ""  # run folder name; empty: train.py uses a timestamp (20261122-153000)

    # ---- preprocessing (preprocess.py) -----------------------------------------------------
    frontal_only: bool = True  # keep only Frontal/Lateral == "Frontal" rows
    uncertainty_policy: str = "U-Ones"  # training policy of uncertain (-1) labels, see labels.py
    uncertainty_policy_by_class: tuple[str, ...] = ()  # exceptions: Edema=U-Ones,Atelectasis=U-Ignore
    check_images: bool = True  # check every image file exists (and compute mean/std from them)
    missing_images: str = "error"  # error = stop at the first report; skip = drop, count, report
    stats_sample: int = 1000  # images (seeded sample) used to compute the pixel mean/std
    fallback_mean: float = 0.506  # pixel mean in [0, 1] used when images are not read
    fallback_std: float = 0.290  # pixel std in [0, 1] used when images are not read

    # ---- patient-level split (make_splits.py) ------------------------------------------------
    val_fraction: float = 0.1  # fraction of training *patients* held out for model selection
    seed: int = 42  # seeds the split, the stats sample, weight init and data order

    # ---- model (model_architecture.py) ----------------------------------------------------------
    pretrained: bool = True  # start from torchvision's ImageNet DenseNet121 weights
    pretrained_path: str = ""  # optional local file with those weights (densenet121-a639ec97.pth)
    gem_p: float = 3.0  # initial GeM exponent (learnable); 1 = average pooling
    dropout: float = 0.2  # dropout probability before the linear head

    # ---- training (train.py) ------------------------------------------------------------------
    image_size: int = 320  # pixels, square input side (CheXpert paper: 320)
    batch_size: int = 16  # images per forward pass (micro-batch)
    accumulation_steps: int = 2  # micro-batches per optimizer step: effective batch 16 x 2 = 32
    epochs: int = 5  # total epochs, including the frozen warm-up
    frozen_epochs: int = 1  # first epochs train only GeM + head, backbone frozen
    lr_head: float = 1e-3  # AdamW learning rate of GeM + head, per optimizer step
    lr_backbone: float = 1e-4  # AdamW learning rate of the backbone once unfrozen
    weight_decay: float = 1e-5  # AdamW decoupled weight decay
    warmup_steps: int = 100  # optimizer steps of linear LR warm-up at the start of training
    lr_schedule: str = "cosine"  # after warm-up: cosine (decay to 0 at the last step) | constant
    grad_clip_norm: float = 0.0  # clip the gradient norm to this (after fp16 unscaling); 0 = off
    max_pos_weight: float = 50.0  # cap on the per-class BCE positive weight (neg/pos count)
    augment: bool = True  # light random affine (rotate/shift/scale) on training images only
    view_mode: str = "frontal"  # frontal: one image per item | study: a study's views, fused
    view_fusion: str = "mean"  # study mode: mean | max | attention over the views' GeM features
    max_views: int = 3  # study mode: views per study, frontal first (the rest are left out)
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | mps
    precision: str = "auto"  # auto (cuda fp16; cpu bf16 if native, else fp32) | fp16 | bf16 | fp32
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPU and tensor cores
    num_workers: int = -1  # DataLoader worker processes; -1 = chosen from the CPU count
    max_nonfinite_steps: int = 5  # stop after this many optimizer steps in a row skipped for NaN/inf
    checkpoint_every_steps: int = 500  # also write last.pth every N optimizer steps; 0 = epochs only
    early_stopping_patience: int = 3  # stop after N epochs without a better val mean AUC; 0 = off
    deterministic: bool = False  # bitwise-reproducible kernels (slower on GPU); resume is exact
    resume: str = ""  # continue a run: path to its last.pth, or "auto" (--run_name's, else newest)

    # ---- image cache (cache.py) ------------------------------------------------------------------
    crop_margin: float = 0.0625  # images are resized to image_size x (1 + margin), then cropped
    use_cache: bool = True  # read <data_dir>/cache/<side>px when it holds the images (cache.py)
    cache_on_error: str = "stop"  # unreadable image while caching: stop, or exclude it everywhere
    cache_retry_errors: bool = False  # cache.py: decode the images in errors.csv again (fixed?)

    # ---- evaluation (evaluate.py) -------------------------------------------------------------
    checkpoint: str = ""  # checkpoint to evaluate; empty = run_name's best.pth, else the newest
    bootstrap_resamples: int = 1000  # patient bootstrap resamples of the AUC intervals; 0 = none
    ci_level: float = 0.95  # coverage of the percentile intervals (0.95 = 95 %)
    target_sensitivity: float = 0.9  # second operating point: highest val threshold reaching it
    study_aggregation: str = "max"  # a study's prediction from its images': max | mean
    calibration_bins: int = 10  # equal-width probability bins of the ECE and reliability diagrams
    # per-class calibration fitted on val (uncertain masked), stored with the thresholds and
    # applied by every consumer: platt (scale and bias) | temperature (scale) | none
    calibration: str = "platt"
    min_positives: int = 10  # a class enters the means with at least this many positives and
    # negatives in the split (fewer: its AUC is shown, but left out of the means)
    tta: bool = False  # test-time augmentation: mean logits of 4 views (shifts, zoom; no flips)
    compare: str = ""  # "RUN_A,RUN_B" (CLI: --compare RUN_A RUN_B): paired AUC differences B - A
    compare_split: str = "test"  # split of --compare: val | test

    # ---- ablation (ablate.py) ---------------------------------------------------------------------
    # The configurations themselves, --ablation "NAME: --field value ..." ..., are read by ablate.py.
    ablation_name: str = ""  # models/ablation-<name>/, runs <name>-<configuration>; empty = timestamp

    # ---- inference (predict.py, export.py, app.py) -----------------------------------------------
    inputs: tuple[str, ...] = ()  # images, folders (searched recursively) and CSVs of paths; a,b,c
    output: str = ""  # predict.py: CSV (default predictions.csv); export.py: .onnx (model.onnx)
    gradcam: tuple[str, ...] = ()  # labels to draw Grad-CAM overlays of, e.g. Cardiomegaly,Edema
    gradcam_dir: str = ""  # folder of the overlay PNGs; empty = <output stem>_gradcam/ beside it
    # study-mode checkpoints in predict.py: folder = the images of one folder are one study's
    # views (CheXpert's patient/study/viewN_frontal.jpg layout) | image = each image on its own
    study_grouping: str = "folder"
    # predict.py / app.py: go on (with a warning) when thresholds.json was made for other weights
    # or with other --tta; false = refuse and say to run evaluate.py
    allow_threshold_mismatch: bool = False

    @property
    def processed_dir(self) -> Path:
        return Path(self.data_dir) / "processed"

    @property
    def splits_dir(self) -> Path:
        return Path(self.data_dir) / "splits"

    @property
    def stored_side(self) -> int:
        """Side in pixels of the square image before cropping (and of the cached images)."""
        return self.image_size + round(self.image_size * self.crop_margin)

    @property
    def run_dir(self) -> Path:
        return Path(self.models_dir) / self.run_name


def validate(cfg: Config) -> Config:
    """Reject values that would fail later in a less readable way."""
    choices = {
        "uncertainty_policy": UNCERTAINTY_POLICIES,
        "missing_images": ("error", "skip"),
        "device": ("auto", "cpu", "cuda", "mps"),
        "precision": ("auto", "fp16", "bf16", "fp32"),
        "cache_on_error": ("stop", "exclude"),
        "lr_schedule": ("cosine", "constant"),
        "view_mode": ("frontal", "study"),
        "view_fusion": ("mean", "max", "attention"),
        "study_aggregation": ("max", "mean"),
        "study_grouping": ("folder", "image"),
        "compare_split": ("val", "test"),
        "calibration": CALIBRATION_METHODS,
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{name} {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    positive = ("image_size", "batch_size", "accumulation_steps", "epochs", "stats_sample",
                "max_views", "min_positives")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    non_negative = ("warmup_steps", "grad_clip_norm", "checkpoint_every_steps",
                    "early_stopping_patience")
    for name in non_negative:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.max_nonfinite_steps < 1:
        raise ConfigError("--max_nonfinite_steps must be at least 1")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"--val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if not 0.0 <= cfg.crop_margin <= 0.5:
        raise ConfigError(f"--crop_margin must be between 0 and 0.5, got {cfg.crop_margin}")
    if not 0 <= cfg.frozen_epochs <= cfg.epochs:
        raise ConfigError(f"--frozen_epochs must be between 0 and --epochs ({cfg.epochs})")
    if not 0.0 < cfg.ci_level < 1.0:
        raise ConfigError(f"--ci_level must be between 0 and 1, got {cfg.ci_level}")
    if not 0.0 < cfg.target_sensitivity <= 1.0:
        raise ConfigError(f"--target_sensitivity must be in (0, 1], got {cfg.target_sensitivity}")
    if cfg.bootstrap_resamples < 0:
        raise ConfigError(f"--bootstrap_resamples must be 0 or more, got {cfg.bootstrap_resamples}")
    if cfg.calibration_bins < 1:
        raise ConfigError(f"--calibration_bins must be at least 1, got {cfg.calibration_bins}")
    return cfg


class ConfigError(ValueError):
    """A bad command-line override or config value; the message says which and why."""


# ---- command-line overrides -----------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(name: str, text: str, field_type: typing.Any):
    """Convert a command-line string to a field's type (bool, int, float, str, Optional[...],
    tuple[str, ...] from comma-separated items)."""
    origin = typing.get_origin(field_type)
    if origin is tuple:
        item_type = typing.get_args(field_type)[0]
        return tuple(_convert(name, item.strip(), item_type) for item in text.split(",")
                     if item.strip())
    if origin in (typing.Union, types.UnionType):
        inner = [t for t in typing.get_args(field_type) if t is not type(None)]
        if text.lower() in {"none", "null", ""}:
            return None
        return _convert(name, text, inner[0])
    if field_type is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"--{name} expects true or false, got {text!r}")
    try:
        return field_type(text)
    except ValueError:
        raise ConfigError(f"--{name} expects {field_type.__name__}, got {text!r}") from None


def _split_arguments(argv: list[str]) -> list[tuple[str, str]]:
    """Turn ['--a', '1', '--b=2'] into [('a', '1'), ('b', '2')]."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options look like --field value")
        if "=" in arg:
            name, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(argv):
            name, value = arg[2:], argv[i + 1]
            i += 2
        else:
            raise ConfigError(f"{arg} needs a value")
        pairs.append((name, value))
    return pairs


def given_fields(argv: list[str]) -> set[str]:
    """The field names a command line sets explicitly (train.py --resume checks them)."""
    return {name for name, _ in _split_arguments(argv)}


def apply_overrides(cfg, argv: list[str]):
    """Apply `--field value` / `--field=value` overrides to any dataclass instance.

    Unknown names are an error that lists the valid ones; values are converted by field type.
    """
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for name, value in _split_arguments(argv):
        if name not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown option --{name}. Valid options: {valid}")
        changes[name] = _convert(name, value, hints[name])
    return dataclasses.replace(cfg, **changes)


def parse_args(argv: list[str] | None = None, defaults=None):
    """The shared entry point of every script: defaults, then command-line overrides.

    `defaults` is a Config unless a script brings its own dataclass (make_demo_data.py does).
    """
    argv = sys.argv[1:] if argv is None else argv
    defaults = Config() if defaults is None else defaults
    if argv and argv[0] in ("-h", "--help"):
        print(describe(defaults))
        raise SystemExit(0)
    cfg = apply_overrides(defaults, argv)
    return validate(cfg) if isinstance(cfg, Config) else cfg


def describe(cfg) -> str:
    """One line per field with its current value: the --help text of every script."""
    lines = ["Options (--field value or --field=value), with their current values:"]
    for f in dataclasses.fields(cfg):
        lines.append(f"  --{f.name:<20} {getattr(cfg, f.name)!r}")
    return "\n".join(lines)


def run_cli(main, argv: list[str] | None = None, defaults=None) -> None:
    """Run a script's main(cfg), turning expected user errors into one clear line and exit 2."""
    try:
        main(parse_args(argv, defaults))
    except (ConfigError, PipelineError) as err:
        print(f"error: {_without_worker_traceback(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None


def _without_worker_traceback(message: str) -> str:
    """A DataLoader worker's error arrives wrapped in its traceback: keep only its own message."""
    if "Original Traceback" not in message:
        return message
    last_line = message.strip().splitlines()[-1]  # "module.ErrorClass: the message"
    return last_line.split(": ", 1)[-1]


class PipelineError(RuntimeError):
    """A problem the user can fix (bad input, missing stage output); the message says how."""
