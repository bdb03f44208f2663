"""Reference standards of localization: where on each film each finding is, read from its file.

Four formats, told apart by their content (read_ground_truth):
- cheXlocalize's gt_segmentations_*.json: {film id: {pathology: COCO RLE {"size": [h, w],
  "counts": "..."}}}, every film with every pathology, an empty mask where it is absent;
- cheXlocalize's gt_annotations_*.json: {film id: {"img_size": [h, w], pathology: [polygon, ...]}},
  a polygon a list of [x, y] points in the film's pixels, only the pathologies present listed;
  drawn as cheXlocalize's annotation_to_segmentation.py draws them (PIL, outline and fill 1);
- NIH's BBox_List_2017.csv: Image Index, Finding Label, Bbox [x,y,w,h] (an unquoted header, so
  four columns "Bbox [x", "y", "w", "h]"), boxes in NIH's 1024 x 1024 frame, scaled to the
  film's size;
- the demo's annotations.csv (make_demo_data.py): Path, label, x0, y0, x1, y1, a pixel box in the
  stored film (x1, y1 included).
cheXlocalize's human benchmark also comes as most-representative points, {film id: {pathology:
[[x, y], ...]}} (read_points), which only the pointing game uses.

A film's id is cheXlocalize's: patient64541_study1_view1_frontal for CheXpert's
patient64541/study1/view1_frontal.jpg, else the file's stem (NIH's 00013118_008). Pathology names
become the model's labels (cheXlocalize's "Airspace Opacity" is CheXpert's Lung Opacity, NIH's
Effusion is Pleural Effusion...); a name that is no label is an error naming file and key.

Every format but NIH's is exhaustive: a pathology the file gives no region for, on a film it lists,
is absent there (an empty mask). NIH's boxes mark some findings of some films: what it does not
box is unknown, left out of every figure (Region None).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from cxr.data.nih import MAPPING as NIH_MAPPING
from cxr.errors import PipelineError

# Names the reference standards use for the model's labels.
ALIASES: dict[str, str] = {
    "Airspace Opacity": "Lung Opacity",  # cheXlocalize's name of CheXpert's Lung Opacity
    "Infiltrate": "Lung Opacity",  # NIH's BBox list ("Infiltration" in its label table)
    **{nih: labels[0] for nih, labels in NIH_MAPPING.items() if len(labels) == 1},
}
NIH_FRAME = (1024, 1024)  # (h, w): the frame of NIH's boxes
NIH_COLUMNS = ("Image Index", "Finding Label", "Bbox [x")
DEMO_COLUMNS = ("Path", "label", "x0", "y0", "x1", "y1")
# cheXlocalize's ten pathologies (eval_constants.LOCALIZATION_TASKS), in its own names
CHEXLOCALIZE_TASKS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion",
                      "Airspace Opacity", "Edema", "Consolidation", "Atelectasis", "Pneumothorax",
                      "Pleural Effusion", "Support Devices")
CHEXPERT_FILM = re.compile(r"(patient\d+)/(study\d+)/([^/]+?)(\.[A-Za-z0-9]+)?$")
RLE_FIRST, RLE_LAST = 48, 111  # COCO's compressed counts are characters '0'...'o'


@dataclass(frozen=True)
class Region:
    """Where a finding is on one film: a COCO RLE, polygons or boxes, drawn at the film's size."""

    kind: str  # "rle" | "polygons" | "boxes"
    shapes: tuple  # the RLE dict (one item) | polygons [(x, y), ...] | boxes (x0, y0, x1, y1)
    size: tuple[int, int] | None  # (h, w) the shapes are in; None: the film's own size
    where: str  # file and key or row, for errors

    def mask(self, height: int, width: int) -> np.ndarray:
        """The region as an H x W uint8 0/1 mask of the film."""
        if self.size is not None and self.kind != "boxes" and self.size != (height, width):
            raise PipelineError(f"{self.where}: the mask is {self.size[0]} x {self.size[1]} "
                                f"(h x w) but the film is {height} x {width}: is it this film?")
        if self.kind == "rle":
            return coco_mask.decode(self.shapes[0]).astype(np.uint8)
        if self.kind == "polygons":
            return polygon_mask(self.shapes, height, width)
        return box_mask(self.shapes, self.size, height, width, self.where)


