"""Write a SYNTHETIC chest X-ray data set in the CheXpert-v1.0-small layout, to try the pipeline.

    python make_demo_data.py --out data/demo --patients 600 --valid_patients 120 \
        --test_patients 100 --seed 0

These images are NOT X-rays and NOT patient data. They are drawn phantoms (lung fields, heart,
mediastinum, ribs, ...) in which every CheXpert observation leaves a visible trace: a larger
heart, a fluid level, a tube, ... They exist only so the whole pipeline (preprocess, split, train,
evaluate, Grad-CAM) can be tried on a laptop CPU in minutes. A model trained on them knows nothing
about real chest X-rays: never use it, or its numbers, for anything medical.

Writes, in CheXpert's own layout and CSV schema:
    <out>/CheXpert-v1.0-small/train.csv, valid.csv   Path,Sex,Age,Frontal/Lateral,AP/PA + 14 labels
    <out>/CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/view1_frontal.jpg, view2_lateral.jpg
    <out>/annotations.csv   Path,label,x0,y0,x1,y1: pixel box of every drawn finding (for Grad-CAM)
    <out>/demographics.csv  PATIENT,GENDER,AGE_AT_CXR,PRIMARY_RACE,ETHNICITY of every patient
                            (train, valid and test): the layout of CheXpert's CHEXPERT DEMO.xlsx
and, in the layout of CheXpert's test set (unless --test_patients 0):
    <out>/CheXpert-v1.0/test/patientNNNNN/study1/view1_frontal.jpg, view2_lateral.jpg
    <out>/test_groundtruth.csv   Study + 14 labels as 0/1, one row per study: groundtruth.csv's
                                 format (Study = CheXpert-v1.0/test/patientNNNNN/study1)
    <out>/test_readers/reader{1,2,3}.csv   the same schema: three synthetic readers' 0/1 reads

As in CheXpert, train.csv labels are 1.0, 0.0, -1.0 (uncertain; mostly the faintest traces) or
blank (not mentioned), Lung Opacity is set whenever one of its sub-findings is, and valid.csv holds
0.0/1.0 only. Patients have 1 to --max_studies studies; valid patients are numbered after the
train ones, and some findings persist across a patient's studies (so split by patient).
Test patients, numbered after the valid ones, have one study each (as in CheXpert's test set);
their ground truth is the findings drawn (valid.csv's 0/1 labels). A reader calls a finding when
its strength plus the reader's noise passes the reader's threshold, and a finding that is not
there at the reader's small false-positive rate, with CheXpert's Lung Opacity and No Finding rules
applied to the reads. The test set is drawn from a random stream of its own, after the train and
valid ones: the train and valid files are the same whatever --test_patients.

A planted bias, to show that an underdiagnosis audit finds it (and nothing else):
    python make_demo_data.py --out data/demo-biased --bias Sex=Female:0.5 Race=Black:0.7
draws every finding of the patients in a group (COLUMN=VALUE: Sex=Male|Female, or Race= one of
race_group's groups) at FACTOR (0 < FACTOR <= 1) of its contrast, in train, valid and test: each
finding's added density is scaled (Film.trace), and a finding that changes the anatomy changes it
by FACTOR of its change from normal (heart and mediastinum width, diaphragm lift, rib step;
apply_findings). A patient in several groups gets the product of their factors. The labels, the
ground truth and the readers' reads are those of the finding as drawn (its strength), not of its
contrast: the finding is there, only fainter, and the readers still see it (they are the unbiased
reference), so only a model trained on the films learns the bias. Patients outside the groups get
byte-identical films; without --bias every file is the same as before the option existed.
Race and ethnicity (demographics.csv) come from a random stream of their own.
Next step: python preprocess.py --data_root data/demo/CheXpert-v1.0-small
The test set, with a trained model (predict.py writes test_studies.csv beside test.csv):
    python predict.py data/demo/CheXpert-v1.0/test --output test.csv
    python score.py --predictions test_studies.csv --labels data/demo/test_groundtruth.csv \
        --radiologists data/demo/test_readers/reader1.csv,data/demo/test_readers/reader2.csv,...
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cxr.cli import run_cli
from cxr.data.chexpert import META_COLUMNS
from cxr.data.demographics import RACE_GROUPS, race_group
from cxr.data.labels import LABELS
from cxr.errors import ConfigError, PipelineError


@dataclass
class DemoConfig:
    out: str = "data/demo"  # output folder; the data set goes to <out>/CheXpert-v1.0-small
    patients: int = 600  # training patients
    valid_patients: int = 120  # validation patients, numbered after the training ones
    max_studies: int = 3  # studies per patient, uniform in 1..max_studies
    seed: int = 0  # seeds everything: same seed and options, same files
    width: int = 320  # px, image width (CheXpert-small images are 320 px wide, portrait)
    height: int = 384  # px, image height
    lateral_fraction: float = 0.25  # fraction of studies that also get a lateral view
    uncertain_fraction: float = 0.15  # fraction of train positives labelled -1.0 (the faintest)
    uncertain_negatives: float = 0.01  # fraction of train negatives labelled -1.0
    blank_fraction: float = 0.6  # fraction of train negatives left blank ("not mentioned")
    jpeg_quality: int = 90  # JPEG quality, 0-100
    # patients (one study each) of a test set in CheXpert's test layout, with ground truth and
    # three readers; numbered after the valid ones; 0 = no test set
    test_patients: int = 100
    # planted bias: COLUMN=VALUE:FACTOR, e.g. Sex=Female:0.5 or Race=Black:0.7 (race_group's
    # groups); the findings of that group's patients are drawn at FACTOR (0 < FACTOR <= 1) of
    # their contrast, labels unchanged; several allowed
    bias: tuple[str, ...] = ()


FINDINGS = tuple(label for label in LABELS if label != "No Finding")
# Per-study probability of each drawn finding. CheXpert-like order, but rare findings are raised
# so that even the small validation set holds a dozen or more positives of each.
PREVALENCE = {
    "Enlarged Cardiomediastinum": 0.10, "Cardiomegaly": 0.15, "Lung Opacity": 0.12,
    "Lung Lesion": 0.08, "Edema": 0.15, "Consolidation": 0.10, "Pneumonia": 0.08,
    "Atelectasis": 0.15, "Pneumothorax": 0.10, "Pleural Effusion": 0.25, "Pleural Other": 0.07,
    "Fracture": 0.08, "Support Devices": 0.35,
}
# Drawn once per patient and kept in all their studies: splitting by image would leak them.
CHRONIC = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Pleural Other", "Fracture")
HEART_FAILURE = ("Edema", "Pleural Effusion")  # 1.8x likelier when the heart is enlarged
OPACITY_CHILDREN = ("Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis")
NAMED = {*PREVALENCE, *CHRONIC, *HEART_FAILURE, *OPACITY_CHILDREN}
if set(PREVALENCE) != set(FINDINGS) or not NAMED <= set(LABELS):  # a typo would pass silently
    raise ImportError("make_demo_data.py and config.LABELS disagree on the label names")


class Finding(NamedTuple):
    strength: float  # 0 = faintest trace .. 1 = most obvious; the faintest are labelled uncertain
    side: int  # -1 = viewer's left (patient's right), +1 = viewer's right, for one-sided findings


@dataclass
class Anatomy:
    """One chest, in fractions of the image: x of the width, y of the height."""
    half_width: float  # midline to the lateral lung border
    medial: float  # midline to the medial lung border
    apex_y: float  # top of the lungs
    cp_y: float  # costophrenic angles (lung bases)
    dome_h: float  # height of the diaphragm domes above the angles
    ctr: float  # cardiothoracic ratio: heart width / thoracic width
    mediastinum: float  # half width of the upper mediastinum
    lung_dark: float  # how much darker aerated lung is than soft tissue, in [0, 1] intensity
    dome_raise: tuple = (0.0, 0.0)  # volume loss (atelectasis), indexed by side > 0
    broken_rib: tuple | None = None  # (side, rib number, strength, step) of a rib fracture;
    # step: how far the lateral fragment is displaced downwards, as a fraction of the height


class Study(NamedTuple):
    split: str  # train, valid or test
    patient: int
    study: int
    sex: str
    age: int  # years
    ap_pa: str  # projection of the frontal view
    lateral: bool  # whether the study also has a lateral view
    anatomy: Anatomy  # the patient's chest as changed by this study's findings
    findings: dict  # label -> Finding: the traces drawn in this study's images
    labels: dict  # label -> CSV value: 1.0, 0.0, -1.0 or NaN (blank)
    race: str = "Unknown"  # PRIMARY_RACE, as CHEXPERT DEMO.xlsx writes it
    ethnicity: str = "Unknown"  # ETHNICITY, as CHEXPERT DEMO.xlsx writes it
    contrast: float = 1.0  # factor of the findings' contrast in the films (--bias), 1 = as drawn


# ---- demographics and the planted bias ----------------------------------------------------------

# (PRIMARY_RACE, ETHNICITY, share in %) as CHEXPERT DEMO.xlsx writes them, in CheXpert-like
# shares (grouped: White 53, Hispanic 15, Asian 14, unknown 6, Black 5, Other 5, Native
# American 2).
ORIGINS = (
    ("White", "Non-Hispanic/Non-Latino", 30.0), ("White, non-Hispanic", "Not Hispanic", 20.0),
    ("White", "Unknown", 3.0), ("White", "Hispanic/Latino", 3.0),
    ("White, Hispanic", "Hispanic/Latino", 2.0), ("Other, Hispanic", "Hispanic/Latino", 4.0),
    ("Other", "Hispanic/Latino", 6.0), ("Other", "Non-Hispanic/Non-Latino", 5.0),
    ("Asian", "Non-Hispanic/Non-Latino", 9.0), ("Asian, non-Hispanic", "Not Hispanic", 5.0),
    ("Black or African American", "Non-Hispanic/Non-Latino", 3.0),
    ("Black, non-Hispanic", "Not Hispanic", 2.0),
    ("Native Hawaiian or Other Pacific Islander", "Non-Hispanic/Non-Latino", 1.5),
    ("American Indian or Alaska Native", "Non-Hispanic/Non-Latino", 0.5),
    ("Unknown", "Unknown", 5.0), ("Patient Refused", "Patient Refused", 1.0),
)
BIAS_GROUPS = {"Sex": ("Male", "Female"), "Race": RACE_GROUPS}  # --bias COLUMN=VALUE


def patient_origin(seed: int, patient: int) -> tuple[str, str]:
    """A patient's (PRIMARY_RACE, ETHNICITY), from a random stream of its own (seed, 3, patient):
    the other streams, and so every other file, are the same as without it."""
    shares = np.array([share for *_, share in ORIGINS])
    race, ethnicity, _ = ORIGINS[np.random.default_rng([seed, 3, patient]).choice(
        len(ORIGINS), p=shares / shares.sum())]
    return race, ethnicity


class Bias(NamedTuple):
    column: str  # Sex or Race
    value: str  # Male/Female, or a race group
    factor: float  # of the findings' contrast, in (0, 1]


def parse_bias(spec: str) -> Bias:
    """COLUMN=VALUE:FACTOR (Sex=Female:0.5) as a Bias; ConfigError naming the spec if bad."""
    column, _, rest = spec.partition("=")
    value, _, factor_text = rest.rpartition(":")
    allowed = " or ".join(f"{name}={'|'.join(values)}" for name, values in BIAS_GROUPS.items())
    if column not in BIAS_GROUPS or value not in BIAS_GROUPS[column]:
        raise ConfigError(f"--bias {spec!r}: expected COLUMN=VALUE:FACTOR with COLUMN=VALUE one "
                          f"of {allowed}")
    try:
        factor = float(factor_text)
    except ValueError:
        factor = float("nan")
    if not 0.0 < factor <= 1.0:  # nan fails too
        raise ConfigError(f"--bias {spec!r}: FACTOR must be a number in (0, 1], e.g. "
                          f"{column}={value}:0.5")
    return Bias(column, value, factor)


def contrast_of(biases: tuple[str, ...], sex: str, race: str, ethnicity: str) -> float:
    """The factor of a patient's findings' contrast: the product of the factors of the --bias
    groups the patient is in; 1.0 (exactly) in none."""
    groups = {"Sex": sex, "Race": race_group(race, ethnicity)}
    contrast = 1.0
    for bias in map(parse_bias, biases):
        if groups[bias.column] == bias.value:
            contrast *= bias.factor
    return contrast


# ---- drawing helpers ----------------------------------------------------------------------------

class Film:
    """A float density image (brighter = denser) drawn in fractions of width (x) and height (y)."""

    def __init__(self, width: int, height: int, contrast: float = 1.0):
        self.w, self.h = width, height
        self.contrast = contrast  # factor of every finding's density (trace), not the anatomy's
        self.img = np.full((height, width), 0.04, np.float32)  # air around the body
        self.lungs = {}  # side -> aerated-lung mask, set by the anatomy, used to clip findings
        self.markings = None  # lung vessel texture as added, removed again by a pneumothorax

    def px(self, points) -> np.ndarray:
        return np.round(np.asarray(points, np.float32) * (self.w, self.h)).astype(np.int32)

    def thick(self, frac: float) -> int:
        """Line thickness in px (frac of the height), never under 3 px: must survive 128 px."""
        return max(3, round(frac * self.h))

    def layer(self) -> np.ndarray:
        return np.zeros_like(self.img)

    def ellipse(self, layer, x, y, ax, ay, angle=0.0):
        axes = (max(1, round(ax * self.w)), max(1, round(ay * self.h)))
        cv2.ellipse(layer, tuple(map(int, self.px((x, y)))), axes, angle, 0, 360, 1.0, -1)
        return layer

    def circle(self, layer, x, y, r):  # r as a fraction of the width
        return self.ellipse(layer, x, y, r, r * self.w / self.h)

    def rect(self, layer, x0, y0, x1, y1):
        return self.poly(layer, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def poly(self, layer, points, thickness=0):  # thickness 0 = filled polygon, else a polyline
        if thickness:
            cv2.polylines(layer, [self.px(points)], False, 1.0, thickness)
        else:
            cv2.fillPoly(layer, [self.px(points)], 1.0)
        return layer

    def blur(self, layer, frac: float) -> np.ndarray:
        return cv2.GaussianBlur(layer, (0, 0), frac * self.h)

    def add(self, layer, density: float, blur: float = 0.003) -> np.ndarray:
        """Add density x layer, softened by a Gaussian of blur x height; return the soft layer."""
        layer = self.blur(layer, blur) if blur else layer
        self.img += density * layer
        return layer

    def trace(self, layer, density: float, blur: float = 0.003) -> np.ndarray:
        """add() a finding's trace: its density scaled by the film's contrast (--bias)."""
        return self.add(layer, density * self.contrast, blur)


def smooth_noise(rng, film: Film, cells: int) -> np.ndarray:
    """Unit-variance noise whose features are about 1/cells of the image height."""
    small = rng.standard_normal((cells, max(2, round(cells * film.w / film.h))), dtype=np.float32)
    return cv2.resize(small, (film.w, film.h), interpolation=cv2.INTER_CUBIC)


def lung_frame(anat: Anatomy, side: int):
    """Lateral border x, medial border x, apex x and costophrenic y of one lung."""
    lateral, medial = 0.5 + side * anat.half_width, 0.5 + side * anat.medial
    apex_x = medial + 0.4 * (lateral - medial)
    cp = anat.cp_y + (0.015 if side > 0 else 0.0) - anat.dome_raise[side > 0]  # left dome lower
    return lateral, medial, apex_x, cp


def lateral_x(anat: Anatomy, side: int, y: float) -> float:
    """x of the lateral lung border at height y (a quarter ellipse from apex to angle)."""
    lateral, _, apex_x, cp = lung_frame(anat, side)
    c = np.clip((cp - y) / (cp - anat.apex_y), 0.0, 1.0)
    return apex_x + (lateral - apex_x) * np.sqrt(1 - c**2)


def lung_polygon(anat: Anatomy, side: int) -> np.ndarray:
    """Apex, lateral wall down to a sharp costophrenic angle, diaphragm dome, medial border."""
    lateral, medial, apex_x, cp = lung_frame(anat, side)
    t, u = np.linspace(0, np.pi / 2, 24), np.linspace(0, 1, 24)[1:]
    wall = np.stack([apex_x + (lateral - apex_x) * np.sin(t),
                     cp - (cp - anat.apex_y) * np.cos(t)], 1)
    dome = np.stack([lateral + (medial - lateral) * u,
                     cp - anat.dome_h * np.sin(np.pi * u**0.8)], 1)
    return np.concatenate([wall, dome, [(medial, anat.apex_y + 0.1)]])


def lung_point(anat: Anatomy, rng, side: int, y0: float, y1: float):
    """A random point well inside one lung, between heights y0 and y1."""
    y = rng.uniform(y0, y1)
    lateral, medial = lateral_x(anat, side, y), 0.5 + side * anat.medial
    return lateral + (medial - lateral) * rng.uniform(0.2, 0.7), y


# ---- the chest itself ---------------------------------------------------------------------------

def sample_anatomy(rng) -> Anatomy:
    u = rng.uniform
    return Anatomy(half_width=u(0.36, 0.40), medial=u(0.045, 0.06), apex_y=u(0.11, 0.15),
                   cp_y=u(0.76, 0.81), dome_h=u(0.07, 0.10), ctr=u(0.38, 0.47),
                   mediastinum=u(0.065, 0.085), lung_dark=u(0.26, 0.34))


def apply_findings(anat: Anatomy, findings: dict, rng, contrast: float = 1.0) -> Anatomy:
    """The anatomy as changed by the findings whose trace is anatomical; contrast (--bias)
    scales each change from normal: heart and mediastinum width, diaphragm lift, rib step."""
    def toward(normal: float, changed: float) -> float:  # exactly `changed` at contrast 1
        return changed if contrast == 1.0 else normal + contrast * (changed - normal)

    changes = {}
    if f := findings.get("Cardiomegaly"):
        changes["ctr"] = toward(anat.ctr, 0.55 + 0.1 * f.strength)
    if f := findings.get("Enlarged Cardiomediastinum"):
        changes["mediastinum"] = toward(anat.mediastinum, 0.115 + 0.05 * f.strength)
    if f := findings.get("Atelectasis"):  # volume loss pulls that hemidiaphragm up
        lift = toward(0.0, 0.02 + 0.025 * f.strength)
        changes["dome_raise"] = (lift, 0.0) if f.side < 0 else (0.0, lift)
    if f := findings.get("Fracture"):  # the lateral fragment is displaced downwards by a step
        step = toward(0.0, 0.02 + 0.015 * f.strength)
        changes["broken_rib"] = (f.side, int(rng.integers(2, 7)), f.strength, step)
    return replace(anat, **changes)


def draw_soft_tissue(film: Film, anat: Anatomy, rng) -> dict:
    """Body, lungs with vessel markings, mediastinum, heart, trachea; returns heart, mediastinum."""
    body = film.ellipse(film.layer(), 0.5, 0.7, anat.half_width + 0.1, 0.62)
    film.ellipse(body, 0.5, 0.22, 0.47, 0.1)  # shoulders
    film.rect(body, 0.39, 0, 0.61, 0.2)  # neck
    film.add(body, 0.45, blur=0.02)

    m, cp = anat.mediastinum, anat.cp_y
    outline = [(0.44, 0.08), (0.56, 0.08), (0.5 + m, 0.26), (0.5 + 0.8 * m, 0.5),
               (0.5 - 0.8 * m, 0.5), (0.5 - m, 0.26)]
    mediastinum = film.poly(film.layer(), outline)
    film.circle(mediastinum, 0.5 + m, 0.27, 0.035)  # aortic knob
    a = anat.ctr * anat.half_width  # heart half width, as ctr = heart width / thoracic width
    heart = film.ellipse(film.layer(), 0.5 + a / 3, cp - 0.11, a, 0.05 + 0.35 * a, angle=-12)
    heart[round((cp + 0.01) * film.h):] = 0  # a third right of the midline, on the diaphragm
    solid = np.maximum(film.blur(heart, 0.004), film.blur(mediastinum, 0.004))
    for side in (-1, 1):  # heart and mediastinum hide the lung behind them
        lung = film.poly(film.layer(), lung_polygon(anat, side))
        film.lungs[side] = film.blur(lung, 0.004) * (1 - solid)
    air = film.lungs[-1] + film.lungs[1]
    film.add(air, -anat.lung_dark, blur=0)
    film.add(solid, 0.05, blur=0)

    hila = film.layer()
    for side in (-1, 1):
        film.ellipse(hila, 0.5 + side * (anat.medial + 0.05), 0.45, 0.06, 0.08)
    hila = film.blur(hila, 0.06)
    film.add(hila * air, 0.08, blur=0)
    vessels = np.exp(-(smooth_noise(rng, film, 30) / 0.3) ** 2)  # zero crossings: branching lines
    film.markings = 0.08 * film.blur(vessels * air * (0.4 + hila), 0.002)
    film.img += film.markings
    trachea = film.poly(film.layer(), [(0.5, 0), (0.5, 0.31)], thickness=film.thick(0.04))
    film.add(trachea, -0.12, blur=0.008)
    film.add(film.ellipse(film.layer(), 0.7, cp + 0.07, 0.06, 0.03), -0.15, blur=0.01)  # stomach
    return {"heart": heart, "mediastinum": mediastinum}


def draw_bones(film: Film, anat: Anatomy, rng) -> dict:
    """Spine, clavicles and posterior ribs, one of them maybe broken; returns the fracture."""
    spine = film.rect(film.layer(), 0.455, 0, 0.545, 1)
    spine[np.arange(film.h) / film.h % 0.045 < 0.008] *= 0.6  # vertebral end plates
    film.add(spine, 0.09, blur=0.004)
    bones, fracture = film.layer(), film.layer()
    u, width = np.linspace(0, 1, 20), film.thick(0.016)
    for side in (-1, 1):
        clavicle = [(0.5 + side * 0.05, 0.17), (0.5 + side * 0.2, 0.135), (0.5 + side * 0.36, 0.12)]
        film.poly(bones, clavicle, thickness=film.thick(0.022))
        for rib in range(9):  # up from the spine, then curving down to the lateral wall
            y0 = anat.apex_y + 0.01 + rib * (anat.cp_y - anat.apex_y) / 9
            x = 0.5 + side * (0.04 + u * anat.half_width)
            pts = np.stack([x, y0 - 0.03 * np.sin(np.pi * u) + 0.08 * u**2], 1)
            if anat.broken_rib and anat.broken_rib[:2] == (side, rib):
                (*_, strength, step), k = anat.broken_rib, int(rng.integers(9, 15))
                film.poly(bones, pts[:k], thickness=width)
                film.poly(bones, pts[k + 1:] + (0, step), thickness=width)
                dx, dy = (pts[k + 1] - pts[k - 1]) * (film.w, film.h)  # callus along the rib
                film.ellipse(fracture, pts[k, 0], pts[k, 1] + step / 2, 0.045 + 0.015 * strength,
                             0.025, angle=np.degrees(np.arctan2(dy, dx)))
            else:
                film.poly(bones, pts, thickness=width)
    film.add(bones, 0.08)
    if not anat.broken_rib:
        return {}
    return {"fracture": film.trace(fracture, 0.15 + 0.1 * anat.broken_rib[2], blur=0.005)}


# ---- one drawing function per finding (frontal view) --------------------------------------------

def lung_opacity(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """One or two hazy, ill-defined patches in a lung."""
    haze = film.layer()
    for _ in range(rng.integers(1, 3)):
        x, y = lung_point(anat, rng, f.side, 0.25, 0.6)
        film.ellipse(haze, x, y, rng.uniform(0.06, 0.09), rng.uniform(0.05, 0.08))
    return film.trace(film.blur(haze, 0.03) * film.lungs[f.side], 0.14 + 0.1 * f.strength, blur=0)


def lung_lesion(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """One or two round, well-defined nodules."""
    nodules = film.layer()
    for _ in range(rng.integers(1, 3)):
        film.circle(nodules, *lung_point(anat, rng, f.side, 0.22, 0.62), 0.028 + 0.02 * f.strength)
    return film.trace(nodules, 0.22 + 0.15 * f.strength, blur=0.004)


def edema(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Bilateral perihilar ("bat wing") haze plus short horizontal septal (Kerley B) lines."""
    haze, lines = film.layer(), film.layer()
    for side in (-1, 1):
        film.ellipse(haze, 0.5 + side * (anat.medial + 0.09), 0.47, 0.09, 0.13)
        cp = lung_frame(anat, side)[3]
        for y in np.linspace(cp - 0.2, cp - 0.05, 5) + rng.uniform(-0.01, 0.01, 5):
            x = lateral_x(anat, side, y) - side * 0.008
            film.poly(lines, [(x, y), (x - side * 0.05, y)], thickness=film.thick(0.008))
    trace = film.blur(haze, 0.04) * (0.1 + 0.1 * f.strength) + lines * (0.12 + 0.1 * f.strength)
    return film.trace(trace * (film.lungs[-1] + film.lungs[1]), 1.0, blur=0.002)


