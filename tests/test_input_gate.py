"""The input gate (cxr/evaluation/ood.py): its statistics, its files, and what evaluate.py,
predict.py, export.py and app.py do with it; --thresholds FILE; predict.py --dicom_out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest
import torch
from sklearn.metrics import roc_auc_score

from config import Config
from conftest import ROOT, add_input_gate, photograph, run_script, shared, tiny_checkpoint, \
    write_thresholds_json
from cxr.data.augment import TTAModel
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.evaluation.ensemble import EnsembleModel
from cxr.evaluation.ood import GATE_FILE, METHODS, FeatureTap, fit_gate, held_out_scores, \
    read_gate, write_gate
from cxr.evaluation.thresholds import read_thresholds
from cxr.training.checkpoint import load_checkpoint, model_id
from model_architecture import model_from_checkpoint

XRAYS = ("gray16_xray.png", "rgba_xray.png", "cmyk_xray.jpg", "xray_monochrome2.dcm")


def unit_rows(rng, n: int, dim: int = 24) -> np.ndarray:
    """n rows of an anisotropic Gaussian, length 1: its first axis varies least."""
    x = rng.normal(size=(n, dim)) * np.linspace(0.3, 2.0, dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def foreign_rows(rng, n: int, dim: int = 24) -> np.ndarray:
    """n rows near the first axis, where unit_rows' films are rare, length 1."""
    x = rng.normal(size=(n, dim)) * 0.3
    x[:, 0] += 3.0
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


# ---- the statistics ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_about_one_percent_of_new_in_distribution_films_are_flagged(method):
    """The threshold is the 99 % quantile of held-out val scores: fresh films of the same
    distribution are flagged about 1 % of the time, films of another one nearly always."""
    rng = np.random.default_rng(0)
    val = unit_rows(rng, 1600)
    gate = fit_gate(val, np.repeat(np.arange(800), 2), 0.99, method)
    new = unit_rows(rng, 40_000)
    rate = float(np.mean(~gate.inside(gate.scores(new))))
    assert 0.005 < rate < 0.02, rate
    foreign = foreign_rows(rng, 500)
    assert np.mean(~gate.inside(gate.scores(foreign))) > 0.95


def test_a_film_is_never_its_own_neighbour_nor_its_patients():
    """kNN's held-out scores leave the patient out: two films of one patient at the same point
    do not make each other look in-distribution."""
    rng = np.random.default_rng(1)
    films = unit_rows(rng, 30)
    twins = np.repeat(films, 2, axis=0)  # each patient's two films are identical
    scores = held_out_scores(twins, np.repeat(np.arange(30), 2), [twins.shape[1]], "knn")
    assert scores.min() > 0.05


def test_too_small_a_val_split_gets_no_gate():
    rng = np.random.default_rng(2)
    assert fit_gate(unit_rows(rng, 12), np.arange(12), 0.99) is None
    assert fit_gate(unit_rows(rng, 50), np.zeros(50), 0.99) is None  # one patient


def test_the_gate_file_is_bound_to_its_thresholds_file(tmp_path):
    rng = np.random.default_rng(3)
    gate = fit_gate(unit_rows(rng, 200), np.arange(200), 0.99, "mahalanobis")
    block = write_gate(gate, tmp_path)
    thresholds = tmp_path / "thresholds.json"
    again = read_gate(block, thresholds)
    probe = unit_rows(rng, 5)
    assert np.allclose(again.scores(probe), gate.scores(probe))
    assert again.threshold == gate.threshold and again.method == "mahalanobis"
    with np.load(tmp_path / GATE_FILE) as stored:
        arrays = {name: stored[name] * 1.01 for name in stored.files}
    np.savez(tmp_path / GATE_FILE, **arrays)
    with pytest.raises(PipelineError, match="SHA-256 differs"):
        read_gate(block, thresholds)
    (tmp_path / GATE_FILE).unlink()
    with pytest.raises(PipelineError, match="keep ood.npz beside"):
        read_gate(block, thresholds)


def gate_features(model, images: torch.Tensor) -> torch.Tensor:
    """What the tap should give for an image batch: the pooled features and the channel means
    of denseblock1 (DenseNet's early stage: backbone children conv0 ... denseblock1), each of
    length 1, side by side."""
    late = torch.nn.functional.normalize(model.image_features(images), dim=1)
    early = model.backbone[:5](model.normalize(images)).mean(dim=(2, 3))
    return torch.cat([late, torch.nn.functional.normalize(early, dim=1)], dim=1)


