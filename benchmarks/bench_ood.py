"""How well the input gate (cxr/evaluation/ood.py) separates foreign inputs from radiographs.

    python benchmarks/bench_ood.py [--work models/bench-ood] [--out benchmarks/results/ood]
        [--models demo,nih] [--resamples 1000] [--seed 0]

Needs scikit-image (its bundled photographs) and ../shared/data (nih-native, nih-cxr-small,
chexpert-fullres-sample). Two small models are trained into --work by the pipeline's own scripts,
once (a rerun finds best.pth and reuses it, and the foreign files written beside it):
  demo  make_demo_data.py (400 + 100 patients, 160 x 192 px) -> preprocess.py -> make_splits.py
        --val_fraction 0.2 -> train.py with the tests' recipe (conftest.DEMO_TRAINING: 96 px,
        6 epochs from random initialisation)
  nih   the 404 real NIH images of ../shared/data/nih-native: preprocess.py --dataset nih
        --missing_images skip -> make_splits.py --val_fraction 0.2 -> train.py, the same recipe
For each model, every film is decoded as predict.py decodes a file (predictor.model_view) and
run through the checkpoint (load_predictor: its device and precision) under ood.FeatureTap.
Each method of ood.METHODS is fitted on the val split's features exactly as evaluate.py fits the
gate (ood.fit_gate over FeatureTap's parts, threshold = the 0.99 quantile of val's held-out
scores), and, to show what each part brings, on each part alone (the pooled features; the early
stage's channel means), with its own threshold. Against the test split's films (in
distribution) it measures, per foreign kind:
  AUROC     separating the test films from the kind by the gate's score (roc_auc_score), its 95 %
            interval a percentile bootstrap over films (each side resampled on its own,
            --resamples, seeded)
  flagged   the share of the kind's films above the threshold (Wilson interval, per film)
and the share of the test films flagged (target 1 - quantile = 1 %; Wilson interval, per film).
Foreign kinds: photographs (scikit-image's bundled images written as PNG), CT and MR slices
(pydicom's test files whose Modality is CT or MR; those predict.py refuses are counted as
skipped), the test films inverted and rotated 90 degrees (written as PNG), lateral films, and a
radiograph domain the model never saw (demo model: NIH; NIH model: the demo phantoms). Films of
a kind whose model views are identical (one image in several encodings) count once.
Prints two tables per model (the gate; each part alone); writes <out>/ood.csv (one row per
model, method, feature set and kind) and <out>/ood.md (the tables, date, machine, command,
runtime).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import machine

from config import Config
from conftest import DEMO_TRAINING  # the tests' demo recipe: 96 px, 6 epochs
from cxr.cli import parse_args
from cxr.data.imaging import ImageReadError, read_grayscale
from cxr.evaluation.intervals import wilson
from cxr.evaluation.ood import FEATURES, METHOD, METHODS, FeatureTap, fit_gate
from cxr.inference.predictor import Predictor, batch_logits, load_predictor, model_view
from cxr.reporting.tables import interval_text, markdown_table, text_table
from model_architecture import model_from_checkpoint

SHARED = ROOT.parent / "shared" / "data"
NIH_NATIVE = SHARED / "nih-native"
NIH_SMALL = SHARED / "nih-cxr-small" / "CheXpert-v1.0-small"
REAL_LATERAL = SHARED / "chexpert-fullres-sample" / "CheXpert-v1.0" / "valid" / "patient64542" \
    / "study1" / "view2_lateral.jpg"
DEMO_DATA = ["--patients", "400", "--valid_patients", "100", "--width", "160", "--height", "192",
             "--test_patients", "0"]
VAL_FRACTION = "0.2"  # of the training patients: about 160 demo val films, 65 NIH ones
QUANTILE = 0.99  # evaluate.py's --ood_quantile default
GATE = "gate"  # the feature set of every part, as evaluate.py fits the gate
PART_NAMES = ("pooled", "early")  # FeatureTap's parts of one network, in its order
IN_DISTRIBUTION = "in-distribution (test split)"
LEVEL = 0.95
# scikit-image's bundled images (no download): photographs, and a few microscopy, astronomy and
# fundus photographs; cat() is chelsea() and counts once
PHOTOGRAPHS = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee",
               "coins", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
               "moon", "page", "retina", "rocket", "text")


@dataclass
class Options:
    work: str = "models/bench-ood"  # trained models, their data and the foreign files (reused)
    out: str = "benchmarks/results/ood"  # ood.csv and ood.md
    models: str = "demo,nih"  # which models to measure: demo, nih or both
    resamples: int = 1000  # bootstrap resamples of each AUROC interval (over films)
    seed: int = 0  # seeds the bootstrap
    batch_size: int = 32  # films per forward pass


@dataclass
class Kind:
    """A set of films of one kind: what to read, and what could not be read."""
    name: str
    sources: list[str]
    note: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    duplicates: int = 0
    read: list[str] = field(default_factory=list)  # the files measured (duplicates left out)


@dataclass
class Films:
    """A kind's films as the model sees them, and their features."""
    kind: Kind
    features: np.ndarray  # n x D, length 1


