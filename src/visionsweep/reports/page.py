"""Rendering a report's template and writing ``report.html`` with its figures' CSV files beside it.

Templates are jinja2 with autoescaping on: class names, file names and error messages come from the
user's data and are shown as text, never as markup.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable

import jinja2

from visionsweep.reports.figures import Figure

REPORT_FILE = "report.html"
REPORT_DATA_FOLDER = "report_data"

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("visionsweep.reports", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENVIRONMENT.globals["data_folder"] = REPORT_DATA_FOLDER  # seen by imported macros too


def render(template: str, **context: Any) -> str:
    return _ENVIRONMENT.get_template(template).render(**context)


def write_report(folder: Path, html: str, figures: Iterable[Figure]) -> Path:
    """``folder/report.html`` and ``folder/report_data/<figure>.csv``. Each file is written whole and
    then moved into place, so that a report open in a browser while a sweep rewrites it is never half."""
    data_folder = folder / REPORT_DATA_FOLDER
    data_folder.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(figure.table.columns)
        writer.writerows(figure.table.rows)
        _write_whole(data_folder / f"{figure.name}.csv", buffer.getvalue())
    path = folder / REPORT_FILE
    _write_whole(path, html)
    return path


def _write_whole(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
