"""localize.py and its library: saliency maps scored against where the findings are.

The parity tests read cheXlocalize's published sample (../shared/data/chexlocalize-sample, skipped
when absent) and recompute its figures independently, step by step as cheXlocalize's own code
does (its code cannot be installed here): pycocotools decodes, eval.py's calculate_iou,
get_hitrates' argmax of the map resized by torch's bilinear interpolation,
annotation_to_segmentation's PIL polygons. The rest runs on tiny synthetic files and a random-weight 64 px checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as coco_mask

import conftest
from config import Config
from conftest import shared, tiny_checkpoint
from cxr.data.labels import LABELS
from cxr.errors import PipelineError
from cxr.evaluation.ground_truth import detect_format, film_id, patient_of, read_ground_truth, \
    read_points
from cxr.evaluation.localization import Film, FilmScore, SegmentationRule, hit, iou, \
    otsu_segmentation, percentage_decrease, read_cutoffs_csv, read_thresholds_csv, resize_map, \
    score_film, summarise, tuned_thresholds, unit_scaled
from cxr.evaluation.saliency_files import map_files, read_map

# pycocotools 2.0's mask.encode warns under numpy 2 (its own code, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SAMPLE = "chexlocalize-sample"
TASKS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
         "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices")


def encode(mask: np.ndarray) -> dict:
    """utils.encode_segmentation: a COCO RLE with a str counts."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def run_localize(capsys, *args: str) -> tuple[int, str, str]:
    """localize.py's command line in this process: (exit code, stdout, stderr)."""
    return conftest.run_in_process(capsys, "localize.py", *args)


# ---- parity with cheXlocalize on its published sample -------------------------------------------

def test_otsu_segmentation_of_the_sample_maps_reproduces_the_published_masks():
    """Every map of gradcam_maps_val/, resized and segmented here, against the mask cheXlocalize's
    heatmap_to_segmentation.py published for it (gradcam_segmentations_val_sample.json): IoU
    >= 0.999 for each of the 20 (measured: 1.0 for 19, one pixel off in 1.7 million for
    patient64541's Pneumothorax)."""
    folder = shared(SAMPLE)
    published = json.loads((folder / "gradcam_segmentations_val_sample.json").read_text())
    overlaps = []
    for file in map_files(folder / "gradcam_maps_val"):
        saved = read_map(file)
        full = resize_map(saved.saliency, saved.height, saved.width)
        ours = otsu_segmentation(unit_scaled(full))
        theirs = coco_mask.decode(published[file.film][file.pathology])
        assert ours.shape == theirs.shape == (saved.height, saved.width)
        overlaps.append(overlap(ours, theirs))
    assert len(overlaps) == 20 and min(overlaps) >= 0.999
    assert sum(value == 1.0 for value in overlaps) >= 19


def test_polygon_annotations_give_the_published_segmentations():
    """gt_annotations_val.json drawn here (the ten tasks of both films, an empty mask where a
    film has no polygon) against gt_segmentations_val.json, which annotation_to_segmentation.py
    made from it: IoU >= 0.999 for every mask, the same pixel count of each positive one."""
    folder = shared(SAMPLE)
    polygons = read_ground_truth(folder / "gt_annotations_val.json", LABELS)
    masks = read_ground_truth(folder / "gt_segmentations_val.json", LABELS)
    assert polygons.format == "chexlocalize-polygons" and len(polygons.labels) == 10
    assert set(polygons.films) == set(masks.films)
    positive = 0
    for film in masks.films:
        height, width = masks.films[film]["Cardiomegaly"].size
        for label in masks.labels:
            region = polygons.region(film, label)
            drawn = np.zeros((height, width)) if region == "absent" else region.mask(height, width)
            given = masks.films[film][label].mask(height, width)
            assert overlap(drawn, given) >= 0.999, (film, label)
            positive += int(given.any())
    assert positive == 4  # 64541: Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity; 64542: SD


