"""Reading and writing Azure JSON Lines data, directly or through an MLTable folder.

One line per image: ``{"image_url": ..., "image_details": {...}, "label": ...}``. A relative
``image_url`` is resolved against the folder of the JSONL file that holds it.
"""
from __future__ import annotations

import codecs
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import unquote, urlparse

from visionsweep.data import report as reasons
from visionsweep.data.image_checks import probe_listed_images
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS
from visionsweep.data.labels import BadLabel, LabelParser, label_parser
from visionsweep.data.records import ImageRecord, LabeledData, ObjectAnnotation
from visionsweep.data.report import DataReport
from visionsweep.data.tiling import Tiling
from visionsweep.errors import DataError
from visionsweep.json_files import DuplicateJsonKeyError, parse_json
from visionsweep.tasks import Task
from visionsweep.yaml_files import YamlError, read_yaml_file


def read_labeled_data(
    source: str | Path,
    task: Task,
    *,
    ignore_data_errors: bool = True,
    label_column: str = "label",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    decode_images: bool = False,
    tiling: Tiling | None = None,
) -> LabeledData:
    """Read a JSONL file or an MLTable folder into records, checking every image and label, and with
    ``tiling`` that the grid gives each image tiles of at least ``MIN_TILE_SIDE`` pixels.

    Records that cannot be used are skipped and listed in the report with their reason. With
    ``ignore_data_errors=False`` any skipped record is an error instead (all of them are listed).
    Raises ``DataError`` when no usable image is left. Images are checked as ``check_images`` does.
    """
    source = Path(source)
    report = DataReport(source=str(source))
    candidates: list[ImageRecord] = []
    for jsonl_path in _jsonl_files(source):
        candidates.extend(parse_jsonl(jsonl_path, report, label_parser(task), label_column))
    records = check_images(candidates, report, max_pixels=max_image_pixels, decode=decode_images)
    if tiling is not None:
        records = _skip_too_small_for_tiles(records, tiling, report)
    report.kept = len(records)
    for record in records:
        for name in record.class_names():
            report.class_counts[name] = report.class_counts.get(name, 0) + 1
    if report.skipped and not ignore_data_errors:
        raise DataError(f"{len(report.skipped)} bad record(s) and ignore_data_errors is false:\n"
                        f"{report.summary(max_lines=20)}\nFix them, or set ignore_data_errors=true to skip them.")
    if not records:
        raise DataError(f"no usable image in {source}.\n{report.summary(max_lines=20)}")
    return LabeledData(records, report)


