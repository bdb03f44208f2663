"""make_demo_data.py --bias: a planted underdiagnosis bias (fainter findings in one group, the
labels unchanged) that touches nothing outside the group, and demographics.csv in the layout of
CheXpert's CHEXPERT DEMO.xlsx."""

from __future__ import annotations

import filecmp

import numpy as np
import pandas as pd
import pytest

import make_demo_data
from cxr.cli import parse_args, run_cli
from cxr.data.demographics import race_group
from cxr.errors import ConfigError
from make_demo_data import DemoConfig, Film, Finding

TINY = {"patients": 6, "valid_patients": 3, "test_patients": 4, "width": 64, "height": 80,
        "seed": 1, "lateral_fraction": 0.5}
BIAS = ("Sex=Female:0.5", "Race=Hispanic:0.8")
SAME_FILES = ("CheXpert-v1.0-small/train.csv", "CheXpert-v1.0-small/valid.csv",
              "test_groundtruth.csv", "test_readers/reader1.csv", "test_readers/reader2.csv",
              "test_readers/reader3.csv", "demographics.csv")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """(without --bias, with --bias BIAS): the same tiny demo twice."""
    root = tmp_path_factory.mktemp("bias")
    make_demo_data.main(DemoConfig(out=str(root / "plain"), **TINY))
    make_demo_data.main(DemoConfig(out=str(root / "biased"), bias=BIAS, **TINY))
    return root / "plain", root / "biased"


def patient_of(path) -> str:
    return next(part for part in path.parts if part.startswith("patient"))


def test_bias_changes_only_the_groups_films(demos):
    plain, biased = demos
    demo = pd.read_csv(plain / "demographics.csv", keep_default_na=False).set_index("PATIENT")
    in_group = {patient for patient, row in demo.iterrows() if row.GENDER == "Female"
                or race_group(row.PRIMARY_RACE, row.ETHNICITY) == "Hispanic"}
    films = sorted(p.relative_to(plain) for p in plain.rglob("*.jpg"))
    assert films == sorted(p.relative_to(biased) for p in biased.rglob("*.jpg"))
    changed = {film for film in films if not filecmp.cmp(plain / film, biased / film,
                                                         shallow=False)}
    assert {patient_of(film) for film in changed} <= in_group  # nobody else's film changes
    for split in ("CheXpert-v1.0-small/train", "CheXpert-v1.0-small/valid", "CheXpert-v1.0/test"):
        patients = {patient_of(film) for film in films if film.as_posix().startswith(split)}
        assert patients & in_group and patients - in_group, split  # both in this split (seed 1)
        assert any(film.as_posix().startswith(split) for film in changed), split

    # the labels, the ground truth, the readers' reads and the demographics are the same
    for name in SAME_FILES:
        assert filecmp.cmp(plain / name, biased / name, shallow=False), name
    # the finding boxes outside the group too (a fainter heart is also a smaller one)
    boxes = [pd.read_csv(folder / "annotations.csv") for folder in demos]
    outside = [b[~b["Path"].str.extract(r"(patient\d+)")[0].isin(in_group)] for b in boxes]
    assert len(outside[0]) and outside[0].reset_index(drop=True).equals(
        outside[1].reset_index(drop=True))


def drawn(trace, contrast: float, finding: Finding, view: str = "Frontal") -> np.ndarray:
    """The density a finding adds to a film: the film with it minus the film without it."""
    anat = make_demo_data.sample_anatomy(np.random.default_rng(1))
    films = []
    for findings in ({}, {trace: finding}):
        film, rng = Film(96, 112, contrast), np.random.default_rng(2)
        if view == "Frontal":
            make_demo_data.draw_soft_tissue(film, anat, rng)
            make_demo_data.draw_bones(film, anat, rng)
            if findings:
                make_demo_data.FRONTAL_TRACES[trace](film, anat, rng, finding)
        else:
            make_demo_data.render_lateral(film, anat, findings, rng)
        films.append(film.img)
    return films[1] - films[0]


@pytest.mark.parametrize("view, label", [
    *(("Frontal", label) for label in make_demo_data.FRONTAL_TRACES),
    ("Lateral", "Pleural Effusion"), ("Lateral", "Support Devices")])
def test_a_findings_trace_has_the_factor_of_its_contrast(view, label):
    finding = Finding(0.6, 1)
    full, half = drawn(label, 1.0, finding, view), drawn(label, 0.5, finding, view)
    assert np.abs(full).sum() > 1.0  # the finding is drawn
    assert np.abs(half).sum() / np.abs(full).sum() == pytest.approx(0.5, abs=0.01)
    assert np.allclose(half, 0.5 * full, atol=1e-5)


def test_anatomical_findings_change_by_the_factor_of_their_change():
    normal = make_demo_data.sample_anatomy(np.random.default_rng(1))
    findings = {label: Finding(0.6, -1) for label in
                ("Cardiomegaly", "Enlarged Cardiomediastinum", "Atelectasis", "Fracture")}
    full, half = (make_demo_data.apply_findings(normal, findings, np.random.default_rng(3), c)
                  for c in (1.0, 0.5))
    for name in ("ctr", "mediastinum"):
        change = getattr(full, name) - getattr(normal, name)
        assert change > 0.02 and getattr(half, name) - getattr(normal, name) == \
            pytest.approx(0.5 * change)
    assert half.dome_raise[0] == pytest.approx(0.5 * full.dome_raise[0]) and full.dome_raise[0]
    assert half.broken_rib[:3] == full.broken_rib[:3]  # same rib, same strength
    assert half.broken_rib[3] == pytest.approx(0.5 * full.broken_rib[3])  # half the step
    # the callus over the break is a finding's trace too
    films = [Film(96, 112, c) for c in (1.0, 0.5)]
    callus = [make_demo_data.draw_bones(film, anat, np.random.default_rng(4))["fracture"]
              for film, anat in zip(films, (full, full))]
    assert np.array_equal(callus[0], callus[1])  # the same place, half the density
    callus_density = 0.15 + 0.1 * 0.6
    assert np.allclose(films[0].img - films[1].img, 0.5 * callus_density * callus[0], atol=1e-5)


