r"""Several configurations trained on the same data, seed and budget, in one comparison table.

    python ablate.py --data_dir data/demo --ablation "u-ones: --uncertainty_policy U-Ones" \
        "u-zeros: --uncertainty_policy U-Zeros" "lsr: --uncertainty_policy U-Ones-LSR" \
        [--ablation_name NAME] [any train.py / evaluate.py --field value, shared by all]

A configuration is "NAME: --field value ...": a name (letters, digits, . _ -) and the options in
which it differs from the others; the first one is the baseline. Every other option is shared.
The seed, the epochs and the data are the same for all (a configuration may not change them).
For each configuration, train.py runs as models/<ablation_name>-<NAME>/ (its output streamed
here and appended to <NAME>.log), then evaluate.py on its best.pth. Each gets, on its command
line, the shared and the configuration's options it reads (config.READS); the command is printed
before it runs and is the whole of it (PIPELINE_OPTIONS is not passed on). A configuration whose
run already holds a finished training, best.pth and eval_test.json is skipped, and an interrupted
run is resumed, so re-running the same command (with the same --ablation_name) continues.
When any configuration is a study-mode model (--view_mode study), every row is scored per study,
a frontal run's images aggregated to studies as its report's study level does.

Reads  <data_dir>/splits/*.csv (through train.py and evaluate.py), each run's eval_test.json.
Writes models/ablation-<name>/ablation.csv   one row per configuration: test mean AUC over all
                                             evaluable observations and over the competition
                                             five, with patient-bootstrap intervals; the
                                             per-observation AUCs; and B - baseline with a
                                             paired patient-bootstrap interval
       models/ablation-<name>/ablation.md    the same as Markdown tables, with the commands
       models/ablation-<name>/<NAME>.log     the output of train.py and evaluate.py
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from config import ACCEPTS, DATA_FIELDS, READS, Config, ConfigError, PipelineError, validate
from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.checkpoints import load_checkpoint
from cxr.cli import PIPELINE_ENV, Options, apply_options, command_line_options, given_options, \
    option_tokens, run_cli
from cxr.device import choose_device
from cxr.evaluation import Predictions, load_model, paired_differences, predict_split
from cxr.metrics import MEANS
from cxr.resume import FIXED_ON_RESUME  # the fields that shape a run
from cxr.run_folder import read_run_config
from cxr.tables import interval_text, markdown_table, number_text, text_table
from dataset import check_data_options

ROOT = Path(__file__).resolve().parent
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SPLIT = "test"  # the table's split: never used to select anything

# Options every configuration shares: the budget, the data and the yardstick. A configuration
# may repeat the shared value, not change it.
SAME_FOR_ALL = ("seed", "epochs", "data_dir", "data_root", "models_dir", "bootstrap_resamples",
                "ci_level")
# Options ablate.py sets itself, for every run.
SET_BY_ABLATE = ("run_name", "resume", "checkpoint", "compare")
OWN = READS["ablate.py"]  # --ablation, --ablation_name: ablate.py's own, passed to no stage
# Column-name stem of each mean of metrics.MEANS.
MEAN_COLUMNS = {"all": "mean_auc", "competition": "competition_auc"}


@dataclass
class Configuration:
    name: str
    options: list[str]  # the options in which it differs from the shared ones, as written
    given: Options = dataclasses.field(default_factory=dict)  # the same, by field
    cfg: Config | None = None  # shared options, then its own: what its run trains and evaluates

    @property
    def options_text(self) -> str:
        return shlex.join(self.options) or "(shared options only)"


# ---- command line --------------------------------------------------------------------------------

def parse_configuration(spec: str) -> Configuration:
    """"NAME: --field value ..." (or a bare NAME: the shared options only)."""
    name, _, options = spec.partition(":")
    name = name.strip()
    if not NAME.fullmatch(name):
        raise ConfigError(f"--ablation {spec!r}: a configuration is \"NAME: --field value ...\" "
                          "with a NAME of letters, digits, '.', '_' or '-'")
    try:
        words = shlex.split(options)
    except ValueError as err:
        raise ConfigError(f"--ablation {spec!r}: {err}") from None
    return Configuration(name, words)


def resolve_configurations(shared: Config, given: Options) -> list[Configuration]:
    """Parse and check every configuration of shared.ablation before anything trains; the first
    is the baseline. `given`: the shared options, by field (those ablate.py was given)."""
    if len(shared.ablation) < 2:
        raise ConfigError("ablate.py compares at least two configurations: --ablation "
                          "\"NAME: --field value ...\" \"NAME2: --field value ...\"")
    taken = sorted(set(given) & set(SET_BY_ABLATE))
    if taken:
        raise ConfigError(f"--{taken[0]}: ablate.py sets it for every run (runs are named "
                          "<ablation_name>-<configuration>); leave it out")
    configurations = [parse_configuration(spec) for spec in shared.ablation]
    names = [c.name for c in configurations]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--ablation: configuration name(s) {', '.join(repeated)} appear twice")
    for configuration in configurations:
        where = f"--ablation {configuration.name!r}"
        try:
            configuration.given = command_line_options(configuration.options, "ablate.py")
            cfg = validate(apply_options(shared, configuration.given))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        own = set(configuration.given)
        owned = sorted(own & set(SET_BY_ABLATE))
        if owned:
            raise ConfigError(f"{where} sets --{owned[0]}: ablate.py sets it for every run")
        if own & set(OWN):
            raise ConfigError(f"{where} sets --{sorted(own & set(OWN))[0]}: set it once, "
                              "outside --ablation")
        refuse_data_options(cfg, shared, own, set(given), where)
        for field in sorted(own & set(SAME_FOR_ALL)):
            if getattr(cfg, field) != getattr(shared, field):
                raise ConfigError(
                    f"{where} sets --{field} {getattr(cfg, field)}: every configuration has the "
                    f"same seed, epochs, data and bootstrap (here --{field} "
                    f"{getattr(shared, field)}); set it once, outside --ablation")
        configuration.cfg = cfg
    return configurations


def refuse_data_options(cfg: Config, shared: Config, own: set[str], shared_given: set[str],
                        where: str) -> None:
    """An option only preprocess.py / make_splits.py read changes nothing here: every
    configuration trains on the data already in --data_dir. A configuration may not set one to
    another value than the others, and none may differ from what the data were built with."""
    for field in sorted(own & set(DATA_FIELDS)):
        if getattr(cfg, field) != getattr(shared, field):
            raise ConfigError(
                f"{where}: --{field} is read by {DATA_FIELDS[field]}, not ablate.py: every "
                f"configuration trains on the same data ({cfg.data_dir}). To compare data built "
                f"with --{field} {getattr(cfg, field)}, run {DATA_FIELDS[field]} with it into "
                "another --data_dir and train there")
    try:
        check_data_options(cfg, own | shared_given, "ablate.py")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def ablation_name(cfg: Config) -> str:
    name = cfg.ablation_name or time.strftime("%Y%m%d-%H%M%S")
    if not NAME.fullmatch(name):
        raise ConfigError(f"--ablation_name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


def run_dir_of(configuration: Configuration, name: str) -> Path:
    return Path(configuration.cfg.models_dir) / f"{name}-{configuration.name}"


# ---- one configuration: train, evaluate ---------------------------------------------------------

class Stopped(Exception):
    """A child was stopped by Ctrl-C / SIGTERM (it saved its state): ablate.py stops too."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def stream(command: list[str], log_path: Path) -> int:
    """Run `command`, echoing its output (progress bars included) and appending it to log_path.

    The child runs in its own session and ablate.py forwards Ctrl-C / SIGTERM to it, exactly
    once each: train.py then saves last.pth and stops, and a re-run resumes it. It gets every
    option on its command line: PIPELINE_OPTIONS is left out of its environment.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    env = {key: value for key, value in os.environ.items() if key != PIPELINE_ENV}
    with open(log_path, "ab") as log, \
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True, env=env) as child:
        def forward(signum, frame):
            child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while chunk := child.stdout.read1(1 << 16):
                log.write(chunk)
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
            return child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def stage_options(script: str, shared: Options, configuration: Configuration) -> list[str]:
    """The shared options, then the configuration's own, that `script` reads (config.ACCEPTS)."""
    merged = {**shared, **configuration.given}
    return option_tokens({name: tokens for name, tokens in merged.items()
                          if name in ACCEPTS[script]})


