"""Checking the images that a data file or an importer lists, before any record is kept."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Protocol, Sequence, TypeVar

from visionsweep.data import report as reasons
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageProblem, probe_image
from visionsweep.data.report import DataReport


class ListedImage(Protocol):
    """Anything that names an image file and where it was listed (``ImageRecord``, an importer's entry)."""

    @property
    def image_path(self) -> Path: ...

    @property
    def image_url(self) -> str | None: ...

    @property
    def location(self) -> str: ...


Listed = TypeVar("Listed", bound=ListedImage)


def probe_listed_images(items: Sequence[Listed], report: DataReport, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                        decode: bool = False) -> Iterator[tuple[Listed, tuple[int, int]]]:
    """``(item, (width, height))`` for every item whose image exists and can be used, in order; the others
    are skipped into ``report`` (``missing file``, or the reason ``probe_image`` gives) as they come, so
    that the caller's own skips keep the items' order in the report.

    ``decode`` decodes every image in full; without it only headers and file structure are read. The
    report says which (``images_checked``).
    """
    def probe(path: Path) -> tuple[int, int] | ImageProblem | None:
        return probe_image(path, max_pixels=max_pixels, decode=decode) if path.is_file() else None

    # Header reads are I/O bound; full decodes hold up to a whole image each, so fewer run at once.
    with ThreadPoolExecutor(max_workers=4 if decode else 8) as pool:
        probes = list(pool.map(probe, (item.image_path for item in items)))
    report.images_checked = "decoded" if decode else "headers"
    for item, probed in zip(items, probes):
        if probed is None:
            report.skip(item.location, reasons.MISSING_FILE, f"{item.image_path} does not exist", item.image_url)
        elif isinstance(probed, ImageProblem):
            report.skip(item.location, probed.reason, f"{item.image_path} {probed.detail}", item.image_url)
        else:
            yield item, probed