def reference_figures(folder: Path) -> dict:
    """cheXlocalize's eval.py on the sample, written out step by step from its code: IoUs of the
    published segmentations (both variants), hits from the maps, means over defined films."""
    gt = json.loads((folder / "gt_segmentations_val.json").read_text())
    pred = json.loads((folder / "gradcam_segmentations_val_sample.json").read_text())
    figures = {}
    for task in TASKS:
        all_films, true_positive, hits = [], [], []
        for cxr_id in sorted(gt):
            gt_mask = coco_mask.decode(gt[cxr_id][task])
            pred_mask = coco_mask.decode(pred[cxr_id][task])
            union = np.logical_or(pred_mask, gt_mask).sum()
            inter = np.logical_and(pred_mask, gt_mask).sum()
            all_films.append(np.nan if union == 0 else inter / union)
            both = pred_mask.sum() > 0 and gt_mask.sum() > 0
            true_positive.append(inter / union if both else np.nan)
            info = np.load(folder / "gradcam_maps_val" / f"{cxr_id}_{task}_map.npz")
            w, h = info["cxr_dims"]
            sal = F.interpolate(torch.from_numpy(info["map"]), size=(int(h), int(w)),
                                mode="bilinear", align_corners=False).squeeze().numpy()
            x, y = np.unravel_index(np.argmax(sal, axis=None), sal.shape)
            hits.append(1.0 if gt_mask[x][y] == 1 else np.nan if gt_mask.sum() == 0 else 0.0)
        figures[task] = [pd.Series(v).mean() for v in (all_films, true_positive, hits)]
    return figures


def test_miou_and_hit_rate_on_the_sample_equal_chexlocalize_eval(capsys, tmp_path):
    """localize.py --maps on the sample against reference_figures (eval.py's mIoU with
    true_pos_only False and True, get_hitrates' hit rate), to 1e-6 for every task; and values
    checked by hand: no film has Lung Lesion, so its all-films mIoU is 0 over 2 films (Otsu
    always segments something: two false positives) and it has no true positive and no hit
    rate; Cardiomegaly and Support Devices each have one film with the finding."""
    folder = shared(SAMPLE)
    code, out, err = run_localize(capsys, "--maps", str(folder / "gradcam_maps_val"),
                                  "--ground_truth", str(folder / "gt_segmentations_val.json"),
                                  "--output_dir", str(tmp_path), "--bootstrap_resamples", "50")
    assert code == 0, err
    summary = json.loads((tmp_path / "localization.json").read_text())["summary"]
    for task, (miou, miou_tp, hit_rate) in reference_figures(folder).items():
        label = "Lung Opacity" if task == "Airspace Opacity" else task
        ours = summary[label]
        for value, expected in ((ours["miou"], miou), (ours["miou_true_positive"], miou_tp),
                                (ours["hit_rate"], hit_rate)):
            assert (value is None and np.isnan(expected)) or value == pytest.approx(expected,
                                                                                    abs=1e-6)
    assert summary["Lung Lesion"]["miou"] == 0 and summary["Lung Lesion"]["n"] == 2
    assert summary["Lung Lesion"]["miou_true_positive"] is None
    assert summary["Lung Lesion"]["hit_rate"] is None
    assert summary["Cardiomegaly"]["hit_rate_n"] == summary["Support Devices"]["hit_rate_n"] == 1
    assert f"localize: wrote {tmp_path}/localization.json" in out


# ---- the metrics on hand-made masks -------------------------------------------------------------

def test_iou_and_hit_follow_chexlocalize_definitions():
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1
    predicted = np.zeros((4, 4), np.uint8)
    predicted[:2, :] = 1
    empty = np.zeros((4, 4), np.uint8)
    assert iou(predicted, truth, False) == iou(predicted, truth, True) == 0.5
    assert iou(predicted, empty, False) == 0.0  # a false positive counts 0 over all films
    assert np.isnan(iou(predicted, empty, True)) and np.isnan(iou(empty, empty, False))
    assert iou(empty, truth, False) == 0.0 and np.isnan(iou(empty, truth, True))
    peak = np.zeros((4, 4))
    peak[1, 0] = 2.0
    assert hit(peak, truth) == 1.0 and np.isnan(hit(peak, empty))
    peak[3, 3] = 5.0
    assert hit(peak, truth) == 0.0


