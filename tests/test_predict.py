"""predict.py: inputs of every kind, unreadable files listed, thresholds, DICOM, Grad-CAM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import conftest
from config import Config
from conftest import ROOT, shared, tiny_checkpoint, write_thresholds_json
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.inference.predictor import RadiographFiles, Upload, batch_logits, load_predictor, \
    predict_sources, read_thresholds
from cxr.training.checkpoint import load_checkpoint, model_id
from dataset import CheXpertDataset
from model_architecture import model_from_checkpoint

GOOD = ("gray16_xray.png", "rgba_xray.png", "cmyk_xray.jpg", "xray_monochrome1.dcm",
        "xray_monochrome2.dcm")
BAD = {"truncated.jpg": "truncated", "empty.jpg": "cannot identify",
       "not_an_image.jpg": "cannot identify", "decompression_bomb.png": "decompression bomb",
       "one_pixel.png": "1 x 1 px", "extreme_aspect.png": "3000 x 12 px"}
CPU = Config(device="cpu", num_workers=0)
# what predict.py copies from the DICOM header, after `view` (tests/test_dicom.py checks them)
HEADER_COLUMNS = ("ViewPosition", "PatientSex", "PatientAge", "StudyDate")


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "run" / "best.pth")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(checkpoint, CPU, rebuild=model_from_checkpoint)


def test_folder_of_good_and_bad_files(checkpoint, tmp_path):
    """Every readable image is predicted, every unreadable one listed with its reason."""
    images = tmp_path / "scans"
    (images / "nested").mkdir(parents=True)
    for name in GOOD:
        shutil.copy(shared(f"bad-inputs/images/{name}"), images / "nested" / name)
    for name in BAD:
        shutil.copy(shared(f"bad-inputs/images/{name}"), images / name)
    (images / "notes.txt").write_text("not an image, by its suffix: left out")
    output = tmp_path / "out" / "predictions.csv"
    result = run_predict(str(images), "--checkpoint", str(checkpoint), "--output", str(output),
                         "--device", "cpu", "--batch_size", "4")  # the inputs come first
    assert result.returncode == 0, result.stderr
    assert "thresholds.json not found" in result.stdout  # the 0.5 default is announced
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"predict: wrote 5 predictions of {checkpoint} to {output}")
    assert "6 unreadable file(s)" in last and "Traceback" not in result.stderr

    table = pd.read_csv(output)
    assert list(table.columns) == ["path", "view", *HEADER_COLUMNS, "header_warning",
                                   "ood_score", "in_distribution", *LABELS,
                                   *[f"{label} positive" for label in LABELS]]
    assert sorted(table["path"].map(lambda p: p.rsplit("/", 1)[-1])) == sorted(GOOD)
    probabilities = table[list(LABELS)].to_numpy()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    flags = table[[f"{label} positive" for label in LABELS]].to_numpy()
    assert (flags == (probabilities >= 0.5)).all()

    errors = pd.read_csv(output.with_name("predictions_errors.csv"))
    assert list(errors.columns) == ["path", "reason"]
    reasons = {path.rsplit("/", 1)[-1]: reason for path, reason in errors.itertuples(index=False)}
    assert set(reasons) == set(BAD)
    for name, words in BAD.items():
        assert words in reasons[name] and name in reasons[name]


def test_monochrome1_and_monochrome2_give_the_same_prediction(predictor):
    paths = [str(shared(f"bad-inputs/images/xray_monochrome{k}.dcm")) for k in (1, 2)]
    table = predict_sources(predictor, paths, progress=False).table
    one, two = table[list(LABELS)].to_numpy()
    assert np.array_equal(one, two)
    # and the same as the 16-bit PNG copy of that X-ray: DICOM windowing kept the anatomy
    png = predict_sources(predictor, [str(shared("bad-inputs/images/gray16_xray.png"))],
                          progress=False).table[list(LABELS)].to_numpy()[0]
    assert np.abs(png - two).max() < 0.02


def test_inference_tensors_equal_evaluation_tensors(predictor, tmp_path):
    """predict.py's views are exactly those evaluate.py gives the model, file or upload."""
    paths = [str(shared(f"nih-cxr-small/CheXpert-v1.0-small/valid/{p}"))
             for p in ("patient00001/study1/view1_frontal.jpg",)] + \
            [str(shared(f"bad-inputs/images/{name}")) for name in GOOD]
    frame = pd.DataFrame({"image_path": paths, **{label: 0 for label in LABELS}})
    evaluation = CheXpertDataset(frame, predictor.image_size, predictor.side, augment=False)
    expected, _ = evaluation.__getitems__(list(range(len(paths))))
    files = RadiographFiles(paths, predictor.image_size, predictor.side)
    uploads = RadiographFiles([Upload(p.rsplit("/", 1)[-1], open(p, "rb").read()) for p in paths],
                              predictor.image_size, predictor.side)
    for data in (files, uploads):
        batch = data.__getitems__(list(range(len(paths))))
        assert batch.errors == [] and torch.equal(batch.images, expected)
    probabilities = predict_sources(predictor, paths, progress=False).table[list(LABELS)]
    assert np.allclose(probabilities.to_numpy(),
                       torch.sigmoid(batch_logits(predictor, expected)).numpy())


