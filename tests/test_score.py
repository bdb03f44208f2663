"""score.py: predictions CSVs against a reference standard, its readers and other models.

The real CheXpert test-set files (../shared/data/chexpert-test-labels) check the numbers against
direct computations; small hand-made files check the rules (matching, aggregation, bad input).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import ROOT, shared
from config import Config, PipelineError
from cxr.metrics import summarise_level
from cxr.readers import curve_sensitivity, is_below, label_comparison
from cxr.score_files import normalised_key, read_reference, read_scores
from cxr.scoring import labeler_results, score

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
    assert result["n_studies"] == 500 and set(result["auc"]) == set(FIVE)
    assert "CheXpert's test set: the majority vote of five" in result["reference"]
    for label in FIVE:
        expected = roc_auc_score(truth.loc[predictions.index, label], predictions[label])
        assert abs(result["auc"][label] - expected) < 1e-9
    assert abs(result["competition5_auc"] - np.mean([result["auc"][l] for l in FIVE])) < 1e-12


def test_radiologists_operating_points_equal_direct_counts(scored):
    _, result, _ = scored
    truth = frame(shared_file("groundtruth.csv"))
    for reader in READERS:
        reads = frame(shared_file(f"radiologists/{reader}.csv")).loc[truth.index]
        for label in FIVE:
            y, r = truth[label].to_numpy(), reads[label].to_numpy()
            point = result["radiologists"][reader][label]
            assert point["sensitivity"] == ((y == 1) & (r == 1)).sum() / (y == 1).sum()
            assert point["specificity"] == ((y == 0) & (r == 0)).sum() / (y == 0).sum()
            low, high = point["sensitivity_ci"]
            assert low <= point["sensitivity"] <= high


def direct_curve_sensitivity(y: np.ndarray, s: np.ndarray, fpr: float) -> float:
    """The curve's sensitivity at a false-positive rate, from the thresholds themselves: the
    corners (FPR, TPR) of calling score >= t positive, joined by straight lines."""
    corners = sorted({(0.0, 0.0)} | {(float(((s >= t) & (y == 0)).sum() / (y == 0).sum()),
                                       float(((s >= t) & (y == 1)).sum() / (y == 1).sum()))
                                      for t in np.unique(s)})
    xs, ys = np.array(corners).T
    at = ys[xs == fpr]
    if len(at):
        return float(at.max())
    right = np.flatnonzero(xs > fpr)[0]
    left = right - 1
    return float(ys[left] + (fpr - xs[left]) * (ys[right] - ys[left]) / (xs[right] - xs[left]))


def test_below_curve_equals_a_direct_computation(scored):
    _, result, model = scored
    for label, count in result["radiologists_below_curve"].items():
        column = model.labels.index(label)
        y, s = model.targets[:, column], model.scores[:, column]
        below = 0
        for reader in READERS:
            point = result["radiologists"][reader][label]
            direct = direct_curve_sensitivity(y, s, 1 - point["specificity"])
            assert abs(point["model_sensitivity"] - direct) < 1e-12
            assert point["below_curve"] == (direct > point["sensitivity"] + 1e-12)
            below += point["below_curve"]
        assert count == below
        distribution = result["readers_by_label"][label]["below_curve_distribution"]
        assert abs(sum(distribution.values()) - 1) < 1e-9


def test_below_curve_on_hand_made_curves():
    # scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): corners (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    y = np.array([1, 0, 1, 0.0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    from sklearn.metrics import roc_curve
    fpr, tpr, _ = roc_curve(y, s)
    assert curve_sensitivity(fpr, tpr, 0.0) == 0.5
    assert curve_sensitivity(fpr, tpr, 0.25) == 0.5  # flat between (0, .5) and (.5, .5)
    assert curve_sensitivity(fpr, tpr, 0.5) == 1.0  # the top of the vertical step
    assert is_below(fpr, tpr, sensitivity=0.4, specificity=1.0)
    assert not is_below(fpr, tpr, sensitivity=0.5, specificity=0.75)  # on the curve
    assert not is_below(fpr, tpr, sensitivity=0.6, specificity=0.75)  # above it
    # a tie between a positive and a negative: the curve is the diagonal between the corners
    fpr, tpr, _ = roc_curve(np.array([1, 0.0]), np.array([0.5, 0.5]))
    assert curve_sensitivity(fpr, tpr, 0.3) == pytest.approx(0.3)
    # readers on a perfect model: every reader below unless perfect too
    y = np.array([1, 1, 0, 0.0])
    perfect = label_comparison(y, np.array([0.9, 0.8, 0.2, 0.1]),
                               {"a": np.array([1, 0, 0, 0.0]), "b": np.array([1, 1, 0, 0.0])},
                               pd.Series(["p1", "p2", "p3", "p4"]), 0, 20, 0.95, 0)
    assert perfect["below_curve"] == 1
    assert perfect["readers"]["a"]["below_curve"] and not perfect["readers"]["b"]["below_curve"]


def test_report_card_is_evaluates(scored):
    cfg, result, model = scored
    card = summarise_level(model.scores, model.targets, model.patient_ids, model.labels, cfg)
    assert result["report_card"] == json.loads(json.dumps(card))


def test_subgroups_read_the_references_support_devices(scored):
    """The leaderboard files do not score Support Devices; the audit takes groundtruth's."""
    _, result, _ = scored
    devices = frame(shared_file("groundtruth.csv"))["Support Devices"]
    strata = result["subgroups"]["Support Devices"]
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
            assert abs(result["compare"][path][label] - expected) < 1e-9
        row = result["compare_rows"][path][-1]
        assert row["pathology"].startswith("COMPETITION 5") and row["ci_low"] < row["ci_high"]
    board = [row["competition5_auc"] for row in result["leaderboard"]]
    assert board == sorted(board, reverse=True) and len(board) == 5


def test_labeler_table_equals_direct_counts():
    path = shared_file("labeler/chexpert_labels.csv")
    cfg = config(labels=shared_file("groundtruth.csv"), labeler=(path,))
    table = labeler_results(cfg.labeler, read_reference(Path(cfg.labels)), cfg)
    rows = {row["label"]: row for row in table["chexpert_labels"]["rows"]}
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
        assert result["unit"] == "study" and result["n_studies"] == 8
        assert "majority vote" not in result["reference"]  # not CheXpert's test patients
        assert abs(result["auc"]["Edema"] - expected) < 1e-12


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
    assert result["n_studies"] == 6 and result["skipped"] == {"predictions_only": 0,
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