def write_jsonl(records: Iterable[ImageRecord], path: str | Path, task: Task) -> Path:
    """Write records in the Azure schema. Image paths are written relative to the file's folder
    when the image lies below it, absolute otherwise, so the file can be read back from anywhere."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record_to_json(record, task, path.parent)) + "\n")
    return path


def record_to_json(record: ImageRecord, task: Task, relative_to: Path | None = None) -> dict[str, Any]:
    image_url = str(record.image_path)
    if relative_to is not None:
        try:
            image_url = Path(os.path.relpath(record.image_path.resolve(), relative_to.resolve())).as_posix()
        except ValueError:  # different drives on Windows
            pass
        if image_url.startswith(".."):
            image_url = str(record.image_path.resolve())
    line: dict[str, Any] = {"image_url": image_url}
    if record.width and record.height:
        suffix = record.image_path.suffix.lower().lstrip(".")
        line["image_details"] = {"format": suffix, "width": f"{record.width}px", "height": f"{record.height}px"}
    if task is Task.CLASSIFICATION:
        line["label"] = record.labels[0]
    elif task is Task.MULTILABEL:
        line["label"] = list(record.labels)
    else:
        line["label"] = [_object_to_json(o, task) for o in record.objects]
    return line


def _object_to_json(obj: ObjectAnnotation, task: Task) -> dict[str, Any]:
    if task is Task.INSTANCE_SEGMENTATION:
        return {"label": obj.label, "isCrowd": int(obj.is_crowd), "polygon": [list(p) for p in obj.polygons]}
    x0, y0, x1, y1 = obj.box
    return {"label": obj.label, "topX": x0, "topY": y0, "bottomX": x1, "bottomY": y1, "isCrowd": int(obj.is_crowd)}


def _jsonl_files(source: Path) -> list[Path]:
    if source.is_dir():
        return read_mltable(source)
    if not source.is_file():
        raise DataError(f"data file {source} does not exist")
    return [source]


def read_mltable(folder: Path) -> list[Path]:
    """The JSONL files an MLTable folder points at (paths in it are relative to the folder)."""
    mltable = folder / "MLTable"
    if not mltable.is_file():
        raise DataError(f"{folder} is a folder without an MLTable file; pass a .jsonl file or an MLTable folder")
    try:
        spec = read_yaml_file(mltable)
    except YamlError as error:
        raise DataError(str(error)) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("paths"), list):
        raise DataError(f"{mltable} has no 'paths' list; it must point at JSONL files with '- file: train.jsonl'")
    transformations = spec.get("transformations") or []
    reads_json_lines = any(isinstance(t, dict) and "read_json_lines" in t for t in transformations)
    if not reads_json_lines:
        raise DataError(f"{mltable}: only MLTables that read JSON Lines (a read_json_lines transformation) are "
                        "supported for images")
    files = []
    for entry in spec["paths"]:
        target = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(target, str):
            raise DataError(f"{mltable}: each entry of 'paths' must be '- file: PATH', got {entry!r}")
        path = resolve_image_url(target, folder)
        if path is None or not path.is_file():
            raise DataError(f"{mltable}: file {target!r} does not exist (paths are relative to {folder})")
        files.append(path)
    return files


def parse_jsonl(path: Path, report: DataReport, parse_label: LabelParser | None,
                label_column: str = "label") -> list[ImageRecord]:
    """Records of one JSONL file, images not yet checked. Without ``parse_label`` labels are ignored
    (prediction inputs need only ``image_url``). Bad lines are skipped into ``report``."""
    records = []
    for location, item in read_json_lines(path, report):
        report.records_read += 1
        if item is None:
            continue
        url = item.get("image_url")
        if not isinstance(url, str) or not url.strip():
            report.skip(location, reasons.MISSING_IMAGE_URL, "no image_url string in this line")
            continue
        image_path = resolve_image_url(url, path.parent)
        if image_path is None:
            report.skip(location, reasons.UNSUPPORTED_URL,
                        "only local paths and file:// URLs can be read; download the images and point "
                        "image_url at them (relative paths resolve against the JSONL file's folder)", url)
            continue
        if parse_label is None:
            records.append(ImageRecord(image_path=image_path, image_url=url, location=location))
            continue
        if label_column not in item:
            report.skip(location, reasons.BAD_LABEL, f"no {label_column!r} key in this line", url)
            continue
        try:
            parsed = parse_label(item[label_column])
        except BadLabel as error:
            report.skip(location, reasons.BAD_LABEL, str(error), url)
            continue
        for reason in parsed.dropped:
            report.drop_annotation(location, "annotation dropped", reason, url)
        records.append(ImageRecord(image_path=image_path, image_url=url, labels=parsed.labels,
                                   objects=parsed.objects, location=location))
    return records


def read_json_lines(path: Path, report: DataReport) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """``(location, object)`` for each line of a JSON Lines file but blank ones, ``location`` being
    ``file:line``.

    Lines are decoded one by one as UTF-8 (a byte-order mark at the start is allowed), so a line that
    is not UTF-8, not JSON, not a JSON object or an object that gives a key twice is one malformed
    line, skipped into ``report`` and yielded with ``None``, and the rest of the file is still read.
    """
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            location = f"{path.name}:{number}"
            try:
                item = parse_json(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                problem = (f"not UTF-8 text (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line); "
                           "save the file as UTF-8")
            except json.JSONDecodeError as error:
                problem = f"not valid JSON ({error.msg})"
            except DuplicateJsonKeyError as error:  # which of the two values was meant cannot be told
                problem = str(error)
            else:
                problem = None if isinstance(item, dict) else f"a line must be a JSON object, got {type(item).__name__}"
            if problem is not None:
                report.skip(location, reasons.MALFORMED_LINE, problem)
                yield location, None
            else:
                yield location, item


def resolve_image_url(url: str, base: Path) -> Path | None:
    """Resolve ``url`` to a local path: absolute, relative to ``base``, or file://. None for remote URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        return None
    path = Path(url)
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def check_images(records: list[ImageRecord], report: DataReport, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 decode: bool = False) -> list[ImageRecord]:
    """Keep records whose image exists, can be read, has at most ``max_pixels`` pixels and appears for
    the first time; report the others in ``report``. Kept records get the image's width and height.

    ``decode`` decodes every image in full, which finds every image that training would fail to read;
    without it only headers and file structure are read (``probe_image``). The report says which.
    """
    kept = []
    first_seen: dict[Path, str] = {}
    for record, (width, height) in probe_listed_images(records, report, max_pixels=max_pixels, decode=decode):
        key = record.image_path.resolve()
        if key in first_seen:
            report.skip(record.location, reasons.DUPLICATE,
                        f"the same image is already listed at {first_seen[key]}", record.image_url)
            continue
        first_seen[key] = record.location
        kept.append(replace(record, width=width, height=height))
    return kept


def _skip_too_small_for_tiles(records: list[ImageRecord], tiling: Tiling, report: DataReport) -> list[ImageRecord]:
    kept = []
    for record in records:
        problem = tiling.too_small(record.width, record.height)
        if problem is None:
            kept.append(record)
        else:
            report.skip(record.location, reasons.TOO_SMALL_FOR_TILES, f"{record.image_path} is {problem}",
                        record.image_url)
    return kept
