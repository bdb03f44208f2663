"""One typed configuration for every stage of the pipeline.

Edit the defaults below, or override a field on the command line of a script that reads it
(cxr/cli.py parses the options; READS below says which script reads which field):

    python train.py --epochs 3 --image_size=224 --pretrained false

Defaults are the real CheXpert recipe: DenseNet121 + GeM + Dropout(0.2) + Linear(1024 -> 14),
320 px, batch 16 x 2 accumulation steps (effective 32), AdamW, U-Ones, frontal views only,
5 epochs of which the first trains the head on a frozen backbone.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxr.data.labels import UncertaintyPolicy
from cxr.errors import ConfigError

# Fields that only the data-building scripts read, and which script: train.py, evaluate.py and
# ablate.py refuse them when they differ from what the data in --data_dir were built with (an
# ablation "views: --frontal_only false" would otherwise train on the same data and report no
# difference).
DATA_FIELDS = {"data_root": "preprocess.py", "frontal_only": "preprocess.py",
               "check_images": "preprocess.py", "missing_images": "preprocess.py",
               "stats_sample": "preprocess.py", "fallback_mean": "preprocess.py",
               "fallback_std": "preprocess.py", "test_fraction": "preprocess.py",
               "label_hierarchy": "preprocess.py", "padchest_label_source": "preprocess.py",
               "val_fraction": "make_splits.py"}

# Per-class calibration maps fitted on val (calibration.fit_calibration).
CalibrationMethod = Literal["platt", "temperature", "none"]
Backbone = Literal["densenet121", "densenet169", "resnet50", "efficientnet_b0", "efficientnet_b3",
                   "convnext_tiny"]
CALIBRATION_METHODS: tuple[str, ...] = typing.get_args(CalibrationMethod)

# Metadata of a tuple field whose items may hold commas (paths, ablation configurations): on the
# command line each token is one item, not split on commas (cxr/cli.py).
WHOLE_ITEMS = {"split_commas": False}


@dataclass
class Config:
    # ---- data locations -------------------------------------------------------------------
    data_root: str = "data/CheXpert-v1.0-small"  # folder holding train.csv, valid.csv, train/, valid/
    # the dataset in --data_root, in its publisher's layout (cxr/data/nih.py, mimic.py, padchest.py);
    # evaluate.py --dataset nih: validate a checkpoint on that dataset (external validation)
    dataset: Literal["chexpert", "nih", "mimic", "padchest"] = "chexpert"
    test_fraction: float = 0.2  # preprocess.py: patients held out as test without an official split
    split: Literal["all", "test"] = "all"  # evaluate.py --dataset: every image, or the official test
    data_dir: str = "data"  # outputs of preprocess/make_splits go to <data_dir>/processed, /splits
    models_dir: str = "models"  # each run writes models/<run_name>/
    run_name: str = ""  # run folder name; empty: train.py uses a timestamp (20261122-153000)

    # ---- preprocessing (preprocess.py) -----------------------------------------------------
    frontal_only: bool = True  # keep only Frontal/Lateral == "Frontal" rows
    # CheXpert's hierarchy (adapters.HIERARCHY), the same rule for CheXpert and every other
    # dataset: none = the labels as published; fill_blank = a positive child makes a blank (not
    # mentioned) parent positive, never an explicit 0, -1 or not labelled one
    label_hierarchy: Literal["none", "fill_blank"] = "none"
    # PadChest's rows by who labelled them (its MethodLabel): physician = the 24 % read by
    # radiologists; all = also the 76 % labelled by their network (RNN_model)
    padchest_label_source: Literal["physician", "all"] = "physician"
    check_images: bool = True  # check every image file exists (and compute mean/std from them)
    missing_images: Literal["error", "skip"] = "error"  # error: stop, list; skip: drop, count, list
    stats_sample: int = 1000  # images (seeded sample) used to compute the pixel mean/std
    fallback_mean: float = 0.506  # pixel mean in [0, 1] used when images are not read
    fallback_std: float = 0.290  # pixel std in [0, 1] used when images are not read

    # ---- patient-level split (make_splits.py) ------------------------------------------------
    val_fraction: float = 0.1  # fraction of training *patients* held out for model selection
    seed: int = 42  # seeds the split, the stats sample, weight init and data order

    # ---- model (model_architecture.py) ----------------------------------------------------------
    # torchvision network under the GeM + dropout + linear head (model_architecture.BACKBONES)
    backbone: Backbone = "densenet121"
    pretrained: bool = True  # start from the backbone's torchvision ImageNet weights
    pretrained_path: str = ""  # optional local file with those weights (densenet121-a639ec97.pth)
    gem_p: float = 3.0  # initial GeM exponent (learnable); 1 = average pooling
    # DenseNet's dense layers recomputed in the backward pass instead of kept (torch.utils.
    # checkpoint): less activation memory for small GPUs, the same gradients, slower steps
    memory_efficient: bool = False
    dropout: float = 0.2  # dropout probability before the linear head

    # ---- training (train.py) ------------------------------------------------------------------
    uncertainty_policy: UncertaintyPolicy = "U-Ones"  # how uncertain (-1) labels train; labels.py
    uncertainty_policy_by_class: tuple[str, ...] = ()  # exceptions: Edema=U-Ones,Atelectasis=U-Ignore
    image_size: int = 320  # pixels, square input side (CheXpert paper: 320)
    batch_size: int = 16  # images per forward pass (micro-batch)
    accumulation_steps: int = 2  # micro-batches per optimizer step: effective batch 16 x 2 = 32
    epochs: int = 5  # total epochs, including the frozen warm-up
    frozen_epochs: int = 1  # first epochs train only GeM + head, backbone frozen
    lr_head: float = 1e-3  # AdamW learning rate of GeM + head, per optimizer step
    lr_backbone: float = 1e-4  # AdamW learning rate of the backbone once unfrozen
    weight_decay: float = 1e-5  # AdamW decoupled weight decay
    # optimizer steps of linear LR warm-up of each parameter group (the backbone's starts when it
    # is unfrozen); none: warmup_share of the steps the group trains, at most 100 (cxr/training/schedule.py)
    warmup_steps: int | None = None
    warmup_share: float = 0.1  # the default warm-up's share of a group's steps (a short run's)
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up; cosine ends at 0
    grad_clip_norm: float = 0.0  # clip the gradient norm to this (after fp16 unscaling); 0 = off
    max_pos_weight: float = 50.0  # cap on the per-class BCE positive weight (neg/pos count)
    augment: bool = True  # light random affine (rotate/shift/scale) on training images only
    view_mode: Literal["frontal", "study"] = "frontal"  # an image per item, or a study's views
    view_fusion: Literal["mean", "max", "attention"] = "mean"  # study mode: fuses the views
    max_views: int = 3  # study mode: views per study, frontal first (the rest are left out)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda, then mps, then cpu
    # auto: fp16 on cuda; on cpu bf16 where it is native, else fp32
    precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPU and tensor cores
    num_workers: int = -1  # DataLoader worker processes; -1 = chosen from the CPU count
    max_nonfinite_steps: int = 5  # stop after this many optimizer steps in a row skipped for NaN/inf
    checkpoint_every_steps: int = 500  # also write last.pth every N optimizer steps; 0 = epochs only
    # stop after N epochs without a better val mean AUC, counted once the warm-up is over; 0 = off
    early_stopping_patience: int = 3
    # a val split too small to rank epochs (fewer than half the classes with train positives have
    # min_positives positives and negatives in val): false = best.pth is the last epoch and no
    # early stopping; true = rank epochs on its mean AUC anyway
    select_on_small_val: bool = False
    deterministic: bool = False  # bitwise-reproducible kernels (slower on GPU); resume is exact
    # exponential moving average of the weights, updated every optimizer step and validated every
    # epoch (best.pth then holds the average); 0 = off, 0.999 a usual value
    ema_decay: float = 0.0
    keep_top_k: int = 1  # also keep the k best epochs' weights (top_k/), for an ensemble; 1 = best only
    compile: bool = False  # torch.compile the model (minutes of compiling first; pays off on GPUs)
    resume: str = ""  # continue a run: path to its last.pth, or "auto" (--run_name's, else newest)

    # ---- image cache (cache.py) ------------------------------------------------------------------
    crop_margin: float = 0.0625  # images are resized to image_size x (1 + margin), then cropped
    use_cache: bool = True  # read <data_dir>/cache/<side>px when it holds the images (cache.py)
    # an image unreadable while caching: stop, or exclude it everywhere (training, evaluation)
    cache_on_error: Literal["stop", "exclude"] = "stop"
    cache_retry_errors: bool = False  # cache.py: decode the images in errors.csv again (fixed?)

    # ---- evaluation (evaluate.py) -------------------------------------------------------------
    # checkpoint to evaluate; empty = run_name's best.pth, else the newest; several (a comma list,
    # a folder such as a run's top_k/, an ensemble's folder): an ensemble (cxr/evaluation/ensemble.py)
    checkpoint: str = ""
    # patient bootstrap resamples of score.py's readers against the curves and of ablate.py
    # --seeds' two-level intervals; 0 = none (AUC intervals need none: cxr/evaluation/intervals.py)
    bootstrap_resamples: int = 1000
    ci_level: float = 0.95  # coverage of every interval (0.95 = 95 %)
    target_sensitivity: float = 0.9  # second operating point: highest val threshold reaching it
    # a study's prediction from its images' (evaluate.py, predict.py's _studies.csv, score.py)
    study_aggregation: Literal["max", "mean"] = "max"
    calibration_bins: int = 10  # equal-width probability bins of the ECE and reliability diagrams
    # per-class calibration fitted on val (uncertain masked), stored with the thresholds and
    # applied by every consumer: platt (scale and bias), temperature (scale) or none
    calibration: CalibrationMethod = "platt"
    min_positives: int = 10  # a class enters the means with at least this many positives and
    # negatives in the split (fewer: its AUC is shown, but left out of the means)
    tta: bool = False  # test-time augmentation: mean logits of 4 views (shifts, zoom; no flips)
    # years: the subgroup audit's age bands start at these (18-39, 40-59, 60-79, 80+)
    age_bands: tuple[int, ...] = (18, 40, 60, 80)
    # evaluate.py --compare RUN_A RUN_B (folders or checkpoints): AUC of B - A on compare_split;
    # score.py --compare X.csv,Y.csv: other models' predictions, each paired with --predictions
    compare: tuple[str, ...] = ()
    compare_split: Literal["val", "test"] = "test"  # split of evaluate.py --compare

    # ---- scoring predictions CSVs against a reference standard (score.py) -------------------------
    # CSV of probabilities, keyed by Study or Path (predict.py's output too); several (a comma
    # list): scored as their ensemble, the mean of their probabilities, each compared with it
    predictions: str = ""
    labels: str = ""  # reference-standard CSV, e.g. CheXpert's test groundtruth.csv (0/1 per study)
    radiologists: tuple[str, ...] = ()  # readers' binary reads, same schema as --labels
    labeler: tuple[str, ...] = ()  # report labelers' output (1/0/-1/blank): uncertain vs --labels
    output_dir: str = ""  # score.py's reports; empty = scores/<predictions file stem>/
    # a study in one file and not the other: error (list the first few) | skip (count, list)
    unmatched: Literal["error", "skip"] = "error"
    # probability: every score in [0, 1] | any: finite scores that only rank (logits, sums)
    score_scale: Literal["probability", "any"] = "probability"

    # ---- ablation (ablate.py) ---------------------------------------------------------------------
    # the configurations, --ablation "NAME: --field value ..." "NAME2: ...", the first the baseline
    ablation: tuple[str, ...] = field(default=(), metadata=WHOLE_ITEMS)
    ablation_name: str = ""  # models/ablation-<name>/, runs <name>-<configuration>; empty = timestamp
    seeds: int = 1  # ablate.py: each configuration trained with seeds seed, seed+1, ... (N runs)

    # ---- inference (predict.py, export.py, app.py) -----------------------------------------------
    # predict.py's positional arguments: images, folders (searched recursively), CSVs of paths
    inputs: tuple[str, ...] = field(default=(), metadata=WHOLE_ITEMS)
    output: str = ""  # predict.py: CSV (default predictions.csv); export.py: .onnx (model.onnx)
    gradcam: tuple[str, ...] = ()  # labels to draw Grad-CAM overlays of, e.g. Cardiomegaly Edema
    gradcam_dir: str = ""  # folder of the overlay PNGs; empty = <output stem>_gradcam/ beside it
    # predict.py: folder = the images of one folder are one study's views (CheXpert's
    # patient/study/viewN_frontal.jpg layout; a study-mode checkpoint fuses them, an image-mode
    # one also writes <output stem>_studies.csv) | image = each image is a study of its own
    study_grouping: Literal["folder", "image"] = "folder"
    # predict.py, app.py, export.py: go on (with a warning) when thresholds.json was made for
    # other weights or with other --tta; false = refuse and say to run evaluate.py
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


# ---- which script reads which field --------------------------------------------------------
# A script's command line takes only the fields it reads: cxr/cli.py refuses any other, naming the
# scripts that read it. Found from each script's code path: its own `cfg.<field>` and those of the
# cxr/, dataset.py and model_architecture.py functions it calls with its config. evaluate.py,
# predict.py, export.py and app.py rebuild the model from the checkpoint's own config, so they read
# none of the model's or training's fields.
_CHECKPOINT = ("models_dir", "run_name", "checkpoint")  # checkpoints.resolve_checkpoint
_INFERENCE = ("device", "precision", "channels_last", "tta", "batch_size", "num_workers")
READS: dict[str, tuple[str, ...]] = {
    "preprocess.py": ("data_root", "dataset", "test_fraction", "data_dir", "frontal_only",
                      "label_hierarchy", "padchest_label_source", "check_images",
                      "missing_images", "stats_sample", "fallback_mean", "fallback_std", "seed"),
    "make_splits.py": ("data_dir", "val_fraction", "seed"),
    "cache.py": ("data_dir", "image_size", "crop_margin", "cache_on_error", "cache_retry_errors"),
    "train.py": ("data_dir", "models_dir", "run_name", "resume", "uncertainty_policy",
                 "uncertainty_policy_by_class", "seed", "backbone", "pretrained", "pretrained_path",
                 "gem_p", "memory_efficient", "ema_decay", "keep_top_k", "compile",
                 "dropout", "image_size", "crop_margin", "batch_size", "accumulation_steps",
                 "epochs", "frozen_epochs", "lr_head", "lr_backbone", "weight_decay",
                 "warmup_steps", "lr_schedule", "grad_clip_norm", "max_pos_weight", "augment",
                 "view_mode", "view_fusion", "max_views", "device", "precision", "channels_last",
                 "num_workers", "max_nonfinite_steps", "checkpoint_every_steps",
                 "early_stopping_patience", "deterministic", "use_cache", "min_positives",
                 "warmup_share", "select_on_small_val"),
    "evaluate.py": ("data_dir", *_CHECKPOINT, *_INFERENCE, "use_cache",
                    "ci_level", "target_sensitivity", "study_aggregation",
                    "calibration", "calibration_bins", "min_positives", "compare",
                    "compare_split", "age_bands", "dataset", "split", "label_hierarchy",
                    "padchest_label_source"),
    # and every field of its STAGES
    "ablate.py": ("ablation", "ablation_name", "seeds", "bootstrap_resamples"),
    "predict.py": (*_CHECKPOINT, *_INFERENCE, "inputs", "output", "gradcam", "gradcam_dir",
                   "study_grouping", "study_aggregation", "allow_threshold_mismatch"),
    "score.py": ("predictions", "labels", "radiologists", "labeler", "compare", "output_dir",
                 "unmatched", "score_scale", "study_aggregation", "bootstrap_resamples",
                 "ci_level", "seed", "min_positives", "age_bands"),
    "export.py": (*_CHECKPOINT, "output", "allow_threshold_mismatch"),
    "app.py": ("checkpoint", "device", "tta", "allow_threshold_mismatch"),
}
# A script that runs others (with the options each reads) takes their fields too.
STAGES: dict[str, tuple[str, ...]] = {"ablate.py": ("train.py", "evaluate.py")}
# These also take DATA_FIELDS, to check them against the data built in --data_dir
# (dataset.check_data_options): a different value is an error, not a silent no-op.
CHECKS_DATA = ("train.py", "evaluate.py")
# The field that takes the tokens before the first --option (no other script has one).
POSITIONAL: dict[str, str] = {"predict.py": "inputs"}


def _accepted(script: str) -> frozenset[str]:
    own = set(READS[script]) | (set(DATA_FIELDS) if script in CHECKS_DATA else set())
    return frozenset(own.union(*(_accepted(stage) for stage in STAGES.get(script, ()))))


# The other directions: what each script's command line accepts, and who reads each field.
ACCEPTS: dict[str, frozenset[str]] = {script: _accepted(script) for script in READS}
READ_BY: dict[str, tuple[str, ...]] = {
    name: tuple(script for script in READS
                if name in READS[script]
                or any(name in READS[stage] for stage in STAGES.get(script, ())))
    for name in (f.name for f in dataclasses.fields(Config))}

_HINTS = typing.get_type_hints(Config)


def literal_values(hint) -> tuple:
    """The allowed values of a Literal type (an alias such as UncertaintyPolicy too); () else."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def not_one_of(name: str, value, allowed: tuple) -> str:
    return f"--{name} {value!r} is not one of {', '.join(map(str, allowed))}"


