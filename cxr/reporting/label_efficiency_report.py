"""ablate.py --train_fraction's label-efficiency curve, rendered from its points.

    label_efficiency.csv   one row per configuration and share (curve_rows)
    label_efficiency.md    the setup, the figure, the table, and what the intervals cover
    label_efficiency.png   test mean AUC and competition-five AUC against the labelled training
                           patients (log scale), an interval band per configuration
    the table printed on the terminal

cxr/evaluation/label_efficiency.py computes the points (CurvePoint); this module only renders.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from matplotlib.figure import Figure

from cxr.evaluation.label_efficiency import CurvePoint, TrainingShare
from cxr.reporting.ablation_report import AblationSetup, auc_cell, epochs_text
from cxr.reporting.plots import PANEL_INCHES, _save
from cxr.reporting.tables import markdown_table, text_table

# The two panels: (title, the point's AUC, interval low, interval high)
PANELS = (("Mean AUC (all evaluable observations)", "mean_auc", "ci_low", "ci_high"),
          ("Competition-five mean AUC", "competition_auc", "competition_ci_low",
           "competition_ci_high"))


def curve_rows(points: list[CurvePoint]) -> list[dict]:
    """label_efficiency.csv's rows."""
    return [dataclasses.asdict(point) for point in points]


# ---- cells ---------------------------------------------------------------------------------------

def share_text(fraction: float) -> str:
    """'10 %', '1 %', '0.5 %', '100 %'."""
    return f"{fraction * 100:g} %"


def count_text(mean: float, low: int, high: int) -> str:
    """'54', or '105 (101-110)': a mean over the seeds and its range when they differ."""
    return f"{mean:g}" if low == high else f"{mean:g} ({low}-{high})"


def header(level: float) -> list[str]:
    ci = f"[{level:.0%} CI]"
    return ["Configuration", "Share", "Patients", "Images", f"Mean AUC {ci}",
            f"Comp-5 AUC {ci}", "Seeds"]


def cells(point: CurvePoint) -> list[str]:
    return [point.configuration, share_text(point.train_fraction),
            count_text(point.patients, point.patients_min, point.patients_max),
            count_text(point.images, point.images_min, point.images_max),
            auc_cell(point.mean_auc, point.ci_low, point.ci_high),
            auc_cell(point.competition_auc, point.competition_ci_low, point.competition_ci_high),
            point.seeds]


def ordered(points: list[CurvePoint], configurations: list[str]) -> list[CurvePoint]:
    """Configuration by configuration (the baseline first), each from the smallest share."""
    return sorted(points, key=lambda p: (configurations.index(p.configuration), p.train_fraction))


def curve_text(points: list[CurvePoint], level: float) -> str:
    """The table for the terminal."""
    return text_table(header(level), [cells(point) for point in points], left=(0, 6))


# ---- label_efficiency.md -------------------------------------------------------------------------

def reference_text(point: CurvePoint, split: str) -> str:
    per_study = "; every run scored per study" if point.level == "study" else ""
    return (f"the {split} split's labels ({point.test_images} images, {point.test_patients} "
            f"patients{per_study})")


def intervals_text(setup: AblationSetup, n_seeds: int) -> str:
    """What each point's interval covers."""
    cfg, level, split = setup.cfg, f"{setup.cfg.ci_level:.0%}", setup.split
    if n_seeds > 1:
        return (f"Intervals: {level} percentile intervals of ablate.py's two-level bootstrap "
                f"({cfg.bootstrap_resamples} resamples, cxr/evaluation/seeds.py): each resample "
                f"draws the {split} patients with replacement (one draw shared by every run) and "
                f"{n_seeds} of the point's {n_seeds} runs with replacement. A point's interval "
                f"thus covers which patients are in the {split} split and which seeds were "
                "trained; a seed sets the initial weights, the data order and which training "
                "patients the share holds. Its seed part rests on "
                f"{n_seeds} runs, and a bootstrap of {n_seeds} values understates their spread: "
                "read the intervals as lower bounds of the uncertainty.")
    return (f"Intervals: {level} cluster-robust DeLong intervals of each run's report "
            f"(eval_{split}.json; each patient's images one cluster, cxr/evaluation/"
            f"intervals.py). They cover which patients are in the {split} split, not training "
            "noise: each point is one run, with one seed and one draw of training patients "
            "(`--seeds N` trains N of each, and the intervals then cover the seeds too).")


