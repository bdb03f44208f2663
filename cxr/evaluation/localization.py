"""Localization metrics of saliency maps against a reference standard, as cheXlocalize computes
them (Saporta et al. 2022; github rajpurkarlab/cheXlocalize: heatmap_to_segmentation.py, eval.py,
tune_heatmap_threshold.py, calculate_percentage_decrease.py).

A map becomes a segmentation of the film:
- resized to the film's size with torch's bilinear interpolation (align_corners False), as
  cheXlocalize's create_map / pkl_to_mask;
- scaled to 0..1 ((map - min) / max of that), then either Otsu's threshold on its 8-bit copy
  (uint8(255 x map), cv2.THRESH_OTSU) with the outer and inner contours of the result filled
  (cv2.findContours, PIL polygons: heatmap_to_segmentation.cam_to_segmentation), or a
  per-pathology threshold, map > t (a tuning_results.csv);
- empty when the model's probability is below the pathology's cut-off (probability cut-offs, the
  row of probability_tuning_results.csv with the highest mIoU), as cheXlocalize's --prob_cutoff.

Per film and pathology (eval.py calculate_iou and get_hitrates):
- IoU, all films: |S and G| / |S or G|; undefined (left out) when both are empty, so a film
  without the finding counts 0 when the map segments anything there (a false positive);
- IoU, true positives only: undefined unless both S and G are non-empty;
- hit (the pointing game): the pixel where the resized map is largest (numpy's first argmax) lies
  in G; undefined when G is empty. The probability plays no part.
mIoU and hit rate are the means over the films where they are defined. Their intervals are
percentile intervals of a bootstrap that resamples patients with replacement (cheXlocalize's
eval.py resamples films; 234 val films come from 200 patients), the bounds taken as its
compute_cis takes them: the sorted resamples' values at int(a/2 x B) - 1 and int((1 - a/2) x B) - 1.
The human benchmark is a second reader's segmentations (or points) scored the same way, and the
percentage decrease (human - model) / human as calculate_percentage_decrease.py computes it: from
the means of the paired bootstrap resamples, its interval from the resamples' own decreases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, NamedTuple, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cxr.data.imaging import read_grayscale
from cxr.errors import PipelineError
from cxr.evaluation.bootstrap import draw_resamples

# tune_heatmap_threshold.py's candidates, np.arange(0.2, .8, .1): 0.2, 0.3, ..., 0.7
TUNING_CANDIDATES: tuple[float, ...] = tuple(float(t) for t in np.arange(0.2, .8, .1))
OTSU = "otsu"


# ---- a map on the film, and its segmentation ---------------------------------------------------

def resize_map(saliency: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2-D map (or 1 x 1 x h x w) as a height x width float32 map: torch's bilinear
    interpolation with align_corners False, as cheXlocalize resizes its maps."""
    values = torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32))
    values = values.reshape(1, 1, *values.shape[-2:])
    return F.interpolate(values, size=(height, width), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def unit_scaled(full: np.ndarray) -> np.ndarray:
    """(map - min) / max of that, in float32 as cheXlocalize's torch code; a flat map is 0."""
    shifted = full - full.min()
    top = shifted.max()
    return shifted / top if top > 0 else np.zeros_like(shifted)


def otsu_segmentation(scaled: np.ndarray) -> np.ndarray:
    """cam_to_segmentation with Otsu: the 8-bit map thresholded by Otsu's method, then every
    contour of the result (outer and holes, cv2.RETR_TREE) of more than one point filled with
    PIL, outline included."""
    eight_bit = np.uint8(np.float32(255) * scaled)
    _, thresholded = cv2.threshold(eight_bit, 0, int(eight_bit.max()), cv2.THRESH_OTSU)
    found = cv2.findContours(thresholded, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    contours = found[0] if len(found) == 2 else found[1]
    canvas = Image.new("1", (scaled.shape[1], scaled.shape[0]))
    for contour in contours:
        if len(contour) > 1:
            ImageDraw.Draw(canvas).polygon([(int(p[0][0]), int(p[0][1])) for p in contour],
                                           outline=1, fill=1)
    return np.array(canvas, dtype=np.uint8)


def threshold_segmentation(scaled: np.ndarray, threshold: float) -> np.ndarray:
    """map > threshold, compared in float32 as cheXlocalize compares its float32 map."""
    return (scaled > np.float32(threshold)).astype(np.uint8)


@dataclass(frozen=True)
class SegmentationRule:
    """How maps become segmentations: Otsu or a threshold per label, and probability cut-offs."""

    thresholds: Mapping[str, float] = field(default_factory=dict)  # label -> t; absent: Otsu
    cutoffs: Mapping[str, float] = field(default_factory=dict)  # label -> probability cut-off

    def segment(self, scaled: np.ndarray, label: str, probability: float | None) -> np.ndarray:
        cutoff = self.cutoffs.get(label, 0.0)
        if probability is not None and probability < cutoff:
            return np.zeros(scaled.shape, np.uint8)
        if label in self.thresholds:
            return threshold_segmentation(scaled, self.thresholds[label])
        return otsu_segmentation(scaled)

    def describe(self, label: str) -> str | float:
        return self.thresholds.get(label, OTSU)


# ---- one film and pathology ----------------------------------------------------------------------

def iou(predicted: np.ndarray, truth: np.ndarray, true_positive_only: bool) -> float:
    """eval.py's calculate_iou: NaN when both are empty (all films) or either is (true positives
    only)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    union = np.count_nonzero(predicted | truth)
    if true_positive_only and (not predicted.any() or not truth.any()):
        return float("nan")
    if union == 0:
        return float("nan")
    return np.count_nonzero(predicted & truth) / union


def hit(full: np.ndarray, truth: np.ndarray) -> float:
    """The pointing game: 1 if the map's largest pixel (the first, in row order) lies in the
    truth, 0 if not, NaN when the truth is empty."""
    return peak_hit(peak_of(full), truth)


def peak_hit(peak: tuple[int, int], truth: np.ndarray) -> float:
    """hit for the map's peak (x, y) already found."""
    if not truth.any():
        return float("nan")
    x, y = peak
    return float(truth[y, x] == 1)


def peak_of(full: np.ndarray) -> tuple[int, int]:
    """(x, y) of the map's largest pixel, the pointing game's point."""
    y, x = np.unravel_index(int(np.argmax(full)), full.shape)
    return int(x), int(y)


@dataclass
class FilmScore:
    """One film and pathology: both IoUs and the hit (NaN: undefined), the pixel counts, the
    model's probability, and the true-positive IoU at each tuning candidate (--tune)."""

    iou: float
    iou_true_positive: float
    hit: float
    truth_pixels: int
    predicted_pixels: int
    probability: float | None = None
    tuning: dict[float, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"iou": finite_or_none(self.iou),
                "iou_true_positive": finite_or_none(self.iou_true_positive),
                "hit": finite_or_none(self.hit), "truth_pixels": self.truth_pixels,
                "predicted_pixels": self.predicted_pixels,
                "probability": finite_or_none(self.probability)}


class ScoredMap(NamedTuple):
    """A map's score, and what was computed on the way (the figure draws it)."""

    score: FilmScore
    scaled: np.ndarray  # the map at the film's size, 0..1
    predicted: np.ndarray  # its segmentation
    peak: tuple[int, int]  # (x, y) of its largest pixel, the pointing game's point


def score_map(full: np.ndarray, truth: np.ndarray, label: str, rule: SegmentationRule,
              probability: float | None = None, tune: bool = False) -> ScoredMap:
    """A map at the film's size against the truth's mask: its score and its segmentation."""
    scaled = unit_scaled(full)
    peak = peak_of(full)
    predicted = rule.segment(scaled, label, probability)
    tuning = {t: iou(threshold_segmentation(scaled, t), truth, True)
              for t in TUNING_CANDIDATES} if tune else {}
    score = FilmScore(iou(predicted, truth, False), iou(predicted, truth, True),
                      peak_hit(peak, truth), int(np.count_nonzero(truth)),
                      int(np.count_nonzero(predicted)), probability, tuning)
    return ScoredMap(score, scaled, predicted, peak)


def score_segmentation(predicted: np.ndarray, truth: np.ndarray) -> FilmScore:
    """A reader's segmentation (the human benchmark) against the truth: IoUs, no hit."""
    return FilmScore(iou(predicted, truth, False), iou(predicted, truth, True), float("nan"),
                     int(np.count_nonzero(truth)), int(np.count_nonzero(predicted)))


def point_hit(points: Sequence[tuple[float, float]], truth: np.ndarray,
              where: str = "a reader's point") -> float:
    """eval.py's get_hb_hitrates: a reader's points, a hit if any lies in the truth; NaN when the
    truth is empty, 0 when the reader marked no point. A point outside the film is an error
    naming `where` (numpy would wrap a negative one, or fail on one too large)."""
    height, width = truth.shape
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise PipelineError(f"{where}: the point ({x:g}, {y:g}) is not inside the {width} x "
                                f"{height} film (w x h): is it this film's?")
    if not truth.any():
        return float("nan")
    return float(any(truth[int(y), int(x)] for x, y in points))


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


# ---- one film: every pathology's map, the reference and the human benchmark -----------------

THUMBNAIL_SIDE = 320  # px: the longer side of a figure's panel


@dataclass
class Film:
    """One film's maps to score, and where its picture is for the figure."""

    film: str
    height: int
    width: int
    maps: dict[str, np.ndarray]  # label -> 2-D map over the film (any size: resized here)
    probabilities: dict[str, float | None]
    image_path: str | None = None  # the film's file: read only if the figure draws the film

    @cached_property
    def image(self) -> np.ndarray | None:
        """The 8-bit grayscale film (None without its file), read on first use."""
        return read_grayscale(self.image_path) if self.image_path else None


@dataclass
class Example:
    """One film and pathology drawn in the figure, at thumbnail size."""

    label: str
    film: str
    image: np.ndarray | None
    scaled: np.ndarray  # the map, 0..1
    truth: np.ndarray
    predicted: np.ndarray
    peak: tuple[float, float]  # (x, y) of the pointing game's point
    score: FilmScore


@dataclass
class FilmResult:
    scores: dict[str, FilmScore]  # label -> the map's score (labels with a known truth)
    human: dict[str, FilmScore]  # label -> the second reader's (with --human)
    examples: dict[str, Example]  # label -> the figure's panel (the labels asked for)


def score_film(film: Film, truths: Mapping[str, object], rule: SegmentationRule, tune: bool,
               humans: Mapping[str, object] | None = None,
               points: Mapping[str, Sequence] | None = None,
               example_labels: frozenset = frozenset(), points_file: str = "the points"
               ) -> FilmResult:
    """Every label's map of the film against its truth (a region, "absent", or None: unknown,
    not scored); with a human reader's regions and points (read from `points_file`, which
    errors name), theirs too."""
    result = FilmResult({}, {}, {})
    for label, saliency in film.maps.items():
        if truths.get(label) is None:
            continue
        truth = mask_of(truths[label], film)
        full = resize_map(saliency, film.height, film.width)
        scored = score_map(full, truth, label, rule, film.probabilities.get(label), tune)
        result.scores[label] = scored.score
        if humans is not None:
            result.human[label] = human_score(humans.get(label), points, label, truth, film,
                                              points_file)
        if label in example_labels and truth.any():
            result.examples[label] = thumbnail(film, label, scored, truth)
    return result


def mask_of(region, film: Film) -> np.ndarray:
    """A truth's mask at the film's size: "absent" is empty."""
    if isinstance(region, str):
        return np.zeros((film.height, film.width), np.uint8)
    return region.mask(film.height, film.width)


def human_score(region, points: Mapping[str, Sequence] | None, label: str, truth: np.ndarray,
                film: Film, points_file: str = "the points") -> FilmScore:
    """The second reader's IoUs (NaN without their segmentations) and hit (NaN without their
    points; a film or label they gave no point for is a miss, as get_hb_hitrates counts it)."""
    if region is None:
        score = FilmScore(float("nan"), float("nan"), float("nan"), int(truth.sum()), 0)
    else:
        score = score_segmentation(mask_of(region, film), truth)
    if points is not None:
        score.hit = point_hit(points.get(label, ()), truth,
                              f"{points_file}, film {film.film!r}, {label}")
    return score


def thumbnail(film: Film, label: str, scored: ScoredMap, truth: np.ndarray) -> Example:
    """A figure panel's arrays, the longer side THUMBNAIL_SIDE px at most."""
    scale = min(1.0, THUMBNAIL_SIDE / max(film.height, film.width))
    size = (max(1, round(film.width * scale)), max(1, round(film.height * scale)))

    def shrink(array: np.ndarray, nearest: bool = False) -> np.ndarray:
        method = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
        return cv2.resize(array, size, interpolation=method)

    image = shrink(film.image) if film.image is not None else None
    x, y = scored.peak
    return Example(label, film.film, image, shrink(scored.scaled), shrink(truth, True),
                   shrink(scored.predicted, True), (x * scale, y * scale), scored.score)


# ---- over films: point estimates and patient-bootstrap intervals ------------------------------

METRICS = ("miou", "miou_true_positive", "hit_rate")
FIELD_OF = {"miou": "iou", "miou_true_positive": "iou_true_positive", "hit_rate": "hit"}


def score_table(scores: Mapping[str, Mapping[str, FilmScore]], labels: Sequence[str],
                metric: str) -> pd.DataFrame:
    """films x labels of one per-film value (NaN: undefined or not scored), films sorted."""
    films = sorted(scores)
    name = FIELD_OF[metric]
    return pd.DataFrame([[getattr(scores[film][label], name) if label in scores[film]
                          else np.nan for label in labels] for film in films],
                        index=films, columns=list(labels), dtype=float)


def bootstrap_means(table: pd.DataFrame, patients: Mapping[str, str], resamples: int,
                    seed: int) -> np.ndarray:
    """resamples x labels: each resample's mean over its defined values, the films of a patient
    drawn as often as their patient (the same draws for every table of the same films)."""
    if resamples == 0 or table.empty:
        return np.empty((0, table.shape[1]))
    drawn = draw_resamples(np.array([patients[film] for film in table.index]), resamples, seed)
    weights = drawn.counts[:, drawn.patient_of_image]  # resamples x films
    values = table.to_numpy()
    defined = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(defined, values, 0.0)) / (weights @ defined)


def order_interval(replicates: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """cheXlocalize's compute_cis: the sorted defined replicates at int(a/2 x B) - 1 and
    int((1 - a/2) x B) - 1, a = 1 - level."""
    values = np.sort(replicates[np.isfinite(replicates)])
    if len(values) == 0:
        return None, None
    alpha = 1.0 - level
    low = max(int(alpha / 2 * len(values)) - 1, 0)
    high = max(int((1 - alpha / 2) * len(values)) - 1, 0)
    return float(values[low]), float(values[high])


@dataclass
class Estimate:
    """A mean over films, with its interval and how many films it is over."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    @property
    def ci(self) -> list[float | None]:
        return [self.low, self.high]

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": self.ci, "n": self.n}


def estimates(table: pd.DataFrame, replicates: np.ndarray, level: float) -> dict[str, Estimate]:
    """Per label: the mean over defined films and its bootstrap interval."""
    out = {}
    for index, label in enumerate(table.columns):
        column = table[label].to_numpy()
        defined = column[np.isfinite(column)]
        low, high = order_interval(replicates[:, index], level) if len(replicates) \
            else (None, None)
        out[label] = Estimate(float(defined.mean()) if len(defined) else None, low, high,
                              len(defined))
    return out


@dataclass
class Summary:
    """Every metric's estimates per label, with the bootstrap replicates behind them."""

    estimates: dict[str, dict[str, Estimate]]  # metric -> label -> estimate
    replicates: dict[str, np.ndarray]  # metric -> resamples x labels
    labels: tuple[str, ...]


def summarise(scores: Mapping[str, Mapping[str, FilmScore]], labels: Sequence[str],
              patients: Mapping[str, str], resamples: int, seed: int, level: float) -> Summary:
    """mIoU (all films, true positives only) and hit rate per label, with intervals; every
    metric on the same patient resamples (paired)."""
    found, replicates = {}, {}
    for metric in METRICS:
        table = score_table(scores, labels, metric)
        replicates[metric] = bootstrap_means(table, patients, resamples, seed)
        found[metric] = estimates(table, replicates[metric], level)
    return Summary(found, replicates, tuple(labels))


def percentage_decrease(model: Summary, human: Summary, metric: str, level: float) -> dict:
    """calculate_percentage_decrease.py: per label and on average over labels, 100 x (human -
    model) / human of the means of the paired resamples, and the interval of the resamples' own
    decreases. Without resamples: of the point estimates, no interval."""
    out = {}
    model_reps, human_reps = model.replicates[metric], human.replicates[metric]
    for index, label in enumerate(model.labels):
        if len(model_reps):
            model_mean = mean_or_none(model_reps[:, index])
            human_mean = mean_or_none(human_reps[:, index])
            with np.errstate(invalid="ignore", divide="ignore"):
                each = 100 * (human_reps[:, index] - model_reps[:, index]) / human_reps[:, index]
            interval = order_interval(each, level)
        else:
            model_mean = model.estimates[metric][label].value
            human_mean = human.estimates[metric][label].value
            interval = (None, None)
        out[label] = {"model": model_mean, "human": human_mean,
                      "value": decrease(human_mean, model_mean), "ci": list(interval)}
    out["Average"] = average_decrease(out, model_reps, human_reps, level)
    return out


def average_decrease(per_label: dict, model_reps: np.ndarray, human_reps: np.ndarray,
                     level: float) -> dict:
    """The decrease of the average over labels (calculate_percentage_decrease.py's last row)."""
    model_mean = mean_or_none(np.array([v["model"] for v in per_label.values()], dtype=float))
    human_mean = mean_or_none(np.array([v["human"] for v in per_label.values()], dtype=float))
    interval: tuple = (None, None)
    if len(model_reps):
        with np.errstate(invalid="ignore", divide="ignore"):
            model_avg = np.nanmean(np.where(np.isfinite(model_reps), model_reps, np.nan), axis=1)
            human_avg = np.nanmean(np.where(np.isfinite(human_reps), human_reps, np.nan), axis=1)
            interval = order_interval(100 * (human_avg - model_avg) / human_avg, level)
    return {"model": model_mean, "human": human_mean, "value": decrease(human_mean, model_mean),
            "ci": list(interval)}


def mean_or_none(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def decrease(human: float | None, model: float | None) -> float | None:
    if human is None or model is None or human == 0:
        return None
    return 100 * (human - model) / human


# ---- tuning the thresholds (tune_heatmap_threshold.py) ------------------------------------------

def tuned_thresholds(scores: Mapping[str, Mapping[str, FilmScore]], labels: Sequence[str]
                     ) -> dict[str, float]:
    """Per label, the candidate with the highest true-positive mIoU (the first of equals),
    rounded to one decimal as tuning_results.csv holds it; a label no film can tune is left
    out."""
    chosen = {}
    for label in labels:
        mious = []
        for candidate in TUNING_CANDIDATES:
            values = np.array([film[label].tuning[candidate] for film in scores.values()
                               if label in film and film[label].tuning], dtype=float)
            values = values[np.isfinite(values)]
            mious.append(values.mean() if len(values) else -np.inf)
        if max(mious) > -np.inf:
            chosen[label] = round(TUNING_CANDIDATES[mious.index(max(mious))], 1)
    return chosen


# ---- the CSVs of thresholds and cut-offs ---------------------------------------------------

def read_thresholds_csv(path: str, to_label) -> dict[str, float]:
    """A tuning_results.csv (threshold,task): label -> threshold in [0, 1]."""
    frame = read_table(path, ("threshold", "task"))
    out = {}
    for index, (threshold, task) in enumerate(zip(frame["threshold"], frame["task"])):
        where = f"{path} line {index + 2}"
        value = number_in_unit(threshold, where)
        out[to_label(task, where)] = value
    return out


def read_cutoffs_csv(path: str, to_label) -> dict[str, float]:
    """A probability_tuning_results.csv (prob_threshold,mIoU,task): label -> the cut-off of its
    highest mIoU (the first of equals), as heatmap_to_segmentation.py picks it."""
    frame = read_table(path, ("prob_threshold", "mIoU", "task"))
    best: dict[str, tuple[float, float]] = {}
    for index, row in enumerate(frame.itertuples(index=False)):
        where = f"{path} line {index + 2}"
        cutoff, miou = number_in_unit(row.prob_threshold, where), number_in_unit(row.mIoU, where)
        label = to_label(row.task, where)
        if label not in best or miou > best[label][1]:
            best[label] = (cutoff, miou)
    return {label: cutoff for label, (cutoff, _) in best.items()}


def read_table(path: str, columns: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: cannot read it as a CSV ({err})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path}: no {', '.join(missing)} column (expected "
                            f"{','.join(columns)})")
    return frame


def number_in_unit(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PipelineError(f"{where}: {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise PipelineError(f"{where}: {value} is not in [0, 1]")
    return value


def thresholds_frame(thresholds: Mapping[str, float]) -> pd.DataFrame:
    """tuning_results.csv's table: threshold,task."""
    return pd.DataFrame({"threshold": list(thresholds.values()), "task": list(thresholds)})
