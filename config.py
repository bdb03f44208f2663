"""One typed configuration for every stage of the pipeline.

Edit the defaults below, or override a field on the command line of a script that reads it
(cxr/cli.py parses the options; each field names the scripts that read it):

    python train.py --epochs 3 --image_size=224 --pretrained false

Defaults are the real CheXpert recipe: DenseNet121 + GeM + Dropout(0.2) + Linear(1024 -> 14),
320 px, batch 16 x 2 accumulation steps (effective 32), AdamW, U-Ones, frontal views only,
5 epochs of which the first trains the head on a frozen backbone.

Each field is declared with cxr.settings.setting: its default, the scripts that read it and its
other facts (data: built into the data by that script; fixed_on_resume; same_for_members of an
ensemble; whole_items: a tuple not split on commas; positional: the script's leading tokens).
The comment above a field documents it (in --help and docs/config.md, which `make docs` writes).
Every table of fields (READS, ACCEPTS, READ_BY, DATA_FIELDS, FIXED_ON_RESUME, SAME_FOR_MEMBERS,
POSITIONAL) is derived from these declarations: adding a field is one edit here, plus its use.
How a command line reads, PIPELINE_OPTIONS and pretrained weights: docs/configuration.md.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from cxr.data.labels import UncertaintyPolicy
from cxr.errors import ConfigError
from cxr.settings import accepts, data_fields, fixed_on_resume, literal_values, not_one_of, \
    positional_fields, read_by, reads_by_script, same_for_members, setting

# Per-class calibration maps fitted on val (calibration.fit_calibration).
CalibrationMethod = Literal["platt", "temperature", "none"]
Backbone = Literal["densenet121", "densenet169", "resnet50", "efficientnet_b0", "efficientnet_b3",
                   "convnext_tiny"]
CALIBRATION_METHODS: tuple[str, ...] = typing.get_args(CalibrationMethod)


@dataclass
class Config:
    # ---- the scripts ---------------------------------------------------------------------------
    # A script's command line takes only the fields it reads: cxr/cli.py refuses any other, naming
    # the scripts that read it. A field's readers are found from each script's code path: its own
    # `cfg.<field>` and those of the cxr/, dataset.py and model_architecture.py functions it calls
    # with its config (tests/test_config.py follows that path). evaluate.py, predict.py, export.py
    # and app.py rebuild the model from the checkpoint's own config, so they read none of the
    # model's or training's fields.
    SCRIPTS: ClassVar[tuple[str, ...]] = (
        "preprocess.py", "make_splits.py", "cache.py", "train.py", "evaluate.py", "ablate.py",
        "predict.py", "score.py", "export.py", "app.py", "localize.py")
    # A script that runs others (with the options each reads) takes their fields too.
    STAGES: ClassVar[dict[str, tuple[str, ...]]] = {"ablate.py": ("train.py", "evaluate.py")}
    # These (and ablate.py, through them) also take the fields built into the data (data=...), to
    # check them against the data in --data_dir (dataset.check_data_options): a different value is
    # an error, not a silent no-op (an ablation "views: --frontal_only false" would otherwise train
    # on the same data and report no difference).
    CHECKS_DATA: ClassVar[tuple[str, ...]] = ("train.py", "evaluate.py")

    # ---- data locations -------------------------------------------------------------------
    # folder holding train.csv, valid.csv, train/, valid/
    data_root: str = setting("data/CheXpert-v1.0-small", data="preprocess.py")
    # the dataset in --data_root, in its publisher's layout (cxr/data/nih.py, mimic.py,
    # padchest.py); evaluate.py --dataset nih: validate a checkpoint on that dataset (external
    # validation)
    dataset: Literal["chexpert", "nih", "mimic", "padchest"] = setting("chexpert", "preprocess.py",
                                                                       "evaluate.py")
    # preprocess.py: patients held out as test without an official split
    test_fraction: float = setting(0.2, data="preprocess.py")
    # evaluate.py --dataset: every image, or the official test
    split: Literal["all", "test"] = setting("all", "evaluate.py")
    # outputs of preprocess/make_splits go to <data_dir>/processed, /splits
    data_dir: str = setting("data", "preprocess.py", "make_splits.py", "cache.py", "train.py",
                            "evaluate.py")
    # each run writes models/<run_name>/
    models_dir: str = setting("models", "train.py", "evaluate.py", "predict.py", "export.py",
                            "localize.py")
    # run folder name; empty: train.py uses a timestamp (20261122-153000)
    run_name: str = setting("", "train.py", "evaluate.py", "predict.py", "export.py")

    # ---- preprocessing (preprocess.py) -----------------------------------------------------
    # keep only Frontal/Lateral == "Frontal" rows
    frontal_only: bool = setting(True, data="preprocess.py", fixed_on_resume=True,
                                 same_for_members=True)
    # CheXpert's hierarchy (adapters.HIERARCHY), the same rule for CheXpert and every other
    # dataset: none = the labels as published; fill_blank = a positive child makes a blank (not
    # mentioned) parent positive, never an explicit 0, -1 or not labelled one
    label_hierarchy: Literal["none", "fill_blank"] = setting("none", "evaluate.py",
                                                             data="preprocess.py")
    # PadChest's rows by who labelled them (its MethodLabel): physician = the 24 % read by
    # radiologists; all = also the 76 % labelled by their network (RNN_model)
    padchest_label_source: Literal["physician", "all"] = setting("physician", "evaluate.py",
                                                                 data="preprocess.py")
    # check every image file exists (and compute mean/std from them)
    check_images: bool = setting(True, data="preprocess.py")
    # error: stop, list; skip: drop, count, list
    missing_images: Literal["error", "skip"] = setting("error", data="preprocess.py")
    # images (seeded sample) used to compute the pixel mean/std
    stats_sample: int = setting(1000, data="preprocess.py")
    # pixel mean in [0, 1] used when images are not read
    fallback_mean: float = setting(0.506, data="preprocess.py")
    # pixel std in [0, 1] used when images are not read
    fallback_std: float = setting(0.290, data="preprocess.py")

    # ---- patient-level split (make_splits.py) ------------------------------------------------
    # fraction of training *patients* held out for model selection
    val_fraction: float = setting(0.1, data="make_splits.py")
    # seeds the split, the stats sample, weight init and data order (and evaluate.py
    # --recalibrate's split of a site's patients)
    seed: int = setting(42, "preprocess.py", "make_splits.py", "train.py", "evaluate.py",
                        "score.py", "localize.py", fixed_on_resume=True)

    # ---- model (model_architecture.py) ----------------------------------------------------------
    # torchvision network under the GeM + dropout + linear head (model_architecture.BACKBONES)
    backbone: Backbone = setting("densenet121", "train.py", fixed_on_resume=True)
    # start from the backbone's torchvision ImageNet weights
    pretrained: bool = setting(True, "train.py")
    # optional local file with those weights (densenet121-a639ec97.pth)
    pretrained_path: str = setting("", "train.py")
    # start the backbone from these weights instead of ImageNet's (whatever --pretrained says): a
    # file (torchxrayvision, LibAUC or CheXNet DenseNet121, a torchvision state dict of
    # --backbone, or a checkpoint of this pipeline), or a torchxrayvision weights name
    # (densenet121-res224-all); their input convention (channels, pixel scaling) goes with them
    # into the checkpoint (cxr/training/starting_weights.py CONVENTIONS, docs/configuration.md)
    init: str = setting("", "train.py", fixed_on_resume=True)
    # what --init holds; auto: told from its keys
    init_format: Literal["auto", "torchxrayvision", "libauc", "chexnet", "torchvision",
                         "checkpoint"] = setting("auto", "train.py", fixed_on_resume=True)
    # initial GeM exponent (learnable); 1 = average pooling
    gem_p: float = setting(3.0, "train.py", fixed_on_resume=True)
    # DenseNet's dense layers recomputed in the backward pass instead of kept (torch.utils.
    # checkpoint): less activation memory for small GPUs, the same gradients, slower steps (2-core
    # CPU, 160 px: 6.35 img/s against 9.80; docs/benchmarks.md)
    memory_efficient: bool = setting(False, "train.py")
    # dropout probability before the linear head
    dropout: float = setting(0.2, "train.py", fixed_on_resume=True)

    # ---- training (train.py) ------------------------------------------------------------------
    # the training loss: bce (masked, positive-weighted), focal (the same, down-weighting easy
    # labels by (1 - p_t)^focal_gamma) or aucm (LibAUC's AUC-margin loss, trained with its PESG
    # optimizer; fine-tune a BCE run with --init RUN/best.pth, LibAUC's two-stage recipe)
    loss: Literal["bce", "focal", "aucm"] = setting("bce", "train.py", fixed_on_resume=True)
    # --loss focal: the focusing exponent (0 = BCE)
    focal_gamma: float = setting(2.0, "train.py", fixed_on_resume=True)
    # --loss aucm: the margin of the AUC-margin loss
    aucm_margin: float = setting(1.0, "train.py", fixed_on_resume=True)
    # --loss aucm: PESG's learning rate (LibAUC's CheXpert recipe: 0.1), in place of lr_head and
    # lr_backbone
    aucm_lr: float = setting(0.1, "train.py", fixed_on_resume=True)
    # --loss aucm: PESG's epoch_decay, the pull towards its reference point: the average weights
    # of the previous epoch (0 in the first, as LibAUC's; cxr/training/aucm.py)
    aucm_epoch_decay: float = setting(2e-3, "train.py", fixed_on_resume=True)
    # train.py: train on this share of the training split's patients (a seeded subset, nested:
    # each smaller share's patients are within the larger's); ablate.py: several shares, each
    # crossed with every configuration and seed (a label-efficiency curve)
    train_fraction: tuple[float, ...] = setting((1.0,), "train.py", "ablate.py",
                                                fixed_on_resume=True)
    # how uncertain (-1) labels train; labels.py
    uncertainty_policy: UncertaintyPolicy = setting("U-Ones", "train.py", fixed_on_resume=True)
    # exceptions: Edema=U-Ones,Atelectasis=U-Ignore
    uncertainty_policy_by_class: tuple[str, ...] = setting((), "train.py", fixed_on_resume=True)
    # pixels, square input side (CheXpert paper: 320)
    image_size: int = setting(320, "cache.py", "train.py", fixed_on_resume=True,
                              same_for_members=True)
    # images per forward pass (micro-batch)
    batch_size: int = setting(16, "train.py", "evaluate.py", "predict.py", "localize.py",
                              fixed_on_resume=True)
    # micro-batches per optimizer step: effective batch 16 x 2 = 32
    accumulation_steps: int = setting(2, "train.py", fixed_on_resume=True)
    # total epochs, including the frozen warm-up
    epochs: int = setting(5, "train.py")
    # first epochs train only GeM + head, backbone frozen
    frozen_epochs: int = setting(1, "train.py", fixed_on_resume=True)
    # AdamW learning rate of GeM + head, per optimizer step
    lr_head: float = setting(1e-3, "train.py", fixed_on_resume=True)
    # AdamW learning rate of the backbone once unfrozen
    lr_backbone: float = setting(1e-4, "train.py", fixed_on_resume=True)
    # AdamW decoupled weight decay
    weight_decay: float = setting(1e-5, "train.py", fixed_on_resume=True)
    # optimizer steps of linear LR warm-up of each parameter group (the backbone's starts when it
    # is unfrozen); none: warmup_share of the steps the group trains, at most 100
    # (cxr/training/schedule.py)
    warmup_steps: int | None = setting(None, "train.py", fixed_on_resume=True)
    # the default warm-up's share of a group's steps (a short run's)
    warmup_share: float = setting(0.1, "train.py", fixed_on_resume=True)
    # after warm-up; cosine ends at 0
    lr_schedule: Literal["cosine", "constant"] = setting("cosine", "train.py", fixed_on_resume=True)
    # clip the gradient norm to this (after fp16 unscaling); 0 = off
    grad_clip_norm: float = setting(0.0, "train.py", fixed_on_resume=True)
    # cap on the per-class BCE positive weight (neg/pos count)
    max_pos_weight: float = setting(50.0, "train.py", fixed_on_resume=True)
    # light random affine (rotate/shift/scale) on training images only
    augment: bool = setting(True, "train.py", fixed_on_resume=True)
    # an image per item, or a study's views
    view_mode: Literal["frontal", "study"] = setting("frontal", "train.py", fixed_on_resume=True,
                                                     same_for_members=True)
    # study mode: fuses the views
    view_fusion: Literal["mean", "max", "attention"] = setting("mean", "train.py",
                                                               fixed_on_resume=True)
    # study mode: views per study, frontal first (the rest are left out)
    max_views: int = setting(3, "train.py", fixed_on_resume=True, same_for_members=True)
    # auto: cuda, then mps, then cpu
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "train.py", "evaluate.py",
                                                            "predict.py", "app.py",
                                                            "localize.py")
    # auto: fp16 + GradScaler on cuda; on a CPU bf16 where it computes bf16 natively (AVX512-BF16,
    # AMX, Arm BF16), else fp32 (emulated bf16 is several times slower than fp32)
    precision: Literal["auto", "fp16", "bf16", "fp32"] = setting("auto", "train.py", "evaluate.py",
                                                                 "predict.py", "localize.py",
                                                                 fixed_on_resume=True)
    # NHWC memory format: faster convolutions on CPU and tensor cores
    channels_last: bool = setting(True, "train.py", "evaluate.py", "predict.py", "localize.py")
    # DataLoader worker processes; -1 = one per CPU core but one, at most 8
    num_workers: int = setting(-1, "train.py", "evaluate.py", "predict.py", "localize.py")
    # stop after this many optimizer steps in a row skipped for NaN/inf
    max_nonfinite_steps: int = setting(5, "train.py")
    # also write last.pth every N optimizer steps; 0 = epochs only
    checkpoint_every_steps: int = setting(500, "train.py")
    # stop after N epochs without a better val mean AUC, counted once the warm-up is over; 0 = off
    early_stopping_patience: int = setting(3, "train.py")
    # a val split too small to rank epochs (fewer than half the classes with train positives have
    # min_positives positives and negatives in val): false = best.pth is the last epoch and no
    # early stopping; true = rank epochs on its mean AUC anyway
    select_on_small_val: bool = setting(False, "train.py")
    # bitwise-reproducible kernels (slower on GPU); resume is exact
    deterministic: bool = setting(False, "train.py")
    # exponential moving average of the weights, updated every optimizer step and validated every
    # epoch (best.pth then holds the average); 0 = off, 0.999 a usual value
    ema_decay: float = setting(0.0, "train.py", fixed_on_resume=True)
    # also keep the k best epochs' weights (top_k/), for an ensemble; 1 = best only
    keep_top_k: int = setting(1, "train.py", fixed_on_resume=True)
    # torch.compile the model (minutes of compiling first; pays off on GPUs)
    compile: bool = setting(False, "train.py")
    # continue a run: path to its last.pth, or "auto" (--run_name's, else newest)
    resume: str = setting("", "train.py")

    # ---- image cache (cache.py) ------------------------------------------------------------------
    # images are resized to image_size x (1 + margin), then cropped
    crop_margin: float = setting(0.0625, "cache.py", "train.py", fixed_on_resume=True,
                                 same_for_members=True)
    # read <data_dir>/cache/<side>px when it holds the images (cache.py)
    use_cache: bool = setting(True, "train.py", "evaluate.py")
    # an image unreadable while caching: stop, or exclude it everywhere (training, evaluation)
    cache_on_error: Literal["stop", "exclude"] = setting("stop", "cache.py")
    # cache.py: decode the images in errors.csv again (fixed?)
    cache_retry_errors: bool = setting(False, "cache.py")

    # ---- evaluation (evaluate.py) -------------------------------------------------------------
    # checkpoint to evaluate; empty = run_name's best.pth, else the newest; several (a comma list,
    # a folder such as a run's top_k/, an ensemble's folder): an ensemble
    # (cxr/evaluation/ensemble.py)
    checkpoint: str = setting("", "evaluate.py", "predict.py", "export.py", "app.py",
                              "localize.py")
    # patient bootstrap resamples of score.py's readers against the curves, of ablate.py
    # --seeds' two-level intervals and of localize.py's intervals; 0 = none (AUC intervals need
    # none: cxr/evaluation/intervals.py)
    bootstrap_resamples: int = setting(1000, "ablate.py", "score.py", "localize.py")
    # coverage of every interval (0.95 = 95 %)
    ci_level: float = setting(0.95, "evaluate.py", "score.py", "localize.py")
    # second operating point: highest val threshold reaching it
    target_sensitivity: float = setting(0.9, "evaluate.py")
    # a study's prediction from its images' (evaluate.py, predict.py's _studies.csv, score.py)
    study_aggregation: Literal["max", "mean"] = setting("max", "evaluate.py", "predict.py",
                                                        "score.py")
    # equal-width probability bins of the ECE and reliability diagrams
    calibration_bins: int = setting(10, "evaluate.py")
    # per-class calibration fitted on val (uncertain masked), stored with the thresholds and
    # applied by every consumer: platt (scale and bias), temperature (scale) or none
    calibration: CalibrationMethod = setting("platt", "evaluate.py")
    # a class enters the means with at least this many positives and
    # negatives in the split (fewer: its AUC is shown, but left out of the means)
    min_positives: int = setting(10, "train.py", "evaluate.py", "score.py")
    # test-time augmentation: mean logits of 4 views (shifts, zoom; no flips)
    tta: bool = setting(False, "evaluate.py", "predict.py", "app.py", "localize.py")
    # years: the subgroup audit's age bands start at these (18-39, 40-59, 60-79, 80+)
    age_bands: tuple[int, ...] = setting((18, 40, 60, 80), "evaluate.py", "score.py")
    # CSV or XLSX of the patients' demographics, audited beside the split's own Sex and Age
    # (cxr/data/demographics.py): CheXpert's CHEXPERT DEMO.xlsx read as is, or any table with a
    # patient column and categorical columns
    demographics: str = setting("", "evaluate.py", "score.py")
    # --demographics: the patient column; empty = PATIENT, patient_id, Patient ID, ...
    demographics_patient: str = setting("", "evaluate.py", "score.py")
    # --demographics: the columns to audit; empty = every column but the patient's
    demographics_columns: tuple[str, ...] = setting((), "evaluate.py", "score.py")
    # evaluate.py --compare RUN_A RUN_B (folders or checkpoints): AUC of B - A on compare_split;
    # score.py --compare X.csv,Y.csv: other models' predictions, each paired with --predictions
    compare: tuple[str, ...] = setting((), "evaluate.py", "score.py")
    # split of evaluate.py --compare
    compare_split: Literal["val", "test"] = setting("test", "evaluate.py")
    # the input gate (cxr/evaluation/ood.py), fitted on val's pooled features: films scoring
    # above this quantile of val's (cross-fitted) out-of-distribution scores are flagged
    ood_quantile: float = setting(0.99, "evaluate.py")
    # evaluate.py --dataset: fit the calibration and the thresholds on a share of the site's
    # patients and report them on the rest, before and after (cxr/evaluation/recalibration.py);
    # writes thresholds_<dataset>.json beside the checkpoint (predict.py --thresholds FILE)
    recalibrate: bool = setting(False, "evaluate.py")
    # --recalibrate: the share of the site's patients the fit takes (the rest are scored)
    recalibration_share: float = setting(0.5, "evaluate.py")

    # ---- scoring predictions CSVs against a reference standard (score.py) ----------------------
    # CSV of probabilities, keyed by Study or Path (predict.py's output too); several (a comma
    # list): scored as their ensemble, the mean of their probabilities, each compared with it
    predictions: str = setting("", "score.py")
    # reference-standard CSV, e.g. CheXpert's test groundtruth.csv (0/1 per study)
    labels: str = setting("", "score.py")
    # readers' binary reads, same schema as --labels
    radiologists: tuple[str, ...] = setting((), "score.py")
    # report labelers' output (1/0/-1/blank): uncertain vs --labels
    labeler: tuple[str, ...] = setting((), "score.py")
    # score.py's reports; empty = scores/<predictions file stem>/; localize.py's: empty =
    # <checkpoint folder>/localization_<saliency>/, with --maps localization/<maps folder>/
    output_dir: str = setting("", "score.py", "localize.py")
    # a study in one file and not the other: error (list the first few) | skip (count, list)
    unmatched: Literal["error", "skip"] = setting("error", "score.py")
    # probability: every score in [0, 1] | any: finite scores that only rank (logits, sums)
    score_scale: Literal["probability", "any"] = setting("probability", "score.py")

    # ---- ablation (ablate.py) ------------------------------------------------------------------
    # the configurations, --ablation "NAME: --field value ..." "NAME2: ...", the first the baseline
    ablation: tuple[str, ...] = setting((), "ablate.py", whole_items=True)
    # models/ablation-<name>/, runs <name>-<configuration>; empty = timestamp
    ablation_name: str = setting("", "ablate.py")
    # ablate.py: each configuration trained with seeds seed, seed+1, ... (N runs)
    seeds: int = setting(1, "ablate.py")

    # ---- inference (predict.py, export.py, app.py) -----------------------------------------------
    # predict.py's positional arguments: images, folders (searched recursively), CSVs of paths
    inputs: tuple[str, ...] = setting((), whole_items=True, positional="predict.py")
    # predict.py: CSV (default predictions.csv); export.py: .onnx (model.onnx)
    output: str = setting("", "predict.py", "export.py")
    # labels to draw Grad-CAM overlays of, e.g. Cardiomegaly Edema
    gradcam: tuple[str, ...] = setting((), "predict.py")
    # folder of the overlay PNGs; empty = <output stem>_gradcam/ beside it
    gradcam_dir: str = setting("", "predict.py")
    # predict.py: folder = the images of one folder are one study's views (CheXpert's
    # patient/study/viewN_frontal.jpg layout; a study-mode checkpoint fuses them, an image-mode
    # one also writes <output stem>_studies.csv) | image = each image is a study of its own
    study_grouping: Literal["folder", "image"] = setting("folder", "predict.py")
    # predict.py, app.py, export.py: go on (with a warning) when thresholds.json was made for
    # other weights or with other --tta; false = refuse and say to run evaluate.py
    allow_threshold_mismatch: bool = setting(False, "predict.py", "export.py", "app.py",
                                             "localize.py")
    # predict.py, app.py: a thresholds.json to use instead of the one beside the checkpoint (a
    # site's, from evaluate.py --recalibrate); it must be bound to the same weights. score.py:
    # the thresholds.json of the model that wrote --predictions, whose Youden thresholds are the
    # underdiagnosis audit's operating points
    thresholds: str = setting("", "predict.py", "app.py", "score.py", "localize.py")
    # predict.py: a film outside the training distribution (the input gate, ood_score above its
    # threshold): score = predict it, flagged in_distribution false | skip = leave it out, counted
    ood_action: Literal["score", "skip"] = setting("score", "predict.py")
    # predict.py: a folder for a DICOM Structured Report (TID 1500) per DICOM input, and with
    # --gradcam each overlay as a Secondary Capture image in the source's study
    dicom_out: str = setting("", "predict.py")

    # ---- localization (localize.py) ----------------------------------------------------------
    # the films whose maps are scored: a folder of images (searched recursively) or a CSV of
    # paths (image_path, or CheXpert's Path relative to the CSV's folder)
    images: str = setting("", "localize.py")
    # the reference standard of finding locations: cheXlocalize's gt_segmentations_*.json or
    # gt_annotations_*.json, NIH's BBox_List_2017.csv, the demo's annotations.csv
    ground_truth: str = setting("", "localize.py")
    # a folder of saliency maps already made, <film id>_<pathology>_map.npz (map, prob,
    # cxr_dims), scored instead of a checkpoint's
    maps: str = setting("", "localize.py")
    # the checkpoint's saliency method on its backbone's last feature map (pytorch_grad_cam):
    # gradcam | gradcampp (Grad-CAM++) | hirescam | eigencam (the same map for every class)
    saliency: Literal["gradcam", "gradcampp", "hirescam", "eigencam"] = setting("gradcam",
                                                                                "localize.py")
    # CSV threshold,task: a threshold per pathology of the map scaled to 0..1 (cheXlocalize's
    # tuning_results.csv, --tune's output); empty = Otsu's threshold of each map
    saliency_thresholds: str = setting("", "localize.py")
    # CSV prob_threshold,mIoU,task (cheXlocalize's probability_tuning_results.csv): a film whose
    # probability is below its pathology's best cut-off gets an empty segmentation; empty = none
    probability_cutoffs: str = setting("", "localize.py")
    # also tune a threshold per pathology (0.2 ... 0.7) for the highest true-positive mIoU on
    # --ground_truth (a val set) and write tuning_results.csv
    tune: bool = setting(False, "localize.py")
    # a second reader's segmentations (a --ground_truth format) and/or cheXlocalize's
    # most-representative points (JSON): the human benchmark and the model's decrease from it
    human: tuple[str, ...] = setting((), "localize.py")

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

    def validate(self) -> Config:
        """This config if its values are valid (validate below), else a ConfigError: cxr/cli.py
        calls it once the options are applied."""
        return validate(self)


# ---- the tables, derived from the fields' settings (cxr/settings.py) --------------------------
READS = reads_by_script(Config)  # script -> the fields it reads, in declaration order
ACCEPTS = accepts(Config)  # script -> what its command line takes (READS, data fields, stages)
READ_BY = read_by(Config)  # field -> the scripts that read it or run one that does
DATA_FIELDS = data_fields(Config)  # field built into the data -> the script that builds it in
FIXED_ON_RESUME = fixed_on_resume(Config)  # a resumed run keeps its checkpoint's values of these
SAME_FOR_MEMBERS = same_for_members(Config)  # an ensemble's members all have the same values
POSITIONAL = positional_fields(Config)  # script -> the field its leading tokens fill

_HINTS = typing.get_type_hints(Config)


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
    if not 0.5 <= cfg.ood_quantile < 1.0:
        raise ConfigError(f"--ood_quantile must be at least 0.5 and below 1, got "
                          f"{cfg.ood_quantile} (0.99 flags about 1 % of in-distribution films)")
    if not cfg.train_fraction or not all(0.0 < f <= 1.0 for f in cfg.train_fraction):
        raise ConfigError(f"--train_fraction must be shares in (0, 1], e.g. 0.1 or "
                          f"0.01,0.1,1.0 (ablate.py); got {cfg.train_fraction}")
    repeated = sorted({f for f in cfg.train_fraction if cfg.train_fraction.count(f) > 1})
    if repeated:
        raise ConfigError(f"--train_fraction names {repeated[0]:g} twice: give each share once")
    if cfg.focal_gamma < 0 or cfg.aucm_margin <= 0 or cfg.aucm_lr <= 0 or cfg.aucm_epoch_decay < 0:
        raise ConfigError("--focal_gamma and --aucm_epoch_decay must be 0 or more, --aucm_margin "
                          "and --aucm_lr above 0")
    multiclass = [entry for entry in (f"every label={cfg.uncertainty_policy}",
                                      *cfg.uncertainty_policy_by_class)
                  if entry.partition("=")[2].strip() == "U-MultiClass"]
    if cfg.loss != "bce" and multiclass:
        raise ConfigError(f"--loss {cfg.loss} needs binary labels, but U-MultiClass gives "
                          f"{', '.join(entry.partition('=')[0] for entry in multiclass)} three "
                          "classes: use --loss bce, or another --uncertainty_policy")
    if not 0.0 < cfg.recalibration_share < 1.0:
        raise ConfigError(f"--recalibration_share must be between 0 and 1 (the share of the "
                          f"site's patients that fit), got {cfg.recalibration_share}")
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

