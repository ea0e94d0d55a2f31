"""What the detection importers share: images waiting for their size, the object rules, the skip reasons.

The rules themselves are described in ``visionsweep.data.detection_formats``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from visionsweep.data.detection_labels import box_problem
from visionsweep.data.image_checks import probe_listed_images
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.data.report import DataReport

# Reasons of skipped images specific to these formats (the data report counts records per reason).
BAD_ANNOTATION_FILE = "unreadable annotation file"
SIZE_MISMATCH = "image size mismatch"
NO_VALID_OBJECT = "no valid object"
NO_ANNOTATION = "image without annotation file"
OBJECT_DROPPED = "annotation dropped"

# Images whose aspect ratio differs from the declared one by more than this are skipped.
_ASPECT_TOLERANCE = 0.01


@dataclass
class PendingImage:
    """An image found by an importer, waiting for its size to be probed before its objects are parsed."""

    image_path: Path
    image_url: str
    location: str
    lines: list  # raw objects: text lines (YOLO), dicts (COCO), parsed tuples (VOC)
    declared: tuple[int, int] | None = None


# (pending image, its (width, height), report) -> its objects, or None when the image is skipped
ObjectParser = Callable[[PendingImage, tuple[int, int], DataReport], "list[ObjectAnnotation] | None"]


def finish_records(pending: list[PendingImage], report: DataReport, parse: ObjectParser,
                   max_pixels: int) -> list[ImageRecord]:
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


def keep_objects(item: PendingImage, objects: list[ObjectAnnotation], raw_count: int,
                  report: DataReport) -> list[ObjectAnnotation] | None:
    """The objects of an image, or None (image skipped) when it had objects and none survived."""
    if raw_count and not objects:
        report.skip(item.location, NO_VALID_OBJECT,
                    f"all {raw_count} object(s) were dropped (see the dropped annotations), so the image would "
                    "wrongly become a background image", item.image_url)
        return None
    return objects


def pixel_box(box: Sequence[float], width: int, height: int) -> tuple[tuple[float, float, float, float] | None, str]:
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


def declared_size(width: Any, height: Any) -> tuple[int, int] | None:
    try:
        width, height = int(float(width)), int(float(height))
    except (TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None

