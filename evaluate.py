"""Evaluation report of a checkpoint on the val and test splits, or a comparison of two runs.

    python evaluate.py [--checkpoint models/RUN/best.pth] [--calibration platt] [--tta true]
    python evaluate.py --compare RUN_A RUN_B [--compare_split test]
    python evaluate.py --checkpoint CKPT --dataset nih --data_root DIR [--split test]
    python evaluate.py --checkpoint CKPT --dataset nih --data_root DIR --recalibrate true
                       [--recalibration_share 0.5] [--seed 42]
    python evaluate.py --checkpoint models/a/best.pth,models/b/best.pth   (or models/RUN/top_k)

Reads  the checkpoint (default: --run_name's best.pth, else the newest models/*/best.pth) and
       <data_dir>/splits/val.csv, test.csv. The model is rebuilt from the checkpoint's own config,
       labels, pixel stats and positive-weight offset.
Every split is scored against its raw labels with uncertain (-1) masked, whatever the training
policy (CheXpert's test split, labelled by radiologists, has none). The val split fits each class's
calibration map (--calibration) and the thresholds; test is only scored.
Writes next to the checkpoint:
       thresholds.json             the calibration and the operating points chosen on val
                                   (Youden's J and the threshold reaching --target_sensitivity),
                                   bound to the checkpoint's weights (model_id) and saying how
                                   the scores were made (TTA, view mode)
       eval_<split>.json/.md/.csv  per class: AUC with its interval
                                   (cxr/evaluation/intervals.py), AUPRC, prevalence, masked
                                   labels, study-level AUC, ECE, the val thresholds'
                                   sensitivity, specificity, PPV, NPV, F1; the means
                                   over the classes with at least --min_positives positives
                                   and negatives, over all and over the competition five
       roc_<split>.png, pr_<split>.png, reliability_<split>.png, subgroups_<split>.png (the
                                   competition five by subgroup)  (embedded in eval_<split>.md)
With --compare RUN_A RUN_B (a run folder under --models_dir, or a checkpoint path): per-class AUC
differences B - A with paired intervals on --compare_split, printed and written
to <B's folder>/compare_<split>_vs_<A>.{csv,md}.
With several checkpoints (a comma list, or a folder of them such as a run's top_k/ from
--keep_top_k), an ensemble: the mean of the members' probabilities, each member calibrated on
its own val predictions; the ensemble's calibration and thresholds are fitted on val like a
checkpoint's. Writes ensemble.json (the members and their calibrations), thresholds.json and the
reports into the folder given, or <models_dir>/ensemble-<id>/ for a list; each report shows the
ensemble beside every member, with paired intervals (cxr/evaluation/ensemble.py).
With --dataset nih|mimic|padchest --data_root DIR (external validation): every image of DIR in
its publisher's layout (its official test split with --split test), labels mapped onto CheXpert's
(cxr/data/nih.py, ...; a label the dataset does not annotate is n/a; the hierarchy is the training
data's --label_hierarchy; PadChest's rows those of --padchest_label_source), scored with the
calibration and thresholds fitted on the checkpoint's own val split; the reference standard names
who labelled the rows; writes eval_<dataset>.{json,md,csv} (with
--split test eval_<dataset>_test.*) and its figures beside the checkpoint, never over its own
reports. The JSON is shaped like eval_test.json, plus "dataset".
With --recalibrate true as well (recalibration for that site, cxr/evaluation/recalibration.py): the
site's patients split by --seed, --recalibration_share of them fitting each class's calibration
and thresholds, the others scored with val's and with the site's; writes thresholds_<dataset>.json
(thresholds.json's contract, for predict.py --thresholds FILE) and eval_<dataset>_recalibrated.*
(the scoring half after, with "recalibration": before and after) beside the checkpoint.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pandas as pd

from config import Config
from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.cli import given_fields, run_cli
from cxr.data.demographics import check_demographics
from cxr.errors import ConfigError
from cxr.evaluation.calibration import calibrated_logits, sigmoid
from cxr.evaluation.ensemble import check_members, checkpoint_paths, ensemble_folder, ensemble_id, \
    is_ensemble, write_ensemble_file
from cxr.evaluation.external import dataset_record, external_rows, report_name
from cxr.evaluation.ood import InputGate
from cxr.evaluation.predictions import Predictions, combined_predictions, evaluate_predictions, \
    fit_and_write_thresholds, fit_on_val, load_model, members_beside, paired_differences, \
    predict_frame, predict_split, resolve_run, run_label, val_calibration
from cxr.evaluation.recalibration import fit_site, read_val_payload, recalibrated_report, \
    recalibration_summary, site_payload, split_predictions, write_site_thresholds
from cxr.evaluation.report import EvaluationReport
from cxr.reporting.evaluation_report import comparison_description, comparison_report, \
    comparison_text, ensemble_text, print_report, recalibration_text, reference_text, \
    write_reports
from cxr.reporting.plots import forest_plot, pr_grid, reliability_grid, roc_grid
from cxr.training.checkpoint import model_id, resolve_checkpoint
from cxr.training.runtime import choose_device
from dataset import check_data_options, make_dataset
from model_architecture import model_from_checkpoint

SPLITS = ("val", "test")  # val first: it fits the calibration and the thresholds
# with --dataset they describe that dataset (--label_hierarchy is the training data's own)
EXTERNAL_FIELDS = ("data_root", "missing_images", "padchest_label_source")


# ---- predictions --------------------------------------------------------------------------------

def draw_plots(preds: Predictions, result: EvaluationReport, cfg: Config, out_dir: Path
               ) -> dict[str, str]:
    """The split's figures (ROC, PR, reliability; the subgroup forest plot when the competition
    five are scored); returns their file names (relative to out_dir)."""
    split, labels = result.split, preds.labels
    probs = sigmoid(calibrated_logits(preds.logits, result.calibration.parameters, labels))
    names = {kind: f"{kind}_{split}.png" for kind in ("roc", "pr", "reliability")}
    roc_grid(preds.targets, probs, labels, out_dir / names["roc"], f"ROC curves, {split} split")
    pr_grid(preds.targets, probs, labels, out_dir / names["pr"],
            f"Precision-recall curves, {split} split")
    reliability_grid(preds.targets, probs, labels, result.calibration.ece,
                     cfg.calibration_bins, out_dir / names["reliability"],
                     f"Reliability diagrams, {split} split")
    if forest_plot(result.subgroups, labels, out_dir / f"subgroups_{split}.png",
                   f"Competition five by subgroup, {split}"):
        names["subgroups"] = f"subgroups_{split}.png"
    return names


# ---- the two modes --------------------------------------------------------------------------------

def evaluate_checkpoint(cfg: Config) -> None:
    path = resolve_checkpoint(cfg)
    device = choose_device(cfg.device)
    model, checkpoint, trained = load_model(path, cfg, device, rebuild=model_from_checkpoint)
    thresholds = calibration = gate = None
    for split in SPLITS:
        preds = predict_split(model, split, path, checkpoint, trained, cfg, device,
                              make_dataset=make_dataset)
        if thresholds is None:  # the val split, first
            thresholds, calibration, gate = fit_on_val(preds, path, checkpoint, trained, cfg)
        result = evaluate_predictions(preds, thresholds, calibration, cfg, split=split,
                                      checkpoint=str(path), epoch=checkpoint.get("epoch"),
                                      gate=gate)
        plots = draw_plots(preds, result, cfg, path.parent)
        write_reports(result, plots, cfg, path.parent)
        print_report(result, path, cfg)
    print(f"\nevaluate: wrote {path.parent}/thresholds.json, "
          f"eval_{{{','.join(SPLITS)}}}.{{json,md,csv}}, {{roc,pr,reliability,subgroups}}_*.png")


def evaluate_ensemble(cfg: Config) -> None:
    """--checkpoint A,B,... or a folder of checkpoints: each member predicts val and test; its
    calibration is fitted on its val predictions; the ensemble (the mean of the members'
    calibrated probabilities) gets its own calibration and thresholds on val, as one checkpoint
    does, and a report with every member beside it."""
    paths = checkpoint_paths(cfg.checkpoint)
    device = choose_device(cfg.device)
    members = [load_model(path, cfg, device, rebuild=model_from_checkpoint) for path in paths]
    checkpoints = [checkpoint for _, checkpoint, _ in members]
    check_members(paths, [tuple(c["labels"]) for c in checkpoints], [t for _, _, t in members])
    member_ids = [model_id(checkpoint) for checkpoint in checkpoints]
    folder = ensemble_folder(cfg.checkpoint, paths, cfg)
    print(f"evaluate: an ensemble of {len(paths)} checkpoints -> {folder}")
    predictions = {split: [predict_split(model, split, path, checkpoint, trained, cfg, device,
                                         make_dataset=make_dataset)
                           for path, (model, checkpoint, trained) in zip(paths, members)]
                   for split in SPLITS}
    calibrations = [val_calibration(preds, cfg) for preds in predictions["val"]]
    handle = write_ensemble_file(folder, paths, member_ids, calibrations)
    scores = {"tta": cfg.tta, "view_mode": members[0][2].view_mode, "ensemble": len(paths),
              "logit_offset_removed": all("logit_offset" in c["model"] for c in checkpoints)}
    thresholds = calibration = gate = None
    for split in SPLITS:
        preds = combined_predictions(predictions[split], calibrations)
        if thresholds is None:  # the val split, first
            thresholds, calibration, gate = fit_and_write_thresholds(
                preds, handle, ensemble_id(member_ids), scores, cfg)
        result = dataclasses.replace(
            evaluate_predictions(preds, thresholds, calibration, cfg, split=split,
                                 checkpoint=str(folder), epoch=None, gate=gate),
            ensemble=members_beside(predictions[split], preds, paths, member_ids, cfg))
        plots = draw_plots(preds, result, cfg, folder)
        write_reports(result, plots, cfg, folder)
        print_report(result, folder, cfg)
        print(ensemble_text(result.ensemble, cfg.ci_level))
    print(f"\nevaluate: wrote {handle}, {folder}/thresholds.json, "
          f"eval_{{{','.join(SPLITS)}}}.{{json,md,csv}}, {{roc,pr,reliability,subgroups}}_*.png "
          f"(predict.py --checkpoint {folder} uses the ensemble)")


def external_validation(cfg: Config) -> None:
    """--dataset: the checkpoint on another dataset; calibration and thresholds from its val."""
    path = resolve_checkpoint(cfg)
    device = choose_device(cfg.device)
    model, checkpoint, trained = load_model(path, cfg, device, rebuild=model_from_checkpoint)
    frame, adapted, n_missing = external_rows(cfg)
    name = report_name(cfg)
    val = predict_split(model, "val", path, checkpoint, trained, cfg, device,
                        make_dataset=make_dataset)
    thresholds, calibration, gate = fit_on_val(val, path, checkpoint, trained, cfg)
    not_labelled = {label: adapted.not_labelled_note() for label in adapted.not_labelled}
    preds = predict_frame(model, frame, name, path, checkpoint, trained, cfg, device,
                          use_cache=False, not_labelled=not_labelled, make_dataset=make_dataset)
    result = dataclasses.replace(
        evaluate_predictions(preds, thresholds, calibration, cfg, split=name,
                             checkpoint=str(path), epoch=checkpoint.get("epoch"), gate=gate),
        reference=reference_text(cfg, adapted), dataset=dataset_record(cfg, adapted, n_missing))
    plots = draw_plots(preds, result, cfg, path.parent)
    write_reports(result, plots, cfg, path.parent)
    print_report(result, path, cfg)
    print(f"\nevaluate: wrote {path.parent}/eval_{name}.{{json,md,csv}}, "
          f"{{roc,pr,reliability}}_{name}.png ({adapted.title}, {result.n_images} images; "
          "calibration and thresholds fitted on the checkpoint's val split)")
    if cfg.recalibrate:
        recalibrate_for_site(preds, frame, (thresholds, calibration), gate, result, path,
                             checkpoint, cfg)


def recalibrate_for_site(preds: Predictions, images: pd.DataFrame, val: tuple[dict, dict],
                         gate: InputGate | None, site: EvaluationReport, path: Path,
                         checkpoint: dict, cfg: Config) -> None:
    """--recalibrate: the site's patients split in two (--recalibration_share, --seed); the
    calibration and thresholds refitted on the fitting half and written to
    thresholds_<name>.json; the scoring half evaluated with val's (`val`: thresholds,
    calibration) and with the site's, its report eval_<name>_recalibrated.* saying both
    (cxr/evaluation/recalibration.py). `site` is the whole site's report (its reference)."""
    name = report_name(cfg)
    halves = split_predictions(preds, images, cfg.recalibration_share, cfg.seed)
    fitted = fit_site(halves.fit, val, cfg)
    payload = site_payload(read_val_payload(path), path, model_id(checkpoint), halves, fitted,
                           {"dataset": name, "data_root": str(cfg.data_root)}, cfg)
    site_file = write_site_thresholds(payload, path, name)
    before, after = (evaluate_predictions(halves.score, thresholds, calibration, cfg, split=name,
                                          checkpoint=str(path), epoch=checkpoint.get("epoch"),
                                          gate=gate)
                     for thresholds, calibration in (val, fitted[:2]))
    summary = recalibration_summary(before, after, halves, fitted[2], site_file, name, cfg)
    result = recalibrated_report(
        dataclasses.replace(after, reference=site.reference, dataset=site.dataset), summary)
    plots = draw_plots(halves.score, result, cfg, path.parent)
    write_reports(result, plots, cfg, path.parent)
    print_report(result, path, cfg)
    print(recalibration_text(summary, cfg.target_sensitivity))
    print(f"\nevaluate: wrote {site_file} (calibration and thresholds fitted on "
          f"{summary.fitted_on}) and {path.parent}/eval_{result.split}.{{json,md,csv}}, "
          f"{{roc,pr,reliability}}_{result.split}.png (the scoring half, before and after); "
          f"use the site's file with python predict.py --checkpoint {path} --thresholds "
          f"{site_file} IMAGES")


