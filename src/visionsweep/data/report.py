"""The data report: how many records were read, kept and skipped, and why each was skipped."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Reasons a record is skipped. The data report counts records per reason.
MALFORMED_LINE = "malformed line"
MISSING_IMAGE_URL = "missing image_url"
UNSUPPORTED_URL = "unsupported image_url"
MISSING_FILE = "missing file"
UNREADABLE_IMAGE = "unreadable image"
IMAGE_TOO_LARGE = "image too large"
BAD_LABEL = "bad label"
DUPLICATE = "duplicate image"
NO_ANNOTATION_FILE = "annotation without image"
TOO_SMALL_FOR_TILES = "too small for tile_grid_size"


@dataclass(frozen=True)
class Problem:
    """A skipped record, or a dropped annotation inside a kept record."""

    location: str
    reason: str
    detail: str
    image_url: str | None = None

    def __str__(self) -> str:
        where = f"{self.location} ({self.image_url})" if self.image_url else self.location
        return f"{where}: {self.reason}: {self.detail}"


@dataclass
class DataReport:
    """What happened to every record of one data source."""

    source: str
    records_read: int = 0
    kept: int = 0
    skipped: list[Problem] = field(default_factory=list)
    dropped_annotations: list[Problem] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    # How the images were checked: "decoded" (every pixel read), "headers" (header and structure only),
    # None where no image was checked.
    images_checked: str | None = None

    def skip(self, location: str, reason: str, detail: str, image_url: str | None = None) -> None:
        self.skipped.append(Problem(location, reason, detail, image_url))

    def skip_kept(self, location: str, reason: str, detail: str, image_url: str | None = None) -> None:
        """Skip a record that was counted as kept: its image passed the check but failed when read."""
        self.kept -= 1
        self.skip(location, reason, detail, image_url)

    def drop_annotation(self, location: str, reason: str, detail: str, image_url: str | None = None) -> None:
        self.dropped_annotations.append(Problem(location, reason, detail, image_url))

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(p.reason for p in self.skipped))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "records_read": self.records_read,
            "kept": self.kept,
            "skipped": len(self.skipped),
            "skipped_by_reason": self.skipped_by_reason(),
            "images_checked": self.images_checked,
            "dropped_annotations": len(self.dropped_annotations),
            "class_counts": dict(sorted(self.class_counts.items())),
            "skipped_records": [asdict(p) for p in self.skipped],
            "dropped_annotation_details": [asdict(p) for p in self.dropped_annotations],
        }

    def summary(self, max_lines: int = 10) -> str:
        lines = [f"{self.source}: {self.records_read} records read, {self.kept} images kept, "
                 f"{len(self.skipped)} skipped"]
        if self.images_checked in _CHECKS:
            lines.append(f"  images checked: {_CHECKS[self.images_checked]}")
        for reason, count in sorted(self.skipped_by_reason().items()):
            lines.append(f"  skipped ({reason}): {count}")
        if self.dropped_annotations:
            lines.append(f"  annotations dropped: {len(self.dropped_annotations)}")
        shown = (self.skipped + self.dropped_annotations)[:max_lines]
        lines.extend(f"    {p}" for p in shown)
        hidden = len(self.skipped) + len(self.dropped_annotations) - len(shown)
        if hidden > 0:
            lines.append(f"    ... and {hidden} more (see data_report.json)")
        if self.class_counts:
            counts = ", ".join(f"{name} {n}" for name, n in sorted(self.class_counts.items()))
            lines.append(f"  classes: {counts}")
        return "\n".join(lines)


_CHECKS = {
    "decoded": "every image decoded in full",
    "headers": "headers and file structure only, not decoded (a damaged image, such as a JPEG cut short, is "
               "found only when it is read)",
}
