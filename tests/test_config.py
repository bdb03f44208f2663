"""Command-line overrides of config fields, shared by every script (cxr/cli.py); the tables
derived from each field's own declaration (cxr/settings.py: which script reads which field,
config.READS) checked against the code; and docs/config.md generated from config.py."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from config import ACCEPTS, CALIBRATION_METHODS, DATA_FIELDS, FIXED_ON_RESUME, POSITIONAL, \
    READ_BY, READS, SAME_FOR_MEMBERS, CalibrationMethod, Config, validate
from conftest import ROOT
from cxr import settings
from cxr.cli import apply_overrides, config_reference, field_comments, given_fields, parse_args, \
    run_cli
from cxr.data.labels import UNCERTAINTY_POLICIES, UncertaintyPolicy
from cxr.errors import ConfigError
from cxr.settings import setting


def parse(argv: list[str], script: str | None = None) -> Config:
    """What a script's command line gives: parse_args with Config() as the defaults."""
    return parse_args(argv, script, defaults=Config())


def test_overrides_convert_by_field_type_in_both_spellings():
    cfg = parse_args(["--epochs", "3", "--image_size=224", "--pretrained", "false",
                      "--lr_head", "3e-4", "--device=cpu", "--run_name", "exp1",
                      "--frontal_only", "True"], defaults=Config())
    assert (cfg.epochs, cfg.image_size, cfg.pretrained, cfg.lr_head, cfg.device, cfg.run_name,
            cfg.frontal_only) == (3, 224, False, 3e-4, "cpu", "exp1", True)


def test_defaults_are_the_chexpert_recipe():
    cfg = Config()
    assert (cfg.image_size, cfg.batch_size * cfg.accumulation_steps, cfg.epochs,
            cfg.frozen_epochs, cfg.uncertainty_policy, cfg.frontal_only, cfg.gem_p,
            cfg.dropout) == (320, 32, 5, 1, "U-Ones", True, 3.0, 0.2)


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        parse(["--epoch", "3"])
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
        parse(argv)


def test_optional_fields_and_other_dataclasses():
    @dataclass
    class Other:
        limit: int | None = None
        name: str = "x"

    assert apply_overrides(Other(), ["--limit", "5"]).limit == 5
    assert apply_overrides(Other(), ["--limit", "none"]).limit is None


def test_scripts_exit_with_one_clear_line(capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda cfg: None, script="train.py", argv=["--bogus", "1"], defaults=Config())
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown option --bogus")


# ---- allowed values ----------------------------------------------------------------------------

def test_a_literal_field_names_its_values_on_the_command_line_and_from_python():
    with pytest.raises(ConfigError, match=r"^--precision 'fp8' is not one of auto, fp16, bf16, "
                                          r"fp32$"):
        parse(["--precision", "fp8"], "train.py")
    with pytest.raises(ConfigError, match=r"--view_fusion 'median' is not one of mean, max, "
                                          r"attention"):
        validate(Config(view_fusion="median"))  # a Config built in Python: the same check
    assert parse(["--calibration", "temperature"], "evaluate.py").calibration == "temperature"
    assert UNCERTAINTY_POLICIES == typing.get_args(UncertaintyPolicy)
    assert len(UNCERTAINTY_POLICIES) == 6
    assert CALIBRATION_METHODS == typing.get_args(CalibrationMethod) == ("platt", "temperature",
                                                                         "none")


def test_help_lists_what_the_script_reads_with_allowed_values(capsys):
    with pytest.raises(SystemExit) as stop:
        parse(["--help"], "train.py")
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
        parse(["-h"], "predict.py")
    text = capsys.readouterr().out
    assert text.startswith("usage: python predict.py [INPUTS ...] [--field value ...]")
    assert "--gradcam str ... = ()" in text and "--epochs" not in text
    # a comment above its field (the field's line has none) is the field's
    assert "--study_grouping {folder, image} = 'folder'\n        predict.py: folder = " in text


# ---- several values, positional inputs ---------------------------------------------------------