def validate(cfg: Config) -> Config:
    """Reject values that would fail later in a less readable way."""
    for name, hint in _HINTS.items():
        allowed = literal_values(hint)
        if allowed and getattr(cfg, name) not in allowed:
            raise ConfigError(not_one_of(name, getattr(cfg, name), allowed))
    positive = ("image_size", "batch_size", "accumulation_steps", "epochs", "stats_sample",
                "max_views", "min_positives")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    non_negative = ("warmup_steps", "grad_clip_norm", "checkpoint_every_steps",
                    "early_stopping_patience")
    for name in non_negative:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be 0 or more, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"--ema_decay must be in [0, 1) (0 = off, 0.999 a usual value), got "
                          f"{cfg.ema_decay}")
    if cfg.keep_top_k < 1 or cfg.seeds < 1:
        raise ConfigError("--keep_top_k and --seeds must be at least 1")
    if cfg.memory_efficient and not cfg.backbone.startswith("densenet"):
        raise ConfigError(f"--memory_efficient recomputes DenseNet's dense layers; --backbone "
                          f"{cfg.backbone} has none (leave it false, or lower --batch_size)")
    if cfg.max_nonfinite_steps < 1:
        raise ConfigError("--max_nonfinite_steps must be at least 1")
    if not 0.0 < cfg.test_fraction < 1.0:
        raise ConfigError(f"--test_fraction must be between 0 and 1, got {cfg.test_fraction}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"--val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if not 0.0 <= cfg.crop_margin <= 0.5:
        raise ConfigError(f"--crop_margin must be between 0 and 0.5, got {cfg.crop_margin}")
    if not 0.0 < cfg.warmup_share <= 1.0:
        raise ConfigError(f"--warmup_share must be in (0, 1], got {cfg.warmup_share}")
    if not 0 <= cfg.frozen_epochs <= cfg.epochs:
        raise ConfigError(f"--frozen_epochs must be between 0 and --epochs ({cfg.epochs})")
    if not 0.0 < cfg.ci_level < 1.0:
        raise ConfigError(f"--ci_level must be between 0 and 1, got {cfg.ci_level}")
    if not 0.0 < cfg.target_sensitivity <= 1.0:
        raise ConfigError(f"--target_sensitivity must be in (0, 1], got {cfg.target_sensitivity}")
    if cfg.bootstrap_resamples < 0:
        raise ConfigError(f"--bootstrap_resamples must be 0 or more, got {cfg.bootstrap_resamples}")
    bands = cfg.age_bands
    if not bands or bands[0] < 1 or any(b <= a for a, b in zip(bands, bands[1:])):
        raise ConfigError(f"--age_bands must be increasing ages of at least 1, e.g. "
                          f"18,40,60,80; got {','.join(map(str, bands)) or 'none'}")
    if cfg.calibration_bins < 1:
        raise ConfigError(f"--calibration_bins must be at least 1, got {cfg.calibration_bins}")
    return cfg