# ---- training, through the pipeline's own scripts ------------------------------------------------

def run(*command: str) -> None:
    print(f"bench_ood: $ python {shlex.join(command)}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_OPTIONS"}  # options are explicit
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True, env=env)


def demo_source(work: Path) -> Path:
    """The demo phantoms (also the NIH model's lateral and other-domain films)."""
    out = work / "demo" / "source"
    if not (out / "CheXpert-v1.0-small" / "valid.csv").is_file():
        run("make_demo_data.py", "--out", str(out), *DEMO_DATA)
    return out / "CheXpert-v1.0-small"


def train(name: str, work: Path) -> Path:
    """models/<name>/best.pth under work/<name>, trained unless it is there already."""
    folder = work / name
    checkpoint = folder / "models" / name / "best.pth"
    if checkpoint.is_file():
        print(f"bench_ood: reusing {checkpoint}")
        return checkpoint
    data = ["--data_dir", str(folder / "data")]
    if name == "demo":
        run("preprocess.py", "--data_root", str(demo_source(work)), *data)
    else:
        run("preprocess.py", "--dataset", "nih", "--data_root", str(NIH_NATIVE),
            "--missing_images", "skip", *data)
    run("make_splits.py", *data, "--val_fraction", VAL_FRACTION)
    run("train.py", *data, "--models_dir", str(folder / "models"), "--run_name", name,
        *DEMO_TRAINING)
    return checkpoint


def split_films(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    """A split's frontal films (as make_dataset keeps them) and their patients."""
    frame = pd.read_csv(folder / "data" / "splits" / f"{split}.csv")
    if "Frontal/Lateral" in frame:
        frame = frame[frame["Frontal/Lateral"] == "Frontal"]
    return frame["image_path"].tolist(), frame["patient_id"].astype(str).to_numpy()


# ---- foreign films -------------------------------------------------------------------------------

def write_png(path: Path, image: np.ndarray) -> str:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), image):
            raise OSError(f"could not write {path}")
    return str(path)


def photographs(folder: Path) -> Kind:
    import skimage.data

    sources, skipped = [], []
    for name in PHOTOGRAPHS:
        try:
            image = getattr(skimage.data, name)()
        except Exception as err:  # noqa: BLE001  (a data file this install lacks: count it)
            skipped.append((name, f"{type(err).__name__}: {str(err)[:80]}"))
            continue
        image = image.astype(np.uint8) * 255 if image.dtype == bool else image
        if image.ndim == 3:  # RGB(A) -> OpenCV's BGR(A); the decoder makes it gray
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4
                                 else cv2.COLOR_RGB2BGR)
        sources.append(write_png(folder / f"{name}.png", image))
    return Kind("photographs (skimage.data)", sources, f"{len(sources)} images of "
                f"skimage.data {skimage.__version__}", skipped)


def ct_mr_files() -> list[str]:
    """pydicom's test files named *CT* or *MR*, and any other whose Modality is CT or MR."""
    import pydicom
    from pydicom.data import get_testdata_files
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():  # it tries pydicom-data's download first (no network
        warnings.simplefilter("ignore")  # here), and notes the test files' oddities
        named = get_testdata_files("*CT*") + get_testdata_files("*MR*")
        found = list(dict.fromkeys(named))
        for path in get_testdata_files("*"):
            if path in found:
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, EOFError):
                header = None  # not a DICOM file at all (a .gz, a text file): not a candidate
            if header is not None and header.get("Modality") in ("CT", "MR"):
                found.append(path)
    return sorted(found)


