"""Score where a model's saliency maps point against a reference standard of finding locations.

    python localize.py --checkpoint models/RUN/best.pth --images DIR_OR_CSV --ground_truth FILE \
        [--saliency gradcam|gradcampp|hirescam|eigencam] [--saliency_thresholds tuning.csv] \
        [--probability_cutoffs probability_tuning.csv] [--tune true] [--human FILE[,POINTS]] \
        [--output_dir DIR]
    python localize.py --maps DIR --ground_truth gt_segmentations_val.json [--images DIR_OR_CSV]

Reads  --ground_truth: cheXlocalize's gt_segmentations_*.json (COCO RLE masks) or
       gt_annotations_*.json (polygons), NIH's BBox_List_2017.csv, the demo's annotations.csv
       (cxr/evaluation/ground_truth.py; the format is told from the content);
       --checkpoint with --images (a folder of films, or a CSV with an image_path or CheXpert's
       Path column): each film's map of every pathology the reference standard localizes, by
       --saliency on the backbone's last feature map, read and cropped as prediction reads them
       (cxr/inference/saliency.py); or --maps: a folder of cheXlocalize's maps as
       <film id>_<pathology>_map.npz (cxr/evaluation/saliency_files.py), --images then only
       giving the figure its films;
       --human: a second reader's segmentations (any --ground_truth format) and/or
       cheXlocalize's most-representative points (JSON), for the human benchmark.
Films are matched by cheXlocalize's film id (patient64541_study1_view1_frontal, else the file's
stem). A film of a segmentation or polygon file missing from the images or maps is an error;
boxes are dataset-wide lists, so boxed films not among them are left out (counted). A film among
them that the reference standard does not list has none of its findings (NIH's boxes, which are
not exhaustive: left out).
Each map is resized to its film, segmented (Otsu's threshold, or --saliency_thresholds) and scored
as cheXlocalize scores it (cxr/evaluation/localization.py): per pathology, mIoU over all films
and over the true positives only, the hit rate of the pointing game, each with a
patient-bootstrap interval (--bootstrap_resamples, --seed, --ci_level).
Writes to --output_dir (default: <checkpoint folder>/localization_<saliency>/, with --maps
       localization/<maps folder name>/):
       localization.json  reference_standard, saliency, segmentation, bootstrap, films, patients,
                          left_out; summary {pathology: {miou, ci, n, miou_true_positive (_ci,
                          _n), hit_rate (_ci, _n), threshold, and with --human: human {metric:
                          value, ci, n}, percentage_decrease {metric: model, human, value, ci}}};
                          per_film {film id: {pathology: {iou, iou_true_positive, hit,
                          truth_pixels, predicted_pixels, probability}}}; tuned_thresholds
       localization.md    the table and how it was made; localization.png: each pathology's
                          first film with the finding, map, reference and segmentation outlined
       tuning_results.csv with --tune: the threshold (0.2 ... 0.7) of each pathology with the
                          highest true-positive mIoU on these films (tune_heatmap_threshold.py)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from config import Config
from cxr.atomic import write_csv_atomic
from cxr.cli import run_cli
from cxr.data.labels import LABELS
from cxr.errors import ConfigError, PipelineError
from cxr.evaluation.ground_truth import GroundTruth, describe, film_id, parse_reference, \
    patient_of, read_ground_truth, read_points, to_label
from cxr.evaluation.localization import Film, FilmResult, SegmentationRule, percentage_decrease, \
    read_cutoffs_csv, read_thresholds_csv, score_film, summarise, thresholds_frame, \
    tuned_thresholds
from cxr.evaluation.saliency_files import MapFile, film_size, image_paths, map_files, read_map
from cxr.reporting.localization_report import LocalizationReport, examples_figure, print_report, \
    write_documents
from model_architecture import model_from_checkpoint


def check_options(cfg: Config) -> None:
    if not cfg.ground_truth:
        raise ConfigError("localize.py needs --ground_truth FILE: the reference standard (e.g. "
                          "cheXlocalize's gt_segmentations_val.json)")
    if bool(cfg.checkpoint) == bool(cfg.maps):
        raise ConfigError("localize.py needs either --checkpoint (with --images) or --maps DIR "
                          "(saliency maps already made), not both")
    if cfg.checkpoint and not cfg.images:
        raise ConfigError("--checkpoint needs --images: a folder of films or a CSV of paths")
    if cfg.bootstrap_resamples < 0 or not 0 < cfg.ci_level < 1:
        raise ConfigError("--bootstrap_resamples must be 0 or more, --ci_level in (0, 1)")


def output_dir(cfg: Config) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    if cfg.maps:
        return Path("localization") / Path(cfg.maps).resolve().name
    return Path(cfg.checkpoint).parent / f"localization_{cfg.saliency}"


# ---- the films and their maps --------------------------------------------------------------------

def films_to_score(sources: list[str], truth: GroundTruth, what: str) -> tuple[set[str], dict]:
    """The film ids scored, and the counts of those left out (see the docstring above)."""
    repeated = sorted(film for film, count in Counter(sources).items() if count > 1)
    if repeated:
        raise PipelineError(f"the {what} hold film {repeated[0]!r} twice (ids as cheXlocalize "
                            "makes them: patientN_studyN_viewN_frontal, else the file's stem)")
    given = set(sources)
    missing = sorted(set(truth.films) - given)
    if missing and truth.complete_set:
        raise PipelineError(f"{truth.path}: film {missing[0]!r} ({len(missing)} in all) is not "
                            f"among the {what}: give every film of the reference standard")
    unlisted = [film for film in sources if film not in truth.films]
    scored = given if truth.exhaustive else given & set(truth.films)
    return scored, {"reference_films_not_among_them": len(missing),
                    "films_without_reference" if not truth.exhaustive
                    else "films_unlisted_counted_without_findings": len(unlisted)}


def checkpoint_films(cfg: Config, paths: list[str], films: list[str], labels: list[str],
                     predictor) -> Iterator[Film]:
    """The films at `paths` (their ids `films`) with their maps from the checkpoint."""
    from cxr.inference.saliency import FilmMaps, film_maps  # only this path needs the model
    for item in film_maps(predictor, paths, labels, cfg.saliency, cfg.batch_size,
                          cfg.num_workers):
        if not isinstance(item, FilmMaps):
            position, reason = item
            raise PipelineError(f"{paths[position]}: {reason}")
        path = paths[item.position]
        yield Film(films[item.position], *film_size(path), item.maps, item.probabilities, path)


def map_films(cfg: Config, files: list[MapFile], scored: set[str], labels: list[str],
              images: dict[str, str]) -> Iterator[Film]:
    """The --maps files of the scored films, a film at a time; every label must have its map."""
    by_film = defaultdict(list)
    for file in files:
        if file.film in scored:
            by_film[file.film].append(file)
    for film in tqdm(sorted(by_film), desc="maps", unit="film"):
        maps, probabilities, size = {}, {}, None
        for file in by_film[film]:
            label = to_label(file.pathology, LABELS, str(file.path))
            if label not in labels:
                continue
            saved = read_map(file)
            if size not in (None, (saved.height, saved.width)):
                raise PipelineError(f"{file.path}: cxr_dims {saved.width} x {saved.height} differ "
                                    f"from the film's other maps")
            size = (saved.height, saved.width)
            maps[label], probabilities[label] = saved.saliency, saved.probability
        absent = [label for label in labels if label not in maps]
        if absent:
            raise PipelineError(f"--maps {cfg.maps}: no map of {absent[0]} for film {film!r}")
        yield Film(film, *size, maps, probabilities, images.get(film))


# ---- the rules and the human benchmark -----------------------------------------------------------

def segmentation_rule(cfg: Config, labels: list[str]) -> SegmentationRule:
    def label_of(name: str, where: str) -> str:
        return to_label(name, labels, where)

    thresholds = read_thresholds_csv(cfg.saliency_thresholds, label_of) \
        if cfg.saliency_thresholds else {}
    cutoffs = read_cutoffs_csv(cfg.probability_cutoffs, label_of) \
        if cfg.probability_cutoffs else {}
    return SegmentationRule(thresholds, cutoffs)


def read_human(cfg: Config, labels: list[str]
               ) -> tuple[GroundTruth | None, dict | None, str]:
    """The second reader's segmentations and points (either may be None), and the points' file."""
    regions = points = None
    points_file = ""
    for name in cfg.human:
        if not Path(name).is_file():
            raise PipelineError(f"--human {name}: no such file")
        kind, data = parse_reference(Path(name))
        if kind == "chexlocalize-points":
            points, points_file = read_points(name, labels, data), name
        else:
            regions = read_ground_truth(name, labels, (kind, data))
    return regions, points, points_file


# ---- scoring -------------------------------------------------------------------------------------

def score_all(films: Iterator[Film], truth: GroundTruth, rule: SegmentationRule, cfg: Config,
              human: GroundTruth | None, points: dict | None, points_file: str,
              labels: list[str]) -> tuple:
    """Every film's scores, the human reader's, and the figure's examples."""
    scores, human_scores, examples = {}, {}, {}
    for film in films:
        truths = {label: truth.region(film.film, label) for label in labels}
        humans = None
        if human is not None or points is not None:
            humans = {label: human.region(film.film, label) for label in labels} if human \
                else {}
        result: FilmResult = score_film(
            film, truths, rule, cfg.tune, humans,
            points.get(film.film, {}) if points is not None else None,
            frozenset(label for label in labels if label not in examples), points_file)
        scores[film.film], human_scores[film.film] = result.scores, result.human
        examples.update(result.examples)  # only the labels without one were asked for
    return scores, human_scores, [examples[label] for label in labels if label in examples]


