"""ablate.py's tables and documents, rendered from the rows it collects.

    ablation.md     the configurations and their runs, the summary of mean AUCs with intervals
                    and differences to the baseline, each observation's AUC and difference
    the summary printed on the terminal

ablate.py trains, evaluates and collects one row per configuration (the columns of
ablation.csv: table_row, seed_row); this module chooses the rows, columns and words, and
tables.py lays the cells out as text or Markdown. A table across seeds (--seeds N > 1) has rows
with "seeds", and its own columns (the spread over the seeds). With several --train_fraction
shares, ablate.py makes one table per share (its setup's `share`) and puts them one after the
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.evaluation.label_efficiency import TrainingShare
from cxr.evaluation.report import MeanSummary
from cxr.reporting.tables import interval_text, markdown_table, number_text, text_table

if TYPE_CHECKING:
    from config import Config


@dataclass(frozen=True)
class ConfigurationRuns:
    """One configuration as the documents name it: its options and its run folders."""

    name: str
    options: str  # the options in which it differs, as written, or "(shared options only)"
    runs: list[Path]  # one per seed
    seeds: list[int]


@dataclass(frozen=True)
class AblationSetup:
    """How the ablation was run, as its documents tell it (ablate.py fills it in)."""

    name: str  # --ablation_name
    command: str  # the command that runs it (a re-run continues it)
    split: str  # the split every configuration is scored on
    configurations: list[ConfigurationRuns]  # the baseline first
    cfg: Config  # the shared options: data, seed, epochs, intervals, study aggregation
    share: TrainingShare | None = None  # the share of the training patients (--train_fraction)


# ---- cells ---------------------------------------------------------------------------------------

def split_text(row: dict, level: str) -> str:
    """'278 images, 120 patients' or '229 studies, 120 patients' (a row's counts: the
    baseline's report)."""
    if level == "study":
        return f"{row['n_studies']} studies, {row['n_patients']} patients"
    return f"{row['n_images']} images, {row['n_patients']} patients"


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


def spread_cell(row: dict, stem: str) -> str:
    """'0.0123 (0.801-0.830)': the SD across seeds and the seeds' range."""
    if row[stem] is None:
        return "n/a"
    low, high = row[f"{stem}_min"], row[f"{stem}_max"]
    return f"{number_text(row[f'{stem}_sd'])} ({low:.3f}-{high:.3f})"


def verdict_cell(row: dict) -> str:
    return "" if row["baseline"] else row["diff_mean_auc_verdict"] or "n/a"


# ---- the summary: one seed, or the means over the seeds ------------------------------------------

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
            diff_cell(row, "mean_auc"), diff_cell(row, "competition_auc"), verdict_cell(row)]


def seed_summary_header(level: float, n_seeds: int) -> list[str]:
    ci = f"[{level:.0%} CI]"
    return ["Configuration", f"Mean AUC, {n_seeds} seeds {ci}", "SD (min-max)",
            f"Comp-5 AUC, {n_seeds} seeds {ci}", "SD (min-max)",
            f"Mean - baseline [two-level {level:.0%} CI]",
            f"Comp-5 - baseline [two-level {level:.0%} CI]", "Verdict (mean)"]


def seed_summary_cells(row: dict) -> list[str]:
    return [row["configuration"],
            auc_cell(row["mean_auc"], row["mean_auc_ci_low"], row["mean_auc_ci_high"]),
            spread_cell(row, "mean_auc"),
            auc_cell(row["competition_auc"], row["competition_auc_ci_low"],
                     row["competition_auc_ci_high"]),
            spread_cell(row, "competition_auc"),
            diff_cell(row, "mean_auc"), diff_cell(row, "competition_auc"), verdict_cell(row)]


def seeded(rows: list[dict]) -> bool:
    """Whether the rows are a table across seeds (--seeds N > 1)."""
    return "seeds" in rows[0]