def test_a_tuned_threshold_and_a_probability_cutoff_segment_as_chexlocalize(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 11, dtype=np.float32), (2, 1))
    rule = SegmentationRule({"Edema": 0.4}, {"Edema": 0.5})
    assert rule.segment(ramp, "Edema", 0.9).sum() == 2 * 6  # 0.5 ... 1.0 above 0.4
    assert rule.segment(ramp, "Edema", 0.2).sum() == 0  # below the cut-off
    (tmp_path / "t.csv").write_text("threshold,task\n0.4,Airspace Opacity\n")
    (tmp_path / "p.csv").write_text("prob_threshold,mIoU,task\n0.1,0.2,Edema\n0.3,0.25,Edema\n"
                                    "0.5,0.25,Edema\n")
    from cxr.evaluation.ground_truth import to_label
    assert read_thresholds_csv(str(tmp_path / "t.csv"),
                               lambda n, w: to_label(n, LABELS, w)) == {"Lung Opacity": 0.4}
    assert read_cutoffs_csv(str(tmp_path / "p.csv"),
                            lambda n, w: to_label(n, LABELS, w)) == {"Edema": 0.3}


def test_tuning_picks_the_threshold_of_the_best_true_positive_miou():
    """A map rising left to right, the finding in its right 30 %: map > 0.7 segments exactly
    that (tune_heatmap_threshold.py's candidates are 0.2 ... 0.7)."""
    width = 100
    saliency = np.tile(np.linspace(0, 1, width, dtype=np.float32), (20, 1))
    truth = np.zeros((20, width), np.uint8)
    truth[:, (saliency[0] > 0.7)] = 1
    from cxr.evaluation.ground_truth import Region
    region = Region("rle", (encode(truth),), (20, width), "t")
    film = Film("f", 20, width, {"Edema": saliency}, {"Edema": None})
    result = score_film(film, {"Edema": region}, SegmentationRule(), tune=True)
    assert tuned_thresholds({"f": result.scores}, ["Edema"]) == {"Edema": 0.7}


def score(value: float, hit_value: float = np.nan) -> FilmScore:
    return FilmScore(value, value, hit_value, 1, 1)


def test_the_patient_bootstrap_interval_covers_the_estimate_and_draws_patients_whole():
    rng = np.random.default_rng(0)
    scores = {f"patient{p}_study{s}_view1_frontal":
              {"Edema": score(rng.uniform(), 1.0 * (p % 2))} for p in range(30) for s in (1, 2)}
    patients = {film: patient_of(film) for film in scores}
    found = summarise(scores, ["Edema"], patients, 400, 7, 0.95)
    for metric in ("miou", "hit_rate"):
        estimate = found.estimates[metric]["Edema"]
        assert estimate.low < estimate.value < estimate.high and estimate.n == 60
    # the two films of a patient have the same hit: resampling patients keeps them together,
    # so every resample's hit rate is a ratio of patient counts (k / 30 patients x 2 films)
    rates = found.replicates["hit_rate"][:, 0]
    assert np.allclose(rates * 30, np.round(rates * 30))
    assert summarise(scores, ["Edema"], patients, 0, 7, 0.95).estimates["miou"]["Edema"].low \
        is None


def test_the_percentage_decrease_is_calculate_percentage_decrease():
    """(human - model) / human of the means of paired resamples; 50 % when the model has half the
    human's IoU on every film."""
    scores = {f"patient{p}_study1_view1_frontal": {"Edema": score(0.2 + p / 100)}
              for p in range(20)}
    human = {film: {"Edema": score(2 * s["Edema"].iou)} for film, s in scores.items()}
    patients = {film: patient_of(film) for film in scores}
    model_summary = summarise(scores, ["Edema"], patients, 200, 1, 0.95)
    human_summary = summarise(human, ["Edema"], patients, 200, 1, 0.95)
    found = percentage_decrease(model_summary, human_summary, "miou", 0.95)
    assert found["Edema"]["value"] == pytest.approx(50.0)
    assert found["Edema"]["ci"] == pytest.approx([50.0, 50.0])
    assert found["Average"]["value"] == pytest.approx(50.0)


# ---- the reference standards' formats ---------------------------------------------------------

