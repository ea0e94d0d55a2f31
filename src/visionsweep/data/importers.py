"""Importers that turn other annotation layouts into records (written out as Azure JSONL).

Each importer takes a source path and returns ``ImportResult``: the records, the task they fit,
and a report of everything that was left out and why. Every importer checks the header of each image
it keeps and takes the option ``max_image_pixels``: images with more pixels are skipped as
``image too large`` (the default and the bounds are those of the setting of that name).
"""
from __future__ import annotations

import csv
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from visionsweep.data import report as reasons
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS, is_image_file
from visionsweep.data.jsonl import check_images, write_jsonl
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError, SettingsError
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task


@dataclass
class ImportResult:
    records: list[ImageRecord]
    task: Task
    report: DataReport


Importer = Callable[..., ImportResult]
_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str) -> Callable[[Importer], Importer]:
    def decorate(function: Importer) -> Importer:
        _IMPORTERS[name] = function
        return function
    return decorate


def importer_names() -> list[str]:
    return sorted(_IMPORTERS)


def convert(source_format: str, source: str | Path, output: str | Path, **options: Any) -> ImportResult:
    """Import ``source`` in ``source_format`` and write it to ``output`` as Azure JSONL.

    ``options`` go to the importer; a name it does not take, or a ``max_image_pixels`` outside the
    setting's bounds, is a ``SettingsError`` before anything is read.
    """
    if source_format not in _IMPORTERS:
        raise DataError(f"unknown source format {source_format!r}; available: {', '.join(importer_names())}")
    importer = _IMPORTERS[source_format]
    result = importer(Path(source), **_checked_options(source_format, importer, options))
    if not result.records:
        raise DataError(f"nothing to import from {source}.\n{result.report.summary()}")
    write_jsonl(result.records, output, result.task)
    return result


def _checked_options(source_format: str, importer: Importer, options: dict[str, Any]) -> dict[str, Any]:
    accepted = [name for name in inspect.signature(importer).parameters][1:]  # after the source path
    problems = [f"{name}: not an option of the {source_format} importer; its options are {', '.join(accepted)}"
                for name in options if name not in accepted]
    checked = dict(options)
    if "max_image_pixels" in options:
        # The setting's own check (the same for every task): its bounds and messages as in train and predict.
        try:
            checked["max_image_pixels"] = resolve_settings(
                Task.CLASSIFICATION, {"max_image_pixels": options["max_image_pixels"]}).max_image_pixels
        except SettingsError as error:
            problems.extend(error.problems)
    if problems:
        raise SettingsError(problems, context="importer option")
    return checked


@register_importer("folder")
def import_class_folders(root: Path, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImportResult:
    """A tree with one sub-folder per class (``root/cat/1.jpg``): multi-class classification."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected one sub-folder per class")
    report = DataReport(source=str(root))
    records = []
    for item in sorted(root.iterdir()):
        if item.is_file():
            report.records_read += 1
            report.skip(item.name, reasons.BAD_LABEL, "file lies directly in the root, not in a class folder")
            continue
        if item.name.startswith("."):
            continue
        for path in sorted(p for p in item.rglob("*") if p.is_file()):
            report.records_read += 1
            location = str(path.relative_to(root))
            if not is_image_file(path):
                report.skip(location, reasons.UNREADABLE_IMAGE, "not an image file (by its extension)")
                continue
            records.append(ImageRecord(image_path=path, image_url=location, labels=(item.name,), location=location))
    if not records:
        raise DataError(f"no images found in class folders under {root}; expected e.g. {root}/cat/1.jpg")
    records = check_images(records, report, max_pixels=max_image_pixels)
    report.kept = len(records)
    return ImportResult(records, Task.CLASSIFICATION, report)


@register_importer("csv")
def import_csv(path: Path, *, multilabel: bool = False, image_root: str | Path | None = None,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImportResult:
    """A CSV of ``image_path,label`` rows (an optional header whose second column is label or labels).

    Image paths are relative to ``image_root``, or to the CSV's folder. With ``multilabel`` the label
    column holds the labels separated by spaces or semicolons (``"can carton"``).
    """
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    report = DataReport(source=str(path))
    records = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not any(cell.strip() for cell in row):
                continue
            if number == 1 and len(row) >= 2 and row[1].strip().lower() in ("label", "labels"):
                continue
            report.records_read += 1
            location = f"{path.name}:{number}"
            if len(row) != 2:
                report.skip(location, reasons.MALFORMED_LINE, f"expected 2 columns (path,label), found {len(row)}")
                continue
            image, label_text = row[0].strip(), row[1].strip()
            labels = tuple(sorted({t for t in re.split(r"[\s;]+", label_text) if t})) if multilabel else (label_text,)
            if not image:
                report.skip(location, reasons.MISSING_IMAGE_URL, "the path column is empty")
                continue
            if not multilabel and not label_text:
                report.skip(location, reasons.BAD_LABEL, "the label column is empty", image)
                continue
            image_path = Path(image) if Path(image).is_absolute() else root / image
            records.append(ImageRecord(image_path=image_path, image_url=image, labels=labels, location=location))
    records = check_images(records, report, max_pixels=max_image_pixels)
    report.kept = len(records)
    return ImportResult(records, Task.MULTILABEL if multilabel else Task.CLASSIFICATION, report)