def summary_table(rows: list[dict], level: float) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the summary: one seed, or the means over the seeds."""
    if seeded(rows):
        return (seed_summary_header(level, rows[0]["n_seeds"]),
                [seed_summary_cells(row) for row in rows])
    return summary_header(level), [summary_cells(row) for row in rows]


def format_summary(rows: list[dict], level: float) -> str:
    """Plain-text table for the terminal."""
    header, cells = summary_table(rows, level)
    return text_table(header, cells, left=(0, len(header) - 1))


def summary_text(rows: list[dict], setup: AblationSetup) -> str:
    """What the terminal shows at the end: the split, the baseline, the summary table."""
    cfg = setup.cfg
    across = f", means over {cfg.seeds} seeds" if cfg.seeds > 1 else ""
    return (f"\nAblation {setup.name}{share_title(setup)}: {setup.split} split "
            f"({split_text(rows[0], rows[0]['level'])}), "
            f"baseline {setup.configurations[0].name}{across}\n"
            + format_summary(rows, cfg.ci_level))


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


# ---- ablation.md ---------------------------------------------------------------------------------

def study_level_text(level_name: str, cfg: Config) -> str:
    """Said when every configuration is scored per study."""
    return (" Every configuration is scored per study, as at least one predicts studies: an "
            f"image model's study prediction is the {cfg.study_aggregation} over the study's "
            "images." if level_name == "study" else "")


def epochs_text(cfg: Config) -> str:
    return f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)}"


def share_title(setup: AblationSetup) -> str:
    """', training share 0.1' in a title; '' without --train_fraction's shares."""
    return "" if setup.share is None else f", training share {setup.share.fraction:g}"


def share_words(setup: AblationSetup) -> str:
    """' on a seeded share 0.1 of its training patients (54 of 540, ...)'; '' without one."""
    share = setup.share
    if share is None:
        return ""
    low, high = min(share.patients), max(share.patients)
    patients = f"{low}" if low == high else f"{low}-{high}"
    images = (f"{share.images[0]} images" if len(set(share.images)) == 1
              else f"{min(share.images)}-{max(share.images)} images by seed")
    return (f" on a seeded share {share.fraction:g} of its training patients "
            f"(`--train_fraction {share.fraction:g}`: {patients} of {share.split_patients} "
            f"patients, {images})")


def markdown_report(rows: list[dict], setup: AblationSetup, means: dict[str, MeanSummary],
                    labels: tuple[str, ...]) -> str:
    """ablation.md of one seed; `means` are the baseline's means at the table's level."""
    cfg, split, level_name = setup.cfg, setup.split, rows[0]["level"]
    counted = "; ".join(f"{m.name.lower()}: {len(m.classes)} evaluable observations"
                        for m in means.values())
    level = f"{cfg.ci_level:.0%}"
    lines = [
        f"# Ablation {setup.name}{share_title(setup)}", "",
        f"Every configuration was trained on `{cfg.data_dir}`{share_words(setup)} with seed "
        f"{cfg.seed} for "
        f"{epochs_text(cfg)} and evaluated on the {split} split "
        f"({split_text(rows[0], level_name)}; {counted}). The first configuration is the "
        "baseline." + study_level_text(level_name, cfg),
        "", f"Command: `{setup.command}`", "",
        markdown_table(["Configuration", "Options", "Run"],
                       [[c.name, f"`{c.options}`", f"`{r['run']}`"]
                        for c, r in zip(setup.configurations, rows)], left=(0, 1, 2)), "",
        f"## Mean AUC ({split} split)", "",
        markdown_table(summary_header(cfg.ci_level), [summary_cells(r) for r in rows],
                       left=(0, 5)), "",
        f"Intervals: {level} cluster-robust DeLong intervals (each patient's images one "
        "cluster; cxr/evaluation/intervals.py, coverage: benchmarks/bench_coverage.py). A "
        "difference's interval is "
        "*paired*: both models are scored on the same patients, so it is narrower than the two "
        "AUC intervals suggest, and one "
        "that excludes 0 (`better` / `worse`) is unlikely to come from which patients happen to "
        "be in the test split. It does not cover training noise: each configuration was trained "
        "once, with one seed, so a small difference may still come from the seed (`--seeds N` "
        "trains each configuration N times, and its interval covers the seed too).", "",
        f"## Per observation ({split} split): AUC, and for the others the difference to the "
        f"baseline [paired {level} CI]", "",
        per_class_markdown(rows, labels), ""]
    return "\n".join(lines)