def consolidation(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Dense lobar patch in a lower lung, crossed by dark air bronchograms."""
    patch, bronchi = film.layer(), film.layer()
    cp = lung_frame(anat, f.side)[3]
    x, y = lung_point(anat, rng, f.side, cp - 0.24, cp - 0.16)
    for _ in range(3):
        film.ellipse(patch, x + rng.uniform(-0.04, 0.04), y + rng.uniform(-0.03, 0.05),
                     rng.uniform(0.06, 0.09), rng.uniform(0.05, 0.08))
    for dx in (-0.04, 0.04):
        film.poly(bronchi, [(x, y - 0.05), (x + dx, y + 0.06)], thickness=film.thick(0.008))
    patch = film.blur(patch, 0.006) * film.lungs[f.side]
    density = anat.lung_dark * (0.75 + 0.25 * f.strength)  # fills the air spaces: near soft tissue
    return film.trace(patch * (density - 0.1 * film.blur(bronchi, 0.003)), 1.0, blur=0)


def pneumonia(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Several patchy, fluffy blotches clustered in one lung."""
    blotches = film.layer()
    x, y = lung_point(anat, rng, f.side, 0.3, 0.6)
    for _ in range(rng.integers(5, 9)):
        film.circle(blotches, x + rng.normal(0, 0.04), y + rng.normal(0, 0.05),
                    rng.uniform(0.025, 0.04))
    blotches = film.blur(blotches, 0.006) * film.lungs[f.side]
    return film.trace(blotches, 0.2 + 0.12 * f.strength, blur=0)


def atelectasis(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Plate-like band in a lower lung (apply_findings raises the hemidiaphragm)."""
    y = lung_frame(anat, f.side)[3] - rng.uniform(0.09, 0.14)
    x0 = lateral_x(anat, f.side, y) - f.side * 0.02
    x1 = x0 - f.side * rng.uniform(0.14, 0.2)
    band = film.poly(film.layer(), [(x0, y), (x1, y + rng.uniform(-0.025, 0.025))],
                     thickness=film.thick(0.014 + 0.008 * f.strength))
    return film.trace(band * film.lungs[f.side], 0.25 + 0.12 * f.strength)


def pneumothorax(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Apical pocket of air without lung markings, bordered by the bright visceral pleural line."""
    _, medial, _, cp = lung_frame(anat, f.side)
    hilum = np.array([medial, 0.5 * (anat.apex_y + cp)])
    lung = lung_polygon(anat, f.side)
    collapsed = hilum + (0.85 - 0.12 * f.strength) * (lung - hilum)  # shrunk towards the hilum
    pocket = np.clip(film.poly(film.layer(), lung) - film.poly(film.layer(), collapsed), 0, 1)
    pocket[round(hilum[1] * film.h):] = 0  # only the apex and the upper lateral part
    line = film.poly(film.layer(), collapsed, thickness=film.thick(0.008))
    line *= cv2.dilate(pocket, np.ones((5, 5), np.uint8))  # the pleural line borders the pocket
    film.img -= film.blur(pocket, 0.003) * film.markings * film.contrast  # none beyond the line
    film.trace(pocket, -0.04 - 0.05 * f.strength)
    film.trace(line, 0.14 + 0.1 * f.strength)
    return np.maximum(pocket, line)


def pleural_effusion(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Homogeneous fluid at a lung base: meniscus rising along the wall, angle blunted."""
    lateral, medial, _, cp = lung_frame(anat, f.side)
    level, u = cp - 0.05 - 0.12 * f.strength, np.linspace(0, 1, 20)
    meniscus = np.stack([lateral + (medial - lateral) * u, level - 0.05 * (1 - u) ** 2], 1)
    wall = lateral + f.side * 0.02
    fluid = film.poly(film.layer(), [(wall, level - 0.05), *meniscus, (medial, 1), (wall, 1)])
    density = anat.lung_dark * (0.7 + 0.25 * f.strength)  # replaces the air: near soft tissue
    return film.trace(fluid * film.lungs[f.side], density, blur=0.004)


def pleural_other(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Pleural thickening: one or two bright lens-shaped plaques along a lateral chest wall."""
    plaques = film.layer()
    for y in rng.uniform(0.3, 0.6, rng.integers(1, 3)):
        x = lateral_x(anat, f.side, y) - f.side * 0.008
        film.ellipse(plaques, x, y, 0.02 + 0.012 * f.strength, 0.07 + 0.04 * f.strength)
    return film.trace(plaques, 0.25 + 0.12 * f.strength)


def support_devices(film: Film, anat: Anatomy, rng, f: Finding) -> np.ndarray:
    """Radio-opaque devices: endotracheal tube, central line and/or pacemaker with its lead."""
    metal, width = film.layer(), film.thick(0.008 + 0.006 * f.strength)
    kinds = rng.permutation(["tube", "line", "pacemaker"])[: rng.integers(1, 3)]
    if "tube" in kinds:
        film.poly(metal, [(0.505, 0), (0.5, 0.15), (0.497, anat.apex_y + 0.17)], thickness=width)
    if "line" in kinds:  # right subclavian vein into the superior vena cava
        film.poly(metal, [(0.18, 0.13), (0.35, 0.16), (0.45, 0.22), (0.47, 0.42)], thickness=width)
    if "pacemaker" in kinds:
        x, y = rng.uniform(0.7, 0.78), rng.uniform(0.17, 0.22)
        film.rect(metal, x - 0.05, y - 0.03, x + 0.05, y + 0.03)
        lead = [(x - 0.03, y), (0.6, 0.27), (0.52, 0.38), (0.56, anat.cp_y - 0.08)]
        film.poly(metal, lead, thickness=film.thick(0.008))
    return film.trace(metal, 0.35 + 0.25 * f.strength, blur=0.002)


FRONTAL_TRACES = {
    "Lung Opacity": lung_opacity, "Lung Lesion": lung_lesion, "Edema": edema,
    "Consolidation": consolidation, "Pneumonia": pneumonia, "Atelectasis": atelectasis,
    "Pneumothorax": pneumothorax, "Pleural Effusion": pleural_effusion,
    "Pleural Other": pleural_other, "Support Devices": support_devices,
}
# Findings drawn by the anatomy itself; their box is that part's.
ANATOMY_TRACES = {"Cardiomegaly": "heart", "Enlarged Cardiomediastinum": "mediastinum",
                  "Fracture": "fracture"}


def render_frontal(film: Film, anat: Anatomy, findings: dict, rng) -> dict:
    """Draw a frontal film; return label -> trace layer of every finding drawn."""
    parts = {**draw_soft_tissue(film, anat, rng), **draw_bones(film, anat, rng)}
    return {label: parts[ANATOMY_TRACES[label]] if label in ANATOMY_TRACES
            else FRONTAL_TRACES[label](film, anat, rng, f) for label, f in findings.items()}


def render_lateral(film: Film, anat: Anatomy, findings: dict, rng) -> dict:
    """Side view, patient facing the viewer's left: spine behind, heart in front, one lung field.

    Only heart size, posterior effusion and devices show here; the labels are the study's.
    """
    body = film.ellipse(film.layer(), 0.5, 0.68, 0.4, 0.6)
    film.add(film.poly(body, [(0.35, 0), (0.7, 0), (0.75, 0.2), (0.3, 0.2)]), 0.45, blur=0.02)
    cp, u = anat.cp_y, np.linspace(0, 1, 24)
    base = cp - 0.04 + 0.1 * u  # the diaphragm slopes down to the posterior sulcus
    top = np.stack([0.2 + 0.6 * u, base - (base - anat.apex_y) * np.sin(np.pi * u) ** 0.5], 1)
    floor = np.stack([0.8 - 0.6 * u, base[::-1] - 0.07 * np.sin(np.pi * u)], 1)
    r = 0.12 * anat.ctr / 0.42  # the heart grows with the frontal cardiothoracic ratio
    heart = film.blur(film.ellipse(film.layer(), 0.2 + r, cp - 0.12, r, r * 1.1), 0.004)
    lung = film.blur(film.poly(film.layer(), np.concatenate([top, floor])), 0.004) * (1 - heart)
    film.add(lung, -anat.lung_dark, blur=0)
    film.add(heart, 0.05, blur=0)
    sternum = [(0.16, 0.2), (0.13, 0.55)]
    bones = film.poly(film.layer(), sternum, thickness=film.thick(0.02))
    for y in np.arange(0.08, 1, 0.05):  # vertebral bodies
        film.rect(bones, 0.77, y, 0.87, y + 0.038)
    film.add(bones, 0.12)

    traces = {"Cardiomegaly": heart} if "Cardiomegaly" in findings else {}
    if f := findings.get("Pleural Effusion"):  # fluid collects in the posterior costophrenic sulcus
        level = cp - 0.03 - 0.1 * f.strength
        fluid = film.poly(film.layer(), [(0.5, 1), (0.5, level + 0.04), (0.65, level + 0.01),
                                         (0.85, level - 0.03), (0.85, 1)])
        density = anat.lung_dark * (0.7 + 0.25 * f.strength)
        traces["Pleural Effusion"] = film.trace(fluid * lung, density)
    if f := findings.get("Support Devices"):
        tube = [(0.45, 0), (0.44, 0.15), (0.42, 0.3)]
        metal = film.poly(film.layer(), tube, thickness=film.thick(0.01))
        film.rect(metal, 0.18, 0.2, 0.26, 0.25)  # pacemaker
        traces["Support Devices"] = film.trace(metal, 0.35 + 0.25 * f.strength, blur=0.002)
    return traces


# ---- exposure and annotation boxes --------------------------------------------------------------

def expose(film: Film, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random pose, exposure and noise, as 8-bit; returns the image and the 2x3 pose matrix.

    The pose (rotation, scale, shift) keeps a model from relying on exact pixel positions.
    """
    w, h = film.w, film.h
    pose = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-5, 5), rng.uniform(0.92, 1.06))
    pose[:, 2] += rng.uniform(-0.04, 0.04, 2) * (w, h)
    img = cv2.warpAffine(film.img, pose, (w, h), borderMode=cv2.BORDER_REPLICATE)
    img += 0.04 * smooth_noise(rng, film, 3)  # uneven exposure
    img = np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1)
    img = img ** rng.uniform(0.8, 1.25)  # contrast curve
    img += rng.uniform(0.005, 0.02) * rng.standard_normal(img.shape, dtype=np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), pose


def trace_box(trace: np.ndarray, pose: np.ndarray, film: Film) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1) of where a trace is at least 30% of its peak, after the pose."""
    ys, xs = np.nonzero(trace > 0.3 * trace.max())
    if len(xs) == 0:  # nothing of the trace is left inside the lungs (possible at odd sizes)
        return None
    corners = np.array([[x, y, 1.0] for x in (xs.min(), xs.max()) for y in (ys.min(), ys.max())])
    corners = corners @ pose.T
    x0, y0 = np.clip(corners.min(0), 0, (film.w - 1, film.h - 1)).round().astype(int)
    x1, y1 = np.clip(corners.max(0), 0, (film.w - 1, film.h - 1)).round().astype(int)
    return int(x0), int(y0), int(x1), int(y1)


# ---- patients, studies and CheXpert-style labels ------------------------------------------------

def draw_findings(rng, labels, found: dict) -> dict:
    """Add each label with its prevalence (heart-failure findings likelier with Cardiomegaly)."""
    found = dict(found)
    for label in labels:
        boost = 1.8 if label in HEART_FAILURE and "Cardiomegaly" in found else 1.0
        if rng.random() < PREVALENCE[label] * boost:
            found[label] = Finding(float(rng.random()), int(rng.choice([-1, 1])))
    return found


def csv_labels(findings: dict, split: str, cfg: DemoConfig, rng) -> dict:
    """Label values as CheXpert writes them: 1.0/0.0/-1.0/blank (NaN) in train, 0.0/1.0 in valid."""
    values = {}
    for label in FINDINGS:
        f, r = findings.get(label), rng.random()
        if split == "valid":
            values[label] = float(f is not None)
        elif f is not None:  # the report hedges about the faintest traces
            values[label] = -1.0 if f.strength < cfg.uncertain_fraction else 1.0
        elif r < cfg.uncertain_negatives:
            values[label] = -1.0
        else:
            values[label] = np.nan if r < cfg.uncertain_negatives + cfg.blank_fraction else 0.0
    return with_hierarchy(values, split)


def with_hierarchy(values: dict, split: str) -> dict:
    """The findings' values plus CheXpert's rules: each sub-finding is also a Lung Opacity
    (positive beats uncertain); No Finding is 1 when nothing but devices is present, else 0
    (valid) or blank (train)."""
    family = [values[label] for label in ("Lung Opacity", *OPACITY_CHILDREN)]
    if 1.0 in family or -1.0 in family:
        values["Lung Opacity"] = 1.0 if 1.0 in family else -1.0
    abnormal = any(values[label] in (1.0, -1.0) for label in FINDINGS if label != "Support Devices")
    values["No Finding"] = 1.0 if not abnormal else 0.0 if split == "valid" else np.nan
    return values


def plan_patient(cfg: DemoConfig, rng, split: str, patient: int, max_studies: int
                 ) -> list[Study]:
    """One patient's studies (1 to max_studies): demographics, anatomy, findings and labels.

    The findings' contrast (--bias) changes the films only; the labels are the findings'."""
    acute = [label for label in FINDINGS if label not in CHRONIC]
    labelled_as = "train" if split == "train" else "valid"  # test: radiologists' 0/1, as valid
    sex, age = str(rng.choice(["Male", "Female"])), int(rng.integers(18, 89))
    race, ethnicity = patient_origin(cfg.seed, patient)  # a stream of its own
    contrast = contrast_of(cfg.bias, sex, race, ethnicity)
    chronic = draw_findings(rng, CHRONIC, {})
    # same heart, rib, ... in each study
    anat = apply_findings(sample_anatomy(rng), chronic, rng, contrast)
    studies = []
    for study in range(1, int(rng.integers(1, max_studies + 1)) + 1):
        findings = draw_findings(rng, acute, chronic)
        new = {label: f for label, f in findings.items() if label not in CHRONIC}
        # portable (AP) films are the rule in intensive care, where patients carry devices
        p_ap = 0.85 if "Support Devices" in findings else 0.5
        ap_pa = "AP" if rng.random() < p_ap else "PA"
        lateral = bool(rng.random() < cfg.lateral_fraction)
        studies.append(Study(split, patient, study, sex, min(90, age + study - 1), ap_pa,
                             lateral, apply_findings(anat, new, rng, contrast), findings,
                             csv_labels(findings, labelled_as, cfg, rng), race, ethnicity,
                             contrast))
    return studies


def plan_studies(cfg: DemoConfig, rng) -> list[Study]:
    """All train and valid patients and their studies."""
    return [s for patient in range(1, cfg.patients + cfg.valid_patients + 1)
            for s in plan_patient(cfg, rng, "train" if patient <= cfg.patients else "valid",
                                  patient, cfg.max_studies)]


def plan_test_studies(cfg: DemoConfig, rng) -> list[Study]:
    """The test patients, numbered after the valid ones, with one study each."""
    first = cfg.patients + cfg.valid_patients + 1
    return [s for patient in range(first, first + cfg.test_patients)
            for s in plan_patient(cfg, rng, "test", patient, 1)]


# ---- synthetic readers of the test set ----------------------------------------------------------

class Reader(NamedTuple):
    threshold: float  # calls a finding when its strength + noise exceeds this (strength 0..1)
    noise: float  # standard deviation of the reader's noise on the strength
    false_positive: float  # probability of calling a finding that is not there


READERS = (Reader(0.15, 0.10, 0.03), Reader(0.25, 0.15, 0.05), Reader(0.35, 0.20, 0.07))


def reader_reads(s: Study, reader: Reader, rng) -> dict:
    """A reader's 0/1 read of every label of a study, with CheXpert's hierarchy on the reads."""
    reads = {}
    for label in FINDINGS:
        f = s.findings.get(label)
        if f is None:
            reads[label] = float(rng.random() < reader.false_positive)
        else:
            reads[label] = float(f.strength + reader.noise * rng.standard_normal()
                                 > reader.threshold)
    return with_hierarchy(reads, "valid")


def check_config(cfg: DemoConfig) -> None:
    if min(cfg.patients, cfg.valid_patients, cfg.max_studies) < 1:
        raise ConfigError("--patients, --valid_patients and --max_studies must be at least 1")
    if cfg.test_patients < 0:
        raise ConfigError(f"--test_patients must be at least 0 (0 = no test set), got "
                          f"{cfg.test_patients}")
    if min(cfg.width, cfg.height) < 64:
        raise ConfigError("--width and --height must be at least 64 px")
    for name in ("lateral_fraction", "uncertain_fraction", "uncertain_negatives", "blank_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"--{name} must be between 0 and 1, got {getattr(cfg, name)}")
    if cfg.uncertain_negatives + cfg.blank_fraction > 1.0:
        raise ConfigError("--uncertain_negatives + --blank_fraction must be at most 1")
    groups = [parse_bias(spec)[:2] for spec in cfg.bias]
    if len(set(groups)) < len(groups):
        raise ConfigError(f"--bias names a group twice: {', '.join(cfg.bias)}")


# ---- main ---------------------------------------------------------------------------------------

# Findings that, below this strength, show only on the lateral film of a study that has one:
# a small effusion fills the posterior costophrenic sulcus (seen on the lateral view) before it
# blunts the lateral angle of the frontal view. This gives study mode (view fusion) something
# to find that a frontal-only model cannot see.
LATERAL_ONLY_BELOW = {"Pleural Effusion": 0.5}


def frontal_findings(s: Study) -> dict:
    if not s.lateral:
        return s.findings
    return {label: f for label, f in s.findings.items()
            if f.strength >= LATERAL_ONLY_BELOW.get(label, 0.0)}


def make_image(s: Study, view: str, cfg: DemoConfig, rng) -> tuple[np.ndarray, dict]:
    """One 8-bit film of a study, and the pixel box of each finding drawn on it."""
    film = Film(cfg.width, cfg.height, s.contrast)
    if view == "Frontal":
        traces = render_frontal(film, s.anatomy, frontal_findings(s), rng)
    else:
        traces = render_lateral(film, s.anatomy, s.findings, rng)
    img, pose = expose(film, rng)
    boxes = {label: trace_box(trace, pose, film) for label, trace in traces.items()}
    return img, {label: box for label, box in boxes.items() if box is not None}


def views_of(studies: list[Study]) -> list[tuple[Study, str]]:
    """(study, view) of every film: a frontal, and a lateral for the studies that have one."""
    return [(s, view) for s in studies
            for view in (("Frontal", "Lateral") if s.lateral else ("Frontal",))]


def study_folder(s: Study, release: str = "CheXpert-v1.0-small") -> str:
    """CheXpert-v1.0-small/train/patient00001/study1: the release's folder, then the split's."""
    return f"{release}/{s.split}/patient{s.patient:05d}/study{s.study}"


def film_path(s: Study, view: str, release: str = "CheXpert-v1.0-small") -> str:
    name = "view1_frontal.jpg" if view == "Frontal" else "view2_lateral.jpg"
    return f"{study_folder(s, release)}/{name}"


def write_jpeg(path: Path, img: np.ndarray, cfg: DemoConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
        raise PipelineError(f"could not write {path}")


def write_test_set(cfg: DemoConfig, out: Path) -> list[Study]:
    """The test patients' films in CheXpert's test layout (<out>/CheXpert-v1.0/test/), their
    ground truth as groundtruth.csv and three readers' reads; returns the test studies.

    Everything here comes from random streams of its own, seeded by --seed: the train and valid
    files do not change with --test_patients.
    """
    rng = np.random.default_rng([cfg.seed, 1])
    studies = plan_test_studies(cfg, rng)
    views = views_of(studies)
    for s, view in tqdm(views, desc="make_demo_data test", unit="img"):
        img, _ = make_image(s, view, cfg, rng)
        write_jpeg(out / film_path(s, view, "CheXpert-v1.0"), img, cfg)
    keys = [study_folder(s, "CheXpert-v1.0") for s in studies]

    def table(values: list[dict]) -> pd.DataFrame:  # groundtruth.csv's format: Study, 0/1 ints
        frame = pd.DataFrame([[int(v[label]) for label in LABELS] for v in values],
                             columns=list(LABELS))
        frame.insert(0, "Study", keys)
        return frame

    table([s.labels for s in studies]).to_csv(out / "test_groundtruth.csv", index=False)
    (out / "test_readers").mkdir(parents=True, exist_ok=True)
    for number, reader in enumerate(READERS, start=1):
        reader_rng = np.random.default_rng([cfg.seed, 2, number])
        reads = [reader_reads(s, reader, reader_rng) for s in studies]
        table(reads).to_csv(out / "test_readers" / f"reader{number}.csv", index=False)
    return studies


def demographics(studies: list[Study]) -> pd.DataFrame:
    """CHEXPERT DEMO.xlsx's table: one row per patient, the age at the first study."""
    first = {s.patient: s for s in studies if s.study == 1}
    return pd.DataFrame([(f"patient{p:05d}", s.sex, s.age, s.race, s.ethnicity)
                         for p, s in sorted(first.items())],
                        columns=["PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY"])


def main(cfg: DemoConfig) -> None:
    check_config(cfg)
    out = Path(cfg.out)
    root = out / "CheXpert-v1.0-small"
    if (root / "train.csv").exists() and not (out / "annotations.csv").exists():
        raise PipelineError(f"{root} holds a train.csv this script did not write (the real "
                            "CheXpert?); choose another --out")
    ours = (out / "test_groundtruth.csv").exists() or (out / "annotations.csv").exists()
    if cfg.test_patients and (out / "CheXpert-v1.0" / "test").exists() and not ours:
        raise PipelineError(f"{out / 'CheXpert-v1.0' / 'test'} exists and this script did not "
                            "write it (the real CheXpert test set?); choose another --out")
    rng = np.random.default_rng(cfg.seed)
    rows, annotations = {"train": [], "valid": []}, []
    studies = plan_studies(cfg, rng)
    for s, view in tqdm(views_of(studies), desc="make_demo_data", unit="img"):
        path = film_path(s, view)
        img, boxes = make_image(s, view, cfg, rng)
        write_jpeg(out / path, img, cfg)
        ap_pa = s.ap_pa if view == "Frontal" else "LL" if rng.random() < 0.1 else ""  # mostly blank
        labels = [s.labels[label] for label in LABELS]
        rows[s.split].append([path, s.sex, s.age, view, ap_pa, *labels])
        annotations += [(path, label, *box) for label, box in boxes.items()]

    for split, split_rows in rows.items():
        frame = pd.DataFrame(split_rows, columns=[*META_COLUMNS, *LABELS])
        frame.to_csv(root / f"{split}.csv", index=False)
    pd.DataFrame(annotations, columns=["Path", "label", "x0", "y0", "x1", "y1"]).to_csv(
        out / "annotations.csv", index=False)
    test_studies = write_test_set(cfg, out) if cfg.test_patients else []
    demographics(studies + test_studies).to_csv(out / "demographics.csv", index=False)
    n_test = len(views_of(test_studies))
    test = (f", {n_test:,} test images ({cfg.test_patients:,} patients, one study each) to "
            f"{out / 'CheXpert-v1.0' / 'test'} with their labels in "
            f"{out / 'test_groundtruth.csv'} and {len(READERS)} readers' reads in "
            f"{out / 'test_readers'}/") if cfg.test_patients else ""
    n_train, n_valid = len(rows["train"]), len(rows["valid"])
    print(f"make_demo_data: wrote {n_train:,} train + {n_valid:,} valid images "
          f"({cfg.patients:,} + {cfg.valid_patients:,} patients) to {root}, "
          f"finding boxes to {out / 'annotations.csv'}{test}, every patient's sex, age, race and "
          f"ethnicity to {out / 'demographics.csv'}"
          + (f"; findings fainter for {', '.join(cfg.bias)}" if cfg.bias else ""))


if __name__ == "__main__":
    run_cli(main, script="make_demo_data.py", defaults=DemoConfig())