def curve_markdown(points: list[CurvePoint], shares: list[TrainingShare], setup: AblationSetup,
                   figure: str | None) -> str:
    """label_efficiency.md: `points` in order (ordered), `figure` the PNG's file name (None when
    none was drawn)."""
    cfg, split, first = setup.cfg, setup.split, points[0]
    n_seeds = first.n_seeds
    n_configurations = len(setup.configurations)
    runs = n_configurations * len(shares) * n_seeds
    fractions = ",".join(str(share.fraction) for share in shares)
    seeds = ", ".join(str(seed) for seed in setup.configurations[0].seeds)
    lines = [
        f"# Label efficiency: ablation {setup.name}", "",
        f"Test AUC against the number of labelled training patients. Every configuration was "
        f"trained on seeded, nested shares (`--train_fraction {fractions}`) of the "
        f"{shares[0].split_patients} patients of the training split in `{cfg.data_dir}`, "
        f"with seed{'s' * (n_seeds > 1)} {seeds}, for {epochs_text(cfg)}, and evaluated on the "
        f"{split} split: {runs} runs ({n_configurations} configuration"
        f"{'s' * (n_configurations != 1)} x {len(shares)} share{'s' * (len(shares) != 1)} x "
        f"{n_seeds} seed{'s' * (n_seeds > 1)}). The reference standard is "
        f"{reference_text(first, split)}. A share holds ceil(share x patients) patients, "
        "with all their images; for one seed each smaller share's patients are within every "
        "larger share's"
        + (", and each seed draws other patients, so the images differ by seed (the mean over "
           "the seeds, and their range)" if n_seeds > 1 else "") + ". "
        + ("A point's AUC is the mean over its runs of each run's AUC. " if n_seeds > 1 else "")
        + "The table `ablation.md` compares each configuration with the baseline, paired, at "
          "each share.", "",
        f"Command: `{setup.command}`", ""]
    if figure:
        lines += [f"![Test AUC against labelled training patients]({figure})", ""]
    lines += [markdown_table(header(cfg.ci_level), [cells(point) for point in points],
                             left=(0, 6)), "",
              intervals_text(setup, n_seeds), "",
              "The points of one configuration are not paired with each other, nor with other "
              "configurations': two intervals that overlap do not say that the AUCs are equal. "
              "Per point: label_efficiency.csv (with the SD across seeds and the run folders).",
              ""]
    return "\n".join(lines)


# ---- label_efficiency.png ------------------------------------------------------------------------

def _panel(ax, points: list[CurvePoint], configurations: list[str], title: str, stem: str,
           low: str, high: str) -> bool:
    """One AUC against patients, a line and an interval band per configuration; False when no
    point has that AUC."""
    drawn = False
    for colour, name in enumerate(configurations):
        mine = [p for p in points if p.configuration == name and getattr(p, stem) is not None]
        if not mine:
            continue
        drawn = True
        x = [p.patients for p in mine]
        y = [getattr(p, stem) for p in mine]
        lows = [math.nan if getattr(p, low) is None else getattr(p, low) for p in mine]
        highs = [math.nan if getattr(p, high) is None else getattr(p, high) for p in mine]
        ax.plot(x, y, marker="o", color=f"C{colour}", label=name)
        if len(mine) > 1:
            ax.fill_between(x, lows, highs, color=f"C{colour}", alpha=0.18, linewidth=0)
        else:  # one share: no band to draw, the interval as a bar
            ax.vlines(x, lows, highs, color=f"C{colour}", linewidth=1.5)
    ax.set_title(title, fontsize=10)
    if not drawn:
        ax.text(0.5, 0.5, "n/a: no point has this AUC", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    return drawn


def curve_figure(points: list[CurvePoint], configurations: list[str], path: Path,
                 title: str) -> None:
    """label_efficiency.png: two panels, mean AUC and competition-five AUC against labelled
    training patients on a log scale, ticks at the shares drawn."""
    figure = Figure(figsize=(2 * PANEL_INCHES * 1.35, PANEL_INCHES * 1.35))
    axes = figure.subplots(1, 2, sharex=True)
    figure.suptitle(title, fontsize=10)
    ticks = sorted({(p.patients, p.train_fraction) for p in points})
    for ax, (panel_title, stem, low, high) in zip(axes, PANELS):
        if not _panel(ax, points, configurations, panel_title, stem, low, high):
            continue
        ax.set_xscale("log")
        ax.set_xticks([x for x, _ in ticks],
                      [f"{x:g}\n({share_text(f)})" for x, f in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set(xlabel="labelled training patients (share of the split)", ylabel="test AUC")
        ax.grid(color="0.92")
        ax.set_axisbelow(True)
        ax.legend(fontsize=8, loc="lower right")
    _save(figure, path)


def figure_title(points: list[CurvePoint], setup: AblationSetup) -> str:
    first = points[0]
    seeds = f" and {first.n_seeds} seeds" if first.n_seeds > 1 else ""
    return (f"Ablation {setup.name}: {setup.split} AUC against labelled training patients\n"
            f"reference standard: the {setup.split} split's labels ({first.test_patients} "
            f"patients); {setup.cfg.ci_level:.0%} intervals over {setup.split} patients{seeds}")
