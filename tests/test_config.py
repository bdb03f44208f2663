"""Command-line overrides of config fields, shared by every script."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from config import Config, ConfigError, apply_overrides, parse_args


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
    from config import run_cli
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda cfg: None, ["--bogus", "1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown option --bogus")