def run_step(script: str, options: list[str], configuration: Configuration, log_path: Path
             ) -> None:
    command = [sys.executable, str(ROOT / script), *options]
    print(f"ablate: $ {shlex.join(command)}", flush=True)
    code = stream(command, log_path)
    if code in (130, 143) or code < 0:
        raise Stopped(128 - code if code < 0 else code)
    if code != 0:
        raise PipelineError(f"{script} failed for configuration {configuration.name!r} (exit "
                            f"{code}); its output is above and in {log_path}")


def training_finished(run_dir: Path, cfg: Config) -> bool:
    """last.pth is at an epoch's end and no epoch is left (all done, or stopped early)."""
    if not (run_dir / "last.pth").is_file():
        return False
    checkpoint = load_checkpoint(run_dir / "last.pth")
    patience = cfg.early_stopping_patience
    return checkpoint.get("in_epoch") is None and (
        checkpoint["epoch"] >= cfg.epochs
        or bool(patience) and checkpoint.get("epochs_without_improvement", 0) >= patience)


def check_existing_run(run_dir: Path, configuration: Configuration) -> None:
    """A run folder left by an earlier launch must hold what this configuration asks."""
    saved = read_run_config(run_dir)
    if saved is None:
        return
    cfg = configuration.cfg
    differ = [name for name in (*FIXED_ON_RESUME, "epochs", "pretrained")
              if getattr(saved, name) != getattr(cfg, name)]
    if Path(saved.data_dir).resolve() != Path(cfg.data_dir).resolve():
        differ.append("data_dir")
    if differ:
        was = ", ".join(f"--{name} {getattr(saved, name)}" for name in differ)
        asked = ", ".join(f"--{name} {getattr(cfg, name)}" for name in differ)
        raise PipelineError(f"{run_dir} was trained with {was}, configuration "
                            f"{configuration.name!r} now asks {asked}: choose another "
                            "--ablation_name (or delete that run folder)")


