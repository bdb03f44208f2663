"""Web GUI: upload chest X-rays, see the findings, their threshold decisions and Grad-CAM.

    streamlit run app.py        (then open http://localhost:8501)
    streamlit run app.py -- --tta true [--checkpoint models/RUN/best.pth] [--device cpu]

The checkpoint is picked in the sidebar among models/*/best.pth or typed as a path; the
environment variable CHEXPERT_CHECKPOINT (or --checkpoint after `--`) fills that path in. Its
thresholds.json must have been fitted for these weights and with the test-time augmentation the
sidebar asks for (--tta sets its default), else the app refuses and names evaluate.py
(--allow_threshold_mismatch true goes on with a warning). A frontal-only model warns about uploads
that look lateral (DICOM header or file name), and shows a banner above the findings of a film
the input gate puts outside the training distribution (cxr/evaluation/ood.py; --thresholds FILE
after `--` reads a site's thresholds instead). Uploads (JPEG, PNG, DICOM) are decoded in memory
and predicted exactly as predict.py predicts files (cxr/inference/predictor.py): one image gets
its findings, most probable first (all 14 in view, without scrolling), with confidence
bars and decisions, and a Grad-CAM overlay for the finding chosen; a batch also gets a results
table and its CSV, and with a study-mode checkpoint (view_mode study) the findings of the uploads
fused as one study's views. A label the checkpoint's training split never labelled (an NIH
model's Enlarged Cardiomediastinum, Fracture, Support Devices) gets no probability, decision or
heatmap: it says "not trained".
An ensemble (a comma list of checkpoints, a run's top_k/ folder, an ensemble's folder: see
cxr/evaluation/ensemble.py) is typed as the path and used like one checkpoint. An upload that cannot
be read shows why. A research demo of a model trained on CheXpert labels,
not a medical device.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from config import Config
from cxr.cli import parse_args
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.ensemble import checkpoint_paths, predictor_files
from cxr.inference.predictor import NOT_TRAINED, PredictedFiles, Predictor, Upload, film_view, \
    findings_of, frontal_first, lateral_warning, load_predictor, outside_count, overlay_of, \
    predict_sources, predict_studies
from model_architecture import model_from_checkpoint

CHECKPOINT_ENV = "CHEXPERT_CHECKPOINT"  # a checkpoint path to start with
UPLOAD_TYPES = ["jpg", "jpeg", "png", "dcm", "dicom"]
BATCH_SIZE = 8
ROW_PX = 35  # st.dataframe's row height, in pixels (its default)
PROBABILITY = st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0,
                                              format="percent")


def app_options() -> Config:
    """The command line after `streamlit run app.py --` (none under other runners, e.g. tests)."""
    argv = sys.argv[1:] if Path(sys.argv[0]).name == "app.py" else []
    return parse_args(argv, script="app.py", defaults=Config())


# ---- cached work: the model once per predictor, predictions once per upload set ------------------
# `key` = (checkpoint mtime, thresholds.json mtime or None, TTA, allow mismatch): rewriting either
# file, or asking for other TTA, loads the predictor anew.

def predictor_key(path: str, tta: bool, allow_mismatch: bool) -> tuple:
    """The modification times of the checkpoint(s) and of the files read beside them (None for
    one that is absent), TTA and the mismatch option."""
    files = predictor_files(path, Config(thresholds=OPTIONS.thresholds))
    return (tuple(f.stat().st_mtime if f.is_file() else None for f in files), tta,
            allow_mismatch)


@st.cache_resource(max_entries=2, show_spinner="Loading the model ...")
def cached_predictor(path: str, key: tuple) -> Predictor:
    _, tta, allow_mismatch = key
    return load_predictor(path, Config(num_workers=0, device=OPTIONS.device, tta=tta,
                                       allow_threshold_mismatch=allow_mismatch,
                                       thresholds=OPTIONS.thresholds),
                          rebuild=model_from_checkpoint)


@st.cache_data(max_entries=8, show_spinner="Reading the radiographs ...")
def cached_predictions(path: str, key: tuple, names: tuple[str, ...],
                       contents: tuple[bytes, ...]) -> PredictedFiles:
    uploads = [Upload(name, data) for name, data in zip(names, contents)]
    return predict_sources(cached_predictor(path, key), uploads, BATCH_SIZE, num_workers=0,
                           progress=False)


@st.cache_data(max_entries=8, show_spinner="Fusing the views ...")
def cached_study(path: str, key: tuple, names: tuple[str, ...],
                 contents: tuple[bytes, ...]) -> tuple[PredictedFiles, list[str]]:
    """A study-mode model's prediction for the uploads as one study; and the views left out."""
    predictor = cached_predictor(path, key)
    uploads = [Upload(name, data) for name, data in zip(names, contents)]
    taken, rest = frontal_first(names, predictor.max_views, [film_view(u) for u in uploads])
    result = predict_studies(predictor, uploads, [taken], ["the uploads"], BATCH_SIZE,
                             num_workers=0, progress=False)
    return result, [names[i] for i in rest]