def write_formats(tmp_path: Path) -> dict[str, Path]:
    """The same finding (Edema, x 2..5, y 1..3 of an 8 x 10 film) in every format."""
    truth = np.zeros((8, 10), np.uint8)
    truth[1:4, 2:6] = 1
    film = "patient00001_study1_view1_frontal"
    files = {"segmentations": tmp_path / "gt_segmentations.json",
             "polygons": tmp_path / "gt_annotations.json",
             "demo": tmp_path / "annotations.csv", "nih": tmp_path / "BBox_List_2017.csv",
             "points": tmp_path / "points.json"}
    files["segmentations"].write_text(json.dumps({film: {"Edema": encode(truth),
                                                         "Cardiomegaly": encode(truth * 0)}}))
    files["polygons"].write_text(json.dumps({film: {"img_size": [8, 10],
                                                    "Edema": [[[2, 1], [5, 1], [5, 3], [2, 3]]]}}))
    files["demo"].write_text("Path,label,x0,y0,x1,y1\nCheXpert-v1.0-small/train/patient00001/"
                             "study1/view1_frontal.jpg,Edema,2,1,5,3\n")
    files["nih"].write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                            "00000001_000.png,Effusion,256,128,512,384\n")
    files["points"].write_text(json.dumps({film: {"Edema": [[3, 2]]}}))
    return files


def test_every_ground_truth_format_is_read_into_the_same_masks(tmp_path):
    files = write_formats(tmp_path)
    expected = np.zeros((8, 10), np.uint8)
    expected[1:4, 2:6] = 1
    film = "patient00001_study1_view1_frontal"
    for kind in ("segmentations", "polygons", "demo"):
        truth = read_ground_truth(files[kind], LABELS)
        assert np.array_equal(truth.films[film]["Edema"].mask(8, 10), expected), kind
        assert truth.exhaustive and truth.patients[film] == "patient00001"
    nih = read_ground_truth(files["nih"], LABELS)
    assert nih.format == "nih-boxes" and not nih.exhaustive and nih.labels == ("Pleural Effusion",)
    assert nih.region("00000001_000", "Edema") is None  # not boxed: unknown, not absent
    scaled = nih.films["00000001_000"]["Pleural Effusion"].mask(256, 256)  # the 1024 frame / 4
    assert scaled[32:128, 64:192].all() and scaled.sum() == 96 * 128
    assert read_points(files["points"], LABELS)[film]["Edema"] == ((3, 2),)
    assert detect_format(files["points"]) == "chexlocalize-points"


@pytest.mark.parametrize("name, content, message", [
    ("notes.txt", "hello", "notes.txt: unknown ground-truth format"),
    ("gt.csv", "a,b\n1,2\n", "gt.csv: unknown ground-truth CSV"),
    ("gt.json", json.dumps({"f": {"Edema": 3}}), "gt.json, film 'f': unknown ground-truth JSON"),
    ("gt.json", json.dumps({"f": {"Edema": {"size": [8, 10], "counts": "zz"}}}),
     "gt.json, film 'f', 'Edema': malformed RLE"),
    ("gt.json", json.dumps({"f": {"Edema": {"size": [8, 10], "counts": "garbage"}}}),
     "gt.json, film 'f', 'Edema': malformed RLE counts"),
    ("gt.json", json.dumps({"f": {"Edema": {"size": [8], "counts": ""}}}),
     "gt.json, film 'f', 'Edema': RLE size must be"),
    ("gt.json", json.dumps({"f": {"Lung Cancer": {"size": [2, 2], "counts": "04"}}}),
     "gt.json, film 'f', 'Lung Cancer': 'Lung Cancer' is not a label of the model"),
    ("gt.json", json.dumps({"f": {"img_size": [8, 10], "Edema": [[[2, 1], [50, 1], [5, 3]]]}}),
     "gt.json, film 'f', 'Edema', polygon 1: a point lies outside"),
    ("annotations.csv", "Path,label,x0,y0,x1,y1\na/b.jpg,Edema,1,1,x,3\n",
     "annotations.csv line 2: x0, y0, x1, y1 must be numbers"),
    ("annotations.csv", "Path,label,x0,y0,x1,y1\na/b.jpg,Fever,1,1,2,3\n",
     "annotations.csv line 2, label: 'Fever' is not a label"),
    ("BBox_List_2017.csv", "Image Index,Finding Label,Bbox [x,y,w,h],,,\nx.png,Mass,1,2,0,4\n",
     "BBox_List_2017.csv line 2: the box"),
])
def test_a_bad_ground_truth_is_one_line_naming_the_file_and_key(tmp_path, name, content,
                                                                 message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PipelineError) as caught:
        read_ground_truth(path, LABELS)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_box_outside_its_film_and_a_mask_of_another_size_are_errors(tmp_path):
    files = write_formats(tmp_path)
    truth = read_ground_truth(files["demo"], LABELS)
    region = truth.films["patient00001_study1_view1_frontal"]["Edema"]
    with pytest.raises(PipelineError, match="annotations.csv line 2: the box x 2..5, y 1..3 is "
                                            "not inside the 4 x 3 image"):
        region.mask(3, 4)
    rle = read_ground_truth(files["segmentations"], LABELS)
    with pytest.raises(PipelineError, match="'Edema': the mask is 8 x 10 .* film is 9 x 10"):
        rle.films["patient00001_study1_view1_frontal"]["Edema"].mask(9, 10)