@dataclass
class GroundTruth:
    """A reference standard: each film's regions by label; None = unknown (not exhaustive)."""

    path: Path
    format: str
    films: dict[str, dict[str, Region]]  # film id -> label -> its region (only those given)
    labels: tuple[str, ...]  # the labels it localizes, in the model's order
    exhaustive: bool  # a label without a region on a listed film is absent (else unknown)
    complete_set: bool = False  # lists every film of its set: each must be among those scored

    @property
    def patients(self) -> dict[str, str]:
        """film id -> patient id."""
        return {film: patient_of(film) for film in self.films}

    def region(self, film: str, label: str) -> Region | None | str:
        """The film's region of a label, "absent", or None when unknown."""
        given = self.films.get(film, {}).get(label)
        if given is not None:
            return given
        return "absent" if self.exhaustive else None


FORMAT_NAMES = {
    "chexlocalize-segmentations": "cheXlocalize's segmentations (COCO RLE masks)",
    "chexlocalize-polygons": "cheXlocalize's annotations (polygons)",
    "nih-boxes": "NIH ChestX-ray14's bounding boxes",
    "demo-boxes": "the demo's finding boxes",
    "chexlocalize-points": "cheXlocalize's most-representative points",
}


# ---- film ids and labels ----------------------------------------------------------------------

def film_id(path: str | Path) -> str:
    """cheXlocalize's id of a film: patient64541_study1_view1_frontal for CheXpert's layout, else
    the file's stem."""
    text = Path(str(path)).as_posix()
    match = CHEXPERT_FILM.search(text)
    if match:
        return "_".join(match.group(1, 2, 3))
    return Path(text).stem


def patient_of(film: str) -> str:
    """The patient of a film id: CheXpert's patientNNNNN, NIH's 8-digit prefix, else the film."""
    match = re.match(r"^(patient\d+)_", film) or re.match(r"^(\d{8})_\d{3}$", film)
    return match.group(1) if match else film


def to_label(name: str, labels: Sequence[str], where: str) -> str:
    """A reference standard's pathology name as one of the model's labels."""
    name = str(name).strip()
    wanted = ALIASES.get(name, name)
    for label in labels:
        if label.lower() == wanted.lower():
            return label
    raise PipelineError(f"{where}: {name!r} is not a label of the model (its labels: "
                        f"{', '.join(labels)}; known other names: "
                        f"{', '.join(f'{a} = {b}' for a, b in ALIASES.items())})")


# ---- masks ------------------------------------------------------------------------------------

def polygon_mask(polygons: Sequence, height: int, width: int) -> np.ndarray:
    """Polygons filled as cheXlocalize's create_mask fills them: a 1-bit PIL image of the film,
    each polygon drawn with outline=1 and fill=1."""
    canvas = Image.new("1", (width, height))
    for polygon in polygons:
        ImageDraw.Draw(canvas).polygon([(point[0], point[1]) for point in polygon], outline=1,
                                       fill=1)
    return np.array(canvas, dtype=np.uint8)


def box_mask(boxes: Sequence, frame: tuple[int, int] | None, height: int, width: int,
             where: str) -> np.ndarray:
    """Boxes (x0, y0, x1, y1, inclusive pixels of `frame`, the film's own size if None) as a
    mask of the film; a box outside the frame is an error."""
    frame_h, frame_w = frame or (height, width)
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in boxes:
        if x0 < 0 or y0 < 0 or x1 >= frame_w or y1 >= frame_h or x1 < x0 or y1 < y0:
            raise PipelineError(f"{where}: the box x {x0:g}..{x1:g}, y {y0:g}..{y1:g} is not "
                                f"inside the {frame_w} x {frame_h} image (w x h): fix the box or "
                                "check that it belongs to this film")
        sx, sy = width / frame_w, height / frame_h
        mask[int(np.floor(y0 * sy)):int(np.ceil((y1 + 1) * sy)),
             int(np.floor(x0 * sx)):int(np.ceil((x1 + 1) * sx))] = 1
    return mask


