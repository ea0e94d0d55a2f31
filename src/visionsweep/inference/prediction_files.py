"""Reading a predictions file (the scoring format, JSON Lines) and pairing its lines with labelled records.

Scoring a predictions file keeps two reports, and each adds up (records read = kept + skipped):

- the labelled data's (from ``read_labeled_data``), one record per labelled image. An image is kept when
  it is scored. One that no line names is skipped as ``no prediction``: it is left out of the metrics,
  not scored as a miss, because ``predict`` writes a line for every image it read (with no boxes when
  nothing was found), so a missing line is a prediction never made. One whose line cannot be scored is
  skipped as ``unusable prediction``, naming the line.
- the predictions file's, one record per line. A line is kept when its image is scored. Lines that are
  not UTF-8, not a JSON object, have no ``filename``, or whose content cannot be scored are ``malformed
  line``; a second line for an image is ``duplicate image`` (the first is scored); a line for an image
  the labelled data does not list is ``no label``, and one for a labelled image that is skipped in the
  labelled data's report (missing file, a class the predictions do not know, ...) is ``image not scored``.

Each scored image is one kept record in each report, so the two always keep the same number.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from visionsweep.data import report as reasons
from visionsweep.data.jsonl import read_json_lines
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError

# Reasons of the predictions file's report.
NO_LABEL = "no label"
NOT_SCORED = "image not scored"
# Reasons of the labelled data's report.
NO_PREDICTION = "no prediction"
UNUSABLE_PREDICTION = "unusable prediction"


@dataclass(frozen=True)
class MatchedLine:
    """A labelled record and the line of the predictions file that names it (``location`` is file:line)."""

    record: ImageRecord
    line: dict[str, Any]
    location: str


def match_prediction_lines(path: str | Path, records: Sequence[ImageRecord], report: DataReport,
                           predictions_report: DataReport) -> list[MatchedLine]:
    """Pair each labelled record with the line whose ``filename`` is its ``image_url`` as listed (or its
    resolved path). ``report`` is the labelled data's, with ``records`` counted as kept;
    ``predictions_report`` gets every line of the file, and counts the paired ones as kept.

    A pair stays kept in both reports until ``reject_line`` or ``keep_scored`` leaves it out.
    """
    path = Path(path)
    lines = _lines_by_filename(path, predictions_report)
    matched = []
    for record in records:
        names = dict.fromkeys([record.image_url, str(record.image_path)])  # one key when both are the same
        found = sorted((lines.pop(name) for name in names if name in lines), key=lambda line: line.number)
        if not found:
            report.skip_kept(record.location, NO_PREDICTION, f"no line of {path} names this image; it is left "
                             "out of the metrics, not scored as a miss", record.image_url)
            continue
        first, *again = found
        matched.append(MatchedLine(record, first.item, first.location))
        for line in again:
            predictions_report.skip(line.location, reasons.DUPLICATE,
                                    f"a second line for this image (the first, {first.location}, is used)",
                                    line.filename)
    skipped_labels = {p.image_url: p for p in report.skipped if p.image_url is not None}
    for name, line in lines.items():
        problem = skipped_labels.get(name)
        if problem is None:
            predictions_report.skip(line.location, NO_LABEL,
                                    f"the labelled data ({report.source}) does not list this image", name)
        else:
            predictions_report.skip(line.location, NOT_SCORED, f"its labelled record {problem.location} is skipped "
                                    f"({problem.reason}) in the report of {report.source}", name)
    predictions_report.kept = len(matched)
    if not matched:
        raise DataError(f"no line of {path} matches a labelled image.\n{scoring_summary(report, predictions_report)}")
    return matched


def reject_line(matched: MatchedLine, problem: str, report: DataReport, predictions_report: DataReport) -> None:
    """Leave out a pair whose line cannot be scored: a malformed line of the predictions file, and an
    unusable prediction of the labelled image."""
    predictions_report.skip_kept(matched.location, reasons.MALFORMED_LINE, problem, matched.record.image_url)
    report.skip_kept(matched.record.location, UNUSABLE_PREDICTION,
                     f"its prediction, line {matched.location}: {problem}", matched.record.image_url)


def keep_scored(matched: Sequence[MatchedLine], scored: Sequence[ImageRecord], report: DataReport,
                predictions_report: DataReport) -> list[MatchedLine]:
    """The pairs whose record is in ``scored``; the lines of the others, whose records the caller has
    skipped in ``report``, become ``image not scored``."""
    kept_ids = {id(record) for record in scored}
    reasons_by_location = {p.location: p.reason for p in report.skipped}
    kept = []
    for pair in matched:
        if id(pair.record) in kept_ids:
            kept.append(pair)
            continue
        reason = reasons_by_location.get(pair.record.location, "see there")
        predictions_report.skip_kept(pair.location, NOT_SCORED, f"its labelled record {pair.record.location} is "
                                     f"skipped ({reason}) in the report of {report.source}", pair.record.image_url)
    return kept


def scoring_summary(report: DataReport, predictions_report: DataReport) -> str:
    """Both reports, the labelled data's first."""
    return f"{report.summary()}\n{predictions_report.summary()}"


@dataclass(frozen=True)
class _Line:
    number: int
    location: str
    filename: str
    item: dict[str, Any]


def _lines_by_filename(path: Path, report: DataReport) -> dict[str, _Line]:
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    lines: dict[str, _Line] = {}
    for number, (location, item) in enumerate(read_json_lines(path, report)):
        report.records_read += 1
        if item is None:  # not UTF-8 or not a JSON object: already skipped
            continue
        filename = item.get("filename")
        if not isinstance(filename, str) or not filename:
            report.skip(location, reasons.MALFORMED_LINE, "a prediction line needs a 'filename' string")
            continue
        if filename in lines:
            report.skip(location, reasons.DUPLICATE,
                        f"a second line for this filename (the first, {lines[filename].location}, is used)", filename)
            continue
        lines[filename] = _Line(number, location, filename, item)
    return lines