@st.cache_data(max_entries=32, show_spinner="Computing the Grad-CAM heatmap ...")
def cached_overlay(path: str, key: tuple, name: str, data: bytes, label: str):
    return overlay_of(cached_predictor(path, key), Upload(name, data), label)


# ---- page parts ------------------------------------------------------------------------------------

def unscrolled(table: pd.DataFrame) -> dict:
    """st.dataframe options that show every row of `table` and its header without scrolling
    (its default height scrolls after 10 rows: the 14 findings would hide 4)."""
    return {"row_height": ROW_PX, "height": (len(table) + 1) * ROW_PX + 3}  # + the borders


def checkpoint_choice() -> str:
    """Sidebar: a found run's best.pth, or a typed path (which wins when filled in)."""
    found = sorted(str(p) for p in Path(Config().models_dir).glob("*/best.pth"))
    with st.sidebar:
        st.header("Model")
        picked = st.selectbox("Trained runs", found) if found else None
        if not found:
            st.caption("No models/*/best.pth yet: train.py writes them.")
        typed = st.text_input("or a checkpoint path",
                              value=os.environ.get(CHECKPOINT_ENV, OPTIONS.checkpoint))
        st.checkbox("Test-time augmentation", value=OPTIONS.tta, key="tta",
                    help="Must match how evaluate.py fitted thresholds.json (its --tta).")
    return typed.strip() or picked or ""


def load(path: str) -> tuple[Predictor, tuple] | None:
    """The predictor of a checkpoint path, or None after showing why it cannot be used."""
    try:
        checkpoints = checkpoint_paths(path)
    except PipelineError as err:
        st.error(f"Cannot use checkpoint {path}: {err}")
        return None
    missing = [str(p) for p in checkpoints if not p.is_file()]
    if not checkpoints or missing:
        st.error(f"Checkpoint {', '.join(missing) or path} not found.")
        return None
    try:
        key = predictor_key(path, st.session_state.get("tta", OPTIONS.tta),
                            OPTIONS.allow_threshold_mismatch)
        return cached_predictor(path, key), key
    except PipelineError as err:
        st.error(f"Cannot use checkpoint {path}: {err}")
        return None


def describe_model(predictor: Predictor) -> None:
    with st.sidebar:
        st.caption(f"{len(predictor.labels)} findings, {predictor.image_size} px input "
                   f"({predictor.view_mode} films), on {predictor.device.type}"
                   f"{', test-time augmentation' if predictor.tta else ''}. Thresholds: "
                   f"{predictor.thresholds.source}; calibration: {predictor.thresholds.method}.")
        for warning in predictor.warnings:
            st.warning(warning)


def show_batch(table: pd.DataFrame, predictor: Predictor) -> None:
    """Every image's probabilities as bars, its positive findings, and the CSV to download."""
    st.subheader(f"{len(table)} radiographs")
    gate = ["in_distribution"] if predictor.gate is not None else []  # first: in view
    shown = table[["path", *gate, *(["view"] if "view" in table else []),
                   *predictor.labels]].copy()
    trained = predictor.trained
    flags = table[[f"{label} positive" for label in trained]].to_numpy()
    shown.insert(1 + len(gate), "positive findings",
                 ["; ".join(l for l, f in zip(trained, row) if f) for row in flags])
    columns = {label: st.column_config.ProgressColumn(label, min_value=0.0, max_value=1.0,
                                                      format="percent")
               for label in trained}  # an untrained label's column says NOT_TRAINED
    st.dataframe(shown, hide_index=True, column_config={"path": "image", **columns})
    st.download_button("Download the results (CSV)", table.to_csv(index=False),
                       file_name="predictions.csv", mime="text/csv")


