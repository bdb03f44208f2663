r"""Several configurations trained on the same data, seeds and budget, in one comparison table.

    python ablate.py --data_dir data/demo --ablation "u-ones: --uncertainty_policy U-Ones" \
        "u-zeros: --uncertainty_policy U-Zeros" "lsr: --uncertainty_policy U-Ones-LSR" \
        [--ablation_name NAME] [--seeds N] [--train_fraction 0.01,0.1,1.0] \
        [any train.py / evaluate.py --field value, shared by all]

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

--seeds N (N > 1): every configuration is trained N times, with the seeds --seed, --seed + 1,
..., --seed + N - 1 (the same for all), as models/<ablation_name>-<NAME>-s<seed>/ (log
<NAME>-s<seed>.log); train.py gets --seed <seed> (evaluate.py draws nothing at random); --seeds
itself reaches neither. The runs go seed by
seed (every configuration's first seed, then the next), each trained, evaluated, skipped or
resumed as above. A configuration's AUC is then the mean over its runs of each run's AUC, with
their SD and range, and B - baseline has a two-level bootstrap interval: the test patients
resampled (one draw shared by every run) and, independently for each configuration, its N runs
resampled (cxr/evaluation/seeds.py). With --seeds 1 (the default) the runs, files and table are
as above.

--train_fraction 0.01,0.1,1.0 (a label-efficiency curve): every configuration is also trained on
each share of the training split's patients, a seeded subset nested across shares
(cxr.data.splits.patient_subset, drawn by train.py from the run's --seed), as
models/<ablation_name>-<NAME>-f<share>[-s<seed>]/ (log <NAME>-f<share>[-s<seed>].log); train.py
gets --train_fraction <share>. The runs go seed by seed, and within a seed share by share
(smallest first), each skipped or resumed as above. A configuration may not set --train_fraction
(the shares are crossed with every configuration), and with --train_fraction one configuration
is enough. The table compares each configuration with the baseline at each share, one block
per share (the share in ablation.csv's train_fraction column). The default, 1.0 alone, trains on
the whole split and names the runs as above; given at all (even as 1.0), --train_fraction also
writes the curve.

Reads  <data_dir>/splits/*.csv (through train.py and evaluate.py), each run's eval_test.json.
Writes models/ablation-<name>/ablation.csv   one row per configuration: test mean AUC over all
                                             evaluable observations and over the competition
                                             five, with their intervals
                                             (cxr/evaluation/intervals.py);
                                             the per-observation AUCs; and B - baseline with
                                             a paired interval
       models/ablation-<name>/ablation.md    the same as Markdown tables, with the commands
       models/ablation-<name>/<NAME>.log     the output of train.py and evaluate.py
With --seeds N the CSV's row holds, for mean_auc and competition_auc: the mean over the seeds,
<stem>_sd (sample SD across seeds), <stem>_min, <stem>_max, <stem>_s<seed> (each run's value),
<stem>_classes (the observations averaged), <stem>_ci_low/_ci_high and diff_<stem>_* (two-level
intervals); per observation "auc <label>" (mean over seeds), "auc <label> sd",
"auc <label> s<seed>" and "diff <label>" with its two-level interval; "runs" and "seeds" list
the runs. ablation.md shows the same, and says what the intervals cover.
With --train_fraction (cxr/evaluation/label_efficiency.py, cxr/reporting/
label_efficiency_report.py):
       models/ablation-<name>/label_efficiency.csv   one row per configuration and share:
                                             train_fraction, patients (the labelled training
                                             patients: equal for every seed, each seed drawing
                                             other ones; _min/_max), images (mean over seeds,
                                             _min/_max), mean_auc with ci_low/ci_high,
                                             competition_auc with competition_ci_low/_high
                                             (one seed: the run's report's interval over the
                                             test patients; several: the two-level bootstrap
                                             over test patients and seeds), seeds,
                                             test_patients, the runs
       models/ablation-<name>/label_efficiency.md    the same as a table, the setup, what the
                                             intervals cover and how many runs
       models/ablation-<name>/label_efficiency.png   both AUCs against labelled training patients
                                             (log scale), an interval band per configuration
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

from config import ACCEPTS, DATA_FIELDS, FIXED_ON_RESUME, READS, Config, validate
from cxr.atomic import write_csv_atomic, write_text_atomic
from cxr.cli import PIPELINE_ENV, Options, apply_options, command_line_options, given_options, \
    option_tokens, run_cli
from cxr.data.splits import read_split
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.label_efficiency import CurvePoint, TrainingShare, curve_point, training_share
from cxr.evaluation.metrics import MEANS
from cxr.evaluation.predictions import Predictions, load_model, paired_differences, predict_split
from cxr.evaluation.report import EvaluationReport, MeanSummary
from cxr.evaluation.seeds import SeedRuns, align_runs, mean_members, score_runs, seed_difference, \
    seed_summary
from cxr.reporting.ablation_report import AblationSetup, ConfigurationRuns, markdown_report, \
    seed_markdown_report, summary_text
from cxr.reporting.evaluation_report import read_report
from cxr.reporting.label_efficiency_report import curve_figure, curve_markdown, curve_rows, \
    curve_text, figure_title, ordered
from cxr.training.checkpoint import load_checkpoint
from cxr.training.run_folder import read_run_config
from cxr.training.runtime import choose_device
from dataset import check_data_options, make_dataset
from model_architecture import model_from_checkpoint

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


def resolve_configurations(shared: Config, given: Options, curve: bool = False
                           ) -> list[Configuration]:
    """Parse and check every configuration of shared.ablation before anything trains; the first
    is the baseline. `given`: the shared options, by field (those ablate.py was given); `curve`:
    --train_fraction was given, and one configuration's label-efficiency curve is enough."""
    if len(shared.ablation) < (1 if curve else 2):
        raise ConfigError("ablate.py compares at least two configurations (with --train_fraction, "
                          "one is enough for its label-efficiency curve): --ablation "
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
            configuration.given = command_line_options(configuration.options, "ablate.py",
                                                       Config)
            cfg = validate(apply_options(shared, configuration.given))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        own = set(configuration.given)
        if "train_fraction" in own:
            raise ConfigError(f"{where} sets --train_fraction: ablate.py trains every "
                              "configuration on every share; give the shares once, outside "
                              "--ablation (e.g. --train_fraction 0.1,1.0)")
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


def run_dir_of(configuration: Configuration, name: str, seed: int | None = None,
               fraction: float | None = None) -> Path:
    """models/<name>-<NAME>, with -f<share> for one --train_fraction share of several (or of one
    below 1) and -s<seed> for one seed of several: models/<name>-<NAME>-f0.1-s43."""
    suffix = ("" if fraction is None else f"-f{fraction}") + ("" if seed is None else f"-s{seed}")
    return Path(configuration.cfg.models_dir) / f"{name}-{configuration.name}{suffix}"


# ---- the runs: one per configuration, training share and seed ------------------------------------

@dataclass
class Run:
    """One training of a configuration: its only one (--seeds 1, named as before), or one of
    several seeds (named -s<seed>, trained with --seed <seed>); on the whole training split (as
    before), or on one --train_fraction share (named -f<share>, trained with --train_fraction)."""

    configuration: Configuration  # its cfg holds this run's seed and training share
    seed: int
    run_dir: Path
    seeded: bool  # one of --seeds N > 1
    fraction: float | None = None  # its --train_fraction share; None: the whole split, as before

    @property
    def title(self) -> str:
        """'base', 'base-s43', 'base-f0.1' or 'base-f0.1-s43': how the progress lines and the
        log file name it."""
        return (self.configuration.name + ("" if self.fraction is None else f"-f{self.fraction}")
                + (f"-s{self.seed}" if self.seeded else ""))


def seed_list(cfg: Config) -> list[int]:
    """The seeds every configuration is trained with: --seed, --seed + 1, ... (--seeds of them)."""
    return [cfg.seed + offset for offset in range(cfg.seeds)]


def fraction_list(cfg: Config) -> list[float | None]:
    """The --train_fraction shares every configuration is trained on, smallest first; [None]
    for the whole split alone (the default, 1.0): its runs are named and trained as before."""
    fractions = cfg.train_fraction  # each share once (config.validate)
    return [None] if fractions == (1.0,) else sorted(fractions)


def runs_of(configuration: Configuration, name: str, seeds: list[int],
            fraction: float | None = None) -> list[Run]:
    """The configuration's runs on one training share (None: the whole split, named as before),
    one per seed; with one seed, its run as without --seeds."""
    cfg = configuration.cfg
    if fraction is not None:
        cfg = dataclasses.replace(cfg, train_fraction=(fraction,))
    seeded = len(seeds) > 1
    return [Run(dataclasses.replace(configuration, cfg=dataclasses.replace(cfg, seed=seed)),
                seed, run_dir_of(configuration, name, seed if seeded else None, fraction),
                seeded, fraction) for seed in seeds]


def training_order(configurations: list[Configuration], blocks: list[dict[str, list[Run]]]
                   ) -> list[Run]:
    """Seed by seed, and within a seed share by share (smallest first): every configuration's
    first seed on each share, then the next seed. A long ablation stopped part-way has a whole
    curve of its first seeds, and as many seeds of every configuration (give or take one)."""
    n_seeds = len(blocks[0][configurations[0].name])
    return [runs[c.name][index] for index in range(n_seeds) for runs in blocks
            for c in configurations]


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


def stage_options(script: str, shared: Options, configuration: Configuration,
                  seed: int | None = None, fraction: float | None = None) -> list[str]:
    """The shared options, then the configuration's own, that `script` reads (config.ACCEPTS).
    `seed`: a run's seed of several, `fraction`: its --train_fraction share, given to train.py
    (evaluate.py reads neither: it scores the whole test split)."""
    merged = {**shared, **configuration.given}
    if seed is not None and script == "train.py":
        merged["seed"] = [str(seed)]
    if fraction is not None and script == "train.py":
        merged["train_fraction"] = [str(fraction)]
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
    saved = read_run_config(run_dir, Config)
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


def train_and_evaluate(run: Run, shared: Options, out_dir: Path, position: str) -> None:
    configuration, run_dir = run.configuration, run.run_dir
    title = f"ablate: [{position}] {run.title}"
    check_existing_run(run_dir, configuration)
    finished = (run_dir / "best.pth").is_file() and training_finished(run_dir, configuration.cfg)
    if finished and evaluated(run_dir):
        print(f"{title}: {run_dir} already holds its trained and evaluated run: skipped "
              f"(delete its eval_{SPLIT}.json to evaluate it again)", flush=True)
        return
    log_path = out_dir / f"{run.title}.log"
    if finished:
        print(f"{title}: {run_dir} is trained; evaluating it", flush=True)
    else:
        resume = (run_dir / "last.pth").is_file()
        print(f"{title}: {configuration.options_text} -> {run_dir}"
              + (" (resuming its interrupted run)" if resume else ""), flush=True)
        seed = run.seed if run.seeded else None
        run_step("train.py", [*stage_options("train.py", shared, configuration, seed,
                                             run.fraction),
                              "--run_name", run_dir.name,
                              *(["--resume", "auto"] if resume else [])],
                 configuration, log_path)
    run_step("evaluate.py", [*stage_options("evaluate.py", shared, configuration),
                             "--checkpoint", str(run_dir / "best.pth")], configuration, log_path)


# ---- the table ---------------------------------------------------------------------------------

def test_predictions(configuration: Configuration, run_dir: Path) -> Predictions:
    """The run's best.pth predictions on the test split (as evaluate.py --compare makes them)."""
    cfg, path = configuration.cfg, run_dir / "best.pth"
    device = choose_device(cfg.device)
    model, checkpoint, trained = load_model(path, cfg, device, rebuild=model_from_checkpoint)
    return predict_split(model, SPLIT, path, checkpoint, trained, cfg, device,
                         make_dataset=make_dataset)


def table_level(configurations: list[Configuration]) -> str:
    """The unit every row is scored on: "study" when any configuration predicts studies (an image
    model's images then aggregated as its report's study level does), else "image"."""
    return "study" if any(c.cfg.view_mode == "study" for c in configurations) else "image"


def verdict_text(verdict: str) -> str:
    """compare.py's verdict of B - A, said of a configuration against the baseline."""
    return {"B better": "better", "A better": "worse"}.get(verdict, verdict)


def mean_rows(differences: list[dict]) -> dict[str, dict]:
    """The rows of the means in compare.py's rows, by metrics.MEANS key."""
    return {key: row for key, title, _ in MEANS for row in differences
            if row["pathology"].startswith(f"{title} (")}


def table_row(configuration: Configuration, run_dir: Path, report: EvaluationReport,
              differences: list[dict] | None, labels: tuple[str, ...], level: str) -> dict:
    """One configuration: its test AUCs at `level` with intervals, and its paired difference to
    the baseline (`differences` is None for the baseline itself)."""
    row = {"configuration": configuration.name, "options": shlex.join(configuration.options),
           "run": str(run_dir), "baseline": differences is None, "level": level,
           "n_images": report.n_images, "n_studies": report.n_studies,
           "n_patients": report.n_patients}
    summary = report.level(level)
    paired = mean_rows(differences or [])
    for key, stem in MEAN_COLUMNS.items():
        mean = summary.means.get(key)
        auc, low, high = (mean.auc, mean.ci.low, mean.ci.high) if mean else (None, None, None)
        diff = paired.get(key, {})
        row.update({stem: auc, f"{stem}_ci_low": low, f"{stem}_ci_high": high,
                    f"diff_{stem}": diff.get("difference"),
                    f"diff_{stem}_ci_low": diff.get("ci_low"),
                    f"diff_{stem}_ci_high": diff.get("ci_high"),
                    f"diff_{stem}_verdict": verdict_text(diff["verdict"]) if diff else None})
    by_class = {r["pathology"]: r for r in differences or []}
    for label in labels:
        diff = by_class.get(label, {})
        row.update({f"auc {label}": summary.classes[label].auc,
                    f"diff {label}": diff.get("difference"),
                    f"diff {label} ci_low": diff.get("ci_low"),
                    f"diff {label} ci_high": diff.get("ci_high")})
    return row


def build_table(configurations: list[Configuration], runs: dict[str, list[Run]]
                ) -> tuple[list[dict], dict[str, MeanSummary], tuple[str, ...]]:
    """(rows, the baseline's means at the table's level, labels) from the runs' (one per
    configuration) eval_test.json and predictions."""
    only = {c.name: runs[c.name][0] for c in configurations}
    reports = {name: read_report(run.run_dir / f"eval_{SPLIT}.json") for name, run in only.items()}
    baseline, *others = configurations
    print(f"ablate: paired differences to {baseline.name} on the {SPLIT} split", flush=True)
    level = table_level(configurations)
    base = only[baseline.name]
    base_preds = test_predictions(base.configuration, base.run_dir)
    labels = base_preds.labels
    rows = [table_row(baseline, base.run_dir, reports[baseline.name], None, labels, level)]
    for configuration in others:
        run = only[configuration.name]
        preds = test_predictions(run.configuration, run.run_dir)
        differences, _ = paired_differences(base_preds, preds, baseline.cfg,
                                            per_study=level == "study")
        rows.append(table_row(configuration, run.run_dir, reports[configuration.name],
                              differences, labels, level))
    return rows, reports[baseline.name].level(level).means, labels


# ---- the table across seeds (--seeds N > 1) ------------------------------------------------------

def seed_row(configuration: Configuration, runs: list[Run], scored: SeedRuns,
             base: SeedRuns | None, report: EvaluationReport, members: dict,
             labels: tuple[str, ...],
             level: str, ci_level: float) -> dict:
    """One configuration across its seeds: the mean over its runs of each mean AUC and each
    observation's AUC, their spread and every run's value, and (`base` None for the baseline
    itself) B - baseline with its two-level interval."""
    row = {"configuration": configuration.name, "options": shlex.join(configuration.options),
           "runs": ";".join(str(run.run_dir) for run in runs),
           "seeds": " ".join(str(seed) for seed in scored.seeds), "n_seeds": len(runs),
           "baseline": base is None, "level": level, "n_images": report.n_images,
           "n_studies": report.n_studies, "n_patients": report.n_patients}
    for key, stem in MEAN_COLUMNS.items():
        columns = members.get(key, ("", []))[1]
        mean = seed_summary(scored, columns, ci_level)
        diff = {} if base is None else seed_difference(base, scored, columns, ci_level)
        row.update({stem: mean["mean"], f"{stem}_sd": mean["sd"], f"{stem}_min": mean["min"],
                    f"{stem}_max": mean["max"], f"{stem}_classes": len(columns),
                    f"{stem}_ci_low": mean["ci_low"], f"{stem}_ci_high": mean["ci_high"],
                    **{f"{stem}_s{seed}": value for seed, value in mean["values"].items()},
                    f"diff_{stem}": diff.get("difference"),
                    f"diff_{stem}_ci_low": diff.get("ci_low"),
                    f"diff_{stem}_ci_high": diff.get("ci_high"),
                    f"diff_{stem}_verdict": verdict_text(diff["verdict"]) if diff else None})
    for column, label in enumerate(labels):
        auc = seed_summary(scored, [column], ci_level, joint=False)
        diff = {} if base is None else seed_difference(base, scored, [column], ci_level,
                                                       joint=False)
        row.update({f"auc {label}": auc["mean"], f"auc {label} sd": auc["sd"],
                    **{f"auc {label} s{seed}": value for seed, value in auc["values"].items()},
                    f"diff {label}": diff.get("difference"),
                    f"diff {label} ci_low": diff.get("ci_low"),
                    f"diff {label} ci_high": diff.get("ci_high")})
    return row


def build_seed_table(configurations: list[Configuration], runs: dict[str, list[Run]]
                     ) -> tuple[list[dict], tuple[str, ...]]:
    """(rows, labels) from every run's predictions on the test split: all runs scored on the
    rows every one predicted, one patient draw for all."""
    baseline = configurations[0]
    cfg = baseline.cfg  # the shared --seed, bootstrap_resamples, ci_level, min_positives
    level = table_level(configurations)
    every = [run for c in configurations for run in runs[c.name]]
    predictions = []
    for index, run in enumerate(every, 1):
        print(f"ablate: {SPLIT} predictions of {run.run_dir} ({index}/{len(every)})", flush=True)
        predictions.append(test_predictions(run.configuration, run.run_dir))
    aligned = align_runs(predictions, cfg.study_aggregation, per_study=level == "study")
    n_seeds = len(runs[baseline.name])
    print(f"ablate: two-level bootstrap on the {SPLIT} split ({cfg.bootstrap_resamples} "
          f"resamples of its patients and of each configuration's {n_seeds} seeds), differences "
          f"to {baseline.name}", flush=True)
    scored = [score_runs(aligned.scores[i * n_seeds:(i + 1) * n_seeds],
                         [run.seed for run in runs[c.name]], aligned, cfg.bootstrap_resamples,
                         cfg.seed, i)
              for i, c in enumerate(configurations)]
    members = mean_members(aligned.targets, aligned.labels, cfg.min_positives)
    reports = {c.name: read_report(runs[c.name][0].run_dir / f"eval_{SPLIT}.json")
               for c in configurations}
    rows = [seed_row(c, runs[c.name], scored[i], None if i == 0 else scored[0], reports[c.name],
                     members, aligned.labels, level, cfg.ci_level)
            for i, c in enumerate(configurations)]
    return rows, aligned.labels


# ---- the label-efficiency curve (--train_fraction) ----------------------------------------------

def training_shares(cfg: Config, fractions: list[float | None], seeds: list[int]
                    ) -> dict[float, TrainingShare]:
    """{share: what it holds for each seed}, drawn from <data_dir>/splits/train.csv as train.py
    draws it (cxr.data.splits.patient_subset with the run's share and seed)."""
    train = read_split(cfg.splits_dir / "train.csv")
    shares = [1.0 if fraction is None else fraction for fraction in fractions]
    return {share: training_share(train, share, seeds) for share in shares}


def curve_points(tables: list[tuple[float, list[dict]]], shares: dict[float, TrainingShare],
                 configurations: list[Configuration]) -> list[CurvePoint]:
    """One point per configuration and share, from each share's table rows: configuration by
    configuration, each from the smallest share."""
    points = [curve_point(row, shares[share]) for share, rows in tables for row in rows]
    return ordered(points, [c.name for c in configurations])


def write_curve(points: list[CurvePoint], shares: dict[float, TrainingShare],
                setup: AblationSetup, out_dir: Path) -> None:
    """label_efficiency.csv, .md and .png in out_dir."""
    names = [c.name for c in setup.configurations]
    write_csv_atomic(pd.DataFrame(curve_rows(points)), out_dir / "label_efficiency.csv")
    curve_figure(points, names, out_dir / "label_efficiency.png", figure_title(points, setup))
    write_text_atomic(curve_markdown(points, list(shares.values()), setup,
                                     "label_efficiency.png"), out_dir / "label_efficiency.md")


# ---- main ----------------------------------------------------------------------------------------

def ablation_command(shared: Options, configurations: list[Configuration], name: str,
                     cfg: Config, curve: bool = False) -> str:
    """The command that runs this ablation, and continues it when re-run."""
    return shlex.join(["python", "ablate.py", *option_tokens(shared), "--ablation",
                       *[f"{c.name}: {shlex.join(c.options)}".rstrip() for c in configurations],
                       "--ablation_name", name,
                       *(["--train_fraction", ",".join(map(str, cfg.train_fraction))]
                         if curve else []),
                       *(["--seeds", str(cfg.seeds)] if cfg.seeds > 1 else [])])


def announce(configurations: list[Configuration], order: list[Run], seeds: list[int],
             shares: dict[float, TrainingShare], crossed: bool, name: str, cfg: Config) -> None:
    runs = (f"{cfg.models_dir}/{name}-<configuration>" + ("-f<share>" if crossed else "")
            + ("-s<seed>" if cfg.seeds > 1 else ""))
    crossing = [f"{len(configurations)} configuration{'s' * (len(configurations) != 1)}"]
    if crossed:
        crossing.append(f"{len(shares)} training shares ("
                        + ", ".join(f"{share:g}: {count.mean_patients:g} patients"
                                    for share, count in shares.items()) + ")")
    if cfg.seeds > 1:
        crossing.append(f"{cfg.seeds} seeds ({', '.join(map(str, seeds))})")
    what = (" x ".join(crossing) + f" = {len(order)} runs" if len(crossing) > 1
            else f"{len(configurations)} configurations, seed {cfg.seed}")
    print(f"ablate: {what}, {cfg.epochs} epochs, data {cfg.data_dir}; runs {runs}", flush=True)


def setup_of(configurations: list[Configuration], runs: dict[str, list[Run]], name: str,
             command: str, cfg: Config, share: TrainingShare | None = None) -> AblationSetup:
    """What the documents say of how the ablation was run (`share`: the runs' training share,
    when they train on one of --train_fraction's)."""
    return AblationSetup(name, command, SPLIT,
                         [ConfigurationRuns(c.name, c.options_text,
                                            [run.run_dir for run in runs[c.name]],
                                            [run.seed for run in runs[c.name]])
                          for c in configurations], cfg, share)


def tabulate(configurations: list[Configuration], runs: dict[str, list[Run]],
             setup: AblationSetup) -> tuple[list[dict], str]:
    """ablation.csv's rows and ablation.md of one training share: across the seeds with
    --seeds N > 1."""
    if setup.cfg.seeds > 1:
        rows, labels = build_seed_table(configurations, runs)
        return rows, seed_markdown_report(rows, setup, labels)
    rows, means, labels = build_table(configurations, runs)
    return rows, markdown_report(rows, setup, means, labels)


def with_share(rows: list[dict], fraction: float) -> list[dict]:
    """The rows of one share of several, the share in a column after the configuration's."""
    return [{"configuration": row["configuration"], "train_fraction": fraction, **row}
            for row in rows]


def main(cfg: Config, given: Options) -> None:
    """`given`: the options ablate.py was given (its command line and PIPELINE_OPTIONS), by
    field (cli.given_options); each stage gets those it reads."""
    shared = {key: tokens for key, tokens in given.items() if key not in OWN}
    curve = "train_fraction" in given  # label_efficiency.* are written
    configurations = resolve_configurations(cfg, shared, curve)
    name = ablation_name(cfg)
    seeds = seed_list(cfg)
    fractions = fraction_list(cfg)  # [None]: the whole split, runs as without --train_fraction
    crossed = fractions != [None]
    shares = training_shares(cfg, fractions, seeds) if curve else {}
    command = ablation_command(shared, configurations, name, cfg, curve)
    out_dir = Path(cfg.models_dir) / f"ablation-{name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = {fraction: {c.name: runs_of(c, name, seeds, fraction) for c in configurations}
              for fraction in fractions}
    order = training_order(configurations, list(blocks.values()))
    announce(configurations, order, seeds, shares, crossed, name, cfg)
    try:
        for index, run in enumerate(order, 1):
            train_and_evaluate(run, shared, out_dir, f"{index}/{len(order)}")
    except Stopped as stopped:
        print(f"\nablate: stopped; finished runs are kept and an interrupted run resumes from "
              f"its last.pth. Continue with:\n  {command}", flush=True)
        raise SystemExit(stopped.code) from None
    rows, markdowns, tables = [], [], []
    for fraction, runs in blocks.items():
        setup = setup_of(configurations, runs, name, command, cfg,
                         None if fraction is None else shares[fraction])
        block_rows, markdown = tabulate(configurations, runs, setup)
        print(summary_text(block_rows, setup))
        rows += block_rows if fraction is None else with_share(block_rows, fraction)
        markdowns.append(markdown)
        tables.append((1.0 if fraction is None else fraction, block_rows))
    write_csv_atomic(pd.DataFrame(rows), out_dir / "ablation.csv")
    write_text_atomic("\n".join(markdowns), out_dir / "ablation.md")
    wrote = "ablation.csv, ablation.md"
    if curve:
        setup = setup_of(configurations, blocks[fractions[0]], name, command, cfg)
        points = curve_points(tables, shares, configurations)
        write_curve(points, shares, setup, out_dir)
        print(f"\nLabel efficiency {name}: {SPLIT} AUC against labelled training patients\n"
              + curve_text(points, cfg.ci_level))
        wrote += ", label_efficiency.csv, .md, .png"
    logs = (f"<configuration>{'-f<share>' if crossed else ''}"
            f"{'-s<seed>' if cfg.seeds > 1 else ''}.log")
    per_share = f" x {len(fractions)} shares" if crossed else ""
    print(f"\nablate: wrote {out_dir}/{wrote} ({len(configurations)} configuration"
          f"{'s' * (len(configurations) != 1)}{per_share}; "
          f"per-observation AUCs in ablation.*, logs in {out_dir}/{logs})")


if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
    run_cli(lambda cfg: main(cfg, given_options(sys.argv[1:], "ablate.py", Config)),
            script="ablate.py", defaults=Config())
