"""Shared test helpers: paths to ../shared/data (tests skip when it is absent) and tiny datasets."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr.data.chexpert import META_COLUMNS
from cxr.data.labels import LABELS

# Tests pass their options explicitly: options shared through the caller's environment
# (cxr/cli.py's PIPELINE_OPTIONS) would reach every script the tests run.
os.environ.pop("PIPELINE_OPTIONS", None)

SHARED_DATA = ROOT.parent / "shared" / "data"


def shared(relative: str) -> Path:
    """A path under ../shared/data, or skip the test when that data is not present."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    """A CheXpert-schema CSV; missing cells are blank."""
    header = [*META_COLUMNS, *LABELS]
    lines = [",".join(header)]
    for row in rows:
        lines.append(",".join(str(row.get(column, "")) for column in header))
    path.write_text("\n".join(lines) + "\n")


def make_root(tmp_path: Path, train_rows: list[dict], valid_rows: list[dict],
              images: bool = True) -> Path:
    """A CheXpert-v1.0-small folder with the given CSV rows and small gray JPEGs."""
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir(parents=True)
    write_csv(root / "train.csv", train_rows)
    write_csv(root / "valid.csv", valid_rows)
    if images:
        rng = np.random.default_rng(0)
        for row in train_rows + valid_rows:
            target = root / row["Path"].split("/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (80, 64), dtype=np.uint8)).save(target)
    return root


def row(split: str, patient: int, study: int = 1, view: str = "Frontal", **labels) -> dict:
    kind = "frontal" if view == "Frontal" else "lateral"
    values = {"Path": f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/"
                      f"view1_{kind}.jpg",
              "Sex": "Female", "Age": "60", "Frontal/Lateral": view,
              "AP/PA": "AP" if view == "Frontal" else ""}
    values.update({label.replace("_", " "): value for label, value in labels.items()})
    return values


def tiny_checkpoint(path: Path, image_size: int = 64, seed: int = 0,
                    trained_labels: list[str] | None = None, **fields) -> Path:
    """A random-weight checkpoint of this pipeline's format (for inference, export and GUI tests);
    `fields` set Config fields, e.g. view_mode="study"; `trained_labels` its record of the labels
    its training split labelled (absent by default, as in older checkpoints)."""
    import dataclasses

    import torch

    from config import Config
    from cxr.training.checkpoint import save_checkpoint
    from model_architecture import CheXpertNet

    torch.manual_seed(seed)
    from model_architecture import fusion_of

    cfg = Config(image_size=image_size, pretrained=False, **fields)
    model = CheXpertNet(len(LABELS), cfg.gem_p, cfg.dropout, pixel_mean=0.5, pixel_std=0.25,
                        fusion=fusion_of(cfg), backbone=cfg.backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {} if trained_labels is None else {"trained_labels": list(trained_labels)}
    save_checkpoint({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                     "labels": list(LABELS), "normalization": {"mean": 0.5, "std": 0.25},
                     "epoch": 0, **record}, path)
    return path


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    """A 40-patient dataset, preprocessed and split: (the options that point at it, models dir)."""
    import make_splits
    import preprocess
    from config import Config

    tmp = tmp_path_factory.mktemp("split-data")
    rng = np.random.default_rng(3)
    labels = ("Atelectasis", "Cardiomegaly", "Edema", "Pleural_Effusion")
    train = [row("train", p, **{k: float(rng.integers(0, 2)) for k in labels}) for p in range(40)]
    valid = [row("valid", 100 + p, **{k: float(p % 2) for k in labels}) for p in range(6)]
    root = make_root(tmp, train, valid)
    cfg = Config(data_root=str(root), data_dir=str(tmp / "data"), val_fraction=0.2,
                 stats_sample=10)
    preprocess.main(cfg)
    make_splits.main(cfg)
    return ["--data_dir", cfg.data_dir, "--models_dir", str(tmp / "models")], tmp / "models"


def write_thresholds_json(checkpoint: Path, thresholds: dict | None = None,
                          calibration: dict | None = None, tta: bool = False,
                          model_id: str | None = None) -> Path:
    """A thresholds.json beside `checkpoint`, in evaluate.py's contract, bound to its weights
    (or to `model_id`); `calibration` maps label -> {"scale", "bias"} (default: identity)."""
    import json

    import cxr.training.checkpoint as checkpoints
    from cxr.evaluation.thresholds import thresholds_payload

    values = {label: 0.3 for label in LABELS} if thresholds is None else thresholds
    fitted = {label: {"scale": 1.0, "bias": 0.0} for label in LABELS}
    fitted.update(calibration or {})
    weights = model_id or checkpoints.model_id(checkpoints.load_checkpoint(checkpoint))
    payload = thresholds_payload(checkpoint, weights, LABELS,
                                 {"youden": values, "target_sensitivity": values}, 0.9,
                                 {"method": "platt", "parameters": fitted},
                                 {"tta": tta, "view_mode": "frontal",
                                  "logit_offset_removed": True}, dict.fromkeys(LABELS, 0))
    path = checkpoint.parent / "thresholds.json"
    path.write_text(json.dumps(payload))
    return path


# ---- a model trained on the demo phantoms (Grad-CAM, the test-set scoring path) -----------

DEMO_TRAINING = ["--pretrained", "false", "--image_size", "96", "--batch_size", "16",
                 "--accumulation_steps", "1", "--epochs", "6", "--frozen_epochs", "1",
                 "--warmup_steps", "10", "--lr_head", "1e-3", "--lr_backbone", "1e-3",
                 "--num_workers", "1"]


def run_script(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_in_process(capsys, script: str, *args: str) -> tuple[int, str, str]:
    """A script's command line without a new interpreter: (exit code, stdout, stderr)."""
    from config import Config
    from cxr.cli import run_cli

    module = importlib.import_module(script.removesuffix(".py"))
    try:
        run_cli(module.main, script=script, argv=list(args), defaults=Config())
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    """(checkpoint, demo folder): the README's chain on a small demo dataset (its test set of
    100 one-study patients too), trained once for every test module that uses it."""
    out = tmp_path_factory.mktemp("cam")
    run_script("make_demo_data.py", "--out", str(out / "demo"), "--patients", "250",
               "--valid_patients", "60", "--width", "160", "--height", "192")
    data_dir = ["--data_dir", str(out / "data")]
    run_script("preprocess.py", "--data_root", str(out / "demo" / "CheXpert-v1.0-small"),
               *data_dir)
    run_script("make_splits.py", *data_dir)
    run_script("train.py", *data_dir, "--models_dir", str(out / "models"), *DEMO_TRAINING,
               "--run_name", "cam")
    return out / "models" / "cam" / "best.pth", out / "demo"