def seed_intervals_text(setup: AblationSetup, n_seeds: int) -> list[str]:
    """What the two-level intervals cover, and why few seeds make them too narrow."""
    cfg, split, level = setup.cfg, setup.split, f"{setup.cfg.ci_level:.0%}"
    return [
        f"Intervals: {level} percentile intervals of a two-level bootstrap with "
        f"{cfg.bootstrap_resamples} resamples. Each resample draws the {split} patients with "
        "replacement (each patient's images together), one draw shared by every run, so a "
        "difference is paired over patients; and, independently for each configuration, "
        f"{n_seeds} of its {n_seeds} runs with replacement. A configuration's resampled AUC is the "
        "mean over the drawn runs of their AUCs on the resampled patients. The interval of a "
        "difference thus covers both which patients happen to be in the test split and which "
        "seeds happened to be trained: one that excludes 0 (`better` / `worse`) is unlikely to "
        "come from either, and `no clear difference` means that neither the patients nor the "
        "seeds rule out a difference of 0. Runs of two configurations with the same seed are "
        "not paired: each configuration's seeds are drawn independently.", "",
        f"**The seed part of each interval rests on {n_seeds} runs per configuration.** A "
        f"bootstrap of {n_seeds} values shows only the spread those runs happened to show, and "
        f"understates it: the bootstrap variance of a mean of {n_seeds} runs is "
        f"{n_seeds - 1}/{n_seeds} of the usual SD²/{n_seeds}, and the SD of {n_seeds} runs can "
        "itself be several times too small. Read the intervals as lower bounds of the "
        "uncertainty; more seeds make them honest."]


def seed_markdown_report(rows: list[dict], setup: AblationSetup, labels: tuple[str, ...]) -> str:
    """ablation.md across seeds (--seeds N > 1)."""
    cfg, split = setup.cfg, setup.split
    level_name, n_seeds = rows[0]["level"], rows[0]["n_seeds"]
    seeds = ", ".join(str(seed) for seed in setup.configurations[0].seeds)
    counted = (f"all: {rows[0]['mean_auc_classes']} evaluable observations; competition 5: "
               f"{rows[0]['competition_auc_classes']}")
    lines = [
        f"# Ablation {setup.name}{share_title(setup)}", "",
        f"Every configuration was trained {n_seeds} times, with seeds {seeds}, on "
        f"`{cfg.data_dir}`{share_words(setup)} for {epochs_text(cfg)} and evaluated on the "
        f"{split} split ({split_text(rows[0], level_name)}; {counted}). The first configuration "
        "is the baseline. A configuration's AUC is the mean over its runs of each run's AUC; SD "
        "is the sample standard deviation across its runs, min-max their range, and each run's "
        "value is in ablation.csv." + study_level_text(level_name, cfg),
        "", f"Command: `{setup.command}`", "",
        markdown_table(["Configuration", "Options", "Runs"],
                       [[c.name, f"`{c.options}`", ", ".join(f"`{run}`" for run in c.runs)]
                        for c in setup.configurations], left=(0, 1, 2)), "",
        f"## Mean AUC over {n_seeds} seeds ({split} split)", "",
        markdown_table(*summary_table(rows, cfg.ci_level), left=(0, 7)), "",
        *seed_intervals_text(setup, n_seeds), "",
        f"## Per observation ({split} split): AUC (mean over {n_seeds} seeds), and for the others "
        f"the difference to the baseline [two-level {cfg.ci_level:.0%} CI]", "",
        per_class_markdown(rows, labels), ""]
    return "\n".join(lines)