def compare_runs(cfg: Config) -> None:
    if len(cfg.compare) != 2:
        raise ConfigError(f"--compare takes two runs, --compare RUN_A RUN_B; got "
                          f"{len(cfg.compare)}: {' '.join(cfg.compare)}")
    paths = [resolve_run(name, cfg) for name in cfg.compare]
    device = choose_device(cfg.device)
    split = cfg.compare_split
    # both load before predicting
    models = [load_model(path, cfg, device, rebuild=model_from_checkpoint) for path in paths]
    rows, both = paired_differences(
        *[predict_split(model, split, path, checkpoint, trained, cfg, device,
                        make_dataset=make_dataset)
          for path, (model, checkpoint, trained) in zip(paths, models)], cfg)
    description = comparison_description(split, both.frame, both.unit, paths)
    print("\n" + "\n  ".join(description) + "\n" + comparison_text(rows, cfg.ci_level))
    write_comparison(rows, description, paths, split, cfg)


def write_comparison(rows: list[dict], description: list[str], paths: list[Path], split: str,
                     cfg: Config) -> None:
    """compare_<split>_vs_<A>.csv and .md in B's folder (B is usually the change being tried)."""
    out = paths[1].parent / f"compare_{split}_vs_{run_label(paths[0])}"
    write_csv_atomic(pd.DataFrame(rows), out.with_suffix(".csv"))
    write_text_atomic(comparison_report(rows, description, run_label(paths[0]),
                                        run_label(paths[1]), cfg.ci_level),
                      out.with_suffix(".md"))
    print(f"\nevaluate: wrote {out}.csv, {out.name}.md")