def test_contrast_of_multiplies_the_groups_factors():
    biases = ("Sex=Female:0.5", "Race=Black:0.5")
    assert make_demo_data.contrast_of(biases, "Female", "Black, non-Hispanic", "Not Hispanic") \
        == pytest.approx(0.25)
    assert make_demo_data.contrast_of(biases, "Male", "Black or African American",
                                      "Non-Hispanic/Non-Latino") == pytest.approx(0.5)
    assert make_demo_data.contrast_of(biases, "Male", "White", "Hispanic/Latino") == 1.0
    assert make_demo_data.contrast_of((), "Female", "Asian", "Unknown") == 1.0


def test_demographics_has_every_patient_once(demos):
    plain, _ = demos
    demo = pd.read_csv(plain / "demographics.csv", keep_default_na=False)
    assert list(demo.columns) == ["PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY"]
    n = TINY["patients"] + TINY["valid_patients"] + TINY["test_patients"]
    assert demo["PATIENT"].tolist() == [f"patient{k:05d}" for k in range(1, n + 1)]
    on_disk = {patient_of(p.relative_to(plain)) for p in plain.rglob("*.jpg")}
    assert on_disk == set(demo["PATIENT"])
    # GENDER and AGE_AT_CXR are train.csv's and valid.csv's Sex and first study's Age
    rows = pd.concat([pd.read_csv(plain / "CheXpert-v1.0-small" / f"{split}.csv")
                      for split in ("train", "valid")])
    rows["PATIENT"] = rows["Path"].str.extract(r"(patient\d+)")[0]
    first = rows[rows["Path"].str.contains("/study1/")].groupby("PATIENT").first()
    by_patient = demo.set_index("PATIENT")
    assert (rows.groupby("PATIENT")["Sex"].nunique() == 1).all()
    assert (by_patient.loc[first.index, "GENDER"] == first["Sex"]).all()
    assert (by_patient.loc[first.index, "AGE_AT_CXR"] == first["Age"]).all()
    cfg = DemoConfig(**TINY)
    test = make_demo_data.plan_test_studies(cfg, np.random.default_rng([cfg.seed, 1]))
    assert [s.sex for s in test] == by_patient["GENDER"].tolist()[-TINY["test_patients"]:]
    origins = {(race, ethnicity) for race, ethnicity, _ in make_demo_data.ORIGINS}
    assert set(zip(demo["PRIMARY_RACE"], demo["ETHNICITY"])) <= origins


@pytest.mark.parametrize("race, ethnicity, group", [
    ("White", "Non-Hispanic/Non-Latino", "White"),
    ("White, non-Hispanic", "Not Hispanic", "White"),
    ("White, Hispanic", "Hispanic/Latino", "Hispanic"),
    ("White", "Hispanic/Latino", "Hispanic"),  # ethnicity first
    ("Other, Hispanic", "Unknown", "Hispanic"),
    ("Black or African American", "Non-Hispanic/Non-Latino", "Black"),
    ("Black, non-Hispanic", "Not Hispanic", "Black"),
    ("Asian", "Non-Hispanic/Non-Latino", "Asian"),
    ("Asian, non-Hispanic", "Not Hispanic", "Asian"),
    ("Native Hawaiian or Other Pacific Islander", "Non-Hispanic/Non-Latino", "Native American"),
    ("American Indian or Alaska Native", "Not Hispanic", "Native American"),
    ("Pacific Islander, non-Hispanic", "Not Hispanic", "Native American"),
    ("Other", "Non-Hispanic/Non-Latino", "Other"),
    ("Other, non-Hispanic", "Not Hispanic", "Other"),
    ("Unknown", "Unknown", "unknown"),
    ("Patient Refused", "Patient Refused", "unknown"),
    ("Declined", "Unknown", "unknown"),
    ("", "", "unknown"),
    (float("nan"), float("nan"), "unknown"),  # a blank cell as pandas reads it
])
def test_race_group_of_chexpert_strings(race, ethnicity, group):
    assert race_group(race, ethnicity) == group


def test_bias_specs_from_the_command_line(tmp_path, capsys):
    cfg = parse_args(["--bias", "Sex=Female:0.5,Race=Black:0.7"], "make_demo_data.py",
                     defaults=DemoConfig())
    assert cfg.bias == ("Sex=Female:0.5", "Race=Black:0.7")
    for spec, message in [("Sex=female:0.5", "Sex=Male|Female"), ("Race=Latino:0.5", "Race="),
                          ("Age=old:0.5", "COLUMN=VALUE:FACTOR"), ("Sex=Male", "FACTOR"),
                          ("Sex=Male:0", "(0, 1]"), ("Sex=Male:1.5", "(0, 1]"),
                          ("Race=Asian:half", "(0, 1]"), ("Sex=Male:0.5,Sex=Male:0.7", "twice")]:
        with pytest.raises(SystemExit) as stop:
            run_cli(make_demo_data.main, "make_demo_data.py",
                    ["--out", str(tmp_path / "bad"), "--bias", spec], defaults=DemoConfig())
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.count("\n") == 1 and message in error, spec
        assert spec.split(",")[0] in error
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    with pytest.raises(ConfigError, match="Race=Other:-1"):
        make_demo_data.check_config(DemoConfig(bias=("Race=Other:-1",)))
