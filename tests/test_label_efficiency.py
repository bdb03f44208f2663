"""ablate.py --train_fraction: nested, seeded shares of the training patients, crossed with the
configurations and seeds, and the label-efficiency curve (label_efficiency.csv, .md, .png) with
the ablation table at each share. Trainings are replaced by random-weight checkpoints, as in
test_ablate.py's --seeds test (test_ablate.py runs train.py and evaluate.py themselves)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_ablate import configurations, fake_report

import ablate
from config import Config
from conftest import tiny_checkpoint
from cxr.cli import given_options, parse_args
from cxr.data.splits import patient_subset, read_split
from cxr.errors import ConfigError
from cxr.training.checkpoint import load_checkpoint, save_checkpoint

# ---- the shares: cxr.data.splits.patient_subset ------------------------------------------------


def split_frame(n_patients: int = 50) -> pd.DataFrame:
    """A training split of n patients with 1 to 3 images each."""
    rows = [{"patient_id": f"patient{p:05d}", "image_path": f"p{p}/view{i}.jpg"}
            for p in range(n_patients) for i in range(1 + p % 3)]
    return pd.DataFrame(rows)


def patients(frame: pd.DataFrame) -> set[str]:
    return set(frame["patient_id"])


def test_shares_are_nested_for_a_seed_and_differ_across_seeds():
    frame = split_frame()
    fractions = (0.01, 0.1, 0.3, 0.7, 1.0)
    by_seed = {seed: [patients(patient_subset(frame, f, seed)) for f in fractions]
               for seed in (42, 43)}
    for subsets in by_seed.values():
        assert [len(s) for s in subsets] == [1, 5, 15, 35, 50]  # ceil(share x 50), at least 1
        assert all(small <= large for small, large in zip(subsets, subsets[1:]))  # nested
    assert by_seed[42][2] != by_seed[43][2]  # another seed, other patients
    assert by_seed[42] == [patients(patient_subset(frame, f, 42)) for f in fractions]  # again
    assert len(patients(patient_subset(frame, 1e-6, 7))) == 1  # never empty
    share = patient_subset(frame, 0.3, 42)  # every image of a drawn patient, none of the others
    assert len(share) == frame["patient_id"].isin(by_seed[42][2]).sum()


def test_a_share_counts_what_train_py_trains_on():
    from cxr.evaluation.label_efficiency import training_share

    frame = split_frame()
    share = training_share(frame, 0.3, [42, 43])
    assert (share.fraction, share.seeds, share.split_patients) == (0.3, [42, 43], 50)
    assert share.patients == [15, 15]
    assert share.images == [len(patient_subset(frame, 0.3, seed)) for seed in (42, 43)]
    assert share.mean_images == sum(share.images) / 2


# ---- the command line --------------------------------------------------------------------------

def test_shares_and_run_names(tmp_path):
    def fractions(*argv):
        return ablate.fraction_list(parse_args(list(argv), "ablate.py", defaults=Config()))

    assert fractions() == [None] and fractions("--train_fraction", "1.0") == [None]
    assert fractions("--train_fraction", "1.0,0.01,0.1") == [0.01, 0.1, 1.0]
    assert fractions("--train_fraction", "0.5") == [0.5]
    with pytest.raises(ConfigError, match="--train_fraction names 0.1 twice"):
        fractions("--train_fraction", "0.1,0.1")
    found = configurations(["a:", "b: --dropout 0.5"], ["--models_dir", str(tmp_path)])
    (whole,) = ablate.runs_of(found[1], "x", [42])  # the whole split: named as before
    assert (whole.run_dir.name, whole.title, whole.fraction) == ("x-b", "b", None)
    runs = ablate.runs_of(found[1], "x", [42, 43], 0.1)
    assert [run.run_dir.name for run in runs] == ["x-b-f0.1-s42", "x-b-f0.1-s43"]
    assert [run.configuration.cfg.train_fraction for run in runs] == [(0.1,), (0.1,)]
    (one,) = ablate.runs_of(found[1], "x", [42], 0.01)
    assert (one.run_dir.name, one.title) == ("x-b-f0.01", "b-f0.01")
    assert ablate.stage_options("train.py", {}, one.configuration, None, one.fraction) == [
        "--dropout", "0.5", "--train_fraction", "0.01"]
    assert "--train_fraction" not in ablate.stage_options("evaluate.py", {}, one.configuration,
                                                          None, one.fraction)
    assert "--train_fraction" not in ablate.stage_options("train.py", {}, whole.configuration)


def test_a_configuration_may_not_set_the_share():
    with pytest.raises(ConfigError, match="'b' sets --train_fraction: ablate.py trains every "
                                          "configuration on every share"):
        configurations(["a:", "b: --train_fraction 0.1"], ["--train_fraction", "0.1,1.0"])


def test_one_configuration_is_enough_for_a_curve():
    with pytest.raises(ConfigError, match="at least two configurations"):
        configurations(["a:"])
    shared = parse_args(["--ablation", "a:", "--train_fraction", "0.1,1.0"], "ablate.py",
                        defaults=Config())
    assert [c.name for c in ablate.resolve_configurations(shared, {}, curve=True)] == ["a"]


# ---- end to end, the trainings replaced ----------------------------------------------------------

SHARED = ["--epochs", "1", "--image_size", "32", "--pretrained", "false", "--num_workers", "0",
          "--bootstrap_resamples", "100", "--min_positives", "1", "--precision", "fp32"]
SPECS = ["no-dropout: --dropout 0.0", "dropout: --dropout 0.5"]


def fake_stages(models: Path, monkeypatch) -> list[tuple]:
    """ablate.run_step replaced: train.py writes a random-weight checkpoint of the run's seed,
    share and configuration (a finished run), evaluate.py its report on the real test split.
    Returns the list of (script, configuration, options) launched."""
    launched = []
    predicted = {}
    real_predictions = ablate.test_predictions

    def remembered(configuration, run_dir):
        if run_dir not in predicted:
            predicted[run_dir] = real_predictions(configuration, run_dir)
        return predicted[run_dir]

    def fake_step(script, options, configuration, log_path):
        launched.append((script, configuration.name, options))
        cfg = configuration.cfg
        if script == "train.py":
            run_dir = models / options[options.index("--run_name") + 1]
            weights = (cfg.seed + int(1000 * cfg.train_fraction[0])
                       + (7 if configuration.name == "dropout" else 0))
            best = tiny_checkpoint(run_dir / "best.pth", image_size=32, seed=weights,
                                   dropout=cfg.dropout)
            save_checkpoint({**load_checkpoint(best), "epoch": cfg.epochs}, run_dir / "last.pth")
            (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        else:
            best = Path(options[options.index("--checkpoint") + 1])
            report = fake_report(remembered(configuration, best.parent), cfg, str(best))
            (best.parent / "eval_test.json").write_text(json.dumps(report.as_dict()))

    monkeypatch.setattr(ablate, "run_step", fake_step)
    monkeypatch.setattr(ablate, "test_predictions", remembered)
    return launched


def run_ablate(argv: list[str]) -> None:
    ablate.main(parse_args(argv, "ablate.py", defaults=Config()),
                given_options(argv, "ablate.py", Config))


def subset_counts(data_dir: str, fraction: float, seed: int) -> tuple[int, int]:
    """(patients, images) of the share train.py trains on."""
    subset = patient_subset(read_split(Path(data_dir) / "splits" / "train.csv"), fraction, seed)
    return subset["patient_id"].nunique(), len(subset)


def test_two_shares_two_configurations_two_seeds(data_args, monkeypatch, capsys):
    options, models = data_args
    data_dir = options[options.index("--data_dir") + 1]
    launched = fake_stages(models, monkeypatch)
    argv = [*options, *SHARED, "--ablation_name", "curve", "--seeds", "2",
            "--train_fraction", "1.0,0.25", "--ablation", *SPECS]
    run_ablate(argv)
    stdout = capsys.readouterr().out
    trained = [(name, opts[opts.index("--run_name") + 1], opts[opts.index("--seed") + 1],
                opts[opts.index("--train_fraction") + 1])
               for script, name, opts in launched if script == "train.py"]
    assert trained == [(name, f"curve-{name}-f{share}-s{seed}", str(seed), share)
                       for seed in (42, 43) for share in ("0.25", "1.0")
                       for name in ("no-dropout", "dropout")]  # seed by seed, share by share
    out = models / "ablation-curve"

    curve = pd.read_csv(out / "label_efficiency.csv")
    assert list(zip(curve["configuration"], curve["train_fraction"])) == [
        ("no-dropout", 0.25), ("no-dropout", 1.0), ("dropout", 0.25), ("dropout", 1.0)]
    for _, point in curve.iterrows():
        counts = [subset_counts(data_dir, point["train_fraction"], seed) for seed in (42, 43)]
        assert point["patients"] == np.mean([p for p, _ in counts])
        assert (point["patients_min"], point["patients_max"]) == (min(counts)[0], max(counts)[0])
        assert point["images"] == np.mean([i for _, i in counts])
        assert point["images_min"] == min(i for _, i in counts)
        for stem, low, high in (("mean_auc", "ci_low", "ci_high"),
                                ("competition_auc", "competition_ci_low",
                                 "competition_ci_high")):
            assert point[low] <= point[stem] <= point[high], (stem, point)
        assert (point["seeds"], point["n_seeds"], point["test_patients"]) == ("42 43", 2, 6)
        assert point["interval"] == "test patients and seeds"
    assert curve.loc[0, "patients"] == math.ceil(0.25 * curve.loc[1, "patients"])  # 8 of 32
    markdown = (out / "label_efficiency.md").read_text()
    assert "![Test AUC against labelled training patients](label_efficiency.png)" in markdown
    assert "two-level bootstrap" in markdown and "8 runs (2 configurations x 2 shares x 2 seeds)" \
        in markdown and "the test split's labels (6 images, 6 patients)" in markdown
    assert (out / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Label efficiency curve: test AUC against labelled training patients" in stdout

    # the comparison with the baseline, paired, at each share: one block a share
    table = pd.read_csv(out / "ablation.csv")
    assert list(table.columns[:2]) == ["configuration", "train_fraction"]
    assert list(zip(table["configuration"], table["train_fraction"])) == [
        ("no-dropout", 0.25), ("dropout", 0.25), ("no-dropout", 1.0), ("dropout", 1.0)]
    assert table["diff_mean_auc"].isna().tolist() == [True, False, True, False]
    assert table.loc[1, "runs"] == ";".join(f"{models}/curve-dropout-f0.25-s{seed}"
                                            for seed in (42, 43))
    np.testing.assert_allclose(curve.sort_values(["train_fraction", "configuration"])["mean_auc"],
                               table.sort_values(["train_fraction", "configuration"])["mean_auc"])
    ablation_md = (out / "ablation.md").read_text()
    assert "# Ablation curve, training share 0.25" in ablation_md
    assert "# Ablation curve, training share 1" in ablation_md
    assert "`--train_fraction 0.25`: 8 of 32 patients" in ablation_md

    # re-run: all skipped; an interrupted run (its last.pth mid-way) resumes with its share
    last = models / "curve-dropout-f0.25-s43" / "last.pth"
    save_checkpoint({**load_checkpoint(last), "epoch": 0}, last)
    launched.clear()
    run_ablate(argv)
    again = capsys.readouterr().out
    assert again.count("already holds its trained and evaluated run") == 7
    ((script, name, opts), evaluated) = launched
    assert (script, name, evaluated[0]) == ("train.py", "dropout", "evaluate.py")
    assert opts[-4:] == ["--run_name", "curve-dropout-f0.25-s43", "--resume", "auto"]
    assert opts[opts.index("--train_fraction") + 1] == "0.25"


def test_one_share_with_one_seed(data_args, monkeypatch):
    """One configuration, one share below 1, one seed: the run named with its share, the point's
    interval its report's (test patients only)."""
    options, models = data_args
    data_dir = options[options.index("--data_dir") + 1]
    launched = fake_stages(models, monkeypatch)
    run_ablate([*options, *SHARED, "--ablation_name", "single", "--train_fraction", "0.5",
                "--ablation", "only: --dropout 0.1"])
    assert [(script, name) for script, name, _ in launched] == [("train.py", "only"),
                                                                ("evaluate.py", "only")]
    assert (models / "single-only-f0.5" / "eval_test.json").is_file()
    (point,) = pd.read_csv(models / "ablation-single" / "label_efficiency.csv").to_dict("records")
    assert (point["patients"], point["images"]) == subset_counts(data_dir, 0.5, 42)
    assert point["interval"] == "test patients" and point["seeds"] == 42
    assert point["ci_low"] <= point["mean_auc"] <= point["ci_high"]
    assert "cluster-robust DeLong" in (models / "ablation-single" / "label_efficiency.md"
                                       ).read_text()
