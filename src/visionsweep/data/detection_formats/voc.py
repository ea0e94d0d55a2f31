"""Pascal VOC XML annotations: one file per image."""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from visionsweep.data import report as reasons
from visionsweep.data.detection_formats.common import (
    BAD_ANNOTATION_FILE, NO_ANNOTATION, OBJECT_DROPPED, PendingImage, declared_size, finish_records, keep_objects,
    pixel_box,
)
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS, is_image_file
from visionsweep.data.importers import ImportResult, register_importer
from visionsweep.data.records import ObjectAnnotation
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.tasks import Task


@register_importer("voc")
def import_voc(
    source: Path,
    *,
    images: str | Path | None = None,
    image_set: str | None = None,
    difficult_as_crowd: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImportResult:
    """Pascal VOC: one XML file per image with ``<size>`` and ``<object><name><bndbox>`` elements.

    ``source`` is a VOC root (``Annotations/*.xml``, ``JPEGImages/``, optional ``ImageSets/Main/``) or a
    folder of XML files. Images are looked up by the XML ``<filename>`` in ``images``, else in
    ``source/JPEGImages``, else beside the XML files (the ``<path>`` element is ignored: it names the
    annotator's machine). ``image_set`` (e.g. ``"train"``) imports only the ids listed in
    ``ImageSets/Main/<image_set>.txt``. Coordinates are taken as pixel positions as written (no 1-based
    shift), which is what VOC-to-JSONL conversions for Azure do. ``difficult`` objects are kept as normal
    objects, or as crowd objects (ignored by evaluation, as in the VOC protocol) with ``difficult_as_crowd``.
    """
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source} is not a folder; expected a Pascal VOC folder with Annotations/*.xml")
    xml_folder = source / "Annotations" if (source / "Annotations").is_dir() else source
    image_folder = Path(images) if images is not None else (
        source / "JPEGImages" if (source / "JPEGImages").is_dir() else xml_folder)
    xml_files = sorted(xml_folder.glob("*.xml"))
    if image_set is not None:
        listing = source / "ImageSets" / "Main" / f"{image_set}.txt"
        if not listing.is_file():
            raise DataError(f"image set {image_set!r} needs {listing}, which does not exist")
        wanted = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        by_stem = {p.stem: p for p in xml_files}
        xml_files = [by_stem[stem] for stem in wanted if stem in by_stem]
        missing = [stem for stem in wanted if stem not in by_stem]
    else:
        missing = []
    if not xml_files:
        raise DataError(f"no Pascal VOC XML files in {xml_folder}")
    report = DataReport(source=str(source))
    for stem in missing:
        report.records_read += 1
        report.skip(f"ImageSets/Main/{image_set}.txt", reasons.MISSING_FILE,
                    f"{stem} is listed but {xml_folder / (stem + '.xml')} does not exist")
    pending: list[PendingImage] = []
    for xml_path in xml_files:
        report.records_read += 1
        item = _read_voc_file(xml_path, image_folder, difficult_as_crowd, report)
        if item is not None:
            pending.append(item)
    if image_set is None:
        seen = {p.image_path.resolve() for p in pending}
        for orphan in sorted(p for p in image_folder.iterdir() if is_image_file(p) and p.resolve() not in seen):
            if not (xml_folder / f"{orphan.stem}.xml").exists():
                report.records_read += 1
                report.skip(orphan.name, NO_ANNOTATION, f"no {orphan.stem}.xml in {xml_folder}; if the image has "
                            "no objects, add an XML file without <object> elements")
    records = finish_records(pending, report, _voc_objects, max_image_pixels)
    return ImportResult(records, Task.OBJECT_DETECTION, report)



def _read_voc_file(xml_path: Path, image_folder: Path, difficult_as_crowd: bool,
                   report: DataReport) -> PendingImage | None:
    location = xml_path.name
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        report.skip(location, BAD_ANNOTATION_FILE, f"{xml_path} is not readable XML: {error}")
        return None
    filename = (root.findtext("filename") or "").strip()
    image_path = image_folder / filename if filename else None
    if image_path is None or not image_path.suffix:
        found = sorted(p for p in image_folder.glob(f"{filename or xml_path.stem}.*") if is_image_file(p))
        image_path = found[0] if found else image_folder / (filename or xml_path.stem)
    declared = declared_size(root.findtext("size/width"), root.findtext("size/height"))
    objects = []
    for number, element in enumerate(root.iter("object"), start=1):
        name = (element.findtext("name") or "").strip()
        box = element.find("bndbox")
        values = [box.findtext(key) if box is not None else None for key in ("xmin", "ymin", "xmax", "ymax")]
        difficult = (element.findtext("difficult") or "0").strip() == "1"
        objects.append((number, name, values, difficult and difficult_as_crowd))
    return PendingImage(image_path, image_path.name, location, lines=objects, declared=declared)


def _voc_objects(item: PendingImage, size: tuple[int, int], report: DataReport) -> list[ObjectAnnotation] | None:
    objects = []
    for number, name, values, crowd in item.lines:
        where = f"object {number}"
        if not name:
            report.drop_annotation(item.location, OBJECT_DROPPED, f"{where} has no <name>", item.image_url)
            continue
        try:
            pixels = [float(v) for v in values]
        except (TypeError, ValueError):
            report.drop_annotation(item.location, OBJECT_DROPPED,
                                   f"{where} ({name!r}) has no numeric <bndbox> xmin/ymin/xmax/ymax: {values}",
                                   item.image_url)
            continue
        box, problem = pixel_box(pixels, *size)
        if box is None:
            report.drop_annotation(item.location, OBJECT_DROPPED, f"{where} ({name!r}): {problem}", item.image_url)
            continue
        objects.append(ObjectAnnotation(label=name, box=box, is_crowd=crowd))
    return keep_objects(item, objects, len(item.lines), report)