def rle_counts(text: str, where: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString, which checks
    nothing: a malformed string decodes to garbage)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text) or not RLE_FIRST <= ord(text[position]) <= RLE_LAST:
                raise PipelineError(f"{where}: malformed RLE counts (character {position + 1}):"
                                    " not COCO's compressed RLE")
            code = ord(text[position]) - RLE_FIRST
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
    return counts


def checked_rle(item, where: str) -> dict:
    """A COCO RLE dict whose runs cover exactly its h x w pixels, ready for pycocotools."""
    if not isinstance(item, dict) or set(item) != {"size", "counts"}:
        raise PipelineError(f"{where}: expected a COCO RLE {{\"size\": [h, w], \"counts\": ...}},"
                            f" got {str(item)[:80]}")
    size = item["size"]
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and v > 0 for v in size)):
        raise PipelineError(f"{where}: RLE size must be [h, w], two positive integers, got "
                            f"{size!r}")
    counts = item["counts"]
    if isinstance(counts, str):
        runs = rle_counts(counts, where)
    elif isinstance(counts, list) and all(isinstance(v, int) for v in counts):
        runs = counts
    else:
        raise PipelineError(f"{where}: RLE counts must be a string or a list of integers")
    if any(run < 0 for run in runs) or sum(runs) != size[0] * size[1]:
        raise PipelineError(f"{where}: malformed RLE: its runs cover {sum(runs)} pixels, not "
                            f"{size[0]} x {size[1]} = {size[0] * size[1]}")
    if isinstance(counts, list):
        return coco_mask.frPyObjects(item, *size)
    return {"size": size, "counts": counts}


# ---- the formats --------------------------------------------------------------------------------

def read_ground_truth(path: str | Path, labels: Sequence[str],
                      parsed: tuple[str, object] | None = None) -> GroundTruth:
    """A reference standard from its file, its format told by its content; `parsed`: what
    parse_reference already made of the file (else it is read here)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"--ground_truth {path}: no such file")
    kind, data = parsed or parse_reference(path)
    if kind == "chexlocalize-points":
        raise PipelineError(f"{path}: {FORMAT_NAMES[kind]} serve the human benchmark's pointing "
                            "game (--human), not as the reference standard")
    if kind == "chexlocalize-segmentations":
        truth = read_segmentations(path, labels, data)
    elif kind == "chexlocalize-polygons":
        truth = read_polygons(path, labels, data)
    else:
        truth = (read_nih_boxes if kind == "nih-boxes" else read_demo_boxes)(path, labels)
    if not truth.films:
        raise PipelineError(f"{path}: holds no film")
    return truth


def parse_reference(path: Path) -> tuple[str, object]:
    """The file's format (one of FORMAT_NAMES, from its content) and, for a JSON file, its
    parsed content (None for a CSV, which its reader reads); anything else is an error."""
    if path.suffix.lower() == ".json":
        data = load_json(path)
        return json_format(data, path), data
    return csv_format(path), None


def detect_format(path: Path) -> str:
    """One of FORMAT_NAMES, from the file's content; anything else is an error."""
    return parse_reference(path)[0]


def csv_format(path: Path) -> str:
    if path.name.lower().endswith((".csv", ".csv.gz")):
        columns = csv_header(path)
        if all(name in columns for name in NIH_COLUMNS):
            return "nih-boxes"
        if all(name in columns for name in DEMO_COLUMNS):
            return "demo-boxes"
        raise PipelineError(f"{path}: unknown ground-truth CSV (columns {', '.join(columns)}): "
                            "expected NIH's Image Index, Finding Label, Bbox [x,y,w,h] or the "
                            f"demo's {', '.join(DEMO_COLUMNS)}")
    raise PipelineError(f"{path}: unknown ground-truth format: expected cheXlocalize's "
                        "gt_segmentations_*.json or gt_annotations_*.json, NIH's "
                        "BBox_List_2017.csv or the demo's annotations.csv")


