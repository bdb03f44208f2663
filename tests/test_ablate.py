"""ablate.py: configurations parsed and checked, the table from eval reports and predictions, and
one small ablation run end to end (then re-run: finished configurations are skipped)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import ablate
import cxr.evaluation.seeds as seeds
from config import Config
from conftest import ROOT, tiny_checkpoint
from cxr.cli import command_line_options, given_options, parse_args
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.operating_points import choose_thresholds
from cxr.evaluation.predictions import Predictions, evaluate_predictions
from cxr.evaluation.report import EvaluationReport
from cxr.reporting.ablation_report import format_summary, markdown_report, split_text
from cxr.training.checkpoint import load_checkpoint, save_checkpoint

LABELS = ("Atelectasis", "Cardiomegaly", "Edema", "Fracture")


def configurations(specs, shared_argv=()):
    shared = parse_args([*shared_argv, *(["--ablation", *specs] if specs else [])], "ablate.py",
                        defaults=Config())
    return ablate.resolve_configurations(shared, command_line_options(list(shared_argv),
                                                                      "ablate.py", Config))


# ---- command line ------------------------------------------------------------------------------

def test_ablation_is_a_field_of_whole_configurations():
    argv = ["--data_dir", "d", "--ablation", "a: --dropout 0", "b: --gradcam A,B", "--epochs",
            "3", "--ablation_name", "x"]
    cfg = parse_args(argv, "ablate.py", defaults=Config())
    assert cfg.ablation == ("a: --dropout 0", "b: --gradcam A,B")  # not split on commas
    assert (cfg.data_dir, cfg.epochs, cfg.ablation_name) == ("d", 3, "x")
    assert parse_args(["--ablation=c: --gem_p 1"], "ablate.py",
                      defaults=Config()).ablation == ("c: --gem_p 1",)


def test_each_stage_gets_the_options_it_reads():
    shared = command_line_options(["--data_dir", "d", "--epochs", "3", "--num_workers", "-1",
                                   "--bootstrap_resamples", "10"], "ablate.py", Config)
    found = configurations(["a:", "b: --dropout 0.5 --tta=true"], ["--epochs", "3"])
    assert ablate.stage_options("train.py", shared, found[1]) == [
        "--data_dir", "d", "--epochs", "3", "--num_workers", "-1", "--dropout", "0.5"]
    # evaluate.py's intervals draw no resamples: --bootstrap_resamples is ablate.py's own (the
    # --seeds table's two-level bootstrap)
    assert ablate.stage_options("evaluate.py", shared, found[1]) == [
        "--data_dir", "d", "--num_workers", "-1", "--tta", "true"]


def test_configurations_have_a_name_and_the_options_that_differ():
    by_class = "by-class: --uncertainty_policy_by_class 'Edema=U-Zeros, Atelectasis=U-Zeros'"
    found = configurations(["base", "drop: --dropout 0.5 --gem_p=1", by_class], ["--epochs", "3"])
    assert [c.name for c in found] == ["base", "drop", "by-class"]
    assert found[0].options == [] and found[0].options_text == "(shared options only)"
    assert found[1].options == ["--dropout", "0.5", "--gem_p=1"]
    assert (found[1].cfg.dropout, found[1].cfg.gem_p, found[1].cfg.epochs) == (0.5, 1.0, 3)
    assert found[2].cfg.uncertainty_policy_by_class == ("Edema=U-Zeros", "Atelectasis=U-Zeros")
    assert found[0].cfg.dropout == Config().dropout  # the shared options only
    # repeating a shared value is allowed: the budget stays equal
    assert configurations(["a: --seed 7", "b:"], ["--seed", "7"])[0].cfg.seed == 7


@pytest.mark.parametrize("specs, shared, message", [
    (["a: --dropout 0"], [], "at least two configurations"),
    (["a: --dropout 0", "a: --dropout 0.5"], [], "name(s) a appear twice"),
    (["a:", "b: --seed 1"], [], "'b' sets --seed 1"),
    (["a:", "b: --epochs 9"], ["--epochs", "3"], "'b' sets --epochs 9"),
    (["a:", "b: --data_dir other"], [], "'b' sets --data_dir other"),
    (["a:", "b: --bootstrap_resamples 10"], [], "sets --bootstrap_resamples"),
    (["a:", "b: --run_name r"], [], "'b' sets --run_name: ablate.py sets it"),
    (["a:", "b: --dropot 0.5"], [], "'b': unknown option --dropot"),
    (["a:", "b: --gradcam Edema"], [], "'b': --gradcam is read by predict.py, not by ablate.py"),
    (["a:", "b: --ablation_name x"], [], "'b' sets --ablation_name: set it once, outside"),
    (["a:", "b: --seeds 2"], [], "'b' sets --seeds: set it once, outside"),
    (["a:", "b: --epochs"], [], "--epochs needs a value"),
    (["a:", "b c: --dropout 0"], [], "with a NAME of letters"),
    (["a:", "b:"], ["--resume", "auto"], "--resume: ablate.py sets it"),
    (["a:", "views: --frontal_only false"], [], "'views': --frontal_only is read by "
                                                "preprocess.py, not ablate.py"),
])
def test_bad_configurations_are_refused_before_training(specs, shared, message):
    with pytest.raises(ConfigError) as error:
        configurations(specs, shared)
    assert message in str(error.value)


def test_a_data_option_other_than_the_datas_is_refused(data_args):
    options, _ = data_args  # built with --val_fraction 0.2
    with pytest.raises(ConfigError, match=r"--val_fraction is read by make_splits.py, not "
                                          r"ablate.py: the data in .* were built with "
                                          r"--val_fraction 0.2"):
        configurations(["a:", "b:"], [*options, "--val_fraction", "0.3"])
    assert configurations(["a:", "b:"], [*options, "--val_fraction", "0.2"])[1].cfg.val_fraction \
        == 0.2  # the value the data were built with: accepted


# ---- the table, from fake reports and predictions ----------------------------------------------

def fake_predictions(rng, noise: float) -> Predictions:
    """60 patients x 2 images; scores = targets + noise (less noise, better model)."""
    patients = np.repeat(np.arange(60), 2)
    targets = rng.integers(0, 2, (len(patients), len(LABELS))).astype(float)
    targets[:, 3] = 0.0  # Fracture: one label value, no AUC
    logits = (targets - 0.5) * 2 + rng.normal(0, noise, targets.shape)
    frame = pd.DataFrame({"image_path": [f"img{i}.png" for i in range(len(patients))],
                          "patient_id": [f"p{p}" for p in patients],
                          "study_id": ["study1"] * len(patients)})  # a patient's 2 images: 1 study
    return Predictions(frame, logits, targets, LABELS)


def fake_report(preds: Predictions, cfg: Config, checkpoint: str = "best.pth"
                ) -> EvaluationReport:
    """The report evaluate.py writes as eval_test.json (uncalibrated: its AUCs are the same)."""
    probs = 1 / (1 + np.exp(-preds.logits))
    thresholds = choose_thresholds(preds.targets, probs, preds.labels, 0.9)
    return evaluate_predictions(preds, thresholds, {"method": "none", "parameters": None}, cfg,
                                split="test", checkpoint=checkpoint, epoch=1)


def test_table_has_intervals_and_paired_differences_to_the_baseline(tmp_path):
    cfg = Config(bootstrap_resamples=200)
    rng = np.random.default_rng(0)
    base = fake_predictions(rng, noise=2.0)
    better = Predictions(base.frame, base.targets * 2 - 1 + rng.normal(0, 0.5, base.targets.shape),
                         base.targets, LABELS)
    found = configurations(["base: --dropout 0.2", "better: --dropout 0.5"])
    differences, _ = ablate.paired_differences(base, better, cfg)
    rows = [ablate.table_row(found[0], tmp_path / "x-base", fake_report(base, cfg), None, LABELS,
                             "image"),
            ablate.table_row(found[1], tmp_path / "x-better", fake_report(better, cfg),
                             differences, LABELS, "image")]
    first, second = rows
    assert first["baseline"] and first["diff_mean_auc"] is None
    assert first["mean_auc_ci_low"] <= first["mean_auc"] <= first["mean_auc_ci_high"]
    assert second["diff_mean_auc"] == pytest.approx(second["mean_auc"] - first["mean_auc"])
    assert 0 < second["diff_mean_auc_ci_low"] <= second["diff_mean_auc_ci_high"]
    assert second["diff_mean_auc_verdict"] == "better"
    assert second["diff_competition_auc_verdict"] == "better"  # 3 evaluable of the five
    assert first["auc Fracture"] is None and second["diff Fracture"] is None
    assert second["diff Edema"] == pytest.approx(second["auc Edema"] - first["auc Edema"])

    text = format_summary(rows, cfg.ci_level)
    assert "baseline" in text.splitlines()[2] and "better" in text.splitlines()[3]
    runs = {c.name: ablate.runs_of(c, "x", [42]) for c in found}
    setup = ablate.setup_of(found, runs, "x", "python ablate.py ...", cfg)
    markdown = markdown_report(rows, setup, fake_report(base, cfg).image.means, LABELS)
    assert "| base | `--dropout 0.2` |" in markdown and "*paired*" in markdown
    assert "| Fracture | n/a | n/a |" in markdown
    assert markdown.count("\n| better |") == 2  # in the configurations and the summary tables


def test_a_model_against_itself_differs_by_exactly_zero():
    preds = fake_predictions(np.random.default_rng(1), noise=1.0)
    rows, _ = ablate.paired_differences(preds, preds, Config(bootstrap_resamples=50))
    means = ablate.mean_rows(rows)
    assert set(means) == {"all", "competition"}
    assert means["all"]["difference"] == 0 and means["all"]["ci_low"] == 0
    assert ablate.verdict_text(means["all"]["verdict"]) == "no clear difference"


def as_study_model(preds: Predictions) -> Predictions:
    """What a study-mode run gives: one row per study (its first image's), here the max over the
    study's image logits, so it ranks studies exactly as the image model's study level does."""
    first = preds.frame.groupby(["patient_id", "study_id"], sort=False).head(1).index
    logits = pd.DataFrame(preds.logits).groupby(preds.frame["patient_id"], sort=False).max()
    return Predictions(preds.frame.loc[first].reset_index(drop=True), logits.to_numpy(),
                       preds.targets[first], LABELS, per_study=True, n_images=len(preds.frame))


def test_an_image_model_is_compared_with_a_study_model_per_study():
    """A frontal run (one row per image) against a study run (one row per study): both are scored
    on the 60 studies, the image model's images aggregated by max, so equal rankings differ by 0
    and the pairing is never image-against-study."""
    cfg = Config(bootstrap_resamples=50)
    images = fake_predictions(np.random.default_rng(2), noise=1.0)
    studies = as_study_model(images)
    rows, both = ablate.paired_differences(images, studies, cfg)
    assert both.unit == "studies" and len(both.frame) == 60
    np.testing.assert_array_equal(both.scores_a, both.scores_b)
    assert ablate.mean_rows(rows)["all"]["difference"] == 0
    # a study table scores two image models per study too
    _, both = ablate.paired_differences(images, images, cfg, per_study=True)
    assert both.unit == "studies" and len(both.frame) == 60
    _, both = ablate.paired_differences(images, images, cfg)
    assert both.unit == "images" and len(both.frame) == 120


def test_a_study_table_reads_the_study_level_of_each_report(tmp_path):
    cfg = Config(bootstrap_resamples=50)
    images = fake_predictions(np.random.default_rng(3), noise=1.0)
    report = fake_report(images, cfg)
    means = {**report.image.means,  # tell the levels apart
             "all": dataclasses.replace(report.image.means["all"], auc=0.5)}
    report = dataclasses.replace(report, study=dataclasses.replace(report.image, means=means))
    found = configurations(["frontal: --view_mode frontal", "study: --view_mode study"])
    assert ablate.table_level(found) == "study"
    assert ablate.table_level(found[:1]) == "image"
    row = ablate.table_row(found[0], tmp_path / "x-frontal", report, None, LABELS, "study")
    assert row["mean_auc"] == 0.5
    assert split_text(row, "study") == "60 studies, 60 patients"
    assert split_text(row, "image") == "120 images, 60 patients"


# ---- end to end ----------------------------------------------------------------------------------

SHARED = ["--epochs", "1", "--frozen_epochs", "1", "--image_size", "32", "--pretrained", "false",
          "--num_workers", "0", "--bootstrap_resamples", "100", "--ablation_name", "tiny",
          "--min_positives", "1"]  # a 6-image test split
SPECS = ["no-dropout: --dropout 0.0", "dropout: --dropout 0.5"]


def test_two_configurations_end_to_end_then_resumed(data_args, monkeypatch, capsys):
    options, models = data_args
    out = models / "ablation-tiny"
    shared_env = {**os.environ, "PIPELINE_OPTIONS": "--tta false --gradcam Edema"}
    result = subprocess.run([sys.executable, "ablate.py", *options, *SHARED, "--ablation", *SPECS],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=shared_env)
    assert result.returncode == 0, result.stdout + result.stderr
    stdout = result.stdout
    assert "train: wrote" in stdout and "evaluate: wrote" in stdout  # the children's output
    # each stage's exact command, with the options it reads (--tta from PIPELINE_OPTIONS, which
    # ablate.py reads through evaluate.py; --gradcam, read by neither, left out)
    commands = [line.removeprefix("ablate: $ ") for line in stdout.splitlines()
                if line.startswith("ablate: $ ")]
    assert len(commands) == 4 and "--gradcam" not in stdout
    train, evaluate = shlex.split(commands[0]), shlex.split(commands[1])
    assert train[:2] == [sys.executable, str(ROOT / "train.py")]
    assert train[2:] == [*options, *SHARED[:10], "--min_positives", "1", "--dropout", "0.0",
                         "--run_name", "tiny-no-dropout"]
    assert evaluate[1:] == [str(ROOT / "evaluate.py"), "--tta", "false", *options,
                            "--num_workers", "0", "--min_positives", "1", "--checkpoint",
                            str(models / "tiny-no-dropout" / "best.pth")]
    table = pd.read_csv(out / "ablation.csv")
    assert table["configuration"].tolist() == ["no-dropout", "dropout"]
    assert table["run"].tolist() == [str(models / "tiny-no-dropout"), str(models / "tiny-dropout")]
    assert pd.isna(table.loc[0, "diff_mean_auc"]) and np.isfinite(table.loc[1, "diff_mean_auc"])
    assert table.loc[1, "diff_mean_auc_ci_low"] <= table.loc[1, "diff_mean_auc_ci_high"]
    for column in ("mean_auc", "mean_auc_ci_low", "competition_auc", "auc Edema"):
        assert table[column].notna().all(), column
    markdown = (out / "ablation.md").read_text()
    assert "| no-dropout |" in markdown and "| dropout |" in markdown
    assert (out / "dropout.log").read_text().count("train: wrote") == 1
    val_reports = [json.loads((models / f"tiny-{name}" / "eval_val.json").read_text())
                   for name in ("no-dropout", "dropout")]  # every run selected on one reference
    assert len({json.dumps([r["reference"], r["masked_uncertain"], r["n_images"]])
                for r in val_reports}) == 1
    assert f"ablate: wrote {out}/ablation.csv, ablation.md" in stdout.splitlines()[-1]

    # re-run (in this process, the child scripts recorded instead of run): the first is skipped;
    # the second, trained but not evaluated, is only evaluated
    report = models / "tiny-dropout" / "eval_test.json"
    saved = report.read_text()
    report.unlink()
    launched = []

    def fake_step(script, step_options, configuration, log_path):
        launched.append((script, configuration.name))
        report.write_text(saved)

    monkeypatch.setattr(ablate, "run_step", fake_step)
    argv = [*options, *SHARED, "--ablation", *SPECS]
    ablate.main(parse_args(argv, "ablate.py", defaults=Config()),
                given_options(argv, "ablate.py", Config))
    again = capsys.readouterr().out
    assert launched == [("evaluate.py", "dropout")]
    assert "[1/2] no-dropout: " in again and "already holds its trained and evaluated run" in again
    assert "[2/2] dropout: " in again and "is trained; evaluating it" in again
    assert pd.read_csv(out / "ablation.csv")["diff_mean_auc"].equals(table["diff_mean_auc"])

    # the same ablation name with another setting for a trained configuration is refused
    changed = configurations(["dropout: --dropout 0.3", "b:"], [*options, *SHARED])[0]
    with pytest.raises(PipelineError, match="was trained with --dropout 0.5"):
        ablate.check_existing_run(models / "tiny-dropout", changed)


# ---- --seeds N: every configuration trained with N seeds -----------------------------------------

class TableReached(Exception):
    """Raised in place of the table: the test looks only at what was trained."""


def test_seeds_train_every_configuration_with_each_seed(tmp_path, monkeypatch):
    argv = ["--models_dir", str(tmp_path), "--seed", "7", "--seeds", "3", "--epochs", "2",
            "--ablation", "a:", "b: --dropout 0.5", "--ablation_name", "x"]
    cfg = parse_args(argv, "ablate.py", defaults=Config())
    assert ablate.seed_list(cfg) == [7, 8, 9]
    launched = []

    def fake_step(script, options, configuration, log_path):
        launched.append((script, options, configuration.name, configuration.cfg.seed,
                         log_path.name))

    def no_table(configurations, runs):
        assert [[run.run_dir.name for run in runs[c.name]] for c in configurations] == [
            ["x-a-s7", "x-a-s8", "x-a-s9"], ["x-b-s7", "x-b-s8", "x-b-s9"]]
        raise TableReached

    monkeypatch.setattr(ablate, "run_step", fake_step)
    monkeypatch.setattr(ablate, "build_seed_table", no_table)
    with pytest.raises(TableReached):
        ablate.main(cfg, given_options(argv, "ablate.py", Config))
    trained = [(name, seed, options[options.index("--run_name") + 1], log)
               for script, options, name, seed, log in launched if script == "train.py"]
    assert trained == [("a", 7, "x-a-s7", "a-s7.log"), ("b", 7, "x-b-s7", "b-s7.log"),
                       ("a", 8, "x-a-s8", "a-s8.log"), ("b", 8, "x-b-s8", "b-s8.log"),
                       ("a", 9, "x-a-s9", "a-s9.log"), ("b", 9, "x-b-s9", "b-s9.log")]
    for script, options, name, seed, _ in launched:
        assert "--seeds" not in options and not any(o.startswith("--seeds=") for o in options)
        # train.py trains the run's seed; evaluate.py takes the ablation's own --seed (it draws
        # with it only under --recalibrate, which ablate.py does not run)
        assert options.count("--seed") == 1
        assert options[options.index("--seed") + 1] == (str(seed) if script == "train.py"
                                                        else "7")
        if script == "evaluate.py":
            assert options[-2:] == ["--checkpoint", str(tmp_path / f"x-{name}-s{seed}" /
                                                         "best.pth")]
    assert [o for o in launched if o[0] == "train.py"][3][1][-4:] == [
        "--dropout", "0.5", "--run_name", "x-b-s8"]
    # one seed: the run is named, and trained, as without --seeds
    found = configurations(["a:", "b:"], ["--models_dir", str(tmp_path)])
    (only,) = ablate.runs_of(found[1], "x", [42])
    assert (only.run_dir, only.seeded, only.title) == (tmp_path / "x-b", False, "b")
    assert "--seed" not in ablate.stage_options("train.py", {}, only.configuration)


def seed_predictions(strengths, rng, n_patients=200, patient_noise=1.0, run_noise=0.02):
    """One Predictions per seed on the same 200 one-image patients: logits = targets * strength
    + a per-image noise shared by every run (the patients' difficulty) + a little noise of the run
    itself. A seed's strength sets its AUC: strengths far apart are a large seed variation."""
    targets = rng.integers(0, 2, (n_patients, len(LABELS))).astype(float)
    targets[:, 3] = 0.0  # Fracture: one label value, no AUC, in no mean
    shared = rng.normal(0, patient_noise, targets.shape)
    frame = pd.DataFrame({"image_path": [f"img{i}.png" for i in range(n_patients)],
                          "patient_id": [f"p{i}" for i in range(n_patients)],
                          "study_id": "study1"})
    return [Predictions(frame, targets * strength + shared
                        + rng.normal(0, run_noise, targets.shape), targets, LABELS)
            for strength in strengths]


def score_configurations(*runs_of_each, resamples=300):
    """Each configuration's runs (lists of Predictions) aligned together and scored."""
    every = [p for runs in runs_of_each for p in runs]
    aligned = seeds.align_runs(every, "max")
    scored, start = [], 0
    for index, runs in enumerate(runs_of_each):
        scored.append(seeds.score_runs(aligned.scores[start:start + len(runs)],
                                       list(range(len(runs))), aligned, resamples, 42, index))
        start += len(runs)
    members = seeds.mean_members(aligned.targets, LABELS, 10)
    return scored, members["all"][1]


def test_identical_configurations_differ_by_zero_with_an_interval_around_it():
    runs = seed_predictions([0.5, 1.0, 2.0], np.random.default_rng(4))
    (first, second), columns = score_configurations(runs, runs)
    assert columns == [0, 1, 2]  # Fracture, one label value, is in no mean
    diff = seeds.seed_difference(first, second, columns, 0.95)
    assert diff["difference"] == 0
    assert diff["ci_low"] < 0 < diff["ci_high"]  # each configuration draws its own seeds
    assert ablate.verdict_text(diff["verdict"]) == "no clear difference"
    summary = seeds.seed_summary(first, columns, 0.95)
    per_run = [np.mean([roc_auc_score(p.targets[:, c], p.logits[:, c]) for c in columns])
               for p in runs]
    assert summary["mean"] == pytest.approx(np.mean(per_run))
    assert summary["sd"] == pytest.approx(np.std(per_run, ddof=1))
    assert (summary["min"], summary["max"]) == pytest.approx((min(per_run), max(per_run)))
    assert list(summary["values"]) == [0, 1, 2]
    assert summary["ci_low"] < summary["mean"] < summary["ci_high"]
    assert summary["ci_high"] - summary["ci_low"] > summary["sd"]  # the seeds' spread is in it


def test_the_interval_covers_seed_variation_that_a_paired_patient_interval_misses():
    """Large seed noise, little patient noise: one seed pair's paired patient interval is narrow
    and would call B better; the two-level interval over 3 seeds each is much wider."""
    rng = np.random.default_rng(5)
    a = seed_predictions([0.3, 1.0, 3.0], rng, patient_noise=0.3)
    b = [Predictions(p.frame, p.targets * s + (p.logits - p.targets * base), p.targets, LABELS)
         for p, s, base in zip(a, [0.5, 1.2, 3.2], [0.3, 1.0, 3.0])]  # the same runs, +0.2
    (base, other), columns = score_configurations(a, b)
    two_level = seeds.seed_difference(base, other, columns, 0.95)
    patient_only = ablate.mean_rows(ablate.paired_differences(a[1], b[1],
                                                              Config(bootstrap_resamples=300))[0])
    patient_only = patient_only["all"]
    assert ablate.verdict_text(patient_only["verdict"]) == "better"
    assert two_level["difference"] > 0
    width = two_level["ci_high"] - two_level["ci_low"]
    assert width > 5 * (patient_only["ci_high"] - patient_only["ci_low"])
    assert ablate.verdict_text(two_level["verdict"]) == "no clear difference"


def test_a_configuration_better_on_every_seed_is_better():
    rng = np.random.default_rng(6)
    weak = seed_predictions([0.6, 0.7, 0.8], rng)
    strong = [Predictions(p.frame, p.logits + p.targets * 1.5, p.targets, LABELS) for p in weak]
    (base, other), columns = score_configurations(weak, strong)
    assert ablate.verdict_text(seeds.seed_difference(base, other, columns, 0.95)["verdict"]) \
        == "better"
    assert ablate.verdict_text(seeds.seed_difference(other, base, columns, 0.95)["verdict"]) \
        == "worse"
    assert seeds.seed_difference(base, other, columns, 0.95)["ci_low"] > 0


def test_runs_are_scored_on_the_rows_every_run_predicted():
    first, second = seed_predictions([1.0, 2.0], np.random.default_rng(7), n_patients=20)
    shorter = Predictions(second.frame.iloc[5:].reset_index(drop=True), second.logits[5:],
                          second.targets[5:], LABELS)
    aligned = seeds.align_runs([first, shorter], "max")
    assert len(aligned.frame) == 15 and aligned.unit == "images"
    np.testing.assert_array_equal(aligned.scores[0], first.logits[5:])
    np.testing.assert_array_equal(aligned.scores[1], second.logits[5:])


SEEDS_SHARED = ["--epochs", "1", "--frozen_epochs", "1", "--image_size", "32", "--pretrained",
                "false", "--num_workers", "0", "--bootstrap_resamples", "100", "--ablation_name",
                "seeded", "--min_positives", "1", "--seeds", "2", "--precision", "fp32"]


def test_two_configurations_with_two_seeds_end_to_end(data_args, monkeypatch, capsys):
    """ablate.py --seeds 2 in this process, each training replaced by a random-weight checkpoint
    of the run's seed (train.py and evaluate.py themselves are run by the test above): four runs,
    their predictions on the real test split, and the table across seeds in both files."""
    options, models = data_args
    launched = []

    def fake_step(script, step_options, configuration, log_path):
        launched.append((script, configuration.name))
        cfg = configuration.cfg
        if script == "train.py":
            run_dir = models / step_options[step_options.index("--run_name") + 1]
            seed = int(step_options[step_options.index("--seed") + 1])
            weights = seed + (1000 if configuration.name == "dropout" else 0)  # 4 models
            best = tiny_checkpoint(run_dir / "best.pth", image_size=32, seed=weights,
                                   dropout=cfg.dropout)
            last = load_checkpoint(best)
            save_checkpoint({**last, "epoch": cfg.epochs}, run_dir / "last.pth")  # finished
            (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        else:
            best = step_options[step_options.index("--checkpoint") + 1]
            report = fake_report(remembered(configuration, Path(best).parent), cfg, best)
            (Path(best).parent / "eval_test.json").write_text(json.dumps(report.as_dict()))

    predicted = {}  # run folder -> its predictions: the re-run below does not predict again
    real_predictions = ablate.test_predictions

    def remembered(configuration, run_dir):
        if run_dir not in predicted:
            predicted[run_dir] = real_predictions(configuration, run_dir)
        return predicted[run_dir]

    monkeypatch.setattr(ablate, "run_step", fake_step)
    monkeypatch.setattr(ablate, "test_predictions", remembered)
    argv = [*options, *SEEDS_SHARED, "--ablation", *SPECS]
    ablate.main(parse_args(argv, "ablate.py", defaults=Config()),
                given_options(argv, "ablate.py", Config))
    stdout = capsys.readouterr().out
    assert launched == [(script, name) for name in ("no-dropout", "dropout", "no-dropout",
                                                    "dropout") for script in ("train.py",
                                                                              "evaluate.py")]
    out = models / "ablation-seeded"
    table = pd.read_csv(out / "ablation.csv")
    assert table["configuration"].tolist() == ["no-dropout", "dropout"]
    assert table["runs"].tolist() == [f"{models}/seeded-{name}-s42;{models}/seeded-{name}-s43"
                                      for name in ("no-dropout", "dropout")]
    assert table["seeds"].tolist() == ["42 43", "42 43"] and (table["n_seeds"] == 2).all()
    for stem in ("mean_auc", "competition_auc"):
        np.testing.assert_allclose(table[stem], table[[f"{stem}_s42", f"{stem}_s43"]].mean(axis=1))
        np.testing.assert_allclose(table[f"{stem}_sd"],
                                   table[[f"{stem}_s42", f"{stem}_s43"]].std(axis=1, ddof=1))
        assert (table[f"{stem}_min"] <= table[stem]).all()
        assert (table[stem] <= table[f"{stem}_max"]).all()
        assert pd.isna(table.loc[0, f"diff_{stem}"])
        assert table.loc[1, f"diff_{stem}"] == pytest.approx(table.loc[1, stem]
                                                             - table.loc[0, stem])
        assert table.loc[1, f"diff_{stem}_ci_low"] <= table.loc[1, f"diff_{stem}_ci_high"]
        assert table.loc[1, f"diff_{stem}_verdict"] in ("better", "worse", "no clear difference")
    assert (table["mean_auc_classes"] == 4).all()  # the four labelled observations
    np.testing.assert_allclose(table["auc Edema"], table[["auc Edema s42", "auc Edema s43"]]
                               .mean(axis=1))
    assert table["auc Edema sd"].notna().all() and np.isfinite(table.loc[1, "diff Edema"])
    assert table["auc Fracture"].isna().all()  # not labelled: no AUC
    markdown = (out / "ablation.md").read_text()
    assert "trained 2 times, with seeds 42, 43" in markdown
    assert "rests on 2 runs per configuration" in markdown and "understates" in markdown
    assert f"`{models}/seeded-dropout-s43`" in markdown
    assert "| Edema |" in markdown and "two-level" in markdown
    assert "means over 2 seeds" in stdout and "SD (min-max)" in stdout
    assert stdout.count("test predictions of") == 4 and len(predicted) == 4
    assert len({p.logits.tobytes() for p in predicted.values()}) == 4  # 4 different models

    # re-run: every run is finished and evaluated, so nothing is launched
    launched.clear()
    ablate.main(parse_args(argv, "ablate.py", defaults=Config()),
                given_options(argv, "ablate.py", Config))
    assert launched == [] and capsys.readouterr().out.count("already holds its trained") == 4
    assert pd.read_csv(out / "ablation.csv")["diff_mean_auc"].equals(table["diff_mean_auc"])
