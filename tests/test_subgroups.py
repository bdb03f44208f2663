"""The subgroup audit (cxr/evaluation/subgroups.py): strata from a split's columns, AUC within a
stratum and its paired difference to the rest, n/a cells with their reason, the means within
strata, Holm's control of the audit's family-wise error rate (on a real leaderboard model's
test-set scores with random strata), the forest plot (plots.py) and the Markdown
(evaluation_report.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from config import Config
from conftest import shared
from cxr.cli import parse_args
from cxr.data.labels import LABELS
from cxr.errors import ConfigError
from cxr.evaluation.intervals import auc_influence, difference_interval, holm, mean_interval, \
    patient_codes, t_test
from cxr.evaluation.metrics import COMPETITION_LABELS
from cxr.evaluation.subgroups import age_band, strata, subgroup_table
from cxr.reporting.evaluation_report import subgroup_flags, subgroup_markdown
from cxr.reporting.plots import forest_plot


def test_age_bands():
    assert [age_band(a) for a in (18, 39, 40, 59.5, 79, 80, 104)] == \
        ["18-39", "18-39", "40-59", "40-59", "60-79", "80+", "80+"]
    assert [age_band(a) for a in (0, float("nan"))] == ["unknown"] * 2
    assert age_band(12) == "under 18"
    assert [age_band(a, (20, 50)) for a in (19, 20, 49, 50)] == \
        ["under 20", "20-49", "20-49", "50+"]


def test_age_bands_option():
    assert parse_args(["--age_bands", "20,50"], "evaluate.py",
                      defaults=Config()).age_bands == (20, 50)
    with pytest.raises(ConfigError, match="--age_bands must be increasing"):
        parse_args(["--age_bands", "50,20"], "score.py", defaults=Config())


def ranked_in_women(labels: tuple[str, ...], n: int = 400, seed: int = 0,
                    prevalences: tuple[float, ...] | None = None):
    """Every label ranked perfectly among women, at random among men; one image per patient,
    six of unknown age."""
    rng = np.random.default_rng(seed)
    sex = np.where(np.arange(n) % 2 == 0, "Female", "Male")
    prevalences = np.array(prevalences or (0.3,) * len(labels))
    y = (rng.random((n, len(labels))) < prevalences).astype(float)
    women = (sex == "Female")[:, None]
    scores = np.where(women, y + 0.1 * rng.random(y.shape), rng.random(y.shape))
    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "Sex": sex,
                          "Age": np.where(np.arange(n) < 6, 0, 50)})
    return frame, scores, y


def hand_made(n: int = 400, seed: int = 0):
    """Women's Edema ranked perfectly, men's at random; one image per patient."""
    return ranked_in_women(("Edema",), n, seed)


def test_perfect_in_one_subgroup_random_in_the_other_gives_the_verdict():
    frame, scores, targets = hand_made()
    table = subgroup_table(scores, targets, frame, ("Edema",), 0.95).table
    women, men = (table["Sex"][sex]["labels"]["Edema"] for sex in ("Female", "Male"))
    assert women["auc"] == 1.0 and women["verdict"] == "higher in this subgroup"
    assert men["verdict"] == "lower in this subgroup" and men["difference_ci"][1] < 0
    is_man = (frame["Sex"] == "Male").to_numpy()
    assert abs(men["auc"] - roc_auc_score(targets[is_man, 0], scores[is_man, 0])) < 1e-12
    assert abs(men["difference"] - (men["auc"] - women["auc"])) < 1e-12
    assert table["Sex"]["Male"]["n_images"] == 200 and table["Sex"]["Male"]["n_patients"] == 200
    assert men["positives"] == int(targets[is_man].sum())
    assert men["ci"][0] <= men["auc"] <= men["ci"][1]
    # six patients of unknown age: too few positives to score, with the reason
    unknown = table["Age"]["unknown"]["labels"]["Edema"]
    assert unknown["auc"] is None and unknown["note"].startswith("n/a: ")
    assert table["Age"]["40-59"]["labels"]["Edema"]["note"].endswith("in the rest of the split")


def test_support_devices_and_ap_pa_strata():
    frame = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "AP/PA": ["AP", "PA", "", "AP"],
                          "Frontal/Lateral": ["Frontal", "Frontal", "Frontal", "Lateral"]})
    targets = np.array([[1.0], [0.0], [np.nan], [1.0]])
    groups = strata(frame, targets, ("Support Devices",))
    assert groups["AP/PA"].tolist() == ["AP", "PA", "unknown", "unknown"]  # laterals: no AP/PA
    assert groups["Support Devices"].tolist() == ["present", "absent", "unknown", "present"]


def test_real_nih_rows_carry_sex_age_and_view():
    frame = pd.read_csv(shared("nih-cxr-small/CheXpert-v1.0-small/train.csv"))
    groups = strata(frame, np.zeros((len(frame), len(LABELS))), LABELS)
    assert set(groups["Sex"]) <= {"Female", "Male"}
    assert set(groups["AP/PA"]) <= {"AP", "PA", "unknown"} and "PA" in set(groups["AP/PA"])
    # NIH's table holds children too (a 2-year-old among these 404): their own band, not unknown
    assert groups["Age"].isin(["under 18", "18-39", "40-59", "60-79", "80+"]).all()
    assert (groups["Age"] == "under 18").sum() == (frame["Age"] < 18).sum() > 0
    assert groups["Age"].value_counts().sum() == len(frame)


def test_a_finding_read_from_the_devices_is_flagged_as_a_shortcut():
    """Pneumothorax ranked perfectly on films with devices (the drain), at random without."""
    rng = np.random.default_rng(1)
    n = 600
    devices = (np.arange(n) % 2 == 0).astype(float)
    y = (rng.random(n) < 0.3).astype(float)
    pneumothorax = np.where(devices == 1, y + 0.1 * rng.random(n), rng.random(n))
    scores = np.stack([pneumothorax, devices + 0.01 * rng.random(n)], axis=1)
    targets = np.stack([y, devices], axis=1)
    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)]})
    table = subgroup_table(scores, targets, frame, ("Pneumothorax", "Support Devices"),
                           0.95).table
    assert table["Support Devices"]["absent"]["labels"]["Pneumothorax"]["verdict"] == \
        "lower in this subgroup"
    # no competition label here, so the all-classes mean alone; of one class (Support Devices
    # has one value within its strata), so its flag would repeat the cell's
    absent = table["Support Devices"]["absent"]["means"]
    assert set(absent) == {"all"} and absent["all"]["classes"] == ["Pneumothorax"]
    assert absent["all"]["verdict"] == "lower in this subgroup"
    flags = subgroup_flags(table)
    assert len(flags) == 1 and flags[0].startswith("Pneumothorax among Support Devices absent")
    assert "shortcut" in flags[0]


MEAN_LABELS = ("Edema", "Cardiomegaly", "Fracture")  # Fracture: too few positives anywhere


def test_means_within_strata_average_the_evaluable_cells():
    frame, scores, targets = ranked_in_women(MEAN_LABELS, prevalences=(0.3, 0.3, 0.02))
    table = subgroup_table(scores, targets, frame, MEAN_LABELS, 0.95).table
    women, men = (table["Sex"][sex] for sex in ("Female", "Male"))
    assert set(men["means"]) == {"all", "competition"}
    mean = men["means"]["all"]
    cells = [men["labels"][label] for label in ("Edema", "Cardiomegaly")]
    assert mean["name"] == "AVERAGE" and mean["title"] == "AVERAGE (2 of 3 classes)"
    assert mean["classes"] == ["Edema", "Cardiomegaly"]
    assert mean["auc"] == float(np.mean([cell["auc"] for cell in cells]))
    assert mean["left_out"] == {"Fracture": men["labels"]["Fracture"]["note"]}
    assert mean["left_out"]["Fracture"].startswith("n/a: ")
    # the rest's mean averages the same classes: the difference is the cells' mean difference
    assert abs(mean["difference"] - np.mean([cell["difference"] for cell in cells])) < 1e-12
    assert mean["difference"] < 0 and mean["difference_ci"][1] < 0
    assert mean["verdict"] == "lower in this subgroup"
    assert mean["ci"][0] <= mean["auc"] <= mean["ci"][1]
    assert women["means"]["all"]["auc"] == 1.0
    assert women["means"]["all"]["verdict"] == "higher in this subgroup"
    competition = men["means"]["competition"]  # Fracture is not one of the five
    assert competition["title"] == "COMPETITION 5 (2 of 2 classes)"
    assert competition["left_out"] == {} and competition["auc"] == mean["auc"]
    # six patients of unknown age: no class to average
    unknown = table["Age"]["unknown"]["means"]["all"]
    assert unknown["auc"] is None and unknown["note"] == "n/a: no evaluable class"
    assert unknown["ci"] == [None, None] and unknown["verdict"] == "n/a"


def test_the_means_difference_is_paired_over_the_patients():
    """Recomputed by hand from the cells' influences: the mean within the stratum minus the
    same classes' mean in the rest, each patient's influence on both sides differenced."""
    labels = ("Edema", "Cardiomegaly")
    frame, scores, targets = ranked_in_women(labels, n=120, seed=2)
    frame["patient_id"] = [f"p{i // 2}" for i in range(120)]  # a woman and a man share a patient
    table = subgroup_table(scores, targets, frame, labels, 0.9, min_positives=2).table
    men = table["Sex"]["Male"]["means"]["all"]
    codes, n = patient_codes(frame["patient_id"])
    inside = (frame["Sex"] == "Male").to_numpy()
    within = [auc_influence(scores[inside, c], targets[inside, c], codes[inside], n)
              for c in range(2)]
    rest = [auc_influence(scores[~inside, c], targets[~inside, c], codes[~inside], n)
            for c in range(2)]
    gap = difference_interval([(0.5, w) for w in within] + [(-0.5, r) for r in rest], 0.9,
                              (mean_interval(within, 0.9), mean_interval(rest, 0.9)))
    assert men["difference_ci"] == pytest.approx([gap.low, gap.high])
    assert men["p_value"] == pytest.approx(t_test(gap, men["difference"]))
    interval = mean_interval(within, 0.9)
    assert men["ci"] == pytest.approx([interval.low, interval.high])


def test_holm_adjusts_step_down():
    # p sorted 0.01, 0.02, 0.04, 0.30 over m = 4: 0.04, 0.06, 0.08, 0.30 (monotone)
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def drnet_test_set():
    """drnet's leaderboard probabilities of the five competition labels on CheXpert's 500 test
    studies, and the radiologists' majority labels."""
    folder = shared("chexpert-test-labels")
    truth = pd.read_csv(folder / "groundtruth.csv").set_index("Study")
    predictions = pd.read_csv(folder / "leaderboard" / "drnet_predictions.csv").set_index("Study")
    labels = tuple(predictions.columns)
    return (predictions.loc[truth.index].to_numpy(float), truth[list(labels)].to_numpy(float),
            labels, [study.split("/")[2] for study in truth.index])


