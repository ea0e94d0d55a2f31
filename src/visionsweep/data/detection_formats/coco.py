"""COCO JSON annotations: one file with images, annotations and categories."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from visionsweep.data import report as reasons
from visionsweep.data.detection_formats.common import (
    OBJECT_DROPPED, PendingImage, declared_size, finish_records, keep_objects, pixel_box,
)
from visionsweep.data.detection_labels import polygon_box
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS
from visionsweep.data.importers import ImportResult, register_importer
from visionsweep.data.records import ObjectAnnotation
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.json_files import DuplicateJsonKeyError, parse_json
from visionsweep.tasks import Task


@register_importer("coco")
def import_coco(
    source: Path,
    *,
    images: str | Path | None = None,
    task: Task | str = Task.OBJECT_DETECTION,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImportResult:
    """COCO JSON (``images``, ``annotations``, ``categories``): boxes as pixel [x, y, width, height].

    Image ``file_name`` values resolve against ``images``, else the JSON file's folder. The class name of
    an object is its category's ``name``. ``iscrowd`` is kept. With ``task`` instance segmentation the
    ``segmentation`` becomes normalised polygons: polygon lists as they are, RLE masks (compressed or
    not, typically the crowd objects) traced into polygons with holes as extra segments (exact up to the
    pixel grid; see ``geometry.masks.mask_to_polygons``). An object without a usable ``bbox`` gets the
    box around its polygon. Images without annotations are background images.
    """
    source = Path(source)
    task = Task(task)
    try:
        document = parse_json(source.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"COCO file {source} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{source} is not valid JSON: {error}") from None
    except DuplicateJsonKeyError as error:
        # One JSON document: where the repeated key lies is not known, so no part of it can be set aside
        # as a bad record, and keeping either value (a second 'annotations' list, a second 'bbox')
        # could silently lose data.
        raise DataError(f"{source} is not a COCO file that can be read unambiguously: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DataError(f"{source} is not a COCO file: it needs 'images', 'annotations' and 'categories' lists")
    root = Path(images) if images is not None else source.parent
    categories = _coco_categories(document.get("categories") or [], source)
    report = DataReport(source=str(source))
    by_id: dict[Any, PendingImage] = {}
    pending: list[PendingImage] = []
    for number, entry in enumerate(document["images"]):
        report.records_read += 1
        location = f"{source.name}: images[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or "id" not in entry:
            report.skip(location, reasons.MALFORMED_LINE, "an image entry needs 'id' and 'file_name'")
            continue
        if entry["id"] in by_id:
            report.skip(location, reasons.DUPLICATE, f"image id {entry['id']!r} is used twice", entry["file_name"])
            continue
        declared = declared_size(entry.get("width"), entry.get("height"))
        item = PendingImage(root / entry["file_name"], entry["file_name"], location, lines=[], declared=declared)
        by_id[entry["id"]] = item
        pending.append(item)
    for number, annotation in enumerate(document.get("annotations") or []):
        location = f"{source.name}: annotations[{number}]"
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id not in by_id:
            report.drop_annotation(location, OBJECT_DROPPED, f"image_id {image_id!r} is not in 'images'")
            continue
        by_id[image_id].lines.append(annotation)
    records = finish_records(pending, report, partial(_coco_objects, categories=categories, task=task),
                      max_image_pixels)
    return ImportResult(records, task, report)


def _coco_categories(categories: list, source: Path) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for entry in categories:
        if not isinstance(entry, dict) or "id" not in entry or not str(entry.get("name", "")).strip():
            raise DataError(f"{source}: each category needs an 'id' and a 'name', got {entry!r}")
        names[entry["id"]] = str(entry["name"]).strip()
    duplicated = sorted({n for n in names.values() if list(names.values()).count(n) > 1})
    if duplicated:
        raise DataError(f"{source}: category names {duplicated} are used by more than one category id; "
                        "merge or rename them so each class has one name")
    return names


def _coco_objects(item: PendingImage, size: tuple[int, int], report: DataReport, *, categories: dict[Any, str],
                  task: Task) -> list[ObjectAnnotation] | None:
    width, height = size
    objects = []
    for annotation in item.lines:
        where = f"annotation id {annotation.get('id', '?')}"

        def drop(detail: str) -> None:
            report.drop_annotation(item.location, OBJECT_DROPPED, f"{where}: {detail}", item.image_url)

        name = categories.get(annotation.get("category_id"))
        if name is None:
            drop(f"category_id {annotation.get('category_id')!r} is not in 'categories'")
            continue
        bbox = annotation.get("bbox")
        has_bbox = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
        polygons, problem = _coco_segmentation(annotation.get("segmentation"), width, height,
                                               trace_rle=task is Task.INSTANCE_SEGMENTATION or not has_bbox)
        if task is Task.INSTANCE_SEGMENTATION and not polygons:
            drop(f"{name!r}: {problem}; instance segmentation needs polygons")
            continue
        if has_bbox:
            x, y, w, h = (float(v) for v in bbox)
            pixels = (x, y, x + w, y + h)
        elif polygons:
            x0, y0, x1, y1 = polygon_box(polygons)
            pixels = (x0 * width, y0 * height, x1 * width, y1 * height)
        else:
            drop(f"{name!r}: no 'bbox' [x, y, width, height] and no polygon to derive one from")
            continue
        box, problem = pixel_box(pixels, width, height)
        if box is None:
            drop(f"{name!r}: {problem}")
            continue
        crowd = annotation.get("iscrowd", 0) in (1, True)
        keep = polygons if task is Task.INSTANCE_SEGMENTATION else ()
        objects.append(ObjectAnnotation(label=name, box=box, is_crowd=crowd, polygons=keep))
    return keep_objects(item, objects, len(item.lines), report)


def _coco_segmentation(value: Any, width: int, height: int, *,
                       trace_rle: bool = True) -> tuple[tuple[tuple[float, ...], ...], str]:
    """Normalised polygon segments of a COCO ``segmentation`` (empty with a reason when none is usable).

    Polygon lists: points less than a pixel outside the image are clipped (rounding); a segment with
    points further out, or with fewer than 3 points, is left out. RLE masks (dicts with ``size`` [height,
    width] and ``counts``) are decoded and traced when ``trace_rle`` (object detection needs only the
    ``bbox``); their size must be the image's.
    """
    if isinstance(value, dict):
        return _rle_segments(value, width, height) if trace_rle else ((), "an RLE mask (not read for boxes)")
    if not isinstance(value, list) or not value:
        return (), "no polygon segmentation"
    segments = []
    for segment in value:
        if not isinstance(segment, list) or len(segment) < 6 or len(segment) % 2:
            continue
        try:
            points = np.asarray(segment, dtype=float).reshape(-1, 2) / (width, height)
        except (TypeError, ValueError):
            continue
        if not np.all(np.isfinite(points)) or np.any(points < (-1 / width, -1 / height)) or \
                np.any(points > (1 + 1 / width, 1 + 1 / height)):
            continue
        segments.append(tuple(float(v) for v in np.clip(points, 0.0, 1.0).ravel()))
    return tuple(segments), "" if segments else "no polygon segment with at least 3 points inside the image"


def _rle_segments(value: dict, width: int, height: int) -> tuple[tuple[tuple[float, ...], ...], str]:
    """Normalised segments traced from a COCO RLE mask, or () and why not."""
    from visionsweep.geometry.masks import mask_to_polygons, normalise_segment  # scikit-image on first RLE

    size, counts = value.get("size"), value.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, bytes, list))):
        return (), "an RLE segmentation needs 'size' [height, width] and 'counts'"
    if [int(v) for v in size] != [height, width]:
        return (), f"the RLE mask is {size[1]}x{size[0]} but the image is {width}x{height}"
    try:
        rle = mask_utils.frPyObjects(value, height, width) if isinstance(counts, list) else value
        mask = mask_utils.decode(rle)
    except (TypeError, ValueError) as error:
        return (), f"the RLE mask cannot be decoded ({error})"
    # No point cap: an import keeps the outline as exact as the pixel grid allows.
    segments = tuple(tuple(normalise_segment(s, width, height)) for s in mask_to_polygons(mask, max_points=None))
    return segments, "" if segments else "the RLE mask is empty"

