"""Instance-segmentation data: the reference's polygon rules through the JSONL reader and its data report,
YOLO-seg import of coco128-seg, COCO RLE and polygon import, and COCO export of objects with holes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from visionsweep.data import convert, read_labeled_data
from visionsweep.data.detection_formats.coco import import_coco
from visionsweep.data.detection_formats.coco_export import export_coco
from visionsweep.data.detection_formats.yolo import import_yolo
from visionsweep.data.detection_labels import parse_segmentation_label
from visionsweep.data.labels import BadLabel, label_parser
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.errors import DataError
from visionsweep.geometry.masks import pixel_segments, polygons_to_masks
from visionsweep.tasks import Task

TASK = Task.INSTANCE_SEGMENTATION
TRIANGLE = [0.1, 0.1, 0.4, 0.1, 0.4, 0.5]
COCO_NAMES = (
    "person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, stop sign, "
    "parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack, umbrella, "
    "handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove, skateboard, "
    "surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, orange, "
    "broccoli, carrot, hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv, "
    "laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase, "
    "scissors, teddy bear, hair drier, toothbrush").split(", ")


def obj(polygon, label="can", **extra):
    return {"label": label, "isCrowd": 0, "polygon": polygon, **extra}


def _read(folder: Path, labels: list) -> tuple:
    lines = []
    for number, label in enumerate(labels):
        Image.new("RGB", (40, 30), (90, 10, 200)).save(folder / f"{number}.png")
        lines.append({"image_url": f"{number}.png", "label": label})
    (folder / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = read_labeled_data(folder / "data.jsonl", TASK)
    return {r.image_url: r for r in data.records}, data.report


# --- polygon rules (spec 3.3) --------------------------------------------------------------------------


def test_the_segmentation_task_has_its_parser():
    assert label_parser(TASK) is parse_segmentation_label


def test_several_segments_are_kept_and_the_box_is_derived_from_all_of_them():
    parsed = parse_segmentation_label([obj([[0.2, 0.3, 0.6, 0.3, 0.6, 0.9], [0.1, 0.5, 0.3, 0.5, 0.2, 0.7]],
                                           topX=0.0, topY=0.0, bottomX=0.05, bottomY=0.05)])
    (kept,) = parsed.objects
    assert kept.polygons == ((0.2, 0.3, 0.6, 0.3, 0.6, 0.9), (0.1, 0.5, 0.3, 0.5, 0.2, 0.7))
    assert kept.box == (0.1, 0.3, 0.6, 0.9)  # box keys are ignored when a polygon is present
    assert not parsed.dropped


def test_short_and_out_of_range_segments_are_left_out_and_the_box_follows_the_rest(tmp_path):
    records, report = _read(tmp_path, [[obj([[0.2, 0.3, 0.9, 0.9], [0.0, 0.0, 1.2, 0.0, 0.5, 0.5], TRIANGLE,
                                              [0.5, 0.5, -0.01, 0.5, 0.7, 0.9]])]])
    (kept,) = records["0.png"].objects
    assert kept.polygons == (tuple(TRIANGLE),) and kept.box == (0.1, 0.1, 0.4, 0.5)
    details = [p.detail for p in report.dropped_annotations]
    assert details == ["object 1: polygon segment 1 has 2 point(s), fewer than 3, and was left out",
                       "object 1: polygon segment 2 has a point outside [0, 1] and was left out",
                       "object 1: polygon segment 4 has a point outside [0, 1] and was left out"]
    assert {p.location for p in report.dropped_annotations} == {"data.jsonl:1"}


@pytest.mark.parametrize("polygon", [[], [[]], None, [[1.1, 0.1, 0.4, 0.1, 0.4, 0.5]],
                                     [[0.5, 0.6, 0.5, 0.7, 0.5, 0.8]], [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]])
def test_objects_without_a_usable_polygon_are_dropped_and_an_image_left_empty_is_skipped(tmp_path, polygon):
    records, report = _read(tmp_path, [[obj(polygon), obj([TRIANGLE], label="cup")], [obj(polygon)]])
    assert [o.label for o in records["0.png"].objects] == ["cup"]
    assert "1.png" not in records
    assert report.skipped_by_reason() == {"bad label": 1}
    assert "all 1 object(s) are invalid" in report.skipped[0].detail
    dropped = [p.detail for p in report.dropped_annotations]
    assert dropped and all(d.startswith("object 1") for d in dropped)


def test_a_vertical_line_is_dropped_with_its_zero_width_box():
    parsed = parse_segmentation_label([obj([[0.5, 0.6, 0.5, 0.7, 0.5, 0.8]]), obj([TRIANGLE])])
    assert len(parsed.objects) == 1
    assert parsed.dropped == ["object 1 ('can') was dropped: box [0.5, 0.6, 0.5, 0.8] has zero width or height"]


@pytest.mark.parametrize("polygon, message", [
    ([[0.1, 0.2, 0.3, 0.4, 0.5]], "segment 1 has 5 values; it needs equal numbers of Xs and Ys"),
    ([{"x": 0.1}], "segment 1 is dict"),
    ("0.1 0.2 0.3", "polygon of type str"),
    ([[0.1, 0.2, "a", 0.4, 0.5, 0.6]], "is not a number"),
    ([[0.1, 0.2, True, 0.4, 0.5, 0.6]], "coordinates must be numbers"),
])
def test_malformed_polygons_skip_the_whole_image_with_the_reason(tmp_path, polygon, message):
    records, report = _read(tmp_path, [[obj([TRIANGLE]), obj(polygon)], [obj([TRIANGLE])]])
    assert list(records) == ["1.png"]
    (skipped,) = report.skipped
    assert skipped.reason == "bad label" and message in skipped.detail and skipped.location == "data.jsonl:1"


def test_box_only_objects_are_dropped_for_segmentation(tmp_path):
    box = {"label": "can", "topX": 0.1, "topY": 0.1, "bottomX": 0.5, "bottomY": 0.5}
    records, report = _read(tmp_path, [[box, obj([TRIANGLE])]])
    assert [o.polygons for o in records["0.png"].objects] == [(tuple(TRIANGLE),)]
    assert [p.detail for p in report.dropped_annotations] == [
        "object 1 ('can') has a box but no polygon, and instance segmentation needs one"]


def test_background_images_are_kept():
    assert parse_segmentation_label([]).objects == ()
    with pytest.raises(BadLabel, match="must be a list"):
        parse_segmentation_label({"label": "can", "polygon": [TRIANGLE]})


# --- YOLO-seg -----------------------------------------------------------------------------------------


def test_coco128_seg_imports_polygons_with_its_background_images_and_orphan_label_files(datasets, tmp_path):
    folder = datasets / "coco128-seg"
    result = import_yolo(folder, names=COCO_NAMES, task=TASK)
    assert result.task is TASK and len(result.records) == 128
    assert sorted(r.image_path.name for r in result.records if not r.objects) == ["000000000250.jpg",
                                                                                  "000000000508.jpg"]
    assert result.report.skipped_by_reason() == {"annotation without image": 2}
    assert sorted(p.location for p in result.report.skipped) == ["labels/train2017/000000000656.txt",
                                                                 "labels/train2017/000000000659.txt"]
    objects = [o for r in result.records for o in r.objects]
    assert len(objects) == 941 - 12 and not result.report.dropped_annotations  # the orphans hold 12 lines
    assert all(len(o.polygons) == 1 and len(o.polygons[0]) >= 8 for o in objects)  # 4+ points each
    # The first line of 000000000009.txt, as written (class 45 = bowl), and its derived box.
    first_line = (folder / "labels" / "train2017" / "000000000009.txt").read_text().splitlines()[0].split()
    record = next(r for r in result.records if r.image_path.name == "000000000009.jpg")
    expected = tuple(float(v) for v in first_line[1:])
    assert record.objects[0].label == COCO_NAMES[int(first_line[0])] and record.objects[0].polygons == (expected,)
    assert record.objects[0].box == pytest.approx((min(expected[0::2]), min(expected[1::2]), max(expected[0::2]),
                                                   max(expected[1::2])), abs=1e-12)

    converted = convert("yolo", folder, tmp_path / "seg.jsonl", names=COCO_NAMES, task=TASK)
    back = read_labeled_data(tmp_path / "seg.jsonl", TASK)
    assert len(back.records) == 128 and not back.report.skipped and not back.report.dropped_annotations
    assert [[(o.label, o.polygons) for o in r.objects] for r in back.records] == [
        [(o.label, o.polygons) for o in r.objects] for r in converted.records]
    # The reader derives each box from the polygon; the importer went through pixels: equal to rounding.
    assert np.allclose([o.box for r in back.records for o in r.objects],
                       [o.box for r in converted.records for o in r.objects], rtol=0, atol=1e-12)
    line = json.loads((tmp_path / "seg.jsonl").read_text().splitlines()[0])
    assert set(line["label"][0]) == {"label", "isCrowd", "polygon"}


# --- COCO ---------------------------------------------------------------------------------------------


def _ring(height=30, width=40):
    rows, cols = np.mgrid[:height, :width]
    distance = np.hypot(rows - 14.5, cols - 19.5)
    return ((distance < 12) & (distance > 5)).astype(np.uint8)


def _iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / (a | b).sum()


def test_coco_rle_masks_become_polygons_that_rasterise_back_to_the_mask(tmp_path):
    from pycocotools import mask as mask_utils

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    ring = _ring()
    compressed = mask_utils.encode(np.asfortranarray(ring))
    square = np.zeros((30, 40), np.uint8)
    square[3:9, 30:38] = 1
    # Uncompressed RLE: run lengths in column-major order, starting with a run of zeros.
    flat = square.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    document = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "donut"}, {"id": 2, "name": "box"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [7, 2, 26, 25],
             "segmentation": {"size": [30, 40], "counts": compressed["counts"].decode()}},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": {"size": [30, 40],
                                                                                       "counts": counts}},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5],
             "segmentation": {"size": [60, 80], "counts": compressed["counts"].decode()}},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(document))
    result = import_coco(tmp_path / "coco.json", task=TASK)
    donut, box = result.records[0].objects
    assert donut.is_crowd and len(donut.polygons) == 2  # the outline and the hole
    assert not box.is_crowd and len(box.polygons) == 1
    assert box.box == (30 / 40, 3 / 30, 38 / 40, 9 / 30)  # derived from the traced outline, exact
    masks = polygons_to_masks([pixel_segments(o.polygons, 40, 30) for o in (donut, box)], 30, 40)
    assert np.array_equal(masks[1], square)
    assert _iou(masks[0], ring) > 0.97
    assert [p.detail for p in result.report.dropped_annotations] == [
        "annotation id 3: 'box': the RLE mask is 80x60 but the image is 40x30; instance segmentation needs polygons"]
    # Object detection keeps the bbox and never needs to read the masks.
    detection = import_coco(tmp_path / "coco.json")
    assert [o.polygons for o in detection.records[0].objects] == [(), (), ()]
    assert len(detection.records[0].objects) == 3


def test_coco_export_writes_objects_with_holes_as_rle(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    outer = (0.1, 0.1, 0.9, 0.1, 0.9, 0.9, 0.1, 0.9)
    hole = (0.4, 0.4, 0.6, 0.4, 0.6, 0.6, 0.4, 0.6)
    apart = (0.0, 0.0, 0.05, 0.0, 0.05, 0.05)
    objects = (ObjectAnnotation("frame", (0.1, 0.1, 0.9, 0.9), polygons=(outer, hole)),
               ObjectAnnotation("parts", (0.0, 0.0, 0.9, 0.9), polygons=(apart, outer)))
    record = ImageRecord(image_path=tmp_path / "a.png", image_url="a.png", objects=objects, width=40, height=30)
    path = export_coco([record], ["frame", "parts"], tmp_path / "coco.json")
    coco = COCO(str(path))
    frame, parts = coco.loadAnns([1, 2])
    assert isinstance(frame["segmentation"], dict) and isinstance(parts["segmentation"], list)
    expected = polygons_to_masks([pixel_segments([outer, hole], 40, 30)], 30, 40)[0]
    assert np.array_equal(coco.annToMask(frame), expected) and frame["area"] == expected.sum()
    back = import_coco(path, task=TASK).records[0].objects
    assert len(back[0].polygons) == 2 and back[1].polygons == parts_polygons(parts, 40, 30)


def parts_polygons(annotation, width, height):
    return tuple(tuple(v / (width if i % 2 == 0 else height) for i, v in enumerate(s))
                 for s in annotation["segmentation"])


def test_an_import_without_usable_polygons_is_an_error_when_written(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    document = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
                "categories": [{"id": 1, "name": "cat"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "coco.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match="nothing to import"):
        convert("coco", tmp_path / "coco.json", tmp_path / "out.jsonl", task=TASK)
