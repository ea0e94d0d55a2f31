"""Object labels of detection (and, through the shared helper, segmentation) JSONL records.

A detection ``label`` is a list of objects ``{"label": "cat", "topX": 0.1, "topY": 0.2, "bottomX": 0.35,
"bottomY": 0.6, "isCrowd": 0}`` with coordinates as fractions of the image width and height. An empty
list is a background image and is kept. The rules follow the reference (spec section 3.3 and 3.4):

* Problems with the shape of the record (the label is not a list, an object is not a dict, a key is
  missing, a value has the wrong type) make the whole image unusable: ``BadLabel`` is raised and the
  reader skips the image with that sentence.
* Problems with the geometry of one object (a coordinate outside [0, 1], an inverted or zero-size box,
  a polygon with too few points) drop that object only, with one sentence each in ``ParsedLabel.dropped``.
  Boxes are never clipped into the image.
* An image whose objects were all dropped is skipped (``BadLabel`` naming every reason).

Deliberate difference from the reference: an ``isCrowd`` value that is none of the known spellings of
true or false (``"yes"``, ``2``) is an error for the image instead of silently meaning "not crowd".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from visionsweep.data.labels import BadLabel, ParsedLabel, register_label_parser
from visionsweep.data.records import LabeledData, ObjectAnnotation
from visionsweep.errors import DataError
from visionsweep.tasks import Task

BOX_KEYS = ("topX", "topY", "bottomX", "bottomY")
# A segment needs three points (six numbers) to enclose any area; the reference drops shorter ones.
MIN_POLYGON_VALUES = 6


def parse_detection_label(value: Any) -> ParsedLabel:
    """Parse the ``label`` value of an object-detection record (see the module docstring for the rules)."""
    return parse_object_label(value, require_polygon=False)


def parse_segmentation_label(value: Any) -> ParsedLabel:
    """Parse the ``label`` value of an instance-segmentation record: objects need a usable polygon.

    ``{"label": "cat", "isCrowd": 0, "polygon": [[x1, y1, x2, y2, x3, y3, ...], [...]]}`` with normalised
    coordinates. A segment with fewer than 3 points or a value outside [0, 1] is left out (reported); an
    object left without segments, or with only a box, is dropped; the box is derived from the kept
    segments. An odd number of values in a segment, or a polygon that is not a list of lists of numbers,
    makes the image unusable (spec 3.3).
    """
    return parse_object_label(value, require_polygon=True)


def parse_object_label(value: Any, *, require_polygon: bool) -> ParsedLabel:
    """Parse a list of objects; the shared core of the detection and segmentation parsers.

    With ``require_polygon`` (instance segmentation) an object without a usable polygon is dropped.
    When an object carries a polygon its box is derived from the polygon and box keys are ignored, for
    both tasks. Raises ``BadLabel`` when the image cannot be used.
    """
    if not isinstance(value, list):
        raise BadLabel(f"an object-detection label must be a list of objects (an empty list for an image "
                       f"without objects), got {_kind(value)}")
    objects: list[ObjectAnnotation] = []
    dropped: list[str] = []
    for index, item in enumerate(value, start=1):
        annotation, problems = parse_object(item, index, require_polygon=require_polygon)
        dropped.extend(problems)
        if annotation is not None:
            objects.append(annotation)
    if value and not objects:
        raise BadLabel(f"all {len(value)} object(s) are invalid, so the image has nothing to learn from: "
                       + "; ".join(dropped))
    return ParsedLabel(objects=tuple(objects), dropped=dropped)


def parse_object(item: Any, index: int, *, require_polygon: bool) -> tuple[ObjectAnnotation | None, list[str]]:
    """Parse one object into (annotation or None when it is dropped, one sentence per problem).

    The sentences say why the object was dropped, or which polygon segments were left out of a kept
    object. ``index`` (1-based) names the object in them. Raises ``BadLabel`` when the image cannot be used.
    """
    where = f"object {index}"
    if not isinstance(item, dict):
        raise BadLabel(f"{where} must be a JSON object with label and box keys, got {_kind(item)}")
    name = _class_name(item, where)
    is_crowd = parse_crowd_flag(item.get("isCrowd", 0), where)
    has_box = all(key in item for key in BOX_KEYS)
    if "polygon" not in item and not has_box:
        missing = [key for key in BOX_KEYS if key not in item]
        raise BadLabel(f"{where} ({name!r}) is incomplete: it has neither a polygon nor the box keys "
                       f"{', '.join(missing)}")
    if "polygon" in item:
        polygons, problems = _parse_polygon(item["polygon"], where)
        if not polygons:
            problems.append(f"{where} ({name!r}) has no usable polygon segment and was dropped")
            return None, problems
        box = polygon_box(polygons)
    elif require_polygon:
        return None, [f"{where} ({name!r}) has a box but no polygon, and instance segmentation needs one"]
    else:
        polygons, problems = (), []
        box = tuple(_coordinate(item[key], key, where) for key in BOX_KEYS)
    problem = box_problem(box)
    if problem is not None:
        return None, [*problems, f"{where} ({name!r}) was dropped: {problem}"]
    return ObjectAnnotation(label=name, box=box, is_crowd=is_crowd, polygons=polygons), problems


def box_problem(box: tuple[float, float, float, float]) -> str | None:
    """Why a normalised (x0, y0, x1, y1) box cannot be used, or None when it is valid.

    Valid means every value is in [0, 1] (no clipping) and x0 < x1, y0 < y1.
    """
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box):
        return f"box {_fmt(box)} is not inside the image (every coordinate must be in [0, 1])"
    if x0 == x1 or y0 == y1:
        return f"box {_fmt(box)} has zero width or height"
    if x0 > x1 or y0 > y1:
        return f"box {_fmt(box)} is inverted (topX must be below bottomX and topY below bottomY)"
    return None


def polygon_box(polygons: tuple[tuple[float, ...], ...]) -> tuple[float, float, float, float]:
    """The (x0, y0, x1, y1) box around every segment of a polygon (flat x, y, x, y ... tuples)."""
    xs = [v for segment in polygons for v in segment[0::2]]
    ys = [v for segment in polygons for v in segment[1::2]]
    return (min(xs), min(ys), max(xs), max(ys))


def parse_crowd_flag(value: Any, where: str = "object") -> bool:
    """The ``isCrowd`` flag: true for 1, 1.0, True, "1", "true" (any case); false for 0, 0.0, False,
    "0", "false" (any case) and null. Anything else raises ``BadLabel``."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        if value in (0, 1):
            return bool(value)
    elif isinstance(value, str) and value.strip().lower() in _CROWD_SPELLINGS:
        return _CROWD_SPELLINGS[value.strip().lower()]
    raise BadLabel(f"{where} has isCrowd {value!r}; use 1 or 0 (true or false)")