def test_film_ids_are_chexlocalize_s():
    assert film_id("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg") == \
        "patient64541_study1_view1_frontal"
    assert film_id("/data/images/00013118_008.png") == "00013118_008"
    assert patient_of("00013118_008") == "00013118"


# ---- saliency from a checkpoint, and localize.py end to end -------------------------------------

@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """A random-weight 64 px checkpoint, six 80 x 64 films of three patients, and the demo's
    annotations.csv boxing Cardiomegaly and Edema on some of them."""
    tmp = tmp_path_factory.mktemp("localize")
    checkpoint = tiny_checkpoint(tmp / "run" / "best.pth", image_size=64)
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(3):
        for study in (1, 2):
            path = tmp / "films" / f"patient{patient:05d}" / f"study{study}" / "view1_frontal.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (80, 64), dtype=np.uint8)).save(path)
            rows.append(f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/"
                        f"view1_frontal.jpg,Cardiomegaly,10,20,40,60")
            if study == 1:
                rows.append(rows[-1].replace("Cardiomegaly,10,20,40,60", "Edema,5,5,30,30"))
    boxes = tmp / "annotations.csv"
    boxes.write_text("Path,label,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    return checkpoint, tmp / "films", boxes


@pytest.fixture(scope="module")
def tiny_predictor(tiny_demo):
    from cxr.inference.predictor import load_predictor
    from model_architecture import model_from_checkpoint

    return load_predictor(tiny_demo[0], Config(device="cpu"), rebuild=model_from_checkpoint)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "hirescam", "eigencam"])
def test_every_saliency_method_gives_a_map_per_film_and_label(tiny_demo, tiny_predictor, method):
    from cxr.inference.saliency import FilmMaps, film_maps

    predictor = tiny_predictor
    paths = sorted(str(p) for p in tiny_demo[1].rglob("*.jpg"))[:2]
    found = list(film_maps(predictor, paths, ["Cardiomegaly", "Edema"], method))
    assert [item.position for item in found] == [0, 1]
    assert all(isinstance(item, FilmMaps) for item in found)
    for item in found:
        for cam in item.maps.values():
            assert cam.shape == (predictor.side, predictor.side)
            assert 0 <= cam.min() and cam.max() <= 1 and np.isfinite(cam).all()
        assert 0 <= item.probabilities["Edema"] <= 1
    if method == "eigencam":  # class-agnostic
        assert np.allclose(found[0].maps["Cardiomegaly"], found[0].maps["Edema"])


def test_localize_end_to_end_on_a_tiny_demo(tiny_demo, tmp_path, capsys):
    """Boxes, a checkpoint, --tune, a human reader (the boxes themselves: IoU 1, no decrease
    from a perfect reader is negative)."""
    checkpoint, films, boxes = tiny_demo
    code, out, err = run_localize(capsys, "--checkpoint", str(checkpoint), "--images",
                                  str(films), "--ground_truth", str(boxes), "--device", "cpu",
                                  "--bootstrap_resamples", "50", "--tune", "true", "--human",
                                  str(boxes), "--output_dir", str(tmp_path))
    assert code == 0, err
    report = json.loads((tmp_path / "localization.json").read_text())
    assert report["films"] == 6 and report["patients"] == 3
    assert set(report["summary"]) == {"Cardiomegaly", "Edema"}
    edema = report["summary"]["Edema"]
    assert edema["hit_rate_n"] == 3 and edema["n"] >= 3  # Edema on the three first studies
    assert edema["human"]["miou_true_positive"]["value"] == 1.0
    assert edema["percentage_decrease"]["miou_true_positive"]["value"] >= 0
    film = report["per_film"]["patient00000_study1_view1_frontal"]["Edema"]
    assert set(film) == {"iou", "iou_true_positive", "hit", "truth_pixels", "predicted_pixels",
                         "probability"} and film["truth_pixels"] == 26 * 26
    assert set(pd.read_csv(tmp_path / "tuning_results.csv")["task"]) == {"Cardiomegaly", "Edema"}
    assert (tmp_path / "localization.png").stat().st_size > 0
    assert "| Edema |" in (tmp_path / "localization.md").read_text()
    assert out.strip().endswith(f"localize: wrote {tmp_path}/localization.json, localization.md,"
                                " tuning_results.csv, localization.png")