def evaluated(run_dir: Path) -> bool:
    """eval_test.json exists and reports best.pth (not a manual evaluation of last.pth)."""
    path = run_dir / f"eval_{SPLIT}.json"
    if not path.is_file():
        return False
    return Path(json.loads(path.read_text()).get("checkpoint", "")).name == "best.pth"


def train_and_evaluate(configuration: Configuration, shared: Options, name: str,
                       out_dir: Path, position: str) -> None:
    run_dir = run_dir_of(configuration, name)
    title = f"ablate: [{position}] {configuration.name}"
    check_existing_run(run_dir, configuration)
    finished = (run_dir / "best.pth").is_file() and training_finished(run_dir, configuration.cfg)
    if finished and evaluated(run_dir):
        print(f"{title}: {run_dir} already holds its trained and evaluated run: skipped "
              f"(delete its eval_{SPLIT}.json to evaluate it again)", flush=True)
        return
    log_path = out_dir / f"{configuration.name}.log"
    if finished:
        print(f"{title}: {run_dir} is trained; evaluating it", flush=True)
    else:
        resume = (run_dir / "last.pth").is_file()
        print(f"{title}: {configuration.options_text} -> {run_dir}"
              + (" (resuming its interrupted run)" if resume else ""), flush=True)
        run_step("train.py", [*stage_options("train.py", shared, configuration), "--run_name",
                              run_dir.name, *(["--resume", "auto"] if resume else [])],
                 configuration, log_path)
    run_step("evaluate.py", [*stage_options("evaluate.py", shared, configuration),
                             "--checkpoint", str(run_dir / "best.pth")], configuration, log_path)


# ---- the table ---------------------------------------------------------------------------------

def test_predictions(configuration: Configuration, run_dir: Path) -> Predictions:
    """The run's best.pth predictions on the test split (as evaluate.py --compare makes them)."""
    cfg, path = configuration.cfg, run_dir / "best.pth"
    device = choose_device(cfg.device)
    model, checkpoint, trained = load_model(path, cfg, device)
    return predict_split(model, SPLIT, path, checkpoint, trained, cfg, device)


def table_level(configurations: list[Configuration]) -> str:
    """The unit every row is scored on: "study" when any configuration predicts studies (an image
    model's images then aggregated as its report's study level does), else "image"."""
    return "study" if any(c.cfg.view_mode == "study" for c in configurations) else "image"


def split_text(report: dict, level: str) -> str:
    """'278 images, 120 patients' or '229 studies, 120 patients' (the baseline's report)."""
    if level == "study":
        return f"{report['n_studies']} studies, {report['n_patients']} patients"
    return f"{report['n_images']} images, {report['n_patients']} patients"


def verdict_text(verdict: str) -> str:
    """compare.py's verdict of B - A, said of a configuration against the baseline."""
    return {"B better": "better", "A better": "worse"}.get(verdict, verdict)


def mean_rows(differences: list[dict]) -> dict[str, dict]:
    """The rows of the means in compare.py's rows, by metrics.MEANS key."""
    return {key: row for key, title, _ in MEANS for row in differences
            if row["pathology"].startswith(f"{title} (")}


