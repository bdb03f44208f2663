"""localize.py's documents: localization.json, localization.md, the terminal table, and
localization.png (each pathology's first film with the finding: the map, the reference standard
outlined in green, the segmentation in white, the pointing game's point as a cross)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cxr.atomic import write_text_atomic
from cxr.evaluation.localization import Example, FilmScore, Summary
from cxr.reporting.plots import _grid, _save
from cxr.reporting.tables import interval_text, markdown_table, number_text, text_table

COLUMNS = 4  # panels per row
PANEL_INCHES = 2.6
DPI = 72
TITLE_INCHES = 0.4  # above the panels, for the title
METRIC_NAMES = {"miou": "mIoU", "miou_true_positive": "mIoU (TP)", "hit_rate": "Hit rate"}
HUMAN_COLUMNS = {"miou": "Human mIoU", "hit_rate": "Human hit rate"}  # compared with the model


@dataclass
class LocalizationReport:
    """What localize.py measured, as plain data for the documents."""

    context: dict  # reference standard, saliency source, segmentation rule, bootstrap, counts
    summary: Summary
    per_film: dict[str, dict[str, FilmScore]]
    human: Summary | None = None
    decreases: dict[str, dict] = field(default_factory=dict)  # metric -> label -> decrease
    tuned: dict[str, float] | None = None  # --tune's thresholds

    def label_summary(self, label: str) -> dict:
        """summary[label] of localization.json."""
        found = self.summary.estimates
        entry = {"miou": found["miou"][label].value, "ci": found["miou"][label].ci,
                 "n": found["miou"][label].n,
                 "threshold": self.context["segmentation"]["thresholds"].get(label)}
        for metric in ("miou_true_positive", "hit_rate"):
            entry.update({metric: found[metric][label].value,
                          f"{metric}_ci": found[metric][label].ci,
                          f"{metric}_n": found[metric][label].n})
        if self.human is not None:
            entry["human"] = {metric: self.human.estimates[metric][label].as_dict()
                              for metric in self.human.estimates}
            entry["percentage_decrease"] = {metric: values[label]
                                            for metric, values in self.decreases.items()}
        return entry

    def as_dict(self) -> dict:
        payload = {**self.context,
                   "summary": {label: self.label_summary(label) for label in self.summary.labels},
                   "per_film": {film: {label: score.as_dict() for label, score in scores.items()}
                                for film, scores in sorted(self.per_film.items())}}
        if self.decreases:
            payload["percentage_decrease_average"] = {metric: values["Average"]
                                                      for metric, values in self.decreases.items()}
        if self.tuned is not None:
            payload["tuned_thresholds"] = self.tuned
        return payload


# ---- tables --------------------------------------------------------------------------------------

def table_rows(report: LocalizationReport) -> tuple[list[str], list[list[str]]]:
    """Pathology, then per metric its value, interval and n; with a human benchmark its mIoU
    and hit rate and the model's percentage decrease from them."""
    level = report.context["bootstrap"]["ci_level"]
    header = ["Pathology"]
    for name in METRIC_NAMES.values():
        header += [name, f"{level * 100:g}% CI" if name == "mIoU" else "CI", "n"]
    compared = [metric for metric in HUMAN_COLUMNS if metric in report.decreases]
    for metric in compared:
        header += [HUMAN_COLUMNS[metric], "Decrease %"]
    rows = []
    for label in report.summary.labels:
        row = [label]
        for metric in METRIC_NAMES:
            found = report.summary.estimates[metric][label]
            row += [number_text(found.value, 3), interval_text(found.low, found.high),
                    str(found.n)]
        for metric in compared:
            row += [number_text(report.human.estimates[metric][label].value, 3),
                    number_text(report.decreases[metric][label]["value"], 1)]
        rows.append(row)
    return header, rows


def print_report(report: LocalizationReport) -> None:
    header, rows = table_rows(report)
    print(f"\n{report.context['headline']}")
    print(text_table(header, rows))


def markdown_document(report: LocalizationReport, figure: str | None) -> str:
    context = report.context
    header, rows = table_rows(report)
    lines = [f"# Localization: {context['saliency']['name']}", "", context["headline"], "",
             markdown_table(header, rows), "",
             f"mIoU: IoU of the segmentation with the reference over every film where either is "
             f"non-empty; mIoU (TP): over the films where both are; hit rate: the map's peak "
             f"inside the reference, over the films with the finding. Segmentation: "
             f"{context['segmentation']['description']}. Intervals: "
             f"{context['bootstrap']['description']}."]
    if report.tuned is not None:
        lines += ["", "Thresholds tuned on these films (tuning_results.csv): "
                  + ", ".join(f"{label} {value:.1f}" for label, value in report.tuned.items())]
    if figure:
        lines += ["", f"![Each pathology's first film with the finding: the map, the reference "
                      f"outlined in green, the segmentation in white, the peak as a cross]"
                      f"({figure})"]
    return "\n".join(lines) + "\n"


def write_documents(report: LocalizationReport, out_dir: Path, figure: str | None) -> None:
    write_text_atomic(json.dumps(report.as_dict(), indent=2) + "\n",
                      out_dir / "localization.json")
    write_text_atomic(markdown_document(report, figure), out_dir / "localization.md")


# ---- the figure ----------------------------------------------------------------------------------

def examples_figure(examples: Sequence[Example], path: Path, title: str) -> bool:
    """localization.png; False (nothing written) without an example."""
    if not examples:
        return False
    figure, axes = _grid(len(examples), title, min(COLUMNS, len(examples)), PANEL_INCHES,
                         TITLE_INCHES, fontsize=9)
    for ax, example in zip(axes, examples):
        draw_example(ax, example)
    _save(figure, path, top=0.97, dpi=DPI)
    return True


def draw_example(ax, example: Example) -> None:
    """The film in gray (black without it), the map in colour over it, the outlines, the peak."""
    height, width = example.scaled.shape
    background = example.image if example.image is not None else np.zeros((height, width))
    ax.imshow(background, cmap="gray", vmin=0, vmax=255)
    ax.imshow(example.scaled, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    ax.contour(example.truth, levels=[0.5], colors="lime", linewidths=1.2)
    if example.predicted.any():
        ax.contour(example.predicted, levels=[0.5], colors="white", linewidths=0.9,
                   linestyles="dashed")
    ax.plot(*example.peak, marker="x", color="red", markersize=7, mew=2)
    score = example.score
    hit = "hit" if score.hit == 1 else "miss"
    ax.set_title(f"{example.label}\nIoU {number_text(score.iou, 2)}, {hit}", fontsize=8)
    ax.set_xlabel(short_film(example.film), fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def short_film(film: str) -> str:
    return film if len(film) <= 40 else film[:37] + "..."
