"""Command-line overrides of config fields, shared by every script (cxr/cli.py), and the table
of which script reads which field (config.READS)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from dataclasses import dataclass

import pytest

from config import ACCEPTS, CALIBRATION_METHODS, DATA_FIELDS, POSITIONAL, READ_BY, READS, STAGES, \
    CalibrationMethod, Config, validate
from conftest import ROOT
from cxr.cli import apply_overrides, given_fields, parse_args, run_cli
from cxr.data.labels import UNCERTAINTY_POLICIES, UncertaintyPolicy
from cxr.errors import ConfigError


def test_overrides_convert_by_field_type_in_both_spellings():
    cfg = parse_args(["--epochs", "3", "--image_size=224", "--pretrained", "false",
                      "--lr_head", "3e-4", "--device=cpu", "--run_name", "exp1",
                      "--frontal_only", "True"])
    assert (cfg.epochs, cfg.image_size, cfg.pretrained, cfg.lr_head, cfg.device, cfg.run_name,
            cfg.frontal_only) == (3, 224, False, 3e-4, "cpu", "exp1", True)


def test_defaults_are_the_chexpert_recipe():
    cfg = Config()
    assert (cfg.image_size, cfg.batch_size * cfg.accumulation_steps, cfg.epochs,
            cfg.frozen_epochs, cfg.uncertainty_policy, cfg.frontal_only, cfg.gem_p,
            cfg.dropout) == (320, 32, 5, 1, "U-Ones", True, 3.0, 0.2)


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        parse_args(["--epoch", "3"])
    assert "unknown option --epoch" in str(error.value) and "epochs" in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "three"], "--epochs expects int"),
    (["--pretrained", "maybe"], "expects true or false"),
    (["--device", "tpu"], "not one of auto, cpu, cuda, mps"),
    (["--epochs"], "needs a value"),
    (["epochs=3"], "options look like --field value"),
    (["--frozen_epochs", "9"], "--frozen_epochs must be between 0 and --epochs"),
])
def test_bad_values_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_optional_fields_and_other_dataclasses():
    @dataclass
    class Other:
        limit: int | None = None
        name: str = "x"

    assert apply_overrides(Other(), ["--limit", "5"]).limit == 5
    assert apply_overrides(Other(), ["--limit", "none"]).limit is None


def test_scripts_exit_with_one_clear_line(capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda cfg: None, script="train.py", argv=["--bogus", "1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown option --bogus")


# ---- allowed values ----------------------------------------------------------------------------

def test_a_literal_field_names_its_values_on_the_command_line_and_from_python():
    with pytest.raises(ConfigError, match=r"^--precision 'fp8' is not one of auto, fp16, bf16, "
                                          r"fp32$"):
        parse_args(["--precision", "fp8"], "train.py")
    with pytest.raises(ConfigError, match=r"--view_fusion 'median' is not one of mean, max, "
                                          r"attention"):
        validate(Config(view_fusion="median"))  # a Config built in Python: the same check
    assert parse_args(["--calibration", "temperature"], "evaluate.py").calibration == "temperature"
    assert UNCERTAINTY_POLICIES == typing.get_args(UncertaintyPolicy)
    assert len(UNCERTAINTY_POLICIES) == 6
    assert CALIBRATION_METHODS == typing.get_args(CalibrationMethod) == ("platt", "temperature",
                                                                         "none")


def test_help_lists_what_the_script_reads_with_allowed_values(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"], "train.py")
    text = capsys.readouterr().out
    assert stop.value.code == 0
    assert "--precision {auto, fp16, bf16, fp32} = 'auto'" in text
    assert "--uncertainty_policy {U-Ones, U-Zeros, U-Ignore, U-MultiClass, U-Ones-LSR, " \
           "U-Zeros-LSR} = 'U-Ones'" in text
    assert "--epochs int = 5\n        total epochs, including the frozen warm-up" in text
    assert "--pretrained true|false = True" in text
    assert "--gradcam" not in text  # predict.py's
    assert "PIPELINE_OPTIONS" in text
    with pytest.raises(SystemExit):
        parse_args(["-h"], "predict.py")
    text = capsys.readouterr().out
    assert text.startswith("usage: python predict.py [INPUTS ...] [--field value ...]")
    assert "--gradcam str ... = ()" in text and "--epochs" not in text
    # a comment above its field (the field's line has none) is the field's
    assert "--study_grouping {folder, image} = 'folder'\n        predict.py: folder = " in text


# ---- several values, positional inputs ---------------------------------------------------------

def test_a_tuple_field_takes_the_values_up_to_the_next_option():
    cfg = parse_args(["--compare", "RUN_A", "models/b/best.pth", "--compare_split", "val"],
                     "evaluate.py")
    assert (cfg.compare, cfg.compare_split) == (("RUN_A", "models/b/best.pth"), "val")
    assert parse_args(["--compare", "RUN_A,RUN_B"], "evaluate.py").compare == ("RUN_A", "RUN_B")
    assert parse_args(["--compare=RUN_A,RUN_B"], "evaluate.py").compare == ("RUN_A", "RUN_B")
    cfg = parse_args(["--gradcam", "Pleural Effusion", "Edema", "--device", "cpu"], "predict.py")
    assert (cfg.gradcam, cfg.device) == (("Pleural Effusion", "Edema"), "cpu")
    assert parse_args(["--gradcam", "Cardiomegaly, Edema", "Fracture"], "predict.py").gradcam \
        == ("Cardiomegaly", "Edema", "Fracture")  # each value split on commas too
    assert parse_args(["--gradcam="], "predict.py").gradcam == ()
    assert parse_args(["--uncertainty_policy_by_class", "Edema=U-Zeros", "Atelectasis=U-Ignore"],
                      "train.py").uncertainty_policy_by_class == ("Edema=U-Zeros",
                                                                  "Atelectasis=U-Ignore")
    with pytest.raises(ConfigError, match="--gradcam needs a value"):
        parse_args(["--gradcam", "--device", "cpu"], "predict.py")


def test_paths_and_ablation_configurations_keep_their_commas():
    cfg = parse_args(["--inputs", "scans,2024/", "a b.dcm"], "predict.py")
    assert cfg.inputs == ("scans,2024/", "a b.dcm")
    cfg = parse_args(["--ablation", "a: --gradcam A,B", "b:"], "ablate.py")
    assert cfg.ablation == ("a: --gradcam A,B", "b:")


def test_a_scalar_takes_exactly_the_next_value():
    assert parse_args(["--num_workers", "-1"], "train.py").num_workers == -1
    assert parse_args(["--run_name=--odd"], "train.py").run_name == "--odd"
    with pytest.raises(ConfigError, match="unexpected argument 'b' after --run_name"):
        parse_args(["--run_name", "a", "b"], "train.py")
    with pytest.raises(ConfigError, match="--run_name needs a value"):
        parse_args(["--run_name", "--epochs", "3"], "train.py")


def test_predict_takes_its_inputs_before_the_first_option():
    cfg = parse_args(["scan.dcm", "folder/", "list,1.csv", "--checkpoint", "m/best.pth"],
                     "predict.py")
    assert (cfg.inputs, cfg.checkpoint) == (("scan.dcm", "folder/", "list,1.csv"), "m/best.pth")
    assert given_fields(["scan.dcm", "--device", "cpu"], "predict.py") == {"inputs", "device"}
    with pytest.raises(ConfigError, match="before the options or with --inputs, not both"):
        parse_args(["scan.dcm", "--inputs", "other.dcm"], "predict.py")
    with pytest.raises(ConfigError, match="predict.py's inputs go before the first option"):
        parse_args(["--checkpoint", "m/best.pth", "scan.dcm"], "predict.py")
    with pytest.raises(ConfigError, match=r"unexpected argument 'scan.dcm'.*\(evaluate.py takes "
                                          r"options only\)"):
        parse_args(["scan.dcm"], "evaluate.py")


# ---- which script reads which field --------------------------------------------------------------

@pytest.mark.parametrize("script, argv, message", [
    ("train.py", ["--gradcam", "Edema"], "--gradcam is read by predict.py, not by train.py"),
    ("predict.py", ["--epochs", "3"], "--epochs is read by train.py, ablate.py, not by predict.py"),
    ("cache.py", ["--frontal_only", "false"], "--frontal_only is read by preprocess.py, not by "
                                              "cache.py"),
    ("preprocess.py", ["--ablation", "a:"], "--ablation is read by ablate.py, not by "
                                            "preprocess.py"),
])
def test_a_field_the_script_does_not_read_is_refused_naming_its_readers(script, argv, message):
    with pytest.raises(ConfigError) as error:
        parse_args(argv, script)
    assert str(error.value) == message


def test_the_refusal_is_one_line_from_the_terminal():
    result = subprocess.run([sys.executable, "train.py", "--gradcam", "Edema"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: --gradcam is read by predict.py, not by train.py\n"


def test_data_building_fields_are_taken_by_the_scripts_that_check_them():
    for script in ("train.py", "evaluate.py", "ablate.py"):
        assert parse_args(["--val_fraction", "0.2"], script).val_fraction == 0.2
    assert parse_args(["--dropout", "0.5"], "ablate.py").dropout == 0.5  # train.py's, its stage


def test_the_readers_table_matches_config_and_the_scripts():
    fields = {f.name for f in dataclasses.fields(Config)}
    scripts = {path.name for path in ROOT.glob("*.py")}
    for script, names in READS.items():
        assert script in scripts and len(names) == len(set(names)), script
        assert set(names) <= fields, (script, set(names) - fields)
        # the script's own cfg.<field> uses are in the table (the functions it calls: by hand)
        source = (ROOT / script).read_text()
        used = set(re.findall(r"\b(?:cfg|OPTIONS)\.(\w+)", source)) & fields
        assert used <= ACCEPTS[script], (script, used - ACCEPTS[script])
        assert f'script="{script}"' in source  # it parses its command line as itself
    assert sorted(name for name in fields if not READ_BY[name]) == []  # every field is read
    assert set(READ_BY) == fields
    assert all(DATA_FIELDS[name] in READ_BY[name] for name in DATA_FIELDS)
    for script, stages in STAGES.items():
        assert all(ACCEPTS[stage] <= ACCEPTS[script] for stage in stages)
    assert all(name in READS[script] for script, name in POSITIONAL.items())


# ---- PIPELINE_OPTIONS: options shared by a chain of stages -------------------------------------

def test_shared_options_are_taken_where_read_and_ignored_elsewhere(monkeypatch):
    monkeypatch.setenv("PIPELINE_OPTIONS",
                       "--data_dir d --epochs 3 --gradcam 'Pleural Effusion' --num_workers -1")
    assert parse_args([], "make_splits.py").data_dir == "d"
    assert given_fields([], "make_splits.py") == {"data_dir"}
    cfg = parse_args(["--epochs", "4"], "train.py")
    assert (cfg.data_dir, cfg.epochs, cfg.num_workers) == ("d", 4, -1)  # the command line wins
    assert given_fields(["--run_name", "r"], "train.py") == {"data_dir", "epochs", "num_workers",
                                                             "run_name"}
    assert parse_args([], "predict.py").gradcam == ("Pleural Effusion",)
    with pytest.raises(ConfigError, match="--epochs is read by train.py"):
        parse_args(["--epochs", "3"], "make_splits.py")  # the command line stays strict
    assert parse_args([]).epochs == 5  # no script named: the environment is not read


@pytest.mark.parametrize("shared, message", [
    ("--epoch 3", "PIPELINE_OPTIONS: unknown option --epoch. Valid options: "),
    ("--epochs three", "PIPELINE_OPTIONS: --epochs expects int, got 'three'"),
    ("--device tpu", "PIPELINE_OPTIONS: --device 'tpu' is not one of"),  # cache.py ignores it
    ("scans/", "PIPELINE_OPTIONS: unexpected argument 'scans/'"),
    ("--run_name 'a", "PIPELINE_OPTIONS: No closing quotation"),
])
def test_shared_options_must_still_exist_and_convert(monkeypatch, shared, message):
    monkeypatch.setenv("PIPELINE_OPTIONS", shared)
    with pytest.raises(ConfigError) as error:
        parse_args([], "cache.py")
    assert str(error.value).startswith(message)