# ---- app.py through Streamlit's AppTest -------------------------------------------------------

def app_with_upload(checkpoint: str | Path, monkeypatch, name: str = "gray16_xray.png"):
    """app.py started on `checkpoint` (a path, or an ensemble's), one shared radiograph uploaded.
    Use with the keep_main_module fixture."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CHEXPERT_CHECKPOINT", str(checkpoint))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    files = [(name, shared(f"bad-inputs/images/{name}").read_bytes(), "application/octet-stream")]
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def keep_main_module():
    """AppTest leaves app.py as sys.modules["__main__"]: a multiprocessing pool spawned by a later
    test (cache.py's) would then run the page in each worker. Put the real one back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


# ---- an input gate that separates given films by construction ---------------------------------

def add_input_gate(checkpoint: Path, inside: list, outside: list) -> float:
    """An input gate in the thresholds.json beside `checkpoint` (write_thresholds_json first):
    kNN with k = 1 on the features of the `inside` sources (paths or Uploads), its threshold
    halfway between their scores (0: each is its own neighbour) and the lowest of the `outside`
    sources'. A stand-in for evaluate.py's gate that separates them by construction, to test what
    predict.py, app.py and export.py do with a gate. Returns the threshold."""
    import json

    import torch

    from config import Config
    from cxr.evaluation.ood import FeatureTap, InputGate, fit_parts, score_with, write_gate
    from cxr.inference.predictor import RadiographFiles, load_predictor
    from model_architecture import model_from_checkpoint

    predictor = load_predictor(checkpoint, Config(device="cpu", num_workers=0),
                               rebuild=model_from_checkpoint)

    def features(sources: list) -> np.ndarray:
        batch = RadiographFiles(sources, predictor.image_size, predictor.side).__getitems__(
            list(range(len(sources))))
        assert not batch.errors, batch.errors
        with torch.no_grad(), FeatureTap(predictor.model) as tap:
            predictor.model(batch.images)
            values = tap.take(len(sources)).numpy()
        sizes[:] = tap.sizes
        return values

    sizes = []

    arrays = fit_parts(features(inside), sizes, "knn")
    threshold = float(score_with(arrays, "knn", features(outside), neighbours=1).min()) / 2
    assert threshold > 0, "the outside films' features equal an inside film's"
    gate = InputGate("knn", arrays, threshold, 0.99, len(inside), len(inside), neighbours=1)
    path = checkpoint.parent / "thresholds.json"
    payload = json.loads(path.read_text())
    payload["input_gate"] = write_gate(gate, checkpoint.parent)
    path.write_text(json.dumps(payload))
    return threshold


def photograph(path: Path, name: str = "camera") -> Path:
    """One of scikit-image's bundled photographs (camera, astronaut, coffee, ...) as a PNG."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    Image.fromarray(image).save(path)
    return path