def main(cfg: Config, given: set[str] = frozenset()) -> None:
    """`given`: the options set on the command line (data-building ones are checked against the
    data, dataset.check_data_options)."""
    if cfg.recalibrate and cfg.dataset == "chexpert":
        raise ConfigError("--recalibrate refits the calibration and thresholds for another "
                          "site's images: it needs --dataset nih|mimic|padchest (with "
                          "--data_root); on CheXpert's own splits they are fitted on val")
    if cfg.dataset != "chexpert" and is_ensemble(cfg.checkpoint):
        raise ConfigError("--dataset scores one checkpoint on another dataset; an ensemble is "
                          "not supported there yet: validate each member with its own "
                          "--checkpoint")
    check_demographics(cfg)
    if cfg.dataset != "chexpert":  # --data_root, --missing_images: of the other dataset
        external = {name: getattr(cfg, name) for name in EXTERNAL_FIELDS}
        cfg = check_data_options(cfg, set(given) - set(EXTERNAL_FIELDS), "evaluate.py")
        external_validation(dataclasses.replace(cfg, **external))
        return
    if "split" in given:
        raise ConfigError("--split chooses the part of another dataset to score: it needs "
                          "--dataset nih|mimic|padchest (with --data_root)")
    cfg = check_data_options(cfg, set(given), "evaluate.py")
    if cfg.compare:
        compare_runs(cfg)
    elif is_ensemble(cfg.checkpoint):
        evaluate_ensemble(cfg)
    else:
        evaluate_checkpoint(cfg)


if __name__ == "__main__":
    run_cli(lambda cfg: main(cfg, given_fields(sys.argv[1:], "evaluate.py", Config)),
            script="evaluate.py", defaults=Config())