def transformed(name: str, paths: list[str], folder: Path, how) -> Kind:
    """Each film decoded whole (read_grayscale), transformed, written as PNG."""
    sources = [write_png(folder / f"{i:04d}.png",
                         np.ascontiguousarray(how(read_grayscale(path))))
               for i, path in enumerate(paths)]
    return Kind(name, sources, "the test films, written as PNG")


def demo_laterals(source: Path) -> list[str]:
    """The demo's lateral films of its valid.csv patients (the test split's; preprocess.py
    drops laterals, so they are taken from the demo's own CSV)."""
    frame = pd.read_csv(source / "valid.csv")
    paths = frame.loc[frame["Frontal/Lateral"] == "Lateral", "Path"]
    return [str(source.parent / p) for p in paths]


def foreign_kinds(name: str, work: Path, test: list[str]) -> list[Kind]:
    folder = work / "foreign"
    kinds = [photographs(folder / "photographs"),
             Kind("CT/MR slices (pydicom test DICOMs)", ct_mr_files(),
                  "pydicom.data.get_testdata_files: *CT*, *MR*, and Modality CT/MR"),
             transformed("inverted test films (255 - x)", test, folder / name / "inverted",
                         lambda a: 255 - a),
             transformed("test films rotated 90 degrees", test, folder / name / "rotated",
                         np.rot90)]
    source = demo_source(work)
    if name == "demo":
        kinds += [Kind("lateral films (demo phantoms)", demo_laterals(source),
                       "the laterals of the test split's patients"),
                  Kind("NIH radiographs (another domain)",
                       sorted(map(str, NIH_SMALL.glob("*/*/*/*.jpg"))),
                       "../shared/data/nih-cxr-small, 320 px JPEGs")]
    else:
        kinds += [Kind("lateral film (real CheXpert)", [str(REAL_LATERAL)],
                       "../shared/data/chexpert-fullres-sample, full resolution"),
                  Kind("lateral films (demo phantoms)", demo_laterals(source),
                       "make_demo_data.py's laterals"),
                  Kind("demo phantoms, frontal (another domain)", frontal_phantoms(source),
                       "the frontals of make_demo_data.py's valid.csv (the demo test split)")]
    return kinds


def frontal_phantoms(source: Path) -> list[str]:
    frame = pd.read_csv(source / "valid.csv")
    return [str(source.parent / p) for p in frame.loc[frame["Frontal/Lateral"] == "Frontal",
                                                      "Path"]]


# ---- features, as predict.py would see the films -------------------------------------------------

def read_views(kind: Kind, predictor: Predictor) -> np.ndarray:
    """The kind's readable films as model views (predict.py's decoding), identical ones once."""
    views, seen = [], set()
    for source in kind.sources:
        try:
            with warnings.catch_warnings():  # pydicom's notes on its odd test files
                warnings.simplefilter("ignore", UserWarning)
                view = model_view(source, predictor.image_size, predictor.side)
        except ImageReadError as err:
            message = str(err).splitlines()[0]
            reason = message.partition(f"{source}: ")[2] or message  # the file is named apart
            kind.skipped.append((Path(source).name, reason))
            continue
        digest = hashlib.sha256(view.tobytes()).hexdigest()
        if digest in seen:
            kind.duplicates += 1
            continue
        seen.add(digest)
        views.append(view)
        kind.read.append(Path(source).name)
    return np.stack(views) if views else np.empty((0, predictor.image_size,
                                                   predictor.image_size), np.uint8)


def features_of(predictor: Predictor, views: np.ndarray, batch_size: int
                ) -> tuple[np.ndarray, tuple[int, ...]]:
    """The gate's features of the views (FeatureTap, one forward pass per batch) and the widths
    of their parts (FeatureTap.sizes)."""
    out, sizes = [], ()
    with FeatureTap(predictor.scorer) as tap:
        for start in range(0, len(views), batch_size):
            images = torch.from_numpy(views[start:start + batch_size, None])
            batch_logits(predictor, images)
            out.append(tap.take(len(images)).numpy())
            sizes = tuple(getattr(tap, "sizes", ())) or (out[-1].shape[1],)
    return (np.concatenate(out) if out else np.empty((0, 0), np.float32)), sizes