def table_row(configuration: Configuration, run_dir: Path, report: dict,
              differences: list[dict] | None, labels: tuple[str, ...], level: str) -> dict:
    """One configuration: its test AUCs at `level` with intervals, and its paired difference to
    the baseline (`differences` is None for the baseline itself)."""
    row = {"configuration": configuration.name, "options": shlex.join(configuration.options),
           "run": str(run_dir), "baseline": differences is None, "level": level,
           "n_images": report["n_images"], "n_studies": report["n_studies"],
           "n_patients": report["n_patients"]}
    means = report[level]["means"]
    paired = mean_rows(differences or [])
    for key, stem in MEAN_COLUMNS.items():
        mean = means.get(key, {"auc": None, "ci": {"low": None, "high": None}})
        diff = paired.get(key, {})
        row.update({stem: mean["auc"], f"{stem}_ci_low": mean["ci"]["low"],
                    f"{stem}_ci_high": mean["ci"]["high"],
                    f"diff_{stem}": diff.get("difference"),
                    f"diff_{stem}_ci_low": diff.get("ci_low"),
                    f"diff_{stem}_ci_high": diff.get("ci_high"),
                    f"diff_{stem}_verdict": verdict_text(diff["verdict"]) if diff else None})
    by_class = {r["pathology"]: r for r in differences or []}
    for label in labels:
        diff = by_class.get(label, {})
        row.update({f"auc {label}": report[level]["classes"][label]["auc"],
                    f"diff {label}": diff.get("difference"),
                    f"diff {label} ci_low": diff.get("ci_low"),
                    f"diff {label} ci_high": diff.get("ci_high")})
    return row


def auc_cell(auc, low, high) -> str:
    return "n/a" if auc is None else f"{number_text(auc)} {interval_text(low, high)}"


def diff_cell(row: dict, stem: str) -> str:
    if row["baseline"]:
        return "baseline"
    diff = row[f"diff_{stem}"]
    if diff is None:
        return "n/a"
    low, high = row[f"diff_{stem}_ci_low"], row[f"diff_{stem}_ci_high"]
    return f"{number_text(diff, signed=True)} {interval_text(low, high, signed=True)}"


def summary_header(level: float) -> list[str]:
    ci = f"[{level:.0%} CI]"
    return ["Configuration", f"Mean AUC {ci}", f"Comp-5 AUC {ci}",
            f"Mean - baseline [paired {level:.0%} CI]",
            f"Comp-5 - baseline [paired {level:.0%} CI]", "Verdict (mean)"]


def summary_cells(row: dict) -> list[str]:
    return [row["configuration"],
            auc_cell(row["mean_auc"], row["mean_auc_ci_low"], row["mean_auc_ci_high"]),
            auc_cell(row["competition_auc"], row["competition_auc_ci_low"],
                     row["competition_auc_ci_high"]),
            diff_cell(row, "mean_auc"), diff_cell(row, "competition_auc"),
            "" if row["baseline"] else row["diff_mean_auc_verdict"] or "n/a"]


def format_summary(rows: list[dict], level: float) -> str:
    """Plain-text table for the terminal."""
    return text_table(summary_header(level), [summary_cells(row) for row in rows], left=(0, 5))


def per_class_markdown(rows: list[dict], labels: tuple[str, ...]) -> str:
    """Observations down, configurations across: AUC, and for the others B - baseline."""
    header = ["Observation", *[f"{r['configuration']}" + (" (baseline)" if r["baseline"] else "")
                               for r in rows]]
    cells = []
    for label in labels:
        line = [label]
        for row in rows:
            auc, diff = row[f"auc {label}"], row[f"diff {label}"]
            text = number_text(auc)
            if not row["baseline"] and diff is not None:
                interval = interval_text(row[f"diff {label} ci_low"], row[f"diff {label} ci_high"],
                                         signed=True)
                text += f" ({number_text(diff, signed=True)} {interval})"
            line.append(text)
        cells.append(line)
    return markdown_table(header, cells)