def test_a_tuple_field_takes_the_values_up_to_the_next_option():
    cfg = parse(["--compare", "RUN_A", "models/b/best.pth", "--compare_split", "val"],
                     "evaluate.py")
    assert (cfg.compare, cfg.compare_split) == (("RUN_A", "models/b/best.pth"), "val")
    assert parse(["--compare", "RUN_A,RUN_B"], "evaluate.py").compare == ("RUN_A", "RUN_B")
    assert parse(["--compare=RUN_A,RUN_B"], "evaluate.py").compare == ("RUN_A", "RUN_B")
    cfg = parse(["--gradcam", "Pleural Effusion", "Edema", "--device", "cpu"], "predict.py")
    assert (cfg.gradcam, cfg.device) == (("Pleural Effusion", "Edema"), "cpu")
    assert parse(["--gradcam", "Cardiomegaly, Edema", "Fracture"], "predict.py").gradcam \
        == ("Cardiomegaly", "Edema", "Fracture")  # each value split on commas too
    assert parse(["--gradcam="], "predict.py").gradcam == ()
    assert parse(["--uncertainty_policy_by_class", "Edema=U-Zeros", "Atelectasis=U-Ignore"],
                      "train.py").uncertainty_policy_by_class == ("Edema=U-Zeros",
                                                                  "Atelectasis=U-Ignore")
    with pytest.raises(ConfigError, match="--gradcam needs a value"):
        parse(["--gradcam", "--device", "cpu"], "predict.py")


def test_paths_and_ablation_configurations_keep_their_commas():
    cfg = parse(["--inputs", "scans,2024/", "a b.dcm"], "predict.py")
    assert cfg.inputs == ("scans,2024/", "a b.dcm")
    cfg = parse(["--ablation", "a: --gradcam A,B", "b:"], "ablate.py")
    assert cfg.ablation == ("a: --gradcam A,B", "b:")


def test_a_scalar_takes_exactly_the_next_value():
    assert parse(["--num_workers", "-1"], "train.py").num_workers == -1
    assert parse(["--run_name=--odd"], "train.py").run_name == "--odd"
    with pytest.raises(ConfigError, match="unexpected argument 'b' after --run_name"):
        parse(["--run_name", "a", "b"], "train.py")
    with pytest.raises(ConfigError, match="--run_name needs a value"):
        parse(["--run_name", "--epochs", "3"], "train.py")


def test_predict_takes_its_inputs_before_the_first_option():
    cfg = parse(["scan.dcm", "folder/", "list,1.csv", "--checkpoint", "m/best.pth"],
                     "predict.py")
    assert (cfg.inputs, cfg.checkpoint) == (("scan.dcm", "folder/", "list,1.csv"), "m/best.pth")
    assert given_fields(["scan.dcm", "--device", "cpu"], "predict.py", Config) == {"inputs",
                                                                                    "device"}
    with pytest.raises(ConfigError, match="before the options or with --inputs, not both"):
        parse(["scan.dcm", "--inputs", "other.dcm"], "predict.py")
    with pytest.raises(ConfigError, match="predict.py's inputs go before the first option"):
        parse(["--checkpoint", "m/best.pth", "scan.dcm"], "predict.py")
    with pytest.raises(ConfigError, match=r"unexpected argument 'scan.dcm'.*\(evaluate.py takes "
                                          r"options only\)"):
        parse(["scan.dcm"], "evaluate.py")


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
        parse(argv, script)
    assert str(error.value) == message


def test_the_refusal_is_one_line_from_the_terminal():
    result = subprocess.run([sys.executable, "train.py", "--gradcam", "Edema"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: --gradcam is read by predict.py, not by train.py\n"


def test_data_building_fields_are_taken_by_the_scripts_that_check_them():
    for script in ("train.py", "evaluate.py", "ablate.py"):
        assert parse(["--val_fraction", "0.2"], script).val_fraction == 0.2
    assert parse(["--dropout", "0.5"], "ablate.py").dropout == 0.5  # train.py's, its stage


def test_the_readers_table_matches_config_and_the_scripts():
    fields = {f.name for f in dataclasses.fields(Config)}
    scripts = {path.name for path in ROOT.glob("*.py")}
    for script, names in READS.items():
        assert script in scripts and len(names) == len(set(names)), script
        assert set(names) <= fields, (script, set(names) - fields)
        # the script's own cfg.<field> uses are in the table (and its code path's: below)
        source = (ROOT / script).read_text()
        used = set(re.findall(r"\b(?:cfg|OPTIONS)\.(\w+)", source)) & fields
        assert used <= ACCEPTS[script], (script, used - ACCEPTS[script])
        assert f'script="{script}"' in source  # it parses its command line as itself
    assert sorted(name for name in fields if not READ_BY[name]) == []  # every field is read
    assert set(READ_BY) == fields
    assert all(DATA_FIELDS[name] in READ_BY[name] for name in DATA_FIELDS)
    for script, stages in Config.STAGES.items():
        assert all(ACCEPTS[stage] <= ACCEPTS[script] for stage in stages)
    assert all(name in READS[script] for script, name in POSITIONAL.items())


# ---- what the code reads, against what the scripts take ------------------------------------------
# A script's code path: its functions that take `cfg`, then every function (of the script, cxr/,
# dataset.py or model_architecture.py) called with that `cfg`, and so on; each reads the fields
# of its cfg.<field> (a Config property: the fields the property reads).
# Read on a script's path without being taken by it, for a reason that leaves its results alone:
READ_UNTAKEN = {"evaluate.py": {"seed"}}  # make_loader's generator, which only shuffles training


def project_path(module: str) -> Path | None:
    """The file of a project module (a script, the design card, cxr.*); None for a library."""
    base = ROOT / module.replace(".", "/")
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py")
                 if path.is_file()), None)