def context_of(cfg: Config, truth: GroundTruth, scores: dict, patients: dict, left_out: dict,
               rule: SegmentationRule, labels: list[str]) -> dict:
    """Everything localization.json says besides the numbers."""
    source = {"name": f"{cfg.saliency} of {cfg.checkpoint}", "method": cfg.saliency,
              "checkpoint": cfg.checkpoint} if cfg.checkpoint else \
        {"name": f"the maps in {cfg.maps}", "method": "maps", "maps": cfg.maps}
    thresholds = {label: rule.describe(label) for label in labels}
    described = "Otsu's threshold of each map" if not rule.thresholds else \
        f"per-pathology thresholds of {cfg.saliency_thresholds}"
    if rule.cutoffs:
        described += f", empty below the probability cut-offs of {cfg.probability_cutoffs}"
    n_patients = len({patients[film] for film in scores})
    return {
        "headline": f"{source['name']} on {len(scores)} films ({n_patients} patients) against "
                    f"{describe(truth)}",
        "reference_standard": {"path": str(truth.path), "format": truth.format,
                               "name": describe(truth), "exhaustive": truth.exhaustive},
        "saliency": source,
        "segmentation": {"description": described, "thresholds": thresholds,
                         "probability_cutoffs": dict(rule.cutoffs)},
        "bootstrap": {"unit": "patient", "resamples": cfg.bootstrap_resamples, "seed": cfg.seed,
                      "ci_level": cfg.ci_level,
                      "description": f"{cfg.ci_level:.0%} percentile intervals of "
                                     f"{cfg.bootstrap_resamples} patient-bootstrap resamples "
                                     f"(seed {cfg.seed})"},
        "films": len(scores), "patients": n_patients, "left_out": left_out,
        "created": datetime.now().isoformat(timespec="seconds")}