def random_strata(patients: list[str], seed: int) -> pd.DataFrame:
    """Sex, age and AP/PA drawn at random: no subgroup can truly differ."""
    rng = np.random.default_rng(seed)
    n = len(patients)
    return pd.DataFrame({"patient_id": patients, "Sex": rng.choice(["Female", "Male"], n),
                         "Age": rng.uniform(20, 90, n), "AP/PA": rng.choice(["AP", "PA"], n),
                         "Frontal/Lateral": "Frontal"})


def test_random_strata_raise_a_flag_in_at_most_5_percent_of_audits():
    """Before Holm, 12 of 20 such audits of drnet's predictions raised a 'clearly lower' flag."""
    scores, targets, labels, patients = drnet_test_set()
    flagged, unadjusted = 0, 0
    for seed in range(40):
        audit = subgroup_table(scores, targets, random_strata(patients, seed), labels, 0.95)
        # at most 5 labels and their mean in Sex and AP/PA (mirrored: once) and 4 age bands
        assert 20 <= audit.comparisons <= 6 + 4 * 6 + 6
        flagged += bool(subgroup_flags(audit.table))
        unadjusted += any(cell["verdict_unadjusted"] != "no clear difference"
                          for strata_ in audit.table.values() for entry in strata_.values()
                          for cell in entry["labels"].values() if cell["auc"] is not None)
    assert flagged <= 2  # 5 % of 40
    assert unadjusted >= 10  # what the unadjusted verdicts would have flagged


