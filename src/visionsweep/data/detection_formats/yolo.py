"""YOLO (darknet) txt annotations: one label file per image, boxes or polygons, normalised."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from visionsweep.data import report as reasons
from visionsweep.data.detection_formats.common import (
    BAD_ANNOTATION_FILE, OBJECT_DROPPED, PendingImage, finish_records, keep_objects, pixel_box,
)
from visionsweep.data.detection_labels import polygon_box
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS, is_image_file
from visionsweep.data.importers import ImportResult, register_importer
from visionsweep.data.records import ObjectAnnotation
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.tasks import Task
from visionsweep.yaml_files import YamlError, read_yaml_file


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
    pending: list[PendingImage] = []
    for image_path in image_paths:
        report.records_read += 1
        label_path = _yolo_label_path(image_path)
        location = str(image_path.relative_to(source))
        if label_path is None:
            pending.append(PendingImage(image_path, location, location, lines=[]))
            continue
        used_labels.add(label_path.resolve())
        location = str(label_path.relative_to(source))
        try:
            lines = label_path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            report.skip(location, BAD_ANNOTATION_FILE, f"cannot read {label_path}: {error}",
                        str(image_path.relative_to(source)))
            continue
        pending.append(PendingImage(image_path, str(image_path.relative_to(source)), location, lines=lines))
    image_folders = {p.parent.resolve() for p in image_paths}
    for label_path in sorted(source.rglob("*.txt")):
        resolved = label_path.resolve()
        if resolved in used_labels or resolved == names_file:
            continue
        if resolved.parent in image_folders or "labels" in label_path.relative_to(source).parts:
            report.records_read += 1
            report.skip(str(label_path.relative_to(source)), reasons.NO_ANNOTATION_FILE,
                        f"no image named {label_path.stem}.* was found for this label file")
    records = finish_records(pending, report, partial(_yolo_objects, class_names=class_names, task=task),
                      max_image_pixels)
    return ImportResult(records, task, report)



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


def _yolo_objects(item: PendingImage, size: tuple[int, int], report: DataReport, *, class_names: list[str],
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
        box, problem = pixel_box(pixels, width, height)
        if box is None:
            drop(f"{name!r}: {problem}")
            continue
        objects.append(ObjectAnnotation(label=name, box=box, polygons=polygons))
    return keep_objects(item, objects, raw, report)