def main(cfg: Config) -> None:
    check_options(cfg)
    predictor = None
    if cfg.checkpoint:
        from cxr.inference.predictor import load_predictor
        predictor = load_predictor(cfg.checkpoint, cfg, rebuild=model_from_checkpoint)
    model_labels = list(predictor.labels) if predictor else list(LABELS)
    truth = read_ground_truth(cfg.ground_truth, model_labels)
    untrained = [label for label in truth.labels if predictor and label in predictor.untrained]
    if untrained:
        print(f"left out {', '.join(untrained)}: the checkpoint was not trained on them")
    labels = [label for label in truth.labels if label not in untrained]
    if not labels:
        raise PipelineError(f"{truth.path}: localizes none of the labels the model was trained on")
    rule = segmentation_rule(cfg, model_labels)
    human, points, points_file = read_human(cfg, model_labels)
    paths = image_paths(cfg.images) if cfg.images else []
    ids = [film_id(path) for path in paths]
    if predictor:
        scored, left_out = films_to_score(ids, truth, "images")
        chosen = [(path, film) for path, film in zip(paths, ids) if film in scored]
        films = checkpoint_films(cfg, [path for path, _ in chosen], [film for _, film in chosen],
                                 labels, predictor)
    else:
        files = map_files(cfg.maps)
        scored, left_out = films_to_score(sorted({f.film for f in files}), truth, "maps")
        films = map_films(cfg, files, scored, labels, dict(zip(ids, paths)))
    scores, human_scores, examples = score_all(films, truth, rule, cfg, human, points,
                                               points_file, labels)
    patients = {film: patient_of(film) for film in scores}
    summary = summarise(scores, labels, patients, cfg.bootstrap_resamples, cfg.seed,
                        cfg.ci_level)
    report = LocalizationReport(context_of(cfg, truth, scores, patients, left_out, rule, labels),
                                summary, scores)
    if human is not None or points is not None:
        report.human = summarise(human_scores, labels, patients, cfg.bootstrap_resamples,
                                 cfg.seed, cfg.ci_level)
        metrics = (("miou", "miou_true_positive") if human else ()) + \
            (("hit_rate",) if points is not None else ())
        report.decreases = {metric: percentage_decrease(summary, report.human, metric,
                                                        cfg.ci_level) for metric in metrics}
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = ["localization.json", "localization.md"]
    if cfg.tune:
        report.tuned = tuned_thresholds(scores, labels)
        write_csv_atomic(thresholds_frame(report.tuned), out_dir / "tuning_results.csv")
        written.append("tuning_results.csv")
    title = f"{report.context['saliency']['method']}: {len(scores)} films against " \
        f"{Path(cfg.ground_truth).name}"
    figure = "localization.png" if examples_figure(examples, out_dir / "localization.png",
                                                   title) else None
    written += [figure] if figure else []
    write_documents(report, out_dir, figure)
    print_report(report)
    print(f"\nlocalize: wrote {out_dir}/{', '.join(written)}")


if __name__ == "__main__":
    run_cli(main, script="localize.py", defaults=Config())
