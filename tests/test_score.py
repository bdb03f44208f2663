"""score.py: predictions CSVs against a reference standard, its readers and other models.

The real CheXpert test-set files (../shared/data/chexpert-test-labels) check the numbers against
direct computations; small hand-made files check the rules (matching, aggregation, bad input).
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from config import Config
from conftest import ROOT, shared
from cxr.errors import PipelineError
from cxr.evaluation.bootstrap import class_resamples
from cxr.evaluation.intervals import patient_codes
from cxr.evaluation.metrics import summarise_level
from cxr.inference.predictor import study_table
from cxr.scoring.files import normalised_key, read_reference, read_scores
from cxr.scoring.readers import label_comparison, model_curve, pr_precision, resampled_points, \
    roc_true_positives
from cxr.scoring.results import labeler_results, score

TEST_SET = "chexpert-test-labels"
LEADERBOARD = ("desmond", "drnet", "hieupham", "ihil", "jfaboy")
READERS = ("bc4", "bc6", "bc8")
FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def shared_file(name: str) -> str:
    return str(shared(f"{TEST_SET}/{name}"))


def frame(path: str) -> pd.DataFrame:
    return pd.read_csv(path).set_index("Study")


def config(**fields) -> Config:
    fields.setdefault("bootstrap_resamples", 50)
    return Config(**fields)


# ---- the numbers, on CheXpert's test set -----------------------------------------------------

@pytest.fixture(scope="module")
def scored():
    """hieupham's predictions as the user's model, against the 3 radiologists and 4 others."""
    cfg = config(predictions=shared_file("leaderboard/hieupham_predictions.csv"),
                 labels=shared_file("groundtruth.csv"),
                 radiologists=tuple(shared_file(f"radiologists/{r}.csv") for r in READERS),
                 compare=tuple(shared_file(f"leaderboard/{m}_predictions.csv")
                               for m in LEADERBOARD if m != "hieupham"),
                 score_scale="any", bootstrap_resamples=200)
    result, model, comparisons = score(cfg, read_reference(Path(cfg.labels)))
    return cfg, result, model


@pytest.mark.parametrize("name", LEADERBOARD)
def test_leaderboard_aucs_equal_roc_auc_score(name):
    truth = frame(shared_file("groundtruth.csv"))
    path = shared_file(f"leaderboard/{name}_predictions.csv")
    predictions = frame(path)
    cfg = config(predictions=path, labels=shared_file("groundtruth.csv"), score_scale="any",
                 bootstrap_resamples=0)
    result, _, _ = score(cfg, read_reference(Path(cfg.labels)))
    assert result.n_studies == 500 and set(result.auc) == set(FIVE)
    assert "CheXpert's test set: the majority vote of five" in result.reference
    for label in FIVE:
        expected = roc_auc_score(truth.loc[predictions.index, label], predictions[label])
        assert abs(result.auc[label] - expected) < 1e-9
    assert abs(result.competition5_auc - np.mean([result.auc[l] for l in FIVE])) < 1e-12


def test_radiologists_operating_points_equal_direct_counts(scored):
    _, result, _ = scored
    truth = frame(shared_file("groundtruth.csv"))
    for reader in READERS:
        reads = frame(shared_file(f"radiologists/{reader}.csv")).loc[truth.index]
        for label in FIVE:
            y, r = truth[label].to_numpy(), reads[label].to_numpy()
            point = result.radiologists[reader][label]
            assert point["sensitivity"] == ((y == 1) & (r == 1)).sum() / (y == 1).sum()
            assert point["specificity"] == ((y == 0) & (r == 0)).sum() / (y == 0).sum()
            low, high = point["sensitivity_ci"]
            assert low <= point["sensitivity"] <= high


def direct_vertices(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None
                    ) -> list[tuple[int, int]]:
    """The model's (FP, TP) at every threshold, from the thresholds themselves (no sklearn):
    calling score >= t positive, rows weighted by w (a resample's draw counts)."""
    w = np.ones(len(y), dtype=int) if w is None else w.astype(int)
    return [(0, 0)] + [(int(w[(s >= t) & (y == 0)].sum()), int(w[(s >= t) & (y == 1)].sum()))
                       for t in np.unique(s)[::-1]]


def direct_roc_tp(vertices: list[tuple[int, int]], fp: int) -> Fraction:
    """The curve's TP at exactly fp false positives: the top of a vertical step, else the
    straight line between the vertices on either side, as a fraction."""
    at = [tp for f, tp in vertices if f == fp]
    if at:
        return Fraction(max(at))
    (f0, t0), (f1, t1) = next((a, b) for a, b in zip(vertices, vertices[1:]) if a[0] < fp < b[0])
    return t0 + Fraction((t1 - t0) * (fp - f0), f1 - f0)


def direct_pr_below(vertices: list[tuple[int, int]], tp: int, fp: int) -> bool:
    """Some threshold with at least the reader's true positives and a higher precision."""
    return tp + fp > 0 and any(Fraction(t, t + f) > Fraction(tp, tp + fp)
                               for f, t in vertices[1:] if t >= tp)


def test_below_curves_equal_a_direct_computation_in_counts(scored):
    """Every reader x label of hieupham's predictions, against the curves rebuilt from the
    thresholds with exact fractions."""
    _, result, model = scored
    for label, count in result.radiologists_below_curve.items():
        column = model.labels.index(label)
        y, s = model.targets[:, column], model.scores[:, column]
        vertices = direct_vertices(y, s)
        below = below_pr = 0
        for reader in READERS:
            point = result.radiologists[reader][label]
            model_tp = direct_roc_tp(vertices, point["fp"])
            assert point["model_tp"] == float(model_tp)
            assert point["model_sensitivity"] == float(model_tp / (y == 1).sum())
            assert point["below_curve"] == (model_tp > point["tp"])
            assert point["below_pr_curve"] == direct_pr_below(vertices, point["tp"], point["fp"])
            below += point["below_curve"]
            below_pr += point["below_pr_curve"]
        assert count == below and result.radiologists_below_pr_curve[label] == below_pr
        for key in ("below_curve", "below_pr_curve"):
            distribution = result.readers_by_label[label][f"{key}_distribution"]
            assert abs(sum(distribution.values()) - 1) < 1e-9


def test_a_reader_at_the_top_of_a_vertical_step_is_compared_exactly(scored):
    """bc4's Pleural Effusion: 21 false positives of 396, 85 true positives of 104. hieupham's
    curve has thresholds at exactly 21 false positives with 84 and 87 true positives, so it
    reaches 87/104 at bc4's rate: bc4 is below it. As rates, 1 - 375/396 is one bit below
    21/396, the curve's points at 21 fell out and score.py read 84/104 and "not below"."""
    _, result, model = scored
    point = result.radiologists["bc4"]["Pleural Effusion"]
    assert (point["fp"], point["tn"], point["tp"], point["fn"]) == (21, 375, 85, 19)
    assert 1 - 375 / 396 != 21 / 396  # the rates that dropped the curve's points
    assert point["below_curve"] and point["model_sensitivity"] == 87 / 104
    assert result.radiologists_below_curve["Pleural Effusion"] == 3
    assert point["model_tp"] == 87


def test_desmonds_atelectasis_counts_bc4_below_exactly():
    """The same on desmond's Atelectasis: 123 of 153 at bc4's 74 false positives read as rates,
    124 in counts (the top of the step at exactly 74), so bc4 is below the curve."""
    cfg = config(predictions=shared_file("leaderboard/desmond_predictions.csv"),
                 labels=shared_file("groundtruth.csv"),
                 radiologists=(shared_file("radiologists/bc4.csv"),), score_scale="any",
                 bootstrap_resamples=0)
    result, _, _ = score(cfg, read_reference(Path(cfg.labels)))
    point = result.radiologists["bc4"]["Atelectasis"]
    assert (point["fp"], point["tp"], point["model_sensitivity"]) == (74, 123, 124 / 153)
    assert point["below_curve"] and result.radiologists_below_curve["Atelectasis"] == 1


def exact_case(rows: list[tuple[int, float, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, scores, reads) from (label, score, read, how many such rows)."""
    y, s, r = (np.repeat([row[i] for row in rows], [row[3] for row in rows]).astype(float)
               for i in range(3))
    return y, s, r


def test_a_reader_on_a_vertex_of_bc4s_edema_counts():
    """bc4's Edema counts (36 false positives of 422 negatives, 49 true positives of 78) against a
    curve with thresholds at (35, 48), then at exactly 36 false positives (36, 49) and (36, 50):
    the curve reaches 50/78 at bc4's rate and bc4 is below it; a reader at (36, 50) is on it."""
    y, s, r = exact_case([
        (1, 0.95, 1, 48), (0, 0.90, 1, 35), (0, 0.80, 1, 1), (1, 0.80, 1, 1),
        (1, 0.70, 0, 1), (0, 0.10, 0, 386), (1, 0.05, 0, 28)])
    assert r[y == 0].sum() == 36 and r[y == 1].sum() == 49  # the reader: (36, 49)
    assert 1 - 386 / 422 != 36 / 422  # the rates miss the curve's points at 36
    ids = pd.Series([f"p{i}" for i in range(len(y))])
    comparison = label_comparison(y, s, {"bc4": r}, ids, 0, 0, 0.95, 0)
    point = comparison["readers"]["bc4"]
    assert point["below_curve"] and point["model_sensitivity"] == 50 / 78
    assert comparison["below_curve"] == 1
    on = r.copy()
    on[np.flatnonzero((y == 1) & (r == 0))[0]] = 1  # one more true positive: (36, 50)
    point = label_comparison(y, s, {"on": on}, ids, 0, 0, 0.95, 0)["readers"]["on"]
    assert not point["below_curve"] and point["model_sensitivity"] == point["sensitivity"]
    curve = model_curve(y, s)
    assert roc_true_positives(curve, 36) == 50 and roc_true_positives(curve, 35) == 48


def test_a_reader_on_a_straight_segment_is_on_the_curve():
    """Thresholds at (10, 20) and (40, 50) false/true positives (of 70 and 60): the straight line
    between them passes through (25, 35) exactly. A reader there is on the curve, its model
    sensitivity 35/60 to the last bit; one true positive fewer is below it."""
    y, s, r = exact_case([
        (1, 0.9, 1, 20), (0, 0.9, 1, 10), (1, 0.5, 1, 15), (1, 0.5, 0, 15), (0, 0.5, 1, 15),
        (0, 0.5, 0, 15), (0, 0.1, 0, 30), (1, 0.1, 0, 10)])
    ids = pd.Series([f"p{i}" for i in range(len(y))])
    point = label_comparison(y, s, {"r": r}, ids, 0, 0, 0.95, 0)["readers"]["r"]
    assert (point["fp"], point["tp"]) == (25, 35)
    # as rates the model's sensitivity came out one bit below the reader's: -1.1e-16
    assert not point["below_curve"] and point["model_sensitivity"] == 35 / 60
    assert point["sensitivity_gain"] == 0.0
    fewer = r.copy()
    fewer[np.flatnonzero((y == 1) & (r == 1))[0]] = 0
    assert label_comparison(y, s, {"r": fewer}, ids, 0, 0, 0.95, 0)["readers"]["r"]["below_curve"]
    curve = model_curve(y, s)
    assert roc_true_positives(curve, 25) == 35 and roc_true_positives(curve, 26) == Fraction(36)


def test_pr_curve_is_the_highest_precision_at_a_recall_at_least_the_readers():
    """Thresholds (FP, TP) of 10 positives: (0, 2), (4, 4), (4, 8), (12, 10). Precision 1 at
    recall 0.2, 0.5 at 0.4, 2/3 at 0.8, 0.45 at 1.0."""
    y, s, _ = exact_case([(1, 0.9, 0, 2), (1, 0.8, 0, 2), (0, 0.8, 0, 4), (1, 0.7, 0, 4),
                          (1, 0.2, 0, 2), (0, 0.2, 0, 8), (0, 0.1, 0, 20)])
    curve = model_curve(y, s)
    # recall 0.4 (tp 4): sklearn's step reads 0.5 there, the envelope 2/3 (threshold (4, 8))
    assert pr_precision(curve, 4, 3) == (pytest.approx(2 / 3), True)  # reader 4/7 < 2/3
    assert pr_precision(curve, 4, 2) == (pytest.approx(2 / 3), False)  # 4/6 = 2/3: on it
    assert pr_precision(curve, 8, 4)[1] is False  # exactly the threshold (4, 8)
    assert pr_precision(curve, 9, 4)[1] is False  # recall 0.9: only (12, 10), 0.45 < 9/13
    assert pr_precision(curve, 9, 12)[1] is True  # 9/21 < 0.45
    assert pr_precision(curve, 2, 0)[1] is False  # a perfect reader at recall 0.2
    assert pr_precision(curve, 0, 0)[1] is False  # calls nothing positive: no precision
    reads = {"below": np.zeros(len(y)), "on": np.zeros(len(y)), "above": np.zeros(len(y))}
    for name, (tp, fp) in {"below": (4, 3), "on": (4, 2), "above": (6, 1)}.items():
        reads[name][np.flatnonzero(y == 1)[:tp]] = 1
        reads[name][np.flatnonzero(y == 0)[:fp]] = 1
    ids = pd.Series([f"p{i}" for i in range(len(y))])
    comparison = label_comparison(y, s, reads, ids, 0, 100, 0.95, 0)
    assert comparison["below_pr_curve"] == 1
    assert [comparison["readers"][n]["below_pr_curve"] for n in reads] == [True, False, False]
    assert comparison["readers"]["below"]["model_precision"] == pytest.approx(2 / 3)
    assert comparison["readers"]["below"]["precision"] == pytest.approx(4 / 7)
    assert abs(sum(comparison["below_pr_curve_distribution"].values()) - 1) < 1e-12
    low, high = comparison["readers"]["below"]["model_precision_ci"]
    assert low <= high


def test_resampled_comparisons_are_exact_in_draw_counts(scored):
    """In every resample, below each curve equals the direct exact computation on the patients'
    draw counts (integers), for bc4's Edema and Pleural Effusion against hieupham's curves."""
    _, _, model = scored
    truth = frame(shared_file("groundtruth.csv"))
    for label in ("Edema", "Pleural Effusion"):
        column = model.labels.index(label)
        y, s = model.targets[:, column], model.scores[:, column]
        r = frame(shared_file("radiologists/bc4.csv")).loc[truth.index, label].to_numpy(float)
        codes, n = patient_codes(model.patient_ids)
        values = resampled_points(y, s, {"bc4": r}, codes, n, 60, 0, column)["bc4"]
        counts = class_resamples(y, codes, n, 60, 0, column)
        for b in range(60):
            w = counts[b, codes]
            vertices = direct_vertices(y, s, w)
            tp, fp = int(w[(r == 1) & (y == 1)].sum()), int(w[(r == 1) & (y == 0)].sum())
            model_tp = direct_roc_tp(vertices, fp)
            assert values["below_curve"][b] == (model_tp > tp)
            assert values["model_sensitivity"][b] == float(model_tp / int(w[y == 1].sum()))
            assert values["below_pr_curve"][b] == direct_pr_below(vertices, tp, fp)


def test_below_curve_on_hand_made_curves():
    # scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): corners (0,0) (0,1) (1,1) (1,2) (2,2)
    y = np.array([1, 0, 1, 0.0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    curve = model_curve(y, s)
    assert roc_true_positives(curve, 0) == 1
    assert roc_true_positives(curve, 1) == 2  # the top of the vertical step
    # a tie between a positive and a negative: the curve is the diagonal between the corners
    tie = model_curve(np.array([1, 1, 1, 0, 0, 0.0]), np.array([0.5] * 6))
    assert roc_true_positives(tie, 1) == 1 and roc_true_positives(tie, 2) == 2
    # readers on a perfect model: every reader below unless perfect too
    y = np.array([1, 1, 0, 0.0])
    perfect = label_comparison(y, np.array([0.9, 0.8, 0.2, 0.1]),
                               {"a": np.array([1, 0, 0, 0.0]), "b": np.array([1, 1, 0, 0.0])},
                               pd.Series(["p1", "p2", "p3", "p4"]), 0, 20, 0.95, 0)
    assert perfect["below_curve"] == 1 and perfect["below_pr_curve"] == 0
    assert perfect["readers"]["a"]["below_curve"] and not perfect["readers"]["b"]["below_curve"]


def test_report_card_is_evaluates(scored):
    cfg, result, model = scored
    card = summarise_level(model.scores, model.targets, model.patient_ids, model.labels, cfg)
    assert result.report_card.as_dict() == json.loads(json.dumps(card))


def test_score_json_keys_in_their_order(scored):
    """The report's as_dict() is score.json (less "plots"): its keys, in the file's order."""
    _, result, _ = scored
    saved = result.as_dict()
    assert list(saved) == [
        "predictions", "labels_file", "reference", "unit", "n_studies", "n_rows", "n_patients",
        "skipped", "labels", "masked", "auc", "mean_auc", "competition5_auc", "report_card",
        "radiologists", "radiologists_below_curve", "radiologists_below_pr_curve",
        "readers_by_label", "compare", "subgroups", "subgroup_comparisons", "compare_rows",
        "compare_n", "leaderboard", "intervals", "bootstrap", "study_aggregation",
        "min_positives", "underdiagnosis", "underdiagnosis_comparisons", "false_negative_rates",
        "false_negative_comparisons"]
    assert list(saved["bootstrap"]) == ["resamples", "level", "seed", "unit", "for"]


def test_subgroups_read_the_references_support_devices(scored):
    """The leaderboard files do not score Support Devices; the audit takes groundtruth's."""
    _, result, _ = scored
    devices = frame(shared_file("groundtruth.csv"))["Support Devices"]
    strata = result.subgroups["Support Devices"]
    assert strata["present"]["n_images"] == (devices == 1).sum() == 261
    assert strata["absent"]["n_images"] == (devices == 0).sum()
    assert set(strata["absent"]["labels"]) == set(FIVE)


def test_compare_and_leaderboard(scored):
    _, result, model = scored
    truth = frame(shared_file("groundtruth.csv"))
    mine = frame(shared_file("leaderboard/hieupham_predictions.csv"))
    for name in ("desmond", "jfaboy"):
        path = shared_file(f"leaderboard/{name}_predictions.csv")
        other = frame(path)
        for label in FIVE:
            expected = (roc_auc_score(truth[label], mine.loc[truth.index, label])
                        - roc_auc_score(truth[label], other.loc[truth.index, label]))
            assert abs(result.compare[path][label] - expected) < 1e-9
        row = result.compare_rows[path][-1]
        assert row["pathology"].startswith("COMPETITION 5") and row["ci_low"] < row["ci_high"]
    board = [row.competition5_auc for row in result.leaderboard]
    assert board == sorted(board, reverse=True) and len(board) == 5


def test_labeler_table_equals_direct_counts():
    path = shared_file("labeler/chexpert_labels.csv")
    cfg = config(labels=shared_file("groundtruth.csv"), labeler=(path,))
    table = labeler_results(cfg.labeler, read_reference(Path(cfg.labels)), cfg)
    rows = {row["label"]: row for row in table["chexpert_labels"].rows}
    truth = frame(shared_file("groundtruth.csv"))
    labeler = frame(path).loc[truth.index]
    for label in FIVE:
        uncertain = labeler[label] == -1
        assert rows[label]["uncertain"]["studies"] == uncertain.sum()
        assert rows[label]["uncertain"]["positive"] == (truth[label][uncertain] == 1).sum()
        blank = labeler[label].isna()
        assert rows[label]["blank"]["positive"] == (truth[label][blank] == 1).sum()
    assert rows["Atelectasis"]["suggested_policy"] == "U-Ones"
    assert rows["Consolidation"]["suggested_policy"] == "U-Zeros"


# ---- matching and aggregation -----------------------------------------------------------------

def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("written", [
    "CheXpert-v1.0/test/patient64741/study1", "CheXpert-v1.0-small/test/patient64741/study1/",
    "/data/chexpert/CheXpert-v1.0/test/patient64741/study1", "test/patient64741/study1//",
    "C:\\data\\test\\patient64741\\study1"])
def test_study_keys_are_normalised(written):
    assert normalised_key(written) == "patient64741/study1"


def small_reference(tmp_path: Path) -> str:
    return write(tmp_path / "truth.csv", "Study,Edema,Cardiomegaly\n"
                 + "".join(f"CheXpert-v1.0/test/patient{p:05d}/study1,{p % 2},{(p // 2) % 2}\n"
                           for p in range(1, 9)))


def test_image_predictions_are_aggregated_to_studies(tmp_path):
    reference = small_reference(tmp_path)
    rng = np.random.default_rng(0)
    rows = [(f"CheXpert-v1.0-small/test/patient{p:05d}/study1/view{v}_frontal.jpg",
             *rng.random(2)) for p in range(1, 9) for v in (1, 2)]
    table = pd.DataFrame(rows, columns=["Path", "Cardiomegaly", "Edema"])
    path = tmp_path / "images.csv"
    table.to_csv(path, index=False)
    for how in ("max", "mean"):
        cfg = config(predictions=str(path), labels=reference, study_aggregation=how)
        result, model, _ = score(cfg, read_reference(Path(reference)))
        studies = table.groupby(table["Path"].str.rsplit("/", n=1).str[0]).agg(
            {"Edema": how, "Cardiomegaly": how})
        truth = pd.read_csv(reference)
        expected = roc_auc_score(truth["Edema"], studies["Edema"].to_numpy())
        assert result.unit == "study" and result.n_studies == 8
        assert "majority vote" not in result.reference  # not CheXpert's test patients
        assert abs(result.auc["Edema"] - expected) < 1e-12


def predict_py_files(tmp_path: Path, how: str) -> tuple[Path, Path, str]:
    """A per-image predictions file as predict.py writes it for a frontal-only model (path,
    view, the DICOM columns, probabilities, decisions), its _studies.csv (inference.study_table,
    which predict.py calls), and the studies' labels. Study 1 of each pair is negative; its
    lateral film scores 0.90 and its frontal 0.10."""
    rng = np.random.default_rng(1)
    images, truth = [], []
    for p in range(1, 25):
        study = f"/data/CheXpert-v1.0/test/patient{p:05d}/study1"
        edema = p % 2
        truth.append((f"CheXpert-v1.0/test/patient{p:05d}/study1", edema, (p // 2) % 2))
        frontal = 0.10 if p == 2 else float(np.clip(0.3 * edema + rng.random() * 0.7, 0, 1))
        views = [("view1_frontal.jpg", "frontal" if p % 7 else "unknown", frontal)]
        if p % 3 != 1:  # two studies in three have a lateral film, scored high when negative
            views.append(("view2_lateral.jpg", "lateral", 0.90 if not edema else 0.2))
        if p == 12:  # a study of laterals only: aggregated over them
            views = [("view1_lateral.jpg", "lateral", 0.3), ("view2_lateral.jpg", "lateral", 0.6)]
        for name, view, score in views:
            images.append({"path": f"{study}/{name}", "view": view, "ViewPosition": "",
                           "PatientSex": "", "PatientAge": "", "StudyDate": "",
                           "header_warning": "", "Edema": score,
                           "Cardiomegaly": float(rng.random()), "Edema positive": int(score > .5),
                           "Cardiomegaly positive": 0})
    table = pd.DataFrame(images)
    studies, no_frontal = study_table(table, ["Edema", "Cardiomegaly"], how, frontal_only=True)
    assert len(no_frontal) == 1 and len(studies) == 24
    image_file, study_file = tmp_path / "predict.csv", tmp_path / "predict_studies.csv"
    table.to_csv(image_file, index=False)
    studies.to_csv(study_file, index=False)
    reference = write(tmp_path / "truth.csv", "Study,Edema,Cardiomegaly\n" + "".join(
        f"{key},{edema},{cardio}\n" for key, edema, cardio in truth))
    return image_file, study_file, reference


@pytest.mark.parametrize("how", ["max", "mean"])
def test_image_predictions_score_as_their_studies_file(tmp_path, how):
    """score.py on predict.py's per-image file gives the AUCs of its _studies.csv: a
    frontal-only model's laterals are left out of their study (frontal 0.10 and lateral 0.90
    score 0.10), as predict.py leaves them out; a study of laterals only is scored over them."""
    image_file, study_file, reference = predict_py_files(tmp_path, how)
    saved = {}
    for name, path in (("images", image_file), ("studies", study_file)):
        out = tmp_path / name
        result = run_score("--predictions", str(path), "--labels", reference,
                           "--study_aggregation", how, "--bootstrap_resamples", "0",
                           "--output_dir", str(out))
        assert result.returncode == 0, result.stderr
        saved[name] = json.loads((out / "score.json").read_text())
    assert saved["images"]["auc"] == saved["studies"]["auc"]
    assert saved["images"]["n_studies"] == saved["studies"]["n_studies"] == 24
    assert saved["images"]["study_views"] == {"lateral_films_left_out": 15,
                                              "studies_without_frontal": 1}
    _, model, _ = score(config(predictions=str(image_file), labels=reference,
                               study_aggregation=how, bootstrap_resamples=0),
                        read_reference(Path(reference)))
    edema = dict(zip(model.keys, model.scores[:, model.labels.index("Edema")]))
    assert edema["patient00002/study1"] == 0.10  # its frontal, not its lateral's 0.90
    expected = 0.45 if how == "mean" else 0.6  # laterals only: 0.3 and 0.6
    assert edema["patient00012/study1"] == pytest.approx(expected)


def test_a_bad_view_is_one_clear_error(tmp_path):
    path = write(tmp_path / "p.csv", "path,view,Edema\n"
                 "a/patient00001/study1/view1_frontal.jpg,frontal,0.1\n"
                 "a/patient00001/study1/view2_lateral.jpg,sideways,0.2\n")
    with pytest.raises(PipelineError, match=r"p.csv line 3 .*column 'view': 'sideways' is not "
                                            r"frontal, lateral, unknown or blank"):
        read_scores(Path(path))


def test_unmatched_studies_error_or_counted_skip(tmp_path):
    reference = small_reference(tmp_path)
    predictions = write(tmp_path / "p.csv", "Study,Edema\n" + "".join(
        f"CheXpert-v1.0/test/patient{p:05d}/study1,0.{p}\n" for p in range(1, 7)))
    cfg = config(predictions=predictions, labels=reference)
    with pytest.raises(PipelineError, match=r"2 studies only in .*truth.csv: .*patient00007"
                                            r".*--unmatched skip"):
        score(cfg, read_reference(Path(reference)))
    result, _, _ = score(config(predictions=predictions, labels=reference, unmatched="skip"),
                         read_reference(Path(reference)))
    assert result.n_studies == 6 and result.skipped == {"predictions_only": 0,
                                                              "reference_only": 2}


BAD_PREDICTIONS = [
    ("Study,Edema\nCheXpert-v1.0/test/patient00001/study1,1.2\n",
     r"p.csv line 2 \(CheXpert-v1.0/test/patient00001/study1\), column 'Edema': 1.2 is not a "
     r"probability in \[0, 1\].*--score_scale any"),
    ("Study,Edema\nCheXpert-v1.0/test/patient00001/study1,nan\n",
     r"p.csv line 2 .*column 'Edema': 'nan' is not a finite number"),
    ("Study,Edema\nCheXpert-v1.0/test/patient00001/study1,\n",
     r"p.csv line 2 .*column 'Edema': is blank"),
    ("Study,Edema\nCheXpert-v1.0/test/patient00001/study1,high\n",
     r"p.csv line 2 .*column 'Edema': 'high' is not a number"),
    ("Study,Edema\nCheXpert-v1.0/test/patient00001/study1,0.1\n"
     "CheXpert-v1.0-small/test/patient00001/study1/,0.2\n",
     r"p.csv line 3 \(CheXpert-v1.0-small/test/patient00001/study1/\): the same Study as "
     r"line 2"),
    ("Study,Edema,Cardiomegally\nCheXpert-v1.0/test/patient00001/study1,0.1,0.2\n",
     r"p.csv column 3 'Cardiomegally' is not a CheXpert label; did you mean 'Cardiomegaly'\?"),
    ("Image,Edema\nx.jpg,0.1\n", r"p.csv has no key column: it needs one of Study, Path"),
    ("Path,Edema\na/patient00001/study1/view1_frontal.jpg,0.1\na/patient00002/study1,0.2\n",
     r"p.csv line 3 .*mixes image paths and study folders"),
    ("Study,Edema\n", r"p.csv has a header and no rows"),
]


@pytest.mark.parametrize("text, message", BAD_PREDICTIONS)
def test_bad_predictions_give_one_clear_error(tmp_path, text, message):
    path = write(tmp_path / "p.csv", text)
    with pytest.raises(PipelineError, match=message):
        read_scores(Path(path))


def test_any_scale_takes_scores_that_only_rank(tmp_path):
    path = write(tmp_path / "p.csv", "Study,Edema\nCheXpert-v1.0/test/patient00001/study1,3.5\n")
    assert read_scores(Path(path), "any").values["Edema"].tolist() == [3.5]
    with pytest.raises(PipelineError, match="not a finite number"):
        read_scores(Path(write(tmp_path / "q.csv", "Study,Edema\ns1,inf\n")), "any")


def test_bad_reference_and_reads_give_one_clear_error(tmp_path):
    bad = write(tmp_path / "truth.csv", "Study,Edema\ns1,1\ns2,yes\n")
    with pytest.raises(PipelineError, match=r"truth.csv line 3 \(s2\), column 'Edema': 'yes' is "
                                            r"not 1, 0, -1 or blank"):
        read_reference(Path(bad))
    reference = small_reference(tmp_path)
    predictions = write(tmp_path / "p.csv", "Study,Edema\n" + "".join(
        f"CheXpert-v1.0/test/patient{p:05d}/study1,0.{p}\n" for p in range(1, 9)))
    reads = write(tmp_path / "r.csv", "Study,Edema\n" + "".join(
        f"CheXpert-v1.0/test/patient{p:05d}/study1,{-1 if p == 3 else 1}\n" for p in range(1, 9)))
    cfg = config(predictions=predictions, labels=reference, radiologists=(reads,))
    with pytest.raises(PipelineError, match=r"r.csv line 4 .*'Edema': '-1' is not 1 or 0"):
        score(cfg, read_reference(Path(reference)))


def test_reference_masks_uncertain_and_blank(tmp_path):
    path = write(tmp_path / "truth.csv", "Study,Edema\ns1,1\ns2,-1.0\ns3,\ns4,0\n")
    reference = read_reference(Path(path))
    assert np.isnan(reference.values["Edema"].to_numpy()).tolist() == [False, True, True, False]
    assert reference.masked == {"Edema": {"uncertain": 1, "blank": 1}}


# ---- the command line --------------------------------------------------------------------------

def run_score(*options: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "score.py"), *options], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_command_writes_the_documents(tmp_path):
    out = tmp_path / "out"
    result = run_score("--predictions", shared_file("leaderboard/jfaboy_predictions.csv"),
                       "--labels", shared_file("groundtruth.csv"), "--radiologists",
                       ",".join(shared_file(f"radiologists/{r}.csv") for r in READERS),
                       "--compare", shared_file("leaderboard/drnet_predictions.csv"),
                       "--bootstrap_resamples", "100", "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "Readers against the model's ROC curve" in result.stdout
    assert f"score: wrote {out}/score.json" in result.stdout
    saved = json.loads((out / "score.json").read_text())
    for key in ("n_studies", "auc", "mean_auc", "competition5_auc", "radiologists",
                "radiologists_below_curve", "compare"):
        assert key in saved
    assert set(saved["radiologists"]) == set(READERS)
    assert {"sensitivity", "specificity", "below_curve"} <= set(
        saved["radiologists"]["bc4"]["Edema"])
    assert (out / "roc.png").stat().st_size > 10_000 and (out / "pr.png").is_file()
    table = pd.read_csv(out / "score.csv")
    assert {"pathology", "auc", "ci_low", "ci_high", "readers_below_curve"} <= set(table.columns)
    assert "## Leaderboard" in (out / "score.md").read_text()


def test_command_errors_are_one_line(tmp_path):
    result = run_score("--predictions", shared_file("leaderboard/desmond_predictions.csv"),
                       "--labels", shared_file("groundtruth.csv"), "--output_dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not a probability in [0, 1]" in result.stderr
    assert "desmond_predictions.csv line " in result.stderr
    missing = run_score("--predictions", shared_file("leaderboard/drnet_predictions.csv"))
    assert missing.returncode == 2 and "score.py needs --labels" in missing.stderr


def test_a_label_the_model_was_not_trained_on_is_left_out(tmp_path, capsys):
    """predict.py writes "not trained" in every row of such a label: score.py skips the column
    and says so; "not trained" in some rows only is an error naming the line."""
    predictions = frame(shared_file("leaderboard/drnet_predictions.csv")).reset_index()
    predictions["Fracture"] = "not trained"
    path = tmp_path / "predictions.csv"
    predictions.to_csv(path, index=False)
    scores = read_scores(path)
    assert "Fracture" not in scores.values.columns and "Edema" in scores.values.columns
    assert "not trained, so not scored: Fracture" in capsys.readouterr().out
    predictions.loc[3, "Fracture"] = "0.2"
    predictions.to_csv(path, index=False)
    with pytest.raises(PipelineError, match=r"line 2, column 'Fracture': 'not trained' in some"):
        read_scores(path)
