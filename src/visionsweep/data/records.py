"""Record types shared by every task: one image, its labels, and (for detection) its objects."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionsweep.data.report import DataReport


@dataclass(frozen=True)
class ObjectAnnotation:
    """One object in an image. Coordinates are fractions of the image width and height in [0, 1].

    ``box`` is (x0, y0, x1, y1), top-left and bottom-right corners. ``polygons`` holds the object's
    segments for instance segmentation, each a flat (x1, y1, x2, y2, ...) tuple.
    """

    label: str
    box: tuple[float, float, float, float]
    is_crowd: bool = False
    polygons: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image.

    ``labels`` holds the class of a multi-class image or the set of a multi-label image (sorted);
    detection and segmentation images keep their objects in ``objects`` instead. ``location`` says
    where the record came from (``file.jsonl:12``) so that reports can point at it.
    """

    image_path: Path
    image_url: str
    labels: tuple[str, ...] = ()
    objects: tuple[ObjectAnnotation, ...] = ()
    location: str = ""
    width: int | None = None
    height: int | None = None

    def class_names(self) -> tuple[str, ...]:
        """Every class this image carries, from its labels or its objects."""
        return self.labels + tuple(o.label for o in self.objects)


@dataclass
class LabeledData:
    """Records read from one source, with the report of what was kept and what was skipped."""

    records: list[ImageRecord]
    report: DataReport
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = sorted({name for r in self.records for name in r.class_names()})

    def __len__(self) -> int:
        return len(self.records)
