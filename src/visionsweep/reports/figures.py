"""Figures of the reports: each one a PNG drawn with matplotlib and the table of numbers it shows.

The table is what ``page.write_report`` writes as CSV beside the report, so that a figure's data can
be read without its picture. Figures are drawn on matplotlib's ``Figure`` object, not through pyplot:
no global figure state, nothing to close, safe in any thread.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MatplotlibFigure
from matplotlib.ticker import MaxNLocator

# Small pictures: a report holds a dozen of them and must stay a few MB at most.
_SIZE_INCHES = (6.0, 3.6)
_DPI = 90


@dataclass(frozen=True)
class Table:
    """Rows of numbers (or labels) under named columns."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Figure:
    """One figure of a report: ``name`` is its CSV file's stem and its id in the page."""

    name: str
    title: str
    png: bytes
    table: Table
    note: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Series:
    """One line of a line chart; ``marked`` points get a marker (a pruned trial's last epoch, the best epoch)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    marked: Sequence[int] = field(default_factory=tuple)


def draw(name: str, title: str, table: Table, paint: Callable[[Axes], None], *, note: str = "",
         size: tuple[float, float] = _SIZE_INCHES) -> Figure:
    """A figure painted by ``paint`` on one set of axes."""
    figure = MatplotlibFigure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    paint(axes)
    axes.set_title(title, fontsize=10)
    return Figure(name, title, png_bytes(figure), table, note)


def png_bytes(figure: MatplotlibFigure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def line_chart(name: str, title: str, series: Sequence[Series], *, x_label: str, y_label: str,
               note: str = "", log_y: bool = False, whole_x: bool = False) -> Figure:
    """Lines over a shared x axis (epochs, recall, trials); the table has one row per point. ``whole_x``
    puts ticks on whole numbers only (epochs, trial numbers)."""
    rows = [(s.label, x, y) for s in series for x, y in zip(s.x, s.y)]

    def paint(axes: Axes) -> None:
        for s in series:
            line, = axes.plot(s.x, s.y, marker="." if len(s.x) < 40 else None, label=s.label, linewidth=1.2)
            if s.marked:
                axes.plot([s.x[i] for i in s.marked], [s.y[i] for i in s.marked], "x", color=line.get_color(),
                          markersize=8, markeredgewidth=2)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        if whole_x:
            xs = sorted({x for s in series for x in s.x})
            if 0 < len(xs) <= 12:
                axes.set_xticks(xs)  # a locator would put fractional ticks around a single epoch
            else:
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log_y and all(y > 0 for s in series for y in s.y if _finite(y)):
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
        if 1 < len(series) <= 12:
            axes.legend(fontsize=7, loc="best")
        if not rows:
            _nothing_to_show(axes)

    return draw(name, title, Table(("series", x_label, y_label), rows), paint, note=note)


def heat_map(name: str, title: str, matrix: Sequence[Sequence[float]], row_labels: Sequence[str],
             column_labels: Sequence[str], *, row_title: str, column_title: str, note: str = "") -> Figure:
    """A matrix of counts with its numbers written in the cells (confusion matrices)."""
    rows = [(label, *values) for label, values in zip(row_labels, matrix)]
    height = min(2.0 + 0.35 * len(row_labels), 9.0)
    width = min(max(3.0 + 0.45 * len(column_labels), 6.0), 11.0)  # 6 inches: room for the title

    def paint(axes: Axes) -> None:
        if not rows or not column_labels:
            _nothing_to_show(axes)
            return
        image = axes.imshow(matrix, cmap="Blues", aspect="auto")
        axes.figure.colorbar(image, ax=axes, shrink=0.8)
        axes.set_xticks(range(len(column_labels)), column_labels, rotation=45, ha="right", fontsize=7)
        axes.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
        axes.set_xlabel(column_title)
        axes.set_ylabel(row_title)
        if len(row_labels) * len(column_labels) <= 400:
            top = max((v for r in matrix for v in r), default=0)
            for i, values in enumerate(matrix):
                for j, value in enumerate(values):
                    axes.text(j, i, f"{value:g}", ha="center", va="center", fontsize=7,
                              color="white" if top and value > top / 2 else "black")

    return draw(name, title, Table((row_title, *column_labels), rows), paint, note=note, size=(width, height))


def bar_chart(name: str, title: str, labels: Sequence[str], values: Sequence[float], *, value_label: str,
              note: str = "") -> Figure:
    """Horizontal bars, largest at the top (parameter importances)."""
    pairs = sorted(zip(labels, values), key=lambda pair: pair[1])

    def paint(axes: Axes) -> None:
        if not pairs:
            _nothing_to_show(axes)
            return
        axes.barh([p[0] for p in pairs], [p[1] for p in pairs], color="#4c72b0")
        axes.set_xlabel(value_label)
        axes.grid(alpha=0.3, axis="x")

    return draw(name, title, Table(("name", value_label), pairs[::-1]), paint, note=note,
                size=(6.0, min(1.5 + 0.3 * len(pairs), 8.0)))


def _nothing_to_show(axes: Axes) -> None:
    axes.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axes.transAxes, color="gray")
    axes.set_xticks([])
    axes.set_yticks([])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