def outside_banner(row: pd.Series, predictor: Predictor) -> None:
    """Above a film's findings: a banner when the input gate says it is unlike the films the
    model was trained on (a photograph, a CT slice, an inverted or rotated radiograph ...)."""
    if row.get("in_distribution") != "false":
        return
    gate = predictor.thresholds.gate
    st.error(f"**Outside the training distribution.** This image is unlike the radiographs the "
             f"model was trained on (ood_score {float(row['ood_score']):.3g}, above the input "
             f"gate's threshold {gate.threshold:.3g}, the {gate.quantile:.0%} quantile of the "
             f"validation films). Its findings below are not reliable.", icon=":material/block:")


def show_image(predictor: Predictor, row: pd.Series, upload: Upload, path: str,
               key: tuple) -> None:
    """One radiograph: its findings as a sorted table, and the heatmap of the finding chosen."""
    findings = findings_of(row, predictor)
    left, right = st.columns([3, 2])
    with left:
        st.subheader(upload.name)
        outside_banner(row, predictor)
        st.dataframe(findings, hide_index=True, **unscrolled(findings), column_config={
            "probability": PROBABILITY,
            "threshold": st.column_config.NumberColumn("threshold", format="%.3f"),
        })
    with right:
        trained = findings.loc[findings["decision"] != NOT_TRAINED, "finding"]
        label = st.selectbox("Grad-CAM heatmap for", trained.tolist())
        picture = cached_overlay(path, key, upload.name, upload.data, label)
        probability = float(row[label])
        st.image(picture, caption=f"{label}: probability {probability:.1%}. Red marks where the "
                                  "evidence for it lies.", width="stretch")


def show_study(path: str, key: tuple, uploads: list[Upload], predictor: Predictor) -> None:
    """Study-mode models: the uploads taken as the views of one study, fused as in training."""
    result, left_out = cached_study(path, key, tuple(u.name for u in uploads),
                                    tuple(u.data for u in uploads))
    if result.table.empty:
        return
    row = result.table.iloc[0]
    st.subheader("The uploads as one study")
    st.caption(f"This model fuses a study's views ({predictor.max_views} at most, frontal first): "
               f"{row['views']}." + (f" Left out: {', '.join(left_out)}." if left_out else "")
               + " The findings of each radiograph on its own are below.")
    outside_banner(row, predictor)
    findings = findings_of(row, predictor)
    st.dataframe(findings, hide_index=True, **unscrolled(findings), column_config={
        "probability": PROBABILITY,
        "threshold": st.column_config.NumberColumn("threshold", format="%.3f"),
    })


def main() -> None:
    st.set_page_config(page_title="Chest X-ray findings", layout="wide")
    st.title("Chest X-ray findings")
    st.caption("DenseNet121 trained on CheXpert's 14 observations. A research demo, "
               "not a medical device.")
    path = checkpoint_choice()
    loaded = load(path) if path else None
    if loaded is None:
        if not path:
            st.info("Choose a checkpoint in the sidebar.")
        return
    predictor, key = loaded
    describe_model(predictor)
    files = st.file_uploader("Chest X-rays (JPEG, PNG or DICOM)", type=UPLOAD_TYPES,
                             accept_multiple_files=True)
    if not files:
        st.info("Upload one or more radiographs.")
        return
    uploads = [Upload(f.name, f.getvalue()) for f in files]
    try:
        result = cached_predictions(path, key, tuple(u.name for u in uploads),
                                    tuple(u.data for u in uploads))
    except PipelineError as err:
        st.error(str(err))
        return
    for reason in result.errors["reason"]:
        st.error(f"Skipped: {reason}")
    if result.table.empty:
        return
    warning = lateral_warning(result.table, predictor)
    if warning:
        st.warning(warning)
    outside = outside_count(result.table)
    if outside and len(result.table) > 1:
        st.error(f"{outside} of {len(result.table)} uploads lie outside the model's training "
                 "distribution (in_distribution false in the table): their findings are not "
                 "reliable.")
    if predictor.view_mode == "study" and len(result.table) > 1:
        show_study(path, key, uploads, predictor)
    if len(result.table) > 1:
        show_batch(result.table, predictor)
    row_number = 0
    if len(result.table) > 1:
        row_number = st.selectbox("Radiograph", range(len(result.table)),
                                  format_func=lambda i: result.table["path"].iloc[i])
    show_image(predictor, result.table.iloc[row_number], uploads[result.positions[row_number]],
               path, key)


# Streamlit runs this file as __main__. A process spawned while it is the main module (a
# multiprocessing pool started after AppTest ran it) imports it as __mp_main__, and must not run
# the page.
if __name__ == "__main__":
    try:
        OPTIONS = app_options()
    except ConfigError as error:  # a bad option after `streamlit run app.py --`
        st.error(f"app.py: {error}")
        st.stop()
    else:
        main()