def load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: not a JSON file ({err})") from None


def json_format(data, path: Path) -> str:
    """Segmentations, polygons or points, from the first film's first pathology."""
    if not isinstance(data, dict) or not data:
        raise PipelineError(f"{path}: expected a JSON object {{film id: {{pathology: ...}}}}")
    film, entry = next(iter(data.items()))
    if not isinstance(entry, dict):
        raise PipelineError(f"{path}, film {film!r}: expected {{pathology: ...}}, got "
                            f"{type(entry).__name__}")
    if "img_size" in entry:
        return "chexlocalize-polygons"
    value = next(iter(entry.values()), None)
    if isinstance(value, dict) and "counts" in value:
        return "chexlocalize-segmentations"
    if isinstance(value, list) and value and all(is_point(p) for p in value):
        return "chexlocalize-points"
    raise PipelineError(f"{path}, film {film!r}: unknown ground-truth JSON: expected COCO RLE "
                        "masks, polygons with img_size, or most-representative points")


def is_point(value) -> bool:
    return isinstance(value, list) and len(value) == 2 \
        and all(isinstance(v, (int, float)) for v in value)


def csv_header(path: Path) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: cannot read it as a CSV ({err})") from None


def read_segmentations(path: Path, labels: Sequence[str], data=None) -> GroundTruth:
    """`data`: the file's parsed JSON, if already loaded."""
    films: dict[str, dict[str, Region]] = {}
    for film, entry in dict_of(load_json(path) if data is None else data, path).items():
        regions = {}
        for name, item in dict_of(entry, f"{path}, film {film!r}").items():
            where = f"{path}, film {film!r}, {name!r}"
            label = to_label(name, labels, where)
            rle = checked_rle(item, where)
            regions[label] = Region("rle", (rle,), tuple(rle["size"]), where)
        films[film] = regions
    return GroundTruth(path, "chexlocalize-segmentations", films, labels_of(films, labels), True,
                       complete_set=True)


def read_polygons(path: Path, labels: Sequence[str], data=None) -> GroundTruth:
    """`data`: the file's parsed JSON, if already loaded."""
    films: dict[str, dict[str, Region]] = {}
    for film, entry in dict_of(load_json(path) if data is None else data, path).items():
        where = f"{path}, film {film!r}"
        entry = dict_of(entry, where)
        size = entry.get("img_size")
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and v > 0 for v in size)):
            raise PipelineError(f"{where}: img_size must be [h, w], two positive integers, got "
                                f"{size!r}")
        regions = {}
        for name, polygons in entry.items():
            if name == "img_size":
                continue
            key = f"{where}, {name!r}"
            regions[to_label(name, labels, key)] = Region(
                "polygons", checked_polygons(polygons, tuple(size), key), tuple(size), key)
        films[film] = regions
    # annotation_to_segmentation.py makes a mask of each of the ten for every film (empty where
    # the film has no polygon of it)
    tasks = {to_label(task, labels, f"{path}: cheXlocalize's {task}") for task in
             CHEXLOCALIZE_TASKS}
    return GroundTruth(path, "chexlocalize-polygons", films,
                       tuple(label for label in labels if label in tasks), True, complete_set=True)


def checked_polygons(polygons, size: tuple[int, int], where: str) -> tuple:
    """Polygons as tuples of (x, y) points, each point inside the h x w film."""
    if not isinstance(polygons, list) or not all(isinstance(p, list) for p in polygons):
        raise PipelineError(f"{where}: expected a list of polygons, each a list of [x, y]")
    height, width = size
    for number, polygon in enumerate(polygons, start=1):
        if not polygon or not all(is_point(point) for point in polygon):
            raise PipelineError(f"{where}, polygon {number}: expected [x, y] points")
        xs, ys = np.array(polygon, dtype=float).T
        if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
            raise PipelineError(f"{where}, polygon {number}: a point lies outside the "
                                f"{width} x {height} film (w x h)")
    return tuple(tuple((float(x), float(y)) for x, y in polygon) for polygon in polygons)


