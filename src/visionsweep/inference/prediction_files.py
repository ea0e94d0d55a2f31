"""Reading a predictions file (the scoring format, JSON Lines) and pairing its lines with labelled records."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from visionsweep.data import report as reasons
from visionsweep.data.jsonl import read_json_lines
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError


def match_prediction_lines(path: str | Path, records: Sequence[ImageRecord],
                           report: DataReport) -> list[tuple[ImageRecord, dict[str, Any]]]:
    """Pair each labelled record with the prediction line whose ``filename`` is its ``image_url`` as
    listed (or its resolved path). Records without a line, lines without a record, and lines that
    are not JSON objects with a ``filename`` are reported."""
    lines = _lines_by_filename(Path(path), report)
    pairs = []
    for record in records:
        line = lines.pop(record.image_url, None) or lines.pop(str(record.image_path), None)
        if line is None:
            report.skip_kept(record.location, "no prediction",
                             "no line of the predictions file has this filename", record.image_url)
        else:
            pairs.append((record, line))
    for name in lines:
        report.skip(str(path), "no label", "the predictions file names an image the labelled data does not have",
                    name)
    if not pairs:
        raise DataError(f"no line of {path} matches a labelled image.\n{report.summary()}")
    return pairs


def _lines_by_filename(path: Path, report: DataReport) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    lines: dict[str, dict[str, Any]] = {}
    for location, item in read_json_lines(path, report):
        if item is None:
            continue
        if not isinstance(item.get("filename"), str):
            report.skip(location, reasons.MALFORMED_LINE, "a prediction line needs a 'filename' string")
            continue
        if item["filename"] in lines:
            report.skip(location, reasons.DUPLICATE, "a second line for the same filename", item["filename"])
            continue
        lines[item["filename"]] = item
    return lines