def markdown_report(rows: list[dict], configurations: list[Configuration], name: str,
                    command: str, report: dict, labels: tuple[str, ...], cfg: Config) -> str:
    level_name = rows[0]["level"]
    means = report[level_name]["means"]
    counted = "; ".join(f"{m['name'].lower()}: {len(m['classes'])} evaluable observations"
                        for m in means.values())
    level = f"{cfg.ci_level:.0%}"
    lines = [
        f"# Ablation {name}", "",
        f"Every configuration was trained on `{cfg.data_dir}` with seed {cfg.seed} for "
        f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)} and evaluated on the {SPLIT} split "
        f"({split_text(report, level_name)}; {counted}). The first configuration is the "
        "baseline." + (" Every configuration is scored per study, as at least one predicts "
                       "studies: an image model's study prediction is the "
                       f"{cfg.study_aggregation} over the study's images."
                       if level_name == "study" else ""),
        "", f"Command: `{command}`", "",
        markdown_table(["Configuration", "Options", "Run"],
                       [[c.name, f"`{c.options_text}`", f"`{r['run']}`"]
                        for c, r in zip(configurations, rows)], left=(0, 1, 2)), "",
        f"## Mean AUC ({SPLIT} split)", "",
        markdown_table(summary_header(cfg.ci_level), [summary_cells(r) for r in rows],
                       left=(0, 5)), "",
        f"Intervals: the AUC intervals are {level} percentile intervals over "
        f"{cfg.bootstrap_resamples} bootstrap resamples of the {SPLIT} patients (each patient's "
        "images together). A difference's interval is *paired*: both models are scored on the "
        "same resampled patients, so it is narrower than the two AUC intervals suggest, and one "
        "that excludes 0 (`better` / `worse`) is unlikely to come from which patients happen to "
        "be in the test split. It does not cover training noise: each configuration was trained "
        "once, with one seed, so a small difference may still come from the seed.", "",
        f"## Per observation ({SPLIT} split): AUC, and for the others the difference to the "
        f"baseline [paired {level} CI]", "",
        per_class_markdown(rows, labels), ""]
    return "\n".join(lines)


def build_table(configurations: list[Configuration], name: str) -> tuple[list[dict], dict,
                                                                          tuple[str, ...]]:
    """(rows, the baseline's report, labels) from the runs' eval_test.json and predictions."""
    reports = {c.name: json.loads((run_dir_of(c, name) / f"eval_{SPLIT}.json").read_text())
               for c in configurations}
    baseline, *others = configurations
    print(f"ablate: paired differences to {baseline.name} on the {SPLIT} split", flush=True)
    level = table_level(configurations)
    base_preds = test_predictions(baseline, run_dir_of(baseline, name))
    labels = base_preds.labels
    rows = [table_row(baseline, run_dir_of(baseline, name), reports[baseline.name], None, labels,
                      level)]
    for configuration in others:
        preds = test_predictions(configuration, run_dir_of(configuration, name))
        differences, _ = paired_differences(base_preds, preds, baseline.cfg,
                                            per_study=level == "study")
        rows.append(table_row(configuration, run_dir_of(configuration, name),
                              reports[configuration.name], differences, labels, level))
    return rows, reports[baseline.name], labels


# ---- main ----------------------------------------------------------------------------------------

def main(cfg: Config, given: Options) -> None:
    """`given`: the options ablate.py was given (its command line and PIPELINE_OPTIONS), by
    field (cli.given_options); each stage gets those it reads."""
    shared = {key: tokens for key, tokens in given.items() if key not in OWN}
    configurations = resolve_configurations(cfg, shared)
    name = ablation_name(cfg)
    command = shlex.join(["python", "ablate.py", *option_tokens(shared), "--ablation",
                          *[f"{c.name}: {shlex.join(c.options)}".rstrip() for c in configurations],
                          "--ablation_name", name])
    out_dir = Path(cfg.models_dir) / f"ablation-{name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"ablate: {len(configurations)} configurations, seed {cfg.seed}, {cfg.epochs} epochs, "
          f"data {cfg.data_dir}; runs {cfg.models_dir}/{name}-<configuration>", flush=True)
    try:
        for index, configuration in enumerate(configurations, 1):
            train_and_evaluate(configuration, shared, name, out_dir,
                               f"{index}/{len(configurations)}")
    except Stopped as stopped:
        print(f"\nablate: stopped; finished configurations are kept and an interrupted run "
              f"resumes from its last.pth. Continue with:\n  {command}", flush=True)
        raise SystemExit(stopped.code) from None
    rows, report, labels = build_table(configurations, name)
    write_csv_atomic(pd.DataFrame(rows), out_dir / "ablation.csv")
    write_text_atomic(markdown_report(rows, configurations, name, command, report, labels, cfg),
                      out_dir / "ablation.md")
    print(f"\nAblation {name}: {SPLIT} split ({split_text(report, rows[0]['level'])}), "
          f"baseline {configurations[0].name}")
    print(format_summary(rows, cfg.ci_level))
    print(f"\nablate: wrote {out_dir}/ablation.csv, ablation.md ({len(rows)} configurations; "
          f"per-observation AUCs in both, logs in {out_dir}/<configuration>.log)")


if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
    run_cli(lambda cfg: main(cfg, given_options(sys.argv[1:], "ablate.py")), script="ablate.py")