def read_nih_boxes(path: Path, labels: Sequence[str]) -> GroundTruth:
    """NIH's list: the box's x, y, w, h are the column "Bbox [x" and the three after it."""
    frame = pd.read_csv(path)
    start = list(frame.columns).index("Bbox [x")
    values = frame.iloc[:, start:start + 4].apply(pd.to_numeric, errors="coerce")
    boxes: dict[str, dict[str, list]] = {}
    for index, (name, finding, box) in enumerate(zip(frame["Image Index"],
                                                     frame["Finding Label"], values.to_numpy())):
        where = f"{path} line {index + 2}"
        if not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            raise PipelineError(f"{where}: the box {box.tolist()} is not four numbers x, y, w, h "
                                "with w, h above 0")
        x, y, w, h = box
        label = to_label(finding, labels, f"{where}, Finding Label")
        boxes.setdefault(film_id(str(name)), {}).setdefault(label, []).append(
            ((x, y, x + w - 1, y + h - 1), where))
    return GroundTruth(path, "nih-boxes", box_regions(boxes, NIH_FRAME), labels_of(boxes, labels),
                       False)


def read_demo_boxes(path: Path, labels: Sequence[str]) -> GroundTruth:
    frame = pd.read_csv(path, dtype={"Path": str, "label": str})
    corners = frame[list(DEMO_COLUMNS[2:])].apply(pd.to_numeric, errors="coerce").to_numpy()
    boxes: dict[str, dict[str, list]] = {}
    for index, (name, finding, box) in enumerate(zip(frame["Path"], frame["label"], corners)):
        where = f"{path} line {index + 2}"
        if not np.isfinite(box).all():
            raise PipelineError(f"{where}: x0, y0, x1, y1 must be numbers, got {box.tolist()}")
        label = to_label(finding, labels, f"{where}, label")
        boxes.setdefault(film_id(str(name)), {}).setdefault(label, []).append((tuple(box), where))
    return GroundTruth(path, "demo-boxes", box_regions(boxes, None), labels_of(boxes, labels),
                       True)


def box_regions(boxes: dict[str, dict[str, list]], frame: tuple[int, int] | None
                ) -> dict[str, dict[str, Region]]:
    """Each film's boxes of a label as one region (their union), named by its first row."""
    return {film: {label: Region("boxes", tuple(box for box, _ in items), frame, items[0][1])
                   for label, items in by_label.items()}
            for film, by_label in boxes.items()}


def read_points(path: str | Path, labels: Sequence[str], data=None
                ) -> dict[str, dict[str, tuple]]:
    """cheXlocalize's most-representative points: film id -> label -> ((x, y), ...); `data`: the
    file's parsed JSON, if already loaded. Whether a point lies on its film is checked when it is
    scored (localization.point_hit), where the film's size is known."""
    path = Path(path)
    data = load_json(path) if data is None else data
    if json_format(data, path) != "chexlocalize-points":
        raise PipelineError(f"{path}: not most-representative points")
    points = {}
    for film, entry in data.items():
        points[film] = {}
        for name, given in dict_of(entry, f"{path}, film {film!r}").items():
            where = f"{path}, film {film!r}, {name!r}"
            if not isinstance(given, list) or not all(is_point(p) for p in given):
                raise PipelineError(f"{where}: expected a list of [x, y] points")
            points[film][to_label(name, labels, where)] = tuple(tuple(p) for p in given)
    return points


def dict_of(value, where) -> dict:
    if not isinstance(value, dict):
        raise PipelineError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def labels_of(films: dict[str, dict], labels: Sequence[str]) -> tuple[str, ...]:
    """The labels any film has a region of, in the model's order."""
    given = {label for regions in films.values() for label in regions}
    return tuple(label for label in labels if label in given)


def describe(truth: GroundTruth) -> str:
    """One line naming the reference standard."""
    return f"{FORMAT_NAMES[truth.format]}, {truth.path.name}"