def test_localize_refuses_what_it_cannot_score(tiny_demo, tmp_path, capsys):
    checkpoint, films, boxes = tiny_demo
    segmentations = tmp_path / "gt_segmentations.json"
    segmentations.write_text(json.dumps({"patient09999_study1_view1_frontal": {
        "Edema": encode(np.zeros((80, 64)))}}))
    common = ["--device", "cpu", "--output_dir", str(tmp_path)]
    for args, message in [
        (["--images", str(films), "--ground_truth", str(segmentations), "--checkpoint",
          str(checkpoint)],
         f"{segmentations}: film 'patient09999_study1_view1_frontal' (1 in all) is not among "
         "the images"),
        (["--ground_truth", str(boxes)], "either --checkpoint (with --images) or --maps"),
        (["--checkpoint", str(checkpoint), "--ground_truth", str(boxes)], "--checkpoint needs "
                                                                            "--images"),
        (["--maps", str(tmp_path / "none"), "--ground_truth", str(boxes)],
         "no such folder"),
    ]:
        code, _, err = run_localize(capsys, *args, *common)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_map_file_without_its_keys_is_an_error(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    np.savez(folder / "patient1_study1_view1_frontal_Edema_map.npz", map=np.zeros((1, 1, 4, 4)))
    (file,) = map_files(folder)
    assert (file.film, file.pathology) == ("patient1_study1_view1_frontal", "Edema")
    with pytest.raises(PipelineError, match="Edema_map.npz: no cxr_dims"):
        read_map(file)


def test_nih_boxes_of_the_real_list_fall_on_its_320_px_films():
    """NIH's real BBox_List_2017.csv (984 boxes, 880 films, 1024 px frame) and the 7 of its films
    among the 404 in ../shared/data/nih-native: each box scaled to the 320 px film is a
    non-empty mask of about (320/1024)^2 of its 1024 px area."""
    import localize

    folder = shared("nih-native")
    truth = read_ground_truth(folder / "BBox_List_2017.csv.gz", LABELS)
    assert len(truth.films) == 880 and truth.format == "nih-boxes"
    assert set(truth.labels) == {"Atelectasis", "Cardiomegaly", "Pleural Effusion",
                                 "Lung Opacity", "Lung Lesion", "Pneumonia", "Pneumothorax"}
    images = sorted((folder / "images").glob("*.png"))
    scored, left_out = localize.films_to_score([film_id(p) for p in images], truth, "images")
    assert len(scored) == 7 and left_out["films_without_reference"] == 404 - 7
    for film in scored:
        size = Image.open(folder / "images" / f"{film}.png").size[::-1]
        for region in truth.films[film].values():
            area = sum((x1 - x0 + 1) * (y1 - y0 + 1) for x0, y0, x1, y1 in region.shapes)
            assert region.mask(*size).sum() == pytest.approx(area * (320 / 1024) ** 2, rel=0.2)


# ---- points, sizes, the figure's films and the report's header ------------------------------

def test_a_human_point_outside_its_film_is_one_line_naming_the_file_and_film():
    """cheXlocalize indexes truth[y, x]: a negative point would wrap, one too large fail."""
    truth = np.zeros((8, 10), np.uint8)
    truth[1:4, 2:6] = 1
    from cxr.evaluation.ground_truth import Region
    region = Region("rle", (encode(truth),), (8, 10), "t")
    film = Film("patient00001_study1_view1_frontal", 8, 10, {"Edema": np.ones((4, 4))},
                {"Edema": None})
    inside = score_film(film, {"Edema": region}, SegmentationRule(), False, {},
                        {"Edema": ((3, 2),)}, points_file="points.json")
    assert inside.human["Edema"].hit == 1.0
    for point in ((10, 2), (3, -1)):
        with pytest.raises(PipelineError) as caught:
            score_film(film, {"Edema": region}, SegmentationRule(), False, {},
                       {"Edema": (point,)}, points_file="points.json")
        message = str(caught.value)
        assert message.startswith("points.json, film 'patient00001_study1_view1_frontal', Edema:")
        assert "not inside the 10 x 8 film" in message and "\n" not in message


def test_each_format_says_whether_it_lists_its_whole_set_and_json_is_parsed_once(
        tmp_path, monkeypatch):
    from cxr.evaluation import ground_truth

    files = write_formats(tmp_path)
    complete = {kind: read_ground_truth(files[kind], LABELS).complete_set
                for kind in ("segmentations", "polygons", "demo", "nih")}
    assert complete == {"segmentations": True, "polygons": True, "demo": False, "nih": False}
    loads = []
    original = ground_truth.load_json
    monkeypatch.setattr(ground_truth, "load_json", lambda path: loads.append(path) or
                        original(path))
    for kind in ("segmentations", "polygons"):
        read_ground_truth(files[kind], LABELS)
    kind, data = ground_truth.parse_reference(files["points"])
    assert read_points(files["points"], LABELS, data) == read_points(files["points"], LABELS)
    assert loads == [files["segmentations"], files["polygons"], files["points"],
                     files["points"]]


def test_a_film_s_size_from_its_header_is_the_size_it_decodes_to(tmp_path):
    """A JPEG whose EXIF orientation turns it a quarter decodes turned (OpenCV applies it):
    film_size decodes such a file rather than trust the header."""
    from cxr.data.imaging import read_grayscale
    from cxr.evaluation.saliency_files import film_size

    pixels = np.random.default_rng(0).integers(0, 255, (100, 60), dtype=np.uint8)
    turned = Image.Exif()
    turned[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "upright.png")
    Image.fromarray(pixels).save(tmp_path / "upright.jpg")
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=turned)
    for name in ("upright.png", "upright.jpg", "turned.jpg"):
        assert film_size(tmp_path / name) == read_grayscale(tmp_path / name).shape, name
    assert film_size(tmp_path / "upright.png") == (100, 60)


