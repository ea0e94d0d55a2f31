"""Writing records as a COCO JSON file, which ``detection_formats.coco.import_coco`` reads back."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from visionsweep.data.images import ImageProblem, probe_image
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.errors import DataError


def export_coco(records: Iterable[ImageRecord], classes: Sequence[str], path: str | Path) -> Path:
    """Write records to a COCO JSON file and return its path.

    Category ids are 1, 2, ... in the order of ``classes`` (which must name every class of the records);
    image and annotation ids start at 1. Boxes become pixel [x, y, width, height] with ``area`` = width x
    height, or the polygon area when the object has polygons (then written as pixel ``segmentation``;
    an object whose segments overlap, i.e. has holes under our XOR rule, is written as an RLE mask
    because COCO unites polygons). ``file_name`` is relative to the file's folder when the image lies
    below it, absolute otherwise, so ``import_coco(path)`` reads the same records back (objects written
    as RLE come back as traced polygons). Image sizes come from the records or the files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    category_ids = {name: number for number, name in enumerate(classes, start=1)}
    unknown = sorted({o.label for r in records for o in r.objects} - set(category_ids))
    if unknown:
        raise DataError(f"export_coco: classes {unknown} occur in the records but not in 'classes'")
    sizes = _record_sizes(records)
    images, annotations = [], []
    for image_id, (record, size) in enumerate(zip(records, sizes), start=1):
        if isinstance(size, (str, ImageProblem)):
            raise DataError(f"export_coco: cannot read the size of {record.image_path}: {size}")
        width, height = size
        images.append({"id": image_id, "file_name": _relative_name(record.image_path, path.parent),
                       "width": width, "height": height})
        for obj in record.objects:
            annotations.append(_coco_annotation(obj, len(annotations) + 1, image_id, category_ids[obj.label],
                                                width, height))
    document = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": number, "name": name, "supercategory": "none"} for name, number in category_ids.items()],
    }
    path.write_text(json.dumps(document))
    return path


def _record_sizes(records: list[ImageRecord]) -> list[tuple[int, int] | str | ImageProblem]:
    def size(record: ImageRecord) -> tuple[int, int] | str | ImageProblem:
        if record.width and record.height:
            return record.width, record.height
        if not record.image_path.is_file():
            return "the file does not exist"
        return probe_image(record.image_path)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(size, records))


def _relative_name(image_path: Path, folder: Path) -> str:
    relative = os.path.relpath(image_path.resolve(), folder.resolve())
    return Path(relative).as_posix() if not relative.startswith("..") else str(image_path.resolve())



def _coco_annotation(obj: ObjectAnnotation, annotation_id: int, image_id: int, category_id: int,
                     width: int, height: int) -> dict[str, Any]:
    x0, y0, x1, y1 = obj.box
    bbox = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
    annotation = {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                  "area": bbox[2] * bbox[3], "iscrowd": int(obj.is_crowd)}
    if obj.polygons:
        segmentation = [[v * (width if i % 2 == 0 else height) for i, v in enumerate(segment)]
                        for segment in obj.polygons]
        rles = mask_utils.frPyObjects(segmentation, height, width)
        annotation["segmentation"] = segmentation
        annotation["area"] = float(mask_utils.area(mask_utils.merge(rles)))
        if len(rles) > 1:
            # Our segments combine by XOR (an inner one is a hole), COCO's polygons by union: where they
            # overlap, write the mask itself as RLE so other COCO tools see the same object.
            mask = np.zeros((height, width), np.uint8)
            for rle in rles:
                mask ^= mask_utils.decode(rle)
            if int(mask.sum()) != annotation["area"]:
                rle = mask_utils.encode(np.asfortranarray(mask))
                annotation["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                annotation["area"] = float(mask.sum())
    return annotation