def test_the_tap_reads_the_model_under_tta_and_in_an_ensemble(tmp_path):
    models = [model_from_checkpoint(load_checkpoint(tiny_checkpoint(
        tmp_path / f"m{seed}" / "best.pth", seed=seed)))[0] for seed in (0, 1)]
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = gate_features(models[0], images)
        for scorer in (models[0], TTAModel(models[0])):
            with FeatureTap(scorer) as tap:
                scorer(images)
                assert torch.allclose(tap.take(len(images)), expected, atol=1e-5)
                assert tap.sizes == (1024, 256)
        with FeatureTap(EnsembleModel(models, [None, None], LABELS)) as tap:
            EnsembleModel(models, [None, None], LABELS)(images)
            both = tap.take(len(images))
    assert both.shape == (3, 2 * expected.shape[1]) and tap.sizes == (1024, 256) * 2
    assert torch.allclose(both[:, :expected.shape[1]], expected, atol=1e-5)


def test_a_study_models_early_means_average_its_present_views(tmp_path):
    model = model_from_checkpoint(load_checkpoint(tiny_checkpoint(
        tmp_path / "study" / "best.pth", view_mode="study", max_views=2)))[0]
    views = torch.randint(0, 256, (2, 2, 1, 64, 64), dtype=torch.uint8)
    present = torch.tensor([[True, True], [True, False]])
    with torch.no_grad(), FeatureTap(model) as tap:
        model((views, present))
        features = tap.take(2)
        early = model.backbone[:5](model.normalize(views.flatten(0, 1)[present.flatten()]))
    early = early.mean(dim=(2, 3))
    studies = torch.stack([early[:2].mean(0), early[2]])
    assert torch.allclose(features[:, -early.shape[1]:],
                          torch.nn.functional.normalize(studies, dim=1), atol=1e-5)


# ---- predict.py, export.py, --thresholds, --dicom_out with a gate ------------------------------