def test_the_figure_s_film_is_read_only_for_a_panel(tmp_path):
    saliency = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (8, 1))
    truth = np.zeros((8, 10), np.uint8)
    truth[:, 6:] = 1
    from cxr.evaluation.ground_truth import Region
    region = {"Edema": Region("rle", (encode(truth),), (8, 10), "t")}
    film = Film("f", 8, 10, {"Edema": saliency}, {"Edema": float("nan")},
                str(tmp_path / "missing.png"))
    result = score_film(film, region, SegmentationRule(), False)  # no panel: never read
    assert result.scores["Edema"].as_dict()["probability"] is None  # NaN is no number in JSON
    with pytest.raises(PipelineError, match="missing.png"):
        score_film(film, region, SegmentationRule(), False, example_labels=frozenset({"Edema"}))
    Image.fromarray(np.full((80, 100), 200, np.uint8)).save(tmp_path / "film.png")
    film = Film("f", 8, 10, {"Edema": saliency}, {"Edema": None}, str(tmp_path / "film.png"))
    example = score_film(film, region, SegmentationRule(), False,
                         example_labels=frozenset({"Edema"})).examples["Edema"]
    assert example.image.shape == (8, 10) and (example.image == 200).all()  # the file, shrunk
    assert example.peak == (9, 0)
    assert np.array_equal(example.scaled, unit_scaled(resize_map(saliency, 8, 10)))


def test_the_table_s_interval_column_names_the_level_asked_for():
    from cxr.reporting.localization_report import LocalizationReport, table_rows

    scores = {f"patient{p}_study1_view1_frontal": {"Edema": score(p / 10, 1.0)}
              for p in range(5)}
    patients = {film: patient_of(film) for film in scores}
    for level, name in ((0.95, "95% CI"), (0.9, "90% CI"), (0.975, "97.5% CI")):
        summary = summarise(scores, ["Edema"], patients, 20, 1, level)
        report = LocalizationReport({"bootstrap": {"ci_level": level}}, summary, scores)
        header, rows = table_rows(report)
        assert header[:4] == ["Pathology", "mIoU", name, "n"] and rows[0][0] == "Edema"
