r"""Predict the 14 findings of new radiographs with a trained checkpoint.

    python predict.py scans/ extra.dcm --checkpoint models/RUN/best.pth \
        --output predictions.csv [--gradcam Cardiomegaly "Pleural Effusion"]

Reads  the inputs, given before the first option (or with --inputs): image files (JPEG, PNG
       8/16-bit, DICOM, ...), folders (searched recursively for image files and DICOM files
       without a suffix) and CSVs of paths (an `image_path` column, as in this pipeline's CSVs,
       or CheXpert's `Path` column, relative to the CSV's folder; a `view` or CheXpert's
       `Frontal/Lateral` column gives the films' views), one per argument (a path may hold a
       comma); the checkpoint (default: --run_name's best.pth, else the newest
       models/*/best.pth) and thresholds.json beside it (written by evaluate.py: each class's
       calibration and threshold, fitted for these weights and this --tta; a file fitted for
       other weights or TTA is refused unless --allow_threshold_mismatch true; when absent every
       class is flagged at 0.5, with a warning).
Writes --output (default predictions.csv): path, view (frontal / lateral / unknown: from the
       CSV, the DICOM header, or the file name; a frontal-only model warns about lateral films),
       what the DICOM header says about the film (ViewPosition, PatientSex, PatientAge,
       StudyDate as written there; blank when absent or not a DICOM), header_warning (blank,
       or why the header says the film is not a chest radiograph: a Modality other than CR/DX
       or a BodyPartExamined other than CHEST; such films are still scored, with a warning
       counting them), ood_score and in_distribution (the input gate stored with the thresholds,
       cxr/evaluation/ood.py: the film's distance from the val split's films in the model's
       features, and "false" above the gate's threshold, the 99 % quantile of val's; a warning
       counts such films, which are still scored unless --ood_action skip leaves them out,
       listed in the errors file; blank when the thresholds file has no gate), the calibrated
       probability of each of the checkpoint's labels and a 0/1
       "<label> positive" column per label (probability >= its threshold); both cells say "not
       trained" for a label the checkpoint's training split never labelled (its record
       trained_labels; an NIH model's Enlarged Cardiomediastinum, Fracture, Support Devices),
       whose output means nothing;
       a study-mode checkpoint (view_mode study) predicts studies instead: with --study_grouping
       folder (default) the images of one folder are one study's views (CheXpert's layout), fused
       as in training, and a row holds study (the folder), views (their paths), n_views and the
       same columns (a study's header columns join its views' values); --study_grouping image
       makes every image a study of its own;
       <output stem>_studies.csv beside it, for an image-mode checkpoint with --study_grouping
       folder (default): a row per study (the folder of its images, CheXpert's layout): study,
       views (the paths used), n_views and each label's --study_aggregation (max or mean) of its
       images' probabilities, as evaluate.py's study level; a frontal-only model leaves lateral
       films out (a study of laterals only is aggregated over them, with a warning); no decision
       columns, as the thresholds were chosen on images, not on aggregates;
       <output stem>_errors.csv beside it: path, reason of every file that could not be read
       (corrupt, empty, not an image, decompression bomb; a colour, multi-frame or pixel-less
       DICOM, or one whose transfer syntax no installed decoder handles, with what to do), the
       others are still predicted;
       with --gradcam, one Grad-CAM overlay PNG per image and label in --gradcam_dir (default
       <output stem>_gradcam/);
       with --dicom_out DIR, for each DICOM input a DICOM Structured Report (Comprehensive SR,
       TID 1500: each finding's probability, threshold and decision, whether the film is within
       the training distribution, the model's name, version and model_id, references to the
       source's study, series and instance; cxr/inference/dicom_out.py), and with --gradcam each
       overlay as a Secondary Capture image in the source's study; other inputs get none.
--thresholds FILE uses a site's thresholds (evaluate.py --dataset ... --recalibrate) instead of
the thresholds.json beside the checkpoint; it must be bound to the same weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import pandas as pd

from config import Config
from cxr.atomic import write_csv_atomic
from cxr.cli import run_cli
from cxr.data.imaging import DicomHeader, ImageReadError, not_chest_reason
from cxr.data.inputs import collect_inputs, is_dicom_file
from cxr.errors import PipelineError
from cxr.inference.predictor import Predictor, film_header, film_view, find_label, frontal_first, \
    lateral_warning, load_predictor, predict_sources, predict_studies, radiograph, study_table
from cxr.training.checkpoint import resolve_checkpoint
from model_architecture import model_from_checkpoint

# ---- studies (study-mode checkpoints) -----------------------------------------------------------

def group_studies(paths: list[str], grouping: str, max_views: int, views: list[str] | None = None
                  ) -> tuple[list[list[int]], list[str], list[str]]:
    """(each study's positions in `paths`, its name, the paths left out as views beyond max_views).

    grouping "folder": the images of one folder are the views of one study, named by the folder
    (CheXpert's patientNNNNN/studyN/viewN_*.jpg); "image": each image is a study of its own.
    Frontal films come first, as in training (by `views`, film_view of each path), so the views
    left out are laterals.
    """
    views = views if views is not None else [film_view(path) for path in paths]
    if grouping == "image":
        return [[i] for i in range(len(paths))], list(paths), []
    folders: dict[str, list[int]] = {}
    for position, path in enumerate(paths):
        folders.setdefault(os.path.dirname(os.path.abspath(path)), []).append(position)
    studies, left_out = [], []
    for members in folders.values():
        taken, rest = frontal_first([paths[i] for i in members], max_views,
                                    [views[i] for i in members])
        studies.append([members[i] for i in taken])
        left_out += [paths[members[i]] for i in rest]
    names = [os.path.dirname(paths[members[0]]) for members in folders.values()]  # as given
    return studies, names, left_out


def run_studies(predictor: Predictor, paths: list[str], views: list[str], cfg: Config,
                labels: list[str], gradcam_dir: Path, dicom: list[bool],
                dicom_out: Path | None):
    """predict_studies over the inputs grouped by --study_grouping; says what it left out."""
    studies, names, left_out = group_studies(paths, cfg.study_grouping, predictor.max_views,
                                             views)
    if left_out:
        print(f"left out {len(left_out)} view(s) beyond the model's max_views "
              f"{predictor.max_views} per study (laterals first), e.g. {left_out[0]}")
    on_heatmap = overlay_writer(predictor, paths, gradcam_dir, dicom, dicom_out) \
        if labels else None
    return predict_studies(predictor, paths, studies, names, cfg.batch_size, cfg.num_workers,
                           heatmap_labels=labels, on_heatmap=on_heatmap)


def image_studies(table: pd.DataFrame, predictor: Predictor, cfg: Config) -> pd.DataFrame | None:
    """An image-mode model's predictions aggregated to studies (folders) by --study_aggregation,
    for the _studies.csv file; None for a study-mode model or with --study_grouping image."""
    if predictor.view_mode == "study" or cfg.study_grouping != "folder":
        return None
    studies, no_frontal = study_table(table, predictor.labels, cfg.study_aggregation,
                                      predictor.frontal_only, predictor.untrained)
    if no_frontal:
        print(f"warning: {len(no_frontal)} study(ies) have no frontal film ({no_frontal[0]}"
              f"{', ...' if len(no_frontal) > 1 else ''}): aggregated over their lateral films, "
              "which this frontal-only model was not trained on")
    return studies


# ---- what the DICOM header says ------------------------------------------------------------------

# Output columns (DICOM keywords) -> DicomHeader fields; blank when the header does not say, or
# the file is not a DICOM. Values as written in the header: PatientAge "065Y", StudyDate YYYYMMDD.
HEADER_COLUMNS = {"ViewPosition": "view_position", "PatientSex": "patient_sex",
                  "PatientAge": "patient_age", "StudyDate": "study_date"}
WARNING_COLUMN = "header_warning"  # why the header says a film is not a chest radiograph


def header_warning(header: DicomHeader) -> str:
    """The header_warning of one film: blank unless its Modality or BodyPartExamined says it
    is not a chest radiograph."""
    reason = not_chest_reason(header)
    return f"not a chest radiograph by its DICOM header: {reason}" if reason else ""


def joined(values) -> str:
    """A study's values over its views: each distinct non-blank one, in order, joined by "; "
    (one film: its value)."""
    return "; ".join(dict.fromkeys(value for value in values if value))


def with_header_columns(table: pd.DataFrame, members, headers: list[DicomHeader]
                        ) -> pd.DataFrame:
    """The predictions table with HEADER_COLUMNS and header_warning after its view column
    (a study's after n_views): each row's from its film's header (`members`: the source
    positions of each row, PredictedFiles.members), a study's joined over its views."""
    columns = {name: [joined(getattr(headers[i], field) for i in row) for row in members]
               for name, field in HEADER_COLUMNS.items()}
    columns[WARNING_COLUMN] = [joined(header_warning(headers[i]) for i in row) for row in members]
    where = table.columns.get_loc("view" if "view" in table else "n_views") + 1
    before, after = table.iloc[:, :where], table.iloc[:, where:]
    return pd.concat([before, pd.DataFrame(columns, index=table.index), after], axis=1)


def not_chest_warning(table: pd.DataFrame, view_mode: str) -> str | None:
    """Films whose header says they are not chest radiographs are still scored, but their
    findings mean nothing: say which (as lateral_warning does for laterals)."""
    flagged = table.loc[table[WARNING_COLUMN] != "", table.columns[0]].tolist()
    if not flagged:
        return None
    rows = "study(ies) hold films that are" if view_mode == "study" else "film(s) are"
    return (f"{len(flagged)} {rows} not chest radiographs by their DICOM header (Modality not "
            f"CR or DX, or BodyPartExamined not CHEST: {', '.join(map(str, flagged[:3]))}"
            f"{', ...' if len(flagged) > 3 else ''}): their findings mean nothing (they are "
            f"marked in the {WARNING_COLUMN} column)")


# ---- outputs ---------------------------------------------------------------------------------------

def output_paths(cfg: Config) -> tuple[Path, Path, Path]:
    """The predictions CSV, the errors CSV beside it and the Grad-CAM folder."""
    output = Path(cfg.output or "predictions.csv")
    gradcam_dir = Path(cfg.gradcam_dir) if cfg.gradcam_dir else \
        output.with_name(f"{output.stem}_gradcam")
    return output, output.with_name(f"{output.stem}_errors.csv"), gradcam_dir


def studies_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_studies.csv")


def overlay_name(path: str, root: str, label: str) -> str:
    """'patient00001_study1_view1_frontal_Pleural-Effusion.png': the image's path under the
    inputs' common folder, flattened, so that CheXpert's many view1_frontal.jpg stay apart."""
    relative = os.path.relpath(os.path.abspath(path), root)
    stem = re.sub(r"[^\w.-]+", "_", os.path.splitext(relative)[0].replace(os.sep, "_"))
    return f"{stem}_{label.replace(' ', '-')}.png"


def overlay_writer(predictor: Predictor, paths: list[str], folder: Path, dicom: list[bool],
                   dicom_out: Path | None = None):
    """on_heatmap callback of predict_sources: saves each overlay as a PNG in `folder`, and with
    `dicom_out` a DICOM input's also as a Secondary Capture image there."""
    from cxr.inference.gradcam import \
        overlay  # imported here: only --gradcam needs pytorch_grad_cam

    folder.mkdir(parents=True, exist_ok=True)
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath(parents)

    def write(position: int, label: str, cam) -> None:
        try:
            image = radiograph(paths[position])
        except ImageReadError:  # changed since it was predicted: nothing to draw on
            return
        picture = overlay(image, cam, predictor.side)
        target = folder / overlay_name(paths[position], root, label)
        if not cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise PipelineError(f"could not write {target}")
        if dicom_out is not None and dicom[position]:
            from cxr.inference.dicom_out import write_secondary_capture

            write_secondary_capture(Path(paths[position]), picture, label,
                                    model_identity(predictor), dicom_out)

    return write


# ---- the input gate ------------------------------------------------------------------------------

def gate_warning(table: pd.DataFrame, predictor: Predictor) -> str | None:
    """One line counting the rows outside the training distribution (in_distribution false)."""
    outside = table.loc[table["in_distribution"] == "false", table.columns[0]].tolist()
    if not outside:
        return None
    gate = predictor.thresholds.gate
    rows = "study(ies)" if predictor.view_mode == "study" else "film(s)"
    return (f"{len(outside)} of {len(table)} {rows} lie outside the model's training "
            f"distribution ({', '.join(map(str, outside[:3]))}{', ...' if len(outside) > 3 else ''}"
            f"): ood_score above the input gate's threshold {gate.threshold:.4g} (the "
            f"{gate.quantile:.0%} quantile of val's), so their findings are not reliable; they "
            "are marked in_distribution false")


def leave_out_outside(table: pd.DataFrame, errors: pd.DataFrame, predictor: Predictor
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """--ood_action skip: the rows outside the training distribution move to the errors table,
    with the reason."""
    outside = table["in_distribution"] == "false"
    threshold = predictor.thresholds.gate.threshold
    reasons = [f"{name}: left out (--ood_action skip): outside the model's training distribution "
               f"(ood_score {score:.4g} > {threshold:.4g})"
               for name, score in zip(table.loc[outside, table.columns[0]],
                                      table.loc[outside, "ood_score"])]
    skipped = pd.DataFrame({"path": table.loc[outside, table.columns[0]], "reason": reasons})
    return (table[~outside].reset_index(drop=True),
            pd.concat([errors, skipped], ignore_index=True))


def check_ood_action(cfg: Config, predictor: Predictor) -> None:
    if cfg.ood_action == "skip" and predictor.gate is None:
        raise PipelineError(f"--ood_action skip needs the input gate, and "
                            f"{predictor.thresholds.source} has none: re-run evaluate.py to fit "
                            "it (or leave --ood_action at score)")


# ---- DICOM results ---------------------------------------------------------------------------------

def model_identity(predictor: Predictor):
    """The model's name, version and model_id, as the DICOM objects carry them."""
    from cxr.inference.dicom_out import ModelIdentity

    backbone = getattr(predictor.model, "backbone_name", "ensemble")
    checkpoint = predictor.checkpoint
    return ModelIdentity(f"CheXpertNet {backbone}", f"{checkpoint.parent.name}/{checkpoint.name}",
                         predictor.model_id)


def findings_for_dicom(row: pd.Series, predictor: Predictor) -> list:
    """A row's trained findings as dicom_out.Finding (probability, threshold, decision)."""
    from cxr.inference.dicom_out import Finding

    return [Finding(label, float(row[label]), predictor.thresholds.values[label],
                    bool(row[f"{label} positive"])) for label in predictor.trained]


def write_dicom_results(table: pd.DataFrame, members, paths: list[str], dicom: list[bool],
                        predictor: Predictor, folder: Path) -> int:
    """A Structured Report for each DICOM input that was predicted (a study row's for each of
    its DICOM views); returns how many were written."""
    from cxr.inference.dicom_out import write_structured_report

    model, written = model_identity(predictor), 0
    for (_, row), sources in zip(table.iterrows(), members):
        inside = None if row["in_distribution"] == "" else row["in_distribution"] == "true"
        score = None if inside is None else float(row["ood_score"])
        for position in sources:
            if dicom[position]:
                write_structured_report(Path(paths[position]), findings_for_dicom(row, predictor),
                                        model, folder, in_distribution=inside, ood_score=score)
                written += 1
    return written


def main(cfg: Config) -> None:
    paths, given_views = collect_inputs(cfg.inputs)
    headers = [film_header(path) for path in paths]  # each read once, up to the pixel data
    views = [film_view(path, given, header)
             for path, given, header in zip(paths, given_views, headers)]
    checkpoint = resolve_checkpoint(cfg)
    predictor = load_predictor(checkpoint, cfg, rebuild=model_from_checkpoint)
    for warning in predictor.warnings:
        print(f"warning: {warning}")
    check_ood_action(cfg, predictor)
    labels = [find_label(name, predictor.labels, predictor.untrained) for name in cfg.gradcam]
    output, errors_path, gradcam_dir = output_paths(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    dicom = [bool(cfg.dicom_out) and is_dicom_file(Path(path)) for path in paths]
    dicom_out = Path(cfg.dicom_out) if cfg.dicom_out else None
    if predictor.view_mode == "study":
        result = run_studies(predictor, paths, views, cfg, labels, gradcam_dir, dicom, dicom_out)
    else:
        on_heatmap = overlay_writer(predictor, paths, gradcam_dir, dicom, dicom_out) \
            if labels else None
        result = predict_sources(predictor, paths, cfg.batch_size, cfg.num_workers,
                                 heatmap_labels=labels, on_heatmap=on_heatmap, views=views)
        warning = lateral_warning(result.table, predictor)
        if warning:
            print(f"warning: {warning}")
    table = with_header_columns(result.table, result.members, headers)
    for warning in (not_chest_warning(table, predictor.view_mode), gate_warning(table, predictor)):
        if warning:
            print(f"warning: {warning}")
    members, errors = result.members, result.errors
    if cfg.ood_action == "skip":
        members = [m for m, inside in zip(members, table["in_distribution"] != "false") if inside]
        table, errors = leave_out_outside(table, errors, predictor)
    studies = image_studies(table, predictor, cfg)
    write_csv_atomic(table, output)
    if studies is not None:
        write_csv_atomic(studies, studies_path(output))
    write_csv_atomic(errors, errors_path)
    for reason in errors["reason"]:
        print(f"skipped: {reason}")
    if dicom_out is not None:
        from cxr.inference.dicom_out import dicom_outputs_note

        written = write_dicom_results(table, members, paths, dicom, predictor, dicom_out)
        print(dicom_outputs_note(written, len(paths) - sum(dicom), dicom_out))
    if table.empty:
        raise PipelineError(f"none of the {len(paths)} images could be read; reasons in "
                            f"{errors_path}")
    heatmaps = f", Grad-CAM overlays of {', '.join(labels)} in {gradcam_dir}/" if labels else ""
    skipped = len(errors) - len(result.errors)
    left_out = f" and {skipped} left out outside the training distribution" if skipped else ""
    unit = "study predictions" if predictor.view_mode == "study" else "predictions"
    films = "frontal films" if predictor.frontal_only else "films"
    by_study = "" if studies is None else (f", {len(studies)} studies ({cfg.study_aggregation} "
                                           f"over their {films}) to {studies_path(output)}")
    print(f"predict: wrote {len(table)} {unit} of {checkpoint} to {output} "
          f"(thresholds: {predictor.thresholds.source}; calibration: "
          f"{predictor.thresholds.method}{'; TTA' if predictor.tta else ''}){by_study}, "
          f"{len(result.errors)} unreadable file(s){left_out} to {errors_path}{heatmaps}")


if __name__ == "__main__":
    run_cli(main, script="predict.py", defaults=Config())