def test_a_planted_difference_is_still_flagged():
    """One stratum's Edema scores made uninformative (random) among men."""
    scores, targets, labels, patients = drnet_test_set()
    frame = random_strata(patients, 0)
    men = (frame["Sex"] == "Male").to_numpy()
    edema = labels.index("Edema")
    scores[men, edema] = np.random.default_rng(1).random(men.sum())
    audit = subgroup_table(scores, targets, frame, labels, 0.95)
    cell = audit.table["Sex"]["Male"]["labels"]["Edema"]
    assert cell["verdict"] == "lower in this subgroup" and cell["p_adjusted"] < 0.05
    assert any(flag.startswith("Edema among Sex Male") for flag in subgroup_flags(audit.table))
    markdown = "\n".join(subgroup_markdown(audit.table, audit.multiplicity(0.95)))
    assert f"{audit.comparisons} comparisons" in markdown and "Holm" in markdown


def test_forest_plot_of_the_competition_five(tmp_path):
    labels = COMPETITION_LABELS + ("Fracture",)
    frame, scores, targets = ranked_in_women(labels)
    table = subgroup_table(scores, targets, frame, labels, 0.95).table
    path = tmp_path / "subgroups_test.png"
    assert forest_plot(table, labels, path, "Subgroups: test split")
    assert path.stat().st_size > 10_000 and not list(tmp_path.glob(".*.tmp"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 200
    # no competition label, or no audit: nothing to draw, nothing written
    other = tmp_path / "other.png"
    assert not forest_plot(table, ("Fracture",), other, "Subgroups")
    assert not forest_plot({}, labels, other, "Subgroups")
    assert not other.exists()


def test_markdown_has_the_means_and_flags_a_lower_mean():
    frame, scores, targets = ranked_in_women(MEAN_LABELS, prevalences=(0.3, 0.3, 0.02))
    table = subgroup_table(scores, targets, frame, MEAN_LABELS, 0.95).table
    mean = table["Sex"]["Male"]["means"]["all"]
    markdown = "\n".join(subgroup_markdown(table, None, "subgroups_test.png"))
    assert "### Means by subgroup" in markdown and "![Subgroup forest plot](subgroups_test.png)" \
        in markdown
    row = next(line for line in markdown.splitlines()
               if line.startswith("| Sex | Male | AVERAGE (2 of 3 classes) |"))
    assert f"{mean['auc']:.4f}" in row and f"{mean['difference']:+.4f}" in row
    assert row.rstrip(" |").endswith("lower in this subgroup")
    flags = subgroup_flags(table)
    # the two means average the same classes: one flag for both
    assert [flag for flag in flags if "mean among" in flag] == [
        f"the AVERAGE (2 of 3 classes) mean among Sex Male: AUC {mean['auc']:.3f}, "
        f"{mean['difference']:+.3f} against the rest"]
    assert "COMPETITION 5" in markdown  # in the table, though not flagged twice


def test_each_stratum_leads_with_its_aucs_and_mean():
    """The issue's shape: {"Sex": {"Female": {"auc": {label: AUC}, "mean_auc", "n_images", ...}}}."""
    frame, scores, targets = hand_made()
    table = subgroup_table(scores, targets, frame, ("Edema",), 0.95).table
    women = table["Sex"]["Female"]
    assert women["auc"] == {"Edema": women["labels"]["Edema"]["auc"]} and women["auc"]["Edema"] == 1
    assert women["mean_auc"] == women["means"]["all"]["auc"] == 1.0
    assert table["Age"]["unknown"]["mean_auc"] is None  # no label scorable there