@dataclass(frozen=True)
class DetectionDataStats:
    """Counts over the records of one detection data source."""

    images: int
    background_images: int
    objects: int
    crowd_objects: int


def check_detection_data(data: LabeledData) -> DetectionDataStats:
    """Check that detection data can be trained on, and count what it holds.

    Raises ``DataError`` (with the data report) when no image is left after validation, or when every
    image is a background image so there is no object to learn. Background images are fine otherwise.
    """
    if not data.records:
        raise DataError(f"no usable image in {data.report.source}: every record was skipped or all of its "
                        f"objects are ill-formed.\n{data.report.summary(max_lines=20)}")
    objects = sum(len(r.objects) for r in data.records)
    if objects == 0:
        raise DataError(f"no objects in {data.report.source}: all {len(data.records)} image(s) are background "
                        f"images (empty label lists). This is a data problem: detection needs labelled objects; "
                        f"check the label column (target_column_name) and that the annotations were converted.\n"
                        f"{data.report.summary(max_lines=20)}")
    return DetectionDataStats(
        images=len(data.records),
        background_images=sum(1 for r in data.records if not r.objects),
        objects=objects,
        crowd_objects=sum(1 for r in data.records for o in r.objects if o.is_crowd),
    )


register_label_parser(Task.OBJECT_DETECTION, parse_detection_label)
register_label_parser(Task.INSTANCE_SEGMENTATION, parse_segmentation_label)


_CROWD_SPELLINGS = {"1": True, "true": True, "0": False, "false": False}


def _class_name(item: dict, where: str) -> str:
    if "label" not in item:
        raise BadLabel(f"{where} is incomplete: it has no 'label' key naming its class")
    value = item["label"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadLabel(f"{where} has class {_kind(value)}; a class must be a string or an integer")
    name = str(value).strip()
    if not name:
        raise BadLabel(f"{where} has an empty class name")
    return name


def _coordinate(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool):
        raise BadLabel(f"{where} has {key} {value!r}; coordinates must be numbers")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadLabel(f"{where} has {key} {value!r}, which is not a number") from None


def _parse_polygon(value: Any, where: str) -> tuple[tuple[tuple[float, ...], ...], list[str]]:
    """Kept segments and a sentence per dropped segment. Wrong types raise BadLabel (image skipped)."""
    if value is None:
        return (), []
    if not isinstance(value, list):
        raise BadLabel(f"{where} has a polygon of type {type(value).__name__}; it must be a list of segments, "
                       "each a flat list [x1, y1, x2, y2, ...]")
    segments: list[tuple[float, ...]] = []
    problems: list[str] = []
    for number, segment in enumerate(value, start=1):
        if not isinstance(segment, list):
            raise BadLabel(f"{where}: polygon segment {number} is {_kind(segment)}; each segment must be a flat "
                           "list [x1, y1, x2, y2, ...]")
        points = tuple(_coordinate(v, f"polygon segment {number}", where) for v in segment)
        if len(points) % 2:
            raise BadLabel(f"{where}: polygon segment {number} has {len(points)} values; it needs equal numbers "
                           "of Xs and Ys")
        if len(points) < MIN_POLYGON_VALUES:
            problems.append(f"{where}: polygon segment {number} has {len(points) // 2} point(s), fewer than 3, "
                            "and was left out")
        elif not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in points):
            problems.append(f"{where}: polygon segment {number} has a point outside [0, 1] and was left out")
        else:
            segments.append(points)
    return tuple(segments), problems


def _fmt(box: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