def module_functions(module: str) -> tuple[dict[str, ast.FunctionDef], dict[str, tuple]]:
    """A project module's top-level functions by name, and each name it imports from another
    project module -> (that module, the name there)."""
    tree = ast.parse(project_path(module).read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    imported = {alias.asname or alias.name: (node.module, alias.name)
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and not node.level
                and project_path(node.module) for alias in node.names}
    return functions, imported


def takes_cfg(function: ast.FunctionDef | None) -> bool:
    return function is not None and any(arg.arg == "cfg" for arg in
                                        [*function.args.args, *function.args.kwonlyargs])


def passes_cfg(call: ast.Call) -> bool:
    return any(isinstance(arg, ast.Name) and arg.id == "cfg"
               for arg in [*call.args, *(keyword.value for keyword in call.keywords)])


def fields_of(name: str) -> set[str]:
    """What reading cfg.<name> reads: a field, or the fields of a property (none: a method)."""
    member = getattr(Config, name, None)
    if isinstance(member, property):
        return set(re.findall(r"\bself\.(\w+)", inspect.getsource(member.fget)))
    return set() if callable(member) else {name}


def fields_read_on_path(script: str) -> dict[str, str]:
    """The fields a script's code path reads -> the first function found reading it."""
    start = script.removesuffix(".py")
    todo = [(start, name) for name, function in module_functions(start)[0].items()
            if takes_cfg(function)]
    seen, reads = set(), {}
    while todo:
        module, name = todo.pop()
        functions, imported = module_functions(module)
        if (module, name) in seen or not takes_cfg(functions.get(name)):
            continue
        seen.add((module, name))
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "cfg":
                reads.update({field: f"{module}.{name}" for field in fields_of(node.attr)
                              if field not in reads})
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and passes_cfg(node):
                callee = (module, node.func.id) if node.func.id in functions \
                    else imported.get(node.func.id)
                todo += [callee] if callee else []
    return reads


def test_each_script_takes_every_field_its_code_path_reads():
    fields = {f.name for f in dataclasses.fields(Config)}
    for script in Config.SCRIPTS:
        reads = fields_read_on_path(script)
        assert set(reads) <= fields, (script, set(reads) - fields)
        untaken = {name: where for name, where in reads.items()
                   if name not in ACCEPTS[script] | READ_UNTAKEN.get(script, set())}
        assert untaken == {}, f"{script} reads these (where) but does not take them: name " \
                              f"{script} among their readers in config.py"
    # the path goes on into the library, which reads fields the scripts never name
    for script in ("train.py", "evaluate.py", "predict.py"):
        assert any(where.startswith("cxr.") for where in fields_read_on_path(script).values())
    assert "seed" in fields_read_on_path("evaluate.py")  # READ_UNTAKEN is still needed


def test_every_field_the_code_reads_exists_and_is_read_by_a_script():
    files = [*(ROOT / "cxr").rglob("*.py"),
             *(ROOT / name for name in (*Config.SCRIPTS, "dataset.py", "model_architecture.py"))]
    for path in files:
        for name in re.findall(r"(?:\bcfg|\.cfg|\bOPTIONS)\.(\w+)", path.read_text()):
            assert hasattr(Config, name) or name in READ_BY, (path.name, name)
            assert all(READ_BY[field] for field in fields_of(name)), (path.name, name)


def test_every_field_is_documented_by_its_comment():
    comments = field_comments(Config)
    assert [f.name for f in dataclasses.fields(Config) if not comments.get(f.name)] == []
    assert comments["min_positives"].endswith("positives and negatives in the split (fewer: its "
                                              "AUC is shown, but left out of the means)")


# ---- the tables, derived from each field's own declaration (cxr/settings.py) ------------------

@dataclass
class Tiny:
    SCRIPTS: ClassVar[tuple[str, ...]] = ("build.py", "fit.py", "all.py")
    STAGES: ClassVar[dict[str, tuple[str, ...]]] = {"all.py": ("fit.py",)}
    CHECKS_DATA: ClassVar[tuple[str, ...]] = ("fit.py",)

    # ---- the data ----
    # where the raw files are
    root: str = setting("raw", data="build.py")
    size: int = setting(8, "build.py", "fit.py", fixed_on_resume=True,
                        same_for_members=True)  # pixels
    # (square): a comment under a field's own goes on with it
    files: tuple[str, ...] = setting((), whole_items=True, positional="fit.py")  # inputs
    # ---- the runs ----
    runs: int = setting(1, "all.py")  # how many


@dataclass
class Bigger(Tiny):
    rate: float = setting(0.1, "fit.py", fixed_on_resume=True)  # one more hyperparameter


def test_the_tables_are_derived_from_the_fields_declarations():
    assert settings.reads_by_script(Tiny) == {"build.py": ("root", "size"),
                                              "fit.py": ("size", "files"), "all.py": ("runs",)}
    assert settings.data_fields(Tiny) == {"root": "build.py"}
    assert settings.fixed_on_resume(Tiny) == settings.same_for_members(Tiny) == ("size",)
    assert settings.positional_fields(Tiny) == {"fit.py": "files"}
    assert settings.accepts(Tiny) == {"build.py": {"root", "size"},
                                      "fit.py": {"size", "files", "root"},
                                      "all.py": {"runs", "size", "files", "root"}}
    assert settings.read_by(Tiny) == {"root": ("build.py",),
                                      "size": ("build.py", "fit.py", "all.py"),
                                      "files": ("fit.py", "all.py"), "runs": ("all.py",)}
    # one more field, declared in one place, reaches every table
    assert settings.reads_by_script(Bigger)["fit.py"] == ("size", "files", "rate")
    assert settings.fixed_on_resume(Bigger) == ("size", "rate")
    assert settings.read_by(Bigger)["rate"] == ("fit.py", "all.py")
    assert "rate" in settings.accepts(Bigger)["all.py"]
    assert settings.same_for_members(Bigger) == ("size",)


def test_the_command_line_reads_the_facts_from_the_class_it_is_given():
    cfg = parse_args(["a,b.png", "c.png", "--size", "9"], "fit.py", defaults=Tiny())
    assert (cfg.files, cfg.size) == (("a,b.png", "c.png"), 9)  # positional, whole items
    with pytest.raises(ConfigError, match=r"^--runs is read by all.py, not by fit.py$"):
        parse_args(["--runs", "2"], "fit.py", defaults=Tiny())
    assert parse_args(["--root", "elsewhere"], "all.py", defaults=Tiny()).root == "elsewhere"
    assert given_fields(["x.png", "--root", "r"], "fit.py", Tiny) == {"files", "root"}
    assert field_comments(Tiny) == {"root": "where the raw files are",
                                    "size": "pixels (square): a comment under a field's own goes "
                                            "on with it",
                                    "files": "inputs", "runs": "how many"}


def test_a_field_naming_an_unknown_script_is_an_error():
    @dataclass
    class Typo:
        SCRIPTS: ClassVar[tuple[str, ...]] = ("train.py",)
        epochs: int = setting(1, "trian.py")

    with pytest.raises(ValueError, match="trian.py"):
        settings.reads_by_script(Typo)


def test_the_derived_tables_hold_what_the_scripts_rely_on():
    assert DATA_FIELDS == {**{name: "preprocess.py" for name in (
        "data_root", "test_fraction", "frontal_only", "label_hierarchy", "padchest_label_source",
        "check_images", "missing_images", "stats_sample", "fallback_mean", "fallback_std")},
        "val_fraction": "make_splits.py"}
    assert set(SAME_FOR_MEMBERS) == {"image_size", "crop_margin", "view_mode", "max_views",
                                     "frontal_only"}
    assert set(FIXED_ON_RESUME) == {  # what shapes the data, model or optimisation of a run
        "frontal_only", "uncertainty_policy", "uncertainty_policy_by_class", "seed", "backbone",
        "gem_p", "dropout", "image_size", "crop_margin", "batch_size", "accumulation_steps",
        "frozen_epochs", "lr_head", "lr_backbone", "weight_decay", "warmup_steps", "warmup_share",
        "lr_schedule", "grad_clip_norm", "max_pos_weight", "augment", "precision", "view_mode",
        "view_fusion", "max_views", "ema_decay", "keep_top_k", "init", "init_format", "loss",
        "focal_gamma", "aucm_margin", "aucm_lr", "aucm_epoch_decay", "train_fraction"}
    assert POSITIONAL == {"predict.py": "inputs"}


# ---- docs/config.md: the reference generated from config.py ------------------------------------

def test_docs_config_md_is_current():
    path = ROOT / "docs" / "config.md"
    current = path.read_text() if path.is_file() else ""
    assert current == config_reference(Config), \
        "docs/config.md is not what config.py says: regenerate it with `make docs`"


def test_the_reference_has_a_table_per_section_with_each_fields_facts():
    text = config_reference(Tiny)
    assert "## the data\n" in text and "## the runs\n" in text
    assert "| `size` | `int` | `8` | build.py, fit.py, all.py | fixed on resume; the same for " \
           "ensemble members | pixels (square): a comment under a field's own goes on with it |" \
        in text
    assert "| `root` | `str` | `'raw'` | build.py | built into the data by build.py (checked by " \
           "fit.py, all.py) | where the raw files are |" in text
    assert "whole items; positional in fit.py" in text


# ---- PIPELINE_OPTIONS: options shared by a chain of stages -------------------------------------

def test_shared_options_are_taken_where_read_and_ignored_elsewhere(monkeypatch):
    monkeypatch.setenv("PIPELINE_OPTIONS",
                       "--data_dir d --epochs 3 --gradcam 'Pleural Effusion' --num_workers -1")
    assert parse([], "make_splits.py").data_dir == "d"
    assert given_fields([], "make_splits.py", Config) == {"data_dir"}
    cfg = parse(["--epochs", "4"], "train.py")
    assert (cfg.data_dir, cfg.epochs, cfg.num_workers) == ("d", 4, -1)  # the command line wins
    assert given_fields(["--run_name", "r"], "train.py", Config) == {
        "data_dir", "epochs", "num_workers", "run_name"}
    assert parse([], "predict.py").gradcam == ("Pleural Effusion",)
    with pytest.raises(ConfigError, match="--epochs is read by train.py"):
        parse(["--epochs", "3"], "make_splits.py")  # the command line stays strict
    assert parse([]).epochs == 5  # no script named: the environment is not read


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
        parse([], "cache.py")
    assert str(error.value).startswith(message)


# ---- @FILE: options kept in a file (configs/) ----------------------------------------------------

def test_an_options_file_stands_for_its_options(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.options"
    recipe.write_text("# a recipe\n--epochs 3      # short\n\n--image_size 96\n")
    cfg = parse([f"@{recipe}", "--epochs", "4"], "train.py")
    assert (cfg.epochs, cfg.image_size) == (4, 96)  # what follows the file wins
    shared = tmp_path / "shared.options"
    shared.write_text("--epochs 3\n--gradcam 'Pleural Effusion'\n")
    with pytest.raises(ConfigError, match="--gradcam is read by predict.py"):
        parse([f"@{shared}"], "train.py")  # the command line stays strict
    monkeypatch.setenv("PIPELINE_OPTIONS", f"--data_dir d @{shared}")
    assert parse([], "predict.py").gradcam == ("Pleural Effusion",)  # shared: taken where read
    assert parse([], "train.py").epochs == 3
    with pytest.raises(ConfigError, match="cannot read the options file missing.options"):
        parse(["@missing.options"], "train.py")


def test_the_demo_recipe_is_a_file_the_makefile_passes():
    recipe = ROOT / "configs" / "demo.options"
    cfg = parse([f"@{recipe}"], "train.py")
    assert (cfg.pretrained, cfg.image_size, cfg.epochs) == (False, 96, 8)
    assert "@configs/demo.options" in (ROOT / "Makefile").read_text()
