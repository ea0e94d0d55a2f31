"""What to predict on (an image, a folder of images, a JSONL file or an MLTable folder) and which
labelled records a model can be scored on."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from visionsweep.data import report as reasons

from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS, is_image_file
from visionsweep.data.jsonl import check_images, parse_jsonl, read_mltable
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError


def collect_inputs(source: str | Path, *,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[list[ImageRecord], DataReport]:
    """The images to predict on, each named as its source lists it (the ``filename`` of the output).

    JSONL lines need only ``image_url``; any label is ignored. Images that are missing, cannot be
    read or have more than ``max_image_pixels`` pixels are left out and reported (headers are
    checked here; an image that fails to decode later is reported by the predictor). Raises
    ``DataError`` when no image is left.
    """
    source = Path(source)
    report = DataReport(source=str(source))
    if source.is_dir() and (source / "MLTable").is_file():
        candidates = [r for path in read_mltable(source) for r in parse_jsonl(path, report, None)]
    elif source.is_dir():
        candidates = _folder_inputs(source, report)
    elif source.suffix.lower() in (".jsonl", ".json") and source.is_file():
        candidates = parse_jsonl(source, report, None)
    else:
        report.records_read = 1
        candidates = [ImageRecord(image_path=source, image_url=str(source), location=str(source))]
    records = check_images(candidates, report, max_pixels=max_image_pixels)
    report.kept = len(records)
    if not records:
        raise DataError(f"no readable image to predict on in {source}.\n{report.summary()}")
    return records, report


def _folder_inputs(folder: Path, report: DataReport) -> list[ImageRecord]:
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not is_image_file(path):
            continue  # a folder of images may hold notes, label files, ...; only images are inputs
        report.records_read += 1
        records.append(ImageRecord(image_path=path, image_url=str(path), location=str(path.relative_to(folder))))
    return records


def known_class_records(records: Sequence[ImageRecord], labels: Sequence[str], report: DataReport, *,
                        whose: str = "the model's classes") -> list[ImageRecord]:
    """Records whose classes (labels or objects) the model knows; the others are reported, since a class
    the model cannot name would count against it unfairly. ``report`` counted them as kept; ``whose``
    names ``labels`` in the report."""
    known = set(labels)
    kept = []
    for record in records:
        unknown = sorted(set(record.class_names()) - known)
        if unknown:
            report.skip_kept(record.location, reasons.BAD_LABEL,
                             f"class {', '.join(unknown)} is not one of {whose} ({', '.join(labels)})",
                             record.image_url)
        else:
            kept.append(record)
    return kept