def films(kind: Kind, predictor: Predictor, batch_size: int) -> Films:
    return Films(kind, features_of(predictor, read_views(kind, predictor), batch_size)[0])


def feature_sets(sizes: tuple[int, ...]) -> list[tuple[str, np.ndarray, tuple[int, ...]]]:
    """(name, columns, part widths): every part, as evaluate.py fits the gate, then each part
    alone (FeatureTap's parts per network: its pooled features, then its early stage's means)."""
    ends = np.cumsum(sizes)
    names = PART_NAMES if len(sizes) == len(PART_NAMES) else \
        tuple(f"part {i + 1}" for i in range(len(sizes)))
    sets = [(GATE, np.arange(ends[-1]), tuple(sizes))]
    if len(sizes) > 1:
        sets += [(name, np.arange(end - size, end), (size,))
                 for name, size, end in zip(names, sizes, ends)]
    return sets


# ---- statistics ----------------------------------------------------------------------------------

def auroc_interval(inside: np.ndarray, outside: np.ndarray, resamples: int,
                   rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap of the AUROC (outside scored higher), each side resampled over its
    own films: the Mann-Whitney kernel weighted by the resamples' counts."""
    kernel = (outside[None, :] > inside[:, None]) + 0.5 * (outside[None, :] == inside[:, None])
    a = rng.multinomial(len(inside), np.full(len(inside), 1 / len(inside)), size=resamples)
    b = rng.multinomial(len(outside), np.full(len(outside), 1 / len(outside)), size=resamples)
    aucs = ((a @ kernel) * b).sum(axis=1) / (len(inside) * len(outside))
    low, high = np.percentile(aucs, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(low), float(high)


def flag_share(scores: np.ndarray, threshold: float) -> dict:
    """How many films are scored above the threshold: count, share, Wilson interval."""
    flagged = int((scores > threshold).sum())
    low, high = wilson(flagged / len(scores), len(scores), LEVEL)
    return {"flagged": flagged, "flagged_share": flagged / len(scores), "flagged_low": low,
            "flagged_high": high}


def measure_gate(base: dict, gate, test: np.ndarray, foreign: list[Films], columns: np.ndarray,
                 opts: Options) -> list[dict]:
    """One gate's rows: the test films themselves, then each foreign kind against them."""
    rng = np.random.default_rng(opts.seed)
    inside = gate.scores(test[:, columns])
    rows = [{**base, "kind": IN_DISTRIBUTION, "n_foreign": 0,
             **flag_share(inside, gate.threshold)}]
    for item in foreign:
        row = {**base, "kind": item.kind.name, "n_foreign": len(item.features),
               "skipped": len(item.kind.skipped), "duplicates": item.kind.duplicates}
        if len(item.features):
            outside = gate.scores(item.features[:, columns])
            labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
            low, high = auroc_interval(inside, outside, opts.resamples, rng)
            row.update(auroc=roc_auc_score(labels, np.r_[inside, outside]), auroc_low=low,
                       auroc_high=high, **flag_share(outside, gate.threshold))
        rows.append(row)
    return rows


def measure(model: str, val: np.ndarray, val_patients: np.ndarray, test: np.ndarray,
            sizes: tuple[int, ...], foreign: list[Films], opts: Options) -> list[dict]:
    """Rows of every method and feature set (the gate, then each part alone)."""
    rows = []
    for method in METHODS:
        for name, columns, parts in feature_sets(sizes):
            gate = fit_gate(val[:, columns], val_patients, QUANTILE, method, sizes=parts)
            base = {"model": model, "method": method, "features": name,
                    "widths": "+".join(map(str, parts)), "threshold": gate.threshold,
                    "val_films": gate.n_films, "val_patients": gate.n_patients,
                    "n_test": len(test)}
            rows += measure_gate(base, gate, test, foreign, columns, opts)
    return rows


# ---- one model -----------------------------------------------------------------------------------

def split_features(predictor: Predictor, paths: list[str], batch_size: int
                   ) -> tuple[np.ndarray, tuple[int, ...]]:
    views = np.stack([model_view(p, predictor.image_size, predictor.side) for p in paths])
    return features_of(predictor, views, batch_size)


def measure_model(name: str, work: Path, opts: Options
                  ) -> tuple[list[dict], list[Kind], str, float | None]:
    """(rows, foreign kinds, a line on the model, seconds spent training it: None if reused)."""
    start, reused = time.perf_counter(), (work / name / "models" / name / "best.pth").is_file()
    checkpoint = train(name, work)
    trained = None if reused else time.perf_counter() - start
    predictor = load_predictor(checkpoint, Config(), rebuild=model_from_checkpoint)
    val_paths, val_patients = split_films(work / name, "val")
    test_paths, _ = split_films(work / name, "test")
    precision = str(predictor.dtype).removeprefix("torch.") if predictor.dtype else "fp32"
    print(f"bench_ood: {name}: features of {len(val_paths)} val and {len(test_paths)} test "
          f"films, {predictor.image_size} px, {precision} on {predictor.device}", flush=True)
    val, sizes = split_features(predictor, val_paths, opts.batch_size)
    test, _ = split_features(predictor, test_paths, opts.batch_size)
    kinds = foreign_kinds(name, work, test_paths)
    foreign = [films(kind, predictor, opts.batch_size) for kind in kinds]
    shown = checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint
    setup = (f"{shown}: {predictor.image_size} px, features {'+'.join(map(str, sizes))} "
             f"({', '.join(PART_NAMES) if len(sizes) == len(PART_NAMES) else 'parts'}), "
             f"{precision} on {predictor.device}")
    rows = measure(name, val, val_patients, test, sizes, foreign, opts)
    return rows, kinds, setup, trained


# ---- tables --------------------------------------------------------------------------------------

def share_text(row: dict, interval: bool = True) -> str:
    if pd.isna(row.get("flagged_share")):
        return "n/a"
    text = f"{100 * row['flagged_share']:.1f} %"
    return f"{text} [{100 * row['flagged_low']:.1f}, {100 * row['flagged_high']:.1f}]" \
        if interval else text


def auroc_text(row: dict, interval: bool = True) -> str:
    if pd.isna(row.get("auroc")):
        return "-"
    text = f"{row['auroc']:.3f}"
    return f"{text} {interval_text(row['auroc_low'], row['auroc_high'])}" if interval else text


def by_kind(rows: list[dict]) -> dict[str, dict[tuple[str, str], dict]]:
    """kind -> (method, features) -> row, kinds in their order."""
    table: dict[str, dict[tuple[str, str], dict]] = {}
    for row in rows:
        table.setdefault(row["kind"], {})[(row["method"], row["features"])] = row
    return table


def kind_cells(kind: str, first: dict) -> tuple[str, str]:
    """A kind's n and its skipped files (and identical ones left out)."""
    if kind == IN_DISTRIBUTION:
        return str(first["n_test"]), ""
    skipped = str(first.get("skipped", 0))
    return str(first["n_foreign"]), skipped + (f" (+{first['duplicates']} dup.)"
                                               if first.get("duplicates") else "")


def gate_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The gate as evaluate.py fits it: per kind, n, then each method's AUROC and share flagged."""
    header = ["kind", "n", *[f"{m} {what}" for m in METHODS
                             for what in ("AUROC [95% CI]", "flagged [95% CI]")], "skipped"]
    lines = []
    for kind, cells in by_kind(rows).items():
        n, skipped = kind_cells(kind, cells[(METHODS[0], GATE)])
        lines.append([kind, n, *[text for m in METHODS for text in
                                 (auroc_text(cells[(m, GATE)]), share_text(cells[(m, GATE)]))],
                      skipped])
    return header, lines


def parts_table(rows: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """Each part alone: per kind, each method's AUROC (share flagged); None with one part."""
    sets = list(dict.fromkeys(row["features"] for row in rows if row["features"] != GATE))
    if not sets:
        return None
    header = ["kind", *[f"{m} {part}: AUROC (flagged)" for m in METHODS for part in sets]]
    lines = []
    for kind, cells in by_kind(rows).items():
        lines.append([kind, *[f"{auroc_text(cells[(m, s)], False)} "
                              f"({share_text(cells[(m, s)], False)})"
                              for m in METHODS for s in sets]])
    return header, lines


def thresholds_text(rows: list[dict]) -> str:
    return ", ".join(f"{r['method']} {r['threshold']:.4f}" for r in rows
                     if r["kind"] == IN_DISTRIBUTION and r["features"] == GATE)


def notes(kinds: list[Kind]) -> list[str]:
    lines = []
    for kind in kinds:
        text = f"- {kind.name}: {kind.note}" if kind.note else f"- {kind.name}"
        if len(kind.read) <= 12:
            text += f"; measured: {', '.join(kind.read)}"
        if kind.duplicates:
            text += (f"; {kind.duplicates} file(s) left out, their model view identical to one "
                     "measured")
        if kind.skipped:
            text += "; skipped (predict.py refuses them): " + "; ".join(
                f"{name} ({reason})" for name, reason in kind.skipped)
        lines.append(text)
    return lines


def model_section(name: str, rows: list[dict], kinds: list[Kind], setup: str) -> list[str]:
    """Print the model's tables; return its Markdown section."""
    first = rows[0]
    title = (f"{name} model: {setup}; gate fitted on {first['val_films']} val films "
             f"({first['val_patients']} patients); thresholds {thresholds_text(rows)}")
    header, lines = gate_table(rows)
    print(f"\n{title}\n{text_table(header, lines)}")
    section = [f"## {title}", "", "The gate as evaluate.py fits it (every part):", "",
               markdown_table(header, lines), ""]
    parts = parts_table(rows)
    if parts is not None:
        print(f"\n{name} model, each part alone (its own threshold):\n{text_table(*parts)}")
        section += ["Each part alone (a gate fitted on that part, its own threshold):", "",
                    markdown_table(*parts), ""]
    return [*section, *notes(kinds), ""]


def write(out: Path, rows: list[dict], sections: list[str], stamp: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows).assign(**stamp)
    frame.to_csv(out / "ood.csv", index=False)
    when = (f"{stamp['date']}, {stamp['machine']}; {stamp['runtime_s']:.0f} s "
            f"({stamp['trained']}).")
    how = (f"Gate: ood.fit_gate on the val split's features ({FEATURES}), threshold the "
           f"{QUANTILE} quantile of val's held-out scores (evaluate.py's default method: "
           f"{METHOD}). AUROC: test films against the kind, 95 % percentile bootstrap over films "
           f"({stamp['resamples']} resamples, seed {stamp['seed']}); flagged: the share above "
           "the threshold, Wilson 95 % interval per film (target for the test films: 1 %). A "
           "kind of one film has an AUROC interval from the test films' resampling alone.")
    head = ["# Input gate: foreign inputs (bench_ood.py)", "", f"`{stamp['command']}`", "",
            when, "", how, ""]
    (out / "ood.md").write_text("\n".join([*head, *sections, ""]))


def main(opts: Options) -> None:
    start = time.perf_counter()
    work, out = ROOT / opts.work, ROOT / opts.out
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"demo", "nih"})
    if unknown or not models:
        raise SystemExit(f"--models: choose from demo, nih (got {opts.models!r})")
    if "nih" in models and not NIH_NATIVE.is_dir():
        raise SystemExit(f"{NIH_NATIVE} not found: the NIH model needs ../shared/data")
    rows, sections, training = [], [], []
    for name in models:
        measured, kinds, setup, seconds = measure_model(name, work, opts)
        training.append(f"{name} model reused" if seconds is None
                        else f"{name} model trained here in {seconds:.0f} s")
        rows += measured
        sections += model_section(name, measured, kinds, setup)
    elapsed = time.perf_counter() - start
    stamp = {"date": datetime.date.today().isoformat(), "machine": machine(),
             "command": shlex.join(["python", "benchmarks/bench_ood.py", *sys.argv[1:]]),
             "runtime_s": elapsed, "resamples": opts.resamples, "seed": opts.seed,
             "trained": ", ".join(training)}
    write(out, rows, sections, stamp)
    print(f"\nbench_ood: {elapsed:.0f} s ({stamp['trained']}); wrote {out / 'ood.csv'} and "
          f"{out / 'ood.md'}")


if __name__ == "__main__":
    main(parse_args(defaults=Options()))
