"""Importers of object-detection annotations (Pascal VOC XML, YOLO txt, COCO JSON) and a COCO exporter.

Every importer returns records whose boxes are normalised (x0, y0, x1, y1) fractions of the image, the
form the Azure JSONL schema uses, and a report that lists every image skipped and every object
dropped, with its reason. The rules for objects match those of the JSONL reader
(``detection_labels``): zero-size and inverted boxes are dropped; an image whose objects are all
dropped is skipped; an image without objects is kept as a background image. One difference: a box
that sticks out of the image by less than one pixel is clipped to the border, because annotation
tools and exporters round coordinates; a box further out is dropped.

Pixel coordinates (VOC, COCO) are divided by the image size that the annotation file declares: it is
the frame the boxes were drawn in, and normalised coordinates stay right when images were resized
later. An image whose real shape does not match that frame (a different aspect ratio, e.g. an EXIF
rotation the annotator did not see) is skipped, because its boxes would land in the wrong place.

Every image's header is read (``probe_listed_images``); one of more than ``max_image_pixels`` pixels
(the default of the setting of that name) is skipped as ``image too large``.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from visionsweep.data import report as reasons
from visionsweep.data.detection_labels import box_problem, polygon_box
from visionsweep.data.image_checks import probe_listed_images
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageProblem, is_image_file, probe_image
from visionsweep.data.importers import ImportResult, register_importer
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.json_files import DuplicateJsonKeyError, parse_json
from visionsweep.tasks import Task
from visionsweep.yaml_files import YamlError, read_yaml_file

# Reasons of skipped images specific to these formats (the data report counts records per reason).
BAD_ANNOTATION_FILE = "unreadable annotation file"
SIZE_MISMATCH = "image size mismatch"
NO_VALID_OBJECT = "no valid object"
NO_ANNOTATION = "image without annotation file"
OBJECT_DROPPED = "annotation dropped"

# Images whose aspect ratio differs from the declared one by more than this are skipped.
_ASPECT_TOLERANCE = 0.01


@register_importer("voc")
def import_voc(
    source: Path,
    *,
    images: str | Path | None = None,
    image_set: str | None = None,
    difficult_as_crowd: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImportResult:
    """Pascal VOC: one XML file per image with ``<size>`` and ``<object><name><bndbox>`` elements.

    ``source`` is a VOC root (``Annotations/*.xml``, ``JPEGImages/``, optional ``ImageSets/Main/``) or a
    folder of XML files. Images are looked up by the XML ``<filename>`` in ``images``, else in
    ``source/JPEGImages``, else beside the XML files (the ``<path>`` element is ignored: it names the
    annotator's machine). ``image_set`` (e.g. ``"train"``) imports only the ids listed in
    ``ImageSets/Main/<image_set>.txt``. Coordinates are taken as pixel positions as written (no 1-based
    shift), which is what VOC-to-JSONL conversions for Azure do. ``difficult`` objects are kept as normal
    objects, or as crowd objects (ignored by evaluation, as in the VOC protocol) with ``difficult_as_crowd``.
    """
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source} is not a folder; expected a Pascal VOC folder with Annotations/*.xml")
    xml_folder = source / "Annotations" if (source / "Annotations").is_dir() else source
    image_folder = Path(images) if images is not None else (
        source / "JPEGImages" if (source / "JPEGImages").is_dir() else xml_folder)
    xml_files = sorted(xml_folder.glob("*.xml"))
    if image_set is not None:
        listing = source / "ImageSets" / "Main" / f"{image_set}.txt"
        if not listing.is_file():
            raise DataError(f"image set {image_set!r} needs {listing}, which does not exist")
        wanted = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        by_stem = {p.stem: p for p in xml_files}
        xml_files = [by_stem[stem] for stem in wanted if stem in by_stem]
        missing = [stem for stem in wanted if stem not in by_stem]
    else:
        missing = []
    if not xml_files:
        raise DataError(f"no Pascal VOC XML files in {xml_folder}")
    report = DataReport(source=str(source))
    for stem in missing:
        report.records_read += 1
        report.skip(f"ImageSets/Main/{image_set}.txt", reasons.MISSING_FILE,
                    f"{stem} is listed but {xml_folder / (stem + '.xml')} does not exist")
    pending: list[_Pending] = []
    for xml_path in xml_files:
        report.records_read += 1
        item = _read_voc_file(xml_path, image_folder, difficult_as_crowd, report)
        if item is not None:
            pending.append(item)
    if image_set is None:
        seen = {p.image_path.resolve() for p in pending}
        for orphan in sorted(p for p in image_folder.iterdir() if is_image_file(p) and p.resolve() not in seen):
            if not (xml_folder / f"{orphan.stem}.xml").exists():
                report.records_read += 1
                report.skip(orphan.name, NO_ANNOTATION, f"no {orphan.stem}.xml in {xml_folder}; if the image has "
                            "no objects, add an XML file without <object> elements")
    records = _finish(pending, report, _voc_objects, max_image_pixels)
    return ImportResult(records, Task.OBJECT_DETECTION, report)


@register_importer("yolo")
def import_yolo(
    source: Path,
    *,
    names: str | Path | Sequence[str] | None = None,
    task: Task | str = Task.OBJECT_DETECTION,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImportResult:
    """YOLO (darknet) txt: one ``class cx cy w h`` line per object, normalised, one file per image.

    Label files lie beside their images (``a.jpg``, ``a.txt``) or in a parallel ``labels`` folder
    (``images/train/a.jpg``, ``labels/train/a.txt``). ``source`` is the folder to search (recursively).
    Class names come from ``names``: a list, or a file with one name per line (``*.names``,
    ``classes.txt``) or a YAML file with a ``names`` list or mapping; without it one such file in
    ``source`` is used. Lines with more values are YOLO-seg polygons (``class x1 y1 x2 y2 ...``): their box
    is derived from the polygon, and with ``task`` instance segmentation the polygon is kept. An image
    without a label file is a background image; a label file without an image is reported.
    """
    source = Path(source)
    task = Task(task)
    if not source.is_dir():
        raise DataError(f"{source} is not a folder; expected images with YOLO .txt label files")
    class_names, names_file = _yolo_names(source, names)
    report = DataReport(source=str(source))
    image_paths = sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p))
    used_labels: set[Path] = set()
    pending: list[_Pending] = []
    for image_path in image_paths:
        report.records_read += 1
        label_path = _yolo_label_path(image_path)
        location = str(image_path.relative_to(source))
        if label_path is None:
            pending.append(_Pending(image_path, location, location, lines=[]))
            continue
        used_labels.add(label_path.resolve())
        location = str(label_path.relative_to(source))
        try:
            lines = label_path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            report.skip(location, BAD_ANNOTATION_FILE, f"cannot read {label_path}: {error}",
                        str(image_path.relative_to(source)))
            continue
        pending.append(_Pending(image_path, str(image_path.relative_to(source)), location, lines=lines))
    image_folders = {p.parent.resolve() for p in image_paths}
    for label_path in sorted(source.rglob("*.txt")):
        resolved = label_path.resolve()
        if resolved in used_labels or resolved == names_file:
            continue
        if resolved.parent in image_folders or "labels" in label_path.relative_to(source).parts:
            report.records_read += 1
            report.skip(str(label_path.relative_to(source)), reasons.NO_ANNOTATION_FILE,
                        f"no image named {label_path.stem}.* was found for this label file")
    records = _finish(pending, report, partial(_yolo_objects, class_names=class_names, task=task),
                      max_image_pixels)
    return ImportResult(records, task, report)


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
    pixel grid; see ``inference.masks.mask_to_polygons``). An object without a usable ``bbox`` gets the
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
    by_id: dict[Any, _Pending] = {}
    pending: list[_Pending] = []
    for number, entry in enumerate(document["images"]):
        report.records_read += 1
        location = f"{source.name}: images[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or "id" not in entry:
            report.skip(location, reasons.MALFORMED_LINE, "an image entry needs 'id' and 'file_name'")
            continue
        if entry["id"] in by_id:
            report.skip(location, reasons.DUPLICATE, f"image id {entry['id']!r} is used twice", entry["file_name"])
            continue
        declared = _declared_size(entry.get("width"), entry.get("height"))
        item = _Pending(root / entry["file_name"], entry["file_name"], location, lines=[], declared=declared)
        by_id[entry["id"]] = item
        pending.append(item)
    for number, annotation in enumerate(document.get("annotations") or []):
        location = f"{source.name}: annotations[{number}]"
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id not in by_id:
            report.drop_annotation(location, OBJECT_DROPPED, f"image_id {image_id!r} is not in 'images'")
            continue
        by_id[image_id].lines.append(annotation)
    records = _finish(pending, report, partial(_coco_objects, categories=categories, task=task),
                      max_image_pixels)
    return ImportResult(records, task, report)


def export_coco(records: Iterable[ImageRecord], classes: Sequence[str], path: str | Path) -> Path:
    """Write records to a COCO JSON file and return its path.

    Category ids are 1, 2, ... in the order of ``classes`` (which must name every class of the records);
    image and annotation ids start at 1. Boxes become pixel [x, y, width, height] with ``area`` = width x
    height, or the polygon area when the object has polygons (then written as pixel ``segmentation``;
    an object whose segments overlap, i.e. has holes under our XOR rule, is written as an RLE mask
    because COCO unites polygons). ``file_name`` is relative to the file's folder when the image lies
    below it, absolute otherwise, so ``import_coco(path)`` reads the same records back (objects written
    as RLE come back as traced polygons). Image sizes come from the records or the files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    category_ids = {name: number for number, name in enumerate(classes, start=1)}
    unknown = sorted({o.label for r in records for o in r.objects} - set(category_ids))
    if unknown:
        raise DataError(f"export_coco: classes {unknown} occur in the records but not in 'classes'")
    sizes = _record_sizes(records)
    images, annotations = [], []
    for image_id, (record, size) in enumerate(zip(records, sizes), start=1):
        if isinstance(size, (str, ImageProblem)):
            raise DataError(f"export_coco: cannot read the size of {record.image_path}: {size}")
        width, height = size
        images.append({"id": image_id, "file_name": _relative_name(record.image_path, path.parent),
                       "width": width, "height": height})
        for obj in record.objects:
            annotations.append(_coco_annotation(obj, len(annotations) + 1, image_id, category_ids[obj.label],
                                                width, height))
    document = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": number, "name": name, "supercategory": "none"} for name, number in category_ids.items()],
    }
    path.write_text(json.dumps(document))
    return path


# --- shared machinery ---------------------------------------------------------------------------------


@dataclass
class _Pending:
    """An image found by an importer, waiting for its size to be probed before its objects are parsed."""

    image_path: Path
    image_url: str
    location: str
    lines: list  # raw objects: text lines (YOLO), dicts (COCO), parsed tuples (VOC)
    declared: tuple[int, int] | None = None


# (pending image, its (width, height), report) -> its objects, or None when the image is skipped
_ObjectParser = Callable[[_Pending, tuple[int, int], DataReport], "list[ObjectAnnotation] | None"]


def _finish(pending: list[_Pending], report: DataReport, parse: _ObjectParser, max_pixels: int) -> list[ImageRecord]:
    """Probe every image, check its size against the declared one, parse its objects, build records."""
    records = []
    for item, probe in probe_listed_images(pending, report, max_pixels=max_pixels):
        size = item.declared or probe
        if item.declared and not _same_shape(item.declared, probe):
            report.skip(item.location, SIZE_MISMATCH,
                        f"the annotation declares {item.declared[0]}x{item.declared[1]} but the image is "
                        f"{probe[0]}x{probe[1]} (after EXIF rotation); fix the declared size or the image",
                        item.image_url)
            continue
        objects = parse(item, size, report)
        if objects is None:
            continue
        records.append(ImageRecord(image_path=item.image_path, image_url=item.image_url, objects=tuple(objects),
                                   location=item.location, width=size[0], height=size[1]))
    report.kept = len(records)
    for record in records:
        for obj in record.objects:
            report.class_counts[obj.label] = report.class_counts.get(obj.label, 0) + 1
    return records


def _keep_objects(item: _Pending, objects: list[ObjectAnnotation], raw_count: int,
                  report: DataReport) -> list[ObjectAnnotation] | None:
    """The objects of an image, or None (image skipped) when it had objects and none survived."""
    if raw_count and not objects:
        report.skip(item.location, NO_VALID_OBJECT,
                    f"all {raw_count} object(s) were dropped (see the dropped annotations), so the image would "
                    "wrongly become a background image", item.image_url)
        return None
    return objects


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[tuple[float, float, float, float] | None, str]:
    """Normalise a pixel (x0, y0, x1, y1) box: (box, "") or (None, why it is dropped)."""
    x0, y0, x1, y1 = box
    # Exporters round coordinates; less than a pixel past the border is rounding, not a bad box.
    if -1 < x0 < 0:
        x0 = 0.0
    if -1 < y0 < 0:
        y0 = 0.0
    if width < x1 < width + 1:
        x1 = float(width)
    if height < y1 < height + 1:
        y1 = float(height)
    normalised = (x0 / width, y0 / height, x1 / width, y1 / height)
    if box_problem(normalised) is not None:
        return None, f"pixel box [{', '.join(f'{v:g}' for v in box)}] in a {width}x{height} image {_pixel_reason(normalised)}"
    return normalised, ""


def _pixel_reason(normalised: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = normalised
    if not all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in normalised):
        return "sticks out of the image by a pixel or more"
    if x0 == x1 or y0 == y1:
        return "has zero width or height"
    return "is inverted (its minimum corner lies after its maximum corner)"


def _same_shape(declared: tuple[int, int], actual: tuple[int, int]) -> bool:
    if declared == actual:
        return True
    return abs(declared[0] / declared[1] - actual[0] / actual[1]) <= _ASPECT_TOLERANCE * actual[0] / actual[1]


def _declared_size(width: Any, height: Any) -> tuple[int, int] | None:
    try:
        width, height = int(float(width)), int(float(height))
    except (TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def _record_sizes(records: list[ImageRecord]) -> list[tuple[int, int] | str | ImageProblem]:
    def size(record: ImageRecord) -> tuple[int, int] | str | ImageProblem:
        if record.width and record.height:
            return record.width, record.height
        if not record.image_path.is_file():
            return "the file does not exist"
        return probe_image(record.image_path)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(size, records))


def _relative_name(image_path: Path, folder: Path) -> str:
    relative = os.path.relpath(image_path.resolve(), folder.resolve())
    return Path(relative).as_posix() if not relative.startswith("..") else str(image_path.resolve())


# --- Pascal VOC ---------------------------------------------------------------------------------------


def _read_voc_file(xml_path: Path, image_folder: Path, difficult_as_crowd: bool,
                   report: DataReport) -> _Pending | None:
    location = xml_path.name
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        report.skip(location, BAD_ANNOTATION_FILE, f"{xml_path} is not readable XML: {error}")
        return None
    filename = (root.findtext("filename") or "").strip()
    image_path = image_folder / filename if filename else None
    if image_path is None or not image_path.suffix:
        found = sorted(p for p in image_folder.glob(f"{filename or xml_path.stem}.*") if is_image_file(p))
        image_path = found[0] if found else image_folder / (filename or xml_path.stem)
    declared = _declared_size(root.findtext("size/width"), root.findtext("size/height"))
    objects = []
    for number, element in enumerate(root.iter("object"), start=1):
        name = (element.findtext("name") or "").strip()
        box = element.find("bndbox")
        values = [box.findtext(key) if box is not None else None for key in ("xmin", "ymin", "xmax", "ymax")]
        difficult = (element.findtext("difficult") or "0").strip() == "1"
        objects.append((number, name, values, difficult and difficult_as_crowd))
    return _Pending(image_path, image_path.name, location, lines=objects, declared=declared)


def _voc_objects(item: _Pending, size: tuple[int, int], report: DataReport) -> list[ObjectAnnotation] | None:
    objects = []
    for number, name, values, crowd in item.lines:
        where = f"object {number}"
        if not name:
            report.drop_annotation(item.location, OBJECT_DROPPED, f"{where} has no <name>", item.image_url)
            continue
        try:
            pixels = [float(v) for v in values]
        except (TypeError, ValueError):
            report.drop_annotation(item.location, OBJECT_DROPPED,
                                   f"{where} ({name!r}) has no numeric <bndbox> xmin/ymin/xmax/ymax: {values}",
                                   item.image_url)
            continue
        box, problem = _pixel_box(pixels, *size)
        if box is None:
            report.drop_annotation(item.location, OBJECT_DROPPED, f"{where} ({name!r}): {problem}", item.image_url)
            continue
        objects.append(ObjectAnnotation(label=name, box=box, is_crowd=crowd))
    return _keep_objects(item, objects, len(item.lines), report)


# --- YOLO ---------------------------------------------------------------------------------------------


def _yolo_names(source: Path, names: str | Path | Sequence[str] | None) -> tuple[list[str], Path | None]:
    """The class names and the file they came from (None when given as a list)."""
    if names is not None and not isinstance(names, (str, Path)):
        return [str(n) for n in names], None
    if names is not None:
        path = Path(names)
        if not path.is_file():
            raise DataError(f"class names file {path} does not exist")
    else:
        candidates = sorted(source.glob("*.names")) + [p for p in (source / "classes.txt", source / "data.yaml")
                                                       if p.is_file()]
        if len(candidates) != 1:
            found = f"found {', '.join(p.name for p in candidates)}" if candidates else "found none"
            raise DataError(f"YOLO labels hold class numbers; the names come from one *.names, classes.txt or "
                            f"data.yaml file in {source} ({found}). Pass names=PATH (one name per line) to choose.")
        path = candidates[0]
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            spec = read_yaml_file(path)
        except YamlError as error:
            raise DataError(str(error)) from None
        listed = spec.get("names") if isinstance(spec, dict) else None
        if isinstance(listed, dict):
            listed = [listed[k] for k in sorted(listed, key=int)]
        if not isinstance(listed, list):
            raise DataError(f"{path} has no 'names' list or mapping")
        return [str(n) for n in listed], path.resolve()
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()], path.resolve()


def _yolo_label_path(image_path: Path) -> Path | None:
    beside = image_path.with_suffix(".txt")
    if beside.is_file():
        return beside
    parts = list(image_path.parts)
    for index in range(len(parts) - 2, -1, -1):  # the innermost "images" folder maps to "labels"
        if parts[index] == "images":
            parallel = Path(*parts[:index], "labels", *parts[index + 1:]).with_suffix(".txt")
            return parallel if parallel.is_file() else None
    return None


def _yolo_objects(item: _Pending, size: tuple[int, int], report: DataReport, *, class_names: list[str],
                  task: Task) -> list[ObjectAnnotation] | None:
    width, height = size
    objects, raw = [], 0
    for line_number, line in enumerate(item.lines, start=1):
        fields = line.split()
        if not fields:
            continue
        raw += 1
        where = f"{item.location}:{line_number}"

        def drop(detail: str) -> None:
            report.drop_annotation(where, OBJECT_DROPPED, detail, item.image_url)

        try:
            values = [float(v) for v in fields]
        except ValueError:
            drop(f"line {line!r} holds a value that is not a number")
            continue
        class_id, coordinates = values[0], values[1:]
        if class_id != int(class_id) or not 0 <= class_id < len(class_names):
            drop(f"class {fields[0]} is not a class number of the names list ({len(class_names)} names)")
            continue
        name = class_names[int(class_id)]
        polygons: tuple[tuple[float, ...], ...] = ()
        if len(coordinates) == 4:
            cx, cy, w, h = coordinates
            pixels = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        elif len(coordinates) >= 6 and len(coordinates) % 2 == 0:
            polygon = tuple(coordinates)
            if not all(-1 / width < v < 1 + 1 / width for v in polygon[0::2]) or \
                    not all(-1 / height < v < 1 + 1 / height for v in polygon[1::2]):
                drop(f"{name!r}: a polygon point lies outside the image")
                continue
            polygon = tuple(float(np.clip(v, 0.0, 1.0)) for v in polygon)
            x0, y0, x1, y1 = polygon_box((polygon,))
            pixels = (x0 * width, y0 * height, x1 * width, y1 * height)
            polygons = (polygon,) if task is Task.INSTANCE_SEGMENTATION else ()
        else:
            drop(f"{name!r}: {len(coordinates)} coordinates; expected 4 (cx cy w h) or an even number of at least "
                 "6 (a polygon)")
            continue
        if task is Task.INSTANCE_SEGMENTATION and not polygons:
            drop(f"{name!r}: a box without a polygon; instance segmentation needs polygons")
            continue
        box, problem = _pixel_box(pixels, width, height)
        if box is None:
            drop(f"{name!r}: {problem}")
            continue
        objects.append(ObjectAnnotation(label=name, box=box, polygons=polygons))
    return _keep_objects(item, objects, raw, report)


# --- COCO ---------------------------------------------------------------------------------------------


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


def _coco_objects(item: _Pending, size: tuple[int, int], report: DataReport, *, categories: dict[Any, str],
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
        box, problem = _pixel_box(pixels, width, height)
        if box is None:
            drop(f"{name!r}: {problem}")
            continue
        crowd = annotation.get("iscrowd", 0) in (1, True)
        keep = polygons if task is Task.INSTANCE_SEGMENTATION else ()
        objects.append(ObjectAnnotation(label=name, box=box, is_crowd=crowd, polygons=keep))
    return _keep_objects(item, objects, len(item.lines), report)


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


def _coco_annotation(obj: ObjectAnnotation, annotation_id: int, image_id: int, category_id: int,
                     width: int, height: int) -> dict[str, Any]:
    x0, y0, x1, y1 = obj.box
    bbox = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
    annotation = {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                  "area": bbox[2] * bbox[3], "iscrowd": int(obj.is_crowd)}
    if obj.polygons:
        segmentation = [[v * (width if i % 2 == 0 else height) for i, v in enumerate(segment)]
                        for segment in obj.polygons]
        rles = mask_utils.frPyObjects(segmentation, height, width)
        annotation["segmentation"] = segmentation
        annotation["area"] = float(mask_utils.area(mask_utils.merge(rles)))
        if len(rles) > 1:
            # Our segments combine by XOR (an inner one is a hole), COCO's polygons by union: where they
            # overlap, write the mask itself as RLE so other COCO tools see the same object.
            mask = np.zeros((height, width), np.uint8)
            for rle in rles:
                mask ^= mask_utils.decode(rle)
            if int(mask.sum()) != annotation["area"]:
                rle = mask_utils.encode(np.asfortranarray(mask))
                annotation["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                annotation["area"] = float(mask.sum())
    return annotation