@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A tiny checkpoint whose thresholds.json has a gate: the shared X-rays inside, a
    photograph outside. (checkpoint, the X-rays, the photograph, the gate's threshold)"""
    folder = tmp_path_factory.mktemp("gated")
    checkpoint = tiny_checkpoint(folder / "run" / "best.pth")
    write_thresholds_json(checkpoint)
    xrays = [shared(f"bad-inputs/images/{name}") for name in XRAYS]
    camera = photograph(folder / "camera.png")
    threshold = add_input_gate(checkpoint, xrays, [camera])
    return checkpoint, xrays, camera, threshold


def test_predict_reports_the_gate_and_can_leave_films_out(gated, tmp_path):
    checkpoint, xrays, camera, threshold = gated
    output = tmp_path / "predictions.csv"
    result = run_predict(*map(str, xrays), str(camera), "--checkpoint", str(checkpoint),
                         "--output", str(output))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(output, keep_default_na=False)
    columns = table.columns.tolist()
    assert columns.index("in_distribution") == columns.index("ood_score") + 1 \
        < columns.index(LABELS[0])
    assert table.set_index("path")["in_distribution"].to_dict() == {
        **{str(x): True for x in xrays}, str(camera): False}
    assert (table["ood_score"].astype(float) > threshold).tolist() == [False] * 4 + [True]
    assert f"warning: 1 of 5 film(s) lie outside the model's training distribution ({camera})" \
        in result.stdout
    # --ood_action skip: the photograph moves to the errors file, with its reason
    result = run_predict(*map(str, xrays), str(camera), "--checkpoint", str(checkpoint),
                         "--output", str(output), "--ood_action", "skip")
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(output)["path"].tolist() == list(map(str, xrays))
    errors = pd.read_csv(tmp_path / "predictions_errors.csv")
    assert errors["path"].tolist() == [str(camera)]
    assert "outside the model's training distribution" in errors["reason"][0]


def test_without_a_gate_the_columns_are_blank_and_skip_is_refused(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth")
    write_thresholds_json(checkpoint)
    image = str(shared("bad-inputs/images/gray16_xray.png"))
    output = tmp_path / "p.csv"
    result = run_predict(image, "--checkpoint", str(checkpoint), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "has no input gate" in result.stdout
    table = pd.read_csv(output, keep_default_na=False)
    assert table["ood_score"].tolist() == [""] and table["in_distribution"].tolist() == [""]
    result = run_predict(image, "--checkpoint", str(checkpoint), "--ood_action", "skip")
    assert result.returncode != 0 and "--ood_action skip needs the input gate" in result.stderr


def test_a_site_thresholds_file_replaces_the_checkpoints(gated, tmp_path):
    checkpoint, xrays, _, _ = gated
    site = checkpoint.parent / "thresholds_site.json"
    payload = json.loads((checkpoint.parent / "thresholds.json").read_text())
    payload["thresholds"] = dict.fromkeys(LABELS, 0.0)  # every finding positive
    site.write_text(json.dumps(payload))
    output = tmp_path / "p.csv"
    result = run_predict(str(xrays[0]), "--checkpoint", str(checkpoint), "--output", str(output),
                         "--thresholds", str(site))
    assert result.returncode == 0, result.stderr
    assert f"thresholds: {site}" in result.stdout
    assert pd.read_csv(output)[[f"{label} positive" for label in LABELS]].to_numpy().all()
    with pytest.raises(PipelineError, match="--thresholds .*no such file"):
        read_thresholds(checkpoint, LABELS, model_id(load_checkpoint(checkpoint)),
                        file=tmp_path / "absent.json")
    other = dict(payload, model_id="0" * 16)  # fitted for other weights: refused
    site.write_text(json.dumps(other))
    result = run_predict(str(xrays[0]), "--checkpoint", str(checkpoint), "--thresholds", str(site))
    assert result.returncode != 0 and "fitted for other weights" in result.stderr


def test_export_gives_the_gate_the_same_scores(gated, tmp_path):
    import onnxruntime

    from cxr.inference.predictor import RadiographFiles, load_predictor, predict_sources

    checkpoint, xrays, camera, threshold = gated
    result = subprocess.run([sys.executable, "export.py", "--checkpoint", str(checkpoint),
                             "--output", str(tmp_path / "model.onnx")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    spec = json.loads((tmp_path / "model.json").read_text())
    assert spec["outputs"] == ["probabilities", "logits", "ood_score", "in_distribution"]
    assert spec["input_gate"]["threshold"] == pytest.approx(threshold)
    predictor = load_predictor(checkpoint, Config(device="cpu", num_workers=0, precision="fp32"),
                               rebuild=model_from_checkpoint)  # as exported: fp32
    sources = [*xrays, camera]
    expected = predict_sources(predictor, sources, progress=False).table
    images = RadiographFiles(sources, predictor.image_size, predictor.side).__getitems__(
        list(range(len(sources)))).images.numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    _, _, scores, inside = session.run(None, {"images": images})
    # distances near 0 (each X-ray is its own neighbour here) are the square root of a float32
    # difference of nearly equal numbers: equal to a few 1e-4
    assert np.allclose(scores, expected["ood_score"].astype(float), atol=2e-3)
    assert inside.tolist() == (expected["in_distribution"] == "true").tolist() \
        == [True] * 4 + [False]
    traced = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        traced_scores = traced(torch.from_numpy(images))[2].numpy()
    assert np.allclose(traced_scores, scores, atol=2e-3)


def test_dicom_out_writes_a_structured_report_equal_to_the_csv(gated, tmp_path):
    """One SR per DICOM input (the JPEG gets none, said in one line); read back, its
    probabilities, thresholds and decisions are predictions.csv's."""
    checkpoint, xrays, _, _ = gated
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    inputs = [str(shared("bad-inputs/images/xray_monochrome2.dcm")), ct,
              str(shared("bad-inputs/images/cmyk_xray.jpg"))]
    output, folder = tmp_path / "p.csv", tmp_path / "dicom"
    result = run_predict(*inputs, "--checkpoint", str(checkpoint), "--output", str(output),
                         "--dicom_out", str(folder), "--gradcam", "Cardiomegaly")
    assert result.returncode == 0, result.stderr
    assert "--dicom_out: DICOM results of 2 films" in result.stdout
    assert "1 film not DICOM" in result.stdout
    table = pd.read_csv(output, keep_default_na=False).set_index("path")
    thresholds = json.loads((checkpoint.parent / "thresholds.json").read_text())["thresholds"]
    for source in inputs[:2]:
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        report = pydicom.dcmread(folder / f"{uid}_sr.dcm")
        assert report.Modality == "SR"
        assert report.StudyInstanceUID == pydicom.dcmread(source).get(
            "StudyInstanceUID", report.StudyInstanceUID)  # the film's study (made up when absent)
        assert (folder / f"{uid}_Cardiomegaly_sc.dcm").is_file()
        values = sr_findings(folder / f"{uid}_sr.dcm")
        row = table.loc[source]
        assert set(values) == set(LABELS)
        for label, (probability, threshold, present) in values.items():
            assert probability == pytest.approx(float(row[label]), abs=1e-6)
            assert threshold == pytest.approx(thresholds[label], abs=1e-6)
            assert present == bool(int(row[f"{label} positive"]))


def sr_findings(path) -> dict[str, tuple[float, float, bool]]:
    """label -> (probability, threshold, present) of each measurement group of a TID 1500 SR,
    read with highdicom."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    found = {}
    for group in hd.sr.srread(path).content.get_image_measurement_groups():
        [probability] = group.get_measurements(name=codes.DCM.Probability)
        [threshold] = group.get_measurements(name=codes.DCM.ThresholdValue)
        [decision] = group.get_qualitative_evaluations(name=group.finding_type)
        found[group.tracking_identifier] = (probability.value, threshold.value,
                                            decision.value == codes.SCT.Present)
    return found


# ---- evaluate.py fits the gate; on real foreign inputs ------------------------------------------

def test_evaluate_fits_the_gate_and_it_sees_foreign_inputs(demo_model, tmp_path):
    """evaluate.py fits the gate on val (ood.npz and thresholds.json's input_gate), reports the
    share of test films it flags; predict.py scores photographs (scikit-image), CT and MR slices
    (pydicom's test files) and inverted radiographs higher than the demo's own test films."""
    trained, demo = demo_model
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained, run / "best.pth")
    output = run_script("evaluate.py", "--checkpoint", str(run / "best.pth"), "--data_dir",
                        str(trained.parents[2] / "data"))
    stored = json.loads((run / "thresholds.json").read_text())["input_gate"]
    assert stored["method"] == "mahalanobis" and stored["quantile"] == 0.99
    assert (run / GATE_FILE).is_file()
    report = json.loads((run / "eval_test.json").read_text())["input_gate"]
    assert report["n"] == json.loads((run / "eval_test.json").read_text())["n_images"]
    assert 0 <= report["ci"]["low"] <= report["rate"] <= report["ci"]["high"]
    assert report["rate"] <= 0.1  # about 1 % expected
    assert "input gate:" in output and "rows outside the training distribution" in output
    # foreign inputs of each kind
    test_films = sorted(str(p) for p in (demo / "CheXpert-v1.0" / "test").rglob("*frontal*.jpg"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    photos = [str(photograph(foreign / f"{name}.png", name))
              for name in ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins")]
    slices = [pydicom.data.get_testdata_file(name) for name in ("CT_small.dcm", "MR_small.dcm")]
    inverted = []
    for path in test_films[:20]:
        from PIL import Image
        target = foreign / f"inverted_{len(inverted)}.png"
        Image.fromarray(255 - np.asarray(Image.open(path).convert("L"))).save(target)
        inverted.append(str(target))
    table_path = tmp_path / "p.csv"
    result = run_predict(*test_films, *photos, *slices, *inverted, "--checkpoint",
                         str(run / "best.pth"), "--output", str(table_path))
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(table_path).set_index("path")["ood_score"]
    inside = scores[test_films].to_numpy()
    for kind, paths, at_least in (("photographs", photos, 0.8), ("CT/MR", slices, 0.9),
                                  ("inverted", inverted, 0.8)):
        outside = scores[paths].to_numpy()
        auroc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))],
                              np.r_[inside, outside])
        assert auroc >= at_least, f"{kind}: AUROC {auroc:.3f} against the test films"


@pytest.mark.parametrize("backbone", ["densenet121", "densenet169", "resnet50",
                                      "efficientnet_b0", "efficientnet_b3", "convnext_tiny"])
def test_every_backbone_has_an_early_stage_at_a_quarter_of_the_side(backbone):
    from model_architecture import BACKBONES, CheXpertNet

    model = CheXpertNet(len(LABELS), backbone=backbone).eval()
    stage = model.backbone.get_submodule(BACKBONES[backbone].early)
    seen = {}

    def shape(_module, _inputs, output) -> None:
        seen.setdefault("shape", output.shape)

    handle = stage.register_forward_hook(shape)
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad(), FeatureTap(model) as tap:
        model(images)
        features = tap.take(2)
    handle.remove()
    assert seen["shape"][-2:] == (16, 16)  # 64 / 4
    assert tap.sizes == (BACKBONES[backbone].channels, seen["shape"][1])
    assert features.shape == (2, sum(tap.sizes))