def test_stored_thresholds_and_calibration_are_used(checkpoint, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(checkpoint.parent, folder)
    values = {label: 0.3 for label in LABELS} | {"Edema": None, "Fracture": 0.0}
    scales = np.linspace(0.5, 2.0, len(LABELS))
    maps = {label: {"scale": float(a), "bias": -1.0} for label, a in zip(LABELS, scales)}
    write_thresholds_json(folder / "best.pth", thresholds=values, calibration=maps)
    predictor = load_predictor(folder / "best.pth", CPU, rebuild=model_from_checkpoint)
    assert predictor.thresholds.calibration["Edema"] == maps["Edema"]
    assert predictor.thresholds.values["Edema"] == 0.5  # null: the default, with a warning
    assert any("no threshold for Edema" in w for w in predictor.warnings)
    path = str(shared("bad-inputs/images/gray16_xray.png"))
    table = predict_sources(predictor, [path], progress=False).table
    logits = batch_logits(predictor, RadiographFiles([path], 64, predictor.side)[0].images)
    expected = torch.sigmoid(logits.double() * torch.from_numpy(scales) - 1.0).numpy()
    assert np.allclose(table[list(LABELS)].to_numpy(), expected)
    assert table["Fracture positive"][0] == 1  # threshold 0: always positive
    assert table["Edema positive"][0] == int(table["Edema"][0] >= 0.5)


def test_thresholds_malformed_are_an_error(checkpoint, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(checkpoint.parent, folder)
    weights = model_id(load_checkpoint(folder / "best.pth"))
    write_thresholds_json(folder / "best.pth", thresholds={"Cardiomegaly": 1.7})
    with pytest.raises(PipelineError, match=r"thresholds\['Cardiomegaly'\] = 1.7"):
        read_thresholds(folder / "best.pth", LABELS, weights)
    write_thresholds_json(folder / "best.pth", calibration={"Edema": {"scale": -1, "bias": 0}})
    with pytest.raises(PipelineError, match="calibration of 'Edema'"):
        read_thresholds(folder / "best.pth", LABELS, weights)
    (folder / "thresholds.json").write_text("{not json")
    with pytest.raises(PipelineError, match="thresholds.json is not valid JSON"):
        read_thresholds(folder / "best.pth", LABELS, weights)


def run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """predict.py's command line in this process: (exit code, stdout, stderr)."""
    return conftest.run_in_process(capsys, "predict.py", *args)


def test_csv_of_paths_and_clear_errors(checkpoint, tmp_path, capsys):
    root = tmp_path / "CheXpert-v1.0-small"
    (root / "valid" / "patient1" / "study1").mkdir(parents=True)
    image = root / "valid" / "patient1" / "study1" / "view1_frontal.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 64), np.uint8)).save(image)
    pd.DataFrame({"Path": ["CheXpert-v1.0-small/valid/patient1/study1/view1_frontal.png",
                           "CheXpert-v1.0-small/valid/patient9/study1/view1_frontal.png"]}
                 ).to_csv(root / "valid.csv", index=False)
    output = tmp_path / "p.csv"
    common = ("--checkpoint", str(checkpoint), "--output", str(output), "--device", "cpu")
    code, out, err = run_in_process(capsys, *common, "--inputs", str(root / "valid.csv"))
    assert code == 0, err
    assert pd.read_csv(output)["path"].tolist() == [str(image)]
    errors = pd.read_csv(tmp_path / "p_errors.csv")
    assert errors["reason"][0].startswith("image not found") and "patient9" in errors["path"][0]

    (tmp_path / "other.csv").write_text("file,label\na.jpg,1\n")
    for inputs, gradcam, message in [
            (str(tmp_path / "other.csv"), "", "has no image_path or Path column (its columns: "
                                              "file, label)"),
            (str(image), "Heart", "unknown finding 'Heart'; the checkpoint predicts: No Finding"),
            (str(tmp_path / "missing.jpg"), "", "no such file or folder"),
            (str(tmp_path / "empty_folder"), "", "hold no image files")]:
        (tmp_path / "empty_folder").mkdir(exist_ok=True)
        code, out, err = run_in_process(capsys, *common, "--inputs", inputs, "--gradcam", gradcam)
        assert code == 2 and err.startswith("error: ") and message in err, err


def dicom_with(tmp_path, name: str, **tags) -> str:
    import pydicom

    dataset = pydicom.dcmread(shared("bad-inputs/images/xray_monochrome2.dcm"))
    for tag, value in tags.items():
        setattr(dataset, tag, value)
    dataset.save_as(tmp_path / name)
    return str(tmp_path / name)


def test_a_frontal_model_flags_lateral_films(checkpoint, tmp_path, capsys):
    from cxr.inference.predictor import Upload, film_view

    jpeg = shared("bad-inputs/images/cmyk_xray.jpg")
    study = tmp_path / "scans" / "patient00001" / "study1"
    study.mkdir(parents=True)
    for name in ("view1_frontal.jpg", "view2_lateral.jpg"):
        shutil.copy(jpeg, study / name)
    dicoms = tmp_path / "scans" / "dicom"
    dicoms.mkdir()
    lateral = dicom_with(dicoms, "a.dcm", ViewPosition="LL")
    dicom_with(dicoms, "b.dcm", PatientOrientation=["A", "F"])  # its rows run front to back
    frontal = dicom_with(dicoms, "c.dcm", ViewPosition="PA")
    unknown = dicom_with(dicoms, "d.dcm")
    listed = tmp_path / "listed.csv"
    pd.DataFrame({"image_path": [str(jpeg), str(jpeg)], "view": ["Lateral", ""]}).to_csv(listed,
                                                                                        index=False)
    output = tmp_path / "predictions.csv"
    code, out, err = run_in_process(capsys, str(tmp_path / "scans"), str(listed), "--checkpoint",
                                    str(checkpoint), "--device", "cpu", "--output", str(output))
    assert code == 0, err
    table = pd.read_csv(output, keep_default_na=False)
    views = dict(zip(table["path"].map(lambda p: p.rsplit("/", 1)[-1]), table["view"]))
    assert views == {"a.dcm": "lateral", "b.dcm": "lateral", "c.dcm": "frontal",
                     "d.dcm": "unknown", "view1_frontal.jpg": "frontal",
                     "view2_lateral.jpg": "lateral", "cmyk_xray.jpg": "unknown"}
    assert table["view"].tolist()[-2:] == ["lateral", "unknown"]  # the CSV's own column
    warning = [line for line in out.splitlines() if "look lateral" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: 4 film(s) look lateral")
    assert "trained on frontal films only" in warning[0]
    assert film_view(Upload("x.dcm", open(lateral, "rb").read())) == "lateral"
    assert film_view(frontal) == "frontal" and film_view(unknown) == "unknown"
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"image_path": [str(jpeg)], "view": ["oblique"]}).to_csv(bad, index=False)
    code, _, err = run_in_process(capsys, "--checkpoint", str(checkpoint), "--inputs", str(bad))
    assert code == 2 and "line 2, column 'view': 'oblique' is not frontal or lateral" in err


# CheXpert's layout: a study is a folder; scan.png's view is unknown (kept by a frontal-only model)
STUDY_FILES = {"patient00001/study1": ("view1_frontal.png", "view2_frontal.png",
                                       "view3_lateral.png"),
               "patient00001/study2": ("scan.png", "view1_frontal.png"),
               "patient00002/study1": ("view1_lateral.png", "view2_lateral.png")}  # no frontal


def expected_studies(images: pd.DataFrame, how: str, frontal_only: bool) -> pd.DataFrame:
    """The studies file computed directly from the per-image predictions file."""
    rows = []
    for study, members in images.groupby(images["path"].map(os.path.dirname), sort=False):
        used = members[members["view"] != "lateral"] if frontal_only else members
        used = used if len(used) else members
        rows.append({"study": study, "views": "; ".join(used["path"]), "n_views": len(used),
                     **used[list(LABELS)].agg(how).to_dict()})
    return pd.DataFrame(rows)


def test_studies_file_aggregates_an_image_model_by_folder(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(1)
    scans = tmp_path / "test"
    for folder, names in STUDY_FILES.items():
        (scans / folder).mkdir(parents=True)
        for name in names:
            image = rng.integers(0, 255, (80, 64)) * rng.uniform(0.2, 1.0)  # unlike each other
            Image.fromarray(image.astype(np.uint8)).save(scans / folder / name)
    with_laterals = tiny_checkpoint(tmp_path / "laterals" / "best.pth", frontal_only=False)
    found = {}
    for model, frontal_only, how in [(checkpoint, True, "max"), (checkpoint, True, "mean"),
                                     (with_laterals, False, "max")]:
        output = tmp_path / f"{how}-{frontal_only}" / "predictions.csv"
        code, out, err = run_in_process(capsys, str(scans), "--checkpoint", str(model),
                                        "--output", str(output), "--device", "cpu",
                                        "--study_aggregation", how)
        assert code == 0, err
        images = pd.read_csv(output, keep_default_na=False)
        studies = pd.read_csv(output.with_name("predictions_studies.csv"), keep_default_na=False)
        assert list(studies.columns) == ["study", "views", "n_views", *LABELS]  # no decisions
        assert studies["study"].tolist() == [str(scans / folder) for folder in STUDY_FILES]
        expected = expected_studies(images, how, frontal_only)
        assert studies[["study", "views", "n_views"]].equals(expected[["study", "views",
                                                                       "n_views"]])
        assert np.allclose(studies[list(LABELS)].to_numpy(), expected[list(LABELS)].to_numpy(),
                           rtol=0, atol=1e-12)
        films = "frontal films" if frontal_only else "films"
        written = f"3 studies ({how} over their {films}) to {output.stem}_studies.csv"
        assert written in out.strip().splitlines()[-1].replace(f"{output.parent}/", "")
        no_frontal = [line for line in out.splitlines() if "have no frontal film" in line]
        assert len(no_frontal) == frontal_only  # the laterals-only study, when laterals are out
        found[how, frontal_only] = studies
    # a frontal-only model leaves the laterals out (scan.png, of unknown view, stays in) ...
    assert found["max", True]["n_views"].tolist() == [2, 2, 2]
    assert "view3_lateral" not in found["max", True]["views"][0]
    # ... a model trained with laterals takes every film; and max is not mean
    assert found["max", False]["n_views"].tolist() == [3, 2, 2]
    assert (found["max", True][list(LABELS)] > found["mean", True][list(LABELS)]).all().all()

    output = tmp_path / "image" / "predictions.csv"
    code, out, err = run_in_process(capsys, str(scans), "--checkpoint", str(checkpoint),
                                    "--output", str(output), "--device", "cpu",
                                    "--study_grouping", "image")
    assert code == 0, err
    assert output.exists() and not output.with_name("predictions_studies.csv").exists()
    assert "_studies.csv" not in out


# ---- labels the checkpoint's training split never labelled ----------------------------------------

UNTRAINED = ("Fracture", "Support Devices")  # NIH annotates neither


def test_untrained_labels_are_marked_not_trained(tmp_path, capsys):
    """A checkpoint whose trained_labels leave out Fracture and Support Devices (an NIH model):
    no probability or decision for them, in the images' and the studies' files; no heatmap."""
    checkpoint = tiny_checkpoint(tmp_path / "nih" / "best.pth", trained_labels=[
        label for label in LABELS if label not in UNTRAINED])
    scans = tmp_path / "scans" / "patient00001" / "study1"
    scans.mkdir(parents=True)
    for name in ("view1_frontal.png", "view2_frontal.png"):
        Image.fromarray(np.full((80, 64), 90 if "1" in name else 160, np.uint8)).save(scans / name)
    output = tmp_path / "out" / "predictions.csv"
    code, out, err = run_in_process(capsys, str(tmp_path / "scans"), "--checkpoint",
                                    str(checkpoint), "--output", str(output), "--device", "cpu")
    assert code == 0, err
    assert "not trained: Fracture, Support Devices (the training split had no labelled value" in out
    table = pd.read_csv(output, dtype=str, keep_default_na=False)
    for label in UNTRAINED:
        assert (table[label] == "not trained").all()
        assert (table[f"{label} positive"] == "not trained").all()
    trained = [label for label in LABELS if label not in UNTRAINED]
    assert table[trained].astype(float).apply(lambda c: c.between(0, 1)).all().all()
    assert set(table["Edema positive"]) <= {"0", "1"}
    studies = pd.read_csv(output.with_name("predictions_studies.csv"), dtype=str)
    assert (studies["Fracture"] == "not trained").all()
    assert studies[trained].astype(float).notna().all().all()
    code, _, err = run_in_process(capsys, str(tmp_path / "scans"), "--checkpoint",
                                  str(checkpoint), "--gradcam", "fracture", "--output",
                                  str(tmp_path / "cam" / "predictions.csv"), "--device", "cpu")
    assert code != 0 and "Fracture: not trained" in err
    # a checkpoint without the record (older ones): every label is predicted, as before
    old = load_predictor(tiny_checkpoint(tmp_path / "old" / "best.pth"), CPU,
                         rebuild=model_from_checkpoint)
    assert old.untrained == () and old.trained == LABELS


# ---- Grad-CAM on a demo model that learned where the findings are ----------------------------------

# Demo phantoms at 160 x 192 px, a 96 px model (3 x 3 Grad-CAM cells) trained from random weights
# as tests/test_pipeline.py does, briefly: about a minute and a half on 2 CPU cores.
CAM_LABEL = "Support Devices"  # tubes, lines and pacemakers: the trace the demo model learns first
CAM_MARGIN = 0.05  # of the image's width / height, around the annotated box
def test_gradcam_peak_falls_on_the_planted_finding(demo_model, tmp_path):
    from cxr.inference.gradcam import peak

    checkpoint, demo = demo_model
    boxes = pd.read_csv(demo / "annotations.csv")
    boxes = boxes[(boxes["label"] == CAM_LABEL) & boxes["Path"].str.contains("/valid/")
                  & boxes["Path"].str.endswith("frontal.jpg")].reset_index(drop=True)
    paths = [str(demo / path) for path in boxes["Path"]]
    predictor = load_predictor(checkpoint, CPU, rebuild=model_from_checkpoint)
    maps = {}
    predict_sources(predictor, paths, progress=False, heatmap_labels=[CAM_LABEL],
                    on_heatmap=lambda position, label, cam: maps.__setitem__(position, cam))
    width, height = 160, 192
    peaks = [peak(maps[position], predictor.side, height, width) for position in range(len(paths))]

    def inside(position: int, box) -> bool:
        (x, y), dx, dy = peaks[position], CAM_MARGIN * width, CAM_MARGIN * height
        return box.x0 - dx <= x <= box.x1 + dx and box.y0 - dy <= y <= box.y1 + dy

    own = np.mean([inside(i, box) for i, box in boxes.iterrows()])
    # control: devices differ between images (a tube, a line, a pacemaker), so a map that only
    # marked a typical place would hit other images' boxes as often as its own
    others = np.mean([inside(i, box) for i in range(len(boxes))
                      for j, box in boxes.iterrows() if j != i])
    # measured: own 0.86, others 0.53 of 29 images
    assert len(boxes) >= 15 and own >= 0.6 and own - others >= 0.15, (own, others, len(boxes))

    # the same through predict.py: one overlay PNG per image, on the whole radiograph
    output = tmp_path / "predictions.csv"
    result = run_predict(*paths[:3], "--checkpoint", str(checkpoint), "--output", str(output),
                         "--gradcam", "support devices", "Cardiomegaly", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "Grad-CAM overlays of Support Devices, Cardiomegaly in" in result.stdout
    overlays = sorted((tmp_path / "predictions_gradcam").glob("*.png"))
    assert len(overlays) == 6
    assert all("view1_frontal_" in o.name for o in overlays)  # study folders kept in the name
    assert {o.name.rsplit("_", 1)[1] for o in overlays} == {"Support-Devices.png",
                                                          "Cardiomegaly.png"}
    picture = np.asarray(Image.open(overlays[0]))
    assert picture.shape == (192, 160, 3) and picture.std() > 10
